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

    def __init__(self, run_dir: str | Path, metrics: dict | None = None, purge_step: int | None = None,
                 writes: bool = True):
        """metrics: stages already recorded (a resumed run); purge_step: TensorBoard drops the
        earlier run's events from this step on, so a resumed run does not log steps twice.
        writes=False (the ranks but 0 of a distributed run): metrics kept in memory, nothing written."""
        self.run_dir, self.writes = Path(run_dir), writes
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step) if writes \
            else NullWriter()
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
        if not self.writes:
            return
        path = self.run_dir / "metrics.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.metrics, indent=2, default=float))
        tmp.replace(path)

    def config_text(self, yaml: str, step: int) -> None:
        """The composed config, readable in TensorBoard's Text tab."""
        self.writer.add_text("config", "    " + yaml.replace("\n", "\n    "), step)  # indented: shown verbatim

    def hparams(self, hparams: dict, final: dict) -> None:
        """One HParams-tab row: the run's settings (str/number/bool) and its final metrics."""
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        keys = ("miou", "f1", "auc", "params", "macs", "weight_mb", "units_off")
        metrics = {f"hparams/{k}": float(final[k]) for k in keys if isinstance(final.get(k), (int, float))}
        self.writer.add_hparams(clean, metrics, run_name=".")

    def close(self) -> None:
        self.writer.close()


class NullWriter:
    """A SummaryWriter that writes nothing (a rank that does not write)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def log_units(logger: RunLogger, constraint, step: int) -> dict:
    """Per-layer unit statistics to TensorBoard; returns the switched-off fractions."""
    report = constraint.unit_report()
    logger.scalars("units", {"off_fraction": report["units_off"]}, step)
    logger.scalars("units/off_fraction_layer", report["units_off_layers"], step)
    logger.histograms("units/norm", {l.name: l.norms() for l in constraint.layers}, step)
    for stat, per_layer in constraint.statistics().items():
        logger.histograms(f"units/{stat}", per_layer, step)
    return report


def summary_table(metrics: dict, run_dir: Path, choices: dict) -> str:
    """The end-of-run table: one row per evaluated stage."""
    keys = [k for k in ("miou", "f1", "auc", "se", "sp", "acc") if k in metrics["final"]]
    lines = [f"jsp run: {', '.join(f'{g}={c}' for g, c in choices.items())}",
             f"{'stage':<10}" + "".join(f"{k:>9}" for k in keys) + f"{'params':>12}{'MMACs':>11}{'MB':>8}{'peakMB':>8}{'off%':>7}"
             + f"{'cut':>10}"]
    for name, m in metrics.items():
        cut = f"{m['cut_logit_change']:>10.2g}" if "cut_logit_change" in m and name != "final" else f"{'':>10}"
        lines.append(f"{name:<10}" + "".join(f"{m[k]:>9.4f}" for k in keys)
                     + f"{m['params']:>12,}{m['macs'] / 1e6:>11.1f}{m['weight_mb']:>8.2f}{m.get('peak_mb', float('nan')):>8.1f}"
                     + f"{100 * m['units_off']:>7.1f}"
                     + cut)
    lines.append("cut: the largest change of the logits on two validation images that pruning caused (0: none); "
                 "peakMB: weights + input + activations of one full-size image")
    lines.append(f"time {metrics['final']['time_s']:.0f} s; outputs in {run_dir} "
                 f"(tensorboard --logdir {run_dir / 'tensorboard'})")
    return "\n".join(lines)
