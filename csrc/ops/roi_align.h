#pragma once
// fastdet::roi_align and fastdet::multi_scale_roi_align (Mask R-CNN RoIAlign, He et al. 2017, with
// torchvision's conventions): shared host argument handling and the host-device RoI geometry used by
// the CPU and CUDA kernels. Both ops run the same kernels: roi_align is the one-level case.
//
//   features  L levels [N, C, H_l, W_l], all NCHW or all channels-last (one layout per call)
//   rois      [K, 5] (batch_index, x1, y1, x2, y2) in image coordinates, any floating dtype
//             (read in the math type: fp32, or fp64 for fp64 features)
//   levels    [K] int64 level of each RoI (multi-level only; one level: all 0)
//   output    [K, C, PH, PW] in the features' dtype and layout
// Bin (ph, pw) of RoI k averages grid_h x grid_w bilinear samples (common/bilinear.h) of level
// levels[k] of image rois[k, 0]; grid = sampling_ratio, or ceil(bin size) when sampling_ratio <= 0.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "common/bilinear.h"
#include "common/macros.h"
#include "common/segments.h"

namespace fastdet {

constexpr int kRoiAlignMaxLevels = 16;
// The adaptive sampling grid (ceil(bin size)) is capped per axis, so that an absurdly large finite
// RoI costs bounded time (torchvision has no cap; the cap changes results only for bins wider than
// 512 feature pixels).
constexpr int64_t kRoiAlignMaxAdaptiveGrid = 512;

// Everything a kernel needs besides the data pointers of its own dtype. Plain data: passed by value
// to CUDA kernels.
struct RoiAlignParams {
  int64_t num_rois = 0, batch = 0, channels = 0, pooled_h = 0, pooled_w = 0, sampling_ratio = -1;
  bool aligned = false, channels_last = false;
  int num_levels = 1;
  int64_t height[kRoiAlignMaxLevels] = {}, width[kRoiAlignMaxLevels] = {};
  double scale[kRoiAlignMaxLevels] = {};
  const void* features[kRoiAlignMaxLevels] = {};  // forward inputs (the op's dtype)
  void* grad_features[kRoiAlignMaxLevels] = {};   // backward outputs (the math type)
  const int64_t* levels = nullptr;                // [K] or nullptr (all level 0)

  FASTDET_HD int64_t bins() const { return pooled_h * pooled_w; }
};

// The sampling geometry of one RoI. Sample (iy, ix) of bin (ph, pw) is at
//   y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h   (x alike),
// exactly torchvision's expression, so every kernel derives bit-identical points.
template <typename S>
struct RoiGeometry {
  S start_h, start_w, bin_h, bin_w, count;  // count = max(grid_h * grid_w, 1), the divisor of a bin
  int64_t grid_h, grid_w, image, level;
  bool empty;  // no samples: output 0, no gradient
};

template <typename S>
FASTDET_HD int64_t roi_adaptive_grid(S bin_size) {
  if (!(bin_size > S(0))) return 0;  // also NaN
  if (bin_size >= S(kRoiAlignMaxAdaptiveGrid)) return kRoiAlignMaxAdaptiveGrid;
  int64_t g = static_cast<int64_t>(bin_size);  // ceil, for 0 < bin_size < 512
  return S(g) < bin_size ? g + 1 : g;
}

// x is neither infinite nor NaN (written without isfinite, which differs between host and device).
template <typename S>
FASTDET_HD bool roi_finite(S x) {
  return x - x == S(0);
}

// Geometry of RoI k. A RoI is empty when its batch index or level is out of range (the host checks
// reject those before any kernel runs; this is the second line of defence against out-of-bounds
// reads), when a coordinate is not finite, or when its sampling grid is empty.
template <typename S>
FASTDET_HD RoiGeometry<S> roi_geometry(const S* rois, int64_t k, const RoiAlignParams& p) {
  RoiGeometry<S> g{S(0), S(0), S(0), S(0), S(1), 0, 0, 0, 0, true};
  const S* r = rois + k * 5;
  const int64_t level = p.levels == nullptr ? 0 : p.levels[k];
  if (!(r[0] >= S(0) && r[0] < S(p.batch)) || level < 0 || level >= p.num_levels) return g;
  g.image = static_cast<int64_t>(r[0]);
  g.level = level;
  const S scale = static_cast<S>(p.scale[level]);
  const S offset = p.aligned ? S(0.5) : S(0);
  g.start_w = r[1] * scale - offset;
  g.start_h = r[2] * scale - offset;
  S roi_w = r[3] * scale - offset - g.start_w;
  S roi_h = r[4] * scale - offset - g.start_h;
  if (!(roi_finite(g.start_w) && roi_finite(g.start_h) && roi_finite(roi_w) && roi_finite(roi_h))) return g;
  if (!p.aligned) {  // legacy (aligned=False) mode: RoIs are at least 1x1
    roi_w = roi_w > S(1) ? roi_w : S(1);
    roi_h = roi_h > S(1) ? roi_h : S(1);
  }
  g.bin_h = roi_h / static_cast<S>(p.pooled_h);
  g.bin_w = roi_w / static_cast<S>(p.pooled_w);
  g.grid_h = p.sampling_ratio > 0 ? p.sampling_ratio : roi_adaptive_grid(g.bin_h);
  g.grid_w = p.sampling_ratio > 0 ? p.sampling_ratio : roi_adaptive_grid(g.bin_w);
  const int64_t n = g.grid_h * g.grid_w;
  g.count = static_cast<S>(n > 1 ? n : 1);
  g.empty = n <= 0;
  return g;
}

// Coordinate of sample i (0 <= i < grid) of bin b along one axis.
template <typename S>
FASTDET_HD S roi_sample_coord(S start, S bin, int64_t b, int64_t i, int64_t grid) {
  return start + static_cast<S>(b) * bin + (static_cast<S>(i) + S(0.5)) * bin / static_cast<S>(grid);
}

// ---- host side -------------------------------------------------------------------------------------

// A validated call: features in one layout (contiguous NCHW or contiguous channels-last), rois in
// the math type, levels int64 (or undefined).
struct RoiAlignProblem {
  std::vector<at::Tensor> features;
  at::Tensor rois, levels;
  RoiAlignParams params;
};

// Validates a forward call (the one-level op passes one feature map and no levels).
RoiAlignProblem prepare_roi_align(const std::vector<at::Tensor>& features, const at::Tensor& rois,
                                  const std::optional<at::Tensor>& levels, const std::vector<double>& scales,
                                  int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                  const char* op);

// Validates a backward call (grad [K, C, PH, PW]); grad_contig receives grad made contiguous in
// the chosen layout.
RoiAlignProblem prepare_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois,
                                           const std::optional<at::Tensor>& levels,
                                           const std::vector<double>& scales, const std::vector<int64_t>& heights,
                                           const std::vector<int64_t>& widths, int64_t batch, int64_t channels,
                                           int64_t sampling_ratio, bool aligned, bool channels_last,
                                           at::Tensor& grad_contig, const char* op);

