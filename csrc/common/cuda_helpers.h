#pragma once
// Launch conventions shared by the CUDA kernels.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace fastdet {

constexpr int kThreadsPerBlock = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over `work` items: enough to fill the device, never more than
// the work needs.
inline unsigned int grid_for(int64_t work, int threads = kThreadsPerBlock) {
  return static_cast<unsigned int>(std::clamp<int64_t>(ceil_div(work, threads), 1, 65536));
}

}  // namespace fastdet

// 64-bit grid-stride loop: every index fits even when a product of sizes passes 2^31.
#define FASTDET_CUDA_KERNEL_LOOP(i, n)                                                      \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)
