// CUDA kernels of fastdet::roi_pool.
//
// Forward: one thread per output element. NCHW input: threads in output order (k, c, ph, pw), so
// neighbouring threads read neighbouring bins of one plane. Channels-last input (read natively):
// threads in (k, ph, pw, c) order, c fastest, so a warp reads 32 contiguous channels of each
// pixel (coalesced); the output is still written as [K, C, PH, PW]. Values are compared in fp32
// for half inputs (exact); first maximum in row-major order wins, a NaN wins over numbers.
// Backward, default: one thread per output-gradient element adds it at its argmax with atomicAdd
// into an fp32 (fp64 for double) buffer: fast, but the summation order (last bits) varies.
// Backward, torch.are_deterministic_algorithms_enabled(): a gather. The RoIs are grouped per
// image by a stable sort of their batch indices (a CSR on the device, no host sync) and each
// RoI's covered region is tabulated; one warp per input pixel (b, h, w) walks the RoIs of image b
// in index order, skips those whose region misses the pixel, finds the bins whose window holds
// it (re-derived with the forward's bin rule), and its lanes (one channel each, striding by 32)
// add the gradients whose argmax is this pixel. Every grad_input element is
// written by one lane in a fixed order: bitwise reproducible. Extra memory: grad and argmax
// transposed to [K, PH, PW, C] (so the lanes' reads are coalesced), the sort and a [K, 4] table.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/cuda_helpers.h"
#include "common/segments.h"
#include "ops/roi_pool.h"

namespace fastdet {
namespace {

template <typename T, bool kChannelsLast>
__global__ void roi_pool_forward_kernel(const T* __restrict__ input, const T* __restrict__ rois, int64_t total,
                                        int64_t n, int64_t c_n, int64_t h, int64_t w, int64_t ph_n, int64_t pw_n,
                                        at::opmath_type<T> scale, T* __restrict__ out,
                                        int32_t* __restrict__ argmax) {
  using acc_t = at::opmath_type<T>;
  const int64_t bins = ph_n * pw_n;
  FASTDET_CUDA_KERNEL_LOOP(idx, total) {
    int64_t k, c, bin;
    if (kChannelsLast) {  // idx = (k * bins + bin) * C + c
      c = idx % c_n;
      bin = (idx / c_n) % bins;
      k = idx / (c_n * bins);
    } else {  // idx = (k * C + c) * bins + bin
      bin = idx % bins;
      c = (idx / bins) % c_n;
      k = idx / (bins * c_n);
    }
    const int64_t ph = bin / pw_n, pw = bin % pw_n;
    const RoiPoolBox<acc_t> box = roi_pool_box<acc_t>(rois, k, scale, n, ph_n, pw_n);
    int64_t h0, h1, w0, w1;
    roi_pool_bin(ph, box.bin_h, box.start_h, h, h0, h1);
    roi_pool_bin(pw, box.bin_w, box.start_w, w, w0, w1);
    acc_t best = acc_t(0);
    int32_t arg = -1;
    if (box.batch >= 0 && h1 > h0 && w1 > w0) {
      // Element (y, x) of plane (b, c) is at base[(y * W + x) * pix].
      const T* base = kChannelsLast ? input + box.batch * h * w * c_n + c : input + (box.batch * c_n + c) * h * w;
      const int64_t pix = kChannelsLast ? c_n : 1;
      best = static_cast<acc_t>(base[(h0 * w + w0) * pix]);
      arg = static_cast<int32_t>(h0 * w + w0);
      for (int64_t y = h0; y < h1; ++y) {
        for (int64_t x = w0; x < w1; ++x) {
          const acc_t v = static_cast<acc_t>(base[(y * w + x) * pix]);
          if (v > best || (v != v && best == best)) {
            best = v;
            arg = static_cast<int32_t>(y * w + x);
          }
        }
      }
    }
    const int64_t o = (k * c_n + c) * bins + bin;
    out[o] = static_cast<T>(best);
    argmax[o] = arg;
  }
}

std::tuple<at::Tensor, at::Tensor> roi_pool_cuda(const at::Tensor& input, const at::Tensor& rois,
                                                 double spatial_scale, int64_t pooled_h, int64_t pooled_w) {
  const RoiPoolProblem p = prepare_roi_pool(input, rois, spatial_scale, pooled_h, pooled_w);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty({p.k, p.c, p.ph, p.pw}, input.options());
  at::Tensor argmax = at::empty({p.k, p.c, p.ph, p.pw}, input.options().dtype(at::kInt));
  const int64_t total = out.numel();
  if (total == 0) return {out, argmax};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto launch = [&](auto kernel) {
      kernel<<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
          p.input.const_data_ptr<scalar_t>(), p.rois.const_data_ptr<scalar_t>(), total, p.n, p.c, p.h, p.w, p.ph,
          p.pw, static_cast<acc_t>(p.spatial_scale), out.data_ptr<scalar_t>(), argmax.data_ptr<int32_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (p.channels_last) {
      launch(roi_pool_forward_kernel<scalar_t, true>);
    } else {
      launch(roi_pool_forward_kernel<scalar_t, false>);
    }
  });
  return {out, argmax};
}

// Offset of grad_input element (b, c, y * W + x = hw) in NCHW or channels-last layout.
__device__ __forceinline__ int64_t grad_offset(bool cl, int64_t b, int64_t c, int64_t hw, int64_t c_n,
                                               int64_t plane) {
  return cl ? (b * plane + hw) * c_n + c : (b * c_n + c) * plane + hw;
}

template <typename T>
__global__ void roi_pool_backward_atomic_kernel(const T* __restrict__ grad, const int32_t* __restrict__ argmax,
                                                const T* __restrict__ rois, int64_t total, int64_t n, int64_t c_n,
                                                int64_t plane, int64_t bins, bool cl,
                                                at::opmath_type<T>* __restrict__ grad_input) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(idx, total) {  // idx = (k * C + c) * bins + bin
    const int64_t a = argmax[idx];
    if (a < 0 || a >= plane) continue;  // empty bin (or a foreign index): no gradient
    const int64_t k = idx / (c_n * bins), c = (idx / bins) % c_n;
    const acc_t bi = static_cast<acc_t>(rois[5 * k]);
    if (!(bi >= acc_t(0) && bi < acc_t(n))) continue;
    atomicAdd(grad_input + grad_offset(cl, static_cast<int64_t>(bi), c, a, c_n, plane),
              static_cast<acc_t>(grad[idx]));
  }
}

