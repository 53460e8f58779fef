// CPU kernel of fastdet::soft_nms.
//
// The boxes still in play live in a compact structure of arrays (coordinates, current score,
// original index, class) in the math type (fp32 for half inputs), kept in original-index order.
// Each step emits the current best box, then makes one pass over the rest that
//   1. decays the score of every same-class box by soft_nms_weight(iou with the selected box),
//   2. drops the box (compacts it out) when its score is no longer >= min_score,
//   3. tracks the next best box (highest score; on equal scores the earlier, i.e. lower, index).
// O(N^2) in the worst case, O(N) memory; the passes shrink as boxes drop out.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "ops/soft_nms.h"

namespace fastdet {
namespace {

template <SoftNmsMethod M, typename T>
int64_t soft_nms_impl(const SoftNmsProblem& p, double iou_threshold, double sigma, double min_score,
                      int64_t* keep, T* kept_scores) {
  using acc_t = at::opmath_type<T>;
  const T* bx = p.boxes.const_data_ptr<T>();
  const T* sc = p.scores.const_data_ptr<T>();
  const int64_t* cl = p.idxs.defined() ? p.idxs.const_data_ptr<int64_t>() : nullptr;
  const acc_t thr = static_cast<acc_t>(iou_threshold), sig = static_cast<acc_t>(sigma);
  const acc_t lo = static_cast<acc_t>(min_score);

  // Initial set: boxes with score >= min_score (a NaN score is never >= anything, so it is dropped).
  std::vector<acc_t> x1, y1, x2, y2, s;
  std::vector<int64_t> id, cls;
  for (int64_t i = 0; i < p.n; ++i) {
    const acc_t si = static_cast<acc_t>(sc[i]);
    if (!(si >= lo)) continue;
    const Box<acc_t> b = load_box<acc_t>(bx, i);
    x1.push_back(b.x1), y1.push_back(b.y1), x2.push_back(b.x2), y2.push_back(b.y2), s.push_back(si);
    id.push_back(i);
    if (cl) cls.push_back(cl[i]);
  }
  int64_t live = static_cast<int64_t>(s.size());
  int64_t best = -1;  // position of the best box in the compact arrays
  for (int64_t j = 0; j < live; ++j)
    if (best < 0 || s[j] > s[best]) best = j;  // strict: the first (lowest index) of equal scores wins

  int64_t count = 0;
  while (best >= 0) {
    keep[count] = id[best];
    kept_scores[count] = static_cast<T>(s[best]);
    ++count;
    const Box<acc_t> sel{x1[best], y1[best], x2[best], y2[best]};
    const int64_t sel_cls = cl ? cls[best] : 0;
    int64_t w = 0, next = -1;
    for (int64_t j = 0; j < live; ++j) {
      if (j == best) continue;
      acc_t sj = s[j];
      if (!cl || cls[j] == sel_cls) {
        sj *= soft_nms_pair_weight<M>(sel, Box<acc_t>{x1[j], y1[j], x2[j], y2[j]}, thr, sig);
      }
      if (!(sj >= lo)) continue;  // dropped for good
      s[w] = sj;
      if (w != j) {  // move down over a dropped/selected box (nothing to move until the first one)
        x1[w] = x1[j], y1[w] = y1[j], x2[w] = x2[j], y2[w] = y2[j], id[w] = id[j];
        if (cl) cls[w] = cls[j];
      }
      if (next < 0 || sj > s[next]) next = w;
      ++w;
    }
    live = w;
    best = next;
  }
  return count;
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                                double sigma, double min_score, c10::string_view method,
                                                const c10::optional<at::Tensor>& idxs) {
  const SoftNmsProblem p = prepare_soft_nms(boxes, scores, iou_threshold, sigma, min_score, method, idxs);
  at::Tensor keep = at::empty({p.n}, boxes.options().dtype(at::kLong));
  at::Tensor kept = at::empty({p.n}, scores.options());
  if (p.n == 0) return {keep, kept};
  int64_t count = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "soft_nms_cpu", [&] {
    with_soft_nms_method(p.method, [&](auto m) {
      count = soft_nms_impl<decltype(m)::value, scalar_t>(p, iou_threshold, sigma, min_score, keep.data_ptr<int64_t>(),
                                                         kept.data_ptr<scalar_t>());
    });
  });
  return {keep.narrow(0, 0, count), kept.narrow(0, 0, count)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CPU, m) { m.impl("soft_nms", &soft_nms_cpu); }

}  // namespace fastdet
