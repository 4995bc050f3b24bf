"""Checkpoints hold only tensors and plain values, so they load with ``weights_only=True``
(no pickle executes); writes go to a temporary file first and are renamed into place, so a
crash never leaves a half-written checkpoint."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from jsp.errors import JSPError


def save_checkpoint(path: str | Path, **content) -> Path:
    """Atomically write ``content`` (state dicts, numbers, strings) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(content, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without executing pickle; clear error if missing or not a jsp checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise JSPError(f"checkpoint {path} does not exist")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated files and foreign pickles both land here
        raise JSPError(f"cannot load checkpoint {path}: not a readable jsp checkpoint ({type(e).__name__})") from None
    if not isinstance(content, dict) or "model" not in content:
        raise JSPError(f"{path} is not a jsp checkpoint (no 'model' entry)")
    return content
