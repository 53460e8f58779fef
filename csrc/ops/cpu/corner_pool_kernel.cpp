// CPU kernels of fastdet::corner_pool and fastdet::corner_pool_sum: one pass over the data, no
// flips, no index tensor.
//
// A plane is one [H, W] slice of the contiguous [N, C, H, W] input.
// Vertical modes (top/bottom): rows are visited in scan order with the running max of every column
//   in a small buffer, so the inner loop runs across adjacent columns (contiguous, no loop-carried
//   dependency: it vectorises). Work items are (plane, block of columns).
// Horizontal modes (left/right): a row is a serial scan, so rows are scanned in groups of 8 side by
//   side (one vectorised select per column step); work items are row groups.
// Fused corner_pool_sum: per plane, the vertical pool of a is written to out and the horizontal
//   scan of b then adds to it while the plane is still in cache.
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

// o[j] = m[j] = x[j] if the scan takes it over the running max m[j], else m[j]. Branch-free over
// restrict pointers: vectorises with no aliasing check.
template <typename T>
inline void select_row(const T* __restrict__ x, T* __restrict__ m, T* __restrict__ o, int64_t n) {
  using acc_t = at::opmath_type<T>;
  for (int64_t j = 0; j < n; ++j) {
    const T v = cummax_takes<acc_t>(static_cast<acc_t>(x[j]), static_cast<acc_t>(m[j])) ? x[j] : m[j];
    m[j] = v;
    o[j] = v;
  }
}

// Vertical pool of columns [j0, j1) (at most kColBlock) of one plane; the running column max lives
// in a small buffer. NB: the hardware prefetchers do not follow a bottom-up walk over short rows
// (top mode measured 3-8x slower than bottom on the same data), so that walk prefetches
// kPrefetchRows rows ahead itself.
constexpr int64_t kPrefetchRows = 8;
template <typename T>
void vpool_plane(const T* in, T* out, int64_t h, int64_t w, int64_t j0, int64_t j1, bool backwards) {
  T m[kColBlock];
  const int64_t n = j1 - j0;
  const int64_t first = backwards ? h - 1 : 0, step = backwards ? -1 : 1;
  std::copy(in + first * w + j0, in + first * w + j1, m);
  std::copy(m, m + n, out + first * w + j0);
  for (int64_t k = 1; k < h; ++k) {
    const int64_t r = first + k * step;
    if (backwards && r >= kPrefetchRows) {
      const T* ahead = in + (r - kPrefetchRows) * w + j0;
      for (int64_t j = 0; j < n; j += 64 / sizeof(T)) __builtin_prefetch(ahead + j);
    }
    select_row(in + r * w + j0, m, out + r * w + j0, n);
  }
}

// NB: a row scan is a serial dependency chain, so up to kRowGroup rows are scanned side by side
// (independent chains the CPU overlaps) with branch-free updates (random data would mispredict).
constexpr int kRowGroup = 8;

// Horizontal pool of NR rows of width w starting at in; emit(r, j, running max). Each scan step
// gathers one column of the NR rows into a small buffer and updates the NR running maxima with
// one vectorised select (select_row), so the NR serial chains advance together.
template <int NR, typename T, typename Emit>
inline void hpool_rows_fixed(const T* in, int64_t w, bool backwards, Emit& emit) {
  const int64_t first = backwards ? w - 1 : 0, step = backwards ? -1 : 1;
  T m[NR], x[NR], o[NR];
  for (int r = 0; r < NR; ++r) {
    m[r] = in[r * w + first];
    emit(r, first, m[r]);
  }
  for (int64_t k = 1; k < w; ++k) {
    const int64_t j = first + k * step;
    for (int r = 0; r < NR; ++r) x[r] = in[r * w + j];
    select_row(x, m, o, NR);
    for (int r = 0; r < NR; ++r) emit(r, j, o[r]);
  }
}

template <typename T, typename Emit>
inline void hpool_rows(const T* in, int64_t nr, int64_t w, bool backwards, Emit&& emit) {
  if (nr == kRowGroup) return hpool_rows_fixed<kRowGroup>(in, w, backwards, emit);
  for (int64_t r = 0; r < nr; ++r) {
    auto emit_r = [&](int64_t, int64_t j, T m) { emit(r, j, m); };
    hpool_rows_fixed<1>(in + r * w, w, backwards, emit_r);
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
    const int64_t rows = planes * h, groups = (rows + kRowGroup - 1) / kRowGroup;
    const int64_t grain = std::max<int64_t>(1, 16384 / (w * kRowGroup));
    at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
      for (int64_t gi = begin; gi < end; ++gi) {
        const int64_t r0 = gi * kRowGroup, nr = std::min<int64_t>(kRowGroup, rows - r0);
        T* orow = o + r0 * w;
        hpool_rows(in + r0 * w, nr, w, backwards, [&](int64_t r, int64_t j, T m) { orow[r * w + j] = m; });
      }
    });
  }
}

