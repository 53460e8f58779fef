# Locates the installed torch through Python instead of find_package(Torch): torch's own
# CMake config insists on a full CUDA toolkit even for CPU-only builds and needs several
# hints on these machines (see MACHINE.md). We only need headers, libraries and the ABI flag.
#
# Defines the imported targets fastdet::torch (CPU) and, when asked, fastdet::torch_cuda,
# plus TORCH_VERSION, TORCH_CUDA_VERSION ("" for a CPU build), TORCH_LIB_DIR and
# NVIDIA_CUDA_WHEEL_DIR (the nvidia/cu* folder of pip's CUDA wheels, "" if none).

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "
import os, glob, torch
d = os.path.dirname(torch.__file__)
site = os.path.dirname(d)
wheels = sorted(glob.glob(os.path.join(site, 'nvidia', 'cu*')))
print(torch.__version__.split('+')[0])
print(torch.version.cuda or '')
print(d)
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(wheels[-1] if wheels else '')
"
  OUTPUT_VARIABLE _torch_info
  OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _torch_rc)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "fastdet: could not import torch with ${Python_EXECUTABLE}; install torch first "
                      "and build with pip install --no-build-isolation")
endif()
string(REPLACE "\n" ";" _torch_info "${_torch_info}")
list(GET _torch_info 0 TORCH_VERSION)
list(GET _torch_info 1 TORCH_CUDA_VERSION)
list(GET _torch_info 2 _torch_dir)
list(GET _torch_info 3 _torch_cxx11_abi)
list(GET _torch_info 4 NVIDIA_CUDA_WHEEL_DIR)
set(TORCH_LIB_DIR "${_torch_dir}/lib")
message(STATUS "fastdet: torch ${TORCH_VERSION} (CUDA '${TORCH_CUDA_VERSION}') at ${_torch_dir}")

function(_fastdet_torch_lib out name)
  find_library(_lib_${name} NAMES ${name} PATHS "${TORCH_LIB_DIR}" NO_DEFAULT_PATH REQUIRED)
  set(${out} "${_lib_${name}}" PARENT_SCOPE)
endfunction()

_fastdet_torch_lib(_c10 c10)
_fastdet_torch_lib(_torch_cpu torch_cpu)
_fastdet_torch_lib(_torch torch)
add_library(fastdet_torch INTERFACE)
add_library(fastdet::torch ALIAS fastdet_torch)
target_include_directories(fastdet_torch SYSTEM INTERFACE
  "${_torch_dir}/include" "${_torch_dir}/include/torch/csrc/api/include")
target_compile_definitions(fastdet_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${_torch_cxx11_abi})
target_link_libraries(fastdet_torch INTERFACE "${_torch}" "${_torch_cpu}" "${_c10}")

macro(fastdet_find_torch_cuda)
  _fastdet_torch_lib(_c10_cuda c10_cuda)
  _fastdet_torch_lib(_torch_cuda torch_cuda)
  add_library(fastdet_torch_cuda INTERFACE)
  add_library(fastdet::torch_cuda ALIAS fastdet_torch_cuda)
  target_link_libraries(fastdet_torch_cuda INTERFACE fastdet_torch "${_torch_cuda}" "${_c10_cuda}" CUDA::cudart)
  target_compile_definitions(fastdet_torch_cuda INTERFACE USE_CUDA)
  # Some headers torch's CUDA headers include (cusparse.h, ...) ship only in pip's nvidia wheels.
  if(NVIDIA_CUDA_WHEEL_DIR AND EXISTS "${NVIDIA_CUDA_WHEEL_DIR}/include")
    target_include_directories(fastdet_torch_cuda SYSTEM INTERFACE "${NVIDIA_CUDA_WHEEL_DIR}/include")
  endif()
endmacro()

# "8.0;9.0+PTX" (torch's TORCH_CUDA_ARCH_LIST format) -> "80-real;90" (CMAKE_CUDA_ARCHITECTURES).
function(fastdet_cuda_archs out arch_list)
  set(result "")
  string(REPLACE " " ";" arch_list "${arch_list}")
  foreach(arch IN LISTS arch_list)
    if(arch STREQUAL "")
      continue()
    endif()
    string(REGEX MATCH "^([0-9]+)\\.([0-9]+)([af]?)(\\+PTX)?$" _ok "${arch}")
    if(NOT _ok)
      message(FATAL_ERROR "fastdet: cannot read CUDA arch '${arch}' in '${arch_list}' (expected e.g. 9.0 or 9.0+PTX)")
    endif()
    set(num "${CMAKE_MATCH_1}${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
    if(CMAKE_MATCH_4)
      list(APPEND result "${num}")
    else()
      list(APPEND result "${num}-real")
    endif()
  endforeach()
  set(${out} "${result}" PARENT_SCOPE)
endfunction()
