"""Procedural fundus-like images with exact vessel labels: the default, download-free dataset.

Each image is drawn at ``supersample`` times its size and reduced by area averaging, so the
label (vessel coverage >= 1/2) is exact for the image it comes with. What makes it a real
learning problem: vessels branch and curve, thin down to sub-pixel width, and have varying
contrast; illumination is uneven; there is noise, a bright optic disc, and dark blobs
(haemorrhage-like distractors that are not vessels); everything outside the circular
field of view is black.
"""
from __future__ import annotations

import cv2
import numpy as np

from jsp.data.base import SEED, Sample, SegmentationData


def _smooth_field(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    """Low-frequency random field in [-1, 1], shape (size, size)."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


def _draw_tree(rng, size, label, dark, start, heading, width, contrast, depth=0):
    """Trace one vessel as a momentum random walk, branching into thinner children.

    Draws into ``label`` (coverage, 1 on the vessel) and ``dark`` (how much the vessel
    darkens the background, = contrast on the vessel); both are (size, size) float32.
    """
    pos = np.array(start, dtype=np.float64)
    step = size / 70
    turn = 0.0
    centre, radius = size / 2, size * 0.47
    for _ in range(int(rng.integers(50, 110))):
        turn = 0.85 * turn + rng.normal(0, 0.05)  # momentum gives smooth curvature
        heading += turn
        new = pos + step * np.array([np.cos(heading), np.sin(heading)])
        if np.hypot(*(new - centre)) > radius:
            return
        thickness = max(1, int(round(width)))
        p0, p1 = tuple(int(v) for v in pos), tuple(int(v) for v in new)
        cv2.line(label, p0, p1, 1.0, thickness, lineType=cv2.LINE_8)
        cv2.line(dark, p0, p1, float(contrast), thickness, lineType=cv2.LINE_8)
        pos = new
        width *= 0.992
        if width < 0.9:
            return
        if depth < 4 and rng.random() < 0.06:
            side = rng.choice([-1, 1])
            child_w = width * rng.uniform(0.5, 0.8)
            child_c = contrast * rng.uniform(0.6, 1.0)
            _draw_tree(rng, size, label, dark, pos, heading + side * rng.uniform(0.4, 1.1),
                       child_w, child_c, depth + 1)
            width *= 0.85


def make_fundus(rng: np.random.Generator, size: int = 128, supersample: int = 3) -> Sample:
    """One synthetic fundus image.

    Returns a Sample with image (size, size, 3) uint8 RGB, label (size, size) int64 in
    {0 background, 1 vessel}, fov (size, size) bool.
    """
    big = size * supersample
    label = np.zeros((big, big), np.float32)
    dark = np.zeros((big, big), np.float32)
    disc = np.array([big * rng.choice([0.3, 0.7]), big * rng.uniform(0.4, 0.6)])
    for _ in range(int(rng.integers(4, 7))):  # main arcades leaving the optic disc
        _draw_tree(rng, big, label, dark, disc, rng.uniform(0, 2 * np.pi),
                   width=rng.uniform(1.6, 2.8) * supersample, contrast=rng.uniform(0.25, 0.55))
    label = cv2.resize(label, (size, size), interpolation=cv2.INTER_AREA)
    dark = cv2.resize(dark, (size, size), interpolation=cv2.INTER_AREA)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(xx - size / 2, yy - size / 2) / (size * 0.47)
    fov = r <= 1.0
    # Uneven illumination: vignetting plus a smooth random field.
    light = (1.0 - 0.45 * r**2) * (1.0 + 0.25 * _smooth_field(rng, size))
    d = np.hypot(xx - disc[0] / supersample, yy - disc[1] / supersample)
    light += 0.8 * np.exp(-((d / (size * 0.06)) ** 2))
    # Dark round blobs: vessel-like contrast, but not vessels.
    blobs = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(0, 6))):
        c = tuple(int(v) for v in rng.uniform(0.2, 0.8, 2) * size)
        cv2.circle(blobs, c, int(rng.integers(1, 4)), float(rng.uniform(0.2, 0.5)), -1)
    shade = 1.0 - np.maximum(dark, blobs)

    base = np.array([0.85, 0.42, 0.18], np.float32) * rng.uniform(0.75, 1.1, 3).astype(np.float32)
    # Vessels show most in green, less in red (as in real fundus photographs).
    weight = np.array([0.45, 1.0, 0.7], np.float32)
    img = base * light[..., None] * (1.0 - weight * (1.0 - shade[..., None]))
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    img += rng.normal(0, rng.uniform(0.015, 0.04), img.shape).astype(np.float32)
    img[~fov] = 0.0
    image = (img.clip(0, 1) * 255).astype(np.uint8)
    target = ((label >= 0.5) & fov).astype(np.int64)
    return Sample(image=image, label=target, fov=fov)


def make_synthetic(
    seed: int = 0,
    image_size: int = 128,
    num_train: int = 24,
    num_val: int = 4,
    num_test: int = 8,
) -> SegmentationData:
    """The synthetic vessel dataset: deterministic in ``seed``, independent of the training seed.

    Each image has its own generator seeded with (seed, split, index), so a split's images do
    not change when another split's size does.
    """
    splits = {}
    for split_id, (split, n) in enumerate([("train", num_train), ("val", num_val), ("test", num_test)]):
        samples = []
        for i in range(n):
            sample = make_fundus(np.random.default_rng([seed, split_id, i]), image_size)
            sample.name = f"{split}_{i:03d}"
            samples.append(sample)
        splits[split] = samples
    return SegmentationData(**splits, num_classes=2, class_names=["background", "vessel"])


make_synthetic.jsp_ranges = {"seed": SEED, "image_size": (16, 2048), "num_train": (1, 10_000),
                             "num_val": (1, 10_000), "num_test": (1, 10_000)}
