// CUDA kernel of fastdet::soft_nms (no other GPU Soft-NMS exists in the PyTorch world).
//
// Soft-NMS is a sequential loop (each selection depends on all earlier decays), so the whole loop
// runs in ONE persistent thread block; box j belongs to thread j % blockDim for the whole run, so
// a box's score is only ever read and written by its owner and needs no synchronisation. Per
// selected box, each thread makes one fused pass over its boxes (decay by the selected box, drop
// boxes that fall below min_score, local argmax), then a block-wide argmax picks the next box:
// warp shuffles, one exchange of per-warp winners through shared memory (double-buffered, so one
// __syncthreads per iteration), and a second shuffle round that every warp does redundantly, so all
// threads learn the winner without a second barrier. Thread 0 appends the winner to the output.
// The loop ends when no box with score >= min_score remains.
//
// Memory: coordinates (structure of arrays, math type), current scores and class ids live in
// shared memory when they fit (up to ~8k boxes in fp32 on H100); otherwise scores go to a global
// workspace and boxes/classes are read from global memory (L1/L2 resident), same algorithm.
// Dropped and selected boxes get score NaN, which fails every `>= min_score` test afterwards.
// The single host synchronisation is the read of the kept count at the end, to size the outputs.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <climits>
#include <cmath>

#include "common/cuda_helpers.h"
#include "ops/soft_nms.h"

