// CUDA kernels of fastdet::sigmoid_focal_loss: one fused forward and one fused backward kernel.
//
// Memory-bound (fp32 fwd+bwd with dense targets: read logits + targets twice, write the gradient
// once = 20 B/element; class-index targets: 12 B/element), so each thread handles 16 bytes of
// logits per step with vector loads/stores (when every per-element pointer is 16-byte aligned;
// a scalar path otherwise), in a 64-bit grid-stride loop. Math in fp32 (fp64 for double) with
// the formulas of ops/sigmoid_focal_loss.h.
// 'mean' / 'sum': every thread accumulates its elements, blocks reduce with warp shuffles and
// write one partial sum each; a one-block kernel adds the partials in a fixed order. No atomics,
// so the result is deterministic (run to run, for a given device).
// Backward of 'mean' / 'sum' reads the incoming scalar gradient from device memory (no sync).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <torch/library.h>

#include "common/cuda_helpers.h"
#include "ops/sigmoid_focal_loss.h"

namespace fastdet {
namespace {

template <typename T>
struct FocalCudaArgs {
  using A = at::opmath_type<T>;
  const T* x;
  const T* t;               // dense targets, or null
  const int64_t* labels;    // class-index targets [rows], or null
  const T* w;               // weight, or null
  const T* grad;            // backward 'none': incoming gradient [numel], or null
  const A* grad_scalar;     // backward 'mean'/'sum': incoming scalar gradient (device), or null
  A grad_scale;             // 1 / numel for 'mean', else 1
  T* out;                   // losses or gradients [numel]; null when reducing
  A* partials;              // forward 'mean'/'sum': one partial sum per block
  FocalConsts<A> k;
  int64_t numel, cols;
  FocalWeight weight_kind;
  bool vec;                 // all per-element pointers 16-byte aligned
};

template <typename T>
constexpr int kVec = 16 / sizeof(T);

template <typename T>
struct alignas(16) Pack {
  T v[kVec<T>];
};

template <typename T, typename A>
__device__ __forceinline__ void load_elems(const T* __restrict__ p, int64_t i0, int n, bool vec, A* dst) {
  constexpr int V = kVec<T>;
  if (vec && n == V) {
    const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(p + i0);
#pragma unroll
    for (int j = 0; j < V; ++j) dst[j] = static_cast<A>(pk.v[j]);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) dst[j] = j < n ? static_cast<A>(p[i0 + j]) : A(0);
  }
}

template <typename T, typename A>
__device__ __forceinline__ void store_elems(T* __restrict__ p, int64_t i0, int n, bool vec, const A* src) {
  constexpr int V = kVec<T>;
  if (vec && n == V) {
    Pack<T> pk;
#pragma unroll
    for (int j = 0; j < V; ++j) pk.v[j] = static_cast<T>(src[j]);
    *reinterpret_cast<Pack<T>*>(p + i0) = pk;
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j)
      if (j < n) p[i0 + j] = static_cast<T>(src[j]);
  }
}

template <typename A>
__device__ __forceinline__ A block_sum(A v) {
  __shared__ A warp_sums[32];
  for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  v = threadIdx.x < warps ? warp_sums[threadIdx.x] : A(0);
  if (warp == 0)
    for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;  // valid in thread 0
}

