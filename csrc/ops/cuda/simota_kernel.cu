// CUDA kernels of fastdet::simota_cost and fastdet::simota_assign (math in ops/simota.h). No host
// synchronisation: every buffer is sized from shapes alone; no G x A (or G x A x C) tensor is
// formed by simota_assign.
//
// (1) candidates_kernel, one warp per (image, anchor): lanes test the GTs (candidate flag), then
//     sum -max(log1p(-p_k), -100) over the classes (coalesced) into cls_sum, in double.
// (2) select_kernel, one block per (image, GT): each thread scans a strided share of the anchors
//     and keeps its own candidate_topk smallest (-IoU) and (cost) lists (ops/simota.h
//     SimotaSmallest); the block merges them with candidate_topk / k rounds of block-wide argmin
//     over the list heads, so the IoU sum and the k picks are exactly the sequential ones (ties to
//     the lower anchor). Each pick adds a claim to its anchor (count, owner).
// (3) resolve_kernel, one thread per (image, anchor): simota_resolve (conflicts go to the GT of
//     lowest cost), outputs, and num_fg by an integer atomicAdd (deterministic).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <math_constants.h>

#include <climits>
#include <tuple>
#include <type_traits>

#include "common/cuda_helpers.h"
#include "ops/simota.h"

namespace fastdet {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kSelectThreads = 128;
constexpr int kSelectWarps = kSelectThreads / 32;

template <typename T>
__global__ void candidates_kernel(SimotaParams p, SimotaInputs<T> in, uint8_t* __restrict__ cand,
                                  double* __restrict__ cls_sum) {
  using acc_t = at::opmath_type<T>;
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  const acc_t radius = static_cast<acc_t>(p.center_radius);
  const int64_t total = p.batch * p.anchors;
  // The loop index is warp-uniform, so the warp votes below see every lane.
  for (int64_t ba = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; ba < total; ba += warps) {
    const int64_t b = ba / p.anchors, a = ba % p.anchors;
    const SimotaAnchor<acc_t> an = load_prior<acc_t>(in.priors, a);
    bool any = false;
    for (int64_t g = lane; g < p.gts && !any; g += 32) {
      const int64_t bg = b * p.gts + g;
      any = simota_gt_valid(in.mask, in.labels, bg, p.classes) &&
            simota_candidate_of(load_box<acc_t>(in.gt_boxes, bg), an, radius, p.center_only);
    }
    any = __any_sync(kFullMask, any);
    double sum = 0;
    if (any) {
      const T* row = in.scores + ba * p.classes;
      for (int64_t k = lane; k < p.classes; k += 32) sum += simota_neg_log1m(static_cast<acc_t>(row[k]));
      for (int off = 16; off > 0; off >>= 1) sum += __shfl_down_sync(kFullMask, sum, off);
    }
    if (lane == 0) {
      cand[ba] = any ? 1 : 0;
      cls_sum[ba] = any ? sum : 0.0;
    }
  }
}

// Block-wide minimum of (key, idx) pairs (simota_less order); every thread gets the result.
__device__ void block_argmin(double& key, int32_t& idx, double* s_key, int32_t* s_idx) {
  for (int off = 16; off > 0; off >>= 1) {
    const double k = __shfl_down_sync(kFullMask, key, off);
    const int32_t i = __shfl_down_sync(kFullMask, idx, off);
    if (simota_less(k, i, key, idx)) {
      key = k;
      idx = i;
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    s_key[warp] = key;
    s_idx[warp] = idx;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kSelectWarps; ++w) {
      if (simota_less(s_key[w], s_idx[w], s_key[0], s_idx[0])) {
        s_key[0] = s_key[w];
        s_idx[0] = s_idx[w];
      }
    }
  }
  __syncthreads();
  key = s_key[0];
  idx = s_idx[0];
  __syncthreads();  // s_key / s_idx are reused by the next call
}

__device__ int64_t block_sum(int64_t v, int64_t* s_sum) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(kFullMask, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) s_sum[warp] = v;
  __syncthreads();
  int64_t total = 0;
  for (int w = 0; w < kSelectWarps; ++w) total += s_sum[w];
  __syncthreads();
  return total;
}

// Pops the heads of every thread's sorted list in global (key, idx) order: `rounds` block argmins.
// Returns the popped pairs through `visit(key, idx)` (called by every thread, same values).
template <typename Visit>
__device__ void merge_heads(const SimotaSmallest& list, int64_t rounds, double* s_key, int32_t* s_idx, Visit visit) {
  int head = 0;
  for (int64_t r = 0; r < rounds; ++r) {
    double key = head < list.len ? list.key[head] : CUDART_INF;
    int32_t idx = head < list.len ? list.idx[head] : INT_MAX;
    const int32_t mine = idx;
    block_argmin(key, idx, s_key, s_idx);
    if (head < list.len && mine == idx) ++head;  // anchors are unique to a thread
    visit(key, idx);
  }
}

