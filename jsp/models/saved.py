"""The saved-model format: a folder with

    model.json          how to build the network (builder target and arguments), the width of
                        every convolution / BatchNorm after pruning, the data processing it
                        was trained with, its class names and the metrics it scored
    model.safetensors   the weights (state dict)

Loading builds the dense network from ``builder``, narrows each layer to the saved widths,
and loads the weights: no pickle runs, and no training config is needed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from hydra.utils import instantiate
from safetensors.torch import load_file, save_file
from torch import nn

from jsp.errors import JSPError

FORMAT = "jsp-model/1"
BN = nn.modules.batchnorm._BatchNorm


def layer_spec(model: nn.Module) -> dict[str, dict]:
    """Channel widths of every convolution and BatchNorm, by module name."""
    spec = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            spec[name] = {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, BN):
            spec[name] = {"num_features": m.num_features}
    return spec


def save_model(folder: str | Path, model: nn.Module, builder: dict, **info) -> Path:
    """Write ``model.json`` and ``model.safetensors`` into ``folder`` (created).

    builder: {"_target_": "jsp.models....", **kwargs} that builds the dense network.
    info: anything JSON-serialisable to keep beside it (data processing, metrics, stage).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(folder / "model.safetensors")
    meta = {"format": FORMAT, "builder": builder, "layers": layer_spec(model), **info}
    (folder / "model.json").write_text(json.dumps(meta, indent=2, default=float))
    return folder


def narrow_to(model: nn.Module, layers: dict[str, dict], state: dict[str, torch.Tensor]) -> None:
    """Give every layer the saved widths and tensors of the saved shapes."""
    modules = dict(model.named_modules())
    for name, spec in layers.items():
        m = modules.get(name)
        if m is None:
            raise JSPError(f"saved model names a layer {name!r} that the built network does not have")
        for attr, value in spec.items():
            setattr(m, attr, value)
    for key, value in state.items():
        owner, _, attr = key.rpartition(".")
        m = modules.get(owner)
        if m is None:
            continue
        current = getattr(m, attr, None)
        if isinstance(current, torch.Tensor) and current.shape != value.shape:
            if isinstance(current, nn.Parameter):
                setattr(m, attr, nn.Parameter(torch.empty(value.shape, dtype=current.dtype, device=current.device)))
            else:
                m.register_buffer(attr, torch.empty(value.shape, dtype=current.dtype, device=current.device))


def load_model(folder: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a saved (dense or pruned) model; returns (model in eval mode, model.json content)."""
    folder = Path(folder)
    if folder.is_file() and folder.name in ("model.json", "model.safetensors"):
        folder = folder.parent
    meta_path, weights = folder / "model.json", folder / "model.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise JSPError(f"{folder} is not a saved jsp model: expected {meta_path.name} and {weights.name} in it")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise JSPError(f"{meta_path} is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise JSPError(f"{meta_path} is not a jsp model description (format {meta.get('format')!r})")
    target = str(meta["builder"].get("_target_", ""))
    if not target.startswith("jsp.models."):  # only jsp's own builders, never arbitrary code
        raise JSPError(f"{meta_path}: refusing to build {target!r} (only jsp.models.* builders are allowed)")
    try:
        state = load_file(str(weights))
    except Exception as e:  # truncated or foreign file
        raise JSPError(f"cannot read weights {weights}: {e}") from None
    model = instantiate(meta["builder"])
    narrow_to(model, meta["layers"], state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise JSPError(f"weights in {weights} do not fit the saved architecture: {e}") from None
    return model.to(map_location).eval(), meta
