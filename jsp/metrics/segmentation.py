"""Segmentation metrics as pure functions of statistics accumulated over a whole evaluation set.

Pixels outside the field of view and pixels labelled ``ignore_index`` are not counted.
"""
from __future__ import annotations

import numpy as np
import torch

AUC_BINS = 10_000


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = target class, columns = predicted class.

    pred, target: (...) integer class maps of the same shape; valid: (...) bool, or None.
    Target values outside [0, num_classes) (e.g. an ignore index) are skipped.
    """
    keep = (target >= 0) & (target < num_classes)
    if valid is not None:
        keep &= valid
    idx = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


def metrics_from_confusion(cm: np.ndarray | torch.Tensor, class_names: list[str] | None = None) -> dict:
    """mIoU (mean over classes present in target or prediction, background included), per-class
    IoU and pixel accuracy; for two classes also the foreground (class 1) F1/Dice, sensitivity,
    specificity and precision."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union
    names = class_names or [str(i) for i in range(len(cm))]
    out = {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
        "acc": float(tp.sum() / max(cm.sum(), 1)),
        "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
    }
    if len(cm) == 2:
        tn, fp, fn, tp1 = cm[0, 0], cm[0, 1], cm[1, 0], cm[1, 1]
        out["se"] = float(tp1 / max(tp1 + fn, 1))
        out["sp"] = float(tn / max(tn + fp, 1))
        out["precision"] = float(tp1 / max(tp1 + fp, 1))
        out["f1"] = float(2 * tp1 / max(2 * tp1 + fp + fn, 1))
    return out


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve from score histograms of positives and negatives.

    pos, neg: (bins,) counts over equal score bins in increasing score order. Pairs in the
    same bin count one half (the trapezoid rule), so the result is exact when no two
    different scores share a bin.
    """
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg  # negatives scoring strictly lower than this bin
    return float((pos * (neg_below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


class SegmentationMeter:
    """Accumulates a confusion matrix (and, for binary tasks, score histograms for AUC)."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None, ignore_index: int | None = None):
        self.num_classes, self.class_names, self.ignore_index = num_classes, class_names, ignore_index
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.pos = torch.zeros(AUC_BINS, dtype=torch.int64)
        self.neg = torch.zeros(AUC_BINS, dtype=torch.int64)

    def update(self, probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """probs: (N, C, H, W) class probabilities; target: (N, H, W); valid: (N, H, W) bool."""
        if self.ignore_index is not None:
            ignored = target == self.ignore_index
            valid = ~ignored if valid is None else valid & ~ignored
        pred = probs.argmax(1)
        self.cm += confusion_matrix(pred, target, self.num_classes, valid)
        if self.num_classes == 2:
            keep = (target >= 0) & (target < 2)
            if valid is not None:
                keep &= valid
            score = probs[:, 1][keep]
            bins = (score.float() * AUC_BINS).long().clamp_(0, AUC_BINS - 1)
            positive = target[keep] == 1
            self.pos += torch.bincount(bins[positive], minlength=AUC_BINS).cpu()
            self.neg += torch.bincount(bins[~positive], minlength=AUC_BINS).cpu()

    def merge(self, other: "SegmentationMeter") -> None:
        """Add another meter's counts (same classes): the totals of both evaluation sets."""
        self.cm += other.cm
        self.pos += other.pos
        self.neg += other.neg

    def compute(self) -> dict:
        out = metrics_from_confusion(self.cm, self.class_names)
        if self.num_classes == 2:
            out["auc"] = auc_from_histograms(self.pos.numpy(), self.neg.numpy())
        return out
