#pragma once
// Host-side input validation shared by every op. Messages name the op and the argument and
// state what was expected and what was got: "fastdet::nms: boxes must have shape [N, 4], got [3, 5]".
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

namespace fastdet {

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

inline void check_floating(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastdet::", op, ": ", arg,
              " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
              t.scalar_type());
}

// boxes: a floating tensor of rank in [min_dim, max_dim] whose last dimension is 4.
inline void check_boxes(const at::Tensor& t, const char* op, const char* arg, int64_t min_dim = 2,
                        int64_t max_dim = 2) {
  const bool ok = t.dim() >= min_dim && t.dim() <= max_dim && t.size(-1) == 4;
  if (min_dim == 2 && max_dim == 2) {
    TORCH_CHECK(ok, "fastdet::", op, ": ", arg, " must have shape [N, 4], got ", shape_str(t));
  } else {
    TORCH_CHECK(ok, "fastdet::", op, ": ", arg, " must have shape [..., 4] with ", min_dim, " to ", max_dim,
                " dimensions, got ", shape_str(t));
  }
  check_floating(t, op, arg);
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* arg_a, const char* arg_b) {
  TORCH_CHECK(a.device() == b.device(), "fastdet::", op, ": ", arg_a, " and ", arg_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* op,
                             const char* arg_a, const char* arg_b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fastdet::", op, ": ", arg_a, " and ", arg_b,
              " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

// boxes [N, 4] with scores [N] of the same dtype and, when given, int64 class ids idxs [N], all
// on one device (the inputs of the NMS family).
inline void check_scored_boxes(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                               const char* op) {
  check_boxes(boxes, op, "boxes");
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), "fastdet::", op,
              ": scores must have shape [N] with N = boxes.size(0) = ", boxes.size(0), ", got ", shape_str(scores));
  check_same_device(boxes, scores, op, "boxes", "scores");
  check_same_dtype(boxes, scores, op, "boxes", "scores");
  if (idxs == nullptr) return;
  TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == boxes.size(0), "fastdet::", op,
              ": idxs must have shape [N] with N = boxes.size(0) = ", boxes.size(0), ", got ", shape_str(*idxs));
  TORCH_CHECK(idxs->scalar_type() == at::kLong, "fastdet::", op, ": idxs must be an int64 tensor, got ",
              idxs->scalar_type());
  check_same_device(boxes, *idxs, op, "boxes", "idxs");
}

inline void check_threshold(double v, const char* op, const char* arg) {
  TORCH_CHECK(!std::isnan(v), "fastdet::", op, ": ", arg, " must be a number, got NaN");
}

}  // namespace fastdet
