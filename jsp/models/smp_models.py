"""Segmentation networks from segmentation-models-pytorch (encoders from timm).

Weights are never downloaded: ``encoder_weights`` is forced to None, so every model trains
from scratch and runs offline.
"""
from __future__ import annotations

from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
from torch import nn

from jsp.errors import ConfigError

# timm's MobileNetV3 through smp's "tu-" (timm universal) encoder bridge.
MOBILENETV3 = {"large": "tu-mobilenetv3_large_100", "small": "tu-mobilenetv3_small_100"}


class SMPModel(nn.Module):
    """Wraps an smp architecture so every jsp model has the same constructor shape.

    Args:
        in_channels, num_classes: set by the pipeline from the dataset.
        arch: smp architecture name, e.g. "Unet", "FPN", "DeepLabV3Plus", "Linknet".
        encoder: smp encoder name, e.g. "resnet18", "tu-mobilenetv3_large_100".
        encoder_depth: number of encoder stages (inputs are padded to 2**encoder_depth).
        decoder_channels: for Unet-style decoders, channels of each decoder stage.

    forward: (N, in_channels, H, W) -> logits (N, num_classes, H, W).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        arch: str = "Unet",
        encoder: str = "resnet18",
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] | None = None,
    ):
        super().__init__()
        kwargs = dict(
            encoder_name=encoder,
            encoder_weights=None,
            in_channels=in_channels,
            classes=num_classes,
            encoder_depth=encoder_depth,
        )
        if decoder_channels is not None:
            kwargs["decoder_channels"] = list(decoder_channels)
        try:
            self.net = smp.create_model(arch, **kwargs)
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise ConfigError(
                f"cannot build smp model arch={arch!r} encoder={encoder!r}: {e}. "
                "See segmentation_models_pytorch docs for architecture and encoder names."
            ) from None
        self.encoder_depth = encoder_depth

    @property
    def pad_multiple(self) -> int:
        return 2**self.encoder_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mobilenetv3(
    in_channels: int = 3,
    num_classes: int = 2,
    variant: str = "large",
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
) -> SMPModel:
    """U-Net-style segmentation network with a MobileNetV3 (large or small) encoder."""
    if variant not in MOBILENETV3:
        raise ConfigError(f"model.variant must be one of {sorted(MOBILENETV3)}, got {variant!r}")
    return SMPModel(
        in_channels,
        num_classes,
        arch="Unet",
        encoder=MOBILENETV3[variant],
        decoder_channels=decoder_channels,
    )
