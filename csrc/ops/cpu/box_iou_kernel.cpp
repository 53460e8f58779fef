// CPU kernels of fastdet::box_iou: one fused pass over the output, no N x M temporaries.
//
// Forward, pairwise: boxes2 is first transposed into four coordinate arrays (structure of
// arrays, in the math type) so that the inner loop over j reads contiguous memory and the
// compiler vectorises it; each (b, i) row is written once. Rows run in parallel.
// Backward: the same geometry function evaluated on Dual numbers (common/dual.h).
//   grad_boxes1[b, i] = sum_j grad[b, i, j] * d iou[b, i, j] / d boxes1[b, i]   (parallel over rows)
//   grad_boxes2[b, j] = sum_i grad[b, i, j] * d iou[b, i, j] / d boxes2[b, j]   (parallel over column blocks)
// Both passes are deterministic (no atomics).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "ops/box_iou.h"

namespace fastdet {
namespace {

// Boxes [B, M, 4] as [B, 5, M] arrays in math type acc_t: x1, y1, x2, y2 and the CIoU aspect angle
// (computed once per box, not once per pair: atan dominates CIoU otherwise).
template <typename acc_t, typename T>
std::vector<acc_t> to_coordinate_arrays(const T* boxes, int64_t batch, int64_t m) {
  std::vector<acc_t> soa(batch * 5 * m);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < m; ++j) {
      const Box<acc_t> box = load_box<acc_t>(boxes, b * m + j);
      acc_t* c = soa.data() + b * 5 * m + j;
      c[0] = box.x1, c[m] = box.y1, c[2 * m] = box.x2, c[3 * m] = box.y2, c[4 * m] = box_aspect_angle(box);
    }
  return soa;
}

// One output row: box a against the M boxes of the coordinate arrays c.
template <IouMode M, typename acc_t, typename T>
void iou_row(const Box<acc_t>& a, const acc_t* c, int64_t m, acc_t eps, T* out) {
  const acc_t angle_a = M == IouMode::kCIoU ? box_aspect_angle(a) : acc_t(0);
  const acc_t *x1 = c, *y1 = c + m, *x2 = c + 2 * m, *y2 = c + 3 * m, *angle = c + 4 * m;
  for (int64_t j = 0; j < m; ++j) {
    const Box<acc_t> b{x1[j], y1[j], x2[j], y2[j]};
    out[j] = static_cast<T>(iou_family_with_angles<M>(a, b, eps, angle_a, angle[j]));
  }
}

template <IouMode M, typename T>
void box_iou_forward_impl(const BoxIouProblem& p, double eps, at::Tensor& out) {
  using acc_t = at::opmath_type<T>;
  const T* b1 = p.boxes1.const_data_ptr<T>();
  const T* b2 = p.boxes2.const_data_ptr<T>();
  T* o = out.data_ptr<T>();
  const acc_t e = static_cast<acc_t>(eps);
  if (p.aligned) {
    at::parallel_for(0, p.n, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        o[i] = static_cast<T>(iou_family<M>(load_box<acc_t>(b1, i), load_box<acc_t>(b2, i), e));
    });
    return;
  }
  const std::vector<acc_t> soa = to_coordinate_arrays<acc_t>(b2, p.batch, p.m);
  const int64_t m = p.m, n = p.n;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(m, 1));
  at::parallel_for(0, p.batch * n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      iou_row<M>(load_box<acc_t>(b1, row), soa.data() + (row / n) * 5 * m, m, e, o + row * m);
    }
  });
}

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode,
                       bool aligned, double eps) {
  const BoxIouProblem p = prepare_box_iou(boxes1, boxes2, mode, aligned);
  at::Tensor out = at::empty(p.out_sizes, boxes1.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_cpu", [&] {
    with_iou_mode(p.mode, [&](auto m) { box_iou_forward_impl<decltype(m)::value, scalar_t>(p, eps, out); });
  });
  return out;
}

template <typename acc_t, int K>
void add_scaled(acc_t* acc, const Dual<acc_t, K>& d, int first, acc_t g) {
  for (int k = 0; k < 4; ++k) acc[k] += g * d.d[first + k];
}