template <typename T>
__global__ void __launch_bounds__(kSelectThreads)
    select_kernel(SimotaParams p, SimotaInputs<T> in, const uint8_t* __restrict__ cand,
                  const double* __restrict__ cls_sum, int32_t* __restrict__ count, int32_t* __restrict__ owner) {
  using acc_t = at::opmath_type<T>;
  __shared__ double s_key[kSelectWarps];
  __shared__ int32_t s_idx[kSelectWarps];
  __shared__ int64_t s_sum[kSelectWarps];
  const int K = static_cast<int>(p.topk);
  for (int64_t bg = blockIdx.x; bg < p.batch * p.gts; bg += gridDim.x) {  // block-uniform
    if (!simota_gt_valid(in.mask, in.labels, bg, p.classes)) continue;
    const int64_t b = bg / p.gts, g = bg % p.gts;
    const Box<acc_t> gt = load_box<acc_t>(in.gt_boxes, bg);
    SimotaSmallest top_iou, top_cost;  // top_iou holds -IoU
    int64_t n = 0;
    for (int64_t a = threadIdx.x; a < p.anchors; a += blockDim.x) {
      if (!cand[b * p.anchors + a]) continue;
      ++n;
      acc_t iou;
      double c;
      simota_pair<acc_t>(p, in, cls_sum, b, a, gt, in.labels[bg], iou, c);
      top_iou.push(-static_cast<double>(iou), static_cast<int32_t>(a), K);
      top_cost.push(c, static_cast<int32_t>(a), K);
    }
    const int64_t num_cand = block_sum(n, s_sum);
    if (num_cand == 0) continue;
    double iou_sum = 0;
    merge_heads(top_iou, num_cand < K ? num_cand : K, s_key, s_idx,
                [&](double key, int32_t) { iou_sum += -key; });
    const int64_t k = simota_dynamic_k(iou_sum, num_cand);
    merge_heads(top_cost, k, s_key, s_idx, [&](double, int32_t a) {
      if (threadIdx.x == 0) {
        atomicAdd(count + b * p.anchors + a, 1);
        atomicExch(owner + b * p.anchors + a, static_cast<int32_t>(g));
      }
    });
  }
}

template <typename T>
__global__ void resolve_kernel(SimotaParams p, SimotaInputs<T> in, const double* __restrict__ cls_sum,
                               const int32_t* __restrict__ count,
                               const int32_t* __restrict__ owner, int64_t* __restrict__ out_gt,
                               int64_t* __restrict__ out_label, T* __restrict__ out_iou,
                               unsigned long long* __restrict__ num_fg) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(ba, p.batch * p.anchors) {
    const int64_t b = ba / p.anchors, a = ba % p.anchors;
    acc_t iou;
    const int64_t g = simota_resolve<acc_t>(p, in, cls_sum, b, a, count[ba], owner[ba], iou);
    out_gt[ba] = g;
    out_label[ba] = g >= 0 ? in.labels[b * p.gts + g] : -1;
    out_iou[ba] = static_cast<T>(iou);
    if (g >= 0) atomicAdd(num_fg + b, 1ULL);
  }
}

template <typename T, typename out_t>
__global__ void cost_kernel(SimotaParams p, SimotaInputs<T> in, const uint8_t* __restrict__ cand,
                            const double* __restrict__ cls_sum, out_t* __restrict__ out) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(i, p.batch * p.gts * p.anchors) {
    const int64_t bg = i / p.anchors, a = i % p.anchors, b = bg / p.gts;
    if (!simota_gt_valid(in.mask, in.labels, bg, p.classes) || !cand[b * p.anchors + a]) {
      out[i] = static_cast<out_t>(CUDART_INF);
      continue;
    }
    acc_t iou;
    double c;
    simota_pair<acc_t>(p, in, cls_sum, b, a, load_box<acc_t>(in.gt_boxes, bg), in.labels[bg], iou, c);
    out[i] = static_cast<out_t>(c);
  }
}

