#include "build_info.h"

namespace fastdet {

std::map<std::string, std::string> build_info() {
  return {
      {"version", FASTDET_VERSION},
      {"torch_version", FASTDET_TORCH_VERSION},
#ifdef FASTDET_WITH_CUDA
      {"with_cuda", "1"},
#else
      {"with_cuda", "0"},
#endif
      {"cuda_version", FASTDET_CUDA_VERSION},
      {"cuda_archs", FASTDET_CUDA_ARCHS},
  };
}

}  // namespace fastdet
