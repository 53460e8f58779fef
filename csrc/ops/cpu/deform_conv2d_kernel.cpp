// CPU kernels of fastdet::deform_conv2d (torchvision's CPU version is single-threaded and builds
// the whole im2col buffer of a batch chunk; it has no fp16/bf16).
//
// Design. Deformable convolution is a gather ("deformable im2col": columns[c * KK + k, pixel] =
// mask * bilinear(input[c], point(k, pixel))) followed by a GEMM with the weight. Here:
// * Work items are (image, tile of P output pixels), P chosen so that one tile of columns
//   (C * KK x P values, ~512 KB) stays in cache; the items are split into one contiguous range per
//   thread (at::parallel_for over the ranges), and each thread runs its own serial GEMMs (at::mm
//   on the tile: BLAS, one thread inside a parallel region). No full im2col buffer, no batch
//   chunking rule (any batch size).
// * A sampling point depends on (offset group, tap, pixel) and not on the channel, so the point's
//   4 corner offsets and weights (and, for the backward, the weights' y/x derivatives) are
//   computed once into small arrays over the tile's pixels and reused for the C / OG channels of
//   the offset group: the per-channel work is 4 gathers and 4 multiply-adds, written as plain
//   loops over the tile's pixels that the compiler vectorises.
// * Backward, per item: grad_columns = W_g^T @ grad_output_tile (GEMM); then one pass per
//   (offset group, tap, channel) computes grad_mask (sum_c grad_col * value), grad_offset
//   (mask * sum_c grad_col * d value / dy, dx), the masked columns for grad_weight, and scatters
//   mask * grad_col * weight into grad_input; finally grad_weight += grad_output_tile @ columns^T
//   (GEMM, into a per-thread accumulator summed at the end).
//   grad_input: a thread owns every image whose items all lie in its range and writes it directly;
//   an image split between threads (at most two per thread) is accumulated in a private buffer
//   and added afterwards. Deterministic for a given thread count, no atomics.
// * torch.use_deterministic_algorithms(True): independent of the thread count too. The items are
//   split into a fixed number of ranges (grad_weight's partial sums), and grad_input is the gather
//   that the CUDA kernel uses in that mode (ops/deform_conv2d.h), so the CPU tests cover it.
// * fp16/bf16 inputs are converted to fp32 once, computed in fp32 and rounded once at the end.
// * A corner whose weight is 0 contributes nothing (so a point outside the map samples 0 even
//   when the plane holds NaN/inf); plane offsets are int32 (checked: H * W < 2^31), image and
//   channel offsets int64.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/deform_conv2d.h"

