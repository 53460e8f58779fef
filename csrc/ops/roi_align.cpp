// Schemas of fastdet::roi_align, fastdet::multi_scale_roi_align and their backward ops, and the host
// code both backends share (validation, layouts, the per-image RoI segments, gradient buffers).
// Kernels: cpu/roi_align_kernel.cpp, cuda/roi_align_kernel.cu; fake kernels, autograd and the
// Python API: python/fastdet/ops/roi_align.py.
#include "ops/roi_align.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "common/checks.h"
#include "common/rois.h"

namespace fastdet {

namespace {

at::ScalarType math_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::MemoryFormat layout(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

void check_levels(const at::Tensor& rois, const at::Tensor& levels, int64_t num_levels, const char* op) {
  TORCH_CHECK(levels.dim() == 1 && levels.size(0) == rois.size(0), "fastdet::", op,
              ": levels must have shape [K] with K = rois.size(0) = ", rois.size(0), ", got ", shape_str(levels));
  TORCH_CHECK(levels.scalar_type() == at::kLong, "fastdet::", op, ": levels must be an int64 tensor, got ",
              levels.scalar_type());
  check_same_device(rois, levels, op, "rois", "levels");
  if (levels.numel() == 0) return;
  // A sync on CUDA, as check_rois: a bad level is an error, never an out-of-bounds read.
  const bool bad = at::any(at::lt(levels, 0).logical_or_(at::ge(levels, num_levels))).item().toBool();
  TORCH_CHECK(!bad, "fastdet::", op, ": levels must hold level indices in [0, ", num_levels, ")");
}

void check_num_levels(size_t n, const char* op, const char* arg) {
  TORCH_CHECK(n >= 1 && n <= static_cast<size_t>(kRoiAlignMaxLevels), "fastdet::", op, ": ", arg, " must hold 1 to ",
              kRoiAlignMaxLevels, " levels, got ", n);
}

// An explicit grid is capped like the adaptive one: sampling_ratio^2 samples per bin, so a larger
// value only costs time (or, huge, memory) without changing what the bins mean.
void check_sampling_ratio(int64_t sampling_ratio, const char* op) {
  TORCH_CHECK(sampling_ratio <= kRoiAlignMaxAdaptiveGrid, "fastdet::", op, ": sampling_ratio must be <= ",
              kRoiAlignMaxAdaptiveGrid, " (samples per bin axis; <= 0 for adaptive), got ", sampling_ratio);
}

void fill_common(RoiAlignProblem& p, const at::Tensor& rois, const std::optional<at::Tensor>& levels,
                 const std::vector<double>& scales, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                 bool aligned, at::ScalarType dtype) {
  RoiAlignParams& q = p.params;
  p.rois = rois.to(math_dtype(dtype)).contiguous();
  q.num_rois = rois.size(0);
  q.pooled_h = pooled_h;
  q.pooled_w = pooled_w;
  q.sampling_ratio = sampling_ratio;
  q.aligned = aligned;
  q.num_levels = static_cast<int>(scales.size());
  for (size_t l = 0; l < scales.size(); ++l) q.scale[l] = scales[l];
  if (levels.has_value()) {
    p.levels = levels->contiguous();
    q.levels = p.levels.const_data_ptr<int64_t>();
  }
}

}  // namespace

RoiAlignProblem prepare_roi_align(const std::vector<at::Tensor>& features, const at::Tensor& rois,
                                  const std::optional<at::Tensor>& levels, const std::vector<double>& scales,
                                  int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                  const char* op) {
  const bool multi = levels.has_value();
  check_num_levels(features.size(), op, "features");
  const std::string arg0 = multi ? "features[0]" : "input";
  check_rois(features[0], rois, op, arg0.c_str(), "rois", /*same_dtype=*/false);
  TORCH_CHECK(scales.size() == features.size(), "fastdet::", op, ": spatial_scales must hold one scale per level (",
              features.size(), "), got ", scales.size());
  for (double s : scales) check_roi_pool_params(pooled_h, pooled_w, s, op);
  check_sampling_ratio(sampling_ratio, op);
  const at::Tensor& f0 = features[0];
  for (size_t l = 1; l < features.size(); ++l) {
    const std::string arg = "features[" + std::to_string(l) + "]";
    const at::Tensor& f = features[l];
    TORCH_CHECK(f.dim() == 4 && f.size(0) == f0.size(0) && f.size(1) == f0.size(1), "fastdet::", op, ": ", arg,
                " must have shape [N, C, H, W] with N, C of features[0] (", f0.size(0), ", ", f0.size(1), "), got ",
                shape_str(f));
    check_same_device(f0, f, op, "features[0]", arg.c_str());
    check_same_dtype(f0, f, op, "features[0]", arg.c_str());
  }
  if (multi) check_levels(rois, *levels, static_cast<int64_t>(features.size()), op);

  RoiAlignProblem p;
  RoiAlignParams& q = p.params;
  fill_common(p, rois, levels, scales, pooled_h, pooled_w, sampling_ratio, aligned, f0.scalar_type());
  q.channels_last = rois_input_channels_last(f0);
  q.batch = f0.size(0);
  q.channels = f0.size(1);
  for (size_t l = 0; l < features.size(); ++l) {
    p.features.push_back(features[l].contiguous(layout(q.channels_last)));
    q.height[l] = features[l].size(2);
    q.width[l] = features[l].size(3);
    q.features[l] = p.features.back().const_data_ptr();
  }
  return p;
}

RoiAlignProblem prepare_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois,
                                           const std::optional<at::Tensor>& levels,
                                           const std::vector<double>& scales, const std::vector<int64_t>& heights,
                                           const std::vector<int64_t>& widths, int64_t batch, int64_t channels,
                                           int64_t sampling_ratio, bool aligned, bool channels_last,
                                           at::Tensor& grad_contig, const char* op) {
  check_num_levels(scales.size(), op, "spatial_scales");
  TORCH_CHECK(heights.size() == scales.size() && widths.size() == scales.size(), "fastdet::", op,
              ": heights and widths must hold one size per level (", scales.size(), "), got ", heights.size(),
              " and ", widths.size());
  TORCH_CHECK(batch >= 0 && channels >= 0, "fastdet::", op, ": batch_size and channels must be >= 0, got ", batch,
              " and ", channels);
  for (size_t l = 0; l < heights.size(); ++l) {
    TORCH_CHECK(heights[l] >= 0 && widths[l] >= 0, "fastdet::", op, ": height and width must be >= 0, got ",
                heights[l], " and ", widths[l]);
  }
  check_floating(grad, op, "grad");
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels, "fastdet::", op,
              ": grad must have shape [K, C, PH, PW] with K = rois.size(0) = ", rois.size(0), " and C = ", channels,
              ", got ", shape_str(grad));
  // The batch-index checks of check_rois against an empty stand-in of the input.
  const at::Tensor stand_in = at::empty({batch, channels, 0, 0}, grad.options());
  check_rois(stand_in, rois, op, "grad", "rois", /*same_dtype=*/false);
  for (double s : scales) check_roi_pool_params(grad.size(2), grad.size(3), s, op);
  check_sampling_ratio(sampling_ratio, op);
  if (levels.has_value()) check_levels(rois, *levels, static_cast<int64_t>(scales.size()), op);

