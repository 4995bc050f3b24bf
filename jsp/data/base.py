"""The in-memory form every dataset loader returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from jsp.errors import DatasetError


# Ranges a saved model's dataset arguments may take (``jsp_ranges``, checked by jsp.registry).
COUNT, SCALE, FRACTION, SEED = (0, 100_000), (1e-3, 16.0), (0.0, 1.0), (0, 2**32 - 1)


@dataclass
class Sample:
    """One full image.

    image: (H, W, 3) uint8 RGB. label: (H, W) int64 class indices (``ignore_index`` allowed).
    fov: (H, W) bool field-of-view mask; metrics count only pixels inside it.
    """

    image: np.ndarray
    label: np.ndarray
    fov: np.ndarray
    name: str = ""


@dataclass
class SegmentationData:
    """Train / validation / test splits plus the class description."""

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    num_classes: int = 2
    class_names: list[str] = field(default_factory=lambda: ["background", "vessel"])
    ignore_index: int | None = None

    def __post_init__(self):
        for split in ("train", "val", "test"):
            if not getattr(self, split):
                raise DatasetError(f"the {split} split is empty: check the dataset root and split settings")

    @property
    def full_size(self) -> tuple[int, int]:
        """(H, W) of the first test image: the size at which MACs and latency are reported."""
        return tuple(self.test[0].label.shape)


def check_sample(sample: Sample, num_classes: int, ignore_index: int | None, where: str) -> None:
    """Raise a DatasetError naming ``where`` when image, label and FOV do not fit together."""
    h, w = sample.image.shape[:2]
    if sample.label.shape != (h, w) or sample.fov.shape != (h, w):
        raise DatasetError(
            f"{where}: image is {h}x{w} but label is {'x'.join(map(str, sample.label.shape))} "
            f"and FOV mask is {'x'.join(map(str, sample.fov.shape))}; they must be the same size"
        )
    values = np.unique(sample.label)
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_index)]
    if bad:
        raise DatasetError(
            f"{where}: label values {bad} are outside the classes 0..{num_classes - 1}"
            + (f" (ignore_index {ignore_index})" if ignore_index is not None else "")
        )
