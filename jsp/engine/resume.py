"""Helpers to put a run back where it was: whether to resume, weights into a (possibly pruned)
model, and the constraint's per-unit statistics to and from safetensors."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from jsp.errors import ConfigError
from jsp.files import write_bytes, write_safetensors
from jsp.models.saved import narrow_to

MARKER = Path("checkpoints") / "PREEMPTED"
log = logging.getLogger("jsp")


def resuming(setting, run_dir: Path) -> bool:
    """Whether this job continues the run in ``run_dir``.

    setting: true (always, when there is something to continue), false (start over), or "auto"
    (only when the last job in ``run_dir`` was preempted, e.g. a requeued Slurm job).
    """
    if setting not in (True, False, "auto"):
        raise ConfigError(f"resume must be true, false or auto, got {setting!r}")
    marker = Path(run_dir) / MARKER
    if setting == "auto" and marker.is_file():
        log.info("resume: the previous job in %s was preempted (%s); continuing it", run_dir,
                 marker.read_text().strip()[:200])
        return True
    if setting is False:
        marker.unlink(missing_ok=True)
    return setting is True


def mark_preempted(run_dir: Path, signal_name: str | None) -> None:
    """Leave the mark that makes the next job on ``run_dir`` resume (with resume=auto)."""
    write_bytes(Path(run_dir) / MARKER, json.dumps({"signal": signal_name}).encode())


def clear_preempted(run_dir: Path) -> None:
    (Path(run_dir) / MARKER).unlink(missing_ok=True)


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
        write_safetensors(Path(folder) / "constraint.safetensors", flat)


def load_constraint_stats(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    path = Path(folder) / "constraint.safetensors"
    if not path.is_file():
        return {}
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(path)).items():
        stat, layer = key.split("/", 1)
        out.setdefault(stat, {})[layer] = t
    return out
