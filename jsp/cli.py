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
from omegaconf.errors import OmegaConfBaseException

from jsp import configs  # noqa: F401  (registers the typed schemas before any compose)
from jsp.errors import JSPError
from jsp.plugins import register_configs
from jsp.registry import conf_dir

CONF_DIR = str(conf_dir())
log = logging.getLogger("jsp")
# Installed plug-ins become config options (model=KEY, dataset=KEY, constraint=KEY) beside ours.
register_configs({g: {p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml")} for g in ("model", "dataset", "constraint")})


def objective(final: dict, max_params: int | None) -> float:
    """What sweepers maximise: the final network's *validation* mIoU (never test: settings are
    chosen on validation), minus 1 when it has more than ``max_params`` parameters."""
    if max_params and final["params"] > max_params:
        return final["val_miou"] - 1.0  # over the budget: worse than any run within it
    return final["val_miou"]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _train(cfg: DictConfig) -> float:
    """Run one job; returns ``objective`` (validation mIoU, budget-penalised) for sweepers."""
    from jsp.pipeline import run

    metrics = _guarded(run, cfg, HydraConfig.get().runtime.output_dir)
    return objective(metrics["final"], cfg.get("max_params"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def _eval(cfg: DictConfig) -> float:
    """Evaluate a saved model (dense or pruned) on a test split."""
    from jsp.saved_runs import evaluate_saved

    result = _guarded(evaluate_saved, cfg, Path(HydraConfig.get().runtime.output_dir))
    return result["metrics"]["miou"]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def _export(cfg: DictConfig) -> None:
    """Export a saved model to TorchScript and ONNX."""
    from jsp.saved_runs import export_saved

    _guarded(export_saved, cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def _predict(cfg: DictConfig) -> None:
    """Segment images (a file or a folder) with a saved model; write masks."""
    from jsp.saved_runs import predict_saved

    _guarded(predict_saved, cfg)


def _with_version(main, command: str):
    """``main`` (a Hydra entry point), answering ``--version`` / ``-V`` itself: Hydra's own flag
    prints only Hydra's version."""
    def entry():
        if any(a in ("--version", "-V") for a in sys.argv[1:]):
            from jsp.provenance import version_line

            print(version_line(command))
            return None
        return main()
    entry.__doc__ = main.__doc__
    return entry


train_main = _with_version(_train, "jsp-train")
eval_main = _with_version(_eval, "jsp-eval")
export_main = _with_version(_export, "jsp-export")
predict_main = _with_version(_predict, "jsp-predict")


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
    except OmegaConfBaseException as e:  # e.g. a mandatory value (checkpoint=...) left out
        if os.environ.get("JSP_DEBUG"):
            raise
        print(f"jsp: config error: {config_error_line(e)}", file=sys.stderr)
        sys.exit(2)


def config_error_line(e: BaseException) -> str:
    """One line for a config Hydra could not compose: its message, the cause's first line, and
    the nearest known key for a misspelt trainer/schedule/process setting."""
    from dataclasses import fields
    from difflib import get_close_matches

    first = str(e).strip().splitlines()[0].rstrip(".")
    cause = e.__cause__
    line = first + (f": {str(cause).strip().splitlines()[0]}" if cause is not None else "")
    key = getattr(cause, "full_key", "") or ""
    group, _, name = key.rpartition(".")
    schema = {"trainer": configs.TrainerConfig, "schedule": configs.ScheduleConfig,
              "dataset.process": configs.ProcessConfig}.get(group)
    if "Available options" in str(e):  # a config group option that does not exist
        listed = str(e).split("Available options", 1)[1].split("Config search path")[0]
        options = [o.strip() for o in listed.splitlines()[1:] if o.strip()]
        line += f" (options: {', '.join(options)})"
    if schema is not None and "not in" in line:
        close = get_close_matches(name, [f.name for f in fields(schema)], n=1)
        line += f" (did you mean {group}.{close[0]}?)" if close else ""
    return line


def _one_line_config_errors() -> None:
    """Make Hydra's report of a config it cannot compose one line and exit 2 (JSP_DEBUG=1 or
    HYDRA_FULL_ERROR=1 keep Hydra's own report). Hydra runs each phase through
    ``hydra._internal.utils.run_and_report`` (pinned: hydra-core < 1.4); we wrap it."""
    from hydra._internal import utils as hydra_utils
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    original = getattr(hydra_utils, "run_and_report", None)
    if original is None or getattr(original, "_jsp", False):
        return

    def run_and_report(func):
        def guarded():
            try:
                return func()
            except (HydraException, OmegaConfBaseException) as e:
                if os.environ.get("JSP_DEBUG") or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"jsp: config error: {config_error_line(e)}", file=sys.stderr)
                sys.exit(2)
        return original(guarded)

    run_and_report._jsp = True
    hydra_utils.run_and_report = run_and_report


_one_line_config_errors()

if __name__ == "__main__":
    train_main()
