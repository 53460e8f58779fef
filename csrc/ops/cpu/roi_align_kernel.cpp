// CPU kernels of fastdet::roi_align and fastdet::multi_scale_roi_align (one set of kernels: the
// one-level op is a multi-level call with L = 1).
//
// The sample grid of a RoI is separable: sample (iy, ix) of bin (ph, pw) lies at
// (y[ph * grid_h + iy], x[pw * grid_w + ix]), so the bilinear support of every row and column is
// computed once per RoI (common/bilinear.h bilinear_axis), and a bin's corners are outer products.
// Forward: parallel over (RoI, block of channels); a bin's corner list is built once and reused
// across the block. NCHW reads each channel plane in turn; channels-last reads the 4 corners as
// contiguous channel vectors (the loop over channels vectorises).
// Backward: parallel over (level, image, block of channels): each task owns those gradient planes
// and walks the image's RoIs in index order, so the result is deterministic and independent of the
// thread count (no atomics, no racy accumulation).
// fp16/bf16 accumulate in fp32 (at::opmath_type) and are rounded once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/roi_align.h"

namespace fastdet {
namespace {

// The bilinear support of RoI g's sample rows and columns in a H x W plane.
template <typename S>
struct RoiAxes {
  std::vector<BilinearAxis<S>> y, x;  // [PH * grid_h], [PW * grid_w]

  void build(const RoiGeometry<S>& g, const RoiAlignParams& q, int64_t h, int64_t w) {
    y.resize(q.pooled_h * g.grid_h);
    x.resize(q.pooled_w * g.grid_w);
    for (int64_t ph = 0; ph < q.pooled_h; ++ph)
      for (int64_t i = 0; i < g.grid_h; ++i)
        y[ph * g.grid_h + i] = bilinear_axis(roi_sample_coord(g.start_h, g.bin_h, ph, i, g.grid_h), h);
    for (int64_t pw = 0; pw < q.pooled_w; ++pw)
      for (int64_t i = 0; i < g.grid_w; ++i)
        x[pw * g.grid_w + i] = bilinear_axis(roi_sample_coord(g.start_w, g.bin_w, pw, i, g.grid_w), w);
  }

  // The valid samples of bin (ph, pw) as corner offsets y * W + x and weights.
  void bin_corners(const RoiGeometry<S>& g, int64_t ph, int64_t pw, int64_t w,
                   std::vector<BilinearCorners<S>>& out) const {
    out.clear();
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const BilinearAxis<S>& ay = y[ph * g.grid_h + iy];
      if (!ay.valid) continue;
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const BilinearAxis<S>& ax = x[pw * g.grid_w + ix];
        if (!ax.valid) continue;
        out.push_back({ay.low * w + ax.low, ay.low * w + ax.high, ay.high * w + ax.low, ay.high * w + ax.high,
                       ay.w_low * ax.w_low, ay.w_low * ax.w_high, ay.w_high * ax.w_low, ay.w_high * ax.w_high,
                       true});
      }
    }
  }
};

int64_t channel_block(int64_t channels, bool channels_last) {
  return std::max<int64_t>(1, std::min<int64_t>(channels, channels_last ? 64 : 16));
}

