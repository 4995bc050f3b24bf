"""Segmentation networks from segmentation-models-pytorch (encoders from timm).

Weights are never downloaded: smp's own ``encoder_weights`` is always None. A pretrained
encoder comes from a local file instead (``model.encoder_weights=PATH``: a timm or smp state
dict, safetensors preferred; ``.pt``/``.pth``/``.bin`` are read with ``weights_only``, so the
file cannot run code).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from jsp.errors import ConfigError

log = logging.getLogger("jsp")
MIN_MATCHED = 0.5  # a weights file that fits fewer of the encoder's tensors is the wrong file

# timm's MobileNetV3 through smp's "tu-" (timm universal) encoder bridge.
MOBILENETV3 = {"large": "tu-mobilenetv3_large_100", "small": "tu-mobilenetv3_small_100"}
NAME = r"[A-Za-z0-9_.-]{1,64}"  # an smp architecture or encoder name, as a saved model may give it


class SMPModel(nn.Module):
    """Wraps an smp architecture so every jsp model has the same constructor shape.

    Args:
        in_channels, num_classes: set by the pipeline from the dataset.
        arch: smp architecture name, e.g. "Unet", "FPN", "DeepLabV3Plus", "Linknet".
        encoder: smp encoder name, e.g. "resnet18", "tu-mobilenetv3_large_100".
        encoder_weights: a local weights file for the encoder (None: random initialisation).
        encoder_depth: number of encoder stages (inputs are padded to 2**encoder_depth).
        decoder_channels: for Unet-style decoders, channels of each decoder stage.

    forward: (N, in_channels, H, W) -> logits (N, num_classes, H, W).
    """

    jsp_ranges = {"arch": NAME, "encoder": NAME, "encoder_depth": (1, 6), "decoder_channels": (1, 8192)}

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        arch: str = "Unet",
        encoder: str = "resnet18",
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] | None = None,
        encoder_weights: str | None = None,
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
        if encoder_weights:
            load_encoder_weights(self.net.encoder, encoder_weights)

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
    encoder_weights: str | None = None,
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
        encoder_weights=encoder_weights,
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a torch pickle read with ``weights_only``
    (a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unreadable file: one message naming it)
        raise ConfigError(f"model.encoder_weights={path}: cannot read weights ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.encoder_weights={path}: expected a state dict of tensors")
    return state


def load_encoder_weights(encoder: nn.Module, path: str) -> int:
    """Copy the tensors of ``path`` into ``encoder`` whose names and shapes match, trying the
    names as written, with smp's ``encoder.`` prefix removed and with timm-universal's
    ``model.`` prefix added; returns how many were loaded (a head such as ``fc`` is skipped)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.encoder_weights={file} does not exist (a local file: nothing is downloaded)")
    state = read_state_dict(file)
    own = encoder.state_dict()
    best: dict[str, torch.Tensor] = {}
    for rename in (lambda k: k, lambda k: k.removeprefix("encoder."), lambda k: "model." + k):
        fits = {rename(k): v for k, v in state.items() if rename(k) in own and own[rename(k)].shape == v.shape}
        best = fits if len(fits) > len(best) else best
    wanted = [k for k, v in own.items() if v.is_floating_point()]
    if len(best) < MIN_MATCHED * len(wanted):
        raise ConfigError(f"model.encoder_weights={file} fits {len(best)} of the encoder's {len(wanted)} tensors: "
                          "not weights for this encoder (check model.encoder / model.variant and model.in_channels)")
    encoder.load_state_dict(best, strict=False)
    log.info("encoder weights: %d of %d tensors from %s", len(best), len(own), file)
    return len(best)


mobilenetv3.jsp_ranges = {"variant": tuple(MOBILENETV3), "decoder_channels": (1, 8192)}
