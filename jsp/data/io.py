"""Reading dataset files: images in any format PIL knows (gzip-compressed too), derived
field-of-view masks (cached), and deterministic splits."""
from __future__ import annotations

import gzip
import hashlib
import io
import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from jsp.errors import DatasetError

log = logging.getLogger("jsp")
MAX_PIXELS = 200_000_000  # images above this are refused before they are decoded (set_max_pixels)


def set_max_pixels(limit: int | float | None) -> None:
    """Refuse images with more pixels than ``limit`` (None keeps the current limit); PIL's own
    decompression-bomb guard is set to the same limit."""
    global MAX_PIXELS
    if limit is not None:
        if limit <= 0:
            raise DatasetError(f"max_image_pixels must be positive, got {limit}")
        MAX_PIXELS = int(limit)
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def _open(source, path: Path) -> Image.Image:
    """Image.open with the pixel limit checked on the header, before anything is decoded."""
    try:
        im = Image.open(source)
    except Image.DecompressionBombError:
        im = None
    if im is None or im.width * im.height > MAX_PIXELS:
        size = f"{im.width}x{im.height} pixels" if im is not None else "too many pixels"
        raise DatasetError(f"image {path} has {size}, more than max_image_pixels={MAX_PIXELS:,}; "
                           "raise max_image_pixels if the image is genuine")
    return im


set_max_pixels(None)


def read_image(path: Path, mode: str) -> np.ndarray:
    """Read an image file (``.gz`` allowed) into an array in PIL ``mode`` ("RGB" or "L")."""
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rb") as f:  # bounded: a small .gz can expand without limit
                raw = f.read(8 * MAX_PIXELS + 2**20)
            with _open(io.BytesIO(raw), path) as im:
                return np.asarray(im.convert(mode))
        with _open(path, path) as im:
            return np.asarray(im.convert(mode))
    except (OSError, UnidentifiedImageError, SyntaxError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


def read_labels(path: Path) -> np.ndarray:
    """A class-index label image as (H, W) int64 (palette PNGs give their indices, not colours)."""
    try:
        with _open(path, path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                im = im.convert("L")
            return np.asarray(im).astype(np.int64)
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DatasetError(f"cannot read label image {path}: {e}") from None


def derive_fov(image: np.ndarray, threshold: int = 20) -> np.ndarray:
    """Field-of-view mask (H, W) bool of a fundus photograph with a dark surround.

    Threshold the brightest channel, close and open to remove noise and small gaps, keep the
    largest connected region, fill its holes, and erode by a few pixels so the dark rim of
    the aperture is outside.
    """
    bright = image.max(axis=2) if image.ndim == 3 else image
    mask = (bright > threshold).astype(np.uint8)
    k = max(3, int(round(min(mask.shape) / 100)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    if n <= 1:
        return np.ones(mask.shape, bool)  # no dark surround: the whole image is the FOV
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(mask, contours, -1, 1, thickness=cv2.FILLED)
    return cv2.erode(mask, kernel).astype(bool)


def cached_fov(image: np.ndarray, source: Path, cache_dir: str | Path | None) -> np.ndarray:
    """``derive_fov`` of ``image``, cached as a PNG keyed by the source file's path, size and mtime."""
    if cache_dir is None:
        return derive_fov(image)
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / f"{source.stem}-{key}.png"
    if path.is_file():
        cached = np.asarray(Image.open(path)) > 0
        if cached.shape == image.shape[:2]:
            return cached
    fov = derive_fov(image)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fov.astype(np.uint8) * 255).save(path)
    except OSError as e:  # a read-only cache is not fatal
        log.warning("could not cache FOV mask at %s: %s", path, e)
    return fov


def split_train_test(items: list, train_count: int, val_count: int, what: str) -> tuple[list, list, list]:
    """First ``train_count`` items train (their last ``val_count`` validate), the rest test."""
    if not 0 < train_count < len(items):
        raise DatasetError(f"{what}: train_count={train_count} must be between 1 and {len(items) - 1} "
                           f"({len(items)} labelled images found)")
    if not 0 <= val_count < train_count:
        raise DatasetError(f"{what}: val_count={val_count} must be between 0 and {train_count - 1}")
    train, test = items[:train_count], items[train_count:]
    val = train[train_count - val_count:] if val_count else train  # no split: validate on train
    return train[: train_count - val_count], val, test


def resize(image: np.ndarray, scale: float, nearest: bool = False) -> np.ndarray:
    """Rescale an (H, W[, C]) array; labels and masks use nearest-neighbour."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    dtype = image.dtype
    src = image.astype(np.uint8) if dtype == bool else image
    out = cv2.resize(src, size, interpolation=interp)
    return out.astype(dtype) if dtype == bool else out
