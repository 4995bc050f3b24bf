"""Training-state checkpoints for resuming: ``RUN/checkpoints/last.pt``.

They hold only tensors, numbers, strings and dicts of them, so they load with
``torch.load(weights_only=True)`` (no pickle code runs). Writes go to a temporary file that
is renamed into place, so a kill never leaves a half-written checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from jsp.errors import JSPError


def save_state(path: str | Path, **state) -> Path:
    """Atomically write ``state`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(path: str | Path) -> dict:
    """Read a training state without executing pickle; one clear error if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise JSPError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated files and foreign pickles both land here
        raise JSPError(f"cannot load checkpoint {path}: not a readable jsp checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or not {"stage", "step", "model", "layers"} <= set(state):
        raise JSPError(f"{path} is not a jsp training checkpoint")
    return state
