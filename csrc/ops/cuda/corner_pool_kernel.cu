// CUDA kernels of fastdet::corner_pool and fastdet::corner_pool_sum: one pass, no flips, no index
// tensor; ties and NaN follow torch.cummax (cummax_takes in ops/corner_pool.h).
//
// Vertical (top/bottom): one thread per (plane, column) walks the rows in scan order; a warp's
//   loads and stores of one row are 32 adjacent columns (coalesced across W).
// Horizontal (left/right): a block owns kRows rows and walks them in 32-column chunks in scan
//   order; each chunk is staged through a shared-memory tile (loaded and stored by warps along
//   the row, coalesced), and thread t scans row t of the tile sequentially, carrying the running
//   max (and, backward, the argmax and the run's gradient) from chunk to chunk in registers. The
//   sequential scan gives the same accumulation order as the CPU kernel.
// Backward: the gradient of a run of outputs sharing one argmax is accumulated in the math type
//   and flushed to the argmax when it changes; other positions get 0 as the scan passes them. A
//   flush into an earlier chunk (already stored, then __syncthreads) writes global memory directly.
// corner_pool_sum: the vertical kernel writes pool(a) to out, then the horizontal kernel adds
//   pool(b) to the staged out tile (out = T(float(V) + float(H)), the reference's rounding).
// NB: that is 5 passes of traffic instead of the minimal 3; a single-kernel form would need
//   per-plane tiles that do not fit shared memory for large planes.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/cuda_helpers.h"
#include "ops/corner_pool.h"

namespace fastdet {
namespace {

// ---- vertical -------------------------------------------------------------------------------------

template <typename T>
__global__ void vpool_forward_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t planes, int64_t h,
                                     int64_t w, bool backwards) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(idx, planes * w) {
    const int64_t j = idx % w, p = idx / w;
    const T* x = in + p * h * w + j;
    T* o = out + p * h * w + j;
    const int64_t first = backwards ? h - 1 : 0, step = backwards ? -1 : 1;
    T best = x[first * w];
    o[first * w] = best;
    for (int64_t k = 1; k < h; ++k) {
      const int64_t r = first + k * step;
      const T v = x[r * w];
      if (cummax_takes<acc_t>(static_cast<acc_t>(v), static_cast<acc_t>(best))) best = v;
      o[r * w] = best;
    }
  }
}

template <typename T>
__global__ void vpool_backward_kernel(const T* __restrict__ g, const T* __restrict__ in, T* __restrict__ gi,
                                      int64_t planes, int64_t h, int64_t w, bool backwards) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(idx, planes * w) {
    const int64_t j = idx % w, p = idx / w;
    const int64_t off = p * h * w + j;
    const int64_t first = backwards ? h - 1 : 0, step = backwards ? -1 : 1;
    acc_t best = static_cast<acc_t>(in[off + first * w]);
    acc_t acc = static_cast<acc_t>(g[off + first * w]);
    int64_t arg = first;
    for (int64_t k = 1; k < h; ++k) {
      const int64_t r = first + k * step;
      const acc_t v = static_cast<acc_t>(in[off + r * w]);
      gi[off + r * w] = T(0);
      if (cummax_takes(v, best)) {
        gi[off + arg * w] = static_cast<T>(acc);
        best = v, arg = r, acc = static_cast<acc_t>(g[off + r * w]);
      } else {
        acc += static_cast<acc_t>(g[off + r * w]);
      }
    }
    gi[off + arg * w] = static_cast<T>(acc);
  }
}

// ---- horizontal (shared-memory tiles) -------------------------------------------------------------

constexpr int kChunk = 32;
enum class HKind { kForward, kForwardAdd, kBackward };

template <typename T>
constexpr int rows_per_block() { return sizeof(T) == 8 ? 64 : 128; }  // two tiles stay under 48 KiB

