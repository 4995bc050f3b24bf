"""Helpers to put a run back where it was: weights into a (possibly pruned) model, and the
constraint's per-unit statistics to and from safetensors."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from jsp.models.saved import narrow_to


def restore_weights(model: nn.Module, layers: dict[str, dict], state: dict[str, torch.Tensor]) -> None:
    """Give ``model`` the saved layer widths, then the saved weights (in place)."""
    narrow_to(model, layers, state)
    device = next(model.parameters()).device
    model.to(device)
    model.load_state_dict(state)


def save_constraint_stats(folder: Path, stats: dict[str, dict[str, torch.Tensor]]) -> None:
    """{stat: {layer: (U,)}} -> folder/constraint.safetensors (keys "stat/layer")."""
    flat = {f"{stat}/{layer}": t.contiguous() for stat, per_layer in stats.items() for layer, t in per_layer.items()}
    if flat:
        save_file(flat, str(Path(folder) / "constraint.safetensors"))


def load_constraint_stats(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    path = Path(folder) / "constraint.safetensors"
    if not path.is_file():
        return {}
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(path)).items():
        stat, layer = key.split("/", 1)
        out.setdefault(stat, {})[layer] = t
    return out
