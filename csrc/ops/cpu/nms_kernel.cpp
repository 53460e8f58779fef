// CPU kernels of fastdet::nms and fastdet::batched_nms: one greedy core for both.
//
// 1. Order: a stable LSD radix sort of integer score keys (nms.h: score_sort_key) gives the visiting
//    order (score desc, lower index first, NaN first) in O(N). batched_nms then stable-sorts that
//    order by class, so each class is a contiguous segment already in visiting order.
// 2. The sorted boxes are gathered into coordinate arrays (structure of arrays, fp32 math for half).
// 3. Greedy core, per segment: the first live box is kept; one branch-free, vectorisable pass over
//    the boxes after it marks those with nms_iou > threshold as dead. Dead boxes are squeezed out
//    lazily (when they are over a quarter of what is left), so each pass only walks boxes that
//    are mostly alive and the work shrinks as boxes are suppressed. This is the same greedy
//    selection as torchvision's loop (ideas only: keep i, suppress j > i with IoU > threshold),
//    so the kept set is identical.
// 4. batched_nms runs the segments in parallel and merges the kept boxes by their score rank.
//
// NaN/Inf: a NaN score sorts first; a box with a NaN coordinate has NaN IoU with everything, so it
// is kept (unless max_output runs out) and suppresses nothing. Infinite coordinates follow IEEE
// arithmetic (inf - inf = NaN IoU: no suppression).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "ops/nms.h"

namespace fastdet {
namespace {

// Stable LSD radix sort of `perm` by keys[perm[k]] (ascending, 8-bit digits). Keys are shifted by
// their minimum so only the digits that vary are sorted; passes whose digit is constant are skipped.
void stable_radix_sort(const std::vector<int64_t>& keys, std::vector<int64_t>& perm) {
  const int64_t n = static_cast<int64_t>(perm.size());
  if (n < 2) return;
  int64_t lo = keys[0], hi = keys[0];
  for (int64_t v : keys) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const uint64_t range = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);
  std::vector<uint64_t> k(n), k_tmp(n);
  std::vector<int64_t> p_tmp(n);
  for (int64_t i = 0; i < n; ++i) k[i] = static_cast<uint64_t>(keys[perm[i]]) - static_cast<uint64_t>(lo);
  for (int shift = 0; shift < 64 && (range >> shift) != 0; shift += 8) {
    std::array<int64_t, 257> count{};
    for (int64_t i = 0; i < n; ++i) ++count[((k[i] >> shift) & 0xff) + 1];
    bool constant = false;
    for (int d = 1; d <= 256; ++d) constant |= count[d] == n;
    if (constant) continue;
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (int64_t i = 0; i < n; ++i) {
      const int64_t dst = count[(k[i] >> shift) & 0xff]++;
      k_tmp[dst] = k[i];
      p_tmp[dst] = perm[i];
    }
    k.swap(k_tmp);
    perm.swap(p_tmp);
  }
}

// Working arrays of one problem, in sorted (visiting) order; segments are slices of them.
template <typename acc_t>
struct Workspace {
  std::vector<acc_t> x1, y1, x2, y2, area;
  // Dead flags as wide as the coordinates so the suppression pass vectorises cleanly.
  using flag_t = std::conditional_t<sizeof(acc_t) == 4, int32_t, int64_t>;
  std::vector<int64_t> rank;  // score rank of the box (index into the score order)
  std::vector<flag_t> dead;
};

// Marks dead[j] for j in [begin, end) when nms_iou(a, box j) > thr; returns how many were newly
// marked. Branch-free so the compiler vectorises it; the same arithmetic, in the same order, as
// nms_iou (box_geometry.h). Built for AVX2 and baseline x86-64, picked at run time (no FMA, so the
// rounding is the same in both and on every machine).
template <typename acc_t, typename flag_t>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
int64_t suppress_pass(acc_t ax1, acc_t ay1, acc_t ax2, acc_t ay2, acc_t aa, const acc_t* __restrict__ x1,
                      const acc_t* __restrict__ y1, const acc_t* __restrict__ x2, const acc_t* __restrict__ y2,
                      const acc_t* __restrict__ area, flag_t* __restrict__ dead, int64_t begin, int64_t end,
                      acc_t thr) {
  flag_t newly = 0;
  for (int64_t j = begin; j < end; ++j) {
    const acc_t iw = clamp_min_zero(min_of(ax2, x2[j]) - max_of(ax1, x1[j]));
    const acc_t ih = clamp_min_zero(min_of(ay2, y2[j]) - max_of(ay1, y1[j]));
    const acc_t inter = iw * ih;
    const acc_t iou = inter / (aa + area[j] - inter);
    const flag_t s = iou > thr ? 1 : 0;
    newly += s & (dead[j] ^ 1);
    dead[j] |= s;
  }
  return static_cast<int64_t>(newly);
}

// Greedy NMS over slice [b, b + n) of the workspace (in visiting order). Calls keep(rank) for every
// kept box, in order, at most max_keep times. The slice is reordered/compacted in place.
template <typename acc_t, typename Keep>
void greedy_nms(Workspace<acc_t>& w, int64_t b, int64_t n, acc_t thr, int64_t max_keep, Keep&& keep) {
  acc_t* __restrict__ x1 = w.x1.data() + b;
  acc_t* __restrict__ y1 = w.y1.data() + b;
  acc_t* __restrict__ x2 = w.x2.data() + b;
  acc_t* __restrict__ y2 = w.y2.data() + b;
  acc_t* __restrict__ area = w.area.data() + b;
  int64_t* __restrict__ rank = w.rank.data() + b;
  auto* __restrict__ dead = w.dead.data() + b;
  int64_t m = n;        // live prefix length (entries >= m were squeezed out)
  int64_t dead_in = 0;  // dead entries in [i, m)
  int64_t kept = 0;
  for (int64_t i = 0; i < m && kept < max_keep;) {
    if (dead[i]) {
      ++i;
      --dead_in;
      continue;
    }
    keep(rank[i]);
    ++kept;
    const acc_t ax1 = x1[i], ay1 = y1[i], ax2 = x2[i], ay2 = y2[i], aa = area[i];
    dead_in += suppress_pass(ax1, ay1, ax2, ay2, aa, x1, y1, x2, y2, area, dead, i + 1, m, thr);
    ++i;
    if (dead_in > 16 && 4 * dead_in > m - i) {  // squeeze the dead out of [i, m)
      int64_t o = i;
      for (int64_t j = i; j < m; ++j) {
        if (dead[j]) continue;
        x1[o] = x1[j], y1[o] = y1[j], x2[o] = x2[j], y2[o] = y2[j], area[o] = area[j];
        rank[o] = rank[j];
        dead[o] = 0;
        ++o;
      }
      m = o;
      dead_in = 0;
    }
  }
}

template <typename T>
at::Tensor nms_cpu_impl(const NmsProblem& p, double iou_threshold, int64_t max_output) {
  using acc_t = at::opmath_type<T>;  // fp32 math for half / bfloat16
  const int64_t n = p.n;
  const T* boxes = p.boxes.const_data_ptr<T>();
  const T* scores = p.scores.const_data_ptr<T>();
  const acc_t thr = threshold_floor<acc_t>(iou_threshold);

  // order[r]: index of the box with score rank r.
  std::vector<int64_t> keys(n), order(n);
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = score_sort_key(static_cast<acc_t>(scores[i]));
    order[i] = i;
  }
  stable_radix_sort(keys, order);

