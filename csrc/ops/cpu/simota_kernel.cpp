// CPU kernels of fastdet::simota_cost and fastdet::simota_assign (math in ops/simota.h).
//
// (1) Per (image, anchor), in parallel: candidate flag (inside some valid GT's box or centre
//     region) and, for candidates only, cls_sum = sum_k -max(log1p(-p_k), -100) in double.
// (2) Per (image, chunk of anchors), in parallel: every candidate anchor of the chunk against
//     every valid GT; per GT the chunk keeps its candidate_topk largest IoUs and candidate_topk
//     lowest costs (ties to the lower anchor).
// (3) Per image, in parallel: merge the chunks' lists per GT; the dynamic k (<= candidate_topk,
//     since IoU <= 1) takes the first k of the cost list; count the claims of every anchor, then
//     resolve each anchor (simota_resolve: conflicts go to the GT of lowest cost) and write the
//     outputs.
// Nothing of size G x A (or G x A x C) is stored; the cost matrix exists only in simota_cost.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "ops/simota.h"

namespace fastdet {
namespace {

// Labels of masked GTs must be class indices (checked here: CPU tensors need no synchronisation).
void check_labels_cpu(const SimotaProblem& s, const char* op) {
  const int64_t* labels = s.gt_labels.const_data_ptr<int64_t>();
  const bool* mask = s.gt_mask.const_data_ptr<bool>();
  const int64_t n = s.p.batch * s.p.gts, C = s.p.classes;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(!mask[i] || (labels[i] >= 0 && labels[i] < C), "fastdet::", op,
                ": gt_labels must be in [0, C) = [0, ", C, ") where gt_mask is set, got ", labels[i],
                " at [", i / s.p.gts, ", ", i % s.p.gts, "]");
  }
}

// Pass (1): candidate flags [B * A] and cls_sum [B * A] (0 for non-candidates).
template <typename T>
void candidates_and_cls_sum(const SimotaProblem& s, std::vector<uint8_t>& cand, std::vector<double>& cls_sum) {
  using acc_t = at::opmath_type<T>;
  const SimotaParams& p = s.p;
  const SimotaInputs<T> in = simota_inputs<T>(s);
  const acc_t radius = static_cast<acc_t>(p.center_radius);
  cand.assign(p.batch * p.anchors, 0);
  cls_sum.assign(p.batch * p.anchors, 0.0);
  at::parallel_for(0, p.batch * p.anchors, 256, [&](int64_t begin, int64_t end) {
    for (int64_t ba = begin; ba < end; ++ba) {
      const int64_t b = ba / p.anchors, a = ba % p.anchors;
      const SimotaAnchor<acc_t> an = load_prior<acc_t>(in.priors, a);
      bool any = false;
      for (int64_t g = 0; g < p.gts && !any; ++g) {
        const int64_t bg = b * p.gts + g;
        any = simota_gt_valid(in.mask, in.labels, bg, p.classes) &&
              simota_candidate_of(load_box<acc_t>(in.gt_boxes, bg), an, radius, p.center_only);
      }
      if (!any) continue;
      cand[ba] = 1;
      const T* row = in.scores + ba * p.classes;
      double sum = 0;
      for (int64_t k = 0; k < p.classes; ++k) sum += simota_neg_log1m(static_cast<acc_t>(row[k]));
      cls_sum[ba] = sum;
    }
  });
}

template <typename T>
void simota_cost_impl(const SimotaProblem& s, at::Tensor& cost) {
  using acc_t = at::opmath_type<T>;
  const SimotaParams& p = s.p;
  std::vector<uint8_t> cand;
  std::vector<double> cls_sum;
  candidates_and_cls_sum<T>(s, cand, cls_sum);
  const SimotaInputs<T> in = simota_inputs<T>(s);
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "simota_cost_out", [&] {
    using out_t = scalar_t;
    out_t* out = cost.data_ptr<out_t>();
    const out_t inf = std::numeric_limits<out_t>::infinity();
    at::parallel_for(0, p.batch * p.gts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bg = begin; bg < end; ++bg) {
        const int64_t b = bg / p.gts;
        out_t* row = out + bg * p.anchors;
        if (!simota_gt_valid(in.mask, in.labels, bg, p.classes)) {
          for (int64_t a = 0; a < p.anchors; ++a) row[a] = inf;
          continue;
        }
        const Box<acc_t> gt = load_box<acc_t>(in.gt_boxes, bg);
        for (int64_t a = 0; a < p.anchors; ++a) {
          if (!cand[b * p.anchors + a]) {
            row[a] = inf;
            continue;
          }
          acc_t iou;
          double c;
          simota_pair<acc_t>(p, in, cls_sum.data(), b, a, gt, in.labels[bg], iou, c);
          row[a] = static_cast<out_t>(c);
        }
      }
    });
  });
}