// CL: the features are channels-last; CL_OUT: so is the output (NCHW features that were
// transposed for speed keep an NCHW output).
template <typename T, bool CL, bool CL_OUT = CL>
void forward_impl(const RoiAlignProblem& p, at::Tensor& out) {
  using acc_t = at::opmath_type<T>;
  const RoiAlignParams& q = p.params;
  const acc_t* rois = p.rois.const_data_ptr<acc_t>();
  T* o = out.data_ptr<T>();
  const int64_t c_n = q.channels, bins = q.bins(), cb = channel_block(c_n, CL);
  const int64_t blocks = (c_n + cb - 1) / cb;
  at::parallel_for(0, q.num_rois * blocks, 1, [&](int64_t begin, int64_t end) {
    RoiAxes<acc_t> axes;
    std::vector<BilinearCorners<acc_t>> corners;
    std::vector<acc_t> acc(cb);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t k = t / blocks, c0 = (t % blocks) * cb, c1 = std::min(c_n, c0 + cb);
      const RoiGeometry<acc_t> g = roi_geometry(rois, k, q);
      const int64_t h = q.height[g.level], w = q.width[g.level], hw = h * w;
      if (g.empty || hw == 0) {
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t b = 0; b < bins; ++b) o[CL ? (k * bins + b) * c_n + c : (k * c_n + c) * bins + b] = T(0);
        continue;
      }
      axes.build(g, q, h, w);
      const T* base = static_cast<const T*>(q.features[g.level]) + g.image * c_n * hw;
      for (int64_t ph = 0; ph < q.pooled_h; ++ph) {
        for (int64_t pw = 0; pw < q.pooled_w; ++pw) {
          const int64_t b = ph * q.pooled_w + pw;
          axes.bin_corners(g, ph, pw, w, corners);
          if constexpr (CL) {
            acc_t* __restrict__ a = acc.data();
            std::fill(acc.begin(), acc.end(), acc_t(0));
            for (const BilinearCorners<acc_t>& s : corners) {
              const T* __restrict__ v00 = base + s.o00 * c_n + c0;
              const T* __restrict__ v01 = base + s.o01 * c_n + c0;
              const T* __restrict__ v10 = base + s.o10 * c_n + c0;
              const T* __restrict__ v11 = base + s.o11 * c_n + c0;
              for (int64_t c = 0; c < c1 - c0; ++c)
                a[c] += s.w00 * static_cast<acc_t>(v00[c]) + s.w01 * static_cast<acc_t>(v01[c]) +
                        s.w10 * static_cast<acc_t>(v10[c]) + s.w11 * static_cast<acc_t>(v11[c]);
            }
            if constexpr (CL_OUT) {
              T* dst = o + (k * bins + b) * c_n + c0;
              for (int64_t c = 0; c < c1 - c0; ++c) dst[c] = static_cast<T>(a[c] / g.count);
            } else {
              for (int64_t c = c0; c < c1; ++c) o[(k * c_n + c) * bins + b] = static_cast<T>(a[c - c0] / g.count);
            }
          } else {
            for (int64_t c = c0; c < c1; ++c) {
              const T* plane = base + c * hw;
              acc_t a = 0;
              for (const BilinearCorners<acc_t>& s : corners) a += bilinear_sample(plane, s);
              o[(k * c_n + c) * bins + b] = static_cast<T>(a / g.count);
            }
          }
        }
      }
    }
  });
}

template <typename T, bool CL>
void backward_impl(const RoiAlignProblem& p, const at::Tensor& grad) {
  using acc_t = at::opmath_type<T>;
  const RoiAlignParams& q = p.params;
  const KeySegments seg = roi_segments(p);
  const int64_t* order = seg.order.const_data_ptr<int64_t>();
  const int64_t* offsets = seg.offsets.const_data_ptr<int64_t>();
  const acc_t* rois = p.rois.const_data_ptr<acc_t>();
  const T* gr = grad.const_data_ptr<T>();
  const int64_t c_n = q.channels, bins = q.bins(), cb = channel_block(c_n, CL);
  const int64_t blocks = (c_n + cb - 1) / cb, segments = q.num_levels * q.batch;
  at::parallel_for(0, segments * blocks, 1, [&](int64_t begin, int64_t end) {
    RoiAxes<acc_t> axes;
    std::vector<BilinearCorners<acc_t>> corners;
    std::vector<acc_t> gvec(cb);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t s = t / blocks, c0 = (t % blocks) * cb, c1 = std::min(c_n, c0 + cb);
      const int64_t level = s / q.batch, image = s % q.batch;
      const int64_t h = q.height[level], w = q.width[level], hw = h * w;
      if (hw == 0) continue;
      acc_t* base = static_cast<acc_t*>(q.grad_features[level]) + image * c_n * hw;
      for (int64_t r = offsets[s]; r < offsets[s + 1]; ++r) {
        const int64_t k = order[r];
        const RoiGeometry<acc_t> g = roi_geometry(rois, k, q);
        if (g.empty) continue;
        axes.build(g, q, h, w);
        for (int64_t ph = 0; ph < q.pooled_h; ++ph) {
          for (int64_t pw = 0; pw < q.pooled_w; ++pw) {
            const int64_t b = ph * q.pooled_w + pw;
            axes.bin_corners(g, ph, pw, w, corners);
            if (corners.empty()) continue;
            if constexpr (CL) {
              const T* src = gr + (k * bins + b) * c_n + c0;
              acc_t* __restrict__ gv = gvec.data();
              for (int64_t c = 0; c < c1 - c0; ++c) gv[c] = static_cast<acc_t>(src[c]) / g.count;
              for (const BilinearCorners<acc_t>& sc : corners) {
                acc_t* __restrict__ d00 = base + sc.o00 * c_n + c0;
                for (int64_t c = 0; c < c1 - c0; ++c) d00[c] += gv[c] * sc.w00;
                acc_t* __restrict__ d01 = base + sc.o01 * c_n + c0;
                for (int64_t c = 0; c < c1 - c0; ++c) d01[c] += gv[c] * sc.w01;
                acc_t* __restrict__ d10 = base + sc.o10 * c_n + c0;
                for (int64_t c = 0; c < c1 - c0; ++c) d10[c] += gv[c] * sc.w10;
                acc_t* __restrict__ d11 = base + sc.o11 * c_n + c0;
                for (int64_t c = 0; c < c1 - c0; ++c) d11[c] += gv[c] * sc.w11;
              }
            } else {
              for (int64_t c = c0; c < c1; ++c) {
                const acc_t gv = static_cast<acc_t>(gr[(k * c_n + c) * bins + b]) / g.count;
                acc_t* plane = base + c * hw;
                for (const BilinearCorners<acc_t>& sc : corners) {
                  plane[sc.o00] += gv * sc.w00;
                  plane[sc.o01] += gv * sc.w01;
                  plane[sc.o10] += gv * sc.w10;
                  plane[sc.o11] += gv * sc.w11;
                }
              }
            }
          }
        }
      }
    }
  });
}