// Deterministic path, step 1: for the RoI at sorted position j, the region its bins cover,
// [y0, y1) x [x0, x1) (the bins of one axis cover [lo(0), hi(P - 1)) and only overlap their
// neighbours); empty for a RoI that pools nothing. Lets the gather skip most RoIs with 4 loads.
template <typename T>
__global__ void roi_pool_regions_kernel(const T* __restrict__ rois, const int64_t* __restrict__ order, int64_t k_n,
                                        int64_t n, int64_t h, int64_t w, int64_t ph_n, int64_t pw_n,
                                        at::opmath_type<T> scale, int32_t* __restrict__ regions) {
  using acc_t = at::opmath_type<T>;
  FASTDET_CUDA_KERNEL_LOOP(j, k_n) {
    const RoiPoolBox<acc_t> box = roi_pool_box<acc_t>(rois, order[j], scale, n, ph_n, pw_n);
    int64_t y0, y1, x0, x1, unused;
    roi_pool_bin(int64_t(0), box.bin_h, box.start_h, h, y0, unused);
    roi_pool_bin(ph_n - 1, box.bin_h, box.start_h, h, unused, y1);
    roi_pool_bin(int64_t(0), box.bin_w, box.start_w, w, x0, unused);
    roi_pool_bin(pw_n - 1, box.bin_w, box.start_w, w, unused, x1);
    if (box.batch < 0) y0 = y1 = x0 = x1 = 0;  // a NaN coordinate empties the RoI
    int32_t* r = regions + 4 * j;
    r[0] = static_cast<int32_t>(y0), r[1] = static_cast<int32_t>(y1);
    r[2] = static_cast<int32_t>(x0), r[3] = static_cast<int32_t>(x1);
  }
}

