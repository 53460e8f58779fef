// CPU kernels of fastdet::border_align (no other library has one).
//
// Forward: the sampling points of a box do not depend on the channel, so the features are first
// copied to channels-last [N, 4, H, W, C] (in the math type); then per (image, box, border) each
// point's bilinear corners are computed once and the weighted sum and running maximum run as
// vector loops over the C contiguous channels. Boxes run in parallel.
// Ties keep the first maximum in sampling order; a NaN sample wins over numbers (as torch.max).
// Backward: grad_input[n, k*C + c] is written only by output column k of channel c of image n, so
// each (n, c) group of 4 planes is owned by one task: the arg-max point is re-derived from the box
// and the stored index and its 4 corner weights are scattered with bounds checks, in box order
// (border_align_scatter_point, ops/border_align.h, shared with the CUDA deterministic backward).
// Deterministic and independent of the thread count, no atomics.
// Half inputs accumulate in fp32 (at::opmath_type) and are rounded once at the end.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "ops/border_align.h"

namespace fastdet {
namespace {

// dst[b, c, r] = dst_t(src[b, r, c]) for src [B, R, C]: a blocked transpose (with the dtype
// conversion), parallel over tiles; torch's generic permute copy is several times slower here.
template <typename dst_t, typename src_t>
void transpose_batched(const src_t* src, dst_t* dst, int64_t batches, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = 32;
  const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
  at::parallel_for(0, batches * row_tiles * col_tiles, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / (row_tiles * col_tiles);
      const int64_t r0 = (t / col_tiles) % row_tiles * kTile, c0 = t % col_tiles * kTile;
      const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
      const src_t* s = src + b * rows * cols;
      dst_t* d = dst + b * rows * cols;
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) d[c * rows + r] = static_cast<dst_t>(s[r * cols + c]);
    }
  });
}

// One point's weighted sums over C contiguous channels folded into the running maximum: strict >
// keeps the first maximum; NaN never compares greater, so the first NaN index is tracked apart.
// Written branch-free over restrict pointers so that it vectorises.
template <typename acc_t>
void max_update(const acc_t* __restrict__ v00, const acc_t* __restrict__ v01, const acc_t* __restrict__ v10,
                const acc_t* __restrict__ v11, acc_t w00, acc_t w01, acc_t w10, acc_t w11, int64_t c_n, int32_t i,
                acc_t* __restrict__ best, int32_t* __restrict__ arg, int32_t* __restrict__ nan_arg) {
  for (int64_t c = 0; c < c_n; ++c) {
    const acc_t v = w00 * v00[c] + w01 * v01[c] + w10 * v10[c] + w11 * v11[c];
    const acc_t b = best[c];
    const int32_t a = arg[c], na = nan_arg[c];
    // NB: integer 0/1 masks and arithmetic selects: with bool conditions GCC sees control flow
    // and does not vectorise the loop.
    const int32_t better = v > b;
    const int32_t first_nan = static_cast<int32_t>(v != v) & static_cast<int32_t>(na < 0);
    best[c] = better ? v : b;
    arg[c] = a + better * (i - a);
    nan_arg[c] = na + first_nan * (i - na);
  }
}