template <typename T>
void launch_candidates(const SimotaProblem& s, at::Tensor& cand, at::Tensor& cls_sum, cudaStream_t stream) {
  const SimotaParams& p = s.p;
  candidates_kernel<T><<<grid_for(p.batch * p.anchors * 32), kThreadsPerBlock, 0, stream>>>(
      p, simota_inputs<T>(s), cand.data_ptr<uint8_t>(), cls_sum.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor simota_cost_cuda(const at::Tensor& pred_scores, const at::Tensor& pred_boxes, const at::Tensor& priors,
                            const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_mask,
                            double center_radius, double iou_weight, double cls_weight, bool center_only,
                            double outside_cost) {
  const SimotaProblem s = prepare_simota("simota_cost", pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask,
                                         center_radius, 1, iou_weight, cls_weight, center_only, outside_cost);
  const c10::cuda::CUDAGuard guard(pred_scores.device());
  const SimotaParams& p = s.p;
  at::Tensor cost = at::empty({p.batch, p.gts, p.anchors}, pred_scores.options().dtype(simota_cost_dtype(pred_scores)));
  if (cost.numel() == 0) return cost;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor cand = at::empty({p.batch * p.anchors}, pred_scores.options().dtype(at::kByte));
  at::Tensor cls_sum = at::empty({p.batch * p.anchors}, pred_scores.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred_scores.scalar_type(), "simota_cost_cuda", [&] {
    using out_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    launch_candidates<scalar_t>(s, cand, cls_sum, stream);
    cost_kernel<scalar_t, out_t><<<grid_for(cost.numel()), kThreadsPerBlock, 0, stream>>>(
        p, simota_inputs<scalar_t>(s), cand.const_data_ptr<uint8_t>(), cls_sum.const_data_ptr<double>(),
        cost.data_ptr<out_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return cost;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> simota_assign_cuda(
    const at::Tensor& pred_scores, const at::Tensor& pred_boxes, const at::Tensor& priors, const at::Tensor& gt_boxes,
    const at::Tensor& gt_labels, const at::Tensor& gt_mask, double center_radius, int64_t candidate_topk,
    double iou_weight, double cls_weight, bool center_only, double outside_cost) {
  const SimotaProblem s = prepare_simota("simota_assign", pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask,
                                         center_radius, candidate_topk, iou_weight, cls_weight, center_only,
                                         outside_cost);
  const c10::cuda::CUDAGuard guard(pred_scores.device());
  const SimotaParams& p = s.p;
  const int64_t B = p.batch, A = p.anchors;
  const auto long_opts = pred_scores.options().dtype(at::kLong);
  if (B == 0 || A == 0 || p.gts == 0) {
    return {at::full({B, A}, -1, long_opts), at::full({B, A}, -1, long_opts), at::zeros({B, A}, pred_scores.options()),
            at::zeros({B}, long_opts)};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor assigned_gt = at::empty({B, A}, long_opts);
  at::Tensor assigned_labels = at::empty({B, A}, long_opts);
  at::Tensor assigned_ious = at::empty({B, A}, pred_scores.options());
  at::Tensor num_fg = at::zeros({B}, long_opts);
  at::Tensor cand = at::empty({B * A}, pred_scores.options().dtype(at::kByte));
  at::Tensor cls_sum = at::empty({B * A}, pred_scores.options().dtype(at::kDouble));
  at::Tensor claims = at::zeros({2, B * A}, pred_scores.options().dtype(at::kInt));  // count, owner
  int32_t* count = claims.data_ptr<int32_t>();
  int32_t* owner = count + B * A;
  static_assert(sizeof(unsigned long long) == sizeof(int64_t), "num_fg is counted as unsigned long long");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred_scores.scalar_type(), "simota_assign_cuda", [&] {
    launch_candidates<scalar_t>(s, cand, cls_sum, stream);
    const SimotaInputs<scalar_t> in = simota_inputs<scalar_t>(s);
    const unsigned int select_grid = static_cast<unsigned int>(std::min<int64_t>(B * p.gts, 1 << 20));
    select_kernel<scalar_t><<<select_grid, kSelectThreads, 0, stream>>>(
        p, in, cand.const_data_ptr<uint8_t>(), cls_sum.const_data_ptr<double>(), count, owner);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    resolve_kernel<scalar_t><<<grid_for(B * A), kThreadsPerBlock, 0, stream>>>(
        p, in, cls_sum.const_data_ptr<double>(), count, owner,
        assigned_gt.data_ptr<int64_t>(), assigned_labels.data_ptr<int64_t>(), assigned_ious.data_ptr<scalar_t>(),
        reinterpret_cast<unsigned long long*>(num_fg.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {assigned_gt, assigned_labels, assigned_ious, num_fg};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CUDA, m) {
  m.impl("simota_cost", &simota_cost_cuda);
  m.impl("simota_assign", &simota_assign_cuda);
}

}  // namespace fastdet
