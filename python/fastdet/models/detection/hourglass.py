"""Stacked hourglass backbone (Newell et al. 2016, "Stacked Hourglass Networks for Human Pose
Estimation") in the form CornerNet uses it (Law & Deng 2018, section 4.1): a 7 x 7 / 2 convolution
and a stride-2 residual block bring the input to 1/4 resolution; each hourglass halves the
resolution ``levels`` times with stride-2 residual blocks (no max pooling), comes back up with
nearest-neighbour upsampling and adds a skip branch of residual blocks at every level; stacks are
joined by 1 x 1 conv-BN merges of the previous stack's input and output (intermediate supervision).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .rpn import conv_block

STEM_STRIDE = 4  # 7 x 7 / 2 convolution, then a stride-2 residual block


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Conv (no bias, "same" padding) -> BatchNorm, no activation."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False),
                         nn.BatchNorm2d(out_channels))


class Residual(nn.Module):
    """CornerNet's residual block: 3 x 3 conv(stride)-BN-ReLU, 3 x 3 conv-BN, plus the input (through a
    1 x 1 conv-BN where the stride or the width changes), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_block(in_channels, out_channels, nn.BatchNorm2d, 3, stride=stride)
        self.conv2 = conv_bn(out_channels, out_channels, 3)
        same = stride == 1 and in_channels == out_channels
        self.skip = nn.Identity() if same else conv_bn(in_channels, out_channels, 1, stride)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.skip(x))


def residuals(in_channels: int, out_channels: int, num_blocks: int, stride: int = 1) -> nn.Sequential:
    """num_blocks residual blocks; the first changes the width (and the resolution by ``stride``)."""
    blocks = [Residual(in_channels, out_channels, stride)]
    blocks += [Residual(out_channels, out_channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def residuals_reverse(in_channels: int, out_channels: int, num_blocks: int) -> nn.Sequential:
    """num_blocks residual blocks; the last changes the width (the up path of an hourglass level)."""
    blocks = [Residual(in_channels, in_channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks, Residual(in_channels, out_channels))


class HourglassModule(nn.Module):
    """One hourglass, defined recursively level by level.

    channels: the width at each resolution, finest first (len = levels + 1); blocks: the residual
    blocks per level (same length; the last entry is the count at the bottom, between the deepest
    down and up paths). forward(Tensor[B, channels[0], H, W]) -> same shape; H and W must be
    multiples of 2 ** levels.
    """

    def __init__(self, channels: tuple[int, ...], blocks: tuple[int, ...]):
        super().__init__()
        cur, nxt = channels[0], channels[1]
        self.up = residuals(cur, cur, blocks[0])                    # the skip branch at this resolution
        self.down = residuals(cur, nxt, blocks[0], stride=2)
        self.inner = (HourglassModule(channels[1:], blocks[1:]) if len(channels) > 2
                      else residuals(nxt, nxt, blocks[1]))
        self.back = residuals_reverse(nxt, cur, blocks[0])

    def forward(self, x: Tensor) -> Tensor:
        low = self.back(self.inner(self.down(x)))
        return self.up(x) + F.interpolate(low, scale_factor=2.0, mode="nearest")


class StackedHourglass(nn.Module):
    """Stem + ``num_stacks`` hourglasses, each followed by a 3 x 3 conv-BN-ReLU to ``out_channels``.

    Args:
        num_stacks: hourglasses in sequence (Hourglass-104: 2).
        channels: the width of each hourglass level, finest (1/4 resolution) first; levels =
            len(channels) - 1 (Hourglass-104: 256, 256, 384, 384, 384, 512).
        blocks: residual blocks per level, same length (Hourglass-104: 2, 2, 2, 2, 2, 4).
        stem_channels: width of the 7 x 7 / 2 stem convolution (Hourglass-104: 128).
        out_channels: width of every stack's output (Hourglass-104: 256).

    forward(Tensor[B, 3, H, W]) -> list (one per stack) of Tensor[B, out_channels, H / 4, W / 4];
    H and W must be multiples of :attr:`size_divisor` (4 * 2 ** levels). Between stacks the next
    input is Residual(ReLU(conv-BN 1 x 1 (input) + conv-BN 1 x 1 (output))).
    """

    def __init__(self, num_stacks: int, channels: tuple[int, ...], blocks: tuple[int, ...], stem_channels: int,
                 out_channels: int):
        super().__init__()
        if num_stacks < 1 or len(channels) < 2 or len(blocks) != len(channels) or min(blocks) < 1:
            raise ValueError(f"StackedHourglass: need num_stacks >= 1, >= 2 channels and one block count >= 1 per "
                             f"level, got {num_stacks}, {channels}, {blocks}")
        width = channels[0]
        self.levels = len(channels) - 1
        self.out_channels = out_channels
        self.stem = nn.Sequential(conv_block(3, stem_channels, nn.BatchNorm2d, 7, stride=2),
                                  Residual(stem_channels, width, stride=2))
        self.hourglasses = nn.ModuleList(HourglassModule(tuple(channels), tuple(blocks)) for _ in range(num_stacks))
        self.convs = nn.ModuleList(conv_block(width, out_channels, nn.BatchNorm2d, 3) for _ in range(num_stacks))
        self.merge_inputs = nn.ModuleList(conv_bn(width, width, 1) for _ in range(num_stacks - 1))
        self.merge_outputs = nn.ModuleList(conv_bn(out_channels, width, 1) for _ in range(num_stacks - 1))
        self.inters = nn.ModuleList(Residual(width, width) for _ in range(num_stacks - 1))

    @property
    def size_divisor(self) -> int:
        return STEM_STRIDE * 2 ** self.levels

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.shape[-2] % self.size_divisor or x.shape[-1] % self.size_divisor:
            raise ValueError(f"StackedHourglass: input height and width must be multiples of {self.size_divisor}, "
                             f"got {list(x.shape[-2:])}")
        inter = self.stem(x)
        outputs = []
        for i, (hourglass, conv) in enumerate(zip(self.hourglasses, self.convs)):
            out = conv(hourglass(inter))
            outputs.append(out)
            if i < len(self.inters):
                inter = self.inters[i](F.relu(self.merge_inputs[i](inter) + self.merge_outputs[i](out)))
        return outputs
