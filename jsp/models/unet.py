"""The classic U-Net (Ronneberger et al., 2015) with BatchNorm, written out so every conv is a
plain module that the constraints and the pruner can see.

Width 64, depth 4 gives the textbook network (~31 M parameters); tests use width 4-8.
"""
from __future__ import annotations

import torch
from torch import nn

from jsp.errors import ConfigError


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BN -> ReLU) x 2. (N, c_in, H, W) -> (N, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Transposed-conv upsampling, concatenation with the skip, then a DoubleConv.

    (N, c_in, H, W) and skip (N, c_skip, 2H, 2W) -> (N, c_out, 2H, 2W).
    """

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(c_in // 2 + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """Classic U-Net.

    Args:
        in_channels: image channels (3 for RGB, 1 for the green channel).
        num_classes: output channels of the 1x1 classifier (2 for vessel / background).
        width: channels of the first block; block i has width * 2**i.
        depth: number of down-sampling steps; input sides must be divisible by 2**depth
            (the evaluator pads full images to that multiple).

    forward: (N, in_channels, H, W) -> logits (N, num_classes, H, W).
    """

    jsp_ranges = {"width": (1, 4096), "depth": (1, 8)}  # what a saved model may ask for (jsp.registry)

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 64, depth: int = 4):
        super().__init__()
        if width < 1 or depth < 1:
            raise ConfigError(f"model.width and model.depth must be >= 1, got width={width}, depth={depth}")
        widths = [width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.inc = DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i], widths[i]) for i in reversed(range(depth)))
        self.classifier = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    @property
    def pad_multiple(self) -> int:
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for block in self.down:
            skips.append(block(self.pool(skips[-1])))
        x = skips.pop()
        for block in self.up:
            x = block(x, skips.pop())
        return self.classifier(x)
