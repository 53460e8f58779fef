#pragma once
// Bilinear sampling of a feature plane, shared by the CPU and CUDA kernels of every op that
// samples features at continuous points (border_align; RoIAlign and friends later).
//
// The RoIAlign convention (torchvision roi_align, Detectron, mmcv): a plane of H x W values holds
// pixel centres at integer coordinates; a point (y, x)
//   * outside [-1, H] x [-1, W] samples 0 and receives no gradient (`valid` is false);
//   * otherwise coordinates <= 0 clamp to 0, and a low index at H - 1 (W - 1) clamps so that
//     high == low (the point is then treated as lying on the last row/column).
// A NaN or infinite coordinate fails the range test, so it is outside: value 0, no gradient, and
// no index is ever computed from it (never an out-of-bounds read or write).
//
// bilinear_corners() returns the four corner offsets into the plane and their weights, so the
// forward pass (weighted sum, bilinear_sample) and the backward pass (scatter of g * weight into
// the same four offsets) use one definition.
#include <cstdint>

#include "common/macros.h"

namespace fastdet {

template <typename S>
struct BilinearCorners {
  // Offsets y * W + x of the corners (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high).
  int64_t o00, o01, o10, o11;
  S w00, w01, w10, w11;  // their weights; sum to 1 when valid
  bool valid;            // false: the point is outside the plane (value 0, no gradient)
};

// One axis of the bilinear support: the point v on an axis of `size` >= 1 pixels lies between
// pixels low and high (equal at the clamped edge) with weights w_low + w_high = 1; `valid` is false
// outside [-1, size] (and for NaN). The 2-D corners are the products of the two axes; RoIAlign's
// gather-form backward uses the axes on their own (the support of a regular sample grid is separable).
template <typename S>
struct BilinearAxis {
  int64_t low, high;
  S w_low, w_high;
  bool valid;
};

template <typename S>
FASTDET_HD BilinearAxis<S> bilinear_axis(S v, int64_t size) {
  BilinearAxis<S> a{0, 0, S(0), S(0), false};
  // NB: written so that NaN fails it (every comparison with NaN is false).
  if (!(v >= S(-1) && v <= S(size))) return a;
  if (v <= S(0)) v = S(0);
  a.low = static_cast<int64_t>(v);  // v in [0, size]
  if (a.low >= size - 1) {
    a.low = a.high = size - 1;
    v = S(a.low);
  } else {
    a.high = a.low + 1;
  }
  const S l = v - S(a.low);
  a.w_low = S(1) - l;
  a.w_high = l;
  a.valid = true;
  return a;
}

// S: the math type (float for fp16/bf16/fp32 inputs, double for fp64). height, width >= 1.
template <typename S>
FASTDET_HD BilinearCorners<S> bilinear_corners(S y, S x, int64_t height, int64_t width) {
  BilinearCorners<S> c{0, 0, 0, 0, S(0), S(0), S(0), S(0), false};
  const BilinearAxis<S> ay = bilinear_axis(y, height);
  const BilinearAxis<S> ax = bilinear_axis(x, width);
  if (!(ay.valid && ax.valid)) return c;
  c.o00 = ay.low * width + ax.low;
  c.o01 = ay.low * width + ax.high;
  c.o10 = ay.high * width + ax.low;
  c.o11 = ay.high * width + ax.high;
  c.w00 = ay.w_low * ax.w_low;
  c.w01 = ay.w_low * ax.w_high;
  c.w10 = ay.w_high * ax.w_low;
  c.w11 = ay.w_high * ax.w_high;
  c.valid = true;
  return c;
}

// The interpolated value of plane (row-major H x W) at the corners c: 0 when c is not valid.
template <typename S, typename T>
FASTDET_HD S bilinear_sample(const T* plane, const BilinearCorners<S>& c) {
  if (!c.valid) return S(0);
  return c.w00 * static_cast<S>(plane[c.o00]) + c.w01 * static_cast<S>(plane[c.o01]) +
         c.w10 * static_cast<S>(plane[c.o10]) + c.w11 * static_cast<S>(plane[c.o11]);
}

}  // namespace fastdet
