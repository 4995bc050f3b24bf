"""What a network costs: parameters, MACs at a given input size, weight memory, CPU latency."""
from __future__ import annotations

import copy

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
    from jsp.models import padded_size

    h, w = padded_size(model, size)
    param = next(model.parameters())
    x = torch.zeros(1, in_channels, h, w, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


@torch.no_grad()
def latency(model: nn.Module, in_channels: int, size: tuple[int, int], device: torch.device | str = "cpu",
            max_run_time: float = 5.0) -> dict:
    """Forward-pass wall time of batch 1 at ``size`` (padded as at evaluation) on ``device``, by
    ``torch.utils.benchmark``: a warm-up call, then timed blocks until the spread settles (IQR
    under 10 % of the median) or ``max_run_time`` s; CUDA is synchronised, the thread count fixed.

    Returns {"ms": median, "iqr_ms", "runs": timed calls, "threads"}.
    """
    from torch.utils import benchmark

    from jsp.models import padded_size

    h, w = padded_size(model, size)
    copy_ = copy.deepcopy(model).to(device).float().eval()
    x = torch.zeros(1, in_channels, h, w, device=device)
    copy_(x)  # warm-up: the first call allocates (and picks CUDA kernels)
    threads = torch.get_num_threads()
    timer = benchmark.Timer("model(x)", globals={"model": copy_, "x": x}, num_threads=threads)
    result = timer.adaptive_autorange(threshold=0.1, min_run_time=0.01, max_run_time=max_run_time)
    return {"ms": 1000 * result.median, "iqr_ms": 1000 * result.iqr,
            "runs": int(result.number_per_run * len(result.raw_times)), "threads": threads}


def cost_report(model: nn.Module, in_channels: int, size: tuple[int, int], latency_s: float = 0.0,
                device: torch.device | str = "cpu") -> dict:
    """params, macs, weight_mb at ``size``; the peak inference memory of batch 1 at ``size``
    on ``device`` (``peak_mb``, ``activation_mb``, ``memory_device``: jsp/metrics/memory.py);
    with latency_s > 0 also the CPU latency of batch 1 (``latency_ms``, its IQR, timed calls,
    threads) and, for a CUDA ``device``, ``latency_cuda_ms``."""
    from jsp.metrics.memory import peak_memory

    out = {
        "params": count_params(model),
        "macs": count_macs(model, in_channels, size),
        "weight_mb": weight_mb(model),
        **peak_memory(model, in_channels, size, device),
        "memory_device": torch.device(device).type,
    }
    if latency_s > 0:
        cpu = latency(model, in_channels, size, "cpu", latency_s)
        out.update(latency_ms=cpu["ms"], latency_iqr_ms=cpu["iqr_ms"], latency_runs=cpu["runs"],
                   latency_threads=cpu["threads"])
        if torch.device(device).type == "cuda":
            out["latency_cuda_ms"] = latency(model, in_channels, size, device, latency_s)["ms"]
    return out
