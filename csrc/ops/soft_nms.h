#pragma once
// Host-side argument handling for fastdet::soft_nms, shared by the CPU and CUDA kernels, and the
// per-pair decay rule both kernels apply.
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <string>

#include "common/box_geometry.h"
#include "common/checks.h"

namespace fastdet {

enum class SoftNmsMethod : int64_t { kLinear = 0, kGaussian = 1 };

inline SoftNmsMethod parse_soft_nms_method(c10::string_view method) {
  if (method == "linear") return SoftNmsMethod::kLinear;
  if (method == "gaussian") return SoftNmsMethod::kGaussian;
  TORCH_CHECK(false, "fastdet::soft_nms: method must be 'linear' or 'gaussian', got '", std::string(method), "'");
}

// Weight a remaining box's score is multiplied by when a box it overlaps by `iou` is selected
// (Bodla et al. 2017):
//   linear:   1 - iou if iou >= iou_threshold, else 1
//   gaussian: exp(-iou^2 / sigma)                (iou_threshold unused)
// NB: a NaN IoU (a NaN coordinate, or a zero union: two zero-area boxes) gives weight 1 in both
// methods, i.e. no decay, the same way a NaN IoU never suppresses in torchvision's nms.
template <SoftNmsMethod M, typename acc_t>
FASTDET_HD acc_t soft_nms_weight(acc_t iou, acc_t iou_threshold, acc_t sigma) {
  // iou == 0 (no intersection, the common case) gives exactly 1 in both methods; return early
  // so that the gaussian pays for exp only on overlapping pairs.
  if (!(iou == iou) || iou == acc_t(0)) return acc_t(1);
  if constexpr (M == SoftNmsMethod::kLinear) {
    return iou >= iou_threshold ? acc_t(1) - iou : acc_t(1);
  } else {
#if defined(__CUDA_ARCH__)
    return exp(-(iou * iou) / sigma);
#else
    return std::exp(-(iou * iou) / sigma);
#endif
  }
}

// soft_nms_weight of the pair's nms_iou (common/box_geometry.h), with the division and the decay
// skipped when the boxes do not intersect: then the IoU is 0, -0 or NaN (0 / 0) and the weight is 1
// in every case, so the result is bit-identical to soft_nms_weight(nms_iou(a, b), ...).
template <SoftNmsMethod M, typename acc_t>
FASTDET_HD acc_t soft_nms_pair_weight(const Box<acc_t>& a, const Box<acc_t>& b, acc_t iou_threshold, acc_t sigma) {
  const acc_t inter = intersection_area(a, b);
  if (inter == acc_t(0)) return acc_t(1);
  return soft_nms_weight<M>(inter / (box_area(a) + box_area(b) - inter), iou_threshold, sigma);
}

struct SoftNmsProblem {
  at::Tensor boxes;   // [N, 4] contiguous
  at::Tensor scores;  // [N] contiguous
  at::Tensor idxs;    // [N] int64 contiguous, or undefined (one class)
  SoftNmsMethod method;
  int64_t n;
};

inline SoftNmsProblem prepare_soft_nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                       double sigma, double min_score, c10::string_view method,
                                       const c10::optional<at::Tensor>& idxs) {
  const char* op = "soft_nms";
  SoftNmsProblem p;
  p.method = parse_soft_nms_method(method);
  check_threshold(iou_threshold, op, "iou_threshold");
  check_threshold(min_score, op, "min_score");
  TORCH_CHECK(sigma > 0, "fastdet::soft_nms: sigma must be > 0, got ", sigma);
  check_scored_boxes(boxes, scores, idxs.has_value() ? &*idxs : nullptr, op);
  if (idxs.has_value()) p.idxs = idxs->contiguous();
  p.boxes = boxes.contiguous();
  p.scores = scores.contiguous();
  p.n = boxes.size(0);
  return p;
}

// Calls f(std::integral_constant<SoftNmsMethod, M>{}) so the kernels get the method as a template argument.
template <typename F>
void with_soft_nms_method(SoftNmsMethod method, F&& f) {
  switch (method) {
    case SoftNmsMethod::kLinear: return f(std::integral_constant<SoftNmsMethod, SoftNmsMethod::kLinear>{});
    case SoftNmsMethod::kGaussian: return f(std::integral_constant<SoftNmsMethod, SoftNmsMethod::kGaussian>{});
  }
}

}  // namespace fastdet
