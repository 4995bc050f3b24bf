"""Run outputs: TensorBoard scalars/images/hparams and metrics.json."""
from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from jsp.engine.evaluate import example_panel


def flatten(values: dict, prefix: str = "") -> dict[str, float]:
    """{"iou": {"vessel": 0.7}, "miou": 0.8} -> {"iou/vessel": 0.7, "miou": 0.8}; drops non-numbers."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


class RunLogger:
    """Writes ``RUN/tensorboard/`` events and ``RUN/metrics.json`` (rewritten after each stage)."""

    def __init__(self, run_dir: str | Path, metrics: dict | None = None, purge_step: int | None = None):
        """metrics: stages already recorded (a resumed run); purge_step: TensorBoard drops the
        earlier run's events from this step on, so a resumed run does not log steps twice."""
        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)
        self.metrics: dict[str, dict] = dict(metrics or {})

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        for tag, value in flatten(values, prefix).items():
            self.writer.add_scalar(tag, value, step)

    def histograms(self, prefix: str, values: dict, step: int) -> None:
        """values: {name: 1-D tensor} -> one histogram per name under ``prefix``."""
        for name, tensor in values.items():
            if tensor.numel():
                self.writer.add_histogram(f"{prefix}/{name}", tensor.detach().float().cpu(), step)

    def examples(self, prefix: str, examples: list[dict], step: int) -> None:
        for i, example in enumerate(examples):
            self.writer.add_image(f"{prefix}/example_{i}", example_panel(example), step, dataformats="HWC")

    def stage(self, name: str, metrics: dict) -> None:
        """Record one evaluated stage in metrics.json."""
        self.metrics[name] = metrics
        path = self.run_dir / "metrics.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.metrics, indent=2, default=float))
        tmp.replace(path)

    def hparams(self, hparams: dict, final: dict) -> None:
        """One HParams-tab row: the run's settings and its final metrics."""
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        keys = ("miou", "f1", "auc", "params", "macs", "weight_mb", "units_off")
        metrics = {f"hparams/{k}": float(final[k]) for k in keys if isinstance(final.get(k), (int, float))}
        self.writer.add_hparams(clean, metrics, run_name=".")

    def close(self) -> None:
        self.writer.close()
