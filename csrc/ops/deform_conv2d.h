#pragma once
// fastdet::deform_conv2d (deformable convolution: DCNv1, Dai et al. ICCV 2017; modulated DCNv2,
// Zhu et al. CVPR 2019) with torchvision's semantics: shared host argument handling and the
// host-device definition of one deformed sampling point, used by the CPU and CUDA kernels.
//
//   input  [N, C, H, W]
//   offset [N, 2 * OG * KH * KW, HO, WO]: for offset group og and kernel tap k = i * KW + j,
//          channel og * 2 * KK + 2 * k is the y displacement and the next channel the x one
//   mask   [N, OG * KH * KW, HO, WO] (optional, DCNv2): channel og * KK + k scales tap k
//   weight [COUT, C / G, KH, KW], groups G = C / weight.size(1); bias [COUT] (optional)
//   output [N, COUT, HO, WO], HO = (H + 2 * pad_h - (dil_h * (KH - 1) + 1)) / stride_h + 1
// Channel c belongs to offset group c / (C / OG) and weight group c / (C / G). Tap k of output
// pixel (oy, ox) samples channel c at
//   y = oy * stride_h - pad_h + i * dil_h + offset_y,  x = ox * stride_w - pad_w + j * dil_w + offset_x
// by bilinear interpolation with zero padding (torchvision's deform_conv2d convention, NOT the
// RoIAlign one of common/bilinear.h): a point with y <= -1, y >= H, x <= -1 or x >= W samples 0;
// otherwise each of its four integer corners contributes when it lies inside the plane.
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

#include "common/checks.h"
#include "common/macros.h"
#include "common/segments.h"

namespace fastdet {

// One deformed sampling point: the offsets of its 4 corners y * W + x into a plane (0 for a corner
// outside the plane, whose weights are all 0, so reads stay in bounds) in the order
// (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high), and per corner
//   w : the interpolation weight            value        = sum_j w[j]  * plane[o[j]]
//   dy: d(weight)/dy                        d value / dy = sum_j dy[j] * plane[o[j]]
//   dx: d(weight)/dx                        d value / dx = sum_j dx[j] * plane[o[j]]
// A point outside (-1, H) x (-1, W), or with a NaN/inf coordinate, has all weights 0: value 0 and
// no gradient of any kind (torchvision differs only on the measure-zero lines y = -1, x = -1).
template <typename S>
struct DeformPoint {
  int64_t o[4];
  S w[4], dy[4], dx[4];
};

// The top-left corner (y0, x0) = (floor y, floor x) of a point's bilinear support, in
// [-1, H - 1] x [-1, W - 1]; false for a point outside (-1, H) x (-1, W) or with a NaN/inf
// coordinate, which samples 0 and gets no gradient.
template <typename S>
FASTDET_HD bool deform_corner(S y, S x, int64_t height, int64_t width, int64_t& y0, int64_t& x0) {
  // NB: written so that NaN fails it (every comparison with NaN is false).
  if (!(y > S(-1) && y < S(height) && x > S(-1) && x < S(width))) return false;
  y0 = static_cast<int64_t>(y), x0 = static_cast<int64_t>(x);  // truncation; floor below
  if (S(y0) > y) --y0;
  if (S(x0) > x) --x0;
  return true;
}

template <typename S>
FASTDET_HD DeformPoint<S> deform_point(S y, S x, int64_t height, int64_t width) {
  DeformPoint<S> p;
  for (int j = 0; j < 4; ++j) p.o[j] = 0, p.w[j] = p.dy[j] = p.dx[j] = S(0);
  int64_t y0, x0;
  if (!deform_corner(y, x, height, width, y0, x0)) return p;
  const S ly = y - S(y0), lx = x - S(x0), hy = S(1) - ly, hx = S(1) - lx;
  const bool in_y[2] = {y0 >= 0, y0 + 1 < height}, in_x[2] = {x0 >= 0, x0 + 1 < width};
  const S wy[2] = {hy, ly}, wx[2] = {hx, lx};
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 2; ++b) {
      const int j = 2 * a + b;
      if (!(in_y[a] && in_x[b])) continue;
      p.o[j] = (y0 + a) * width + (x0 + b);
      p.w[j] = wy[a] * wx[b];
      p.dy[j] = (a ? S(1) : S(-1)) * wx[b];
      p.dx[j] = (b ? S(1) : S(-1)) * wy[a];
    }
  }
  return p;
}

// The sizes a kernel thread needs (a plain struct, passed by value to CUDA kernels).
struct DeformGeometry {
  int64_t c, h, w, kw, kk, wo, hwo, og, cog, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
};