template <typename T>
void simota_assign_impl(const SimotaProblem& s, at::Tensor& assigned_gt, at::Tensor& assigned_labels,
                        at::Tensor& assigned_ious, at::Tensor& num_fg) {
  using acc_t = at::opmath_type<T>;
  const SimotaParams& p = s.p;
  const int64_t A = p.anchors, G = p.gts, K = p.topk;
  std::vector<uint8_t> cand;
  std::vector<double> cls_sum;
  candidates_and_cls_sum<T>(s, cand, cls_sum);
  const SimotaInputs<T> in = simota_inputs<T>(s);

  // (2) per (image, chunk of anchors): anchors outer, GTs inner, so an anchor's score row and
  // boxes stay in cache while every GT of the image sees it. Each task leaves, per GT, its
  // candidate_topk smallest (-IoU) and (cost) lists in `lists` ([task][g][iou | cost]).
  // List l = (task * G + g) * 2 + (0: -IoU, 1: cost) has its entries at [l * K, l * K + len[l]).
  const int64_t chunk = 1024, chunks = (A + chunk - 1) / chunk, tasks = p.batch * chunks;
  std::vector<double> list_key(tasks * G * 2 * K);
  std::vector<int32_t> list_idx(tasks * G * 2 * K);
  std::vector<int> list_len(tasks * G * 2, 0);
  std::vector<int64_t> task_cand(tasks, 0);
  const int cap = static_cast<int>(K);
  auto push = [&](int64_t l, double key, int32_t a) {
    simota_push(list_key.data() + l * K, list_idx.data() + l * K, list_len[l], key, a, cap);
  };
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> valid;
    std::vector<Box<acc_t>> gts;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / chunks, a0 = (t % chunks) * chunk, a1 = std::min(A, a0 + chunk);
      valid.clear();
      gts.clear();
      for (int64_t g = 0; g < G; ++g) {
        if (!simota_gt_valid(in.mask, in.labels, b * G + g, p.classes)) continue;
        valid.push_back(g);
        gts.push_back(load_box<acc_t>(in.gt_boxes, b * G + g));
      }
      int64_t n = 0;
      for (int64_t a = a0; a < a1; ++a) {
        if (!cand[b * A + a]) continue;
        ++n;
        for (size_t j = 0; j < valid.size(); ++j) {
          const int64_t g = valid[j];
          acc_t iou;
          double c;
          simota_pair<acc_t>(p, in, cls_sum.data(), b, a, gts[j], in.labels[b * G + g], iou, c);
          push((t * G + g) * 2, -static_cast<double>(iou), static_cast<int32_t>(a));
          push((t * G + g) * 2 + 1, c, static_cast<int32_t>(a));
        }
      }
      task_cand[t] = n;
    }
  });

  // (3) per image: merge the chunks' lists (the (key, anchor) order is total, so the result is
  // the sequential one), dynamic k and the k picks of every GT, claims, then conflict resolution
  // and outputs.
  int64_t* out_gt = assigned_gt.data_ptr<int64_t>();
  int64_t* out_label = assigned_labels.data_ptr<int64_t>();
  T* out_iou = assigned_ious.data_ptr<T>();
  int64_t* out_num = num_fg.data_ptr<int64_t>();
  at::parallel_for(0, p.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> count(A), owner(A);
    SimotaSmallest top_iou, top_cost;
    for (int64_t b = begin; b < end; ++b) {
      std::fill(count.begin(), count.end(), 0);
      int64_t num_cand = 0;
      for (int64_t ch = 0; ch < chunks; ++ch) num_cand += task_cand[b * chunks + ch];
      for (int64_t g = 0; g < G && num_cand > 0; ++g) {
        if (!simota_gt_valid(in.mask, in.labels, b * G + g, p.classes)) continue;
        top_iou.len = top_cost.len = 0;
        for (int64_t ch = 0; ch < chunks; ++ch) {
          const int64_t l = ((b * chunks + ch) * G + g) * 2;
          for (int j = 0; j < list_len[l]; ++j) top_iou.push(list_key[l * K + j], list_idx[l * K + j], cap);
          for (int j = 0; j < list_len[l + 1]; ++j) {
            top_cost.push(list_key[(l + 1) * K + j], list_idx[(l + 1) * K + j], cap);
          }
        }
        double iou_sum = 0;
        for (int j = 0; j < top_iou.len; ++j) iou_sum += -top_iou.key[j];
        const int64_t k = simota_dynamic_k(iou_sum, num_cand);
        for (int64_t j = 0; j < k; ++j) {
          const int32_t a = top_cost.idx[j];
          ++count[a];
          owner[a] = static_cast<int32_t>(g);
        }
      }
      int64_t fg = 0;
      for (int64_t a = 0; a < A; ++a) {
        acc_t iou;
        const int64_t g = simota_resolve<acc_t>(p, in, cls_sum.data(), b, a, count[a], owner[a], iou);
        const int64_t ba = b * A + a;
        out_gt[ba] = g;
        out_label[ba] = g >= 0 ? in.labels[b * G + g] : -1;
        out_iou[ba] = static_cast<T>(iou);
        fg += g >= 0;
      }
      out_num[b] = fg;
    }
  });
}

