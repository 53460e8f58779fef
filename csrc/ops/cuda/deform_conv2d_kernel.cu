// CUDA kernels of fastdet::deform_conv2d.
//
// Design: chunked deformable im2col + cuBLAS GEMM (torchvision/mmcv's structure, without their
// batch-divisibility rule and with the sampling math done once per point).
// * Images are processed in chunks of B images, B chosen so that the column buffer
//   [C * KK, B * HO * WO] stays under ~128 M elements (any batch size; B >= 1).
// * im2col: one thread per (image, offset group, tap, output pixel) computes the point's corners
//   and weights once (deform_point, ops/deform_conv2d.h) and loops over the C / OG channels of its
//   offset group; adjacent threads handle adjacent pixels, so the column writes are coalesced.
// * GEMM: at::bmm over the weight groups, [G, COUT/G, C/G*KK] x [G, C/G*KK, B*HW], in the input
//   dtype: cuBLAS uses tensor cores for fp16/bf16 with fp32 accumulation.
// * Backward: grad_columns = W^T @ grad (bmm); one thread per (image, offset group, tap, pixel)
//   then reduces over its channels for grad_offset and grad_mask (owned, no atomics), writes the
//   masked columns for grad_weight (bmm, accumulated in fp32/fp64), and scatters grad_input with
//   atomics into an fp32 (fp64) buffer (nondeterministic in the last bits).
//   Under torch.use_deterministic_algorithms(True) grad_input is a gather instead (ops/deform_conv2d.h:
//   the points sorted by cell, one thread per grad_input element), in smaller chunks of images.
// * 64-bit indexing everywhere (grid-stride loops).
// A fused implicit-GEMM kernel (no column buffer) is the next step; see ANCHORS.md part B.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cuda_helpers.h"
#include "ops/deform_conv2d.h"

namespace fastdet {
namespace {

template <typename S>
__device__ __forceinline__ S mul0(S a, S v) {
  return a == S(0) ? S(0) : a * v;
}

// columns [C * KK, B * HWO] (row c * KK + k, column b * HWO + pix) = mask * bilinear sample.
template <typename T>
__global__ void im2col_kernel(DeformGeometry g, int64_t n0, int64_t nb, const T* input, const T* offset, const T* mask,
                              T* cols) {
  using S = at::opmath_type<T>;
  const int64_t ncol = nb * g.hwo, hw = g.h * g.w;
  FASTDET_CUDA_KERNEL_LOOP(idx, nb * g.og * g.kk * g.hwo) {
    const DeformItem<S> it = deform_item<T, S>(g, idx, n0, offset, mask);
    const DeformPoint<S>& d = it.d;
    const int64_t b = it.b, k = it.k, pix = it.pix;
    for (int64_t c = it.og * g.cog; c < (it.og + 1) * g.cog; ++c) {
      const T* pl = input + ((n0 + b) * g.c + c) * hw;
      S v = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) v += mul0(d.w[j], static_cast<S>(pl[d.o[j]]));
      cols[(c * g.kk + k) * ncol + b * g.hwo + pix] = static_cast<T>(it.mk * v);
    }
  }
}

// From grad_columns [C * KK, B * HWO]: grad_offset, grad_mask (owned), masked columns (for
// grad_weight) and, unless grad_input is null (deterministic mode: the gather below), the atomic
// scatter into grad_input (math type A).
template <typename T, typename A>
__global__ void col2im_kernel(DeformGeometry g, int64_t n0, int64_t nb, const T* input, const T* offset, const T* mask,
                              const T* gcols, T* cols, A* grad_input, T* grad_offset, T* grad_mask) {
  using S = at::opmath_type<T>;
  const int64_t ncol = nb * g.hwo, hw = g.h * g.w;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < nb * g.og * g.kk * g.hwo;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const DeformItem<S> it = deform_item<T, S>(g, idx, n0, offset, mask);
    const DeformPoint<S>& d = it.d;
    const int64_t b = it.b, og = it.og, k = it.k, pix = it.pix, n = n0 + b;
    const S mk = it.mk;
    S sm = 0, sy = 0, sx = 0;
    for (int64_t c = og * g.cog; c < (og + 1) * g.cog; ++c) {
      const T* pl = input + (n * g.c + c) * hw;
      A* gpl = grad_input ? grad_input + (n * g.c + c) * hw : nullptr;
      const int64_t col = (c * g.kk + k) * ncol + b * g.hwo + pix;
      const S gq = static_cast<S>(gcols[col]), gm = gq * mk;
      S val = 0, vy = 0, vx = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const S v = static_cast<S>(pl[d.o[j]]);
        val += mul0(d.w[j], v);
        vy += mul0(d.dy[j], v);
        vx += mul0(d.dx[j], v);
        if (grad_input && d.w[j] != S(0)) atomicAdd(gpl + d.o[j], static_cast<A>(gm * d.w[j]));
      }
      cols[col] = static_cast<T>(mk * val);
      sm += gq * val;
      sy += gq * vy;
      sx += gq * vx;
    }
    T* go = grad_offset + ((n * g.og + og) * 2 * g.kk + 2 * k) * g.hwo + pix;
    go[0] = static_cast<T>(mk * sy);
    go[g.hwo] = static_cast<T>(mk * sx);
    if (grad_mask) grad_mask[((n * g.og + og) * g.kk + k) * g.hwo + pix] = static_cast<T>(sm);
  }
}