namespace fastdet {
namespace {

// a * v, but exactly 0 when a is 0 (an unused corner never propagates a NaN/inf value).
template <typename S>
inline S mul0(S a, S v) {
  return a == S(0) ? S(0) : a * v;
}

// (image, tile) work items split into `chunks` contiguous ranges, one per thread; or, in
// deterministic mode, into a fixed number of ranges that the threads share, so that the backward's
// per-range partial sums (grad_weight) do not depend on the thread count.
struct Split {
  int64_t tile, tiles, items, chunks;
  int64_t begin(int64_t chunk) const { return items * chunk / chunks; }
};

constexpr int64_t kDeterministicChunks = 32;

Split make_split(const DeformConvProblem& p, bool deterministic = false) {
  Split s;
  const int64_t rows = std::max<int64_t>(p.c * p.kk(), 1);
  s.tile = std::min<int64_t>(std::max<int64_t>(16, (int64_t(1) << 17) / rows), p.hwo());
  s.tiles = (p.hwo() + s.tile - 1) / s.tile;
  s.items = p.n * s.tiles;
  const int64_t ranges = deterministic ? kDeterministicChunks : at::get_num_threads();
  s.chunks = std::max<int64_t>(1, std::min<int64_t>(ranges, s.items));
  return s;
}

// The sampling points of one (image, offset group, tap) over tile pixels [p0, p0 + np), as
// structure-of-arrays so that the per-channel loops vectorise.
template <typename S>
struct TilePoints {
  std::vector<int32_t> o[4];
  std::vector<S> w[4], dy[4], dx[4];
  std::vector<S> mk;  // the mask value (1 without a mask)
  explicit TilePoints(int64_t n) {
    for (int j = 0; j < 4; ++j) o[j].resize(n), w[j].resize(n), dy[j].resize(n), dx[j].resize(n);
    mk.resize(n);
  }
  void fill(const DeformConvProblem& p, const S* off_n, const S* mask_n, int64_t og, int64_t k, int64_t p0,
            int64_t np) {
    const int64_t hwo = p.hwo(), kk = p.kk();
    const int64_t ki = k / p.kw, kj = k % p.kw;
    const S* oy = off_n + (og * 2 * kk + 2 * k) * hwo;
    const S* ox = oy + hwo;
    const S* m = mask_n ? mask_n + (og * kk + k) * hwo : nullptr;
    for (int64_t q = 0; q < np; ++q) {
      const int64_t pix = p0 + q, py = pix / p.wo, px = pix % p.wo;
      const S y = S(py * p.stride_h - p.pad_h + ki * p.dil_h) + oy[pix];
      const S x = S(px * p.stride_w - p.pad_w + kj * p.dil_w) + ox[pix];
      const DeformPoint<S> d = deform_point<S>(y, x, p.h, p.w);
      for (int j = 0; j < 4; ++j) {
        o[j][q] = static_cast<int32_t>(d.o[j]);
        w[j][q] = d.w[j];
        dy[j][q] = d.dy[j];
        dx[j][q] = d.dx[j];
      }
      mk[q] = m ? m[pix] : S(1);
    }
  }
};

// Row-major [rows, cols] view of a raw buffer.
template <typename S>
at::Tensor view2d(S* data, int64_t rows, int64_t cols, int64_t ld, const at::TensorOptions& opts) {
  return at::from_blob(data, {rows, cols}, {ld, 1}, opts);
}

// ---- forward --------------------------------------------------------------------------------------

template <typename S>
void forward_impl(const DeformConvProblem& p, const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const Split sp = make_split(p);
  const int64_t kk = p.kk(), hw = p.h * p.w, hwo = p.hwo(), cog = p.cog(), cg = p.cg(), coutg = p.coutg();
  const S* in = p.input.const_data_ptr<S>();
  const S* off = p.offset.const_data_ptr<S>();
  const S* msk = p.use_mask ? p.mask.const_data_ptr<S>() : nullptr;
  const at::Tensor wg = p.weight.view({p.groups, coutg, cg * kk});
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous().view({p.groups, coutg, 1}) : at::Tensor();
  const at::Tensor out2 = out.view({p.n, p.cout, hwo});
  const auto opts = p.input.options();
  at::parallel_for(0, sp.chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    // NB: the tile GEMMs write into views of the outputs: plain tensors, no autograd.
    at::NoGradGuard no_grad;
    at::AutoDispatchBelowADInplaceOrView below_ad;
    std::vector<S> cols(p.c * kk * sp.tile);
    TilePoints<S> pts(sp.tile);
    for (int64_t item = sp.begin(c_begin); item < sp.begin(c_end); ++item) {
      const int64_t n = item / sp.tiles, p0 = item % sp.tiles * sp.tile, np = std::min(sp.tile, hwo - p0);
      const S* off_n = off + n * 2 * p.offset_groups * kk * hwo;
      const S* mask_n = msk ? msk + n * p.offset_groups * kk * hwo : nullptr;
      for (int64_t og = 0; og < p.offset_groups; ++og) {
        for (int64_t k = 0; k < kk; ++k) {
          pts.fill(p, off_n, mask_n, og, k, p0, np);
          const int32_t *o0 = pts.o[0].data(), *o1 = pts.o[1].data(), *o2 = pts.o[2].data(), *o3 = pts.o[3].data();
          const S *w0 = pts.w[0].data(), *w1 = pts.w[1].data(), *w2 = pts.w[2].data(), *w3 = pts.w[3].data();
          const S* mk = pts.mk.data();
          for (int64_t c = og * cog; c < (og + 1) * cog; ++c) {
            const S* pl = in + (n * p.c + c) * hw;
            S* dst = cols.data() + (c * kk + k) * np;
            for (int64_t q = 0; q < np; ++q)
              dst[q] = mk[q] * (mul0(w0[q], pl[o0[q]]) + mul0(w1[q], pl[o1[q]]) + mul0(w2[q], pl[o2[q]]) +
                                mul0(w3[q], pl[o3[q]]));
          }
        }
      }
      // out[n, group g, tile] = W_g [COUT/G, C/G * KK] @ columns_g [C/G * KK, np]
      for (int64_t g = 0; g < p.groups; ++g) {
        at::Tensor o = out2[n].narrow(0, g * coutg, coutg).narrow(1, p0, np);
        const at::Tensor colg = view2d(cols.data() + g * cg * kk * np, cg * kk, np, np, opts);
        if (b.defined()) {
          o.copy_(b[g].expand({coutg, np}));
          o.addmm_(wg[g], colg);
        } else {
          at::mm_out(o, wg[g], colg);
        }
      }
    }
  });
}

// ---- backward -------------------------------------------------------------------------------------

// Deterministic mode: grad_input is left to grad_input_by_gather, and the split is fixed.
template <typename S>
void backward_impl(const DeformConvProblem& p, const at::Tensor& grad, bool deterministic, at::Tensor& grad_input,
                   at::Tensor& grad_offset, at::Tensor& grad_mask, at::Tensor& grad_weight) {
  const Split sp = make_split(p, deterministic);
  const bool scatter_input = !deterministic;
  const int64_t kk = p.kk(), hw = p.h * p.w, hwo = p.hwo(), cog = p.cog(), cg = p.cg(), coutg = p.coutg();
  const S* in = p.input.const_data_ptr<S>();
  const S* off = p.offset.const_data_ptr<S>();
  const S* msk = p.use_mask ? p.mask.const_data_ptr<S>() : nullptr;
  S* g_in = grad_input.data_ptr<S>();
  S* g_off = grad_offset.data_ptr<S>();
  S* g_msk = p.use_mask ? grad_mask.data_ptr<S>() : nullptr;
  const at::Tensor wg = p.weight.view({p.groups, coutg, cg * kk});
  const at::Tensor grad2 = grad.view({p.n, p.cout, hwo});
  const auto opts = p.input.options();

  // Images split between two threads' ranges get a private grad_input buffer per (thread, image).
  std::vector<int64_t> part_chunk, part_image;
  for (int64_t ch = 0; ch < (scatter_input ? sp.chunks : 0); ++ch) {
    const int64_t b = sp.begin(ch), e = sp.begin(ch + 1);
    if (b == e) continue;
    for (int64_t n : {b / sp.tiles, (e - 1) / sp.tiles}) {
      const bool owned = n * sp.tiles >= b && (n + 1) * sp.tiles <= e;
      if (!owned && (part_chunk.empty() || part_chunk.back() != ch || part_image.back() != n))
        part_chunk.push_back(ch), part_image.push_back(n);
    }
  }
  at::Tensor part = at::zeros({static_cast<int64_t>(part_chunk.size()), p.c, p.h, p.w}, opts);
  at::Tensor gw_acc = at::zeros({sp.chunks, p.groups, coutg, cg * kk}, opts);

  at::parallel_for(0, sp.chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    at::NoGradGuard no_grad;
    at::AutoDispatchBelowADInplaceOrView below_ad;
    std::vector<S> cols(p.c * kk * sp.tile), gcols(p.c * kk * sp.tile);
    std::vector<S> sm(sp.tile), sy(sp.tile), sx(sp.tile);
    TilePoints<S> pts(sp.tile);
    for (int64_t ch = c_begin; ch < c_end; ++ch) {
      for (int64_t item = sp.begin(ch); item < sp.begin(ch + 1); ++item) {
        const int64_t n = item / sp.tiles, p0 = item % sp.tiles * sp.tile, np = std::min(sp.tile, hwo - p0);
        S* gin = g_in + n * p.c * hw;
        for (size_t i = 0; i < part_chunk.size(); ++i)
          if (part_chunk[i] == ch && part_image[i] == n) gin = part.data_ptr<S>() + static_cast<int64_t>(i) * p.c * hw;
        // grad_columns_g [C/G * KK, np] = W_g^T @ grad[n, group g, tile]
        for (int64_t g = 0; g < p.groups; ++g) {
          at::Tensor gcg = view2d(gcols.data() + g * cg * kk * np, cg * kk, np, np, opts);
          at::mm_out(gcg, wg[g].t(), grad2[n].narrow(0, g * coutg, coutg).narrow(1, p0, np));
        }
        const S* off_n = off + n * 2 * p.offset_groups * kk * hwo;
        const S* mask_n = msk ? msk + n * p.offset_groups * kk * hwo : nullptr;
        for (int64_t og = 0; og < p.offset_groups; ++og) {
          for (int64_t k = 0; k < kk; ++k) {
            pts.fill(p, off_n, mask_n, og, k, p0, np);
            std::fill_n(sm.data(), np, S(0));
            std::fill_n(sy.data(), np, S(0));
            std::fill_n(sx.data(), np, S(0));
            for (int64_t c = og * cog; c < (og + 1) * cog; ++c) {
              const S* pl = in + (n * p.c + c) * hw;
              S* gpl = gin + c * hw;
              const S* gc = gcols.data() + (c * kk + k) * np;
              S* cl = cols.data() + (c * kk + k) * np;
              for (int64_t q = 0; q < np; ++q) {
                S val = 0, vy = 0, vx = 0;
                const S gq = gc[q], gm = gq * pts.mk[q];
                for (int j = 0; j < 4; ++j) {
                  const int32_t o = pts.o[j][q];
                  const S v = pl[o], w = pts.w[j][q];
                  val += mul0(w, v);
                  vy += mul0(pts.dy[j][q], v);
                  vx += mul0(pts.dx[j][q], v);
                  if (scatter_input && w != S(0)) gpl[o] += gm * w;
                }
                cl[q] = pts.mk[q] * val;
                sm[q] += gq * val;
                sy[q] += gq * vy;
                sx[q] += gq * vx;
              }
            }
            S* goy = g_off + ((n * p.offset_groups + og) * 2 * kk + 2 * k) * hwo + p0;
            S* gox = goy + hwo;
            for (int64_t q = 0; q < np; ++q) goy[q] = pts.mk[q] * sy[q], gox[q] = pts.mk[q] * sx[q];
            if (g_msk) std::copy_n(sm.data(), np, g_msk + ((n * p.offset_groups + og) * kk + k) * hwo + p0);
          }
        }
        // grad_weight_g += grad[n, group g, tile] @ columns_g^T
        for (int64_t g = 0; g < p.groups; ++g)
          gw_acc[ch][g].addmm_(grad2[n].narrow(0, g * coutg, coutg).narrow(1, p0, np),
                               view2d(cols.data() + g * cg * kk * np, cg * kk, np, np, opts).t());
      }
    }
  });
  for (size_t i = 0; i < part_chunk.size(); ++i) grad_input[part_image[i]].add_(part[static_cast<int64_t>(i)]);
  grad_weight.copy_(gw_acc.sum(0).view(grad_weight.sizes()));
}