template <IouMode M, typename T>
void box_iou_backward_impl(const BoxIouProblem& p, const at::Tensor& grad, double eps, at::Tensor& g1,
                           at::Tensor& g2) {
  using acc_t = at::opmath_type<T>;
  const T* b1 = p.boxes1.const_data_ptr<T>();
  const T* b2 = p.boxes2.const_data_ptr<T>();
  const T* g = grad.const_data_ptr<T>();
  T* o1 = g1.data_ptr<T>();
  T* o2 = g2.data_ptr<T>();
  const acc_t e = static_cast<acc_t>(eps);
  if (p.aligned) {
    at::parallel_for(0, p.n, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const auto d = iou_family_grad<M, Seed::kSeedBoth>(load_box<acc_t>(b1, i), load_box<acc_t>(b2, i), e);
        const acc_t gi = static_cast<acc_t>(g[i]);
        for (int k = 0; k < 4; ++k) {
          o1[4 * i + k] = static_cast<T>(gi * d.d[k]);
          o2[4 * i + k] = static_cast<T>(gi * d.d[4 + k]);
        }
      }
    });
    return;
  }
  const int64_t n = p.n, m = p.m;
  // grad_boxes1: one row (b, i) at a time.
  at::parallel_for(0, p.batch * n, std::max<int64_t>(1, 4096 / std::max<int64_t>(m, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / n;
      const Box<acc_t> a = load_box<acc_t>(b1, row);
      acc_t acc[4] = {0, 0, 0, 0};
      for (int64_t j = 0; j < m; ++j) {
        const auto d = iou_family_grad<M, Seed::kSeedA>(a, load_box<acc_t>(b2, b * m + j), e);
        add_scaled(acc, d, 0, static_cast<acc_t>(g[row * m + j]));
      }
      for (int k = 0; k < 4; ++k) o1[4 * row + k] = static_cast<T>(acc[k]);
    }
  });
  // grad_boxes2: blocks of kCols columns, walking the rows of grad in order.
  constexpr int64_t kCols = 64;
  const int64_t col_blocks = (m + kCols - 1) / kCols;
  at::parallel_for(0, p.batch * col_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b = blk / col_blocks;
      const int64_t j0 = (blk % col_blocks) * kCols, j1 = std::min(m, j0 + kCols);
      acc_t acc[kCols][4] = {};
      for (int64_t i = 0; i < n; ++i) {
        const Box<acc_t> a = load_box<acc_t>(b1, b * n + i);
        const T* grow = g + (b * n + i) * m;
        for (int64_t j = j0; j < j1; ++j) {
          const auto d = iou_family_grad<M, Seed::kSeedB>(a, load_box<acc_t>(b2, b * m + j), e);
          add_scaled(acc[j - j0], d, 0, static_cast<acc_t>(grow[j]));
        }
      }
      for (int64_t j = j0; j < j1; ++j)
        for (int k = 0; k < 4; ++k) o2[4 * (b * m + j) + k] = static_cast<T>(acc[j - j0][k]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> box_iou_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes1,
                                                        const at::Tensor& boxes2, c10::string_view mode,
                                                        bool aligned, double eps) {
  const BoxIouProblem p = prepare_box_iou(boxes1, boxes2, mode, aligned);
  TORCH_CHECK(grad.sizes() == c10::IntArrayRef(p.out_sizes), "fastdet::_box_iou_backward: grad must have ",
              "the forward output's shape, got ", shape_str(grad));
  const at::Tensor g = grad.to(boxes1.scalar_type()).contiguous();
  at::Tensor g1 = at::zeros_like(p.boxes1), g2 = at::zeros_like(p.boxes2);
  if (g.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_backward_cpu", [&] {
      with_iou_mode(p.mode, [&](auto m) { box_iou_backward_impl<decltype(m)::value, scalar_t>(p, g, eps, g1, g2); });
    });
  }
  return {g1.view(boxes1.sizes()), g2.view(boxes2.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
  m.impl("_box_iou_backward", &box_iou_backward_cpu);
}

}  // namespace fastdet
