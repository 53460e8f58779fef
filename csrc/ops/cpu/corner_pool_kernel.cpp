// CPU kernels of fastdet::corner_pool and fastdet::corner_pool_sum: one pass over the data, no
// flips, no index tensor.
//
// A plane is one [H, W] slice of the contiguous [N, C, H, W] input.
// Vertical modes (top/bottom): rows are visited in scan order and the running max of every column
//   is the previous output row, so the inner loop runs across adjacent columns (contiguous, no
//   loop-carried dependency: it vectorises). Work items are (plane, block of columns).
// Horizontal modes (left/right): each row is one sequential scan; work items are rows.
// Fused corner_pool_sum: per plane, rows in the vertical scan order; the running column max of a
//   lives in a row buffer and each output row is written once as vmax(a) + hscan(b).
// Backward recomputes the running argmax by scanning the input in the same direction: the
//   gradient of a run of outputs that share one argmax is accumulated (in the math type, in scan
//   order, the order the reference's scatter_add uses) and flushed to the argmax when it changes.
//   Every other position gets 0, written as the scan passes it (no separate zero fill).
// Ties and NaN follow torch.cummax (cummax_takes in ops/corner_pool.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/corner_pool.h"

namespace fastdet {
namespace {

constexpr int64_t kColBlock = 256;  // columns per vertical work item

// ---- forward --------------------------------------------------------------------------------------

// Vertical pool of columns [j0, j1) of one plane: out row r = select(in row r, out row r - step).
template <typename T>
void vpool_plane(const T* in, T* out, int64_t h, int64_t w, int64_t j0, int64_t j1, bool backwards) {
  using acc_t = at::opmath_type<T>;
  const int64_t first = backwards ? h - 1 : 0, step = backwards ? -1 : 1;
  std::copy(in + first * w + j0, in + first * w + j1, out + first * w + j0);
  for (int64_t k = 1; k < h; ++k) {
    const int64_t r = first + k * step;
    const T* x = in + r * w;
    const T* prev = out + (r - step) * w;
    T* o = out + r * w;
    for (int64_t j = j0; j < j1; ++j) {
      o[j] = cummax_takes<acc_t>(static_cast<acc_t>(x[j]), static_cast<acc_t>(prev[j])) ? x[j] : prev[j];
    }
  }
}

// Horizontal pool of one row of width w; out[j] = emit(j, running max).
template <typename T, typename Emit>
FASTDET_HD void hpool_row(const T* in, int64_t w, bool backwards, Emit&& emit) {
  using acc_t = at::opmath_type<T>;
  const int64_t first = backwards ? w - 1 : 0, step = backwards ? -1 : 1;
  T m = in[first];
  emit(first, m);
  for (int64_t k = 1; k < w; ++k) {
    const int64_t j = first + k * step;
    if (cummax_takes<acc_t>(static_cast<acc_t>(in[j]), static_cast<acc_t>(m))) m = in[j];
    emit(j, m);
  }
}

template <typename T>
void corner_pool_forward_impl(const at::Tensor& input, PoolDir dir, at::Tensor& out) {
  const int64_t h = input.size(2), w = input.size(3), planes = input.size(0) * input.size(1);
  const T* in = input.const_data_ptr<T>();
  T* o = out.data_ptr<T>();
  const bool backwards = scans_backwards(dir);
  if (is_vertical(dir)) {
    const int64_t blocks = (w + kColBlock - 1) / kColBlock;
    at::parallel_for(0, planes * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t p = item / blocks, j0 = (item % blocks) * kColBlock, j1 = std::min(w, j0 + kColBlock);
        vpool_plane(in + p * h * w, o + p * h * w, h, w, j0, j1, backwards);
      }
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, 16384 / w);
    at::parallel_for(0, planes * h, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        T* orow = o + row * w;
        hpool_row(in + row * w, w, backwards, [&](int64_t j, T m) { orow[j] = m; });
      }
    });
  }
}

