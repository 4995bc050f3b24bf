"""Input preprocessing (channel choice, CLAHE, normalisation) and training augmentation.

Order: ``enhance`` the full uint8 image once, augment uint8 patches, then ``normalize`` with
the full image's FOV statistics.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from jsp.errors import ConfigError

CHANNELS = {"rgb": 3, "green": 1}


def in_channels(channels: str) -> int:
    if channels not in CHANNELS:
        raise ConfigError(f"dataset.process.channels must be one of {sorted(CHANNELS)}, got {channels!r}")
    return CHANNELS[channels]


def enhance(image: np.ndarray, channels: str = "rgb", clahe: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, C) uint8 with the chosen channels and contrast.

    ``green`` keeps only the green channel, where retinal vessels have the most contrast.
    ``clahe`` equalises local contrast (on green, or on the L channel of Lab for RGB), the
    usual step for fundus images with uneven illumination.
    """
    in_channels(channels)
    if channels == "green":
        image = image[..., 1:2]
        return _clahe(image[..., 0])[..., None] if clahe else np.ascontiguousarray(image)
    if clahe:
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
        lab[..., 0] = _clahe(lab[..., 0])
        image = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return image


def fov_stats(image: np.ndarray, fov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (C,) of an (H, W, C) image inside its FOV."""
    inside = image[fov] if fov.any() else image.reshape(-1, image.shape[-1])
    inside = inside.astype(np.float32)
    return inside.mean(0), inside.std(0) + 1e-6


def normalize(image: np.ndarray, fov: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> (C, H, W) float32 standardised with its full image's FOV statistics.

    Patches use the statistics of the image they come from, so training patches and full
    evaluation images see the same normalisation.
    """
    x = (image.astype(np.float32) - mean) / std
    x[~fov] = 0.0  # outside the FOV carries no information; keep it constant
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _clahe(gray: np.ndarray) -> np.ndarray:
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(np.ascontiguousarray(gray))


def train_augment(enabled: bool = True) -> A.Compose | None:
    """Geometric and photometric augmentation applied to each training patch."""
    if not enabled:
        return None
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(rotate=(-15, 15), scale=(0.9, 1.1), p=0.3),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        A.RandomGamma(gamma_limit=(85, 115), p=0.3),
    ])
