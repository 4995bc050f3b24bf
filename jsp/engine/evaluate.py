"""Full-image evaluation: pad to the model's stride, predict, count inside the FOV."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from jsp.data.patches import Prepared
from jsp.metrics import SegmentationMeter
from jsp.models import pad_multiple


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """(N, C, H, W) -> class probabilities (N, K, H, W); reflect-pads to the stride multiple."""
    m = pad_multiple(model)
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if (ph or pw) else x
    with torch.autocast(x.device.type, enabled=amp):
        logits = model(xp)
    return logits[..., :h, :w].float().softmax(1)


@torch.no_grad()
def evaluate(model: nn.Module, images: list[Prepared], num_classes: int, device: torch.device,
             class_names: list[str] | None = None, amp: bool = False, num_examples: int = 0,
             desc: str = "eval", ignore_index: int | None = None) -> tuple[dict, list[dict]]:
    """Metrics over all ``images`` (accumulated, not averaged per image) and a few examples.

    Returns (metrics dict, examples) where each example holds numpy arrays ``image``
    (H, W, C) uint8, ``pred`` and ``label`` (H, W) int64 and ``fov`` (H, W) bool.
    """
    was_training = model.training
    model.eval()
    meter = SegmentationMeter(num_classes, class_names, ignore_index)
    examples = []
    for i, im in enumerate(tqdm(images, desc=desc, leave=False, disable=None)):
        x, label, fov = im.tensors()
        probs = predict(model, x[None].to(device), amp)
        meter.update(probs, label[None].to(device), fov[None].to(device))
        if i < num_examples:
            pred = probs[0].argmax(0).cpu().numpy()
            examples.append({"image": im.image, "pred": pred, "label": im.label, "fov": im.fov})
    model.train(was_training)
    return meter.compute(), examples


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
