"""Reference corner pooling: the flip + cummax + flip formulation (as mmcv's CornerPool computes
it with torch.cummax), written with plain torch ops; autograd gives its gradient."""

from __future__ import annotations

from torch import Tensor

# mode -> (dimension of the scan, whether the scan runs towards decreasing index)
_SCANS = {"top": (2, True), "bottom": (2, False), "left": (3, True), "right": (3, False)}
_CORNERS = {"top_left": ("top", "left"), "bottom_right": ("bottom", "right"),
            "top_right": ("top", "right"), "bottom_left": ("bottom", "left")}


def corner_pool(input: Tensor, mode: str) -> Tensor:
    """top: max over the position and everything below it in its column; bottom: everything above;
    left: everything to the right in its row; right: everything to the left."""
    dim, reverse = _SCANS[mode]
    if not reverse:
        return input.cummax(dim).values
    return input.flip(dim).cummax(dim).values.flip(dim)


def corner_pool_sum(a: Tensor, b: Tensor, corner: str = "top_left") -> Tensor:
    """corner_pool(a, vertical) + corner_pool(b, horizontal), e.g. top_left = top(a) + left(b)."""
    vertical, horizontal = _CORNERS[corner]
    return corner_pool(a, vertical) + corner_pool(b, horizontal)
