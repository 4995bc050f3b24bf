"""Shared fixtures: tiny files in the real dataset formats, written into tmp_path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

# Overrides that make a jsp-train run take seconds on a CPU: tiny images, model and loop.
TINY_SYNTHETIC = ["dataset.image_size=48", "dataset.num_train=4", "dataset.num_val=2", "dataset.num_test=2",
                  "dataset.process.patch_size=32"]
TINY_TRAIN = [
    "model.width=4", "model.depth=2",
    "trainer.steps=6", "trainer.batch_size=2", "trainer.val_every=3", "trainer.log_every=2",
    "trainer.warmup_steps=1", "trainer.latency_reps=1", "trainer.device=cpu",
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


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300, entry: str = "train") -> subprocess.CompletedProcess:
    """Run ``jsp-train`` (or ``jsp-eval`` / ``jsp-export`` with entry=) in a fresh process, from ``cwd``."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "JSP_ENTRY": entry}
    env.pop("JSP_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "jsp.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
