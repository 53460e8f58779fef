// CUDA kernels of fastdet::roi_align and fastdet::multi_scale_roi_align (the one-level op is a
// multi-level call with L = 1; every level is pooled by the same launch).
//
// Forward: one thread per output element, k slowest. NCHW: (k, c, ph, pw) with the bin fastest;
// channels-last: (k, ph, pw, c) with the channel fastest, so a warp reads each bilinear corner as
// contiguous channel vectors and writes the channels-last output coalesced. Each thread derives its
// RoI's geometry (ops/roi_align.h) and sums its bin's samples in the math type (fp32 for half).
// Backward, default: one thread per grad element scatters g / count * weight into the 4 corners of
// each sample with atomicAdd into a math-type buffer (fast; the summation order is not fixed).
// Backward, deterministic (torch.are_deterministic_algorithms_enabled()): a gather. A block owns a
// 16 x 16 pixel tile of one level of one image and a group of channels; it walks the RoIs of that
// (level, image) segment in index order (roi_segments: a stable sort on the device), keeps those
// whose sample span can reach the tile (compacted in order into shared memory), and each thread
// sums, for its pixel, only the samples whose bilinear support covers it: the samples of a RoI lie
// on a regular grid, so along each axis they form an index range computed in O(1) and checked
// exactly. Every gradient element is written once by one thread in a fixed order: bitwise
// reproducible, and no memory beyond the gradient.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/cuda_helpers.h"
#include "ops/roi_align.h"

namespace fastdet {
namespace {

// Element idx of the [K, C, PH, PW] output (or grad) in the layout: its RoI's geometry, its bin, and
// where its channel plane of the RoI's level starts (offset) with the stride between pixels (ps).
template <typename S>
struct BinTask {
  RoiGeometry<S> g;
  int64_t ph, pw, h, w, offset, ps;
  bool live;  // has samples in a non-empty map
};

template <bool CL, typename S>
__device__ __forceinline__ BinTask<S> bin_task(const S* rois, const RoiAlignParams& q, int64_t idx) {
  const int64_t c_n = q.channels, bins = q.bins();
  const int64_t c = CL ? idx % c_n : (idx / bins) % c_n;
  const int64_t b = CL ? (idx / c_n) % bins : idx % bins;
  BinTask<S> t;
  t.g = roi_geometry(rois, idx / (c_n * bins), q);
  t.ph = b / q.pooled_w;
  t.pw = b % q.pooled_w;
  t.h = q.height[t.g.level];
  t.w = q.width[t.g.level];
  t.offset = t.g.image * c_n * t.h * t.w + (CL ? c : c * t.h * t.w);
  t.ps = CL ? c_n : 1;
  t.live = !t.g.empty && t.h * t.w > 0;
  return t;
}

// f(corners) for every sample of bin (ph, pw) of RoI g that lies inside the h x w map.
template <typename S, typename F>
__device__ __forceinline__ void for_each_sample(const RoiGeometry<S>& g, int64_t ph, int64_t pw, int64_t h, int64_t w,
                                                F&& f) {
  for (int64_t iy = 0; iy < g.grid_h; ++iy) {
    const S y = roi_sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h);
    for (int64_t ix = 0; ix < g.grid_w; ++ix) {
      const BilinearCorners<S> s = bilinear_corners(y, roi_sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), h, w);
      if (s.valid) f(s);  // outside the map: no value, no gradient, no out-of-bounds access
    }
  }
}

template <typename T, bool CL>
__global__ void roi_align_forward_kernel(const at::opmath_type<T>* __restrict__ rois, const RoiAlignParams q,
                                         int64_t total, T* __restrict__ out) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(idx, total) {
    const BinTask<acc_t> t = bin_task<CL>(rois, q, idx);
    acc_t sum = 0;
    if (t.live) {
      const T* base = static_cast<const T*>(q.features[t.g.level]) + t.offset;
      const int64_t ps = t.ps;
      for_each_sample(t.g, t.ph, t.pw, t.h, t.w, [&](const BilinearCorners<acc_t>& s) {
        sum += s.w00 * static_cast<acc_t>(base[s.o00 * ps]) + s.w01 * static_cast<acc_t>(base[s.o01 * ps]) +
               s.w10 * static_cast<acc_t>(base[s.o10 * ps]) + s.w11 * static_cast<acc_t>(base[s.o11 * ps]);
      });
    }
    out[idx] = static_cast<T>(sum / t.g.count);
  }
}

