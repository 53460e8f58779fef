#pragma once
// Host/device qualifiers for math shared by the CPU and CUDA kernels.
#if defined(__CUDACC__)
#define FASTDET_HD __host__ __device__ __forceinline__
#else
#define FASTDET_HD inline __attribute__((always_inline))
#endif
