#pragma once
// fastdet::roi_pool (Fast R-CNN RoI max pooling, Girshick 2015) with torchvision's bin rules:
// shared host argument handling and the host-device definition of the bins, used by the CPU and
// CUDA kernels (forward, and the CUDA deterministic backward that re-derives the bins).
//
//   input  [N, C, H, W] (NCHW or channels-last), rois [K, 5] (batch_index, x1, y1, x2, y2)
//   output [K, C, PH, PW] (always contiguous NCHW, as torchvision),
//   argmax [K, C, PH, PW] int32: h * W + w of the maximum inside image batch_index, -1 for an empty bin
//
// Bins (torchvision's RoIPool, formulas re-derived from its documentation and kernel description):
//   start_x = round(x1 * spatial_scale), end_x = round(x2 * spatial_scale)  (round half away from 0)
//   roi_w = max(end_x - start_x + 1, 1), bin_w = roi_w / PW  (in the math type S)
//   bin pw covers w in [floor(pw * bin_w), ceil((pw + 1) * bin_w)) + start_x, clipped to [0, W)
// (the same along y). The products are computed in S exactly as torchvision does (float for
// fp32/fp16/bf16, double for fp64) so the integer boundaries agree bit for bit.
//
// Defined where torchvision is not: a NaN coordinate or a batch index outside [0, N) makes the
// whole RoI empty (every bin 0, argmax -1); infinite or huge coordinates are clamped to
// +-2^30 before the integer conversion (never undefined behaviour, never an out-of-bounds read).
#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "common/checks.h"
#include "common/macros.h"
#include "common/rois.h"

