#pragma once
// fastdet::border_align (BorderDet, Qiu et al., ECCV 2020; the op as defined by mmcv's
// border_align, docs and kernel description read, code not copied): shared host argument handling
// and the host-device definition of the sampling points, used by the CPU and CUDA kernels.
//
//   input  [N, 4C, H, W]: channel block k = [k*C, (k+1)*C) belongs to border k
//   boxes  [N, H*W, 4]  : (x1, y1, x2, y2) in feature-map coordinates, one box per location
//   output [N, C, H*W, 4] (last dim: top, left, bottom, right), argmax [N, C, H*W, 4] int32
// Border k of a box is sampled at pool_size + 1 evenly spaced points, both ends included:
//   k = 0 top:    x from x1 to x2 at y = y1      k = 1 left:  y from y1 to y2 at x = x1
//   k = 2 bottom: x from x2 to x1 at y = y2      k = 3 right: y from y2 to y1 at x = x2
// with RoIAlign bilinear interpolation (common/bilinear.h); the output is the maximum over the
// points, the first maximum in sampling order on ties (argmax = its point index 0..pool_size).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>

#include "common/bilinear.h"
#include "common/box_geometry.h"
#include "common/checks.h"
#include "common/macros.h"

namespace fastdet {

// Start point and step of border k (0 top, 1 left, 2 bottom, 3 right) of box b; point i is
// (y0 + i * dy, x0 + i * dx). NB: point i is computed from i directly (mmcv accumulates the step),
// so the forward pass and the backward pass's re-derivation give bit-identical points.
template <typename S>
struct BorderLine {
  S y0, x0, dy, dx;
};

template <typename S>
FASTDET_HD BorderLine<S> border_line(const Box<S>& b, int k, int64_t pool_size) {
  const S p = S(pool_size);
  switch (k) {
    case 0: return {b.y1, b.x1, S(0), (b.x2 - b.x1) / p};
    case 1: return {b.y1, b.x1, (b.y2 - b.y1) / p, S(0)};
    case 2: return {b.y2, b.x2, S(0), -((b.x2 - b.x1) / p)};
    default: return {b.y2, b.x2, -((b.y2 - b.y1) / p), S(0)};
  }
}

template <typename S>
FASTDET_HD BilinearCorners<S> border_point_corners(const BorderLine<S>& l, int64_t i, int64_t height,
                                                   int64_t width) {
  return bilinear_corners(l.y0 + S(i) * l.dy, l.x0 + S(i) * l.dx, height, width);
}

// The backward of one output element, without atomics: grad gv times the 4 corner weights of the
// arg-max point (index arg) of border k of box b, added into its gradient plane ([H * W] in the
// math type S), only for a point inside the map. Each plane grad_input[n, k * C + c] is owned by
// one caller that walks the boxes in order j = 0, 1, ...: the CPU backward, and the CUDA backward
// under torch.use_deterministic_algorithms, so the sums have a fixed order and no atomics.
template <typename S>
FASTDET_HD void border_align_scatter_point(const Box<S>& b, int k, int32_t arg, S gv, int64_t h, int64_t w,
                                           int64_t pool_size, S* plane) {
  if (gv == S(0)) return;
  const BilinearCorners<S> cr = border_point_corners(border_line(b, k, pool_size), static_cast<int64_t>(arg), h, w);
  if (!cr.valid) return;  // outside the map: no gradient (and no out-of-bounds write)
  plane[cr.o00] += gv * cr.w00;
  plane[cr.o01] += gv * cr.w01;
  plane[cr.o10] += gv * cr.w10;
  plane[cr.o11] += gv * cr.w11;
}

struct BorderAlignProblem {
  at::Tensor input, boxes;  // contiguous
  int64_t n, c, h, w, hw, pool_size;
};

inline BorderAlignProblem prepare_border_align(const at::Tensor& input, const at::Tensor& boxes,
                                               int64_t pool_size, const char* op = "border_align") {
  TORCH_CHECK(input.dim() == 4, "fastdet::", op, ": input must have shape [N, 4C, H, W], got ", shape_str(input));
  TORCH_CHECK(input.size(1) % 4 == 0, "fastdet::", op,
              ": input's channel count must be divisible by 4 (top, left, bottom, right blocks), got ",
              shape_str(input));
  check_floating(input, op, "input");
  BorderAlignProblem p;
  p.n = input.size(0), p.c = input.size(1) / 4, p.h = input.size(2), p.w = input.size(3);
  p.hw = p.h * p.w;
  TORCH_CHECK(boxes.dim() == 3 && boxes.size(0) == p.n && boxes.size(1) == p.hw && boxes.size(2) == 4,
              "fastdet::", op, ": boxes must have shape [N, H*W, 4] = [", p.n, ", ", p.hw, ", 4], got ",
              shape_str(boxes));
  check_same_device(input, boxes, op, "input", "boxes");
  check_same_dtype(input, boxes, op, "input", "boxes");
  TORCH_CHECK(pool_size >= 1 && pool_size < std::numeric_limits<int32_t>::max(), "fastdet::", op,
              ": pool_size must be >= 1 (and fit in int32), got ", pool_size);
  p.pool_size = pool_size;
  p.input = input.contiguous();
  p.boxes = boxes.contiguous();
  return p;
}

// Backward arguments: grad and argmax [N, C, H*W, 4], boxes [N, H*W, 4], the input's H and W.
inline BorderAlignProblem prepare_border_align_backward(const at::Tensor& grad, const at::Tensor& boxes,
                                                        const at::Tensor& argmax, int64_t pool_size,
                                                        int64_t height, int64_t width) {
  const char* op = "_border_align_backward";
  TORCH_CHECK(height >= 0 && width >= 0, "fastdet::", op, ": height and width must be >= 0, got ", height,
              " and ", width);
  TORCH_CHECK(grad.dim() == 4 && grad.size(2) == height * width && grad.size(3) == 4, "fastdet::", op,
              ": grad must have shape [N, C, H*W, 4] with H*W = ", height * width, ", got ", shape_str(grad));
  check_floating(grad, op, "grad");
  TORCH_CHECK(argmax.sizes() == grad.sizes(), "fastdet::", op, ": argmax must have grad's shape ",
              shape_str(grad), ", got ", shape_str(argmax));
  TORCH_CHECK(argmax.scalar_type() == at::kInt, "fastdet::", op, ": argmax must be an int32 tensor, got ",
              argmax.scalar_type());
  TORCH_CHECK(boxes.dim() == 3 && boxes.size(0) == grad.size(0) && boxes.size(1) == height * width &&
                  boxes.size(2) == 4,
              "fastdet::", op, ": boxes must have shape [N, H*W, 4] = [", grad.size(0), ", ", height * width,
              ", 4], got ", shape_str(boxes));
  check_same_device(grad, boxes, op, "grad", "boxes");
  check_same_device(grad, argmax, op, "grad", "argmax");
  check_same_dtype(grad, boxes, op, "grad", "boxes");
  TORCH_CHECK(pool_size >= 1 && pool_size < std::numeric_limits<int32_t>::max(), "fastdet::", op,
              ": pool_size must be >= 1 (and fit in int32), got ", pool_size);
  BorderAlignProblem p;
  p.n = grad.size(0), p.c = grad.size(1), p.h = height, p.w = width, p.hw = height * width;
  p.pool_size = pool_size;
  p.boxes = boxes.contiguous();
  return p;
}

}  // namespace fastdet