// out = vpool(a, vdir) + hpool(b, hdir). Per plane (in cache): the vertical pool of a is written to
// out, then the horizontal scan of b adds to it in place (out = T(float(V) + float(H)), the
// rounding of the reference's half + half), so the plane's out makes one trip to memory.
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
    for (int64_t p = begin; p < end; ++p) {
      const int64_t off = p * h * w;
      for (int64_t j0 = 0; j0 < w; j0 += kColBlock) vpool_plane(pa + off, po + off, h, w, j0, std::min(w, j0 + kColBlock), vback);
      for (int64_t r0 = 0; r0 < h; r0 += kRowGroup) {
        T* orow = po + off + r0 * w;
        hpool_rows(pb + off + r0 * w, std::min<int64_t>(kRowGroup, h - r0), w, hback, [&](int64_t r, int64_t j, T m) {
          orow[r * w + j] = static_cast<T>(static_cast<acc_t>(orow[r * w + j]) + static_cast<acc_t>(m));
        });
      }
    }
  });
}

// ---- backward -------------------------------------------------------------------------------------
// State of one scan: running max, its position, and the gradient of the run it is the argmax of.
// One step at position j with input v and grad gv: gi[j] = 0; when the scan takes v, the finished
// run is flushed (gi[arg] = acc) and a new run starts at j. NB: a branch, not selects: takes are
// rare after the first few steps of a scan (about ln(n) of n on random data), so it predicts well
// and saves a store per element.
template <typename T>
inline void backward_step(at::opmath_type<T> v, at::opmath_type<T> gv, int64_t j, int64_t stride, T* gi,
                          at::opmath_type<T>& best, at::opmath_type<T>& acc, int64_t& arg) {
  gi[j * stride] = T(0);
  if (cummax_takes(v, best)) {
    gi[arg * stride] = static_cast<T>(acc);
    best = v, arg = j, acc = gv;
  } else {
    acc += gv;
  }
}

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
    if (backwards && r >= kPrefetchRows) {  // see vpool_plane
      for (int64_t j = 0; j < n; j += 64 / sizeof(T)) {
        __builtin_prefetch(x - kPrefetchRows * w + j);
        __builtin_prefetch(gr - kPrefetchRows * w + j);
      }
    }
    for (int64_t j = 0; j < n; ++j) {  // columns are independent chains
      backward_step<T>(static_cast<acc_t>(x[j]), static_cast<acc_t>(gr[j]), r, w, gi + j0 + j, best[j], acc[j],
                       arg[j]);
    }
  }
  for (int64_t j = 0; j < n; ++j) gi[arg[j] * w + j0 + j] = static_cast<T>(acc[j]);
}

// Horizontal backward of nr <= kRowGroup rows, scanned side by side.
template <typename T>
void hpool_backward_rows(const T* g, const T* in, T* gi, int64_t nr, int64_t w, bool backwards) {
  using acc_t = at::opmath_type<T>;
  const int64_t first = backwards ? w - 1 : 0, step = backwards ? -1 : 1;
  acc_t best[kRowGroup], acc[kRowGroup];
  int64_t arg[kRowGroup];
  for (int64_t r = 0; r < nr; ++r) {
    best[r] = static_cast<acc_t>(in[r * w + first]);
    acc[r] = static_cast<acc_t>(g[r * w + first]);
    arg[r] = first;
  }
  for (int64_t k = 1; k < w; ++k) {
    const int64_t j = first + k * step;
    for (int64_t r = 0; r < nr; ++r) {
      backward_step<T>(static_cast<acc_t>(in[r * w + j]), static_cast<acc_t>(g[r * w + j]), j, 1, gi + r * w,
                       best[r], acc[r], arg[r]);
    }
  }
  for (int64_t r = 0; r < nr; ++r) gi[r * w + arg[r]] = static_cast<T>(acc[r]);
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
    const int64_t rows = planes * h, groups = (rows + kRowGroup - 1) / kRowGroup;
    const int64_t grain = std::max<int64_t>(1, 16384 / (w * kRowGroup));
    at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
      for (int64_t gr = begin; gr < end; ++gr) {
        const int64_t r0 = gr * kRowGroup, nr = std::min<int64_t>(kRowGroup, rows - r0);
        hpool_backward_rows(g + r0 * w, in + r0 * w, o + r0 * w, nr, w, backwards);
      }
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
      for (int64_t r0 = 0; r0 < h; r0 += kRowGroup) {
        const int64_t o = off + r0 * w;
        hpool_backward_rows(g + o, pb + o, ob + o, std::min<int64_t>(kRowGroup, h - r0), w, hback);
      }
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
