#pragma once
// Build facts of libfastdet, readable from C++ and (through fastdet._C) from Python.
#include <map>
#include <string>

namespace fastdet {

// Keys: version, torch_version (the torch it was built against), with_cuda ("1"/"0"),
// cuda_version ("" without CUDA), cuda_archs (TORCH_CUDA_ARCH_LIST format).
std::map<std::string, std::string> build_info();

}  // namespace fastdet
