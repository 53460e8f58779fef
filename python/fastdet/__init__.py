"""fastdet: fast, trustworthy detection ops for PyTorch.

`import fastdet` loads the compiled ops (`torch.ops.fastdet.*`); the public functions live in
`fastdet.ops`, drop-in compatible with `torchvision.ops` where torchvision has the op.
"""

from ._loader import BUILD_INFO, LIBRARY_PATH
from . import ops

__version__ = BUILD_INFO["version"]


def build_info() -> dict:
    """How this fastdet was built: version, torch_version, with_cuda, cuda_version, cuda_archs."""
    return dict(BUILD_INFO)


__all__ = ["ops", "build_info", "LIBRARY_PATH", "__version__"]