template <typename T, bool CL>
__global__ void roi_align_backward_atomic_kernel(const T* __restrict__ grad,
                                                 const at::opmath_type<T>* __restrict__ rois, const RoiAlignParams q,
                                                 int64_t total) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(idx, total) {
    const BinTask<acc_t> t = bin_task<CL>(rois, q, idx);
    if (!t.live) continue;
    const acc_t gv = static_cast<acc_t>(grad[idx]) / t.g.count;
    acc_t* base = static_cast<acc_t*>(q.grad_features[t.g.level]) + t.offset;
    const int64_t ps = t.ps;
    for_each_sample(t.g, t.ph, t.pw, t.h, t.w, [&](const BilinearCorners<acc_t>& s) {
      atomicAdd(base + s.o00 * ps, gv * s.w00);
      atomicAdd(base + s.o01 * ps, gv * s.w01);
      atomicAdd(base + s.o10 * ps, gv * s.w10);
      atomicAdd(base + s.o11 * ps, gv * s.w11);
    });
  }
}

// ---- deterministic gather backward -----------------------------------------------------------------

constexpr int kTile = 16;                    // pixels per tile side; a block is kTile * kTile threads
constexpr int kGatherThreads = kTile * kTile;
constexpr int kGatherChannels = 8;           // channels per thread (registers)

struct TileTable {
  int64_t offset[kRoiAlignMaxLevels + 1];  // first tile of each level (prefix sums)
  int64_t tiles_w[kRoiAlignMaxLevels];
};

// The weight with which sample coordinate v (of an axis of `size` pixels) reaches pixel p, and
// whether p is one of its two bilinear corners at all (a corner of weight 0 still passes a NaN or
// infinite gradient on, as the scatter does).
template <typename S>
__device__ __forceinline__ bool axis_weight(S v, int64_t size, int64_t p, S& weight) {
  const BilinearAxis<S> a = bilinear_axis(v, size);
  if (!a.valid || (a.low != p && a.high != p)) return false;
  weight = (a.low == p ? a.w_low : S(0)) + (a.high == p ? a.w_high : S(0));
  return true;
}

// The sample indices j in [0, n) (sample j = bin j / grid, sub-sample j % grid) whose coordinate
// can touch pixel p: an O(1) superset, widened by one on each side; axis_weight decides exactly.
template <typename S>
__device__ __forceinline__ void sample_range(S start, S bin, int64_t grid, int64_t pooled, int64_t p, int64_t size,
                                             int64_t& lo, int64_t& hi) {
  const int64_t n = pooled * grid;
  lo = 0;
  hi = n - 1;
  const S step = bin / static_cast<S>(grid);
  if (!(step > S(0))) return;  // degenerate or reversed RoI: every sample (at most n) is a candidate
  const S v_lo = p <= 1 ? S(-1) : static_cast<S>(p - 1);  // samples in [-1, 0] clamp onto pixels 0 and 1
  const S v_hi = p >= size - 1 ? static_cast<S>(size) : static_cast<S>(p + 1);
  const S f_lo = floor((v_lo - start) / step - S(0.5)) - S(1);
  const S f_hi = ceil((v_hi - start) / step - S(0.5)) + S(1);
  if (f_lo > S(0)) lo = f_lo >= static_cast<S>(n) ? n : static_cast<int64_t>(f_lo);
  if (f_hi < static_cast<S>(n - 1)) hi = f_hi < S(0) ? -1 : static_cast<int64_t>(f_hi);
}