// Step 2, the gather: one warp per pixel (b, y, x); see the header comment.
// grad_t, argmax_t: [K, PH, PW, C]; order: RoI indices sorted by image (stable); offsets [N + 1].
template <typename T>
__global__ void roi_pool_backward_gather_kernel(const T* __restrict__ grad_t, const int32_t* __restrict__ argmax_t,
                                                const T* __restrict__ rois, const int64_t* __restrict__ order,
                                                const int64_t* __restrict__ offsets,
                                                const int32_t* __restrict__ regions, int64_t n, int64_t c_n,
                                                int64_t h, int64_t w, int64_t ph_n, int64_t pw_n,
                                                at::opmath_type<T> scale, bool cl,
                                                at::opmath_type<T>* __restrict__ grad_input) {
  using acc_t = at::opmath_type<T>;
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  const int64_t plane = h * w, pixels = n * plane;
  for (int64_t pix = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; pix < pixels;
       pix += warps) {
    const int64_t b = pix / plane, hw = pix % plane, y = hw / w, x = hw % w;
    for (int64_t j = offsets[b]; j < offsets[b + 1]; ++j) {  // uniform across the warp
      const int32_t* r = regions + 4 * j;
      if (y < r[0] || y >= r[1] || x < r[2] || x >= r[3]) continue;
      const int64_t k = order[j];
      const RoiPoolBox<acc_t> box = roi_pool_box<acc_t>(rois, k, scale, n, ph_n, pw_n);
      int64_t lo, hi;
      for (int64_t ph = 0; ph < ph_n; ++ph) {
        roi_pool_bin(ph, box.bin_h, box.start_h, h, lo, hi);
        if (y < lo || y >= hi) continue;
        for (int64_t pw = 0; pw < pw_n; ++pw) {
          roi_pool_bin(pw, box.bin_w, box.start_w, w, lo, hi);
          if (x < lo || x >= hi) continue;
          const int64_t row = ((k * ph_n + ph) * pw_n + pw) * c_n;
          for (int64_t c = lane; c < c_n; c += 32) {
            if (argmax_t[row + c] == hw) {
              grad_input[grad_offset(cl, b, c, hw, c_n, plane)] += static_cast<acc_t>(grad_t[row + c]);
            }
          }
        }
      }
    }
  }
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                  double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width, bool channels_last) {
  const RoiPoolProblem p = prepare_roi_pool_backward(grad, rois, argmax, spatial_scale, pooled_h, pooled_w,
                                                     batch_size, channels, height, width, channels_last);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::ScalarType dtype = grad.scalar_type();
  const at::ScalarType acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor grad_input =
      at::empty({p.n, p.c, p.h, p.w}, grad.options().dtype(acc_dtype).memory_format(format)).zero_();
  const int64_t total = grad.numel();
  if (total == 0 || grad_input.numel() == 0) return grad_input.to(dtype);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t plane = p.h * p.w, bins = p.ph * p.pw;
  if (!at::globalContext().deterministicAlgorithms()) {
    const at::Tensor g = grad.contiguous();
    const at::Tensor a = argmax.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "roi_pool_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      roi_pool_backward_atomic_kernel<scalar_t><<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), a.const_data_ptr<int32_t>(), p.rois.const_data_ptr<scalar_t>(), total, p.n,
          p.c, plane, bins, channels_last, grad_input.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return grad_input.to(dtype);
  }
  // Deterministic: CSR of RoIs per image (stable sort keeps RoI index order within an image).
  // Indices outside [0, N) (or NaN) sort outside every image's range and contribute nothing.
  const at::Tensor batch = p.rois.select(1, 0).to(at::kLong);
  const auto [order, offsets] = segments_by_key(batch, p.n);
  const at::Tensor g = grad.permute({0, 2, 3, 1}).contiguous();  // [K, PH, PW, C]
  const at::Tensor a = argmax.permute({0, 2, 3, 1}).contiguous();
  at::Tensor regions = at::empty({p.k, 4}, batch.options().dtype(at::kInt));
  const int64_t threads = p.n * plane * 32;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "roi_pool_backward_cuda_deterministic", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(p.spatial_scale);
    roi_pool_regions_kernel<scalar_t><<<grid_for(p.k), kThreadsPerBlock, 0, stream>>>(
        p.rois.const_data_ptr<scalar_t>(), order.const_data_ptr<int64_t>(), p.k, p.n, p.h, p.w, p.ph, p.pw, scale,
        regions.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    roi_pool_backward_gather_kernel<scalar_t><<<grid_for(threads), kThreadsPerBlock, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), a.const_data_ptr<int32_t>(), p.rois.const_data_ptr<scalar_t>(),
        order.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(), regions.const_data_ptr<int32_t>(), p.n,
        p.c, p.h, p.w, p.ph, p.pw, scale, channels_last, grad_input.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input.to(dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CUDA, m) {
  m.impl("roi_pool", &roi_pool_cuda);
  m.impl("_roi_pool_backward", &roi_pool_backward_cuda);
}

}  // namespace fastdet
