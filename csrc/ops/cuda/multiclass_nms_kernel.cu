// CUDA kernel of fastdet::multiclass_nms. No host synchronisation: every allocation is sized from
// shapes alone, so the op is CUDA-graph capturable.
//
// (1) Segmented sort: the scores of each segment (image x class, or the whole image when
//     class-agnostic) as rows of [B * S, L], NaN replaced by -inf, stable descending at::sort
//     (ties keep the lower index first).
// (2) One block per segment walks its sorted candidates in chunks of kChunk: it stops at the first
//     score <= score_threshold; each thread tests its candidate against the boxes already kept
//     (in shared memory when they fit, else in a global scratch), builds its row of a chunk-local
//     "earlier candidate j overlaps me" bitmask, then thread 0 resolves the chunk serially
//     (keep t unless it overlaps a candidate kept earlier in the chunk) up to the segment cap.
//     Output per segment: kept (score, flat index) in rank order and the count.
// (3) Merge: per image, stable descending sort of the class-major [C * cap] kept scores (unused
//     slots -inf), so ties go to the lower class, then the lower rank; a gather kernel writes the
//     first max_total, padded. Class-agnostic images have one segment, already in order.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "common/box_geometry.h"
#include "common/cuda_helpers.h"
#include "ops/multiclass_nms.h"

