"""Retinal vessel sets in their official layouts: CHASE_DB1, STARE and HRF.

Labels are binary (vessel = 1). CHASE_DB1 and STARE ship no field-of-view masks: they are
derived from each image (threshold + morphology, see io.derive_fov) and cached in
``fov_cache`` (default ``~/.cache/jsp/fov``; null = derive every time).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from jsp.data.base import COUNT, SCALE, Sample, SegmentationData, check_sample
from jsp.data.io import cached_fov, read_image, resize, split_train_test
from jsp.errors import DatasetError

log = logging.getLogger("jsp")
DEFAULT_CACHE = "~/.cache/jsp/fov"
VESSELS = ["background", "vessel"]


def _root(root: str, name: str, layout: str) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DatasetError(f"{name} root {path} does not exist; expected:\n{layout}\nPass dataset.root=PATH.")
    return path


def _sample(image_path: Path, label_path: Path, fov: np.ndarray | None, fov_cache, scale: float = 1.0) -> Sample:
    image = read_image(image_path, "RGB")
    label = (read_image(label_path, "L") > 127).astype(np.int64)
    if fov is None:
        fov = cached_fov(image, image_path, fov_cache)
    sample = Sample(image=image, label=label, fov=fov, name=image_path.name.split(".")[0])
    check_sample(sample, 2, None, str(image_path))
    if scale != 1.0:
        sample = Sample(resize(image, scale), resize(label, scale, nearest=True), resize(fov, scale, nearest=True),
                        sample.name)
    return sample


CHASE_LAYOUT = """  ROOT/Image_01L.jpg ... Image_14R.jpg       (999x960 RGB)
  ROOT/Image_01L_1stHO.png ...               (first observer: the reference)
  ROOT/Image_01L_2ndHO.png ...               (second observer, not used)"""


def load_chase_db1(root: str = "data/CHASE_DB1", train_count: int = 20, val_count: int = 4,
                   fov_cache: str | None = DEFAULT_CACHE) -> SegmentationData:
    """CHASE_DB1 (28 images). Default split: the first 20 (by name) train, of which the last
    ``val_count`` validate; the last 8 test."""
    path = _root(root, "CHASE_DB1", CHASE_LAYOUT)
    images = sorted(p for p in path.iterdir() if re.fullmatch(r"Image_\d+[LR]\.jpe?g", p.name, re.I))
    if not images:
        raise DatasetError(f"no Image_NNx.jpg files in {path}; expected:\n{CHASE_LAYOUT}")
    samples = []
    for image in images:
        label = image.with_name(f"{image.stem}_1stHO.png")
        if not label.is_file():
            raise DatasetError(f"{image.name} has no matching {label}; expected:\n{CHASE_LAYOUT}")
        samples.append(_sample(image, label, None, fov_cache))
    train, val, test = split_train_test(samples, train_count, val_count, "CHASE_DB1")
    return SegmentationData(train, val, test, num_classes=2, class_names=VESSELS)


STARE_LAYOUT = """  ROOT/stare-images/im0001.ppm[.gz] ...      (700x605 RGB; 20 of them labelled)
  ROOT/labels-ah/im0001.ah.ppm[.gz] ...      (Hoover's labels: the reference)
  ROOT/labels-vk/im0001.vk.ppm[.gz] ...      (second observer, not used)"""


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".ppm", ".ppm.gz", ".PPM", ".PPM.GZ"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def load_stare(root: str = "data/STARE", train_count: int = 10, val_count: int = 2,
               fov_cache: str | None = DEFAULT_CACHE) -> SegmentationData:
    """STARE's 20 labelled images (plain or gzip-compressed PPM). Default split: first 10 train
    (the last ``val_count`` of them validate), last 10 test."""
    path = _root(root, "STARE", STARE_LAYOUT)
    labels = sorted(p for p in (path / "labels-ah").glob("*") if re.fullmatch(r"im\d+\.ah\.ppm(\.gz)?", p.name, re.I))
    if not labels:
        raise DatasetError(f"no labels-ah/imNNNN.ah.ppm[.gz] files in {path}; expected:\n{STARE_LAYOUT}")
    samples = []
    for label in labels:
        stem = label.name.split(".")[0]
        image = _find(path / "stare-images", stem)
        if image is None:
            raise DatasetError(f"{label.name} has no matching stare-images/{stem}.ppm[.gz]; expected:\n{STARE_LAYOUT}")
        samples.append(_sample(image, label, None, fov_cache))
    train, val, test = split_train_test(samples, train_count, val_count, "STARE")
    return SegmentationData(train, val, test, num_classes=2, class_names=VESSELS)


HRF_LAYOUT = """  ROOT/images/01_h.jpg, 01_dr.JPG, 01_g.jpg ...   (3504x2336 RGB, 45 images)
  ROOT/manual1/01_h.tif ...                        (vessel labels)
  ROOT/mask/01_h_mask.tif ...                      (field-of-view masks)"""


def load_hrf(root: str = "data/HRF", scale: float = 0.25, train_count: int = 15, val_count: int = 3) -> SegmentationData:
    """HRF, downscaled by ``scale`` (0.25: 876x584). Images are sorted by number, then category
    (dr, g, h); default split: the first 15 (images 01-05 of each category) train, the rest test.
    Images without a label are skipped with a warning."""
    path = _root(root, "HRF", HRF_LAYOUT)
    if not 0 < scale <= 1:
        raise DatasetError(f"HRF: dataset.scale must be in (0, 1], got {scale}")
    images = sorted((p for p in (path / "images").glob("*") if re.fullmatch(r"\d+_\w+\.jpe?g", p.name, re.I)),
                    key=lambda p: p.stem.lower())
    if not images:
        raise DatasetError(f"no images/NN_x.jpg files in {path}; expected:\n{HRF_LAYOUT}")
    samples = []
    for image in images:
        stem = image.stem
        label = next((p for p in (path / "manual1").glob(f"{stem}.*") if p.suffix.lower() in (".tif", ".tiff")), None)
        if label is None:
            log.warning("HRF: %s has no label in manual1/, skipped", image.name)
            continue
        mask = next((p for p in (path / "mask").glob(f"{stem}_mask.*") if p.suffix.lower() in (".tif", ".tiff")), None)
        if mask is None:
            raise DatasetError(f"{image.name} has no matching mask/{stem}_mask.tif; expected:\n{HRF_LAYOUT}")
        fov = read_image(mask, "L") > 127
        samples.append(_sample(image, label, fov, None, scale))
    train, val, test = split_train_test(samples, train_count, val_count, "HRF")
    return SegmentationData(train, val, test, num_classes=2, class_names=VESSELS)


load_chase_db1.jsp_ranges = load_stare.jsp_ranges = {"train_count": COUNT, "val_count": COUNT}
load_hrf.jsp_ranges = {"scale": SCALE, "train_count": COUNT, "val_count": COUNT}
