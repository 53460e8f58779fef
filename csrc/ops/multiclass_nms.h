#pragma once
// Host-side argument handling for fastdet::multiclass_nms, shared by the CPU and CUDA kernels.
#include <ATen/core/Tensor.h>

#include <vector>

#include "common/checks.h"
#include "common/macros.h"

namespace fastdet {

// The problem in canonical form (all tensors contiguous).
//   boxes  [B, N, 4] (shared by all classes) or [B, N, C, 4] (per-class boxes)
//   scores [B, N, C]
// Segments: class_agnostic ? one per image (its N * C candidates, flat index n * C + c)
//                          : one per (image, class) (its N candidates, index n).
struct MulticlassNmsProblem {
  at::Tensor boxes, scores;
  bool per_class_boxes, class_agnostic;
  int64_t batch, n, c;
  double score_threshold, iou_threshold;
  int64_t max_per_class, max_total;
  int64_t segments_per_image() const { return class_agnostic ? 1 : c; }
  int64_t segment_length() const { return class_agnostic ? n * c : n; }
  // Most detections one segment may keep: max_total when class-agnostic, else max_per_class.
  int64_t segment_cap() const { return class_agnostic ? max_total : max_per_class; }
};

inline MulticlassNmsProblem prepare_multiclass_nms(const at::Tensor& boxes, const at::Tensor& scores,
                                                   double score_threshold, double iou_threshold,
                                                   int64_t max_per_class, int64_t max_total, bool class_agnostic) {
  const char* op = "multiclass_nms";
  TORCH_CHECK((boxes.dim() == 3 || boxes.dim() == 4) && boxes.size(-1) == 4, "fastdet::multiclass_nms: boxes ",
              "must have shape [B, N, 4] or [B, N, C, 4], got ", shape_str(boxes));
  check_floating(boxes, op, "boxes");
  TORCH_CHECK(scores.dim() == 3, "fastdet::multiclass_nms: scores must have shape [B, N, C], got ", shape_str(scores));
  check_same_device(boxes, scores, op, "boxes", "scores");
  check_same_dtype(boxes, scores, op, "boxes", "scores");
  const bool shapes_match = boxes.size(0) == scores.size(0) && boxes.size(1) == scores.size(1) &&
                            (boxes.dim() == 3 || boxes.size(2) == scores.size(2));
  TORCH_CHECK(shapes_match, "fastdet::multiclass_nms: boxes and scores must agree on B, N (and C for per-class ",
              "boxes), got ", shape_str(boxes), " and ", shape_str(scores));
  check_threshold(score_threshold, op, "score_threshold");
  check_threshold(iou_threshold, op, "iou_threshold");
  TORCH_CHECK(max_per_class >= 1, "fastdet::multiclass_nms: max_per_class must be >= 1, got ", max_per_class);
  TORCH_CHECK(max_total >= 1, "fastdet::multiclass_nms: max_total must be >= 1, got ", max_total);
  MulticlassNmsProblem p;
  p.per_class_boxes = boxes.dim() == 4;
  p.class_agnostic = class_agnostic;
  p.batch = scores.size(0);
  p.n = scores.size(1);
  p.c = scores.size(2);
  p.score_threshold = score_threshold;
  p.iou_threshold = iou_threshold;
  p.max_per_class = max_per_class;
  p.max_total = max_total;
  p.boxes = boxes.contiguous();
  p.scores = scores.contiguous();
  return p;
}

// Row of the box of candidate (b, n, c) in the contiguous boxes viewed as [rows, 4].
FASTDET_HD int64_t multiclass_box_row(bool per_class_boxes, int64_t b, int64_t n, int64_t c, int64_t num_n,
                                      int64_t num_c) {
  return per_class_boxes ? (b * num_n + n) * num_c + c : b * num_n + n;
}

}  // namespace fastdet
