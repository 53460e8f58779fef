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
  TORCH_CHECK(t.dim() >= min_dim && t.dim() <= max_dim && t.size(-1) == 4, "fastdet::", op, ": ",
              arg, " must have shape ", min_dim == 2 && max_dim == 2 ? "[N, 4]" : "[..., 4]",
              " with ", min_dim, " to ", max_dim, " dimensions, got ", shape_str(t));
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

inline void check_threshold(double v, const char* op, const char* arg) {
  TORCH_CHECK(!std::isnan(v), "fastdet::", op, ": ", arg, " must be a number, got NaN");
}

}  // namespace fastdet
