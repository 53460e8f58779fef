#pragma once
// fastdet::sigmoid_focal_loss: the focal-loss math shared by the CPU and CUDA kernels, and the
// host-side argument handling (checks, canonical [R, C] problem).
//
// Focal loss (Lin et al., "Focal Loss for Dense Object Detection", 2017), in torchvision's form
// (torchvision/ops/focal_loss.py) with soft targets t in [0, 1]:
//   p  = sigmoid(x)
//   ce = BCE-with-logits(x, t) = t * softplus(-x) + (1 - t) * softplus(x)
//   q  = 1 - p_t = p (1 - t) + (1 - p) t
//   loss = alpha_t * ce * q^gamma,   alpha_t = alpha t + (1 - alpha)(1 - t)  (1 when alpha < 0)
// and its derivative
//   dloss/dx = alpha_t * ((p - t) q^gamma + ce * gamma q^(gamma-1) dq/dx),  dq/dx = p (1 - p)(1 - 2t).
// NB (stability; mmcv#1488, pytorch#40497): with e = exp(-|x|) in (0, 1], sigmoid(|x|) = 1/(1+e),
// sigmoid(-|x|) = e/(1+e) and softplus(-|x|) = log1p(e), so no log of 0 and no 1 - p cancellation
// is ever taken; p - t is formed as p (1 - t) - (1 - p) t for the same reason. Math runs in fp32
// (fp64 for double), so logits of +-100 in fp16/bf16 give finite losses and gradients.
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <string>

#include "common/checks.h"
#include "common/macros.h"