namespace fastdet {
namespace {

constexpr int kChunk = 128;                  // candidates per step = threads per block
constexpr int kMaskWords = kChunk / 32;
constexpr int64_t kSharedKeptBytes = 32 * 1024;  // kept boxes live in shared memory up to this

struct SegmentParams {
  int64_t segments, length, num_n, num_c, cap, segs_per_image;
  bool agnostic, per_class_boxes;
  double score_threshold, iou_threshold;
};

template <typename T>
__global__ void __launch_bounds__(kChunk) nms_segments_kernel(
    const T* __restrict__ sorted_scores,    // [segments, length]
    const int64_t* __restrict__ sorted_idx,  // [segments, length]
    const T* __restrict__ boxes, SegmentParams p, bool kept_in_shared,
    Box<at::opmath_type<T>>* __restrict__ kept_global,  // [segments, cap] when not in shared memory
    at::opmath_type<T>* __restrict__ out_scores,          // [segments, cap], pre-filled with -inf
    int64_t* __restrict__ out_flat,                       // [segments, cap]
    int64_t* __restrict__ out_count) {                    // [segments]
  using acc_t = at::opmath_type<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ Box<acc_t> cand[kChunk];
  __shared__ uint32_t mask[kChunk][kMaskWords];
  __shared__ bool alive[kChunk];
  __shared__ int slot[kChunk];
  __shared__ int64_t kept;
  const int t = threadIdx.x;

  for (int64_t seg = blockIdx.x; seg < p.segments; seg += gridDim.x) {
    Box<acc_t>* kept_boxes = kept_in_shared ? reinterpret_cast<Box<acc_t>*>(smem_raw) : kept_global + seg * p.cap;
    const int64_t b = seg / p.segs_per_image, seg_c = seg % p.segs_per_image;
    if (t == 0) kept = 0;
    __syncthreads();
    for (int64_t i0 = 0; i0 < p.length; i0 += kChunk) {
      const int64_t i = i0 + t;
      bool valid = false;
      acc_t s = acc_t(0);
      int64_t flat = -1;
      if (i < p.length) {
        s = static_cast<acc_t>(sorted_scores[seg * p.length + i]);
        valid = static_cast<double>(s) > p.score_threshold;
      }
      if (valid) {
        flat = sorted_idx[seg * p.length + i];
        const int64_t n = p.agnostic ? flat / p.num_c : flat, c = p.agnostic ? flat % p.num_c : seg_c;
        cand[t] = load_box<acc_t>(boxes, multiclass_box_row(p.per_class_boxes, b, n, c, p.num_n, p.num_c));
      }
      bool ok = valid;
      const int64_t nkept = kept;
      for (int64_t k = 0; ok && k < nkept; ++k) {
        if (static_cast<double>(nms_iou(kept_boxes[k], cand[t])) > p.iou_threshold) ok = false;
      }
      alive[t] = ok;
      slot[t] = -1;
      // Sorted descending, so the invalid candidates are a suffix: one in this chunk ends the walk.
      const bool last_chunk = __syncthreads_or(!valid);
      if (ok) {
        for (int w = 0; w < kMaskWords; ++w) {
          uint32_t bits = 0;
          for (int j = 32 * w; j < 32 * w + 32 && j < t; ++j) {
            if (alive[j] && static_cast<double>(nms_iou(cand[j], cand[t])) > p.iou_threshold) bits |= 1u << (j - 32 * w);
          }
          mask[t][w] = bits;
        }
      }
      __syncthreads();
      if (t == 0) {
        uint32_t keep_bits[kMaskWords] = {};
        int64_t count = kept;
        for (int u = 0; u < kChunk && count < p.cap; ++u) {
          if (!alive[u]) continue;
          bool overlap = false;
          for (int w = 0; w < kMaskWords; ++w) overlap |= (mask[u][w] & keep_bits[w]) != 0;
          if (overlap) continue;
          keep_bits[u / 32] |= 1u << (u % 32);
          slot[u] = static_cast<int>(count - kept);
          ++count;
        }
      }
      __syncthreads();
      if (slot[t] >= 0) {
        const int64_t r = kept + slot[t];
        kept_boxes[r] = cand[t];
        out_scores[seg * p.cap + r] = s;
        out_flat[seg * p.cap + r] = flat;
      }
      __syncthreads();
      if (t == 0) {
        int64_t added = 0;
        for (int u = 0; u < kChunk; ++u) added += slot[u] >= 0;
        kept += added;
      }
      __syncthreads();
      if (last_chunk || kept >= p.cap) break;
    }
    if (t == 0) out_count[seg] = kept;
    __syncthreads();
  }
}

// One thread per output row (b, k): the k-th detection of image b, or padding.
template <typename T>
__global__ void gather_kernel(const int64_t* __restrict__ order,  // [B, M] sorted positions (null: identity)
                              const at::opmath_type<T>* __restrict__ kept_scores,  // [B, M]
                              const int64_t* __restrict__ kept_flat,               // [B, M]
                              const int64_t* __restrict__ total,                   // [B]
                              const T* __restrict__ boxes, int64_t batch, int64_t m, int64_t k_out, int64_t cap,
                              int64_t num_n, int64_t num_c, bool agnostic, bool per_class_boxes,
                              int64_t* __restrict__ num_dets, T* __restrict__ out_boxes, T* __restrict__ out_scores,
                              int64_t* __restrict__ out_labels, int64_t* __restrict__ out_indices) {
  FASTDET_CUDA_KERNEL_LOOP(row, batch * k_out) {
    const int64_t b = row / k_out, k = row % k_out;
    const int64_t count = total[b] < k_out ? total[b] : k_out;
    if (k == 0) num_dets[b] = count;
    T* ob = out_boxes + 4 * row;
    if (k >= count) {
      for (int j = 0; j < 4; ++j) ob[j] = T(0);
      out_scores[row] = T(0);
      out_labels[row] = -1;
      out_indices[row] = -1;
      continue;
    }
    const int64_t pos = order ? order[b * m + k] : k;
    const int64_t flat = kept_flat[b * m + pos];
    const int64_t n = agnostic ? flat / num_c : flat, c = agnostic ? flat % num_c : pos / cap;
    const T* src = boxes + 4 * multiclass_box_row(per_class_boxes, b, n, c, num_n, num_c);
    for (int j = 0; j < 4; ++j) ob[j] = src[j];
    out_scores[row] = static_cast<T>(kept_scores[b * m + pos]);
    out_labels[row] = c;
    out_indices[row] = n;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms_cuda(
    const at::Tensor& boxes, const at::Tensor& scores, double score_threshold, double iou_threshold,
    int64_t max_per_class, int64_t max_total, bool class_agnostic) {
  const MulticlassNmsProblem p =
      prepare_multiclass_nms(boxes, scores, score_threshold, iou_threshold, max_per_class, max_total, class_agnostic);
  const c10::cuda::CUDAGuard guard(scores.device());
  const int64_t B = p.batch, K = p.max_total, N = p.n, C = p.c;
  const auto long_opts = scores.options().dtype(at::kLong);
  if (B == 0 || N == 0 || C == 0) {
    return {at::zeros({B}, long_opts), at::zeros({B, K, 4}, scores.options()), at::zeros({B, K}, scores.options()),
            at::full({B, K}, -1, long_opts), at::full({B, K}, -1, long_opts)};
  }
  at::Tensor num_dets = at::empty({B}, long_opts);
  at::Tensor out_boxes = at::empty({B, K, 4}, scores.options());
  at::Tensor out_scores = at::empty({B, K}, scores.options());
  at::Tensor out_labels = at::empty({B, K}, long_opts);
  at::Tensor out_indices = at::empty({B, K}, long_opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const int64_t S = p.segments_per_image(), L = p.segment_length(), cap = p.segment_cap();
  const int64_t segments = B * S;
  // (1) rows [B * S, L]: per class, [B, C, N]; class-agnostic, [B, N * C] (flat index n * C + c).
  at::Tensor rows = class_agnostic ? p.scores.reshape({segments, L}) : p.scores.permute({0, 2, 1}).reshape({segments, L});
  rows = rows.masked_fill(at::isnan(rows), -std::numeric_limits<double>::infinity());
  at::Tensor sorted_scores, sorted_idx;
  std::tie(sorted_scores, sorted_idx) = at::sort(rows, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  sorted_scores = sorted_scores.contiguous();
  sorted_idx = sorted_idx.contiguous();

  const auto acc_dtype = scores.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor kept_scores = at::full({segments, cap}, -std::numeric_limits<double>::infinity(),
                                    scores.options().dtype(acc_dtype));
  at::Tensor kept_flat = at::empty({segments, cap}, long_opts);
  at::Tensor kept_count = at::empty({segments}, long_opts);
  SegmentParams sp{segments, L, N, C, cap, S, class_agnostic, p.per_class_boxes, score_threshold, iou_threshold};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "multiclass_nms_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t kept_bytes = cap * static_cast<int64_t>(sizeof(Box<acc_t>));
    const bool in_shared = kept_bytes <= kSharedKeptBytes;
    at::Tensor kept_scratch;
    Box<acc_t>* kept_global = nullptr;
    if (!in_shared) {
      kept_scratch = at::empty({segments * cap * static_cast<int64_t>(sizeof(Box<acc_t>))}, scores.options().dtype(at::kByte));
      kept_global = reinterpret_cast<Box<acc_t>*>(kept_scratch.data_ptr<uint8_t>());
    }
    const unsigned int grid = static_cast<unsigned int>(std::min<int64_t>(segments, 1 << 20));
    nms_segments_kernel<scalar_t><<<grid, kChunk, in_shared ? kept_bytes : 0, stream>>>(
        sorted_scores.const_data_ptr<scalar_t>(), sorted_idx.const_data_ptr<int64_t>(),
        p.boxes.const_data_ptr<scalar_t>(), sp, in_shared, kept_global, kept_scores.data_ptr<acc_t>(),
        kept_flat.data_ptr<int64_t>(), kept_count.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    // (3) merge. Per image M = S * cap slots, class-major.
    const int64_t M = S * cap;
    at::Tensor merged_scores = kept_scores.view({B, M});
    at::Tensor total = at::sum(kept_count.view({B, S}), 1);
    at::Tensor order;
    if (!class_agnostic) order = std::get<1>(at::sort(merged_scores, /*stable=*/true, /*dim=*/1, /*descending=*/true)).contiguous();
    gather_kernel<scalar_t><<<grid_for(B * K), kThreadsPerBlock, 0, stream>>>(
        class_agnostic ? nullptr : order.const_data_ptr<int64_t>(), merged_scores.const_data_ptr<acc_t>(),
        kept_flat.const_data_ptr<int64_t>(), total.const_data_ptr<int64_t>(), p.boxes.const_data_ptr<scalar_t>(), B,
        M, K, cap, N, C, class_agnostic, p.per_class_boxes, num_dets.data_ptr<int64_t>(),
        out_boxes.data_ptr<scalar_t>(), out_scores.data_ptr<scalar_t>(), out_labels.data_ptr<int64_t>(),
        out_indices.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {num_dets, out_boxes, out_scores, out_labels, out_indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CUDA, m) {
  m.impl("multiclass_nms", &multiclass_nms_cuda);
}

}  // namespace fastdet