// Deterministic grad_input, step 1: the cell key of each point of the chunk (ops/deform_conv2d.h).
template <typename T>
__global__ void cell_key_kernel(DeformGeometry g, int64_t n0, int64_t nb, const T* offset, int64_t* keys) {
  using S = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(idx, nb * g.og * g.kk * g.hwo) keys[idx] = deform_cell_key<T, S>(g, idx, n0, offset);
}

// Step 2 (after segments_by_key): one thread per grad_input element of the chunk, x fastest, so
// neighbouring threads walk neighbouring cells.
template <typename T, typename A>
__global__ void gather_grad_input_kernel(DeformGeometry g, int64_t n0, int64_t nb, const int64_t* order,
                                         const int64_t* cell_offsets, const T* offset, const T* mask, const T* gcols,
                                         A* grad_input) {
  using S = at::opmath_type<T>;
  const int64_t hw = g.h * g.w;
  FASTDET_CUDA_KERNEL_LOOP(idx, nb * g.c * hw) {
    const int64_t x = idx % g.w, y = (idx / g.w) % g.h, c = (idx / hw) % g.c, b = idx / (hw * g.c);
    grad_input[n0 * g.c * hw + idx] = static_cast<A>(
        deform_grad_input_at<T, S>(g, n0, nb, b, c, y, x, order, cell_offsets, offset, mask, gcols));
  }
}

int64_t chunk_images(const DeformConvProblem& p) {
  const int64_t per_image = std::max<int64_t>(p.c * p.kk() * p.hwo(), 1);
  return std::clamp<int64_t>((int64_t(1) << 27) / per_image, 1, std::max<int64_t>(p.n, 1));
}

