// CUDA kernels of fastdet::nms and fastdet::batched_nms: one implementation, nms being the
// one-segment case of batched_nms.
//
//  1. Order: integer score keys (nms.h: score_sort_key) stably sorted -> order[r], the box of score
//     rank r (score desc, lower index first, NaN first). batched_nms then stably sorts the ranks by
//     class, so every class is a contiguous segment [b, e) of positions, in visiting order.
//  2. rows kernel: per position, its segment (binary search in the sorted classes), its mask row
//     length W = ceil(n_c / 64) words, and the sorted box in the math type (fp32 for half).
//     An inclusive cumsum of the row lengths places every row in one flat mask: total size
//     sum_c n_c * ceil(n_c / 64). For batched_nms that size and the number of segments are read
//     back to the host (one 16-byte copy) to allocate the mask and size the walk's grid; nms knows
//     both without a read.
//  3. mask kernel: one thread per 64-bit word (row p, columns 64w .. 64w+63 of its segment); bit k
//     set when column c = b + 64w + k > p and IoU(p, c) > threshold. Only the upper triangle is
//     computed; the IoU uses round-to-nearest intrinsics (no FMA contraction), so it is bit for bit
//     the CPU kernel's value and CPU and CUDA keep the same boxes.
//  4. walk kernel: one block per segment walks its rows in 64-row groups: the group's diagonal
//     words are staged in shared memory and one thread resolves the group serially; then all threads
//     OR the kept rows into the segment's `removed` bitmap (each thread owns a set of words, so there
//     are no races). Kept boxes are flagged by score rank on the device — the mask never leaves the
//     GPU.
//  5. keep = order[flags]: already sorted by score rank; its size is the only other host read.
// The 64-bit suppression-mask idea is torchvision's (torchvision/csrc/ops/cuda/nms_kernel.cu); the
// segmented layout, the on-device walk and the code here are fastdet's own.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/masked_select.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common/cuda_helpers.h"
#include "ops/nms.h"

namespace fastdet {
namespace {

constexpr int kWalkThreads = 256;

// Round-to-nearest arithmetic that nvcc never contracts into FMA.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

// nms_iou (box_geometry.h), operation for operation, in round-to-nearest steps.
template <typename acc_t>
__device__ __forceinline__ acc_t nms_iou_rn(const Box<acc_t>& a, const Box<acc_t>& b) {
  const acc_t iw = clamp_min_zero(sub_rn(min_of(a.x2, b.x2), max_of(a.x1, b.x1)));
  const acc_t ih = clamp_min_zero(sub_rn(min_of(a.y2, b.y2), max_of(a.y1, b.y1)));
  const acc_t inter = mul_rn(iw, ih);
  const acc_t area_a = mul_rn(sub_rn(a.x2, a.x1), sub_rn(a.y2, a.y1));
  const acc_t area_b = mul_rn(sub_rn(b.x2, b.x1), sub_rn(b.y2, b.y1));
  return div_rn(inter, sub_rn(add_rn(area_a, area_b), inter));
}

template <typename T>
__global__ void score_keys_kernel(const T* __restrict__ scores, int64_t n, int64_t* __restrict__ keys) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(i, n) { keys[i] = score_sort_key(static_cast<acc_t>(scores[i])); }
}

// Per position p: its segment [seg_begin[p], seg_end[p]), its mask row length in words, whether
// it starts its segment, and its box in the math type. pos_rank == nullptr and pos_cls == nullptr
// mean nms: identity order, one segment.
template <typename T>
__global__ void rows_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ order,
                            const int64_t* __restrict__ pos_rank, const int64_t* __restrict__ pos_cls, int64_t n,
                            Box<at::opmath_type<T>>* __restrict__ sorted, int64_t* __restrict__ seg_begin,
                            int64_t* __restrict__ seg_end, int64_t* __restrict__ row_words,
                            int64_t* __restrict__ head) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(p, n) {
    int64_t b = 0, e = n;
    if (pos_cls != nullptr) {
      const int64_t c = pos_cls[p];
      int64_t lo = 0, hi = p;  // first position with class c
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (pos_cls[mid] < c) lo = mid + 1; else hi = mid;
      }
      b = lo;
      lo = p + 1, hi = n;  // first position after p with a larger class
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (pos_cls[mid] <= c) lo = mid + 1; else hi = mid;
      }
      e = lo;
    }
    seg_begin[p] = b;
    seg_end[p] = e;
    row_words[p] = (e - b + 63) / 64;
    head[p] = p == b ? 1 : 0;
    const int64_t r = pos_rank != nullptr ? pos_rank[p] : p;
    sorted[p] = load_box<acc_t>(boxes, order[r]);
  }
}

