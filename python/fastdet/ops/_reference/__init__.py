"""Readable pure-PyTorch references of every fastdet op, one module per op (same stem as the op).

Tests compare the compiled kernels against these; they favour clarity over speed.
"""