at::Tensor deform_conv2d_forward_kernel(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mask,
                                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  DeformConvProblem p = prepare_deform_conv2d(input, offset, weight, mask, stride, padding, dilation);
  check_deform_bias(bias, input, p.cout);
  TORCH_CHECK(input.is_cuda(), "fastdet::deform_conv2d: input must be a CUDA tensor, got ", input.device());
  c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty({p.n, p.cout, p.ho, p.wo}, input.options());
  if (out.numel() == 0) return out;
  const DeformGeometry geo = p.geometry();
  const int64_t chunk = chunk_images(p), kk = p.kk();
  const at::Tensor wg = p.weight.view({p.groups, p.coutg(), p.cg() * kk});
  auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t n0 = 0; n0 < p.n; n0 += chunk) {
    const int64_t nb = std::min(chunk, p.n - n0);
    at::Tensor cols = at::empty({p.c * kk, nb * p.hwo()}, input.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_im2col", [&] {
      const int64_t work = nb * p.offset_groups * kk * p.hwo();
      im2col_kernel<scalar_t><<<grid_for(work), kThreadsPerBlock, 0, stream>>>(
          geo, n0, nb, p.input.const_data_ptr<scalar_t>(), p.offset.const_data_ptr<scalar_t>(),
          p.use_mask ? p.mask.const_data_ptr<scalar_t>() : nullptr, cols.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    // [G, COUT/G, nb * HWO] -> [COUT, nb, HO, WO] -> out[n0 : n0 + nb]
    const at::Tensor res = at::bmm(wg, cols.view({p.groups, p.cg() * kk, nb * p.hwo()}));
    out.narrow(0, n0, nb).copy_(res.view({p.cout, nb, p.ho, p.wo}).permute({1, 0, 2, 3}));
  }
  if (bias.has_value() && bias->defined()) out.add_(bias->view({1, p.cout, 1, 1}));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_kernel(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& mask, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = "_deform_conv2d_backward";
  DeformConvProblem p = prepare_deform_conv2d(input, offset, weight, mask, stride, padding, dilation, op);
  check_deform_grad(grad, p, op);
  TORCH_CHECK(input.is_cuda(), "fastdet::", op, ": input must be a CUDA tensor, got ", input.device());
  c10::cuda::CUDAGuard guard(input.device());
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t kk = p.kk(), hwo = p.hwo(), cgk = p.cg() * kk;
  at::Tensor grad_input = at::zeros(p.input.sizes(), input.options().dtype(acc));
  at::Tensor grad_offset = at::zeros_like(p.offset);
  at::Tensor grad_mask = p.use_mask ? at::zeros_like(p.mask) : at::zeros({0}, input.options());
  at::Tensor grad_weight = at::zeros({p.groups, p.coutg(), cgk}, input.options().dtype(acc));
  at::Tensor grad_bias = grad.sum({0, 2, 3}, false, acc).to(input.scalar_type());
  if (grad.numel() > 0 && p.input.numel() > 0) {
    const DeformGeometry geo = p.geometry();
    const int64_t chunk = deterministic ? deform_gather_chunk(p, chunk_images(p)) : chunk_images(p);
    const at::Tensor wg = p.weight.view({p.groups, p.coutg(), cgk});
    auto stream = at::cuda::getCurrentCUDAStream();
    for (int64_t n0 = 0; n0 < p.n; n0 += chunk) {
      const int64_t nb = std::min(chunk, p.n - n0);
      const int64_t points = nb * p.offset_groups * kk * hwo;
      const at::Tensor go = grad_output_chunk(p, grad, n0, nb);
      const at::Tensor gcols = at::bmm(wg.transpose(1, 2), go);  // [G, C/G*KK, nb * HWO]
      at::Tensor cols = at::empty({p.c * kk, nb * hwo}, input.options());
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_col2im", [&] {
        using A = at::opmath_type<scalar_t>;
        const scalar_t* off = p.offset.const_data_ptr<scalar_t>();
        const scalar_t* msk = p.use_mask ? p.mask.const_data_ptr<scalar_t>() : nullptr;
        col2im_kernel<scalar_t, A><<<grid_for(points), kThreadsPerBlock, 0, stream>>>(
            geo, n0, nb, p.input.const_data_ptr<scalar_t>(), off, msk, gcols.const_data_ptr<scalar_t>(),
            cols.data_ptr<scalar_t>(), deterministic ? nullptr : grad_input.data_ptr<A>(),
            grad_offset.data_ptr<scalar_t>(), p.use_mask ? grad_mask.data_ptr<scalar_t>() : nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (!deterministic) return;
        at::Tensor keys = at::empty({points}, input.options().dtype(at::kLong));
        cell_key_kernel<scalar_t><<<grid_for(points), kThreadsPerBlock, 0, stream>>>(geo, n0, nb, off,
                                                                                      keys.data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const KeySegments cells = segments_by_key(keys, nb * p.offset_groups * deform_cells_per_plane(geo));
        const int64_t elements = nb * p.c * p.h * p.w;
        gather_grad_input_kernel<scalar_t, A><<<grid_for(elements), kThreadsPerBlock, 0, stream>>>(
            geo, n0, nb, cells.order.const_data_ptr<int64_t>(), cells.offsets.const_data_ptr<int64_t>(), off, msk,
            gcols.const_data_ptr<scalar_t>(), grad_input.data_ptr<A>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      grad_weight.add_(at::bmm(go, cols.view({p.groups, cgk, nb * hwo}).transpose(1, 2)));
    }
  }
  return {grad_input.to(input.scalar_type()), grad_offset, grad_mask,
          grad_weight.view(p.weight.sizes()).to(input.scalar_type()), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_forward_kernel);
  m.impl("_deform_conv2d_backward", &deform_conv2d_backward_kernel);
}

}  // namespace fastdet
