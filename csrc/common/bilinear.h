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

// S: the math type (float for fp16/bf16/fp32 inputs, double for fp64). height, width >= 1.
template <typename S>
FASTDET_HD BilinearCorners<S> bilinear_corners(S y, S x, int64_t height, int64_t width) {
  BilinearCorners<S> c{0, 0, 0, 0, S(0), S(0), S(0), S(0), false};
  // NB: written so that NaN fails it (every comparison with NaN is false).
  if (!(y >= S(-1) && y <= S(height) && x >= S(-1) && x <= S(width))) return c;
  if (y <= S(0)) y = S(0);
  if (x <= S(0)) x = S(0);
  int64_t y_low = static_cast<int64_t>(y), x_low = static_cast<int64_t>(x);  // y, x in [0, H], [0, W]
  int64_t y_high, x_high;
  if (y_low >= height - 1) {
    y_low = y_high = height - 1;
    y = S(y_low);
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_low = x_high = width - 1;
    x = S(x_low);
  } else {
    x_high = x_low + 1;
  }
  const S ly = y - S(y_low), lx = x - S(x_low);
  const S hy = S(1) - ly, hx = S(1) - lx;
  c.o00 = y_low * width + x_low;
  c.o01 = y_low * width + x_high;
  c.o10 = y_high * width + x_low;
  c.o11 = y_high * width + x_high;
  c.w00 = hy * hx;
  c.w01 = hy * lx;
  c.w10 = ly * hx;
  c.w11 = ly * lx;
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
