"""Latency as a pruning cost (``schedule.keep_latency``, ``schedule.budget_on=latency``).

A network's latency is predicted as the sum of its convolutions' latencies, each read from a
table of single convolutions timed on this device (HALP, Shen et al. 2022): one entry per
geometry (kind, kernel, stride, padding, dilation, depthwise, input H x W) and width pair
(in, out) on a fixed grid of widths, linearly interpolated between grid points. Entries are
timed when first needed and cached on disk in one JSON file per device description (device
name, threads, torch version, dtype), so a change of device or thread count starts a new
table and a change of image size asks for new geometries; a cache file whose description
differs is ignored. The table only proposes cuts; the search (latency_search.py) times each
against the model (``measure``: paired, interleaved blocks) and chooses on the timings.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from jsp.provenance import cpu_name

log = logging.getLogger("jsp")

# Widths the table is timed at; between them latency is interpolated linearly. Multiples of 8
# from 8 on, because CPU and GPU kernels block channels by 8 or 16 (the steps a search exploits).
GRID = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


@dataclass(frozen=True)
class ConvShape:
    """One convolution as the table keys it: input (1, cin, height, width) -> cout channels."""
    transposed: bool
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    output_padding: tuple
    depthwise: bool
    height: int
    width: int
    cin: int
    cout: int

    def geometry(self) -> str:
        """The key without the widths."""
        return "|".join(str(v) for k, v in asdict(self).items() if k not in ("cin", "cout"))

    def module(self) -> nn.Module:
        """A fresh convolution of this shape (for timing)."""
        groups = self.cin if self.depthwise else 1
        if self.transposed:
            return nn.ConvTranspose2d(self.cin, self.cout, self.kernel, self.stride, self.padding,
                                      self.output_padding, groups, dilation=self.dilation)
        return nn.Conv2d(self.cin, self.cout, self.kernel, self.stride, self.padding, self.dilation, groups)


def conv_shapes(model: nn.Module, in_channels: int, size: tuple[int, int]) -> list[ConvShape]:
    """The ConvShape of every convolution in a forward pass at ``size`` (padded as at
    evaluation), batch 1; works on a meta-device model (no compute)."""
    from jsp.models import padded_size

    shapes, handles = [], []

    def hook(m, inputs, output):
        x = inputs[0]
        depthwise = m.groups > 1 and m.groups == x.shape[1]
        if m.groups > 1 and not depthwise:
            raise NotImplementedError(f"latency: grouped convolutions ({m.groups} groups) are not in the table")
        out = m.weight.shape[1] * m.groups if isinstance(m, nn.ConvTranspose2d) else m.weight.shape[0]
        shapes.append(ConvShape(isinstance(m, nn.ConvTranspose2d), tuple(m.kernel_size), tuple(m.stride),
                                tuple(m.padding), tuple(m.dilation), tuple(getattr(m, "output_padding", (0, 0))),
                                depthwise, int(x.shape[2]), int(x.shape[3]), int(x.shape[1]), int(out)))

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            handles.append(m.register_forward_hook(hook))
    param = next(model.parameters())
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, *padded_size(model, size), device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return shapes


def _brackets(c: int) -> list[tuple[int, float]]:
    """[(grid width, weight)]: the grid points around ``c`` and their interpolation weights."""
    if c in GRID:
        return [(c, 1.0)]
    if c > GRID[-1]:  # beyond the grid: linear from its last two points
        a, b = GRID[-2], GRID[-1]
        return [(a, (b - c) / (b - a)), (b, (c - a) / (b - a))]
    hi = next(g for g in GRID if g > c)
    lo = GRID[GRID.index(hi) - 1]
    return [(lo, (hi - c) / (hi - lo)), (hi, (c - lo) / (hi - lo))]


class LatencyTable:
    """Predicted latency (ms) of a model from timed single convolutions on ``device``.

    cache_dir: where tables are kept (None: in memory only). ``measured`` counts the entries
    timed by this object (tests; the log). ``share(fn)``: how a timing is taken, by default
    ``fn()``; a distributed run passes one that times on rank 0 and gives every rank its
    result, so all ranks choose the same cut. Subclass and override ``time_conv`` and
    ``time_blocks`` for another runtime (or a deterministic fake in tests).
    """

    def __init__(self, device: torch.device | str = "cpu", cache_dir: str | Path | None = None, share=None):
        self.device, self.share = torch.device(device), share or (lambda fn: fn())
        self.description = self.describe()
        self.path = None
        if cache_dir is not None:
            key = hashlib.sha256(json.dumps(self.description, sort_keys=True).encode()).hexdigest()[:16]
            self.path = Path(cache_dir).expanduser() / f"{key}.json"
        self.entries: dict[str, float] = self._load()
        self.measured = 0
        self.scale, self.offset = 1.0, 0.0  # predict = scale * (sum of the table's convolutions) + offset

    def describe(self) -> dict:
        """What the timings depend on besides the shapes: a change starts a new table."""
        dev = self.device
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
        return {"device": dev.type, "name": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
                "dtype": "float32", "runtime": "torch eager", "batch": 1}

    def _load(self) -> dict:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            log.warning("latency: the table %s is unreadable; timing anew", self.path)
            return {}
        if saved.get("description") != self.description:
            return {}
        return {k: float(v) for k, v in saved.get("entries", {}).items()}

    def save(self) -> None:
        if self.path is None or not self.measured:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"description": self.description, "entries": self.entries}, indent=0))
        tmp.replace(self.path)  # atomic: a concurrent reader sees the old or the new table

    def conv_ms(self, shape: ConvShape) -> float:
        """The table's latency of ``shape``, interpolated between grid widths."""
        total = 0.0
        for ci, wi in _brackets(shape.cin):  # a depthwise convolution has one width (cin = cout)
            for co, wo in [(ci, 1.0)] if shape.depthwise else _brackets(shape.cout):
                total += wi * wo * self._entry(replace(shape, cin=ci, cout=co))
        return total

    def _entry(self, shape: ConvShape) -> float:
        key = f"{shape.geometry()}|{shape.cin}x{shape.cout}"
        if key not in self.entries:
            self.entries[key] = self.share(lambda: self.time_conv(shape))
            self.measured += 1
        return self.entries[key]

    def predict(self, model: nn.Module, in_channels: int, size: tuple[int, int]) -> float:
        """Predicted latency (ms) of ``model`` at ``size``: the sum of its convolutions', then
        the calibration's line (``calibrate``; none: the sum itself)."""
        total = sum(self.conv_ms(s) for s in conv_shapes(model, in_channels, size))
        self.save()
        return max(self.scale * total + self.offset, 0.0)

    def calibrate(self, models: list[nn.Module], in_channels: int, size: tuple[int, int]) -> list[float]:
        """Fit measured = scale * table + offset through two networks timed side by side
        (at setup the dense one and the smallest cut, the ends of what a search visits; during
        a budget run the dense one and the cut the controller is heading for: a secant through
        the point it steers); returns their ms (the first's median, the others' as the first's
        times their paired ratio, which drift does not move). The table sums convolutions
        alone, and what else runs (normalisation, activations, pooling, copies, the framework's
        overhead) grows with the network too, so a line corrects most of it. Without two
        distinct points (or a falling line) the sum is scaled to the first network's time."""
        self.scale, self.offset = 1.0, 0.0
        raw = [self.predict(m, in_channels, size) for m in models]
        timing = self.measure(models, in_channels, size)
        ms = [timing.ms[0] * k for k in timing.keep]
        slope = (ms[0] - ms[-1]) / (raw[0] - raw[-1]) if len(models) > 1 and raw[0] != raw[-1] else 0.0
        if slope > 0:
            self.scale, self.offset = slope, ms[0] - slope * raw[0]
        else:
            self.scale = ms[0] / raw[0]
        return ms

    def measure(self, models: list[nn.Module], in_channels: int, size: tuple[int, int]) -> "Timing":
        """``time_blocks`` through ``share``, summarised: each model's median ms and its time
        as a fraction of the first model's."""
        return Timing.of(self.share(lambda: self.time_blocks(models, in_channels, size)))

    def time_conv(self, shape: ConvShape) -> float:
        """Ms of one call of a fresh convolution of ``shape`` on the device: the fastest of 5
        blocks (another process's load only ever adds time)."""
        conv = shape.module().to(self.device).eval()
        x = torch.randn(1, shape.cin, shape.height, shape.width, device=self.device)
        return min(_blocks([lambda: conv(x)], self.device, blocks=5)[0])

    def time_blocks(self, models: list[nn.Module], in_channels: int, size: tuple[int, int],
                    blocks: int = 15) -> list[list[float]]:
        """Per model, the ms per forward pass in each of ``blocks`` interleaved blocks (batch 1,
        ``size`` padded): model after model in each block, so the machine's drift falls on
        them alike. Each is timed as a copy in eval mode without hooks (a training run's
        statistics hooks are not inference)."""
        from jsp.models import padded_size

        calls = []
        for m in models:
            m = plain_copy(m).to(self.device)
            x = torch.zeros(1, in_channels, *padded_size(m, size), device=self.device)
            calls.append(lambda m=m, x=x: m(x))
        return _blocks(calls, self.device, blocks)