// ---- deterministic grad_input ---------------------------------------------------------------------

// grad_input under torch.use_deterministic_algorithms(True): the gather of ops/deform_conv2d.h, the
// CUDA kernel's algorithm (one thread per (image, channel) plane, each element summed in the cells'
// fixed order), so the result does not depend on the thread count. Recomputes grad_columns per chunk
// of images (~2^24 values).
template <typename S>
void grad_input_by_gather(const DeformConvProblem& p, const at::Tensor& grad, at::Tensor& grad_input) {
  const DeformGeometry geo = p.geometry();
  const int64_t kk = p.kk(), hw = p.h * p.w;
  const int64_t columns_chunk =
      std::clamp<int64_t>((int64_t(1) << 24) / std::max<int64_t>(p.c * kk * p.hwo(), 1), 1, p.n);
  const int64_t chunk = deform_gather_chunk(p, columns_chunk);
  const at::Tensor wt = p.weight.view({p.groups, p.coutg(), p.cg() * kk}).transpose(1, 2);
  const S* off = p.offset.const_data_ptr<S>();
  const S* msk = p.use_mask ? p.mask.const_data_ptr<S>() : nullptr;
  S* g_in = grad_input.data_ptr<S>();
  for (int64_t n0 = 0; n0 < p.n; n0 += chunk) {
    const int64_t nb = std::min(chunk, p.n - n0), points = nb * p.offset_groups * kk * p.hwo();
    const at::Tensor gcols = at::bmm(wt, grad_output_chunk(p, grad, n0, nb));  // [G, C/G*KK, nb * HWO]
    at::Tensor keys = at::empty({points}, grad.options().dtype(at::kLong));
    int64_t* key = keys.data_ptr<int64_t>();
    at::parallel_for(0, points, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) key[i] = deform_cell_key<S, S>(geo, i, n0, off);
    });
    const KeySegments cells = segments_by_key(keys, nb * p.offset_groups * deform_cells_per_plane(geo));
    const int64_t* order = cells.order.const_data_ptr<int64_t>();
    const int64_t* cell_offsets = cells.offsets.const_data_ptr<int64_t>();
    const S* gc = gcols.const_data_ptr<S>();
    at::parallel_for(0, nb * p.c, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        S* plane = g_in + (n0 * p.c + bc) * hw;
        for (int64_t y = 0; y < p.h; ++y)
          for (int64_t x = 0; x < p.w; ++x)
            plane[y * p.w + x] = deform_grad_input_at<S, S>(geo, n0, nb, bc / p.c, bc % p.c, y, x, order,
                                                            cell_offsets, off, msk, gc);
      }
    });
  }
}

