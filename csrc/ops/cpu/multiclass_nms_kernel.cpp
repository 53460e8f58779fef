// CPU kernel of fastdet::multiclass_nms.
//
// Per segment ((image, class), or the whole image when class-agnostic), in parallel: collect the
// candidates whose score passes the threshold, sort them (score descending, index ascending),
// then greedy NMS against the compacted list of kept boxes, stopping at the segment's cap.
// Per image, in parallel: merge the segments' kept lists (class-major, each already in rank order)
// with a stable sort on the score, so ties go to the lower class, then the lower rank.
// Scores and IoUs are computed in at::opmath_type (fp32 for half inputs) and compared with the
// thresholds in double.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <utility>
#include <vector>

#include "common/box_geometry.h"
#include "ops/multiclass_nms.h"

namespace fastdet {
namespace {

template <typename acc_t>
struct Kept {
  acc_t score;
  int64_t flat;  // class-agnostic: n * C + c; per class: n
};

template <typename T>
void multiclass_nms_impl(const MulticlassNmsProblem& p, at::Tensor& num_dets, at::Tensor& out_boxes,
                         at::Tensor& out_scores, at::Tensor& out_labels, at::Tensor& out_indices) {
  using acc_t = at::opmath_type<T>;
  const T* boxes = p.boxes.const_data_ptr<T>();
  const T* scores = p.scores.const_data_ptr<T>();
  const int64_t N = p.n, C = p.c, S = p.segments_per_image(), L = p.segment_length(), cap = p.segment_cap();
  const int64_t K = p.max_total;
  const bool agnostic = p.class_agnostic, per_class = p.per_class_boxes;
  std::vector<std::vector<Kept<acc_t>>> kept(p.batch * S);

  at::parallel_for(0, p.batch * S, 1, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<acc_t, int64_t>> cand;
    std::vector<Box<acc_t>> kept_boxes;
    for (int64_t seg = begin; seg < end; ++seg) {
      const int64_t b = seg / S, seg_c = seg % S;
      // Score of candidate i of this segment: scores[b, n, c] with (n, c) = agnostic ? (i / C, i % C) : (i, seg_c).
      const T* srow = scores + b * N * C;
      cand.clear();
      for (int64_t i = 0; i < L; ++i) {
        const acc_t s = static_cast<acc_t>(agnostic ? srow[i] : srow[i * C + seg_c]);
        // NB: NaN compares false, so NaN scores never pass.
        if (static_cast<double>(s) > p.score_threshold) cand.emplace_back(s, i);
      }
      std::sort(cand.begin(), cand.end(), [](const auto& x, const auto& y) {
        return x.first > y.first || (x.first == y.first && x.second < y.second);
      });
      kept_boxes.clear();
      auto& out = kept[seg];
      for (const auto& [s, i] : cand) {
        if (static_cast<int64_t>(out.size()) >= cap) break;
        const int64_t n = agnostic ? i / C : i, c = agnostic ? i % C : seg_c;
        const Box<acc_t> box = load_box<acc_t>(boxes, multiclass_box_row(per_class, b, n, c, N, C));
        bool suppressed = false;
        for (const auto& k : kept_boxes) {
          if (static_cast<double>(nms_iou(k, box)) > p.iou_threshold) {
            suppressed = true;
            break;
          }
        }
        if (suppressed) continue;
        kept_boxes.push_back(box);
        out.push_back({s, i});
      }
    }
  });

  int64_t* nd = num_dets.data_ptr<int64_t>();
  T* ob = out_boxes.data_ptr<T>();
  T* os = out_scores.data_ptr<T>();
  int64_t* ol = out_labels.data_ptr<int64_t>();
  int64_t* oi = out_indices.data_ptr<int64_t>();
  at::parallel_for(0, p.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<acc_t, int64_t>> merged;  // (score, c * cap + rank), class-major
    for (int64_t b = begin; b < end; ++b) {
      merged.clear();
      for (int64_t s = 0; s < S; ++s) {
        const auto& ks = kept[b * S + s];
        for (size_t r = 0; r < ks.size(); ++r) merged.emplace_back(ks[r].score, s * cap + static_cast<int64_t>(r));
      }
      if (!agnostic) {  // a class-agnostic image has one segment, already in order
        std::stable_sort(merged.begin(), merged.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
      }
      const int64_t count = std::min<int64_t>(static_cast<int64_t>(merged.size()), K);
      nd[b] = count;
      for (int64_t k = 0; k < count; ++k) {
        const int64_t s = merged[k].second / cap, r = merged[k].second % cap;
        const int64_t flat = kept[b * S + s][r].flat;
        const int64_t n = agnostic ? flat / C : flat, c = agnostic ? flat % C : s;
        const T* src = boxes + 4 * multiclass_box_row(per_class, b, n, c, N, C);
        T* dst = ob + 4 * (b * K + k);
        for (int j = 0; j < 4; ++j) dst[j] = src[j];
        os[b * K + k] = static_cast<T>(merged[k].first);
        ol[b * K + k] = c;
        oi[b * K + k] = n;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms_cpu(
    const at::Tensor& boxes, const at::Tensor& scores, double score_threshold, double iou_threshold,
    int64_t max_per_class, int64_t max_total, bool class_agnostic) {
  const MulticlassNmsProblem p =
      prepare_multiclass_nms(boxes, scores, score_threshold, iou_threshold, max_per_class, max_total, class_agnostic);
  const int64_t B = p.batch, K = p.max_total;
  const auto long_opts = scores.options().dtype(at::kLong);
  // Padding: boxes and scores 0, labels and indices -1, num_dets 0.
  at::Tensor num_dets = at::zeros({B}, long_opts);
  at::Tensor out_boxes = at::zeros({B, K, 4}, scores.options());
  at::Tensor out_scores = at::zeros({B, K}, scores.options());
  at::Tensor out_labels = at::full({B, K}, -1, long_opts);
  at::Tensor out_indices = at::full({B, K}, -1, long_opts);
  if (B == 0 || p.n == 0 || p.c == 0) return {num_dets, out_boxes, out_scores, out_labels, out_indices};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "multiclass_nms_cpu", [&] {
    multiclass_nms_impl<scalar_t>(p, num_dets, out_boxes, out_scores, out_labels, out_indices);
  });
  return {num_dets, out_boxes, out_scores, out_labels, out_indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CPU, m) {
  m.impl("multiclass_nms", &multiclass_nms_cpu);
}

}  // namespace fastdet
