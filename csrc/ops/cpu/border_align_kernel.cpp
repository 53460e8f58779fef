// CPU kernels of fastdet::border_align (no other library has one).
//
// Forward: the sampling points of a box do not depend on the channel, so work is split into
// blocks of kBoxBlock boxes of one image (run in parallel); a block first computes the bilinear
// corners of all its 4 * (pool_size + 1) points per box once, then walks every channel of every
// border block reusing them (one H x W plane is read by consecutive boxes, so it stays in cache).
// Ties keep the first maximum in sampling order; a NaN sample wins over numbers (as torch.max).
// Backward: grad_input[n, k*C + c] is written only by output column k of channel c of image n, so
// each (n, k, c) plane is owned by one task: the arg-max point is re-derived from the box and the
// stored index and its 4 corner weights are scattered with bounds checks. Deterministic, no atomics.
// Half inputs accumulate in fp32 (at::opmath_type) and are rounded once at the end.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "ops/border_align.h"

namespace fastdet {
namespace {

constexpr int64_t kBoxBlock = 32;

template <typename T>
void border_align_forward_impl(const BorderAlignProblem& p, at::Tensor& out, at::Tensor& argmax) {
  using acc_t = at::opmath_type<T>;
  const T* in = p.input.const_data_ptr<T>();
  const T* bx = p.boxes.const_data_ptr<T>();
  T* o = out.data_ptr<T>();
  int32_t* am = argmax.data_ptr<int32_t>();
  const int64_t n_img = p.n, c_n = p.c, hw = p.hw, h = p.h, w = p.w, ps = p.pool_size, np = ps + 1;
  const int64_t blocks_per_img = (hw + kBoxBlock - 1) / kBoxBlock;
  at::parallel_for(0, n_img * blocks_per_img, 1, [&](int64_t begin, int64_t end) {
    std::vector<BilinearCorners<acc_t>> table;  // [4][block boxes][pool_size + 1]
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t n = blk / blocks_per_img;
      const int64_t j0 = (blk % blocks_per_img) * kBoxBlock, j1 = std::min(hw, j0 + kBoxBlock), nb = j1 - j0;
      table.resize(4 * nb * np);
      for (int64_t j = j0; j < j1; ++j) {
        const Box<acc_t> b = load_box<acc_t>(bx, n * hw + j);
        for (int k = 0; k < 4; ++k) {
          const BorderLine<acc_t> line = border_line(b, k, ps);
          BilinearCorners<acc_t>* t = table.data() + (k * nb + (j - j0)) * np;
          for (int64_t i = 0; i < np; ++i) t[i] = border_point_corners(line, i, h, w);
        }
      }
      for (int k = 0; k < 4; ++k) {
        for (int64_t c = 0; c < c_n; ++c) {
          const T* plane = in + ((n * 4 + k) * c_n + c) * hw;
          const int64_t out_row = (n * c_n + c) * hw;
          for (int64_t j = j0; j < j1; ++j) {
            const BilinearCorners<acc_t>* t = table.data() + (k * nb + (j - j0)) * np;
            acc_t best = bilinear_sample(plane, t[0]);
            int32_t arg = 0;
            for (int64_t i = 1; i < np; ++i) {
              const acc_t v = bilinear_sample(plane, t[i]);
              // NB: strict > keeps the first maximum; the second clause lets the first NaN win.
              if (v > best || (v != v && best == best)) {
                best = v;
                arg = static_cast<int32_t>(i);
              }
            }
            o[(out_row + j) * 4 + k] = static_cast<T>(best);
            am[(out_row + j) * 4 + k] = arg;
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> border_align_cpu(const at::Tensor& input, const at::Tensor& boxes,
                                                    int64_t pool_size) {
  const BorderAlignProblem p = prepare_border_align(input, boxes, pool_size);
  at::Tensor out = at::empty({p.n, p.c, p.hw, 4}, input.options());
  at::Tensor argmax = at::empty({p.n, p.c, p.hw, 4}, input.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "border_align_cpu", [&] {
    border_align_forward_impl<scalar_t>(p, out, argmax);
  });
  return {out, argmax};
}

template <typename T>
void border_align_backward_impl(const BorderAlignProblem& p, const at::Tensor& grad, const at::Tensor& argmax,
                                at::Tensor& grad_input) {
  using acc_t = at::opmath_type<T>;
  const T* g = grad.const_data_ptr<T>();
  const int32_t* am = argmax.const_data_ptr<int32_t>();
  const T* bx = p.boxes.const_data_ptr<T>();
  acc_t* gi = grad_input.data_ptr<acc_t>();
  const int64_t c_n = p.c, hw = p.hw, h = p.h, w = p.w, ps = p.pool_size;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(hw, 1));
  at::parallel_for(0, p.n * 4 * c_n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t plane_idx = begin; plane_idx < end; ++plane_idx) {  // (n, k, c)
      const int64_t n = plane_idx / (4 * c_n);
      const int k = static_cast<int>((plane_idx / c_n) % 4);
      const int64_t c = plane_idx % c_n;
      acc_t* plane = gi + plane_idx * hw;
      const int64_t out_row = (n * c_n + c) * hw;
      for (int64_t j = 0; j < hw; ++j) {
        const int64_t oi = (out_row + j) * 4 + k;
        const acc_t gv = static_cast<acc_t>(g[oi]);
        if (gv == acc_t(0)) continue;
        const BorderLine<acc_t> line = border_line(load_box<acc_t>(bx, n * hw + j), k, ps);
        const BilinearCorners<acc_t> cr = border_point_corners(line, static_cast<int64_t>(am[oi]), h, w);
        if (!cr.valid) continue;  // outside the map: no gradient (and no out-of-bounds write)
        plane[cr.o00] += gv * cr.w00;
        plane[cr.o01] += gv * cr.w01;
        plane[cr.o10] += gv * cr.w10;
        plane[cr.o11] += gv * cr.w11;
      }
    }
  });
}

at::Tensor border_align_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& argmax,
                                     int64_t pool_size, int64_t height, int64_t width) {
  const BorderAlignProblem p = prepare_border_align_backward(grad, boxes, argmax, pool_size, height, width);
  const at::ScalarType dtype = grad.scalar_type();
  const at::ScalarType acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_input = at::zeros({p.n, 4 * p.c, p.h, p.w}, grad.options().dtype(acc_dtype));
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(dtype);
  const at::Tensor g = grad.contiguous();
  const at::Tensor a = argmax.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "border_align_backward_cpu", [&] {
    border_align_backward_impl<scalar_t>(p, g, a, grad_input);
  });
  return grad_input.to(dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CPU, m) {
  m.impl("border_align", &border_align_cpu);
  m.impl("_border_align_backward", &border_align_backward_cpu);
}

}  // namespace fastdet