// ---- host entry points ----------------------------------------------------------------------------

bool is_half(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

at::Tensor to_float(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat) : t; }

at::Tensor deform_conv2d_forward_kernel(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mask,
                                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  at::NoGradGuard no_grad;
  DeformConvProblem p = prepare_deform_conv2d(input, offset, weight, mask, stride, padding, dilation);
  check_deform_bias(bias, input, p.cout);
  if (is_half(input)) {  // fp32 math, one rounding at the end
    std::optional<at::Tensor> b32, m32;
    if (bias.has_value() && bias->defined()) b32 = bias->to(at::kFloat);
    if (p.use_mask) m32 = p.mask.to(at::kFloat);
    return deform_conv2d_forward_kernel(p.input.to(at::kFloat), p.offset.to(at::kFloat), p.weight.to(at::kFloat), b32,
                                        m32, stride, padding, dilation)
        .to(input.scalar_type());
  }
  at::Tensor out = at::zeros({p.n, p.cout, p.ho, p.wo}, input.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_forward_cpu",
                             [&] { forward_impl<scalar_t>(p, bias, out); });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_kernel(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& mask, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = "_deform_conv2d_backward";
  at::NoGradGuard no_grad;
  DeformConvProblem p = prepare_deform_conv2d(input, offset, weight, mask, stride, padding, dilation, op);
  check_deform_grad(grad, p, op);
  if (is_half(input)) {
    std::optional<at::Tensor> m32;
    if (p.use_mask) m32 = p.mask.to(at::kFloat);
    auto [gi, go, gm, gw, gb] = deform_conv2d_backward_kernel(to_float(grad), to_float(p.input), to_float(p.offset),
                                                              to_float(p.weight), m32, stride, padding, dilation);
    const auto t = input.scalar_type();
    return {gi.to(t), go.to(t), gm.to(t), gw.to(t), gb.to(t)};
  }
  const at::Tensor g = grad.contiguous();
  at::Tensor grad_input = at::zeros_like(p.input);
  at::Tensor grad_offset = at::zeros_like(p.offset);
  at::Tensor grad_mask = p.use_mask ? at::zeros_like(p.mask) : at::zeros({0}, input.options());
  at::Tensor grad_weight = at::zeros_like(p.weight);
  at::Tensor grad_bias = g.sum({0, 2, 3});
  if (g.numel() > 0 && p.input.numel() > 0) {
    const bool deterministic = at::globalContext().deterministicAlgorithms();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward_cpu", [&] {
      backward_impl<scalar_t>(p, g, deterministic, grad_input, grad_offset, grad_mask, grad_weight);
      if (deterministic) grad_input_by_gather<scalar_t>(p, g, grad_input);
    });
  }
  return {grad_input, grad_offset, grad_mask, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_forward_kernel);
  m.impl("_deform_conv2d_backward", &deform_conv2d_backward_kernel);
}

}  // namespace fastdet
