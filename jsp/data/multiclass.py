"""Multi-class sets: CamVid (SegNet layout) and a user's own folder of images and masks."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from jsp.data.base import FRACTION, SCALE, SEED, Sample, SegmentationData, check_sample
from jsp.registry import Arg
from jsp.data.io import read_image, read_labels, resize
from jsp.errors import DatasetError

log = logging.getLogger("jsp")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".ppm"}

CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                  "pedestrian", "bicyclist"]
CAMVID_LAYOUT = """  ROOT/train/*.png  ROOT/trainannot/*.png   (360x480 RGB; class-index labels 0-10, 11 = void)
  ROOT/val/*.png    ROOT/valannot/*.png
  ROOT/test/*.png   ROOT/testannot/*.png"""


def _pairs(images: Path, labels: Path, layout: str) -> list[tuple[Path, Path]]:
    if not images.is_dir() or not labels.is_dir():
        raise DatasetError(f"missing folder {images if not images.is_dir() else labels}; expected:\n{layout}")
    by_stem = {p.stem: p for p in labels.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    out = []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if image.stem not in by_stem:
            raise DatasetError(f"{image} has no label {labels / (image.stem + '.png')}; expected:\n{layout}")
        out.append((image, by_stem[image.stem]))
    return out


def _load(pairs, num_classes: int, ignore_index: int | None, scale: float = 1.0, fov_dir: Path | None = None):
    samples = []
    for image_path, label_path in pairs:
        image, label = read_image(image_path, "RGB"), read_labels(label_path)
        fov = np.ones(label.shape, bool)
        if fov_dir is not None:
            fov_path = next((p for p in fov_dir.glob(image_path.stem + ".*") if p.suffix.lower() in IMAGE_SUFFIXES), None)
            if fov_path is not None:
                fov = read_image(fov_path, "L") > 127
        sample = Sample(image, label, fov, image_path.stem)
        check_sample(sample, num_classes, ignore_index, str(label_path))
        if scale != 1.0:
            sample = Sample(resize(image, scale), resize(label, scale, nearest=True), resize(fov, scale, nearest=True),
                            sample.name)
        samples.append(sample)
    return samples


def load_camvid(root: str = "data/CamVid", scale: float = 1.0, class_names: list[str] | None = None,
                ignore_index: int = 11) -> SegmentationData:
    """CamVid as distributed with SegNet: 11 classes, label 11 (void) ignored in loss and metrics."""
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DatasetError(f"CamVid root {path} does not exist; expected:\n{CAMVID_LAYOUT}\nPass dataset.root=PATH.")
    names = list(class_names or CAMVID_CLASSES)
    splits = {s: _load(_pairs(path / s, path / f"{s}annot", CAMVID_LAYOUT), len(names), ignore_index, scale)
              for s in ("train", "val", "test")}
    return SegmentationData(**splits, num_classes=len(names), class_names=names, ignore_index=ignore_index)


FOLDER_LAYOUT = """  ROOT/images/NAME.png|jpg|tif ...   (RGB)
  ROOT/masks/NAME.png ...             (class-index labels, matched by file stem)
  ROOT/fov/NAME.png ...               (optional field-of-view masks, 0/255)
  ROOT/train.txt, val.txt, test.txt   (optional: one NAME per line)"""


def load_folder(root: str = "data/custom", num_classes: int = 2, ignore_index: int | None = 255,
                class_names: list[str] | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
                seed: int = 0, scale: float = 1.0) -> SegmentationData:
    """A user's own data. Splits come from train.txt / val.txt / test.txt when present (each
    lists file stems), otherwise from a seeded shuffle with the given fractions."""
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DatasetError(f"dataset root {path} does not exist; expected:\n{FOLDER_LAYOUT}")
    names = list(class_names or [f"class_{i}" for i in range(num_classes)])
    if len(names) != num_classes:
        raise DatasetError(f"dataset.class_names has {len(names)} names but num_classes={num_classes}")
    pairs = {img.stem: (img, lab) for img, lab in _pairs(path / "images", path / "masks", FOLDER_LAYOUT)}
    split_files = {s: path / f"{s}.txt" for s in ("train", "val", "test")}
    if any(f.is_file() for f in split_files.values()):
        stems = {}
        for split, f in split_files.items():
            stems[split] = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()] if f.is_file() else []
            missing = [s for s in stems[split] if s not in pairs]
            if missing:
                raise DatasetError(f"{f} lists {missing[:3]} with no image and mask in {path}")
    else:
        order = sorted(pairs)
        np.random.default_rng(seed).shuffle(order)
        n_test, n_val = int(round(len(order) * test_fraction)), int(round(len(order) * val_fraction))
        stems = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    fov_dir = path / "fov" if (path / "fov").is_dir() else None
    splits = {s: _load([pairs[k] for k in stems[s]], num_classes, ignore_index, scale, fov_dir) for s in stems}
    if not splits["val"]:
        splits["val"] = splits["train"]  # no validation images: select on the training set
    return SegmentationData(**splits, num_classes=num_classes, class_names=names, ignore_index=ignore_index)


_NAMES = Arg(str, is_list=True, optional=True, max_len=1024)
load_camvid.jsp_ranges = {"scale": SCALE, "class_names": _NAMES, "ignore_index": (0, 65535)}
load_folder.jsp_ranges = {"num_classes": (1, 1024), "ignore_index": (0, 65535), "class_names": _NAMES,
                          "val_fraction": FRACTION, "test_fraction": FRACTION, "seed": SEED, "scale": SCALE}
