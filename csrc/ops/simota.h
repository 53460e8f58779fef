#pragma once
// SimOTA label assignment (YOLOX, Ge et al. 2021): argument handling and the per-pair math shared
// by the CPU and CUDA kernels of fastdet::simota_cost and fastdet::simota_assign.
//
// For image b, valid ground truth g (gt_mask[b, g], label in [0, C)) and anchor a with prior
// (cx, cy, sx, sy):
//   in_box(g, a)    = cx, cy strictly inside gt box g
//   in_center(g, a) = |cx - gcx| < r * sx and |cy - gcy| < r * sy (written as YOLOX writes it)
//   candidate(a)    = some valid g has in_box or in_center   (center_only: in_center)
//   related(g, a)   = in_box and in_center                   (center_only: in_center)
//   cost(g, a)      = cls_weight * BCE(p[a], onehot(label g)).sum(classes)
//                     + iou_weight * -log(IoU(g, pred a) + 1e-8) + (related ? 0 : outside_cost)
// defined on candidate anchors only. The BCE sum never forms G x A x C: with BCE's logs clamped
// at -100 (as torch.nn.functional.binary_cross_entropy does),
//   sum_k BCE(p_k, [k == c]) = cls_sum(a) + max(log1p(-p_c), -100) - max(log(p_c), -100),
//   cls_sum(a)               = sum_k -max(log1p(-p_k), -100),
// so the per-anchor cls_sum (O(A * C)) is computed once and each pair costs O(1).
#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "common/box_geometry.h"
#include "common/checks.h"
#include "common/macros.h"

