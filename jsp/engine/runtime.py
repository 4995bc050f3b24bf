"""Run set-up helpers: seeding, device choice, the training-patch loader."""
from __future__ import annotations

import multiprocessing
import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from jsp.data import PatchDataset
from jsp.errors import ConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is available; use trainer.device=auto or cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"trainer.device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def patch_loader(images, process, steps: int, batch_size: int, seed: int, workers, device,
                 start: int = 0, part: tuple[int, int] = (0, 1)) -> DataLoader:
    """DataLoader over batches ``start .. steps-1`` of the stage's random training patches.

    part (rank, world): this rank's share of each global batch of ``batch_size`` patches, its
    ``batch_size / world`` consecutive patches: the ranks' shares make up the batch one
    process would draw."""
    dataset = PatchDataset(images, process["patch_size"], steps * batch_size, seed, process["augment"])
    rank, world = part
    share = batch_size // world
    if start or world > 1:  # items are functions of their index: a resumed stage sees the same stream
        dataset = Subset(dataset, [t * batch_size + rank * share + j for t in range(start, steps)
                                   for j in range(share)])
    if workers == "auto":  # on CPU the cores are better spent on the model
        workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    # Name the start method: inside a joblib (loky) job the process-wide default is loky's own,
    # with which DataLoader workers fail to start ('Process' object has no attribute 'env').
    context = "fork" if int(workers) and "fork" in multiprocessing.get_all_start_methods() else None
    return DataLoader(dataset, batch_size=share, shuffle=False, num_workers=int(workers),
                      pin_memory=device.type == "cuda", drop_last=True, multiprocessing_context=context)
