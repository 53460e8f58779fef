// CUDA kernels of fastdet::border_align.
//
// Forward: one thread per output element (n, c, j, k), k fastest, so the 4 borders of a box are
// neighbouring threads and the output and argmax writes are coalesced. Each thread walks the
// pool_size + 1 points of its border (common/bilinear.h), keeping the first maximum (a NaN sample
// wins over numbers, as torch.max). Math in fp32 for half inputs.
// Backward: one thread per output element; the arg-max point is re-derived from the box and the
// stored index, and its 4 corner weights are added with atomicAdd into an fp32 (fp64 for double)
// gradient buffer, only for points inside the map (mmcv's kernel writes out of bounds there).
// Atomics make the summation order, and so the last bits, nondeterministic. Under
// torch.use_deterministic_algorithms(True): one thread per gradient plane (n, k*C + c) instead, the
// channel fastest, walking the boxes in order (border_align_scatter_point, ops/border_align.h, as the
// CPU kernel): no atomics, a fixed order, bitwise reproducible; N * 4C threads, each serial
// over the H*W boxes, so it is slower than the atomic path.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common/cuda_helpers.h"
#include "ops/border_align.h"

namespace fastdet {
namespace {

template <typename T>
__global__ void border_align_forward_kernel(const T* __restrict__ input, const T* __restrict__ boxes,
                                            int64_t total, int64_t c_n, int64_t hw, int64_t h, int64_t w,
                                            int64_t pool_size, T* __restrict__ out, int32_t* __restrict__ argmax) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(idx, total) {
    const int k = static_cast<int>(idx % 4);
    const int64_t j = (idx / 4) % hw;
    const int64_t c = (idx / (4 * hw)) % c_n;
    const int64_t n = idx / (4 * hw * c_n);
    const T* plane = input + ((n * 4 + k) * c_n + c) * hw;
    const BorderLine<acc_t> line = border_line(load_box<acc_t>(boxes, n * hw + j), k, pool_size);
    acc_t best = bilinear_sample(plane, border_point_corners(line, 0, h, w));
    int32_t arg = 0;
    for (int64_t i = 1; i <= pool_size; ++i) {
      const acc_t v = bilinear_sample(plane, border_point_corners(line, i, h, w));
      if (v > best || (v != v && best == best)) {
        best = v;
        arg = static_cast<int32_t>(i);
      }
    }
    out[idx] = static_cast<T>(best);
    argmax[idx] = arg;
  }
}

template <typename T>
__global__ void border_align_backward_kernel(const T* __restrict__ grad, const int32_t* __restrict__ argmax,
                                             const T* __restrict__ boxes, int64_t total, int64_t c_n, int64_t hw,
                                             int64_t h, int64_t w, int64_t pool_size,
                                             at::opmath_type<T>* __restrict__ grad_input) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(idx, total) {
    const acc_t g = static_cast<acc_t>(grad[idx]);
    if (g == acc_t(0)) continue;
    const int k = static_cast<int>(idx % 4);
    const int64_t j = (idx / 4) % hw;
    const int64_t c = (idx / (4 * hw)) % c_n;
    const int64_t n = idx / (4 * hw * c_n);
    const BorderLine<acc_t> line = border_line(load_box<acc_t>(boxes, n * hw + j), k, pool_size);
    const BilinearCorners<acc_t> cr = border_point_corners(line, static_cast<int64_t>(argmax[idx]), h, w);
    if (!cr.valid) continue;  // outside the map: no gradient, and no out-of-bounds write
    acc_t* plane = grad_input + ((n * 4 + k) * c_n + c) * hw;
    atomicAdd(plane + cr.o00, g * cr.w00);
    atomicAdd(plane + cr.o01, g * cr.w01);
    atomicAdd(plane + cr.o10, g * cr.w10);
    atomicAdd(plane + cr.o11, g * cr.w11);
  }
}

template <typename T>
__global__ void border_align_backward_plane_kernel(const T* __restrict__ grad, const int32_t* __restrict__ argmax,
                                                   const T* __restrict__ boxes, int64_t n_n, int64_t c_n, int64_t h,
                                                   int64_t w, int64_t pool_size,
                                                   at::opmath_type<T>* __restrict__ grad_input) {
  using acc_t = at::opmath_type<T>;
  const int64_t hw = h * w;
  FASTDET_CUDA_KERNEL_LOOP(idx, n_n * 4 * c_n) {  // plane (n, k, c) of grad_input [N, 4C, H, W]
    const int64_t c = idx % c_n, n = idx / (4 * c_n);
    const int k = static_cast<int>((idx / c_n) % 4);
    const int64_t row = (n * c_n + c) * hw * 4 + k;  // grad, argmax [N, C, H*W, 4]
    for (int64_t j = 0; j < hw; ++j)
      border_align_scatter_point(load_box<acc_t>(boxes, n * hw + j), k, argmax[row + j * 4],
                                 static_cast<acc_t>(grad[row + j * 4]), h, w, pool_size, grad_input + idx * hw);
  }
}

std::tuple<at::Tensor, at::Tensor> border_align_cuda(const at::Tensor& input, const at::Tensor& boxes,
                                                     int64_t pool_size) {
  const BorderAlignProblem p = prepare_border_align(input, boxes, pool_size);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty({p.n, p.c, p.hw, 4}, input.options());
  at::Tensor argmax = at::empty({p.n, p.c, p.hw, 4}, input.options().dtype(at::kInt));
  const int64_t total = out.numel();
  if (total == 0) return {out, argmax};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "border_align_cuda", [&] {
    border_align_forward_kernel<scalar_t><<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
        p.input.const_data_ptr<scalar_t>(), p.boxes.const_data_ptr<scalar_t>(), total, p.c, p.hw, p.h, p.w,
        p.pool_size, out.data_ptr<scalar_t>(), argmax.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, argmax};
}

at::Tensor border_align_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& argmax,
                                      int64_t pool_size, int64_t height, int64_t width) {
  const BorderAlignProblem p = prepare_border_align_backward(grad, boxes, argmax, pool_size, height, width);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::ScalarType dtype = grad.scalar_type();
  const at::ScalarType acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_input = at::zeros({p.n, 4 * p.c, p.h, p.w}, grad.options().dtype(acc_dtype));
  const int64_t total = grad.numel();
  if (total == 0 || grad_input.numel() == 0) return grad_input.to(dtype);
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const at::Tensor g = grad.contiguous();
  const at::Tensor a = argmax.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "border_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (deterministic) {
      const int64_t planes = p.n * 4 * p.c;
      border_align_backward_plane_kernel<scalar_t><<<grid_for(planes), kThreadsPerBlock, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), a.const_data_ptr<int32_t>(), p.boxes.const_data_ptr<scalar_t>(), p.n, p.c,
          p.h, p.w, p.pool_size, grad_input.data_ptr<acc_t>());
    } else {
      border_align_backward_kernel<scalar_t><<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), a.const_data_ptr<int32_t>(), p.boxes.const_data_ptr<scalar_t>(), total, p.c,
          p.hw, p.h, p.w, p.pool_size, grad_input.data_ptr<acc_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input.to(dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CUDA, m) {
  m.impl("border_align", &border_align_cuda);
  m.impl("_border_align_backward", &border_align_backward_cuda);
}

}  // namespace fastdet