namespace fastdet {

// Most candidates a GT's dynamic k may look at (candidate_topk); bounds the per-thread lists.
constexpr int64_t kSimotaMaxTopk = 64;

struct SimotaParams {
  int64_t batch, anchors, classes, gts, topk;
  double center_radius, iou_weight, cls_weight, outside_cost;
  bool center_only;
};

// The problem in canonical form (all tensors contiguous).
//   pred_scores [B, A, C], pred_boxes [B, A, 4], priors [A, 4], gt_boxes [B, G, 4] (one dtype);
//   gt_labels [B, G] int64, gt_mask [B, G] bool.
struct SimotaProblem {
  at::Tensor pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask;
  SimotaParams p;
};

inline SimotaProblem prepare_simota(const char* op, const at::Tensor& pred_scores, const at::Tensor& pred_boxes,
                                    const at::Tensor& priors, const at::Tensor& gt_boxes,
                                    const at::Tensor& gt_labels, const at::Tensor& gt_mask, double center_radius,
                                    int64_t candidate_topk, double iou_weight, double cls_weight, bool center_only,
                                    double outside_cost) {
  TORCH_CHECK(pred_scores.dim() == 3, "fastdet::", op, ": pred_scores must have shape [B, A, C], got ",
              shape_str(pred_scores));
  check_floating(pred_scores, op, "pred_scores");
  const int64_t B = pred_scores.size(0), A = pred_scores.size(1), C = pred_scores.size(2);
  TORCH_CHECK(pred_boxes.dim() == 3 && pred_boxes.size(0) == B && pred_boxes.size(1) == A && pred_boxes.size(2) == 4,
              "fastdet::", op, ": pred_boxes must have shape [B, A, 4] = [", B, ", ", A, ", 4] (B, A of pred_scores), got ",
              shape_str(pred_boxes));
  TORCH_CHECK(priors.dim() == 2 && priors.size(0) == A && priors.size(1) == 4, "fastdet::", op,
              ": priors must have shape [A, 4] = [", A, ", 4] (center_x, center_y, stride_x, stride_y), got ",
              shape_str(priors));
  TORCH_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(0) == B && gt_boxes.size(2) == 4, "fastdet::", op,
              ": gt_boxes must have shape [B, G, 4] with B = ", B, ", got ", shape_str(gt_boxes));
  const int64_t G = gt_boxes.size(1);
  TORCH_CHECK(gt_labels.dim() == 2 && gt_labels.size(0) == B && gt_labels.size(1) == G, "fastdet::", op,
              ": gt_labels must have shape [B, G] = [", B, ", ", G, "], got ", shape_str(gt_labels));
  TORCH_CHECK(gt_labels.scalar_type() == at::kLong, "fastdet::", op, ": gt_labels must be an int64 tensor, got ",
              gt_labels.scalar_type());
  TORCH_CHECK(gt_mask.dim() == 2 && gt_mask.size(0) == B && gt_mask.size(1) == G, "fastdet::", op,
              ": gt_mask must have shape [B, G] = [", B, ", ", G, "], got ", shape_str(gt_mask));
  TORCH_CHECK(gt_mask.scalar_type() == at::kBool, "fastdet::", op, ": gt_mask must be a bool tensor, got ",
              gt_mask.scalar_type());
  check_same_dtype(pred_scores, pred_boxes, op, "pred_scores", "pred_boxes");
  check_same_dtype(pred_scores, priors, op, "pred_scores", "priors");
  check_same_dtype(pred_scores, gt_boxes, op, "pred_scores", "gt_boxes");
  check_same_device(pred_scores, pred_boxes, op, "pred_scores", "pred_boxes");
  check_same_device(pred_scores, priors, op, "pred_scores", "priors");
  check_same_device(pred_scores, gt_boxes, op, "pred_scores", "gt_boxes");
  check_same_device(pred_scores, gt_labels, op, "pred_scores", "gt_labels");
  check_same_device(pred_scores, gt_mask, op, "pred_scores", "gt_mask");
  TORCH_CHECK(std::isfinite(center_radius) && center_radius >= 0, "fastdet::", op,
              ": center_radius must be a finite number >= 0, got ", center_radius);
  TORCH_CHECK(candidate_topk >= 1 && candidate_topk <= kSimotaMaxTopk, "fastdet::", op,
              ": candidate_topk must be in [1, ", kSimotaMaxTopk, "], got ", candidate_topk);
  TORCH_CHECK(std::isfinite(iou_weight), "fastdet::", op, ": iou_weight must be finite, got ", iou_weight);
  TORCH_CHECK(std::isfinite(cls_weight), "fastdet::", op, ": cls_weight must be finite, got ", cls_weight);
  TORCH_CHECK(A < std::numeric_limits<int32_t>::max(), "fastdet::", op, ": at most 2^31 - 2 anchors, got ", A);
  TORCH_CHECK(!std::isnan(outside_cost), "fastdet::", op, ": outside_cost must be a number, got NaN");
  SimotaProblem s;
  s.pred_scores = pred_scores.contiguous();
  s.pred_boxes = pred_boxes.contiguous();
  s.priors = priors.contiguous();
  s.gt_boxes = gt_boxes.contiguous();
  s.gt_labels = gt_labels.contiguous();
  s.gt_mask = gt_mask.contiguous();
  s.p = {B, A, C, G, candidate_topk, center_radius, iou_weight, cls_weight, outside_cost, center_only};
  return s;
}

// Raw pointers of the canonical inputs, passed by value to the kernels.
template <typename T>
struct SimotaInputs {
  const T* scores;      // [B, A, C]
  const T* pred_boxes;  // [B, A, 4]
  const T* priors;      // [A, 4]
  const T* gt_boxes;    // [B, G, 4]
  const int64_t* labels;  // [B, G]
  const bool* mask;       // [B, G]
};

template <typename T>
SimotaInputs<T> simota_inputs(const SimotaProblem& s) {
  return {s.pred_scores.const_data_ptr<T>(), s.pred_boxes.const_data_ptr<T>(), s.priors.const_data_ptr<T>(),
          s.gt_boxes.const_data_ptr<T>(), s.gt_labels.const_data_ptr<int64_t>(), s.gt_mask.const_data_ptr<bool>()};
}

// dtype of simota_cost's output: float64 for float64 inputs, else float32 (1e5 overflows fp16).
inline at::ScalarType simota_cost_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// ---- per-pair math (host and device) ----------------------------------------------------------

// A ground truth takes part when its mask is set and its label is a class index. (The CPU host
// function rejects out-of-range labels of masked GTs; the CUDA kernels cannot raise without a
// host synchronisation and ignore such GTs.)
FASTDET_HD bool simota_gt_valid(const bool* mask, const int64_t* labels, int64_t i, int64_t C) {
  return mask[i] && labels[i] >= 0 && labels[i] < C;
}

