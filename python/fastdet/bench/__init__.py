"""Benchmarks of fastdet against torchvision (or the named peer); see _harness for the protocol."""

from ._harness import Case, Timing, measure

__all__ = ["Case", "Timing", "measure"]
