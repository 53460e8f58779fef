// CUDA kernels of fastdet::box_iou.
//
// Forward: one thread per output element in a 64-bit grid-stride loop, j (the column) fastest so
// the writes — the op's only large traffic (4 B/pair in fp32) — are coalesced; the two input boxes
// come from L1/L2. Math in fp32 for half inputs (at::opmath_type).
// Backward, pairwise: grad_boxes1 with one warp per row (lanes stride over j, then a shuffle
// reduction), grad_boxes2 with one thread per column walking i (coalesced reads of grad).
// Gradients come from the forward formula on Dual numbers (common/dual.h). No atomics, so the
// result is deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "common/cuda_helpers.h"
#include "ops/box_iou.h"

namespace fastdet {
namespace {

template <IouMode M, typename T>
__global__ void box_iou_pairwise_kernel(const T* __restrict__ b1, const T* __restrict__ b2, int64_t n,
                                        int64_t m, int64_t total, at::opmath_type<T> eps, T* __restrict__ out) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(idx, total) {
    const int64_t j = idx % m;
    const int64_t row = idx / m;  // b * n + i
    const int64_t b = row / n;
    out[idx] = static_cast<T>(iou_family<M>(load_box<acc_t>(b1, row), load_box<acc_t>(b2, b * m + j), eps));
  }
}

template <IouMode M, typename T>
__global__ void box_iou_aligned_kernel(const T* __restrict__ b1, const T* __restrict__ b2, int64_t n,
                                       at::opmath_type<T> eps, T* __restrict__ out) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(i, n) {
    out[i] = static_cast<T>(iou_family<M>(load_box<acc_t>(b1, i), load_box<acc_t>(b2, i), eps));
  }
}

template <IouMode M, typename T>
__global__ void box_iou_aligned_backward_kernel(const T* __restrict__ grad, const T* __restrict__ b1,
                                                const T* __restrict__ b2, int64_t n, at::opmath_type<T> eps,
                                                T* __restrict__ g1, T* __restrict__ g2) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(i, n) {
    const auto d = iou_family_grad<M, Seed::kSeedBoth>(load_box<acc_t>(b1, i), load_box<acc_t>(b2, i), eps);
    const acc_t g = static_cast<acc_t>(grad[i]);
    for (int k = 0; k < 4; ++k) {
      g1[4 * i + k] = static_cast<T>(g * d.d[k]);
      g2[4 * i + k] = static_cast<T>(g * d.d[4 + k]);
    }
  }
}

// One warp per row (b, i) of grad [B, N, M].
template <IouMode M, typename T>
__global__ void box_iou_backward_rows_kernel(const T* __restrict__ grad, const T* __restrict__ b1,
                                             const T* __restrict__ b2, int64_t rows, int64_t n, int64_t m,
                                             at::opmath_type<T> eps, T* __restrict__ g1) {
  using acc_t = at::opmath_type<T>;
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; row < rows; row += warps) {
    const int64_t b = row / n;
    const Box<acc_t> a = load_box<acc_t>(b1, row);
    acc_t acc[4] = {0, 0, 0, 0};
    for (int64_t j = lane; j < m; j += 32) {
      const auto d = iou_family_grad<M, Seed::kSeedA>(a, load_box<acc_t>(b2, b * m + j), eps);
      const acc_t g = static_cast<acc_t>(grad[row * m + j]);
      for (int k = 0; k < 4; ++k) acc[k] += g * d.d[k];
    }
    for (int k = 0; k < 4; ++k) {
      for (int offset = 16; offset > 0; offset /= 2) acc[k] += __shfl_down_sync(0xffffffffu, acc[k], offset);
    }
    if (lane == 0) {
      for (int k = 0; k < 4; ++k) g1[4 * row + k] = static_cast<T>(acc[k]);
    }
  }
}

