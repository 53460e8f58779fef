// Schemas of fastdet::simota_cost and fastdet::simota_assign (YOLOX SimOTA label assignment,
// batched over images with padded ground truths). Kernels: cpu/simota_kernel.cpp,
// cuda/simota_kernel.cu; shared math: simota.h; fake kernels and autocast: python/fastdet/ops/simota.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastdet, m) {
  m.set_python_module("fastdet.ops.simota");
  // pred_scores [B, A, C] probabilities, pred_boxes [B, A, 4] (x1, y1, x2, y2), priors [A, 4]
  // (center_x, center_y, stride_x, stride_y), gt_boxes [B, G, 4], gt_labels [B, G] int64,
  // gt_mask [B, G] bool -> cost [B, G, A] (float64 for float64 inputs, else float32; inf where g is
  // not a valid GT or a is not a candidate anchor).
  m.def("simota_cost(Tensor pred_scores, Tensor pred_boxes, Tensor priors, Tensor gt_boxes, Tensor gt_labels, "
        "Tensor gt_mask, float center_radius=2.5, float iou_weight=3.0, float cls_weight=1.0, "
        "bool center_only=False, float outside_cost=100000.0) -> Tensor");
  // same inputs -> assigned_gt [B, A] int64 (-1: background), assigned_labels [B, A] int64 (-1),
  // assigned_ious [B, A] (input dtype, 0 for background), num_fg [B] int64.
  m.def("simota_assign(Tensor pred_scores, Tensor pred_boxes, Tensor priors, Tensor gt_boxes, Tensor gt_labels, "
        "Tensor gt_mask, float center_radius=2.5, int candidate_topk=10, float iou_weight=3.0, "
        "float cls_weight=1.0, bool center_only=False, float outside_cost=100000.0) "
        "-> (Tensor assigned_gt, Tensor assigned_labels, Tensor assigned_ious, Tensor num_fg)");
}
