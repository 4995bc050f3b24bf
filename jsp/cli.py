"""Entry points. ``jsp-train`` composes the config from ``conf/`` and runs the pipeline.

The configs live in the repository's top-level ``conf/``; a wheel (``pip install .``) ships
them inside the package as ``jsp/conf/``. Either is found whatever the working directory.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from jsp.errors import JSPError

def _conf_dir() -> str:
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):  # installed wheel, then source checkout
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    return str(here.parent / "conf")  # Hydra then says the primary config directory is missing


CONF_DIR = _conf_dir()
log = logging.getLogger("jsp")


def objective(final: dict, max_params: int | None) -> float:
    """What sweepers maximise: the final network's *validation* mIoU (never test: settings are
    chosen on validation), minus 1 when it has more than ``max_params`` parameters."""
    if max_params and final["params"] > max_params:
        return final["val_miou"] - 1.0  # over the budget: worse than any run within it
    return final["val_miou"]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train_main(cfg: DictConfig) -> float:
    """Run one job; returns ``objective`` (validation mIoU, budget-penalised) for sweepers."""
    from jsp.pipeline import run

    metrics = _guarded(run, cfg, HydraConfig.get().runtime.output_dir)
    return objective(metrics["final"], cfg.get("max_params"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def eval_main(cfg: DictConfig) -> float:
    """Evaluate a saved model (dense or pruned) on a test split."""
    from jsp.tools import evaluate_saved

    result = _guarded(evaluate_saved, cfg, Path(HydraConfig.get().runtime.output_dir))
    return result["metrics"]["miou"]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def export_main(cfg: DictConfig) -> None:
    """Export a saved model to TorchScript and ONNX."""
    from jsp.tools import export_saved

    _guarded(export_saved, cfg)


class OutputDirCheck(Callback):
    """Create the run (or sweep) folder before Hydra does, so that a read-only or impossible
    ``hydra.run.dir`` is one line and exit 2 instead of a traceback from inside Hydra."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _make_output_dir(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _make_output_dir(config.hydra.sweep.dir)


def _make_output_dir(path: str) -> None:
    from jsp.files import WriteError, probe_writable

    try:
        probe_writable(Path(str(path)))
    except WriteError as e:
        if os.environ.get("JSP_DEBUG"):
            raise
        print(f"jsp: {e}", file=sys.stderr)
        sys.exit(2)


def _guarded(fn, *args):
    """Run ``fn``; a JSPError becomes one logged line and exit code 2 (JSP_DEBUG=1 shows the traceback).

    A preempted run exits with ``EXIT_PREEMPTED`` (75) after handing the signal on (submitit requeues).
    """
    from jsp.engine import preemption

    try:
        return fn(*args)
    except preemption.Preempted as e:
        log.warning("preempted: %s", e)
        preemption.hand_on()
        sys.exit(preemption.EXIT_PREEMPTED)
    except JSPError as e:
        if os.environ.get("JSP_DEBUG"):
            raise
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    {"eval": eval_main, "export": export_main}.get(os.environ.get("JSP_ENTRY", ""), train_main)()