template <typename T, bool CL>
__global__ void __launch_bounds__(kGatherThreads)
    roi_align_backward_gather_kernel(const T* __restrict__ grad, const at::opmath_type<T>* __restrict__ rois,
                                     const int64_t* __restrict__ order, const int64_t* __restrict__ offsets,
                                     const RoiAlignParams q, const TileTable tiles, int64_t chunks) {
  using acc_t = at::opmath_type<T>;
  __shared__ RoiGeometry<acc_t> list[kGatherThreads];
  __shared__ int64_t list_k[kGatherThreads];
  __shared__ int warp_counts[kGatherThreads / 32];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t chunk = blockIdx.x % chunks;
  const int64_t image = (blockIdx.x / chunks) % q.batch;
  const int64_t tile = blockIdx.x / chunks / q.batch;
  int level = 0;
  while (level + 1 < q.num_levels && tile >= tiles.offset[level + 1]) ++level;
  const int64_t h = q.height[level], w = q.width[level], hw = h * w, c_n = q.channels, bins = q.bins();
  const int64_t t = tile - tiles.offset[level];
  const int64_t ty0 = t / tiles.tiles_w[level] * kTile, tx0 = t % tiles.tiles_w[level] * kTile;
  const int64_t py = ty0 + tid / kTile, px = tx0 + tid % kTile;
  const bool inside = py < h && px < w;
  const int64_t c0 = chunk * kGatherChannels;

  acc_t acc[kGatherChannels];
#pragma unroll
  for (int i = 0; i < kGatherChannels; ++i) acc[i] = acc_t(0);

  const int64_t seg = static_cast<int64_t>(level) * q.batch + image;
  const int64_t beg = offsets[seg], end = offsets[seg + 1];
  for (int64_t base = beg; base < end; base += kGatherThreads) {
    // 1. Each thread tests one RoI against the tile; the kept ones are compacted in index order.
    bool keep = false;
    RoiGeometry<acc_t> g;
    int64_t k = 0;
    if (base + tid < end) {
      k = order[base + tid];
      g = roi_geometry(rois, k, q);
      if (!g.empty) {
        // Samples lie in [start, start + PH * bin] (either order); their corners within 1 pixel.
        const acc_t y_a = g.start_h, y_b = g.start_h + g.bin_h * static_cast<acc_t>(q.pooled_h);
        const acc_t x_a = g.start_w, x_b = g.start_w + g.bin_w * static_cast<acc_t>(q.pooled_w);
        const acc_t y_min = y_a < y_b ? y_a : y_b, y_max = y_a < y_b ? y_b : y_a;
        const acc_t x_min = x_a < x_b ? x_a : x_b, x_max = x_a < x_b ? x_b : x_a;
        keep = y_max >= static_cast<acc_t>(ty0) - acc_t(2) && y_min <= static_cast<acc_t>(ty0 + kTile) + acc_t(1) &&
               x_max >= static_cast<acc_t>(tx0) - acc_t(2) && x_min <= static_cast<acc_t>(tx0 + kTile) + acc_t(1);
      }
    }
    const unsigned mask = __ballot_sync(0xffffffffu, keep);
    if (lane == 0) warp_counts[warp] = __popc(mask);
    __syncthreads();
    int before = 0, count = 0;
    for (int i = 0; i < kGatherThreads / 32; ++i) {
      before += i < warp ? warp_counts[i] : 0;
      count += warp_counts[i];
    }
    if (keep) {
      const int slot = before + __popc(mask & ((1u << lane) - 1u));
      list[slot] = g;
      list_k[slot] = k;
    }
    __syncthreads();
    // 2. Each thread gathers its pixel's samples from the kept RoIs, in order.
    if (inside) {
      for (int e = 0; e < count; ++e) {
        const RoiGeometry<acc_t> r = list[e];
        const int64_t kk = list_k[e];
        int64_t jy_lo, jy_hi, jx_lo, jx_hi;
        sample_range(r.start_h, r.bin_h, r.grid_h, q.pooled_h, py, h, jy_lo, jy_hi);
        sample_range(r.start_w, r.bin_w, r.grid_w, q.pooled_w, px, w, jx_lo, jx_hi);
        for (int64_t jy = jy_lo; jy <= jy_hi; ++jy) {
          const int64_t ph = jy / r.grid_h;
          acc_t wy;
          if (!axis_weight(roi_sample_coord(r.start_h, r.bin_h, ph, jy % r.grid_h, r.grid_h), h, py, wy)) continue;
          for (int64_t jx = jx_lo; jx <= jx_hi; ++jx) {
            const int64_t pw = jx / r.grid_w;
            acc_t wx;
            if (!axis_weight(roi_sample_coord(r.start_w, r.bin_w, pw, jx % r.grid_w, r.grid_w), w, px, wx)) continue;
            const acc_t wt = wy * wx;
            const int64_t b = ph * q.pooled_w + pw;
#pragma unroll
            for (int i = 0; i < kGatherChannels; ++i) {
              const int64_t c = c0 + i;
              if (c < c_n) {
                const T gv = grad[CL ? (kk * bins + b) * c_n + c : (kk * c_n + c) * bins + b];
                acc[i] += static_cast<acc_t>(gv) / r.count * wt;
              }
            }
          }
        }
      }
    }
    __syncthreads();  // the list is rewritten by the next round
  }
  if (!inside) return;
  acc_t* out = static_cast<acc_t*>(q.grad_features[level]) + image * c_n * hw;
  const int64_t pix = py * w + px;
#pragma unroll
  for (int i = 0; i < kGatherChannels; ++i) {
    const int64_t c = c0 + i;
    if (c < c_n) out[CL ? pix * c_n + c : c * hw + pix] = acc[i];
  }
}