template <typename acc_t>
struct SimotaAnchor {
  acc_t x, y, sx, sy;
};

template <typename acc_t, typename T>
FASTDET_HD SimotaAnchor<acc_t> load_prior(const T* priors, int64_t a) {
  const Box<acc_t> b = load_box<acc_t>(priors, a);
  return {b.x1, b.y1, b.x2, b.y2};
}

// in_box / in_center of YOLOX's get_in_boxes_info, strict inequalities (NaN -> false).
template <typename acc_t>
FASTDET_HD void simota_geometry(const Box<acc_t>& gt, const SimotaAnchor<acc_t>& an, acc_t radius, bool& in_box,
                                bool& in_center) {
  in_box = an.x - gt.x1 > acc_t(0) && an.y - gt.y1 > acc_t(0) && gt.x2 - an.x > acc_t(0) && gt.y2 - an.y > acc_t(0);
  const acc_t cx = (gt.x1 + gt.x2) * acc_t(0.5), cy = (gt.y1 + gt.y2) * acc_t(0.5);
  const acc_t rx = radius * an.sx, ry = radius * an.sy;
  in_center = an.x - (cx - rx) > acc_t(0) && an.y - (cy - ry) > acc_t(0) && (cx + rx) - an.x > acc_t(0) &&
              (cy + ry) - an.y > acc_t(0);
}

template <typename acc_t>
FASTDET_HD bool simota_candidate_of(const Box<acc_t>& gt, const SimotaAnchor<acc_t>& an, acc_t radius,
                                    bool center_only) {
  bool in_box, in_center;
  simota_geometry(gt, an, radius, in_box, in_center);
  return center_only ? in_center : (in_box || in_center);
}

// IoU of a GT and a predicted box as YOLOX's bboxes_iou computes it; NaN (NaN coordinates, two
// zero-area boxes) counts as 0.
template <typename acc_t>
FASTDET_HD acc_t simota_iou(const Box<acc_t>& gt, const Box<acc_t>& pred) {
  const acc_t iou = nms_iou(gt, pred);
  return iou == iou ? iou : acc_t(0);
}

// Class probabilities are clamped into [0, 1] (torch's BCE would raise); NaN stays NaN.
template <typename acc_t>
FASTDET_HD acc_t simota_clamp_prob(acc_t p) { return p < acc_t(0) ? acc_t(0) : (p > acc_t(1) ? acc_t(1) : p); }

// One term -max(log1p(-p_k), -100) of cls_sum.
template <typename acc_t>
FASTDET_HD acc_t simota_neg_log1m(acc_t p) {
  const acc_t l = std::log1p(-simota_clamp_prob(p));
  return -(l > acc_t(-100) ? l : acc_t(-100));
}

// The cost of pair (g, a): cls_sum = sum_k simota_neg_log1m(p[a, k]) accumulated in double,
// p_c = p[a, label g], iou = simota_iou(g, a). Combined in double so the outside_cost offset
// (1e5) does not swallow the differences between candidates.
template <typename acc_t>
FASTDET_HD double simota_pair_cost(const SimotaParams& p, double cls_sum, acc_t p_c, acc_t iou, bool related) {
  const acc_t pc = simota_clamp_prob(p_c);
  const acc_t lp = std::log(pc), l1p = std::log1p(-pc);
  const double cls = cls_sum + static_cast<double>(l1p > acc_t(-100) ? l1p : acc_t(-100)) -
                     static_cast<double>(lp > acc_t(-100) ? lp : acc_t(-100));
  const double iou_cost = -static_cast<double>(std::log(iou + acc_t(1e-8)));
  return p.cls_weight * cls + p.iou_weight * iou_cost + (related ? 0.0 : p.outside_cost);
}