  RoiAlignProblem p;
  RoiAlignParams& q = p.params;
  fill_common(p, rois, levels, scales, grad.size(2), grad.size(3), sampling_ratio, aligned, grad.scalar_type());
  q.channels_last = channels_last;
  q.batch = batch;
  q.channels = channels;
  for (size_t l = 0; l < scales.size(); ++l) {
    q.height[l] = heights[l];
    q.width[l] = widths[l];
  }
  grad_contig = grad.contiguous(layout(channels_last));
  return p;
}

KeySegments roi_segments(const RoiAlignProblem& p) {
  const RoiAlignParams& q = p.params;
  const at::Tensor image = p.rois.select(1, 0).to(at::kLong);
  const at::Tensor keys = p.levels.defined() ? p.levels * q.batch + image : image;
  return segments_by_key(keys, static_cast<int64_t>(q.num_levels) * q.batch);
}

namespace {

// Zeroed per-level gradient buffers in the math type and the layout; their pointers go to params.
std::vector<at::Tensor> grad_buffers(RoiAlignProblem& p, const at::TensorOptions& options) {
  RoiAlignParams& q = p.params;
  std::vector<at::Tensor> buffers;
  for (int l = 0; l < q.num_levels; ++l) {
    // NB: at::empty + zero_, since at::zeros drops the memory format of the options.
    buffers.push_back(at::empty({q.batch, q.channels, q.height[l], q.width[l]},
                                options.dtype(math_dtype(options.dtype().toScalarType()))
                                    .memory_format(layout(q.channels_last)))
                          .zero_());
    q.grad_features[l] = buffers.back().data_ptr();
  }
  return buffers;
}

bool has_work(const RoiAlignProblem& p, const at::Tensor& grad) {
  bool any_plane = false;
  for (int l = 0; l < p.params.num_levels; ++l) any_plane |= p.params.height[l] * p.params.width[l] > 0;
  return grad.numel() > 0 && any_plane && p.params.batch > 0;
}

std::vector<at::Tensor> run_backward(RoiAlignBackwardFn fn, RoiAlignProblem& p, const at::Tensor& grad) {
  std::vector<at::Tensor> buffers = grad_buffers(p, grad.options());
  if (has_work(p, grad)) fn(p, grad);
  for (at::Tensor& b : buffers) b = b.to(grad.scalar_type());  // keeps the layout; no-op for fp32/fp64
  return buffers;
}

at::Tensor run_forward(RoiAlignForwardFn fn, const RoiAlignProblem& p) {
  const RoiAlignParams& q = p.params;
  at::Tensor out = at::empty({q.num_rois, q.channels, q.pooled_h, q.pooled_w},
                             p.features[0].options().memory_format(layout(q.channels_last)));
  if (out.numel() > 0) fn(p, out);
  return out;
}

}  // namespace

