"""What a network costs: parameters, MACs at a given input size, weight memory, CPU latency."""
from __future__ import annotations

import copy
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_mb(model: nn.Module) -> float:
    """Memory of parameters and buffers (BatchNorm statistics included), in MiB."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


@torch.no_grad()
def count_macs(model: nn.Module, in_channels: int, size: tuple[int, int]) -> int:
    """Multiply-accumulates of one forward pass on a (1, in_channels, H, W) input.

    Uses torch's own FLOP counter (convolutions and matmuls; 1 MAC = 2 FLOPs). The input is
    ``size`` padded up to the model's stride multiple, as at evaluation.
    """
    from jsp.models import pad_multiple

    m = pad_multiple(model)
    h, w = (-(-s // m) * m for s in size)
    param = next(model.parameters())
    x = torch.zeros(1, in_channels, h, w, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, in_channels: int, size: tuple[int, int], reps: int = 5) -> float:
    """Median CPU wall time (ms) of a batch-1 forward pass at ``size`` (padded as at evaluation)."""
    from jsp.models import pad_multiple

    m = pad_multiple(model)
    h, w = (-(-s // m) * m for s in size)
    cpu_model = copy.deepcopy(model).cpu().float().eval()
    x = torch.zeros(1, in_channels, h, w)
    cpu_model(x)  # warm-up: first call allocates
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        cpu_model(x)
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def cost_report(model: nn.Module, in_channels: int, size: tuple[int, int], latency_reps: int = 0) -> dict:
    """params, macs, weight_mb (and latency_ms when latency_reps > 0) of ``model`` at ``size``."""
    out = {
        "params": count_params(model),
        "macs": count_macs(model, in_channels, size),
        "weight_mb": weight_mb(model),
    }
    if latency_reps > 0:
        out["latency_ms"] = cpu_latency_ms(model, in_channels, size, latency_reps)
    return out