// first[s] = first position of segment s (seg_count: inclusive cumsum of head).
__global__ void segment_first_kernel(const int64_t* __restrict__ head, const int64_t* __restrict__ seg_count,
                                     int64_t n, int64_t* __restrict__ first) {
  FASTDET_CUDA_KERNEL_LOOP(p, n) {
    if (head[p]) first[seg_count[p] - 1] = p;
  }
}

// One thread per mask word t. Row p is the first row whose inclusive word end exceeds t; bit k of
// word w of row p is set when column c = b + 64 w + k of p's segment [b, e) has c > p and
// IoU(p, c) > thr. Words wholly below the diagonal are written as 0 (never read).
template <typename acc_t>
__global__ void mask_kernel(const Box<acc_t>* __restrict__ sorted, const int64_t* __restrict__ seg_begin,
                            const int64_t* __restrict__ seg_end, const int64_t* __restrict__ row_end, int64_t n,
                            int64_t total, acc_t thr, unsigned long long* __restrict__ mask) {
  FASTDET_CUDA_KERNEL_LOOP(t, total) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (row_end[mid] > t) hi = mid; else lo = mid + 1;
    }
    const int64_t p = lo, b = seg_begin[p], e = seg_end[p];
    const int64_t w_count = (e - b + 63) / 64;
    const int64_t w = t - (row_end[p] - w_count);
    const int64_t c0 = b + 64 * w;
    unsigned long long bits = 0;
    if (c0 + 63 > p) {
      const Box<acc_t> a = sorted[p];
      const int64_t c1 = c0 + 64 < e ? c0 + 64 : e;
      for (int64_t c = (p + 1 > c0 ? p + 1 : c0); c < c1; ++c) {
        if (nms_iou_rn(a, sorted[c]) > thr) bits |= 1ull << (c - c0);
      }
    }
    mask[t] = bits;
  }
}

// One block per segment (first[blockIdx.x] is its first position). Walks the rows in groups of 64:
// thread 0 resolves a group serially from its diagonal words (in shared memory) and the removed
// bits so far, then every thread ORs the group's kept rows into the removed words it owns.
// kept[rank] = true for every kept box; at most max_keep per segment.
__global__ void walk_kernel(const unsigned long long* __restrict__ mask, const int64_t* __restrict__ row_end,
                            const int64_t* __restrict__ first, const int64_t* __restrict__ seg_end,
                            const int64_t* __restrict__ pos_rank, int64_t max_keep,
                            unsigned long long* __restrict__ removed, bool* __restrict__ kept) {
  __shared__ unsigned long long diag[64];
  __shared__ unsigned long long group_kept;
  __shared__ int64_t count;
  const int64_t b = first[blockIdx.x];
  const int64_t nc = seg_end[b] - b;
  const int64_t W = (nc + 63) / 64;
  const unsigned long long* rows = mask + (row_end[b] - W);  // local row i at rows + i * W
  unsigned long long* rem = removed + b;                     // W <= nc words, inside [b, e)
  if (threadIdx.x == 0) count = 0;
  for (int64_t wb = 0; wb < W; ++wb) {
    const int64_t r0 = 64 * wb;
    const int nr = static_cast<int>(nc - r0 < 64 ? nc - r0 : 64);
    if (threadIdx.x < nr) diag[threadIdx.x] = rows[(r0 + threadIdx.x) * W + wb];
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long cur = rem[wb], kb = 0;
      int64_t cnt = count;
      for (int k = 0; k < nr && cnt < max_keep; ++k) {
        if (!((cur >> k) & 1ull)) {
          kb |= 1ull << k;
          cur |= diag[k];
          ++cnt;
        }
      }
      group_kept = kb;
      count = cnt;
    }
    __syncthreads();
    const unsigned long long kb = group_kept;
    for (int64_t w = wb + 1 + threadIdx.x; w < W; w += blockDim.x) {
      unsigned long long acc = rem[w];
      for (unsigned long long bits = kb; bits != 0; bits &= bits - 1) {
        acc |= rows[(r0 + __ffsll(static_cast<long long>(bits)) - 1) * W + w];
      }
      rem[w] = acc;
    }
    if (threadIdx.x < nr && ((kb >> threadIdx.x) & 1ull)) {
      const int64_t q = b + r0 + threadIdx.x;
      kept[pos_rank != nullptr ? pos_rank[q] : q] = true;
    }
    if (count >= max_keep) break;  // uniform: count changes only before the barrier above
    __syncthreads();               // rem[wb + 1] is written above and read by thread 0 next
  }
}

