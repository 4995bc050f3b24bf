"""Segmentation models: the classic UNet and smp/timm-backed networks."""
from jsp.models.smp_models import SMPModel, mobilenetv3
from jsp.models.unet import UNet

__all__ = ["UNet", "SMPModel", "mobilenetv3", "pad_multiple"]


def pad_multiple(model) -> int:
    """Full images are padded so each side is a multiple of this (the model's total stride)."""
    return int(getattr(model, "pad_multiple", 32))


def padded_size(model, size) -> list[int]:
    """``size`` (H, W) with each side padded up to the model's stride multiple, as at evaluation."""
    m = pad_multiple(model)
    return [-(-int(s) // m) * m for s in size]