// out = vpool(a, vdir) + hpool(b, hdir), each output row written once.
template <typename T>
void corner_pool_sum_forward_impl(const at::Tensor& a, const at::Tensor& b, PoolDir vdir, PoolDir hdir,
                                  at::Tensor& out) {
  using acc_t = at::opmath_type<T>;
  const int64_t h = a.size(2), w = a.size(3), planes = a.size(0) * a.size(1);
  const T* pa = a.const_data_ptr<T>();
  const T* pb = b.const_data_ptr<T>();
  T* po = out.data_ptr<T>();
  const bool vback = scans_backwards(vdir), hback = scans_backwards(hdir);
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> colmax(w);  // running max of a's columns
    for (int64_t p = begin; p < end; ++p) {
      const int64_t first = vback ? h - 1 : 0, step = vback ? -1 : 1;
      for (int64_t k = 0; k < h; ++k) {
        const int64_t r = first + k * step;
        const T* x = pa + (p * h + r) * w;
        if (k == 0) {
          std::copy(x, x + w, colmax.begin());
        } else {
          for (int64_t j = 0; j < w; ++j) {
            if (cummax_takes<acc_t>(static_cast<acc_t>(x[j]), static_cast<acc_t>(colmax[j]))) colmax[j] = x[j];
          }
        }
        T* orow = po + (p * h + r) * w;
        hpool_row(pb + (p * h + r) * w, w, hback, [&](int64_t j, T m) {
          orow[j] = static_cast<T>(static_cast<acc_t>(colmax[j]) + static_cast<acc_t>(m));
        });
      }
    }
  });
}

// ---- backward -------------------------------------------------------------------------------------

// Vertical backward over columns [j0, j1) of one plane; state buffers hold (j1 - j0) entries.
template <typename T>
void vpool_backward_plane(const T* g, const T* in, T* gi, int64_t h, int64_t w, int64_t j0, int64_t j1,
                          bool backwards, std::vector<at::opmath_type<T>>& best,
                          std::vector<at::opmath_type<T>>& acc, std::vector<int64_t>& arg) {
  using acc_t = at::opmath_type<T>;
  const int64_t n = j1 - j0;
  const int64_t first = backwards ? h - 1 : 0, step = backwards ? -1 : 1;
  for (int64_t j = 0; j < n; ++j) {
    best[j] = static_cast<acc_t>(in[first * w + j0 + j]);
    acc[j] = static_cast<acc_t>(g[first * w + j0 + j]);
    arg[j] = first;
  }
  for (int64_t k = 1; k < h; ++k) {
    const int64_t r = first + k * step;
    const T* x = in + r * w + j0;
    const T* gr = g + r * w + j0;
    T* gir = gi + r * w + j0;
    for (int64_t j = 0; j < n; ++j) {
      const acc_t v = static_cast<acc_t>(x[j]);
      gir[j] = T(0);
      if (cummax_takes(v, best[j])) {
        gi[arg[j] * w + j0 + j] = static_cast<T>(acc[j]);  // flush the finished run
        best[j] = v, arg[j] = r, acc[j] = static_cast<acc_t>(gr[j]);
      } else {
        acc[j] += static_cast<acc_t>(gr[j]);
      }
    }
  }
  for (int64_t j = 0; j < n; ++j) gi[arg[j] * w + j0 + j] = static_cast<T>(acc[j]);
}

// Horizontal backward of one row.
template <typename T>
void hpool_backward_row(const T* g, const T* in, T* gi, int64_t w, bool backwards) {
  using acc_t = at::opmath_type<T>;
  const int64_t first = backwards ? w - 1 : 0, step = backwards ? -1 : 1;
  acc_t best = static_cast<acc_t>(in[first]), acc = static_cast<acc_t>(g[first]);
  int64_t arg = first;
  for (int64_t k = 1; k < w; ++k) {
    const int64_t j = first + k * step;
    const acc_t v = static_cast<acc_t>(in[j]);
    gi[j] = T(0);
    if (cummax_takes(v, best)) {
      gi[arg] = static_cast<T>(acc);
      best = v, arg = j, acc = static_cast<acc_t>(g[j]);
    } else {
      acc += static_cast<acc_t>(g[j]);
    }
  }
  gi[arg] = static_cast<T>(acc);
}

template <typename T>
void corner_pool_backward_impl(const at::Tensor& grad, const at::Tensor& input, PoolDir dir, at::Tensor& gi) {
  using acc_t = at::opmath_type<T>;
  const int64_t h = input.size(2), w = input.size(3), planes = input.size(0) * input.size(1);
  const T* g = grad.const_data_ptr<T>();
  const T* in = input.const_data_ptr<T>();
  T* o = gi.data_ptr<T>();
  const bool backwards = scans_backwards(dir);
  if (is_vertical(dir)) {
    const int64_t blocks = (w + kColBlock - 1) / kColBlock;
    at::parallel_for(0, planes * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> best(kColBlock), acc(kColBlock);
      std::vector<int64_t> arg(kColBlock);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t p = item / blocks, j0 = (item % blocks) * kColBlock, j1 = std::min(w, j0 + kColBlock);
        vpool_backward_plane(g + p * h * w, in + p * h * w, o + p * h * w, h, w, j0, j1, backwards, best, acc, arg);
      }
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, 16384 / w);
    at::parallel_for(0, planes * h, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row)
        hpool_backward_row(g + row * w, in + row * w, o + row * w, w, backwards);
    });
  }
}