  // pos_rank[q]: score rank of the box at sorted position q (identity for nms; by class, then
  // rank, for batched_nms). Segments: [seg[s], seg[s + 1]).
  std::vector<int64_t> pos_rank(n);
  for (int64_t q = 0; q < n; ++q) pos_rank[q] = q;
  std::vector<int64_t> seg{0};
  if (p.idxs) {
    const int64_t* cls = p.idxs->const_data_ptr<int64_t>();
    std::vector<int64_t> cls_by_rank(n);
    for (int64_t r = 0; r < n; ++r) cls_by_rank[r] = cls[order[r]];
    stable_radix_sort(cls_by_rank, pos_rank);
    for (int64_t q = 1; q < n; ++q)
      if (cls_by_rank[pos_rank[q]] != cls_by_rank[pos_rank[q - 1]]) seg.push_back(q);
  }
  seg.push_back(n);

  Workspace<acc_t> w;
  for (auto* v : {&w.x1, &w.y1, &w.x2, &w.y2, &w.area}) v->resize(n);
  w.rank = pos_rank;
  w.dead.assign(n, 0);
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const Box<acc_t> bx = load_box<acc_t>(boxes, order[pos_rank[q]]);
      w.x1[q] = bx.x1, w.y1[q] = bx.y1, w.x2[q] = bx.x2, w.y2[q] = bx.y2;
      w.area[q] = box_area(bx);
    }
  });

  if (!p.idxs) {
    const int64_t max_keep = max_output < 0 ? n : max_output;
    std::vector<int64_t> kept;
    greedy_nms(w, 0, n, thr, max_keep, [&](int64_t r) { kept.push_back(order[r]); });
    at::Tensor out = at::empty({static_cast<int64_t>(kept.size())}, p.boxes.options().dtype(at::kLong));
    std::copy(kept.begin(), kept.end(), out.data_ptr<int64_t>());
    return out;
  }

  // batched_nms: segments in parallel; each marks its kept boxes by score rank (distinct bytes).
  std::vector<uint8_t> kept_rank(n, 0);
  const int64_t num_seg = static_cast<int64_t>(seg.size()) - 1;
  at::parallel_for(0, num_seg, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      greedy_nms(w, seg[s], seg[s + 1] - seg[s], thr, n, [&](int64_t r) { kept_rank[r] = 1; });
    }
  });
  int64_t count = 0;
  for (uint8_t f : kept_rank) count += f;
  at::Tensor out = at::empty({count}, p.boxes.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < n; ++r)
    if (kept_rank[r]) *o++ = order[r];
  return out;
}

at::Tensor run_nms_cpu(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                       double iou_threshold, int64_t max_output) {
  check_max_output(max_output, op);
  const NmsProblem p = prepare_nms(op, boxes, scores, idxs, iou_threshold);
  if (p.n == 0 || max_output == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cpu", [&] {
    out = nms_cpu_impl<scalar_t>(p, iou_threshold, max_output);
  });
  return out;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, int64_t max_output) {
  return run_nms_cpu("nms", boxes, scores, nullptr, iou_threshold, max_output);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  return run_nms_cpu("batched_nms", boxes, scores, &idxs, iou_threshold, -1);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace fastdet