// NCHW features read by many samples are first transposed to channels-last (one parallel pass):
// the channel-vector kernel is several times faster than plane-by-plane scalar gathers.
bool transpose_pays(const RoiAlignProblem& p) {
  const RoiAlignParams& q = p.params;
  int64_t pixels = 0;
  for (int l = 0; l < q.num_levels; ++l) pixels += q.batch * q.height[l] * q.width[l];
  return q.num_rois * q.bins() * 4 >= pixels;
}

void forward_cpu(const RoiAlignProblem& p, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "roi_align_cpu", [&] {
    if (p.params.channels_last) {
      forward_impl<scalar_t, true>(p, out);
    } else if (transpose_pays(p)) {
      RoiAlignProblem t = p;
      for (int l = 0; l < t.params.num_levels; ++l) {
        t.features[l] = p.features[l].contiguous(at::MemoryFormat::ChannelsLast);
        t.params.features[l] = t.features[l].const_data_ptr();
      }
      t.params.channels_last = true;
      forward_impl<scalar_t, true, false>(t, out);
    } else {
      forward_impl<scalar_t, false>(p, out);
    }
  });
}

void backward_cpu(const RoiAlignProblem& p, const at::Tensor& grad) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    const RoiAlignParams& q = p.params;
    if (q.channels_last) {
      backward_impl<scalar_t, true>(p, grad);
    } else if (transpose_pays(p)) {
      // As the forward: scatter into channels-last scratch planes with the channel-vector kernel,
      // then transpose into the NCHW gradient (same summation order: bitwise the same result).
      RoiAlignProblem t = p;
      t.params.channels_last = true;
      const at::TensorOptions acc = grad.options().dtype(at::CppTypeToScalarType<at::opmath_type<scalar_t>>::value);
      std::vector<at::Tensor> scratch;
      for (int l = 0; l < q.num_levels; ++l) {
        scratch.push_back(at::empty({q.batch, q.channels, q.height[l], q.width[l]},
                                    acc.memory_format(at::MemoryFormat::ChannelsLast))
                              .zero_());
        t.params.grad_features[l] = scratch.back().data_ptr();
      }
      backward_impl<scalar_t, true>(t, grad.contiguous(at::MemoryFormat::ChannelsLast));
      for (int l = 0; l < q.num_levels; ++l) {
        at::from_blob(q.grad_features[l], {q.batch, q.channels, q.height[l], q.width[l]}, acc).copy_(scratch[l]);
      }
    } else {
      backward_impl<scalar_t, false>(p, grad);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdet, CPU, m) { RoiAlignKernels<&forward_cpu, &backward_cpu>::register_impls(m); }

}  // namespace fastdet
