"""DRIVE (Staal et al., 2004) in its official layout.

    ROOT/training/images/21_training.tif ... 40_training.tif
    ROOT/training/1st_manual/21_manual1.gif ...
    ROOT/training/mask/21_training_mask.gif ...
    ROOT/test/images/01_test.tif ... 20_test.tif
    ROOT/test/1st_manual/01_manual1.gif ...
    ROOT/test/mask/01_test_mask.gif ...

Train on the training images minus a validation split taken from them; test on the test
images against the first observer (1st_manual), inside the FOV masks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from jsp.data.base import COUNT, Sample, SegmentationData, check_sample
from jsp.data.io import read_image
from jsp.errors import DatasetError

LAYOUT = """expected the official DRIVE layout:
  ROOT/training/images/21_training.tif ... (RGB)
  ROOT/training/1st_manual/21_manual1.gif ... (vessel labels, 0/255)
  ROOT/training/mask/21_training_mask.gif ... (field-of-view masks, 0/255)
  ROOT/test/images/01_test.tif ...
  ROOT/test/1st_manual/01_manual1.gif ...
  ROOT/test/mask/01_test_mask.gif ...
Download DRIVE (https://drive.grand-challenge.org/) and pass dataset.root=PATH."""


def _split(root: Path, split: str, suffix: str) -> list[Sample]:
    folder = root / split
    images = sorted((folder / "images").glob(f"*_{suffix}.tif"))
    if not images:
        raise DatasetError(f"no images found in {folder / 'images'} (*_{suffix}.tif); {LAYOUT}")
    samples = []
    for path in images:
        idx = path.name.split("_")[0]
        label_path = folder / "1st_manual" / f"{idx}_manual1.gif"
        fov_path = folder / "mask" / f"{idx}_{suffix}_mask.gif"
        for needed in (label_path, fov_path):
            if not needed.is_file():
                raise DatasetError(f"{path.name} has no matching {needed} ; {LAYOUT}")
        sample = Sample(
            image=read_image(path, "RGB"),
            label=(read_image(label_path, "L") > 127).astype(np.int64),
            fov=read_image(fov_path, "L") > 127,
            name=path.stem,
        )
        check_sample(sample, 2, None, str(path))
        samples.append(sample)
    return samples


def load_drive(root: str = "data/DRIVE", val_count: int = 4) -> SegmentationData:
    """Load DRIVE from ``root`` (relative to the current directory unless absolute).

    The last ``val_count`` training images (by number) form the validation split.
    """
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DatasetError(f"DRIVE root {path} does not exist; {LAYOUT}")
    train = _split(path, "training", "training")
    test = _split(path, "test", "test")
    if not 0 <= val_count < len(train):
        raise DatasetError(
            f"dataset.val_count={val_count} must be between 0 and {len(train) - 1} "
            f"(DRIVE has {len(train)} training images in {path})"
        )
    # With no validation split, validation falls back to the training images.
    val = train[len(train) - val_count:] if val_count else train
    train = train[: len(train) - val_count]
    return SegmentationData(train=train, val=val, test=test, num_classes=2,
                            class_names=["background", "vessel"])


load_drive.jsp_ranges = {"val_count": COUNT}
