"""Loads libfastdet (the ops) and fastdet._C (build information), with readable failures.

`torch.ops.load_library` registers every op of libfastdet with the dispatcher under the
`fastdet::` namespace; `_C` links the same library and reports how it was built.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

_PKG = Path(__file__).parent
LIBRARY_PATH = _PKG / "lib" / "libfastdet.so"


def _torch_release(version: str) -> str:
    """'2.14.1+cu130' -> '2.14.1'."""
    return version.split("+")[0]


def _fail(reason: str) -> ImportError:
    return ImportError(
        f"fastdet could not load its compiled ops: {reason}. Rebuild it against the installed torch "
        "with `pip install --no-build-isolation --force-reinstall .` from the fastdet source tree."
    )


def load() -> dict:
    """Loads the compiled library once and returns its build information."""
    try:
        from . import _build_config
    except ImportError:
        raise _fail(f"{_PKG} holds no build (no _build_config.py); fastdet has not been compiled") from None
    found = _torch_release(torch.__version__)
    if _build_config.TORCH_VERSION != found:
        raise _fail(f"fastdet {_build_config.VERSION} was built for torch {_build_config.TORCH_VERSION}, found {found}")
    if not LIBRARY_PATH.exists():
        raise _fail(f"{LIBRARY_PATH} is missing")
    try:
        torch.ops.load_library(os.fspath(LIBRARY_PATH))
        from . import _C
    except OSError as e:
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _fail(f"loading {LIBRARY_PATH.name} with torch {found} failed ({first_line})") from None
    info = dict(_C.build_info())
    info["with_cuda"] = info["with_cuda"] == "1"
    return info


BUILD_INFO = load()