at::Tensor simota_cost_cpu(const at::Tensor& pred_scores, const at::Tensor& pred_boxes, const at::Tensor& priors,
                           const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_mask,
                           double center_radius, double iou_weight, double cls_weight, bool center_only,
                           double outside_cost) {
  const SimotaProblem s = prepare_simota("simota_cost", pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask,
                                         center_radius, 1, iou_weight, cls_weight, center_only, outside_cost);
  check_labels_cpu(s, "simota_cost");
  at::Tensor cost = at::empty({s.p.batch, s.p.gts, s.p.anchors}, pred_scores.options().dtype(simota_cost_dtype(pred_scores)));
  if (cost.numel() == 0) return cost;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred_scores.scalar_type(), "simota_cost_cpu",
                                  [&] { simota_cost_impl<scalar_t>(s, cost); });
  return cost;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> simota_assign_cpu(
    const at::Tensor& pred_scores, const at::Tensor& pred_boxes, const at::Tensor& priors, const at::Tensor& gt_boxes,
    const at::Tensor& gt_labels, const at::Tensor& gt_mask, double center_radius, int64_t candidate_topk,
    double iou_weight, double cls_weight, bool center_only, double outside_cost) {
  const SimotaProblem s = prepare_simota("simota_assign", pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask,
                                         center_radius, candidate_topk, iou_weight, cls_weight, center_only,
                                         outside_cost);
  check_labels_cpu(s, "simota_assign");
  const int64_t B = s.p.batch, A = s.p.anchors;
  const auto long_opts = pred_scores.options().dtype(at::kLong);
  at::Tensor assigned_gt = at::full({B, A}, -1, long_opts);
  at::Tensor assigned_labels = at::full({B, A}, -1, long_opts);
  at::Tensor assigned_ious = at::zeros({B, A}, pred_scores.options());
  at::Tensor num_fg = at::zeros({B}, long_opts);
  if (B == 0 || A == 0 || s.p.gts == 0) return {assigned_gt, assigned_labels, assigned_ious, num_fg};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred_scores.scalar_type(), "simota_assign_cpu", [&] {
    simota_assign_impl<scalar_t>(s, assigned_gt, assigned_labels, assigned_ious, num_fg);
  });
  return {assigned_gt, assigned_labels, assigned_ious, num_fg};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CPU, m) {
  m.impl("simota_cost", &simota_cost_cpu);
  m.impl("simota_assign", &simota_assign_cpu);
}

}  // namespace fastdet
