"""The stages of a jsp run: train -> evaluate -> (prune -> evaluate -> fine-tune -> evaluate)*.

``run`` reads top to bottom: set up (``setup``: everything built from the config, checked
before data is read or a step is run), skip what is done (resume, dense cache), run each
stage the schedule yields (jsp/stages.py: ``train``/``prune``, then ``record``), finish.
This module, jsp/stages.py and jsp/saved_runs.py (jsp-eval, jsp-export, jsp-predict) are the
only ones that read a Hydra config; everything they call takes plain values.
Every evaluated stage is saved (checkpoints/STAGE/ and metrics.json), and training stages
write checkpoints/last.pt every ``trainer.checkpoint_every`` steps, so ``resume=true`` skips
finished stages and continues an interrupted one where it stopped.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from jsp import cutting, stages
from jsp.constraints import Constraint
from jsp.data import prepare
from jsp.data.io import set_max_pixels
from jsp.data.transforms import in_channels
from jsp.engine import distributed, preemption
from jsp.engine.checkpoint import load_state
from jsp.engine.logger import RunLogger, summary_table
from jsp.engine.resume import clear_preempted, load_constraint_stats, mark_preempted, resuming
from jsp.engine.runtime import resolve_device, seed_everything
from jsp.errors import ConfigError, JSPError
from jsp.files import RunLock, probe_writable
from jsp.metrics import count_macs, count_params
from jsp.models.saved import load_model, save_model
from jsp.models.warm_start import warm_start
from jsp.pruning.latency import LatencyTable
from jsp.provenance import hydra_overrides, provenance
from jsp.registry import describe
from jsp.run_config import build, build_dataset, check_arguments, check_control, check_init_control, check_trainer, \
    choices, config_hparams, effective_budget
from jsp.state import RunState

log = logging.getLogger("jsp")
WORK = {"train": stages.train, "prune": cutting.prune}


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run every stage; returns metrics.json's content. ``run_dir`` receives all outputs.

    Fails before any work when ``run_dir`` cannot be written or another job holds it; on a stop
    signal the state is saved, the run dir is marked preempted and ``Preempted`` is raised.
    """
    preemption.install()
    distributed.start(resolve_device(cfg.trainer.device))  # several processes: join them (else nothing)
    run_dir = distributed.shared_run_dir(Path(run_dir))
    with rank0_lock(run_dir):
        try:
            state = setup(cfg, run_dir)
            plan = state.schedule.stages(state.tr.steps, state.control, state.budget)
            for stage in stages_to_run(state, plan):
                if preemption.agreed():  # between stages: everything so far is saved
                    raise preemption.Preempted(f"stopped before stage {stage.name} on {preemption.agreed()}")
                done = WORK[stage.kind](state, stage)  # {"val": best validation metrics} or {"cut": ...}
                stages.record(state, stage, **done)
            return finish(state, plan[-1].name)
        except preemption.Preempted:
            if distributed.main():
                mark_preempted(run_dir, preemption.agreed())
            raise


@contextmanager
def rank0_lock(run_dir: Path):
    """The run-dir lock, held by rank 0 (the only process that writes); a refusal (another job
    holds it, the dir cannot be written) fails every rank, with rank 0's message."""
    lock, error = RunLock(run_dir), None
    if distributed.main():
        try:
            probe_writable(run_dir / "checkpoints")
            lock.__enter__()
        except JSPError as e:
            error = e
    if distributed.broadcast(None if error is None else str(error)) is not None:
        raise error if error is not None else JSPError(f"rank 0 could not take the run dir {run_dir}")
    try:
        yield
    finally:
        if lock.held:
            lock.__exit__(None, None, None)


def setup(cfg: DictConfig, run_dir: Path) -> RunState:
    """Everything a run needs, built from the config (in this order: the random streams
    depend on it): settings and their checks, data, model, resume state and logger."""
    state = RunState(cfg, run_dir)
    seed_everything(cfg.seed)
    set_max_pixels(cfg.get("max_image_pixels"))
    _settings(state, cfg)
    _data(state, cfg)
    _model(state, cfg)
    _resume(state, cfg)
    return state


def _settings(state: RunState, cfg: DictConfig) -> None:
    state.tr = cfg.trainer
    state.device = distributed.local_device(resolve_device(state.tr.device))
    check_trainer(state.tr)
    distributed.check_batch(state.tr.batch_size)
    state.constraint = build(cfg.constraint, "constraint")
    if not isinstance(state.constraint, Constraint):  # a plug-in's target must be one
        raise ConfigError(f"constraint: {type(state.constraint).__name__} is not a jsp.constraints.Constraint")
    state.schedule = build(cfg.schedule)
    state.control = cfg.get("control") or "none"
    state.budget = state.constraint.budget = effective_budget(state.constraint.budget, state.schedule, state.control)
    check_control(state.control, state.budget, state.schedule)
    check_init_control(cfg.get("init_from"), state.control, state.schedule.control_steps)
    if state.schedule.distill and state.control == "uniform" and not cfg.get("init_from"):
        raise ConfigError("schedule.distill with control=uniform needs init_from: the uniform control has no "
                          "network of its own to learn from")
    state.constraint.min_units = state.schedule.min_channels
    state.provenance = provenance(hydra_overrides())


