"""From loaded samples to tensors: enhanced full images for evaluation, random patches for training."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from jsp.data.base import Sample
from jsp.data.transforms import enhance, fov_stats, normalize, train_augment
from jsp.errors import ConfigError


@dataclass
class Prepared:
    """A sample after channel selection / CLAHE, with its FOV statistics.

    image: (H, W, C) uint8; label: (H, W) int64; fov: (H, W) bool; mean, std: (C,).
    """

    image: np.ndarray
    label: np.ndarray
    fov: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    name: str

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full image as (C, H, W) float32, label (H, W) int64, fov (H, W) bool."""
        x = normalize(self.image, self.fov, self.mean, self.std)
        return torch.from_numpy(x), torch.from_numpy(self.label), torch.from_numpy(self.fov)


def prepare(samples: list[Sample], channels: str = "rgb", clahe: bool = False) -> list[Prepared]:
    out = []
    for s in samples:
        image = enhance(s.image, channels, clahe)
        out.append(Prepared(image, s.label, s.fov, *fov_stats(image, s.fov), s.name))
    return out


class PatchDataset(Dataset):
    """Random training patches, ``length`` of them, each determined by (seed, index).

    Because every item is a pure function of its index, the batches are the same whatever
    the number of loader workers, and a resumed run can continue the same stream.
    Item: x (C, p, p) float32, y (p, p) int64.
    """

    def __init__(self, images: list[Prepared], patch_size: int, length: int, seed: int = 0,
                 augment: bool = True):
        smallest = min(min(im.label.shape) for im in images)
        if patch_size > smallest:
            raise ConfigError(
                f"dataset.process.patch_size={patch_size} is larger than the smallest training "
                f"image side ({smallest} px); choose a patch size <= {smallest}"
            )
        self.images, self.patch, self.length, self.seed = images, patch_size, length, seed
        self.augment = train_augment(augment)
        # Patch centres are drawn inside the FOV so patches are not mostly black border.
        self.centres = [np.argwhere(im.fov) if im.fov.any() else np.argwhere(np.ones_like(im.fov))
                        for im in images]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        k = int(rng.integers(len(self.images)))
        im, p = self.images[k], self.patch
        cy, cx = self.centres[k][rng.integers(len(self.centres[k]))]
        h, w = im.label.shape
        y0 = int(np.clip(cy - p // 2, 0, h - p))
        x0 = int(np.clip(cx - p // 2, 0, w - p))
        window = np.s_[y0:y0 + p, x0:x0 + p]
        image, label, fov = im.image[window], im.label[window], im.fov[window]
        if self.augment is not None:
            self.augment.set_random_seed(int(rng.integers(2**31)))
            out = self.augment(image=image, masks=[label.astype(np.uint8), fov.astype(np.uint8)])
            image, (label, fov) = out["image"], out["masks"]
            label, fov = np.asarray(label).astype(np.int64), np.asarray(fov).astype(bool)
        x = normalize(image, fov, im.mean, im.std)
        return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(label))
