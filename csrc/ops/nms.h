#pragma once
// Host-side argument handling and the score ordering of fastdet::nms and fastdet::batched_nms,
// shared by the CPU and CUDA kernels.
//
// Order: boxes are visited by decreasing score, ties broken by the lower index, NaN scores first
// (torch.sort's order: NaN counts as the largest value). -0.0 and +0.0 are equal scores. The order
// comes from score_sort_key: an integer that sorts ascending in exactly that order, so a stable
// sort of the keys gives the visiting order on every device.
#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>

#include "common/box_geometry.h"
#include "common/checks.h"
#include "common/macros.h"

namespace fastdet {

// Integer key of a score: ascending key order = descending score order, NaN first, -0 == +0.
// Half scores are widened to float (exact), float scores map to 32-bit keys, doubles to 64-bit.
FASTDET_HD int64_t score_sort_key(float s) {
  if (s != s) return std::numeric_limits<int32_t>::min();  // NaN: before every number
  if (s == 0.0f) s = 0.0f;                                 // -0 -> +0
  int32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_int(s);
#else
  std::memcpy(&bits, &s, sizeof(bits));
#endif
  // Ordered integer of the float (larger float -> larger int), then negated for descending.
  const int32_t ordered = bits >= 0 ? bits : static_cast<int32_t>(bits ^ 0x7fffffff);
  return -static_cast<int64_t>(ordered);
}
FASTDET_HD int64_t score_sort_key(double s) {
  if (s != s) return std::numeric_limits<int64_t>::min();
  if (s == 0.0) s = 0.0;
  int64_t bits;
#if defined(__CUDA_ARCH__)
  bits = __double_as_longlong(s);
#else
  std::memcpy(&bits, &s, sizeof(bits));
#endif
  const int64_t ordered = bits >= 0 ? bits : (bits ^ 0x7fffffffffffffffLL);
  // ordered is in [-(2^63 - 1) + ..., 2^63 - 1]; -ordered never overflows (ordered != INT64_MIN
  // because that pattern is -NaN), and -ordered > INT64_MIN, so NaN's key stays first.
  return -ordered;
}

// The largest value of type acc_t that is <= t: for a value v of type acc_t, v > t exactly when
// v > threshold_floor<acc_t>(t). So the comparison can run in acc_t and still equal torchvision's
// float-vs-double comparison bit for bit.
template <typename acc_t>
inline acc_t threshold_floor(double t) {
  constexpr acc_t kMax = std::numeric_limits<acc_t>::max(), kInf = std::numeric_limits<acc_t>::infinity();
  if (t > static_cast<double>(kMax)) return t == std::numeric_limits<double>::infinity() ? kInf : kMax;
  if (t < -static_cast<double>(kMax)) return -kInf;  // (float conversion out of range is undefined)
  acc_t f = static_cast<acc_t>(t);
  if (static_cast<double>(f) > t) f = std::nextafter(f, -std::numeric_limits<acc_t>::infinity());
  return f;
}

inline void check_max_output(int64_t max_output, const char* op) {
  TORCH_CHECK(max_output >= -1, "fastdet::", op, ": max_output must be -1 (keep all) or >= 0, got ",
              max_output);
}

// Validates boxes [N, 4], scores [N] (same dtype and device), idxs [N] int64 (batched_nms) and the
// threshold; returns contiguous copies.
struct NmsProblem {
  at::Tensor boxes, scores;
  std::optional<at::Tensor> idxs;
  int64_t n;
};

inline NmsProblem prepare_nms(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                              const at::Tensor* idxs, double iou_threshold) {
  check_scored_boxes(boxes, scores, idxs, op);
  check_threshold(iou_threshold, op, "iou_threshold");
  NmsProblem p;
  p.n = boxes.size(0);
  p.boxes = boxes.contiguous();
  p.scores = scores.contiguous();
  if (idxs != nullptr) p.idxs = idxs->contiguous();
  return p;
}

}  // namespace fastdet