def _data(state: RunState, cfg: DictConfig) -> None:
    """The loader returns raw splits; ``process`` says how they become tensors."""
    state.data_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
    state.data_record = describe("dataset", state.data_cfg)  # what model.json records: a registry key
    state.data, state.process = build_dataset(state.data_cfg)
    data = state.data
    state.c_in = in_channels(state.process["channels"])
    smallest = min(min(s.label.shape) for s in data.train)
    if state.process["patch_size"] > smallest:
        raise ConfigError(f"dataset.process.patch_size={state.process['patch_size']} is larger than the smallest "
                          f"training image side ({smallest} px)")
    state.splits = {name: prepare(getattr(data, name), state.process["channels"], state.process["clahe"])
                    for name in ("train", "val", "test")}
    log.info("data: %d train / %d val / %d test images, %d classes, full size %s",
             *(len(v) for v in state.splits.values()), data.num_classes, data.full_size)


def _model(state: RunState, cfg: DictConfig) -> None:
    tr, data = state.tr, state.data
    state.builder = {**OmegaConf.to_container(cfg.model, resolve=True), "in_channels": state.c_in,
                     "num_classes": data.num_classes}
    check_arguments(state.builder, "model")  # the user's key names, before the registry's checks
    state.architecture = describe("model", state.builder)
    state.channels_last = tr.channels_last is True or (tr.channels_last == "auto" and state.device.type == "cuda")
    model = build(state.builder)
    if cfg.get("init_from"):  # a trained start (jsp/models/warm_start.py); budgets stay relative to it
        state.init_sha256 = warm_start(model, cfg.init_from)
        state.provenance["init_from"] = {"path": str(cfg.init_from), "sha256": state.init_sha256}
        log.info("model: starting from the weights in %s (sha256 %s)", cfg.init_from, state.init_sha256[:12])
    state.set_model(model)
    # Budgets and ratios are relative to the dense network this config builds.
    state.dense_cost = {"params": count_params(state.model),
                        "macs": count_macs(state.model, state.c_in, data.full_size)}
    if state.schedule.uses_latency:  # the latency table: timed here, on the run's device, or read from its cache
        state.latency = LatencyTable(state.device, state.schedule.latency_cache, share=distributed.on_main)
        cutting.calibrate_latency(state)  # sets dense_cost["latency"]: the dense network's measured ms
        log.info("latency: the table (%s) predicts %.1f ms for the dense network (%d convolutions timed now)",
                 state.latency.path, state.dense_cost["latency"], state.latency.measured)
    cutting.check_reachable(state)  # a budget no cut can meet fails now, not after training
    state.loss_fn = build(tr.loss, ignore_index=data.ignore_index)
    state.amp = bool(tr.amp) and state.device.type == "cuda"


def _resume(state: RunState, cfg: DictConfig) -> None:
    """What an earlier job on this run dir left (with resume), and the logger that goes on from it."""
    run_dir, done = state.run_dir, {}
    state.ckpt = run_dir / "checkpoints" / "last.pt"
    state.resume = resuming(cfg.resume, run_dir)
    if state.resume and (run_dir / "metrics.json").is_file():
        done = {k: v for k, v in json.loads((run_dir / "metrics.json").read_text()).items() if k != "final"}
    if state.resume and state.ckpt.is_file():
        state.resume_state = load_state(state.ckpt)
    purge = state.resume_state["global_step"] if state.resume_state else max(
        [m.get("global_step", 0) for m in done.values()], default=0)
    state.logger = RunLogger(run_dir, metrics=done, purge_step=purge if state.resume else None,
                             writes=distributed.main())


def stages_to_run(state: RunState, plan: list) -> list:
    """The stages still to run: a resumed run skips its recorded stages, and a run with a
    ``dense_cache`` copies the dense stage from there (or trains and stores it). The model
    then continues from the last recorded stage's saved weights."""
    trained_here = False
    if state.cfg.get("dense_cache") and "dense" not in state.logger.metrics and state.resume_state is None:
        trained_here = stages.dense_from_cache(state, plan[0])
    done = [stage.name for stage in plan if stage.name in state.logger.metrics]
    if done and not trained_here:
        restore(state, done[-1])
        if state.resume:
            log.info("resume: stages %s are done; continuing after %s", ", ".join(done), done[-1])
    return [stage for stage in plan if stage.name not in done]


def restore(state: RunState, name: str) -> None:
    """The model, constraint statistics and global step as stage ``name`` saved them."""
    folder = state.run_dir / "checkpoints" / name
    model, _ = load_model(folder, state.device)
    state.set_model(model.train())
    state.constraint.load_state_dict(load_constraint_stats(folder))
    state.goto(state.logger.metrics[name].get("global_step", 0))


def finish(state: RunState, last: str) -> dict:
    """The last stage becomes ``final`` (metrics, model, per-image metrics); HParams, summary."""
    run_dir = state.run_dir
    final = {**state.logger.metrics[last], "time_s": time.time() - state.t_start, "provenance": state.provenance}
    state.logger.stage("final", final)
    if distributed.main():
        save_model(run_dir / "checkpoints" / "final", state.model, state.architecture,
                   **state.model_info("final", final))
        per_image = run_dir / "checkpoints" / last / "per_image.csv"
        if per_image.is_file():  # absent only for a stage copied from a dense cache of an older version
            shutil.copyfile(per_image, run_dir / "checkpoints" / "final" / "per_image.csv")
    picked = choices(state.cfg)
    state.logger.hparams({**picked, **config_hparams(state.cfg)}, final)
    state.logger.config_text(OmegaConf.to_yaml(state.cfg), state.step)
    state.logger.close()
    if distributed.main():
        clear_preempted(run_dir)
    distributed.barrier()  # every rank returns once rank 0 has written everything
    log.info("\n" + summary_table(state.logger.metrics, run_dir, picked))
    return state.logger.metrics