// Forward on channels-last features xt [N, 4, H, W, C] in the math type: for one (image, box,
// border) the pool_size + 1 points are computed once, and each point's 4 corners are C
// contiguous values, so the weighted sum and the running maximum are vector loops over channels.
template <typename T>
void border_align_forward_impl(const BorderAlignProblem& p, const at::Tensor& xt, at::Tensor& out,
                               at::Tensor& argmax) {
  using acc_t = at::opmath_type<T>;
  const acc_t* in = xt.const_data_ptr<acc_t>();
  const T* bx = p.boxes.const_data_ptr<T>();
  T* o = out.data_ptr<T>();
  int32_t* am = argmax.data_ptr<int32_t>();
  const int64_t c_n = p.c, hw = p.hw, h = p.h, w = p.w, ps = p.pool_size;
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(c_n * ps, 1));
  at::parallel_for(0, p.n * hw, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> best(c_n);
    std::vector<int32_t> arg(c_n), nan_arg(c_n);
    for (int64_t nj = begin; nj < end; ++nj) {  // (n, j)
      const int64_t n = nj / hw, j = nj % hw;
      const Box<acc_t> b = load_box<acc_t>(bx, nj);
      for (int k = 0; k < 4; ++k) {
        const acc_t* planes = in + (n * 4 + k) * hw * c_n;  // [H*W, C]
        const BorderLine<acc_t> line = border_line(b, k, ps);
        acc_t* bst = best.data();
        int32_t* ag = arg.data();
        int32_t* na = nan_arg.data();
        std::fill(best.begin(), best.end(), -std::numeric_limits<acc_t>::infinity());
        std::fill(arg.begin(), arg.end(), 0);
        std::fill(nan_arg.begin(), nan_arg.end(), -1);
        for (int64_t i = 0; i <= ps; ++i) {
          const BilinearCorners<acc_t> cr = border_point_corners(line, i, h, w);
          const int32_t ii = static_cast<int32_t>(i);
          if (cr.valid) {
            max_update(planes + cr.o00 * c_n, planes + cr.o01 * c_n, planes + cr.o10 * c_n, planes + cr.o11 * c_n,
                       cr.w00, cr.w01, cr.w10, cr.w11, c_n, ii, bst, ag, na);
          } else {  // the point samples 0 in every channel
            for (int64_t c = 0; c < c_n; ++c) {
              const acc_t b = bst[c];
              const int32_t better = acc_t(0) > b;
              bst[c] = better ? acc_t(0) : b;
              ag[c] = ag[c] + better * (ii - ag[c]);
            }
          }
        }
        for (int64_t c = 0; c < c_n; ++c) {
          const int64_t oi = ((n * c_n + c) * hw + j) * 4 + k;
          const bool has_nan = na[c] >= 0;  // the first NaN sample wins (as torch.max)
          o[oi] = static_cast<T>(has_nan ? std::numeric_limits<acc_t>::quiet_NaN() : bst[c]);
          am[oi] = has_nan ? na[c] : ag[c];
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
  const at::ScalarType acc_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor xt = at::empty({p.n, 4, p.h, p.w, p.c}, input.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "border_align_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // [N, 4C, H, W] -> [N, 4, H, W, C] in the math type (one pass over the input).
    transpose_batched(p.input.const_data_ptr<scalar_t>(), xt.data_ptr<acc_t>(), p.n * 4, p.c, p.hw);
    border_align_forward_impl<scalar_t>(p, xt, out, argmax);
  });
  return {out, argmax};
}

// Backward: task (n, c) owns the 4 planes grad_input[n, k*C + c] (k = 0..3) and reads its
// grad/argmax rows [H*W, 4] contiguously. Recomputing a point's corners per element is cheaper
// than any table here (the loop is bound by memory, not arithmetic).
template <typename T>
void border_align_backward_impl(const BorderAlignProblem& p, const T* g, const int32_t* am,
                                at::opmath_type<T>* gi) {
  using acc_t = at::opmath_type<T>;
  const T* bx = p.boxes.const_data_ptr<T>();
  const int64_t c_n = p.c, hw = p.hw, h = p.h, w = p.w, ps = p.pool_size;
  const int64_t grain = std::max<int64_t>(1, 1024 / std::max<int64_t>(hw, 1));
  at::parallel_for(0, p.n * c_n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {  // (n, c)
      const int64_t n = nc / c_n, c = nc % c_n;
      acc_t* planes[4];
      for (int k = 0; k < 4; ++k) planes[k] = gi + ((n * 4 + k) * c_n + c) * hw;
      const T* grow = g + nc * hw * 4;
      const int32_t* arow = am + nc * hw * 4;
      for (int64_t j = 0; j < hw; ++j) {
        const Box<acc_t> b = load_box<acc_t>(bx, n * hw + j);
        for (int k = 0; k < 4; ++k)
          border_align_scatter_point(b, k, arow[j * 4 + k], static_cast<acc_t>(grow[j * 4 + k]), h, w, ps, planes[k]);
      }
    }
  });
}

at::Tensor border_align_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& argmax,
                                     int64_t pool_size, int64_t height, int64_t width) {
  const BorderAlignProblem p = prepare_border_align_backward(grad, boxes, argmax, pool_size, height, width);
  const at::ScalarType dtype = grad.scalar_type();
  const at::ScalarType acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  // Accumulates in the math type (fp32 for half inputs), rounded once at the end.
  at::Tensor grad_input = at::zeros({p.n, 4 * p.c, p.h, p.w}, grad.options().dtype(acc_dtype));
  if (grad.numel() > 0 && grad_input.numel() > 0) {
    const at::Tensor g = grad.contiguous();
    const at::Tensor a = argmax.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "border_align_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      border_align_backward_impl<scalar_t>(p, g.const_data_ptr<scalar_t>(), a.const_data_ptr<int32_t>(),
                                           grad_input.data_ptr<acc_t>());
    });
  }
  return grad_input.to(dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CPU, m) {
  m.impl("border_align", &border_align_cpu);
  m.impl("_border_align_backward", &border_align_backward_cpu);
}

}  // namespace fastdet