namespace fastdet {

// Rounded RoI coordinates are clamped to +-2^30: far outside any feature map, and every bin
// boundary computed from them still fits int64 comfortably.
constexpr double kRoiPoolCoordLimit = 1073741824.0;

template <typename S>
struct RoiPoolBox {
  int64_t batch;             // image index; -1: the RoI pools nothing (bad index or NaN coordinate)
  int64_t start_h, start_w;  // rounded, scaled top-left corner
  S bin_h, bin_w;            // bin sizes in the math type
};

// round-half-away-from-zero of a scaled coordinate, clamped; NaN sets `nan`.
template <typename S>
FASTDET_HD int64_t roi_pool_round(S v, bool& nan) {
  if (v != v) {
    nan = true;
    return 0;
  }
  // NB: round in double: exact for float values too (the result is an integer of the same value).
  double r = ::round(static_cast<double>(v));
  r = r < -kRoiPoolCoordLimit ? -kRoiPoolCoordLimit : (r > kRoiPoolCoordLimit ? kRoiPoolCoordLimit : r);
  return static_cast<int64_t>(r);
}

// RoI k of rois [K, 5] (row-major) for a batch of `batch_size` images.
template <typename S, typename T>
FASTDET_HD RoiPoolBox<S> roi_pool_box(const T* rois, int64_t k, S spatial_scale, int64_t batch_size,
                                      int64_t pooled_h, int64_t pooled_w) {
  const T* r = rois + 5 * k;
  RoiPoolBox<S> b;
  const S bi = static_cast<S>(r[0]);
  bool nan = false;
  b.start_w = roi_pool_round(static_cast<S>(r[1]) * spatial_scale, nan);
  b.start_h = roi_pool_round(static_cast<S>(r[2]) * spatial_scale, nan);
  const int64_t end_w = roi_pool_round(static_cast<S>(r[3]) * spatial_scale, nan);
  const int64_t end_h = roi_pool_round(static_cast<S>(r[4]) * spatial_scale, nan);
  // NB: written so that a NaN index fails the range test.
  b.batch = (!nan && bi >= S(0) && bi < S(batch_size)) ? static_cast<int64_t>(bi) : -1;
  // Malformed RoIs (end < start) are forced to 1 x 1, as torchvision.
  const int64_t roi_w = end_w - b.start_w + 1 > 1 ? end_w - b.start_w + 1 : 1;
  const int64_t roi_h = end_h - b.start_h + 1 > 1 ? end_h - b.start_h + 1 : 1;
  b.bin_w = static_cast<S>(roi_w) / static_cast<S>(pooled_w);
  b.bin_h = static_cast<S>(roi_h) / static_cast<S>(pooled_h);
  return b;
}

// Bin p along one axis: [lo, hi) in [0, size]; empty when hi <= lo.
template <typename S>
FASTDET_HD void roi_pool_bin(int64_t p, S bin, int64_t start, int64_t size, int64_t& lo, int64_t& hi) {
  // NB: the products in S (as torchvision), floor/ceil in double (exact for float values).
  lo = static_cast<int64_t>(::floor(static_cast<double>(static_cast<S>(p) * bin))) + start;
  hi = static_cast<int64_t>(::ceil(static_cast<double>(static_cast<S>(p + 1) * bin))) + start;
  lo = lo < 0 ? 0 : (lo > size ? size : lo);
  hi = hi < 0 ? 0 : (hi > size ? size : hi);
}

struct RoiPoolProblem {
  at::Tensor input, rois;  // input: NCHW-contiguous or channels-last-contiguous; rois contiguous
  int64_t n, c, h, w, k, ph, pw;
  double spatial_scale;
  bool channels_last;
};

inline void check_roi_pool_plane(int64_t h, int64_t w, const char* op) {
  TORCH_CHECK(h * w <= std::numeric_limits<int32_t>::max(), "fastdet::", op,
              ": H * W must fit in int32 (argmax holds h * W + w), got H = ", h, ", W = ", w);
}

inline RoiPoolProblem prepare_roi_pool(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                       int64_t pooled_h, int64_t pooled_w) {
  const char* op = "roi_pool";
  check_rois(input, rois, op);
  check_roi_pool_params(pooled_h, pooled_w, spatial_scale, op);
  RoiPoolProblem p;
  p.n = input.size(0), p.c = input.size(1), p.h = input.size(2), p.w = input.size(3);
  check_roi_pool_plane(p.h, p.w, op);
  p.k = rois.size(0), p.ph = pooled_h, p.pw = pooled_w;
  p.spatial_scale = spatial_scale;
  p.channels_last = rois_input_channels_last(input);
  p.input = p.channels_last ? input : input.contiguous();
  p.rois = rois.contiguous();
  return p;
}

// Backward arguments: grad and argmax [K, C, PH, PW], rois [K, 5], the input's sizes.
inline RoiPoolProblem prepare_roi_pool_backward(const at::Tensor& grad, const at::Tensor& rois,
                                                const at::Tensor& argmax, double spatial_scale, int64_t pooled_h,
                                                int64_t pooled_w, int64_t batch_size, int64_t channels,
                                                int64_t height, int64_t width, bool channels_last) {
  const char* op = "_roi_pool_backward";
  check_roi_pool_params(pooled_h, pooled_w, spatial_scale, op);
  TORCH_CHECK(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, "fastdet::", op,
              ": batch_size, channels, height and width must be >= 0, got ", batch_size, ", ", channels, ", ",
              height, ", ", width);
  check_roi_pool_plane(height, width, op);
  check_floating(grad, op, "grad");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "fastdet::", op,
              ": rois must have shape [K, 5] (batch_index, x1, y1, x2, y2), got ", shape_str(rois));
  const int64_t k = rois.size(0);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == k && grad.size(1) == channels && grad.size(2) == pooled_h &&
                  grad.size(3) == pooled_w,
              "fastdet::", op, ": grad must have shape [K, C, PH, PW] = [", k, ", ", channels, ", ", pooled_h, ", ",
              pooled_w, "], got ", shape_str(grad));
  TORCH_CHECK(argmax.sizes() == grad.sizes(), "fastdet::", op, ": argmax must have grad's shape ", shape_str(grad),
              ", got ", shape_str(argmax));
  TORCH_CHECK(argmax.scalar_type() == at::kInt, "fastdet::", op, ": argmax must be an int32 tensor, got ",
              argmax.scalar_type());
  check_same_device(grad, rois, op, "grad", "rois");
  check_same_device(grad, argmax, op, "grad", "argmax");
  check_same_dtype(grad, rois, op, "grad", "rois");
  RoiPoolProblem p;
  p.n = batch_size, p.c = channels, p.h = height, p.w = width, p.k = k, p.ph = pooled_h, p.pw = pooled_w;
  p.spatial_scale = spatial_scale;
  p.channels_last = channels_last;
  p.rois = rois.contiguous();
  return p;
}

}  // namespace fastdet