namespace fastdet {

// Constants of one call, in the math type A.
template <typename A>
struct FocalConsts {
  A a0, a1;   // alpha_t = a0 + t (a1 - a0): (1 - alpha, alpha), or (1, 1) when alpha < 0
  A gamma;
};

template <typename A>
FocalConsts<A> make_focal_consts(double alpha, double gamma) {
  const bool use_alpha = alpha >= 0;
  return {static_cast<A>(use_alpha ? 1.0 - alpha : 1.0), static_cast<A>(use_alpha ? alpha : 1.0),
          static_cast<A>(gamma)};
}

// The math library the formulas use: the standard functions (CUDA device code, fp64, CPU scalar).
// The CPU kernel substitutes branch-free float versions that vectorise (cpu/sigmoid_focal_loss_kernel.cpp).
struct StdFocalMath {
  template <typename A>
  static FASTDET_HD A exp(A x) { return ::exp(x); }
  template <typename A>
  static FASTDET_HD A log(A x) { return ::log(x); }
  // log1p(x) for x in [0, 1], given r = 1 / (1 + x) (the kernels have it at hand).
  template <typename A>
  static FASTDET_HD A log1p_unit(A x, A /*r*/) { return ::log1p(x); }
};

// Per-element quantities both directions need.
template <typename A>
struct FocalTerms {
  A p, p1;  // sigmoid(x), 1 - sigmoid(x) (each computed directly, no cancellation)
  A ce;     // BCE with logits
  A q;      // 1 - p_t
  A at;     // alpha_t
};

template <typename Math, typename A>
FASTDET_HD FocalTerms<A> focal_terms(A x, A t, const FocalConsts<A>& k) {
  const A ax = x < A(0) ? -x : x;
  const A e = Math::exp(-ax);                 // exp(-|x|) in (0, 1]
  const A r = A(1) / (A(1) + e);
  const A big = r, small = e * r;             // sigmoid(|x|), sigmoid(-|x|)
  const bool pos = x >= A(0);
  FocalTerms<A> f;
  f.p = pos ? big : small;
  f.p1 = pos ? small : big;
  // softplus(x) = max(x, 0) + log1p(e); ce = softplus(x) - x t.
  f.ce = (pos ? x : A(0)) - x * t + Math::log1p_unit(e, r);
  f.q = f.p * (A(1) - t) + f.p1 * t;
  f.at = k.a0 + t * (k.a1 - k.a0);
  return f;
}

// q^gamma; kGammaTwo is the common gamma = 2 (no transcendental).
template <bool kGammaTwo, typename Math, typename A>
FASTDET_HD A focal_modulator(A q, A gamma) {
  if (kGammaTwo) return q * q;
  // q^gamma = exp(gamma log q); 0^gamma = 0 for gamma > 0 and 1 for gamma = 0. q is clamped to the
  // smallest normal number before the log (q below it only changes the result by < 1e-38).
  const A qc = q > A(1.17549435e-38f) ? q : A(1.17549435e-38f);
  const A m = Math::exp(gamma * Math::log(qc));
  return q > A(0) ? m : (gamma == A(0) ? A(1) : A(0));
}

template <bool kGammaTwo, typename Math, typename A>
FASTDET_HD A focal_loss_value(A x, A t, const FocalConsts<A>& k) {
  const FocalTerms<A> f = focal_terms<Math>(x, t, k);
  return f.at * f.ce * focal_modulator<kGammaTwo, Math>(f.q, k.gamma);
}

template <bool kGammaTwo, typename Math, typename A>
FASTDET_HD A focal_loss_grad(A x, A t, const FocalConsts<A>& k) {
  const FocalTerms<A> f = focal_terms<Math>(x, t, k);
  const A dq = f.p * f.p1 * (A(1) - A(2) * t);
  const A dce = f.p * (A(1) - t) - f.p1 * t;  // p - t
  A mod, dmod;                                 // q^gamma and d(q^gamma)/dx
  if (kGammaTwo) {
    mod = f.q * f.q;
    dmod = A(2) * f.q * dq;
  } else {
    mod = focal_modulator<false, Math>(f.q, k.gamma);
    // gamma q^(gamma-1) dq = gamma q^gamma (dq / q); |dq / q| <= 1 for t in [0, 1], and dq = 0
    // where q = 0 (p saturated onto a hard target), so that limit is 0 (gamma = 1 aside: 1 * dq).
    const A ratio = f.q > A(0) ? dq / f.q : A(0);
    dmod = f.q > A(0) ? k.gamma * mod * ratio : (k.gamma == A(1) ? dq : A(0));
  }
  return f.at * (dce * mod + f.ce * dmod);
}

// ---- host side ------------------------------------------------------------------------------------

enum class FocalReduction { kNone = 0, kMean = 1, kSum = 2 };
enum class FocalWeight { kNone = 0, kElement = 1, kSample = 2, kClass = 3 };

inline FocalReduction parse_focal_reduction(c10::string_view reduction, const char* op) {
  if (reduction == "none") return FocalReduction::kNone;
  if (reduction == "mean") return FocalReduction::kMean;
  if (reduction == "sum") return FocalReduction::kSum;
  TORCH_CHECK(false, "fastdet::", op, ": reduction must be 'none', 'mean' or 'sum', got '",
              std::string(reduction), "'");
}

// The problem in canonical form: logits viewed as [R, C] (C = last dimension, 1 for a 0-d input).
struct FocalProblem {
  at::Tensor inputs;   // contiguous
  at::Tensor targets;  // contiguous: inputs' dtype (dense) or int64 [R] (class indices)
  at::Tensor weight;   // contiguous, inputs' dtype, or undefined
  bool index_targets = false;
  FocalWeight weight_kind = FocalWeight::kNone;
  FocalReduction reduction = FocalReduction::kNone;
  int64_t rows = 0, cols = 1, numel = 0;
  double alpha = 0.25, gamma = 2.0;
};

// Checks the arguments and canonicalises them. Does not look at the values of class-index
// targets (the kernels check them: CPU while computing, CUDA with one small reduction).
inline FocalProblem prepare_sigmoid_focal_loss(const at::Tensor& inputs, const at::Tensor& targets, double alpha,
                                               double gamma, c10::string_view reduction,
                                               const c10::optional<at::Tensor>& weight, const char* op) {
  FocalProblem p;
  p.reduction = parse_focal_reduction(reduction, op);
  check_floating(inputs, op, "inputs");
  TORCH_CHECK(!std::isnan(alpha), "fastdet::", op, ": alpha must be a number (< 0 disables the alpha term), got NaN");
  TORCH_CHECK(gamma >= 0 && std::isfinite(gamma), "fastdet::", op, ": gamma must be finite and >= 0, got ", gamma);
  check_same_device(inputs, targets, op, "inputs", "targets");
  const int64_t dim = inputs.dim();
  p.cols = dim == 0 ? 1 : inputs.size(-1);
  p.numel = inputs.numel();
  p.rows = p.cols == 0 ? 0 : p.numel / p.cols;
  p.alpha = alpha;
  p.gamma = gamma;
  p.inputs = inputs.contiguous();
  const auto lead = dim == 0 ? c10::IntArrayRef() : inputs.sizes().slice(0, dim - 1);
  if (targets.scalar_type() == at::kLong) {
    TORCH_CHECK(dim >= 1 && targets.sizes() == lead, "fastdet::", op, ": class-index targets (int64) must have shape ",
                "inputs.shape[:-1] (e.g. [N] for inputs [N, C]), got targets ", shape_str(targets), " for inputs ",
                shape_str(inputs));
    p.index_targets = true;
    p.targets = targets.contiguous();
  } else {
    TORCH_CHECK(at::isFloatingType(targets.scalar_type()), "fastdet::", op, ": targets must be a floating tensor of ",
                "the inputs' shape (dense, soft targets in [0, 1]) or an int64 tensor of class indices, got ",
                targets.scalar_type());
    TORCH_CHECK(targets.sizes() == inputs.sizes(), "fastdet::", op, ": dense targets must have the inputs' shape ",
                shape_str(inputs), ", got ", shape_str(targets));
    p.targets = targets.to(inputs.scalar_type()).contiguous();
  }
  if (weight.has_value() && weight->defined()) {
    const at::Tensor& w = *weight;
    check_same_device(inputs, w, op, "inputs", "weight");
    check_floating(w, op, "weight");
    const bool element = w.sizes() == inputs.sizes();
    // per-sample: inputs.shape[:-1] or inputs.shape[:-1] + [1]; per-class: [C] or [1, ..., 1, C].
    bool sample = dim >= 1 && (w.sizes() == lead || (w.dim() == dim && w.sizes().slice(0, dim - 1) == lead && w.size(-1) == 1));
    bool klass = dim >= 1 && ((w.dim() == 1 && w.size(0) == p.cols) ||
                              (w.dim() == dim && w.size(-1) == p.cols && w.numel() == p.cols));
    if (element) sample = klass = false;
    TORCH_CHECK(element || sample || klass, "fastdet::", op, ": weight must have the inputs' shape ", shape_str(inputs),
                " (per element), inputs.shape[:-1] (per sample) or [C] = [", p.cols, "] (per class), got ", shape_str(w));
    TORCH_CHECK(!(sample && klass), "fastdet::", op, ": weight of shape ", shape_str(w), " is ambiguous for inputs ",
                shape_str(inputs), " (per sample or per class?); pass it as [N, 1] (per sample) or [1, C] (per class)");
    p.weight_kind = element ? FocalWeight::kElement : sample ? FocalWeight::kSample : FocalWeight::kClass;
    p.weight = w.to(inputs.scalar_type()).contiguous();
  }
  return p;
}

// The shape of the forward output: inputs' shape for reduction 'none', a scalar otherwise.
inline std::vector<int64_t> focal_output_sizes(const FocalProblem& p) {
  return p.reduction == FocalReduction::kNone ? p.inputs.sizes().vec() : std::vector<int64_t>{};
}

inline void check_focal_backward_grad(const FocalProblem& p, const at::Tensor& grad, const char* op) {
  const auto expected = focal_output_sizes(p);
  TORCH_CHECK(grad.sizes() == c10::IntArrayRef(expected), "fastdet::", op,
              ": grad must have the forward output's shape ", expected, ", got ", shape_str(grad));
  check_same_device(grad, p.inputs, op, "grad", "inputs");
  check_floating(grad, op, "grad");
}

inline void throw_focal_bad_class(int64_t lo, int64_t hi, int64_t cols, const char* op) {
  TORCH_CHECK(false, "fastdet::", op, ": class-index targets must be in [0, C] = [0, ", cols,
              "] (C means background), got values in [", lo, ", ", hi, "]");
}

}  // namespace fastdet