// kForward:    in -> out = hpool(in)
// kForwardAdd: in, out -> out = out + hpool(in)
// kBackward:   in (input), g (grad) -> out = grad_input
template <typename T, HKind K>
__global__ void __launch_bounds__(rows_per_block<T>()) hpool_tile_kernel(
    const T* __restrict__ in, const T* __restrict__ g, T* __restrict__ out, int64_t rows, int64_t w, bool backwards) {
  using acc_t = at::opmath_type<T>;
  constexpr int R = rows_per_block<T>();
  constexpr int kWarps = R / 32;
  __shared__ T tin[R][kChunk + 1];
  __shared__ T tio[R][kChunk + 1];  // out tile (kForwardAdd: loaded out; kBackward: grad in, grad_input out)
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  const int64_t nchunks = (w + kChunk - 1) / kChunk;
  const int64_t nblocks = (rows + R - 1) / R;
  // scan position s (0 = first visited) -> column
  auto col_of = [&](int64_t s) { return backwards ? w - 1 - s : s; };
  for (int64_t rb = blockIdx.x; rb < nblocks; rb += gridDim.x) {
    const int64_t row0 = rb * R;
    const int64_t my_row = row0 + t;
    T best_t = T(0);
    acc_t best = 0, acc = 0;
    int64_t arg = 0;
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      const int64_t s0 = ch * kChunk;
      const int n = static_cast<int>(w - s0 < kChunk ? w - s0 : kChunk);
      for (int i = warp; i < R; i += kWarps) {  // coalesced load: a warp reads one row's chunk
        const int64_t row = row0 + i;
        if (row < rows && lane < n) {
          const int64_t e = row * w + col_of(s0 + lane);
          tin[i][lane] = in[e];
          if (K == HKind::kForwardAdd) tio[i][lane] = out[e];
          if (K == HKind::kBackward) tio[i][lane] = g[e];
        }
      }
      __syncthreads();
      if (my_row < rows) {
        for (int k = 0; k < n; ++k) {
          const int64_t s = s0 + k;
          const T x = tin[t][k];
          const acc_t v = static_cast<acc_t>(x);
          if (K == HKind::kBackward) {
            const acc_t gv = static_cast<acc_t>(tio[t][k]);
            tio[t][k] = T(0);
            if (s == 0 || cummax_takes(v, best)) {
              if (s != 0) {  // flush the finished run to its argmax
                if (arg >= s0) tio[t][arg - s0] = static_cast<T>(acc);
                else out[my_row * w + col_of(arg)] = static_cast<T>(acc);
              }
              best = v, arg = s, acc = gv;
            } else {
              acc += gv;
            }
          } else {
            if (s == 0 || cummax_takes(v, best)) best = v, best_t = x;
            if (K == HKind::kForward) tin[t][k] = best_t;
            else tio[t][k] = static_cast<T>(static_cast<acc_t>(tio[t][k]) + best);
          }
        }
        if (K == HKind::kBackward && ch == nchunks - 1) {
          if (arg >= s0) tio[t][arg - s0] = static_cast<T>(acc);
          else out[my_row * w + col_of(arg)] = static_cast<T>(acc);
        }
      }
      __syncthreads();
      for (int i = warp; i < R; i += kWarps) {  // coalesced store
        const int64_t row = row0 + i;
        if (row < rows && lane < n) out[row * w + col_of(s0 + lane)] = K == HKind::kForward ? tin[i][lane] : tio[i][lane];
      }
      __syncthreads();
    }
  }
}

template <typename T, HKind K>
void launch_hpool(const T* in, const T* g, T* out, int64_t rows, int64_t w, bool backwards, cudaStream_t stream) {
  constexpr int R = rows_per_block<T>();
  hpool_tile_kernel<T, K><<<grid_for(rows, R), R, 0, stream>>>(in, g, out, rows, w, backwards);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- host entries ---------------------------------------------------------------------------------

at::Tensor corner_pool_cuda(const at::Tensor& input, c10::string_view mode) {
  const char* op = "corner_pool";
  const PoolDir dir = parse_pool_mode(mode, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = prepare_pool_input(input, op, "input");
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t planes = x.size(0) * x.size(1), h = x.size(2), w = x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "corner_pool_cuda", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    if (is_vertical(dir)) {
      vpool_forward_kernel<scalar_t><<<grid_for(planes * w), kThreadsPerBlock, 0, stream>>>(in, o, planes, h, w,
                                                                                          scans_backwards(dir));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      launch_hpool<scalar_t, HKind::kForward>(in, nullptr, o, planes * h, w, scans_backwards(dir), stream);
    }
  });
  return out;
}

