"""Peak inference memory: what one batch-1 forward pass at the full image size needs, measured.

The paper's claim is about the test-time memory footprint, and for a segmentation network at
full resolution the activations, not the weights, dominate it. ``peak_memory`` adds the
weights and the input to the allocator's peak during the forward pass (activations and the
kernels' workspaces, e.g. a convolution's im2col buffer): on CUDA the caching allocator's
``max_memory_allocated``; on the CPU the allocations and frees the profiler records
(``profile_memory``), summed in time order.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import torch
from torch import nn

from jsp.metrics.cost import weight_mb


@torch.no_grad()
def peak_memory(model: nn.Module, in_channels: int, size: tuple[int, int], device: torch.device | str = "cpu") -> dict:
    """{"peak_mb": weights + input + forward peak, "activation_mb": the forward's peak above
    what existed before it} in MiB, for a (1, in_channels, H, W) input padded to the model's
    stride as at evaluation, in eval mode, on ``device`` (where the model is)."""
    from jsp.models import padded_size

    device = torch.device(device)
    h, w = padded_size(model, size)
    x = torch.zeros(1, in_channels, h, w, device=device)
    was = model.training
    model.eval()
    try:
        activation = _cuda_peak(model, x) if device.type == "cuda" else _cpu_peak(model, x)
    finally:
        model.train(was)
    input_mb = x.numel() * x.element_size() / 2**20
    return {"peak_mb": weight_mb(model) + input_mb + activation / 2**20, "activation_mb": activation / 2**20}


def _cuda_peak(model: nn.Module, x: torch.Tensor) -> int:
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    base = torch.cuda.memory_allocated(x.device)
    model(x)
    torch.cuda.synchronize(x.device)
    return torch.cuda.max_memory_allocated(x.device) - base


def _cpu_peak(model: nn.Module, x: torch.Tensor) -> int:
    """The largest running sum of the CPU allocations (+) and frees (-) during ``model(x)``."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(x)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@contextmanager
def _quiet_fd2():
    """The profiler's C++ side prints its start and stop on file descriptor 2 (not through
    Python); silence it for the one forward pass it profiles."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