at::Tensor run_nms_cuda(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                        double iou_threshold, int64_t max_output) {
  check_max_output(max_output, op);
  const NmsProblem p = prepare_nms(op, boxes, scores, idxs, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = p.n;
  const auto long_opts = boxes.options().dtype(at::kLong);
  if (n == 0 || max_output == 0) return at::empty({0}, long_opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  at::Tensor keys = at::empty({n}, long_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_keys_cuda", [&] {
    score_keys_kernel<scalar_t><<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
        p.scores.const_data_ptr<scalar_t>(), n, keys.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // Stable: equal keys keep the lower index first.
  const at::Tensor order = std::get<1>(at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  at::Tensor pos_rank, pos_cls;
  if (p.idxs) {
    const at::Tensor cls_by_rank = p.idxs->index_select(0, order);
    auto sorted_cls = at::sort(cls_by_rank, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    pos_cls = std::get<0>(sorted_cls).contiguous();
    pos_rank = std::get<1>(sorted_cls).contiguous();
  }

  const bool is_double = boxes.scalar_type() == at::kDouble;
  at::Tensor sorted = at::empty({n, 4}, boxes.options().dtype(is_double ? at::kDouble : at::kFloat));
  at::Tensor seg_begin = at::empty({n}, long_opts), seg_end = at::empty({n}, long_opts);
  at::Tensor row_words = at::empty({n}, long_opts), head = at::empty({n}, long_opts);
  at::Tensor kept = at::zeros({n}, boxes.options().dtype(at::kBool));
  const int64_t* pr = p.idxs ? pos_rank.const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto* sb = reinterpret_cast<Box<acc_t>*>(sorted.data_ptr<acc_t>());
    rows_kernel<scalar_t><<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
        p.boxes.const_data_ptr<scalar_t>(), order.const_data_ptr<int64_t>(), pr,
        p.idxs ? pos_cls.const_data_ptr<int64_t>() : nullptr, n, sb, seg_begin.data_ptr<int64_t>(),
        seg_end.data_ptr<int64_t>(), row_words.data_ptr<int64_t>(), head.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    const at::Tensor row_end = at::cumsum(row_words, 0);
    int64_t total = n * ((n + 63) / 64), num_seg = 1;
    at::Tensor first;
    if (p.idxs) {
      // NB: the one host read of batched_nms before the output size: mask size and segment count.
      const at::Tensor seg_count = at::cumsum(head, 0);
      const at::Tensor sizes = at::stack({row_end[n - 1], seg_count[n - 1]}).cpu();
      total = sizes[0].item<int64_t>();
      num_seg = sizes[1].item<int64_t>();
      first = at::empty({num_seg}, long_opts);
      segment_first_kernel<<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
          head.const_data_ptr<int64_t>(), seg_count.const_data_ptr<int64_t>(), n, first.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      first = at::zeros({1}, long_opts);
    }
    at::Tensor mask = at::empty({total}, long_opts);
    auto* mk = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());
    mask_kernel<acc_t><<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
        sb, seg_begin.const_data_ptr<int64_t>(), seg_end.const_data_ptr<int64_t>(),
        row_end.const_data_ptr<int64_t>(), n, total, threshold_floor<acc_t>(iou_threshold), mk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    at::Tensor removed = at::zeros({n}, long_opts);
    const int64_t max_keep = max_output < 0 ? n : max_output;
    walk_kernel<<<static_cast<unsigned int>(num_seg), kWalkThreads, 0, stream>>>(
        mk, row_end.const_data_ptr<int64_t>(), first.const_data_ptr<int64_t>(), seg_end.const_data_ptr<int64_t>(),
        pr, max_keep, reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()), kept.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // kept is indexed by score rank, so this is sorted by score (ties: lower index first).
  return at::masked_select(order, kept);
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, int64_t max_output) {
  return run_nms_cuda("nms", boxes, scores, nullptr, iou_threshold, max_output);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  return run_nms_cuda("batched_nms", boxes, scores, &idxs, iou_threshold, -1);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
}

}  // namespace fastdet