at::Tensor corner_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& input, c10::string_view mode) {
  const char* op = "_corner_pool_backward";
  const PoolDir dir = parse_pool_mode(mode, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = prepare_pool_input(input, op, "input");
  const at::Tensor gr = prepare_pool_grad(grad, x, op);
  at::Tensor gi = at::empty_like(x);
  if (gi.numel() == 0) return gi;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t planes = x.size(0) * x.size(1), h = x.size(2), w = x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "corner_pool_backward_cuda", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    const scalar_t* g = gr.const_data_ptr<scalar_t>();
    scalar_t* o = gi.data_ptr<scalar_t>();
    if (is_vertical(dir)) {
      vpool_backward_kernel<scalar_t><<<grid_for(planes * w), kThreadsPerBlock, 0, stream>>>(g, in, o, planes, h, w,
                                                                                            scans_backwards(dir));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      launch_hpool<scalar_t, HKind::kBackward>(in, g, o, planes * h, w, scans_backwards(dir), stream);
    }
  });
  return gi;
}

at::Tensor corner_pool_sum_cuda(const at::Tensor& a, const at::Tensor& b, c10::string_view corner) {
  const SumInputs s = prepare_sum(a, b, corner, "corner_pool_sum");  // device check before the guard
  const c10::cuda::CUDAGuard guard(s.a.device());
  at::Tensor out = at::empty_like(s.a);
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t planes = s.a.size(0) * s.a.size(1), h = s.a.size(2), w = s.a.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.a.scalar_type(), "corner_pool_sum_cuda", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    vpool_forward_kernel<scalar_t><<<grid_for(planes * w), kThreadsPerBlock, 0, stream>>>(
        s.a.const_data_ptr<scalar_t>(), o, planes, h, w, scans_backwards(s.vdir));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_hpool<scalar_t, HKind::kForwardAdd>(s.b.const_data_ptr<scalar_t>(), nullptr, o, planes * h, w,
                                               scans_backwards(s.hdir), stream);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> corner_pool_sum_backward_cuda(const at::Tensor& grad, const at::Tensor& a,
                                                                 const at::Tensor& b, c10::string_view corner) {
  const char* op = "_corner_pool_sum_backward";
  const SumInputs s = prepare_sum(a, b, corner, op);
  const c10::cuda::CUDAGuard guard(s.a.device());
  const at::Tensor gr = prepare_pool_grad(grad, s.a, op);
  at::Tensor ga = at::empty_like(s.a), gb = at::empty_like(s.b);
  if (gr.numel() == 0) return {ga, gb};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t planes = s.a.size(0) * s.a.size(1), h = s.a.size(2), w = s.a.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.a.scalar_type(), "corner_pool_sum_backward_cuda", [&] {
    const scalar_t* g = gr.const_data_ptr<scalar_t>();
    vpool_backward_kernel<scalar_t><<<grid_for(planes * w), kThreadsPerBlock, 0, stream>>>(
        g, s.a.const_data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(), planes, h, w, scans_backwards(s.vdir));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_hpool<scalar_t, HKind::kBackward>(s.b.const_data_ptr<scalar_t>(), g, gb.data_ptr<scalar_t>(), planes * h, w,
                                             scans_backwards(s.hdir), stream);
  });
  return {ga, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CUDA, m) {
  m.impl("corner_pool", &corner_pool_cuda);
  m.impl("_corner_pool_backward", &corner_pool_backward_cuda);
  m.impl("corner_pool_sum", &corner_pool_sum_cuda);
  m.impl("_corner_pool_sum_backward", &corner_pool_sum_backward_cuda);
}

}  // namespace fastdet