// One thread per column (b, j) of grad [B, N, M].
template <IouMode M, typename T>
__global__ void box_iou_backward_cols_kernel(const T* __restrict__ grad, const T* __restrict__ b1,
                                             const T* __restrict__ b2, int64_t cols, int64_t n, int64_t m,
                                             at::opmath_type<T> eps, T* __restrict__ g2) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(col, cols) {
    const int64_t b = col / m, j = col % m;
    const Box<acc_t> bj = load_box<acc_t>(b2, col);
    acc_t acc[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < n; ++i) {
      const auto d = iou_family_grad<M, Seed::kSeedB>(load_box<acc_t>(b1, b * n + i), bj, eps);
      const acc_t g = static_cast<acc_t>(grad[(b * n + i) * m + j]);
      for (int k = 0; k < 4; ++k) acc[k] += g * d.d[k];
    }
    for (int k = 0; k < 4; ++k) g2[4 * col + k] = static_cast<T>(acc[k]);
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode, bool aligned,
                        double eps) {
  const BoxIouProblem p = prepare_box_iou(boxes1, boxes2, mode, aligned);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  at::Tensor out = at::empty(p.out_sizes, boxes1.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* b1 = p.boxes1.const_data_ptr<scalar_t>();
    const scalar_t* b2 = p.boxes2.const_data_ptr<scalar_t>();
    with_iou_mode(p.mode, [&](auto md) {
      constexpr IouMode M = decltype(md)::value;
      if (p.aligned) {
        box_iou_aligned_kernel<M, scalar_t><<<grid_for(p.n), kThreadsPerBlock, 0, stream>>>(
            b1, b2, p.n, static_cast<acc_t>(eps), out.data_ptr<scalar_t>());
      } else {
        const int64_t total = p.batch * p.n * p.m;
        box_iou_pairwise_kernel<M, scalar_t><<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
            b1, b2, p.n, p.m, total, static_cast<acc_t>(eps), out.data_ptr<scalar_t>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> box_iou_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes1,
                                                         const at::Tensor& boxes2, c10::string_view mode,
                                                         bool aligned, double eps) {
  const BoxIouProblem p = prepare_box_iou(boxes1, boxes2, mode, aligned);
  TORCH_CHECK(grad.sizes() == c10::IntArrayRef(p.out_sizes), "fastdet::_box_iou_backward: grad must have ",
              "the forward output's shape, got ", shape_str(grad));
  check_same_device(grad, boxes1, "_box_iou_backward", "grad", "boxes1");
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const at::Tensor g = grad.to(boxes1.scalar_type()).contiguous();
  at::Tensor g1 = at::zeros_like(p.boxes1), g2 = at::zeros_like(p.boxes2);
  if (g.numel() > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* b1 = p.boxes1.const_data_ptr<scalar_t>();
      const scalar_t* b2 = p.boxes2.const_data_ptr<scalar_t>();
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const acc_t e = static_cast<acc_t>(eps);
      with_iou_mode(p.mode, [&](auto md) {
        constexpr IouMode M = decltype(md)::value;
        if (p.aligned) {
          box_iou_aligned_backward_kernel<M, scalar_t><<<grid_for(p.n), kThreadsPerBlock, 0, stream>>>(
              gp, b1, b2, p.n, e, g1.data_ptr<scalar_t>(), g2.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        } else {
          const int64_t rows = p.batch * p.n, cols = p.batch * p.m;
          box_iou_backward_rows_kernel<M, scalar_t><<<grid_for(rows * 32), kThreadsPerBlock, 0, stream>>>(
              gp, b1, b2, rows, p.n, p.m, e, g1.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          box_iou_backward_cols_kernel<M, scalar_t><<<grid_for(cols), kThreadsPerBlock, 0, stream>>>(
              gp, b1, b2, cols, p.n, p.m, e, g2.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    });
  }
  return {g1.view(boxes1.sizes()), g2.view(boxes2.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CUDA, m) {
  m.impl("box_iou", &box_iou_cuda);
  m.impl("_box_iou_backward", &box_iou_backward_cuda);
}

}  // namespace fastdet