void forward_cuda(const RoiAlignProblem& p, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "roi_align_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* rois = p.rois.const_data_ptr<acc_t>();
    if (p.params.channels_last) {
      roi_align_forward_kernel<scalar_t, true><<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
          rois, p.params, total, out.data_ptr<scalar_t>());
    } else {
      roi_align_forward_kernel<scalar_t, false><<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
          rois, p.params, total, out.data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward_gather(const RoiAlignProblem& p, const at::Tensor& grad, cudaStream_t stream) {
  const RoiAlignParams& q = p.params;
  const KeySegments seg = roi_segments(p);
  TileTable tiles{};
  for (int l = 0; l < q.num_levels; ++l) {
    const int64_t th = ceil_div(q.height[l], kTile);
    tiles.tiles_w[l] = ceil_div(q.width[l], kTile);
    tiles.offset[l + 1] = tiles.offset[l] + th * tiles.tiles_w[l];
  }
  const int64_t chunks = ceil_div(q.channels, kGatherChannels);
  const int64_t blocks = tiles.offset[q.num_levels] * q.batch * chunks;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "fastdet::_roi_align_backward: the deterministic backward needs ", blocks,
              " blocks, more than a grid holds");
  if (blocks == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_gather", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* rois = p.rois.const_data_ptr<acc_t>();
    const int64_t* order = seg.order.const_data_ptr<int64_t>();
    const int64_t* offsets = seg.offsets.const_data_ptr<int64_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    if (q.channels_last) {
      roi_align_backward_gather_kernel<scalar_t, true>
          <<<static_cast<unsigned int>(blocks), kGatherThreads, 0, stream>>>(g, rois, order, offsets, q, tiles, chunks);
    } else {
      roi_align_backward_gather_kernel<scalar_t, false>
          <<<static_cast<unsigned int>(blocks), kGatherThreads, 0, stream>>>(g, rois, order, offsets, q, tiles, chunks);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward_cuda(const RoiAlignProblem& p, const at::Tensor& grad) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (at::globalContext().deterministicAlgorithms()) {
    backward_gather(p, grad, stream);
    return;
  }
  const int64_t total = grad.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* rois = p.rois.const_data_ptr<acc_t>();
    if (p.params.channels_last) {
      roi_align_backward_atomic_kernel<scalar_t, true><<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), rois, p.params, total);
    } else {
      roi_align_backward_atomic_kernel<scalar_t, false><<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), rois, p.params, total);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CUDA, m) { RoiAlignKernels<&forward_cuda, &backward_cuda>::register_impls(m); }

}  // namespace fastdet