at::Tensor roi_align_entry(RoiAlignForwardFn fn, const at::Tensor& input, const at::Tensor& rois,
                           double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                           bool aligned) {
  const RoiAlignProblem p = prepare_roi_align({input}, rois, std::nullopt, {spatial_scale}, pooled_h, pooled_w,
                                              sampling_ratio, aligned, "roi_align");
  return run_forward(fn, p);
}

at::Tensor roi_align_backward_entry(RoiAlignBackwardFn fn, const at::Tensor& grad, const at::Tensor& rois,
                                    double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch,
                                    int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                    bool aligned, bool channels_last) {
  const char* op = "_roi_align_backward";
  TORCH_CHECK(grad.dim() != 4 || (grad.size(2) == pooled_h && grad.size(3) == pooled_w), "fastdet::", op,
              ": grad must have shape [K, C, pooled_height, pooled_width] = [K, C, ", pooled_h, ", ", pooled_w,
              "], got ", shape_str(grad));
  at::Tensor g;
  RoiAlignProblem p = prepare_roi_align_backward(grad, rois, std::nullopt, {spatial_scale}, {height}, {width}, batch,
                                                 channels, sampling_ratio, aligned, channels_last, g, op);
  return run_backward(fn, p, g)[0];
}

at::Tensor multi_scale_roi_align_entry(RoiAlignForwardFn fn, at::TensorList features, const at::Tensor& rois,
                                       const at::Tensor& levels, at::ArrayRef<double> scales, int64_t pooled_h,
                                       int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  const RoiAlignProblem p = prepare_roi_align(features.vec(), rois, levels, scales.vec(), pooled_h, pooled_w,
                                              sampling_ratio, aligned, "multi_scale_roi_align");
  return run_forward(fn, p);
}

std::vector<at::Tensor> multi_scale_roi_align_backward_entry(
    RoiAlignBackwardFn fn, const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& levels,
    at::ArrayRef<double> scales, at::IntArrayRef heights, at::IntArrayRef widths, int64_t batch, int64_t channels,
    int64_t sampling_ratio, bool aligned, bool channels_last) {
  at::Tensor g;
  RoiAlignProblem p = prepare_roi_align_backward(grad, rois, levels, scales.vec(), heights.vec(), widths.vec(), batch,
                                                 channels, sampling_ratio, aligned, channels_last, g,
                                                 "_multi_scale_roi_align_backward");
  return run_backward(fn, p, g);
}

}  // namespace fastdet

TORCH_LIBRARY_FRAGMENT(fastdet, m) {
  m.set_python_module("fastdet.ops.roi_align");
  // input [N, C, H, W], rois [K, 5] (batch_index, x1, y1, x2, y2) -> [K, C, PH, PW] (torchvision's schema)
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  // grad [K, C, PH, PW] -> grad_input [batch_size, channels, height, width] (channels-last when asked)
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
      "bool aligned, bool channels_last=False) -> Tensor");
  // features L x [N, C, H_l, W_l], rois [K, 5], levels [K] int64 -> [K, C, PH, PW], all levels in one launch
  m.def(
      "multi_scale_roi_align(Tensor[] features, Tensor rois, Tensor levels, float[] spatial_scales, "
      "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  // grad [K, C, PH, PW] -> L x grad_features [batch_size, channels, heights[l], widths[l]]
  m.def(
      "_multi_scale_roi_align_backward(Tensor grad, Tensor rois, Tensor levels, float[] spatial_scales, "
      "SymInt[] heights, SymInt[] widths, SymInt batch_size, SymInt channels, int sampling_ratio, bool aligned, "
      "bool channels_last) -> Tensor[]");
}
