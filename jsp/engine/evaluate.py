"""Full-image evaluation: pad to the model's stride, predict, count inside the FOV."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from jsp.data.patches import Prepared
from jsp.engine import distributed
from jsp.metrics import SegmentationMeter
from jsp.models import pad_multiple


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """(N, C, H, W) -> logits (N, K, H, W), float32; reflect-pads to the stride multiple."""
    m = pad_multiple(model)
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if (ph or pw) else x
    with torch.autocast(x.device.type, enabled=amp):
        logits = model(xp)
    return logits[..., :h, :w].float()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """(N, C, H, W) -> class probabilities (N, K, H, W); reflect-pads to the stride multiple."""
    return logits_of(model, x, amp).softmax(1)


@torch.no_grad()
def probe(model: nn.Module, images: list[Prepared], device: torch.device, n: int = 2) -> list[torch.Tensor]:
    """Logits (K, H, W) of the first ``n`` full ``images`` in eval mode: a fixed probe batch,
    to measure how much an operation (the pruning cut) changed the network's function."""
    was = model.training
    model.eval()
    try:
        return [logits_of(model, im.tensors()[0][None].to(device))[0] for im in images[:n]]
    finally:
        model.train(was)


class Evaluation(NamedTuple):
    """metrics: over all images (confusion counts summed, not per-image means); examples: a few
    dicts of numpy arrays ``image`` (H, W, C) uint8, ``pred``/``label`` (H, W) int64, ``fov`` (H, W)
    bool; per_image: one row per image (its name, its metrics and its confusion counts)."""

    metrics: dict
    examples: list[dict]
    per_image: list[dict]


@torch.no_grad()
def evaluate(model: nn.Module, images: list[Prepared], num_classes: int, device: torch.device,
             class_names: list[str] | None = None, amp: bool = False, num_examples: int = 0,
             desc: str = "eval", ignore_index: int | None = None, split_ranks: bool = False) -> Evaluation:
    """Metrics over all ``images``, per image, and the first ``num_examples`` predictions.

    split_ranks: in a distributed run each rank evaluates its share of ``images`` and the
    counts are summed over ranks (exact: integers), so every rank gets the metrics one process
    would compute from the same weights."""
    split = split_ranks and distributed.active()
    meter = SegmentationMeter(num_classes, class_names, ignore_index)
    examples, per_image = [], []
    was_training = model.training
    model.eval()
    for i, im in enumerate(tqdm(distributed.shard(images) if split else images, desc=desc, leave=False,
                                disable=None)):
        x, label, fov = im.tensors()
        probs = predict(model, x[None].to(device), amp)
        one = SegmentationMeter(num_classes, class_names, ignore_index)
        one.update(probs, label[None].to(device), fov[None].to(device))
        meter.merge(one)
        per_image.append(image_row(im.name, one))
        if i < num_examples:
            pred = probs[0].argmax(0).cpu().numpy()
            examples.append({"image": im.image, "pred": pred, "label": im.label, "fov": im.fov})
    model.train(was_training)
    if split:  # the shares are contiguous and in rank order: gathered, they are in image order
        distributed.sum_(meter.cm, meter.pos, meter.neg)
        examples = [e for share in distributed.gather(examples) for e in share][:num_examples]
        per_image = [row for share in distributed.gather(per_image) for row in share]
    return Evaluation(meter.compute(), examples, per_image)


def image_row(name: str, meter: SegmentationMeter) -> dict:
    """One image's row: its metrics (per-class IoU as ``iou_<class>``) and confusion counts
    ``cm_<target>_<predicted>``, so that summing the counts over images gives the set's metrics."""
    metrics = meter.compute()
    row = {"image": name, **{k: v for k, v in metrics.items() if k != "iou"}}
    row.update({f"iou_{c}": v for c, v in metrics["iou"].items()})
    cm = meter.cm.numpy()
    row.update({f"cm_{t}_{p}": int(cm[t, p]) for t in range(len(cm)) for p in range(len(cm))})
    return row


def write_per_image(path: Path, rows: list[dict]) -> None:
    """``rows`` (from :func:`evaluate`) as CSV, one line per image; empty values for undefined IoU."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["image"])
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)


PALETTE = np.array([[0, 0, 0], [255, 255, 255], [230, 25, 75], [60, 180, 75], [255, 225, 25],
                    [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                    [210, 245, 60], [250, 190, 212]], dtype=np.uint8)


def example_panel(example: dict) -> np.ndarray:
    """Input | prediction | label side by side, (H, 3W, 3) uint8, classes coloured by PALETTE."""
    image = example["image"]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)

    def colour(classes: np.ndarray) -> np.ndarray:
        out = PALETTE[np.clip(classes, 0, len(PALETTE) - 1) % len(PALETTE)]
        out[~example["fov"]] //= 3  # dim what is outside the FOV (not scored)
        return out

    return np.concatenate([image, colour(example["pred"]), colour(example["label"])], axis=1)