// Sampling point idx of a chunk of images starting at image n0, the points ordered (image b of the
// chunk, offset group og, tap k, output pixel pix) with the pixel fastest; its mask value (1
// without a mask) and its corners.
template <typename S>
struct DeformItem {
  int64_t b, og, k, pix;
  S mk;
  DeformPoint<S> d;
};

// The point's coordinates (y, x): the tap's place in the undeformed grid plus its offset.
template <typename T, typename S>
FASTDET_HD void deform_coords(const DeformGeometry& g, int64_t n, int64_t og, int64_t k, int64_t pix, const T* offset,
                              S& y, S& x) {
  const int64_t oy = pix / g.wo, ox = pix % g.wo, ki = k / g.kw, kj = k % g.kw;
  const T* off = offset + ((n * g.og + og) * 2 * g.kk + 2 * k) * g.hwo + pix;
  y = S(oy * g.stride_h - g.pad_h + ki * g.dil_h) + static_cast<S>(off[0]);
  x = S(ox * g.stride_w - g.pad_w + kj * g.dil_w) + static_cast<S>(off[g.hwo]);
}

// The (b, og, k, pix) of point idx (the order of DeformItem), the rest of the item left unset.
template <typename S>
FASTDET_HD DeformItem<S> deform_index(const DeformGeometry& g, int64_t idx) {
  DeformItem<S> it;
  it.pix = idx % g.hwo;
  it.k = (idx / g.hwo) % g.kk;
  it.og = (idx / (g.hwo * g.kk)) % g.og;
  it.b = idx / (g.hwo * g.kk * g.og);
  return it;
}

template <typename T, typename S>
FASTDET_HD DeformItem<S> deform_item(const DeformGeometry& g, int64_t idx, int64_t n0, const T* offset,
                                     const T* mask) {
  DeformItem<S> it = deform_index<S>(g, idx);
  const int64_t n = n0 + it.b;
  S y, x;
  deform_coords<T, S>(g, n, it.og, it.k, it.pix, offset, y, x);
  it.mk = mask ? static_cast<S>(mask[((n * g.og + it.og) * g.kk + it.k) * g.hwo + it.pix]) : S(1);
  it.d = deform_point<S>(y, x, g.h, g.w);
  return it;
}

// ---- deterministic grad_input: a gather -------------------------------------------------------------
// The backward's scatter (every point adds mask * grad_column * weight into its 4 corners) turned
// into a gather, for torch.use_deterministic_algorithms: the points of a chunk of images are
// grouped by their cell, the (image, offset group, y0, x0) of their bilinear support, with a stable
// sort (common/segments.h); the points that touch input pixel (y, x) are then exactly those of the
// 4 cells (y - 1 .. y, x - 1 .. x), and one thread sums each grad_input element in that fixed
// order. Bitwise reproducible, no atomics, O(points) memory (a point serves all C / OG channels of
// its offset group). Cells: (H + 1) x (W + 1) per (image, offset group), as y0, x0 start at -1.

FASTDET_HD int64_t deform_cells_per_plane(const DeformGeometry& g) { return (g.h + 1) * (g.w + 1); }

// The cell of point idx of the chunk (see deform_item), or -1 when it samples nothing.
template <typename T, typename S>
FASTDET_HD int64_t deform_cell_key(const DeformGeometry& g, int64_t idx, int64_t n0, const T* offset) {
  const DeformItem<S> it = deform_index<S>(g, idx);
  S y, x;
  deform_coords<T, S>(g, n0 + it.b, it.og, it.k, it.pix, offset, y, x);
  int64_t y0, x0;
  if (!deform_corner(y, x, g.h, g.w, y0, x0)) return -1;
  return (it.b * g.og + it.og) * deform_cells_per_plane(g) + (y0 + 1) * (g.w + 1) + (x0 + 1);
}

// d loss / d input[n0 + b, c, y, x], summed in a fixed order over the points of the 4 cells whose
// support covers (y, x). cells: segments_by_key of the chunk's cell keys; gcols [C * KK, nb * HWO]
// (row c * KK + k, column b * HWO + pix), the gradient of the masked columns.
template <typename T, typename S>
FASTDET_HD S deform_grad_input_at(const DeformGeometry& g, int64_t n0, int64_t nb, int64_t b, int64_t c, int64_t y,
                                  int64_t x, const int64_t* order, const int64_t* cell_offsets, const T* offset,
                                  const T* mask, const T* gcols) {
  const int64_t plane = (b * g.og + c / g.cog) * deform_cells_per_plane(g), ncol = nb * g.hwo;
  S sum = 0;
  for (int dy = 0; dy < 2; ++dy) {
    for (int dx = 0; dx < 2; ++dx) {
      // The cell (y0, x0) = (y - 1 + dy, x - 1 + dx), of whose points (y, x) is corner j.
      const int64_t cell = plane + (y + dy) * (g.w + 1) + (x + dx);
      const int j = 2 * (1 - dy) + (1 - dx);
      for (int64_t i = cell_offsets[cell]; i < cell_offsets[cell + 1]; ++i) {
        const DeformItem<S> it = deform_item<T, S>(g, order[i], n0, offset, mask);
        const S w = it.d.w[j];
        if (w == S(0)) continue;  // as the scatter: a zero weight passes no NaN/inf
        const S gq = static_cast<S>(gcols[(c * g.kk + it.k) * ncol + b * g.hwo + it.pix]);
        sum += gq * it.mk * w;
      }
    }
  }
  return sum;
}