// The RoIs grouped by segment s = level * N + image, in index order inside a segment (a stable
// sort): RoIs of segment s are order[offsets[s] .. offsets[s + 1]). Built on the rois' device.
KeySegments roi_segments(const RoiAlignProblem& p);

// A backend runs a validated problem: the forward writes output [K, C, PH, PW] (allocated in the
// layout); the backward adds into params.grad_features (zeroed math-type buffers, one per level)
// from grad (contiguous in the layout).
using RoiAlignForwardFn = void (*)(const RoiAlignProblem&, at::Tensor& output);
using RoiAlignBackwardFn = void (*)(const RoiAlignProblem&, const at::Tensor& grad);

// The op entry points every backend registers, parameterised by its kernels (roi_align.cpp).
at::Tensor roi_align_entry(RoiAlignForwardFn fn, const at::Tensor& input, const at::Tensor& rois,
                           double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                           bool aligned);
at::Tensor roi_align_backward_entry(RoiAlignBackwardFn fn, const at::Tensor& grad, const at::Tensor& rois,
                                    double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch,
                                    int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                    bool aligned, bool channels_last);
at::Tensor multi_scale_roi_align_entry(RoiAlignForwardFn fn, at::TensorList features, const at::Tensor& rois,
                                       const at::Tensor& levels, at::ArrayRef<double> scales, int64_t pooled_h,
                                       int64_t pooled_w, int64_t sampling_ratio, bool aligned);
std::vector<at::Tensor> multi_scale_roi_align_backward_entry(
    RoiAlignBackwardFn fn, const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& levels,
    at::ArrayRef<double> scales, at::IntArrayRef heights, at::IntArrayRef widths, int64_t batch, int64_t channels,
    int64_t sampling_ratio, bool aligned, bool channels_last);

// The four op kernels of a backend, from its forward and backward runners; a backend registers
// them with RoiAlignKernels<&forward, &backward>::register_impls(m).
template <RoiAlignForwardFn Forward, RoiAlignBackwardFn Backward>
struct RoiAlignKernels {
  static at::Tensor roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                              int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
    return roi_align_entry(Forward, input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned);
  }
  static at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                       int64_t pooled_h, int64_t pooled_w, int64_t batch, int64_t channels,
                                       int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                       bool channels_last) {
    return roi_align_backward_entry(Backward, grad, rois, spatial_scale, pooled_h, pooled_w, batch, channels, height,
                                    width, sampling_ratio, aligned, channels_last);
  }
  static at::Tensor multi_scale(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                                at::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                                int64_t sampling_ratio, bool aligned) {
    return multi_scale_roi_align_entry(Forward, features, rois, levels, scales, pooled_h, pooled_w, sampling_ratio,
                                       aligned);
  }
  static std::vector<at::Tensor> multi_scale_backward(const at::Tensor& grad, const at::Tensor& rois,
                                                      const at::Tensor& levels, at::ArrayRef<double> scales,
                                                      at::IntArrayRef heights, at::IntArrayRef widths, int64_t batch,
                                                      int64_t channels, int64_t sampling_ratio, bool aligned,
                                                      bool channels_last) {
    return multi_scale_roi_align_backward_entry(Backward, grad, rois, levels, scales, heights, widths, batch, channels,
                                                sampling_ratio, aligned, channels_last);
  }
  static void register_impls(torch::Library& m) {
    m.impl("roi_align", &roi_align);
    m.impl("_roi_align_backward", &roi_align_backward);
    m.impl("multi_scale_roi_align", &multi_scale);
    m.impl("_multi_scale_roi_align_backward", &multi_scale_backward);
  }
};

}  // namespace fastdet
