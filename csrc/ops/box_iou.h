#pragma once
// Host-side argument handling for fastdet::box_iou, shared by the CPU and CUDA kernels.
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <type_traits>
#include <vector>

#include "common/box_geometry.h"
#include "common/checks.h"

namespace fastdet {

inline IouMode parse_iou_mode(c10::string_view mode, const char* op) {
  if (mode == "iou") return IouMode::kIoU;
  if (mode == "giou") return IouMode::kGIoU;
  if (mode == "diou") return IouMode::kDIoU;
  if (mode == "ciou") return IouMode::kCIoU;
  TORCH_CHECK(false, "fastdet::", op, ": mode must be one of 'iou', 'giou', 'diou', 'ciou', got '",
              std::string(mode), "'");
}

// Calls f(std::integral_constant<IouMode, M>{}) so kernels get the mode as a template argument
// (the inner loops then carry no per-pair branch on it).
template <typename F>
void with_iou_mode(IouMode mode, F&& f) {
  switch (mode) {
    case IouMode::kIoU: return f(std::integral_constant<IouMode, IouMode::kIoU>{});
    case IouMode::kGIoU: return f(std::integral_constant<IouMode, IouMode::kGIoU>{});
    case IouMode::kDIoU: return f(std::integral_constant<IouMode, IouMode::kDIoU>{});
    case IouMode::kCIoU: return f(std::integral_constant<IouMode, IouMode::kCIoU>{});
  }
}

// The problem in canonical form.
//   pairwise: boxes1 [B, N, 4] x boxes2 [B, M, 4] -> out [B, N, M]  (B = 1 for 2-D inputs)
//   aligned:  boxes1 [L, 4]    x boxes2 [L, 4]    -> out [L]        (any leading shape, flattened)
struct BoxIouProblem {
  at::Tensor boxes1, boxes2;  // contiguous, canonical shapes above
  IouMode mode;
  bool aligned;
  int64_t batch, n, m;                // aligned: batch = 1, n = m = L
  std::vector<int64_t> out_sizes;     // the user-visible output shape
};

inline BoxIouProblem prepare_box_iou(const at::Tensor& boxes1, const at::Tensor& boxes2,
                                     c10::string_view mode, bool aligned) {
  const char* op = "box_iou";
  BoxIouProblem p;
  p.mode = parse_iou_mode(mode, op);
  p.aligned = aligned;
  check_same_device(boxes1, boxes2, op, "boxes1", "boxes2");
  check_same_dtype(boxes1, boxes2, op, "boxes1", "boxes2");
  if (aligned) {
    check_boxes(boxes1, op, "boxes1", 1, 8);
    check_boxes(boxes2, op, "boxes2", 1, 8);
    TORCH_CHECK(boxes1.sizes() == boxes2.sizes(), "fastdet::box_iou: with aligned=True boxes1 and boxes2 ",
                "must have the same shape, got ", shape_str(boxes1), " and ", shape_str(boxes2));
    p.out_sizes = boxes1.sizes().vec();
    p.out_sizes.pop_back();
    p.batch = 1;
    p.n = p.m = boxes1.numel() / 4;
    p.boxes1 = boxes1.reshape({p.n, 4}).contiguous();
    p.boxes2 = boxes2.reshape({p.n, 4}).contiguous();
    return p;
  }
  check_boxes(boxes1, op, "boxes1", 2, 3);
  check_boxes(boxes2, op, "boxes2", 2, 3);
  TORCH_CHECK(boxes1.dim() == boxes2.dim(), "fastdet::box_iou: boxes1 and boxes2 must both be [N, 4] ",
              "and [M, 4] or both [B, N, 4] and [B, M, 4], got ", shape_str(boxes1), " and ", shape_str(boxes2));
  const bool batched = boxes1.dim() == 3;
  if (batched) {
    TORCH_CHECK(boxes1.size(0) == boxes2.size(0), "fastdet::box_iou: boxes1 and boxes2 must have the ",
                "same batch size, got ", shape_str(boxes1), " and ", shape_str(boxes2));
  }
  p.batch = batched ? boxes1.size(0) : 1;
  p.n = boxes1.size(-2);
  p.m = boxes2.size(-2);
  p.boxes1 = boxes1.reshape({p.batch, p.n, 4}).contiguous();
  p.boxes2 = boxes2.reshape({p.batch, p.m, 4}).contiguous();
  p.out_sizes = batched ? std::vector<int64_t>{p.batch, p.n, p.m} : std::vector<int64_t>{p.n, p.m};
  return p;
}

}  // namespace fastdet