@dataclass(frozen=True)
class Timing:
    """Models timed side by side. ms: each one's median ms per call; keep: each one's time as
    a fraction of the first's, the median over blocks of the ratio within a block. On this
    kind of noisy CPU the paired ratio of a UNet cut varies about half as much between
    repeats as the ratio of the medians: the machine's speed drifts by 30 % within a minute."""
    ms: list[float]
    keep: list[float]

    @staticmethod
    def of(blocks: list[list[float]]) -> "Timing":
        ms = [statistics.median(b) for b in blocks]
        keep = [statistics.median(x / r for r, x in zip(blocks[0], b)) for b in blocks]
        return Timing(ms, keep)


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with no forward hooks."""
    out = copy.deepcopy(model).eval()
    for m in out.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return out


@torch.no_grad()
def _blocks(calls: list, device: torch.device, blocks: int) -> list[list[float]]:
    """Per call, its mean ms per call in each of ``blocks`` interleaved blocks (each block
    repeats a call until it has taken about 20 ms)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    reps = []
    for call in calls:  # warm-up, and how many calls make a block
        call()
        sync()
        t = time.perf_counter()
        call()
        sync()
        reps.append(max(1, int(0.02 / max(time.perf_counter() - t, 1e-6))))
    times = [[] for _ in calls]
    for b in range(blocks):  # rotated: no network always runs right after the same other one
        for i in [(b + j) % len(calls) for j in range(len(calls))]:
            call = calls[i]
            t = time.perf_counter()
            for _ in range(reps[i]):
                call()
            sync()
            times[i].append(1000 * (time.perf_counter() - t) / reps[i])
    return times