// kGrad: d loss / d x (times the incoming gradient) instead of the loss. kReduce: forward
// 'mean'/'sum' (per-block partial sums instead of per-element outputs).
template <bool kGrad, bool kGammaTwo, bool kReduce, typename T>
__global__ void __launch_bounds__(kThreadsPerBlock) sigmoid_focal_loss_kernel(const FocalCudaArgs<T> a) {
  using A = at::opmath_type<T>;
  constexpr int V = kVec<T>;
  const int64_t nvec = (a.numel + V - 1) / V;
  const bool by_rows = a.labels != nullptr || a.weight_kind == FocalWeight::kSample ||
                       a.weight_kind == FocalWeight::kClass;
  A acc = 0;
  FASTDET_CUDA_KERNEL_LOOP(v, nvec) {
    const int64_t i0 = v * V;
    const int n = static_cast<int>(a.numel - i0 < V ? a.numel - i0 : V);
    A xs[V], ts[V], ws[V];
    load_elems(a.x, i0, n, a.vec, xs);
    if (a.t != nullptr) load_elems(a.t, i0, n, a.vec, ts);
    if (a.weight_kind == FocalWeight::kElement) load_elems(a.w, i0, n, a.vec, ws);
    if (by_rows) {
      int64_t row = i0 / a.cols, c = i0 - row * a.cols;
      int64_t label = a.labels != nullptr ? a.labels[row] : 0;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        if (j < n) {
          if (a.labels != nullptr) ts[j] = c == label ? A(1) : A(0);
          if (a.weight_kind == FocalWeight::kSample) ws[j] = static_cast<A>(a.w[row]);
          if (a.weight_kind == FocalWeight::kClass) ws[j] = static_cast<A>(a.w[c]);
          if (++c == a.cols) {
            c = 0;
            ++row;
            if (a.labels != nullptr && j + 1 < n) label = a.labels[row];
          }
        }
      }
    }
    A r[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      r[j] = kGrad ? focal_loss_grad<kGammaTwo, StdFocalMath>(xs[j], ts[j], a.k)
                   : focal_loss_value<kGammaTwo, StdFocalMath>(xs[j], ts[j], a.k);
      if (a.weight_kind != FocalWeight::kNone) r[j] *= ws[j];
    }
    if (kGrad) {
      if (a.grad != nullptr) {
        A gs[V];
        load_elems(a.grad, i0, n, a.vec, gs);
#pragma unroll
        for (int j = 0; j < V; ++j) r[j] *= gs[j];
      } else {
        const A g = *a.grad_scalar * a.grad_scale;
#pragma unroll
        for (int j = 0; j < V; ++j) r[j] *= g;
      }
    }
    if (kReduce) {
#pragma unroll
      for (int j = 0; j < V; ++j)
        if (j < n) acc += r[j];
    } else {
      store_elems(a.out, i0, n, a.vec, r);
    }
  }
  if (kReduce) {
    const A s = block_sum(acc);
    if (threadIdx.x == 0) a.partials[blockIdx.x] = s;
  }
}