struct DeformConvProblem {
  at::Tensor input, offset, weight, mask;  // contiguous; mask undefined without one
  int64_t n, c, h, w, cout, kh, kw, ho, wo;
  int64_t groups, offset_groups;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  bool use_mask;
  int64_t kk() const { return kh * kw; }
  int64_t hwo() const { return ho * wo; }
  int64_t cg() const { return c / groups; }            // input channels per weight group
  int64_t coutg() const { return cout / groups; }      // output channels per weight group
  int64_t cog() const { return c / offset_groups; }    // input channels per offset group
  DeformGeometry geometry() const {
    return {c, h, w, kw, kk(), wo, hwo(), offset_groups, cog(), stride_h, stride_w, pad_h, pad_w, dil_h, dil_w};
  }
};

// grad[n0 : n0 + nb] ([nb, COUT, HO, WO]) as [G, COUT / G, nb * HWO], the GEMM layout of the columns.
inline at::Tensor grad_output_chunk(const DeformConvProblem& p, const at::Tensor& grad, int64_t n0, int64_t nb) {
  return grad.narrow(0, n0, nb)
      .reshape({nb, p.cout, p.hwo()})
      .permute({1, 0, 2})
      .contiguous()
      .view({p.groups, p.coutg(), nb * p.hwo()});
}

// Images per chunk of the deterministic gather (at most `chunk`): its keys, sort and segment
// offsets take ~24 bytes a point and 8 a cell, so each stays under ~2^24 per chunk.
inline int64_t deform_gather_chunk(const DeformConvProblem& p, int64_t chunk) {
  const int64_t per_image = p.offset_groups * std::max(p.kk() * p.hwo(), (p.h + 1) * (p.w + 1));
  return std::clamp<int64_t>((int64_t(1) << 24) / std::max<int64_t>(per_image, 1), 1, std::max<int64_t>(chunk, 1));
}

inline void check_pair(at::IntArrayRef v, const char* op, const char* arg, int64_t min) {
  TORCH_CHECK(v.size() == 2, "fastdet::", op, ": ", arg, " must have 2 elements (h, w), got ", v.size());
  TORCH_CHECK(v[0] >= min && v[1] >= min, "fastdet::", op, ": ", arg, " must be >= ", min, ", got (", v[0], ", ",
              v[1], ")");
}

