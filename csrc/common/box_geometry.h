#pragma once
// Box geometry shared by every CPU and CUDA kernel: one definition of IoU and its relatives.
//
// Boxes are (x1, y1, x2, y2) in continuous coordinates (no +1). Every function is templated on
// the number type S so the same code runs on float/double (forward) and on Dual numbers
// (backward, see dual.h).
#include <cstdint>

#include "common/dual.h"
#include "common/macros.h"

namespace fastdet {

enum class IouMode : int64_t { kIoU = 0, kGIoU = 1, kDIoU = 2, kCIoU = 3 };

template <typename S>
struct Box {
  S x1, y1, x2, y2;
};

// Loads box i of a [*, 4] row-major array, converting to the math type S (fp32 for half inputs).
template <typename S, typename T>
FASTDET_HD Box<S> load_box(const T* boxes, int64_t i) {
  const T* b = boxes + 4 * i;
  return {S(static_cast<float>(b[0])), S(static_cast<float>(b[1])), S(static_cast<float>(b[2])),
          S(static_cast<float>(b[3]))};
}
template <typename S>
FASTDET_HD Box<S> load_box(const double* boxes, int64_t i) {
  const double* b = boxes + 4 * i;
  return {S(b[0]), S(b[1]), S(b[2]), S(b[3])};
}

// NB: written as `a > b ? a : b` (not fmax) so they also apply to Dual numbers. With a NaN
// operand they return one of the two; NaN still reaches the result through the box areas.
template <typename S>
FASTDET_HD S max_of(S a, S b) { return a > b ? a : b; }
template <typename S>
FASTDET_HD S min_of(S a, S b) { return a < b ? a : b; }
template <typename S>
FASTDET_HD S clamp_min_zero(S a) { return a > S(0) ? a : S(0); }

template <typename S>
FASTDET_HD S box_area(const Box<S>& b) { return (b.x2 - b.x1) * (b.y2 - b.y1); }

template <typename S>
FASTDET_HD S intersection_area(const Box<S>& a, const Box<S>& b) {
  const S w = clamp_min_zero(min_of(a.x2, b.x2) - max_of(a.x1, b.x1));
  const S h = clamp_min_zero(min_of(a.y2, b.y2) - max_of(a.y1, b.y1));
  return w * h;
}

// Plain IoU exactly as torchvision's nms computes it: inter / (area_a + area_b - inter), no eps.
// A zero union gives NaN, which compares false with every threshold (never suppresses).
template <typename S>
FASTDET_HD S nms_iou(const Box<S>& a, const Box<S>& b) {
  const S inter = intersection_area(a, b);
  return inter / (box_area(a) + box_area(b) - inter);
}

// atan(w / h) for the CIoU aspect term, defined as 0 for a degenerate 0 x 0 box (instead of NaN).
template <typename S>
FASTDET_HD S aspect_angle(S w, S h) {
  if (value_of(w) == 0 && value_of(h) == 0) return S(0);
  return atan_of(w / h);
}

// IoU, GIoU, DIoU or CIoU of two boxes.
//   iou  = inter / (union + eps)
//   giou = iou - (C - union) / (C + eps),          C: area of the smallest enclosing box
//   diou = iou - rho^2 / (c^2 + eps),              rho: centre distance, c: enclosing diagonal
//   ciou = diou - alpha * v,  v = 4/pi^2 (atan(wb/hb) - atan(wa/ha))^2,  alpha = v / (1 - iou + v + eps)
// (Rezatofighi et al. 2019; Zheng et al. 2020). The gradient is the exact derivative of this value,
// alpha included (torchvision's CIoU treats alpha as a constant; so float64 gradcheck holds here). Enclosing-box sides are clamped at 0 as in torchvision, so inverted
// boxes give finite values. With eps = 0 the values are torchvision's box_iou / generalized_box_iou.
// Core of iou_family with the CIoU aspect angles of a and b given (aspect_angle(w, h) of each box):
// a pairwise kernel computes them once per box instead of once per pair. Unused unless M is kCIoU.
template <IouMode M, typename S, typename P>
FASTDET_HD S iou_family_with_angles(const Box<S>& a, const Box<S>& b, P eps, S angle_a, S angle_b) {
  const S inter = intersection_area(a, b);
  const S uni = box_area(a) + box_area(b) - inter;
  const S iou = inter / (uni + eps);
  if constexpr (M == IouMode::kIoU) {
    return iou;
  } else {
    const S cw = clamp_min_zero(max_of(a.x2, b.x2) - min_of(a.x1, b.x1));
    const S ch = clamp_min_zero(max_of(a.y2, b.y2) - min_of(a.y1, b.y1));
    if constexpr (M == IouMode::kGIoU) {
      const S enclose = cw * ch;
      return iou - (enclose - uni) / (enclose + eps);
    } else {
      const S diag2 = cw * cw + ch * ch + eps;
      const S dx = (a.x1 + a.x2 - b.x1 - b.x2) * P(0.5);
      const S dy = (a.y1 + a.y2 - b.y1 - b.y2) * P(0.5);
      const S diou = iou - (dx * dx + dy * dy) / diag2;
      if constexpr (M == IouMode::kDIoU) {
        return diou;
      } else {
        const P k = P(0.40528473456935108578);  // 4 / pi^2
        const S dangle = angle_b - angle_a;
        const S v = k * (dangle * dangle);
        const S alpha = v / ((P(1) - iou) + v + eps);
        return diou - alpha * v;
      }
    }
  }
}

template <typename S>
FASTDET_HD S box_aspect_angle(const Box<S>& b) { return aspect_angle(b.x2 - b.x1, b.y2 - b.y1); }

template <IouMode M, typename S, typename P>
FASTDET_HD S iou_family(const Box<S>& a, const Box<S>& b, P eps) {
  if constexpr (M == IouMode::kCIoU) {
    return iou_family_with_angles<M>(a, b, eps, box_aspect_angle(a), box_aspect_angle(b));
  } else {
    return iou_family_with_angles<M>(a, b, eps, S(0), S(0));
  }
}

// Dual-number version of iou_family: partial derivatives w.r.t. the 4 coordinates of box a
// (kSeedA), of box b (kSeedB) or all 8 (kSeedBoth: a's in d[0..3], b's in d[4..7]).
enum class Seed { kSeedA, kSeedB, kSeedBoth };

template <Seed W>
constexpr int seed_count() { return W == Seed::kSeedBoth ? 8 : 4; }

template <IouMode M, Seed W, typename P>
FASTDET_HD Dual<P, seed_count<W>()> iou_family_grad(const Box<P>& a, const Box<P>& b, P eps) {
  using D = Dual<P, seed_count<W>()>;
  const int a0 = 0;
  const int b0 = W == Seed::kSeedBoth ? 4 : 0;
  auto seed = [](P v, int k, bool on) { return on ? D::variable(v, k) : D(v); };
  const bool sa = W != Seed::kSeedB, sb = W != Seed::kSeedA;
  const Box<D> da{seed(a.x1, a0 + 0, sa), seed(a.y1, a0 + 1, sa), seed(a.x2, a0 + 2, sa), seed(a.y2, a0 + 3, sa)};
  const Box<D> db{seed(b.x1, b0 + 0, sb), seed(b.y1, b0 + 1, sb), seed(b.x2, b0 + 2, sb), seed(b.y2, b0 + 3, sb)};
  return iou_family<M>(da, db, eps);
}

}  // namespace fastdet
