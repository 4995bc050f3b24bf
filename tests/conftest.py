"""Shared fixtures: tiny files in the real dataset formats, written into tmp_path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Under pytest-xdist the workers share the cores: each one (and the jsp-train processes it starts,
# which inherit this) gets its share of threads, since oversubscribed OpenMP threads spin and slow
# every worker down. Set before anything imports torch.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

REPO = Path(__file__).resolve().parent.parent

# Overrides that make a jsp-train run take seconds on a CPU: tiny images, model and loop.
TINY_SYNTHETIC = ["dataset.image_size=48", "dataset.num_train=4", "dataset.num_val=2", "dataset.num_test=2",
                  "dataset.process.patch_size=32"]
TINY_TRAIN = [
    "model.width=4", "model.depth=2",
    "trainer.steps=6", "trainer.batch_size=2", "trainer.val_every=3", "trainer.log_every=2",
    "trainer.warmup_steps=1", "trainer.latency_s=0.05", "trainer.device=cpu",
    "schedule.finetune_steps=4",
]
TINY = TINY_SYNTHETIC + TINY_TRAIN


def write_drive(root: Path, n_train: int = 3, n_test: int = 2, size=(40, 44)) -> Path:
    """A miniature DRIVE in the official layout: .tif images, .gif labels and FOV masks."""
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    fov = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (min(h, w) / 2 - 1) ** 2).astype(np.uint8) * 255
    for split, suffix, ids in (("training", "training", range(21, 21 + n_train)),
                               ("test", "test", range(1, 1 + n_test))):
        for sub in ("images", "1st_manual", "mask"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in ids:
            label = np.zeros((h, w), np.uint8)
            label[:, rng.integers(5, w - 5)] = 255          # a vertical vessel
            label[rng.integers(5, h - 5), :] = 255          # a horizontal one
            image = rng.integers(100, 200, (h, w, 3)).astype(np.uint8)
            image[label > 0, 1] = 40                        # vessels are dark in green
            Image.fromarray(image).save(root / split / "images" / f"{i:02d}_{suffix}.tif")
            Image.fromarray(label).save(root / split / "1st_manual" / f"{i:02d}_manual1.gif")
            Image.fromarray(fov).save(root / split / "mask" / f"{i:02d}_{suffix}_mask.gif")
    return root


@pytest.fixture
def drive_root(tmp_path: Path) -> Path:
    return write_drive(tmp_path / "DRIVE")


def cli(entry: str = "train") -> list[str]:
    """The command line of ``jsp-train`` (or ``jsp-eval`` / ``jsp-export``) in this interpreter,
    whether or not the console scripts are on PATH."""
    return [sys.executable, "-c", f"from jsp.cli import {entry}_main; {entry}_main()"]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300, entry: str = "train") -> subprocess.CompletedProcess:
    """Run ``jsp-train`` (or ``jsp-eval`` / ``jsp-export`` with entry=) in a fresh process, from ``cwd``."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    env.pop("JSP_DEBUG", None)
    return subprocess.run([*cli(entry), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _fundus(rng, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An RGB image with a bright disc on black (like a fundus photo), its vessel label and FOV."""
    yy, xx = np.mgrid[0:h, 0:w]
    fov = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (min(h, w) / 2 - 2) ** 2
    label = np.zeros((h, w), np.uint8)
    label[:, rng.integers(w // 3, 2 * w // 3)] = 255
    label[rng.integers(h // 3, 2 * h // 3), :] = 255
    label[~fov] = 0
    image = rng.integers(120, 200, (h, w, 3)).astype(np.uint8)
    image[label > 0, 1] = 40
    image[~fov] = 0
    return image, label, fov.astype(np.uint8) * 255


def write_chase(root: Path, n: int = 6, size=(48, 50)) -> Path:
    """CHASE_DB1: Image_NNx.jpg with _1stHO.png and _2ndHO.png labels, all in one folder."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = f"Image_{i // 2 + 1:02d}{'LR'[i % 2]}"
        image, label, _ = _fundus(rng, *size)
        Image.fromarray(image).save(root / f"{name}.jpg", quality=95)
        Image.fromarray(label).save(root / f"{name}_1stHO.png")
        Image.fromarray(label).save(root / f"{name}_2ndHO.png")
    return root


def write_stare(root: Path, n: int = 4, size=(44, 48)) -> Path:
    """STARE: stare-images/imNNNN.ppm and labels-ah/imNNNN.ah.ppm, half of them gzip-compressed."""
    import gzip
    import io

    rng = np.random.default_rng(2)
    for sub in ("stare-images", "labels-ah", "labels-vk"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        image, label, _ = _fundus(rng, *size)
        for arr, sub, name in ((image, "stare-images", f"im{i:04d}.ppm"), (label, "labels-ah", f"im{i:04d}.ah.ppm"),
                               (label, "labels-vk", f"im{i:04d}.vk.ppm")):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PPM")
            if i % 2:  # the official download is gzip-compressed
                (root / sub / f"{name}.gz").write_bytes(gzip.compress(buf.getvalue()))
            else:
                (root / sub / name).write_bytes(buf.getvalue())
    return root


def write_hrf(root: Path, n: int = 2, size=(60, 90), unlabelled: bool = True) -> Path:
    """HRF: images/NN_{dr,g,h}.jpg|JPG, manual1/NN_x.tif, mask/NN_x_mask.tif."""
    rng = np.random.default_rng(3)
    for sub in ("images", "manual1", "mask"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        for cat, ext in (("dr", "JPG"), ("g", "jpg"), ("h", "jpg")):
            image, label, fov = _fundus(rng, *size)
            Image.fromarray(image).save(root / "images" / f"{i:02d}_{cat}.{ext}", format="JPEG", quality=95)
            Image.fromarray(label).save(root / "manual1" / f"{i:02d}_{cat}.tif")
            Image.fromarray(fov).save(root / "mask" / f"{i:02d}_{cat}_mask.tif")
    if unlabelled:
        image, _, _ = _fundus(rng, *size)
        Image.fromarray(image).save(root / "images" / "99_h.jpg")
    return root


def write_camvid(root: Path, counts=(3, 2, 2), size=(36, 48)) -> Path:
    """CamVid (SegNet layout): RGB PNGs and class-index PNGs (0-10, 11 = void)."""
    rng = np.random.default_rng(4)
    for split, n in zip(("train", "val", "test"), counts):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = rng.integers(0, 12, (size[0] // 6, size[1] // 6)).astype(np.uint8).repeat(6, 0).repeat(6, 1)
            image = (label[..., None] * np.array([20, 7, 13], np.uint8) + 10).astype(np.uint8)
            Image.fromarray(image).save(root / split / f"0001TP_{i:06d}.png")
            Image.fromarray(label).save(root / f"{split}annot" / f"0001TP_{i:06d}.png")
    return root


def write_folder(root: Path, n: int = 6, size=(40, 40), classes: int = 3, split_files: bool = True) -> Path:
    """A user's folder: images/*.jpg, masks/*.png (class indices, 255 = ignore), fov/, split files."""
    rng = np.random.default_rng(5)
    for sub in ("images", "masks", "fov"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = rng.integers(0, classes, (size[0] // 8, size[1] // 8)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
        label[:2] = 255
        image = (label[..., None] * 60 % 255).astype(np.uint8).repeat(3, 2)
        Image.fromarray(image).save(root / "images" / f"case{i}.jpg", quality=95)
        Image.fromarray(label).save(root / "masks" / f"case{i}.png")
        Image.fromarray(np.full(size, 255, np.uint8)).save(root / "fov" / f"case{i}.png")
    if split_files:
        (root / "train.txt").write_text("\n".join(f"case{i}" for i in range(n - 2)) + "\n")
        (root / "test.txt").write_text("\n".join(f"case{i}" for i in range(n - 2, n)) + "\n")
    return root
