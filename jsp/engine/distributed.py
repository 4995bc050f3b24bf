"""One run across processes (torch.distributed): who is rank 0, and the few collectives a
jsp run needs. Every function here is a no-op (or the identity) in a single process, so the
rest of jsp calls them unconditionally.

How a run is split (docs/distributed.md):
- Ranks are started by ``torchrun`` (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment)
  or as the tasks of a submitit job (``hydra.launcher.tasks_per_node=N``; read from
  submitit's job environment). Backend: NCCL on GPUs, gloo on CPU.
- Data parallel: each rank trains on its own slice of every global batch
  (``trainer.batch_size`` stays the global batch); after each backward the gradients and the
  BatchNorm running statistics are averaged over ranks in one all-reduce, so every rank takes
  the same optimiser step, the same proximal step and the same pruning decisions. There is no
  DistributedDataParallel wrapper: its gradient hooks are registered on the parameters it was
  built with and go stale after surgery (pytorch #12603), and jsp's penalty writes into .grad
  itself; an all-reduce after backward has nothing to go stale.
- Rank 0 alone writes (logs, TensorBoard, checkpoints, metrics, saved models); the others
  follow it (``barrier``) before reading what it wrote.
"""
from __future__ import annotations

import datetime
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from jsp.errors import ConfigError, JSPError

log = logging.getLogger("jsp")


class RanksDiffer(JSPError):
    """Ranks that should hold the same state (widths after pruning) do not."""


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def main() -> bool:
    """Whether this process writes (rank 0, or the only process)."""
    return rank() == 0


def _from_submitit() -> None:
    """Export torch.distributed's variables from a submitit job's environment (one task a rank)."""
    if "RANK" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    if env.world_size > 1:
        env.export(set_cuda_visible_devices=False)


def start(device: torch.device) -> None:
    """Join the process group the environment describes (torchrun or submitit); a single
    process (no WORLD_SIZE above 1) does nothing. Backend: NCCL for a CUDA ``device``, else gloo."""
    _from_submitit()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(_cuda_index())
    timeout = datetime.timedelta(seconds=int(os.environ.get("JSP_DIST_TIMEOUT_S", "1800")))
    dist.init_process_group(backend, timeout=timeout)
    if not main():  # one copy of each progress line: rank 0's
        log.setLevel(logging.WARNING)
    log.info("distributed: %d processes (%s), this is rank %d", world(), backend, rank())


def _cuda_index() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()


def local_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` (modulo the visible GPUs) for a CUDA ``device``
    in a distributed run; else ``device``."""
    return torch.device("cuda", _cuda_index()) if device.type == "cuda" and active() else device


def check_batch(batch_size: int) -> int:
    """The per-rank batch of a global ``batch_size``; a world size that does not divide it is refused."""
    if batch_size % world():
        raise ConfigError(f"trainer.batch_size={batch_size} (the global batch) is not divisible by the "
                          f"{world()} processes; use a multiple of {world()}")
    return batch_size // world()


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj):
    """Rank 0's ``obj`` (any picklable value) on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn):
    """``fn()`` run by rank 0 alone, its result on every rank (a measurement the others must
    neither repeat nor disturb, e.g. a latency timing)."""
    return broadcast(fn() if main() else None)


def gather(obj) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank."""
    if not active():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (e.g. a stop signal received by one)."""
    if not active():
        return flag
    t = torch.tensor([int(bool(flag))], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_(*tensors: torch.Tensor) -> None:
    """Sum each tensor over ranks, in place (e.g. confusion matrices; exact for integer counts)."""
    if not active():
        return
    for t in tensors:
        moved = t.to(_comm_device())
        dist.all_reduce(moved)
        t.copy_(moved)


def cat(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``t`` (the same shape on each), concatenated along ``dim`` in rank order."""
    if not active():
        return t
    parts = [torch.empty_like(t, device=_comm_device()) for _ in range(world())]
    dist.all_gather(parts, t.to(_comm_device()).contiguous())
    return torch.cat(parts, dim).to(t.device)


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


@torch.no_grad()
def average_(model: nn.Module) -> None:
    """Average the gradients and the floating-point buffers (BatchNorm's running statistics)
    of ``model`` over ranks, in one all-reduce of one flat tensor per dtype and device."""
    if not active():
        return
    tensors = [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [b for b in model.buffers() if b.is_floating_point()]
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat /= world()
        offset = 0
        for t in group:
            t.copy_(flat[offset: offset + t.numel()].view_as(t))
            offset += t.numel()


@torch.no_grad()
def broadcast_module(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (a stage's start: one set of weights)."""
    if not active():
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


def check_same(value, what: str) -> None:
    """Fail on every rank with one line if ``value`` differs between ranks."""
    values = gather(value)
    if any(v != values[0] for v in values[1:]):
        differ = [r for r, v in enumerate(values) if v != values[0]]
        raise RanksDiffer(f"distributed: the ranks disagree on {what} (ranks {differ} differ from rank 0); "
                          "this is a bug in jsp, please report it with the run's config")


def shard(items: list) -> list:
    """This rank's contiguous share of ``items`` (rank order = item order)."""
    n, r, w = len(items), rank(), world()
    return items[r * n // w:(r + 1) * n // w]


def shared_run_dir(run_dir: Path) -> Path:
    """Rank 0's run dir on every rank. Hydra names a run dir per process (``${now:...}`` differs
    between ranks started a second apart); a rank's own dir, if it differs and holds only what
    Hydra put there, is removed."""
    run_dir = Path(run_dir)
    shared = Path(broadcast(str(run_dir)))
    if shared != run_dir and run_dir.is_dir():
        own = {p.name for p in run_dir.iterdir()}
        if own <= {".hydra"} | {p.name for p in run_dir.glob("*.log")}:
            shutil.rmtree(run_dir, ignore_errors=True)
    return shared
