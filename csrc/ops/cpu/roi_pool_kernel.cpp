// CPU kernels of fastdet::roi_pool (torchvision's CPU kernel is single-threaded, NCHW, scalar).
//
// Forward: the bins of a RoI do not depend on the channel, so the work runs on channels-last
// features [N, H, W, C]: a channels-last fp32/fp64 input is read in place, any other input is
// copied once to channels-last in the math type. Per (RoI, bin) the running maximum and its index
// are vector loops over the C contiguous channels of each pixel of the bin. RoIs run in parallel.
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

// Folds pixel `idx` (its C contiguous channel values v) into the running maximum (best, arg).
// Branch-free integer masks so that GCC vectorises the loop over channels.
template <typename acc_t, typename X>
void fold_pixel(const X* __restrict__ v, acc_t* __restrict__ best, int32_t* __restrict__ arg, int64_t c_n,
                int32_t idx) {
  for (int64_t c = 0; c < c_n; ++c) {
    const acc_t x = static_cast<acc_t>(v[c]);
    const acc_t b = best[c];
    // Larger, or the first NaN (a NaN best is never replaced: nothing compares greater).
    const int32_t take = static_cast<int32_t>(x > b) | (static_cast<int32_t>(x != x) & static_cast<int32_t>(b == b));
    best[c] = take ? x : b;
    arg[c] = take ? idx : arg[c];
  }
}

// x: channels-last features [N, H, W, C] of element type X (T itself or the math type).
template <typename T, typename X>
void roi_pool_forward_impl(const RoiPoolProblem& p, const X* x, T* out, int32_t* argmax) {
  using acc_t = at::opmath_type<T>;
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
          const X* first = img + (h0 * w + w0) * c_n;
          for (int64_t c = 0; c < c_n; ++c) best[c] = static_cast<acc_t>(first[c]);
          std::fill(arg.begin(), arg.end(), static_cast<int32_t>(h0 * w + w0));
          for (int64_t y = h0; y < h1; ++y) {
            for (int64_t xx = (y == h0 ? w0 + 1 : w0); xx < w1; ++xx) {
              fold_pixel(img + (y * w + xx) * c_n, best.data(), arg.data(), c_n, static_cast<int32_t>(y * w + xx));
            }
          }
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