// Everything about pair (g, a) of image b the selection needs.
template <typename acc_t, typename T>
FASTDET_HD void simota_pair(const SimotaParams& p, const SimotaInputs<T>& in, const double* cls_sum, int64_t b,
                            int64_t a, const Box<acc_t>& gt, int64_t label, acc_t& iou, double& cost) {
  const SimotaAnchor<acc_t> an = load_prior<acc_t>(in.priors, a);
  bool in_box, in_center;
  simota_geometry(gt, an, static_cast<acc_t>(p.center_radius), in_box, in_center);
  const bool related = p.center_only ? in_center : (in_box && in_center);
  const int64_t ba = b * p.anchors + a;
  iou = simota_iou(gt, load_box<acc_t>(in.pred_boxes, ba));
  cost = simota_pair_cost<acc_t>(p, cls_sum[ba], static_cast<acc_t>(in.scores[ba * p.classes + label]), iou, related);
}

// ---- the k smallest (key, index) pairs of a stream, ascending; ties to the lower index --------

FASTDET_HD bool simota_less(double ka, int32_t ia, double kb, int32_t ib) {
  return ka < kb || (ka == kb && ia < ib);
}

// NaN keys are ranked as +inf (after every finite key).
FASTDET_HD double simota_key(double k) { return k == k ? k : std::numeric_limits<double>::infinity(); }

// Inserts (k, i) into the ascending list key/idx of length len (at most cap entries).
FASTDET_HD void simota_push(double* key, int32_t* idx, int& len, double k, int32_t i, int cap) {
  k = simota_key(k);
  int pos;
  if (len < cap) {
    pos = len++;
  } else if (simota_less(k, i, key[cap - 1], idx[cap - 1])) {
    pos = cap - 1;
  } else {
    return;
  }
  while (pos > 0 && simota_less(k, i, key[pos - 1], idx[pos - 1])) {
    key[pos] = key[pos - 1];
    idx[pos] = idx[pos - 1];
    --pos;
  }
  key[pos] = k;
  idx[pos] = i;
}

// A list with room for the largest candidate_topk (a CUDA thread's registers / local memory).
struct SimotaSmallest {
  double key[kSimotaMaxTopk];
  int32_t idx[kSimotaMaxTopk];
  int len = 0;

  FASTDET_HD void push(double k, int32_t i, int cap) { simota_push(key, idx, len, k, i, cap); }
};

// Dynamic k of YOLOX: max(1, int(sum of the top min(topk, candidates) IoUs)), at most the number
// of candidates (0 when the image has none). top_ious descending.
FASTDET_HD int64_t simota_dynamic_k(double iou_sum, int64_t num_candidates) {
  if (num_candidates == 0) return 0;
  int64_t k = static_cast<int64_t>(iou_sum);  // truncation toward zero, like Tensor.int()
  if (k < 1) k = 1;
  return k < num_candidates ? k : num_candidates;
}

// Final GT of anchor a of image b claimed by `count` GTs (`owner`: one of them): background when
// unclaimed, the owner when claimed once, else the valid GT of lowest cost (ties to the lower g),
// as YOLOX's dynamic_k_matching resolves conflicts (over all GTs, not only the claimants).
// Writes the IoU of the pair (0 for background).
template <typename acc_t, typename T>
FASTDET_HD int64_t simota_resolve(const SimotaParams& p, const SimotaInputs<T>& in, const double* cls_sum, int64_t b,
                                  int64_t a, int32_t count, int32_t owner, acc_t& iou_out) {
  iou_out = acc_t(0);
  if (count == 0) return -1;
  int64_t best = owner;
  if (count > 1) {
    double best_cost = 0;
    best = -1;
    for (int64_t g = 0; g < p.gts; ++g) {
      const int64_t bg = b * p.gts + g;
      if (!simota_gt_valid(in.mask, in.labels, bg, p.classes)) continue;
      acc_t iou;
      double cost;
      simota_pair<acc_t>(p, in, cls_sum, b, a, load_box<acc_t>(in.gt_boxes, bg), in.labels[bg], iou, cost);
      cost = simota_key(cost);
      if (best < 0 || cost < best_cost) {
        best = g;
        best_cost = cost;
      }
    }
  }
  iou_out = simota_iou(load_box<acc_t>(in.gt_boxes, b * p.gts + best), load_box<acc_t>(in.pred_boxes, b * p.anchors + a));
  return best;
}

}  // namespace fastdet
