"""Training-state checkpoints for resuming: ``RUN/checkpoints/last.pt``.

They hold only tensors, numbers, strings and dicts of them, so they load with
``torch.load(weights_only=True)`` (no pickle code runs). Writes go to a temporary file that
is renamed into place, so a kill never leaves a half-written checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch

from jsp.errors import JSPError
from jsp.files import write_atomic

PLAIN = (dict, list, tuple, str, int, float, bool, type(None), torch.Tensor)


def save_state(path: str | Path, **state) -> Path:
    """Atomically write ``state`` to ``path``; a failed write (full disk) keeps the previous file."""
    return write_atomic(path, lambda tmp: torch.save(state, tmp))


def _plain(value, depth: int = 0) -> bool:
    """Only tensors, numbers, strings, None and containers of them (what resume needs)."""
    if depth > 32 or not isinstance(value, PLAIN):
        return False
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    return True


def load_state(path: str | Path) -> dict:
    """Read a training state without executing pickle; one clear error if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise JSPError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated files and foreign pickles both land here
        raise JSPError(f"cannot load checkpoint {path}: not a readable jsp checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or not {"stage", "step", "model", "layers"} <= set(state) or not _plain(state):
        raise JSPError(f"{path} is not a jsp training checkpoint")
    return state
