// fastdet._C: the small Python module beside libfastdet. It links libfastdet (so importing it
// registers the ops with the dispatcher) and exposes the build information.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "build_info.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastdet build information; importing this module registers torch.ops.fastdet.*";
  m.def("build_info", &fastdet::build_info,
        "dict of version, torch_version, with_cuda, cuda_version, cuda_archs");
}