// One block: out[0] = scale * sum(partials), in a fixed order.
template <typename T, typename A>
__global__ void __launch_bounds__(1024) focal_finish_kernel(const A* __restrict__ partials, int64_t n, A scale,
                                                            T* __restrict__ out) {
  A acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += partials[i];
  const A s = block_sum(acc);
  if (threadIdx.x == 0) out[0] = static_cast<T>(s * scale);
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
FocalCudaArgs<T> make_args(const FocalProblem& p) {
  using A = at::opmath_type<T>;
  FocalCudaArgs<T> a{};
  a.x = p.inputs.const_data_ptr<T>();
  a.t = p.index_targets ? nullptr : p.targets.const_data_ptr<T>();
  a.labels = p.index_targets ? p.targets.const_data_ptr<int64_t>() : nullptr;
  a.w = p.weight.defined() ? p.weight.const_data_ptr<T>() : nullptr;
  a.grad_scale = A(1);
  a.k = make_focal_consts<A>(p.alpha, p.gamma);
  a.numel = p.numel;
  a.cols = p.cols;
  a.weight_kind = p.weight_kind;
  return a;
}

template <typename T>
void finish_alignment(FocalCudaArgs<T>& a) {
  a.vec = aligned16(a.x) && aligned16(a.t) && aligned16(a.out) && aligned16(a.grad) &&
          (a.weight_kind != FocalWeight::kElement || aligned16(a.w));
}

template <bool kGrad, bool kReduce, typename T>
void launch_focal(const FocalCudaArgs<T>& a, double gamma, unsigned int grid, cudaStream_t stream) {
  if (gamma == 2.0) {
    sigmoid_focal_loss_kernel<kGrad, true, kReduce, T><<<grid, kThreadsPerBlock, 0, stream>>>(a);
  } else {
    sigmoid_focal_loss_kernel<kGrad, false, kReduce, T><<<grid, kThreadsPerBlock, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Class indices must lie in [0, C]. One small reduction and one device-to-host copy; skipped
// while the stream is being captured into a CUDA graph (the kernels only compare indices, so an
// out-of-range one is read as background, never used as an address).
void check_class_indices_cuda(const FocalProblem& p, const char* op) {
  if (!p.index_targets || p.rows == 0) return;
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) return;
  const auto [lo, hi] = at::aminmax(p.targets);
  const at::Tensor range = at::stack({lo, hi}).cpu();
  const int64_t* r = range.const_data_ptr<int64_t>();
  if (r[0] < 0 || r[1] > p.cols) throw_focal_bad_class(r[0], r[1], p.cols, op);
}

at::Tensor sigmoid_focal_loss_cuda(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                                   c10::string_view reduction, const c10::optional<at::Tensor>& weight) {
  const char* op = "sigmoid_focal_loss";
  const FocalProblem p = prepare_sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction, weight, op);
  const c10::cuda::CUDAGuard guard(inputs.device());
  check_class_indices_cuda(p, op);
  const bool reduce = p.reduction != FocalReduction::kNone;
  if (p.numel == 0) return at::zeros(focal_output_sizes(p), inputs.options());  // the mean of nothing is 0
  at::Tensor out = at::empty(focal_output_sizes(p), inputs.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "sigmoid_focal_loss_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    FocalCudaArgs<scalar_t> a = make_args<scalar_t>(p);
    const unsigned int grid = grid_for(ceil_div(p.numel, kVec<scalar_t>));
    if (!reduce) {
      a.out = out.data_ptr<scalar_t>();
      finish_alignment(a);
      launch_focal<false, false>(a, gamma, grid, stream);
      return;
    }
    at::Tensor partials = at::empty({static_cast<int64_t>(grid)}, inputs.options().dtype(c10::CppTypeToScalarType<A>::value));
    a.partials = partials.data_ptr<A>();
    finish_alignment(a);
    launch_focal<false, true>(a, gamma, grid, stream);
    const A scale = p.reduction == FocalReduction::kMean ? A(1) / static_cast<A>(p.numel) : A(1);
    focal_finish_kernel<scalar_t, A><<<1, 1024, 0, stream>>>(a.partials, grid, scale, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor sigmoid_focal_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& inputs, const at::Tensor& targets,
                                            double alpha, double gamma, c10::string_view reduction,
                                            const c10::optional<at::Tensor>& weight) {
  const char* op = "_sigmoid_focal_loss_backward";
  const FocalProblem p = prepare_sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction, weight, op);
  check_focal_backward_grad(p, grad, op);
  const c10::cuda::CUDAGuard guard(inputs.device());
  at::Tensor grad_inputs = at::empty_like(p.inputs);
  if (p.numel == 0) return grad_inputs;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "sigmoid_focal_loss_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    FocalCudaArgs<scalar_t> a = make_args<scalar_t>(p);
    a.out = grad_inputs.data_ptr<scalar_t>();
    at::Tensor g;
    if (p.reduction == FocalReduction::kNone) {
      g = grad.to(inputs.scalar_type()).contiguous();
      a.grad = g.const_data_ptr<scalar_t>();
    } else {
      g = grad.to(c10::CppTypeToScalarType<A>::value).contiguous();
      a.grad_scalar = g.const_data_ptr<A>();
      if (p.reduction == FocalReduction::kMean) a.grad_scale = A(1) / static_cast<A>(p.numel);
    }
    finish_alignment(a);
    launch_focal<true, false>(a, gamma, grid_for(ceil_div(p.numel, kVec<scalar_t>)), stream);
  });
  return grad_inputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CUDA, m) {
  m.impl("sigmoid_focal_loss", &sigmoid_focal_loss_cuda);
  m.impl("_sigmoid_focal_loss_backward", &sigmoid_focal_loss_backward_cuda);
}

}  // namespace fastdet
