"""Start training from a saved jsp model's weights (``init_from=FOLDER``).

Pruning a network that is already trained is how most users meet compression: they have a
model and want a smaller one. It also lets a benchmark train the dense network once per seed
and give every method the same starting weights. The source is read with the safe loader
(jsp/models/saved.py: JSON and safetensors, nothing executed) and must be the very network
the config builds: same architecture, same widths, every tensor the same shape.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from torch import nn

from jsp.errors import ConfigError, JSPError
from jsp.models.saved import load_model


def saved_folder(path: str | Path) -> Path:
    """The saved-model folder ``path`` names: itself, or a run dir's ``checkpoints/final``."""
    path = Path(path).expanduser()
    if (path / "checkpoints" / "final" / "model.json").is_file():
        return path / "checkpoints" / "final"
    if path.is_file() and path.name in ("model.json", "model.safetensors"):
        return path.parent
    return path


def warm_start(model: nn.Module, path: str | Path) -> str:
    """Copy the weights (and BatchNorm statistics) saved at ``path`` into ``model`` in place.

    Returns the SHA-256 of the weights file, which identifies the start (dense cache key,
    provenance). Raises ConfigError when the saved network is not the one ``model`` is.
    """
    folder = saved_folder(path)
    size = sum(t.numel() for t in model.state_dict().values())  # the source must be this network: no bigger
    try:
        source, _ = load_model(folder, "cpu", size)  # refuses anything it would not build; runs no code
    except JSPError as e:
        raise ConfigError(f"init_from={path}: {e}") from None
    mine, theirs = model.state_dict(), source.state_dict()
    for key in sorted(set(mine) | set(theirs)):
        if key not in theirs or key not in mine or mine[key].shape != theirs[key].shape:
            raise ConfigError(f"init_from={path}: the saved network is not the one model= builds: {key} is "
                              f"{tuple(theirs[key].shape) if key in theirs else 'missing'} there, "
                              f"{tuple(mine[key].shape) if key in mine else 'missing'} here (a pruned network "
                              "cannot be a start: use a dense one, e.g. a method=dense run)")
    model.load_state_dict(theirs, strict=True)
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
