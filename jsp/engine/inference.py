"""Segmenting unlabelled images with a saved model (jsp-predict): finding the images and their
FOV masks, tiled prediction of large images, and the files written per image."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from jsp.data.io import derive_fov, read_image, resize
from jsp.data.multiclass import IMAGE_SUFFIXES as DATASET_SUFFIXES
from jsp.data.transforms import enhance, fov_stats, normalize
from jsp.engine.evaluate import PALETTE, predict
from jsp.errors import JSPError
from jsp.models import pad_multiple

log = logging.getLogger("jsp")
IMAGE_SUFFIXES = DATASET_SUFFIXES | {".gif"}  # what datasets read, and DRIVE's GIF masks
FOV_FOLDERS = ("fov", "mask")  # beside the image folder: a folder dataset's fov/, DRIVE's mask/
RETINAL = {"drive", "chase_db1", "stare", "hrf", "synthetic"}  # trained with FOVs derived from a dark surround


def find_images(source: Path) -> list[Path]:
    """The image files to segment: ``source`` itself, or the image files directly in it (sorted)."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise JSPError(f"input={source} is neither an image file nor a folder")
    images = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise JSPError(f"input={source} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def find_fov_file(image: Path, fov: str) -> Path | None:
    """The FOV mask file of ``image``: in folder ``fov``, or (fov=auto) in a ``fov/`` or ``mask/``
    folder beside the image's folder; named like the image, optionally with ``_mask``."""
    folders = [Path(fov).expanduser()] if fov not in ("auto", "derive", "none") else (
        [image.parent.parent / f for f in FOV_FOLDERS] if fov == "auto" else [])
    stem = image.name.split(".")[0]
    for folder in folders:
        for candidate in sorted(folder.glob(stem + "*")) if folder.is_dir() else []:
            if candidate.name.split(".")[0] in (stem, stem + "_mask") and candidate.suffix.lower() in IMAGE_SUFFIXES:
                return candidate
    return None


def fov_of(image_path: Path, image: np.ndarray, fov: str, dataset: str) -> np.ndarray:
    """(H, W) bool FOV: from a mask file when one is found, else derived as the model's training
    data derived it (retinal datasets: dark surround), else the whole image."""
    path = find_fov_file(image_path, fov)
    if path is not None:
        mask = read_image(path, "L") > 127
        if mask.shape != image.shape[:2]:
            raise JSPError(f"FOV mask {path} is {mask.shape[1]}x{mask.shape[0]}, the image {image.shape[1]}x{image.shape[0]}")
        return mask
    if fov not in ("auto", "derive", "none"):
        log.warning("%s: no FOV mask in %s; deriving it from the image", image_path.name, fov)
    if fov == "derive" or (fov != "none" and dataset in RETINAL):
        return derive_fov(image)
    return np.ones(image.shape[:2], bool)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``size`` with at least ``overlap`` shared."""
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


@torch.no_grad()
def predict_tiled(model: nn.Module, x: torch.Tensor, tile: int, overlap: int, batch_size: int,
                  amp: bool = False) -> torch.Tensor:
    """(C, H, W) -> class probabilities (K, H, W). Images no larger than ``tile`` are predicted
    whole (what jsp-eval does); larger ones by overlapping tiles (``tile`` rounded up to the
    model's stride), each tile keeping the part of
    its prediction nearest its own centre, so seams sit away from tile borders."""
    m = pad_multiple(model)
    tile = -(-tile // m) * m  # whole strides: a tile is never padded beyond itself
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return predict(model, x[None], amp)[0]
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    boxes = [(y, x0) for y in ys for x0 in xs]
    out = None
    for i in range(0, len(boxes), batch_size):
        part = boxes[i:i + batch_size]
        crops = torch.stack([x[:, y:y + min(tile, h), x0:x0 + min(tile, w)] for y, x0 in part])
        probs = predict(model, crops, amp)
        out = out if out is not None else torch.empty(probs.shape[1], h, w, device=probs.device)
        for (y, x0), p in zip(part, probs):
            # Each pixel goes to the tile whose centre is nearest: cut halfway through each overlap.
            top = 0 if y == ys[0] else (ys[ys.index(y) - 1] + min(tile, h) - y) // 2
            left = 0 if x0 == xs[0] else (xs[xs.index(x0) - 1] + min(tile, w) - x0) // 2
            out[:, y + top:y + p.shape[1], x0 + left:x0 + p.shape[2]] = p[:, top:, left:]
    return out


def segment(model: nn.Module, image: np.ndarray, fov: np.ndarray, process: dict, scale: float,
            device: torch.device, tile: int, overlap: int, batch_size: int) -> np.ndarray:
    """(H, W, 3) uint8 image -> (K, H, W) float32 probabilities, preprocessed as in training
    (channels, CLAHE, FOV statistics, the dataset's scale; probabilities resized back)."""
    h, w = image.shape[:2]
    if scale != 1.0:
        image, fov = resize(image, scale), resize(fov, scale, nearest=True)
    enhanced = enhance(image, process["channels"], process["clahe"])
    x = torch.from_numpy(normalize(enhanced, fov, *fov_stats(enhanced, fov)))
    probs = predict_tiled(model, x.to(device), tile, overlap, batch_size).float().cpu().numpy()
    if scale != 1.0:
        probs = np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in probs])
    return probs


def write_prediction(out_dir: Path, stem: str, image: np.ndarray, probs: np.ndarray, fov: np.ndarray,
                     overlay: bool = True) -> list[Path]:
    """Write STEM.png (class indices, uint8, 0 outside the FOV), STEM_overlay.png (classes in
    colour over the image) and, for two classes, STEM_prob.png (foreground probability x 255)."""
    classes = probs.argmax(0).astype(np.uint8)
    classes[~fov] = 0
    written = [out_dir / f"{stem}.png"]
    Image.fromarray(classes).save(written[0])
    if overlay:
        colour = PALETTE[classes % len(PALETTE)].astype(np.float32)
        base = image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)
        mix = np.where(classes[..., None] > 0, 0.5 * base + 0.5 * colour, base).astype(np.uint8)
        written.append(out_dir / f"{stem}_overlay.png")
        Image.fromarray(mix).save(written[-1])
    if len(probs) == 2:
        prob = np.where(fov, probs[1], 0.0)
        written.append(out_dir / f"{stem}_prob.png")
        Image.fromarray(np.round(prob * 255).astype(np.uint8)).save(written[-1])
    return written
