"""An example jsp plug-in (docs/plugins.md): one of each kind jsp can take from a package."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from jsp.constraints import Constraint
from jsp.data import Sample, SegmentationData


class TinyNet(nn.Module):
    """A two-level encoder-decoder. jsp passes ``in_channels`` and ``num_classes``; ``width``
    is a setting (``model.width=16``; this package's YAML sets its default to 6)."""

    pad_multiple = 2             # full images are padded to a multiple of the total stride
    jsp_ranges = {"width": (1, 512)}   # what a saved model's model.json may ask for

    def __init__(self, in_channels: int, num_classes: int, width: int = 8):
        super().__init__()

        def block(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        self.enc, self.down = block(in_channels, width), nn.Sequential(nn.MaxPool2d(2), block(width, 2 * width))
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec, self.head = block(2 * width, width), nn.Conv2d(width, num_classes, 1)

    def forward(self, x):  # (N, C, H, W) -> (N, K, H, W), H and W even
        e = self.enc(x)
        return self.head(self.dec(torch.cat([e, self.up(self.down(e))], 1)))


def stripes(seed: int = 0, size: int = 48, num_train: int = 6, num_val: int = 2, num_test: int = 2) -> SegmentationData:
    """Noisy images with a few dark vertical stripes to segment (class 1), a circular FOV."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    fov = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size / 2 - 1) ** 2

    def sample(i: int) -> Sample:
        label = np.zeros((size, size), np.int64)
        for x in rng.choice(size - 4, 3, replace=False):
            label[:, x:x + 2] = 1
        image = rng.integers(120, 200, (size, size, 3)).astype(np.uint8)
        image[label == 1] //= 3
        return Sample(image, label * fov, fov, f"stripes_{i:03d}")

    n = [num_train, num_val, num_test]
    samples = [sample(i) for i in range(sum(n))]
    return SegmentationData(samples[:n[0]], samples[n[0]:n[0] + n[1]], samples[n[0] + n[1]:],
                            num_classes=2, class_names=["background", "stripe"])


class FilterDecay(Constraint):
    """lambda * sum of the units' squared filter norms, added to the loss (``constraint.lam``)."""

    def __init__(self, lam: float = 1e-3, eps: float = 0.01):
        super().__init__(eps=eps)
        self.lam = lam

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = sum(layer.filters().square().sum() for layer in self.layers)
        penalty = self.lam * torch.as_tensor(total, device=next(model.parameters()).device)
        self.terms = {"decay": penalty.detach()}
        return penalty

    def settings(self) -> dict:
        return {"lam": self.lam, "eps": self.eps}


def filter_l2(layer, ctx) -> torch.Tensor:
    """(U,) the L2 norm of each unit's filter: higher = keep."""
    return layer.filters().norm(dim=1)
