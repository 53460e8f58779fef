// CPU kernels of fastdet::roi_pool (torchvision's CPU kernel is single-threaded, NCHW, scalar).
//
// Forward: the bins of a RoI do not depend on the channel, so the work runs on channels-last
// features [N, H, W, C]: a channels-last fp32/fp64 input is read in place, any other input is
// copied once to channels-last in the math type. Per (RoI, bin) the running maximum and its index
// are vector loops over the C contiguous channels of each pixel of the bin, in blocks of 16
// channels whose accumulators stay in registers across the bin's pixels. RoIs run in parallel.
// Max rule: the first maximum in row-major order wins; a NaN wins over numbers (the first NaN),
// as torch.max. An empty bin gives 0 and argmax -1 (no gradient).
// Backward: grad_input[b, c, :, :] collects the gradients of every RoI of image b in channel c,
// so tasks own blocks of 16 channels (one 64-byte line of a channels-last fp32 row: no false
// sharing) and walk the RoIs in index order: deterministic, no atomics, bounds-checked indices.
// Half inputs are compared in fp32 (exact) and accumulate gradients in fp32, rounded once.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "ops/roi_pool.h"

namespace fastdet {
namespace {

// The maximum of channels [0, width) (width = kWidth, or the runtime `n` when kWidth == 0) over
// the pixels [h0, h1) x [w0, w1) of channels-last features `img` (row stride w * c_n, pixel
// stride c_n), and the index y * w + x of its first occurrence in row-major order. With a fixed
// kWidth the accumulators stay in vector registers across the pixel loop (one load per value).
// Larger wins, or the first NaN (a NaN maximum is never replaced: nothing compares greater).
// Branch-free integer masks so that GCC vectorises the channel loop.
template <int64_t kWidth, typename acc_t, typename X>
void bin_max(const X* __restrict__ img, int64_t w, int64_t c_n, int64_t h0, int64_t h1, int64_t w0, int64_t w1,
             int64_t n, acc_t* __restrict__ best_out, int32_t* __restrict__ arg_out) {
  constexpr int64_t kBuf = kWidth > 0 ? kWidth : 1;
  acc_t best_fixed[kBuf];
  int32_t arg_fixed[kBuf];
  const int64_t width = kWidth > 0 ? kWidth : n;
  acc_t* best = kWidth > 0 ? best_fixed : best_out;
  int32_t* arg = kWidth > 0 ? arg_fixed : arg_out;
  const X* first = img + (h0 * w + w0) * c_n;
  for (int64_t c = 0; c < width; ++c) {
    best[c] = static_cast<acc_t>(first[c]);
    arg[c] = static_cast<int32_t>(h0 * w + w0);
  }
  for (int64_t y = h0; y < h1; ++y) {
    for (int64_t x = (y == h0 ? w0 + 1 : w0); x < w1; ++x) {
      const X* v = img + (y * w + x) * c_n;
      const int32_t idx = static_cast<int32_t>(y * w + x);
      for (int64_t c = 0; c < width; ++c) {
        const acc_t val = static_cast<acc_t>(v[c]);
        const acc_t b = best[c];
        const int32_t take =
            static_cast<int32_t>(val > b) | (static_cast<int32_t>(val != val) & static_cast<int32_t>(b == b));
        best[c] = take ? val : b;
        arg[c] = take ? idx : arg[c];
      }
    }
  }
  if (kWidth > 0) {
    for (int64_t c = 0; c < width; ++c) {
      best_out[c] = best[c];
      arg_out[c] = arg[c];
    }
  }
}

// x: channels-last features [N, H, W, C] of element type X (T itself or the math type).
template <typename T, typename X>
void roi_pool_forward_impl(const RoiPoolProblem& p, const X* x, T* out, int32_t* argmax) {
  using acc_t = at::opmath_type<T>;
  // 16 floats = 4 SSE registers of maxima + 4 of indices (8 doubles: 4 + 2).
  constexpr int64_t kBlock = sizeof(acc_t) == 4 ? 16 : 8;
  const T* rois = p.rois.const_data_ptr<T>();
  const int64_t c_n = p.c, h = p.h, w = p.w, ph_n = p.ph, pw_n = p.pw, bins = p.ph * p.pw;
  const acc_t scale = static_cast<acc_t>(p.spatial_scale);
  at::parallel_for(0, p.k, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> best(c_n);
    std::vector<int32_t> arg(c_n);
    for (int64_t k = begin; k < end; ++k) {
      const RoiPoolBox<acc_t> box = roi_pool_box<acc_t>(rois, k, scale, p.n, ph_n, pw_n);
      T* o = out + k * c_n * bins;
      int32_t* a = argmax + k * c_n * bins;
      for (int64_t ph = 0; ph < ph_n; ++ph) {
        int64_t h0, h1;
        roi_pool_bin(ph, box.bin_h, box.start_h, h, h0, h1);
        for (int64_t pw = 0; pw < pw_n; ++pw) {
          int64_t w0, w1;
          roi_pool_bin(pw, box.bin_w, box.start_w, w, w0, w1);
          const int64_t bin = ph * pw_n + pw;
          if (box.batch < 0 || h1 <= h0 || w1 <= w0) {
            for (int64_t c = 0; c < c_n; ++c) {
              o[c * bins + bin] = T(0);
              a[c * bins + bin] = -1;
            }
            continue;
          }
          const X* img = x + box.batch * h * w * c_n;
          // Blocks of kBlock channels with register accumulators, then the remainder.
          int64_t c0 = 0;
          for (; c0 + kBlock <= c_n; c0 += kBlock) {
            bin_max<kBlock>(img + c0, w, c_n, h0, h1, w0, w1, kBlock, best.data() + c0, arg.data() + c0);
          }
          if (c0 < c_n) bin_max<0>(img + c0, w, c_n, h0, h1, w0, w1, c_n - c0, best.data() + c0, arg.data() + c0);
          for (int64_t c = 0; c < c_n; ++c) {
            o[c * bins + bin] = static_cast<T>(best[c]);
            a[c * bins + bin] = arg[c];
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> roi_pool_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                                int64_t pooled_h, int64_t pooled_w) {
  const RoiPoolProblem p = prepare_roi_pool(input, rois, spatial_scale, pooled_h, pooled_w);
  at::Tensor out = at::empty({p.k, p.c, p.ph, p.pw}, input.options());
  at::Tensor argmax = at::empty({p.k, p.c, p.ph, p.pw}, input.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (p.channels_last && std::is_same_v<acc_t, scalar_t>) {
      roi_pool_forward_impl<scalar_t>(p, p.input.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                      argmax.data_ptr<int32_t>());
    } else if (p.h * p.w > 0) {
      // One pass over the input: channels-last in the math type.
      const at::Tensor xt = p.input.to(c10::CppTypeToScalarType<acc_t>::value)
                                .contiguous(at::MemoryFormat::ChannelsLast);
      roi_pool_forward_impl<scalar_t>(p, xt.const_data_ptr<acc_t>(), out.data_ptr<scalar_t>(),
                                      argmax.data_ptr<int32_t>());
    } else {  // an empty map: every bin is empty, nothing is read
      roi_pool_forward_impl<scalar_t>(p, static_cast<const acc_t*>(nullptr), out.data_ptr<scalar_t>(),
                                      argmax.data_ptr<int32_t>());
    }
  });
  return {out, argmax};
}

// grad_input (math type, NCHW or channels-last per p.channels_last) += the gradient of each bin at
// its argmax. Task = a block of channels; RoIs in index order, then bins: a fixed summation order.
template <typename T>
void roi_pool_backward_impl(const RoiPoolProblem& p, const T* g, const int32_t* argmax,
                            at::opmath_type<T>* gi) {
  using acc_t = at::opmath_type<T>;
  constexpr int64_t kBlock = 16;
  const T* rois = p.rois.const_data_ptr<T>();
  const int64_t c_n = p.c, hw = p.h * p.w, bins = p.ph * p.pw, n = p.n;
  const bool cl = p.channels_last;
  at::parallel_for(0, (c_n + kBlock - 1) / kBlock, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * kBlock, c1 = std::min(c_n, c0 + kBlock);
      for (int64_t k = 0; k < p.k; ++k) {
        const acc_t bi = static_cast<acc_t>(rois[5 * k]);
        if (!(bi >= acc_t(0) && bi < acc_t(n))) continue;  // bad (or NaN) index: no gradient
        const int64_t b = static_cast<int64_t>(bi);
        for (int64_t c = c0; c < c1; ++c) {
          const T* gr = g + (k * c_n + c) * bins;
          const int32_t* ar = argmax + (k * c_n + c) * bins;
          acc_t* base = cl ? gi + b * hw * c_n + c : gi + (b * c_n + c) * hw;
          const int64_t stride = cl ? c_n : 1;
          for (int64_t bin = 0; bin < bins; ++bin) {
            const int64_t a = ar[bin];
            if (a < 0 || a >= hw) continue;  // empty bin (or a foreign index): no gradient
            base[a * stride] += static_cast<acc_t>(gr[bin]);
          }
        }
      }
    }
  });
}

at::Tensor roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                 double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                 int64_t channels, int64_t height, int64_t width, bool channels_last) {
  const RoiPoolProblem p = prepare_roi_pool_backward(grad, rois, argmax, spatial_scale, pooled_h, pooled_w,
                                                     batch_size, channels, height, width, channels_last);
  const at::ScalarType dtype = grad.scalar_type();
  const at::ScalarType acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor grad_input =
      at::empty({p.n, p.c, p.h, p.w}, grad.options().dtype(acc_dtype).memory_format(format)).zero_();
  if (grad.numel() > 0 && grad_input.numel() > 0) {
    const at::Tensor g = grad.contiguous();
    const at::Tensor a = argmax.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "roi_pool_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      roi_pool_backward_impl<scalar_t>(p, g.const_data_ptr<scalar_t>(), a.const_data_ptr<int32_t>(),
                                       grad_input.data_ptr<acc_t>());
    });
  }
  return grad_input.to(dtype);  // keeps the memory format
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CPU, m) {
  m.impl("roi_pool", &roi_pool_cpu);
  m.impl("_roi_pool_backward", &roi_pool_backward_cpu);
}

}  // namespace fastdet
