#pragma once
// Host-side argument handling for fastdet::corner_pool and fastdet::corner_pool_sum, shared by the
// CPU and CUDA kernels, and the one comparison rule both kernels scan with.
//
// Directions (CornerNet; mmcv CornerPool's flip + cummax + flip):
//   top    out[h, w] = max(in[h:, w])   scan bottom -> top along H
//   bottom out[h, w] = max(in[:h+1, w]) scan top -> bottom along H
//   left   out[h, w] = max(in[h, w:])   scan right -> left along W
//   right  out[h, w] = max(in[h, :w+1]) scan left -> right along W
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <string>

#include "common/checks.h"
#include "common/macros.h"

namespace fastdet {

enum class PoolDir { kTop = 0, kBottom = 1, kLeft = 2, kRight = 3 };

// The running-max update of torch.cummax (ATen cummax_helper), which the reference and its
// gradient follow: the scan takes x when x is NaN, or when neither is NaN and x >= the running max.
// So among equal maxima the most recent one in scan order (the closest to the output position)
// is the argmax, and once a NaN is seen the output stays NaN with the latest NaN as argmax.
template <typename acc_t>
FASTDET_HD bool cummax_takes(acc_t x, acc_t running) {
  return x != x || (running == running && x >= running);
}

inline bool is_vertical(PoolDir d) { return d == PoolDir::kTop || d == PoolDir::kBottom; }
// Whether the scan runs towards decreasing index (top: from the last row up; left: from the last column).
inline bool scans_backwards(PoolDir d) { return d == PoolDir::kTop || d == PoolDir::kLeft; }

inline PoolDir parse_pool_mode(c10::string_view mode, const char* op) {
  if (mode == "top") return PoolDir::kTop;
  if (mode == "bottom") return PoolDir::kBottom;
  if (mode == "left") return PoolDir::kLeft;
  if (mode == "right") return PoolDir::kRight;
  TORCH_CHECK(false, "fastdet::", op, ": mode must be one of 'top', 'bottom', 'left', 'right', got '",
              std::string(mode), "'");
}

// corner "top_left" = top(a) + left(b) (CornerNet's top-left module), "bottom_right" = bottom(a) +
// right(b); "top_right" and "bottom_left" likewise. Returns (vertical dir for a, horizontal dir for b).
inline std::pair<PoolDir, PoolDir> parse_corner(c10::string_view corner, const char* op) {
  if (corner == "top_left") return {PoolDir::kTop, PoolDir::kLeft};
  if (corner == "bottom_right") return {PoolDir::kBottom, PoolDir::kRight};
  if (corner == "top_right") return {PoolDir::kTop, PoolDir::kRight};
  if (corner == "bottom_left") return {PoolDir::kBottom, PoolDir::kLeft};
  TORCH_CHECK(false, "fastdet::", op, ": corner must be one of 'top_left', 'bottom_right', 'top_right', ",
              "'bottom_left', got '", std::string(corner), "'");
}

// input [N, C, H, W], any floating dtype; returned contiguous (NCHW) so a plane is H x W row-major.
inline at::Tensor prepare_pool_input(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.dim() == 4, "fastdet::", op, ": ", arg, " must have shape [N, C, H, W], got ", shape_str(t));
  check_floating(t, op, arg);
  return t.contiguous();
}

inline void check_same_shape(const at::Tensor& a, const at::Tensor& b, const char* op, const char* arg_a,
                             const char* arg_b) {
  TORCH_CHECK(a.sizes() == b.sizes(), "fastdet::", op, ": ", arg_a, " and ", arg_b,
              " must have the same shape, got ", shape_str(a), " and ", shape_str(b));
}

// The backward's grad: the forward output's shape, device and dtype (cast if autograd hands another).
inline at::Tensor prepare_pool_grad(const at::Tensor& grad, const at::Tensor& input, const char* op) {
  TORCH_CHECK(grad.sizes() == input.sizes(), "fastdet::", op, ": grad must have the forward output's shape ",
              shape_str(input), ", got ", shape_str(grad));
  check_same_device(grad, input, op, "grad", "input");
  return grad.to(input.scalar_type()).contiguous();
}

// The two inputs of corner_pool_sum (contiguous, same shape/dtype/device) and the vertical and
// horizontal scan directions of the corner.
struct SumInputs {
  at::Tensor a, b;
  PoolDir vdir, hdir;
};

inline SumInputs prepare_sum(const at::Tensor& a, const at::Tensor& b, c10::string_view corner, const char* op) {
  const auto dirs = parse_corner(corner, op);
  check_same_device(a, b, op, "a", "b");
  check_same_dtype(a, b, op, "a", "b");
  SumInputs s{prepare_pool_input(a, op, "a"), prepare_pool_input(b, op, "b"), dirs.first, dirs.second};
  check_same_shape(a, b, op, "a", "b");
  return s;
}

}  // namespace fastdet