template <typename T>
void corner_pool_sum_backward_impl(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b, PoolDir vdir,
                                   PoolDir hdir, at::Tensor& ga, at::Tensor& gb) {
  using acc_t = at::opmath_type<T>;
  const int64_t h = a.size(2), w = a.size(3), planes = a.size(0) * a.size(1);
  const T* g = grad.const_data_ptr<T>();
  const T* pa = a.const_data_ptr<T>();
  const T* pb = b.const_data_ptr<T>();
  T* oa = ga.data_ptr<T>();
  T* ob = gb.data_ptr<T>();
  const bool vback = scans_backwards(vdir), hback = scans_backwards(hdir);
  // One task per plane does both scans while the plane's grad is in cache.
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> best(w), acc(w);
    std::vector<int64_t> arg(w);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t off = p * h * w;
      vpool_backward_plane(g + off, pa + off, oa + off, h, w, 0, w, vback, best, acc, arg);
      for (int64_t r = 0; r < h; ++r)
        hpool_backward_row(g + off + r * w, pb + off + r * w, ob + off + r * w, w, hback);
    }
  });
}

// ---- host entries ---------------------------------------------------------------------------------

at::Tensor corner_pool_cpu(const at::Tensor& input, c10::string_view mode) {
  const char* op = "corner_pool";
  const PoolDir dir = parse_pool_mode(mode, op);
  const at::Tensor x = prepare_pool_input(input, op, "input");
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "corner_pool_cpu",
                                  [&] { corner_pool_forward_impl<scalar_t>(x, dir, out); });
  return out;
}

at::Tensor corner_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& input, c10::string_view mode) {
  const char* op = "_corner_pool_backward";
  const PoolDir dir = parse_pool_mode(mode, op);
  const at::Tensor x = prepare_pool_input(input, op, "input");
  const at::Tensor g = prepare_pool_grad(grad, x, op);
  at::Tensor gi = at::empty_like(x);
  if (gi.numel() == 0) return gi;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "corner_pool_backward_cpu",
                                  [&] { corner_pool_backward_impl<scalar_t>(g, x, dir, gi); });
  return gi;
}

struct SumInputs {
  at::Tensor a, b;
  PoolDir vdir, hdir;
};

SumInputs prepare_sum(const at::Tensor& a, const at::Tensor& b, c10::string_view corner, const char* op) {
  const auto dirs = parse_corner(corner, op);
  check_same_device(a, b, op, "a", "b");
  check_same_dtype(a, b, op, "a", "b");
  SumInputs s{prepare_pool_input(a, op, "a"), prepare_pool_input(b, op, "b"), dirs.first, dirs.second};
  check_same_shape(a, b, op, "a", "b");
  return s;
}

at::Tensor corner_pool_sum_cpu(const at::Tensor& a, const at::Tensor& b, c10::string_view corner) {
  const SumInputs s = prepare_sum(a, b, corner, "corner_pool_sum");
  at::Tensor out = at::empty_like(s.a);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.a.scalar_type(), "corner_pool_sum_cpu",
                                  [&] { corner_pool_sum_forward_impl<scalar_t>(s.a, s.b, s.vdir, s.hdir, out); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> corner_pool_sum_backward_cpu(const at::Tensor& grad, const at::Tensor& a,
                                                                const at::Tensor& b, c10::string_view corner) {
  const char* op = "_corner_pool_sum_backward";
  const SumInputs s = prepare_sum(a, b, corner, op);
  const at::Tensor g = prepare_pool_grad(grad, s.a, op);
  at::Tensor ga = at::empty_like(s.a), gb = at::empty_like(s.b);
  if (g.numel() == 0) return {ga, gb};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.a.scalar_type(), "corner_pool_sum_backward_cpu", [&] {
    corner_pool_sum_backward_impl<scalar_t>(g, s.a, s.b, s.vdir, s.hdir, ga, gb);
  });
  return {ga, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CPU, m) {
  m.impl("corner_pool", &corner_pool_cpu);
  m.impl("_corner_pool_backward", &corner_pool_backward_cpu);
  m.impl("corner_pool_sum", &corner_pool_sum_cpu);
  m.impl("_corner_pool_sum_backward", &corner_pool_sum_backward_cpu);
}

}  // namespace fastdet
