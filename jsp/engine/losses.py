"""Task losses: cross-entropy plus Dice (smp's implementation), each term reported separately."""
from __future__ import annotations

import torch
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn
from torch.nn import functional as F


class CEDiceLoss(nn.Module):
    """``ce * CrossEntropy + dice * Dice`` over class logits.

    forward: logits (N, C, H, W), target (N, H, W) int64 -> (total, {"ce": .., "dice": ..}).
    Pixels equal to ``ignore_index`` are left out of both terms.
    """

    def __init__(self, ce: float = 1.0, dice: float = 1.0, ignore_index: int | None = None):
        super().__init__()
        self.ce_weight, self.dice_weight = ce, dice
        self.ignore_index = -100 if ignore_index is None else ignore_index
        self.dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        terms = {}
        if self.ce_weight:
            terms["ce"] = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index)
        if self.dice_weight:
            terms["dice"] = self.dice(logits.float(), target)
        total = self.ce_weight * terms.get("ce", 0.0) + self.dice_weight * terms.get("dice", 0.0)
        return total, terms


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * mean over pixels of KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et
    al. 2015, per pixel): student, teacher (N, K, H, W) logits -> scalar. T^2 keeps the
    gradient's scale independent of T. Over every pixel of the patch: patches carry no FOV."""
    t = temperature
    log_p_s = F.log_softmax(student.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)   # (N, H, W)
    return t * t * kl.mean()