// Validates the arguments shared by the forward and the backward; `grad` (backward only) must
// have the output's shape.
inline DeformConvProblem prepare_deform_conv2d(const at::Tensor& input, const at::Tensor& offset,
                                               const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                                               at::IntArrayRef stride, at::IntArrayRef padding,
                                               at::IntArrayRef dilation, const char* op = "deform_conv2d") {
  TORCH_CHECK(input.dim() == 4, "fastdet::", op, ": input must have shape [N, C, H, W], got ", shape_str(input));
  TORCH_CHECK(weight.dim() == 4, "fastdet::", op, ": weight must have shape [COUT, C / groups, KH, KW], got ",
              shape_str(weight));
  TORCH_CHECK(offset.dim() == 4, "fastdet::", op, ": offset must have shape [N, 2 * offset_groups * KH * KW, HO, WO], got ",
              shape_str(offset));
  check_floating(input, op, "input");
  check_same_device(input, offset, op, "input", "offset");
  check_same_device(input, weight, op, "input", "weight");
  check_same_dtype(input, offset, op, "input", "offset");
  check_same_dtype(input, weight, op, "input", "weight");
  check_pair(stride, op, "stride", 1);
  check_pair(padding, op, "padding", 0);
  check_pair(dilation, op, "dilation", 1);
  DeformConvProblem p;
  p.n = input.size(0), p.c = input.size(1), p.h = input.size(2), p.w = input.size(3);
  p.cout = weight.size(0), p.kh = weight.size(2), p.kw = weight.size(3);
  p.stride_h = stride[0], p.stride_w = stride[1], p.pad_h = padding[0], p.pad_w = padding[1];
  p.dil_h = dilation[0], p.dil_w = dilation[1];
  TORCH_CHECK(p.kh >= 1 && p.kw >= 1, "fastdet::", op, ": weight's kernel size must be >= 1, got ", shape_str(weight));
  // NB: C >= weight.size(1) too, so that groups >= 1 (C = 0 would give 0 groups and a division by 0).
  TORCH_CHECK(weight.size(1) >= 1 && p.c >= weight.size(1) && p.c % weight.size(1) == 0, "fastdet::", op,
              ": weight.size(1) must divide the input's channel count (groups = C / weight.size(1) >= 1), got weight ",
              shape_str(weight), " for input ", shape_str(input));
  p.groups = p.c / weight.size(1);
  TORCH_CHECK(p.cout % p.groups == 0, "fastdet::", op, ": weight.size(0) must be divisible by groups = ", p.groups,
              ", got weight ", shape_str(weight));
  const int64_t kk = p.kk();
  TORCH_CHECK(offset.size(1) >= 2 * kk && offset.size(1) % (2 * kk) == 0, "fastdet::", op,
              ": offset.size(1) must be a positive multiple of 2 * KH * KW = ", 2 * kk, ", got offset ",
              shape_str(offset));
  p.offset_groups = offset.size(1) / (2 * kk);
  TORCH_CHECK(p.c % p.offset_groups == 0, "fastdet::", op, ": the input's channel count ", p.c,
              " must be divisible by offset groups = offset.size(1) / (2 * KH * KW) = ", p.offset_groups);
  p.ho = (p.h + 2 * p.pad_h - (p.dil_h * (p.kh - 1) + 1)) / p.stride_h + 1;
  p.wo = (p.w + 2 * p.pad_w - (p.dil_w * (p.kw - 1) + 1)) / p.stride_w + 1;
  TORCH_CHECK(p.ho >= 1 && p.wo >= 1, "fastdet::", op, ": the output would be empty (", p.ho, " x ", p.wo,
              "): input ", shape_str(input), " is too small for the kernel ", p.kh, " x ", p.kw, " with padding (",
              p.pad_h, ", ", p.pad_w, ") and dilation (", p.dil_h, ", ", p.dil_w, ")");
  TORCH_CHECK(offset.size(0) == p.n && offset.size(2) == p.ho && offset.size(3) == p.wo, "fastdet::", op,
              ": offset must have shape [N, 2 * offset_groups * KH * KW, HO, WO] = [", p.n, ", ", offset.size(1), ", ",
              p.ho, ", ", p.wo, "], got ", shape_str(offset));
  TORCH_CHECK(p.h * p.w < std::numeric_limits<int32_t>::max(), "fastdet::", op,
              ": one input plane must have fewer than 2^31 elements, got ", p.h, " x ", p.w);
  p.use_mask = mask.has_value() && mask->defined();
  if (p.use_mask) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.dim() == 4 && m.size(0) == p.n && m.size(1) == p.offset_groups * kk && m.size(2) == p.ho &&
                    m.size(3) == p.wo,
                "fastdet::", op, ": mask must have shape [N, offset_groups * KH * KW, HO, WO] = [", p.n, ", ",
                p.offset_groups * kk, ", ", p.ho, ", ", p.wo, "], got ", shape_str(m));
    check_same_device(input, m, op, "input", "mask");
    check_same_dtype(input, m, op, "input", "mask");
    p.mask = m.contiguous();
  }
  p.input = input.contiguous();
  p.offset = offset.contiguous();
  p.weight = weight.contiguous();
  return p;
}

inline void check_deform_bias(const std::optional<at::Tensor>& bias, const at::Tensor& input, int64_t cout,
                              const char* op = "deform_conv2d") {
  if (!bias.has_value() || !bias->defined()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == cout, "fastdet::", op, ": bias must have shape [COUT] = [", cout,
              "], got ", shape_str(*bias));
  check_same_device(input, *bias, op, "input", "bias");
  check_same_dtype(input, *bias, op, "input", "bias");
}

inline void check_deform_grad(const at::Tensor& grad, const DeformConvProblem& p,
                              const char* op = "_deform_conv2d_backward") {
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == p.n && grad.size(1) == p.cout && grad.size(2) == p.ho &&
                  grad.size(3) == p.wo,
              "fastdet::", op, ": grad must have the output's shape [", p.n, ", ", p.cout, ", ", p.ho, ", ", p.wo,
              "], got ", shape_str(grad));
  check_same_device(p.input, grad, op, "input", "grad");
  check_same_dtype(p.input, grad, op, "input", "grad");
}

}  // namespace fastdet