namespace fastdet {
namespace {

constexpr int kMaxThreads = 1024;

__device__ __forceinline__ float quiet_nan(float) { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ double quiet_nan(double) { return __longlong_as_double(0x7ff8000000000000LL); }

// A candidate for selection; "none" is (-inf, INT_MAX), which loses to every live box (a live score
// is never NaN; with min_score = -inf a live score may be -inf, and then the lower index wins).
template <typename acc_t>
struct Cand {
  acc_t s;
  int i;
};

template <typename acc_t>
__device__ __forceinline__ Cand<acc_t> better(Cand<acc_t> a, Cand<acc_t> b) {
  return (a.s > b.s || (a.s == b.s && a.i < b.i)) ? a : b;
}

template <typename acc_t>
__device__ __forceinline__ Cand<acc_t> warp_argmax(Cand<acc_t> c) {
  for (int offset = 16; offset > 0; offset /= 2) {
    Cand<acc_t> o{__shfl_xor_sync(0xffffffffu, c.s, offset), __shfl_xor_sync(0xffffffffu, c.i, offset)};
    c = better(c, o);
  }
  return c;  // every lane holds the warp's winner
}

// Block-wide argmax with a single barrier; every thread returns the winner. part_* must be the
// buffer not used by the previous call (see the file comment).
template <typename acc_t>
__device__ __forceinline__ Cand<acc_t> block_argmax(Cand<acc_t> c, acc_t* part_s, int* part_i) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  c = warp_argmax(c);
  if (lane == 0) part_s[warp] = c.s, part_i[warp] = c.i;
  __syncthreads();
  Cand<acc_t> w{-INFINITY, INT_MAX};
  if (lane < warps) w = Cand<acc_t>{part_s[lane], part_i[lane]};
  return warp_argmax(w);
}

template <SoftNmsMethod M, typename T, bool kShared>
__global__ void __launch_bounds__(kMaxThreads)
    soft_nms_kernel(const T* __restrict__ boxes, const T* __restrict__ scores, const int64_t* __restrict__ cls_in,
                    int n, at::opmath_type<T> thr, at::opmath_type<T> sigma, at::opmath_type<T> lo,
                    at::opmath_type<T>* __restrict__ workspace, int64_t* __restrict__ keep, T* __restrict__ kept,
                    int64_t* __restrict__ count) {
  using acc_t = at::opmath_type<T>;
  __shared__ acc_t part_s[2][32];
  __shared__ int part_i[2][32];
  extern __shared__ __align__(16) unsigned char smem[];
  // Shared layout (kShared): cls int64 [n] (only with classes), then x1, y1, x2, y2, s: acc_t [n] each.
  int64_t* sh_cls = reinterpret_cast<int64_t*>(smem);
  acc_t* sh = reinterpret_cast<acc_t*>(smem + (cls_in ? sizeof(int64_t) * n : 0));
  acc_t* sx1 = sh;
  acc_t* sy1 = sh + n;
  acc_t* sx2 = sh + 2 * static_cast<int64_t>(n);
  acc_t* sy2 = sh + 3 * static_cast<int64_t>(n);
  acc_t* s = kShared ? sh + 4 * static_cast<int64_t>(n) : workspace;
  const int64_t* cls = kShared ? sh_cls : cls_in;
  const bool has_cls = cls_in != nullptr;

  auto get_box = [&](int64_t j) -> Box<acc_t> {
    if constexpr (kShared) {
      return Box<acc_t>{sx1[j], sy1[j], sx2[j], sy2[j]};
    } else {
      return load_box<acc_t>(boxes, j);
    }
  };

  const acc_t kDead = quiet_nan(acc_t(0));
  const Cand<acc_t> none{-INFINITY, INT_MAX};
  Cand<acc_t> local = none;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    acc_t v = static_cast<acc_t>(scores[j]);
    if (!(v >= lo)) v = kDead;  // below min_score (or NaN) at the start: never selected
    s[j] = v;
    if constexpr (kShared) {
      const Box<acc_t> b = load_box<acc_t>(boxes, j);
      sx1[j] = b.x1, sy1[j] = b.y1, sx2[j] = b.x2, sy2[j] = b.y2;
      if (has_cls) sh_cls[j] = cls_in[j];
    }
    if (v >= lo) local = better(local, Cand<acc_t>{v, static_cast<int>(j)});
  }
  int buf = 0;
  Cand<acc_t> best = block_argmax(local, part_s[buf], part_i[buf]);  // its barrier also publishes the boxes
  int64_t cnt = 0;
  while (best.i != INT_MAX) {
    const int b = best.i;
    if (threadIdx.x == 0) {
      keep[cnt] = b;
      kept[cnt] = static_cast<T>(best.s);
    }
    ++cnt;
    const Box<acc_t> sel = get_box(b);
    const int64_t sel_cls = has_cls ? cls[b] : 0;
    local = none;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      acc_t v = s[j];
      if (!(v >= lo)) continue;  // dropped or already selected
      if (j == b) {
        s[j] = kDead;
        continue;
      }
      if (!has_cls || cls[j] == sel_cls) {
        const acc_t w = soft_nms_pair_weight<M>(sel, get_box(j), thr, sigma);
        if (w != acc_t(1)) {
          v *= w;
          if (!(v >= lo)) v = kDead;
          s[j] = v;
        }
      }
      if (v >= lo) local = better(local, Cand<acc_t>{v, static_cast<int>(j)});
    }
    buf ^= 1;
    best = block_argmax(local, part_s[buf], part_i[buf]);
  }
  if (threadIdx.x == 0) *count = cnt;
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                 double iou_threshold, double sigma, double min_score,
                                                 c10::string_view method, const c10::optional<at::Tensor>& idxs) {
  const SoftNmsProblem p = prepare_soft_nms(boxes, scores, iou_threshold, sigma, min_score, method, idxs);
  // Box indices travel through the block reduction as int (half the shuffles of int64).
  TORCH_CHECK(p.n < INT_MAX, "fastdet::soft_nms: boxes must have fewer than ", INT_MAX, " rows on CUDA, got ", p.n);
  const c10::cuda::CUDAGuard guard(boxes.device());
  at::Tensor keep = at::empty({p.n}, boxes.options().dtype(at::kLong));
  at::Tensor kept = at::empty({p.n}, scores.options());
  if (p.n == 0) return {keep, kept};
  at::Tensor count = at::empty({1}, boxes.options().dtype(at::kLong));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int n = static_cast<int>(p.n);
  // About 4 boxes per thread, whole warps, at most one 1024-thread block.
  const int threads = static_cast<int>(std::clamp<int64_t>(ceil_div(ceil_div(p.n, 4), 32) * 32, 32, kMaxThreads));
  int max_smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, boxes.get_device()));
  const int64_t* cls = p.idxs.defined() ? p.idxs.const_data_ptr<int64_t>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "soft_nms_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t smem = p.n * (5 * static_cast<int64_t>(sizeof(acc_t)) + (cls ? 8 : 0));
    const int64_t static_smem = 2 * 32 * (sizeof(acc_t) + sizeof(int));
    const bool use_shared = smem + static_smem <= max_smem;
    at::Tensor workspace;
    if (!use_shared) workspace = at::empty({p.n}, scores.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    with_soft_nms_method(p.method, [&](auto md) {
      constexpr SoftNmsMethod M = decltype(md)::value;
      acc_t* ws = use_shared ? nullptr : workspace.data_ptr<acc_t>();
      auto launch = [&](auto kernel, int64_t dyn_smem) {
        kernel<<<1, threads, dyn_smem, stream>>>(p.boxes.const_data_ptr<scalar_t>(), p.scores.const_data_ptr<scalar_t>(),
                                                 cls, n, static_cast<acc_t>(iou_threshold), static_cast<acc_t>(sigma),
                                                 static_cast<acc_t>(min_score), ws, keep.data_ptr<int64_t>(),
                                                 kept.data_ptr<scalar_t>(), count.data_ptr<int64_t>());
      };
      if (use_shared) {
        auto* kernel = soft_nms_kernel<M, scalar_t, true>;
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
        launch(kernel, smem);
      } else {
        launch(soft_nms_kernel<M, scalar_t, false>, 0);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  // NB: the one device-to-host read of this op: the number of kept boxes sizes the outputs.
  const int64_t k = count.item<int64_t>();
  return {keep.narrow(0, 0, k), kept.narrow(0, 0, k)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CUDA, m) { m.impl("soft_nms", &soft_nms_cuda); }

}  // namespace fastdet
