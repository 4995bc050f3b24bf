"""The work of a run's stages, each a function over the running state (``jsp.state.RunState``)
and one ``jsp.pruning.Stage``, called by the pipeline in the order the schedule yields:
- ``train``: train the stage's steps (after its reset: ``reinitialise`` for the scratch
  control, ``uniform`` for the uniform control); returns the best validation metrics and the
  stage's training compute;
- ``prune`` (jsp/cutting.py): remove channels to meet a target (with a budget: the zeroed
  units first), and measure what the cut changed;
- ``record``: evaluate on the test split with cost, save the model, write metrics.json;
- ``dense_from_cache``: the dense stage copied from, or stored into, a shared cache.
The loop (jsp/engine/train.py) and the surgery (jsp/pruning) they call take plain values.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from jsp.constraints.base import Scaled
from jsp.constraints.budget import BudgetController
from jsp.cutting import enforce_budget, fresh_weights, pruner_of, calibrate_latency, snap, uniform
from jsp.engine import dense_cache, distributed
from jsp.engine.checkpoint import save_state
from jsp.engine.evaluate import write_per_image
from jsp.engine.logger import log_units
from jsp.engine.resume import restore_weights, save_constraint_stats
from jsp.engine.runtime import patch_loader
from jsp.engine.train import Hooks, LoopSettings, Objective, lr_at, train_loop
from jsp.metrics import cost_report
from jsp.models.saved import layer_spec, load_model, save_model
from jsp.models.warm_start import warm_start
from jsp.pruning import Pruner, Stage
from jsp.recovery import equal_compute_steps, frozen, step_macs
from jsp.run_config import build
from jsp.state import RunState

log = logging.getLogger("jsp")


def train(state: RunState, stage: Stage) -> dict:
    """Train ``stage.steps`` steps (after the stage's reset, or from where an interrupted job
    stopped); the model ends with the weights that validated best. Returns {"val": their
    validation metrics}."""
    if stage.reset:
        (uniform if stage.reset == "uniform" else fresh_weights)(state, stage)
    tr, resume = state.tr, take_resume_state(state, stage.name)
    teacher = teacher_of(state, stage)
    per_step = step_macs(state.model, state.c_in, state.process["patch_size"], tr.batch_size, teacher)
    if stage.reset == "reinit" and state.schedule.control_compute:
        stage = replace(stage, steps=scratch_b_steps(state, per_step))
    s = loop_settings(state, stage, resume)
    optimizer = build(tr.optimizer)(state.model.parameters())  # per stage: surgery replaced the parameters
    constraint = state.constraint if stage.main else Scaled(state.constraint, stage.constraint_scale)
    # one Pruner (one dependency graph) serves the stage's cost checks
    pruner = attach_controller(state, s, resume) if state.budget and stage.main else None
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
    distributed.broadcast_module(state.model)  # several processes: one set of weights from the start
    batches = patch_loader(state.splits["train"], state.process, stage.steps, tr.batch_size,
                           state.cfg.seed + stage.seed_offset, tr.num_workers, state.device,
                           start=resume["step"] if resume else 0, part=(distributed.rank(), distributed.world()))

    def validate(model, step):
        state.goto(step)
        log_units(state.logger, state.constraint, step)
        metrics = state.eval_on("val").metrics
        if state.constraint.controller is not None and stage.main:
            # Only weights whose zeroed units meet the budget may be handed on.
            metrics.update(kept_cost=pruner.cost_if_pruned(state.schedule.budget_on),
                           eligible=state.constraint.controller.exact)
        return metrics

    checkpoint = checkpointer(state, stage.name, s.first_step, optimizer)
    objective = Objective(state.loss_fn, optimizer, constraint, teacher, state.schedule.distill,
                          state.schedule.distill_temperature)
    best = train_loop(state.model, batches, objective, s, Hooks(validate, state.logger, checkpoint), resume)
    state.goto(s.first_step + stage.steps)
    if stage.snap:
        best = snap(state, stage, best)
    checkpoint(stage.steps, best, None)  # stage end: the model now holds the best weights
    log.info("%s: best val mIoU %.4f at step %d", stage.name, best["miou"], best["step"])
    if stage.validate_start and best["step"] == 0:  # fine-tuning did not help
        log.warning("%s: no fine-tuned checkpoint beat the pruned network on validation; the pruned weights "
                    "are kept (a lower schedule.finetune_lr_scale may help)", stage.name)
    return {"val": best, "compute": {"train_steps": stage.steps, "train_macs": per_step * stage.steps}}


def checkpointer(state: RunState, name: str, first_step: int, optimizer) -> callable:
    """checkpoint(steps done, best metrics, best weights): the stage's training state to
    checkpoints/last.pt, written by rank 0 with every rank's random state."""
    def checkpoint(done: int, best: dict, best_state) -> None:
        rngs = distributed.gather(torch.get_rng_state())  # every rank's: each continues its own stream
        if not distributed.main():
            return
        save_state(state.ckpt, stage=name, step=done, global_step=first_step + done,
                   model=state.model.state_dict(), layers=layer_spec(state.model), optimizer=optimizer.state_dict(),
                   best=best, best_state=best_state, constraint=state.constraint.state_dict(),
                   rng=rngs[0], rng_ranks=rngs)
    return checkpoint


def teacher_of(state: RunState, stage: Stage) -> nn.Module | None:
    """The frozen network a stage distils from (schedule.distill > 0): the dense network the
    run started from (init_from) when there is one, else the network before pruning
    (checkpoints/dense). Under a budget met before the cut the latter already computes what
    the pruned network does, so it has little to teach: distil from a trained start."""
    if not state.schedule.distill or stage.name == "dense":
        return None
    if state.teacher is None:
        if state.cfg.get("init_from"):
            model = build(state.builder)
            warm_start(model, state.cfg.init_from)
        else:
            model, _ = load_model(state.run_dir / "checkpoints" / "dense", "cpu")
        state.teacher = frozen(model.to(state.device))
    return state.teacher


def scratch_b_steps(state: RunState, per_step: int) -> int:
    """The scratch control's steps at equal compute (schedule.control_compute; recovery.py)."""
    s, tr = state.schedule, state.tr
    dense, _ = load_model(state.run_dir / "checkpoints" / "dense", "cpu")
    dense_step = step_macs(dense.to(state.device), state.c_in, state.process["patch_size"], tr.batch_size)
    steps = equal_compute_steps(s.control_steps or tr.steps + s.finetune_steps, s.finetune_steps, dense_step,
                                per_step)
    log.info("scratch: %d steps cost what the compressed run did (equal compute)", steps)
    return steps


def loop_settings(state: RunState, stage: Stage, resume: dict | None) -> LoopSettings:
    tr, steps = state.tr, stage.steps
    return LoopSettings(steps=steps, lr=tr.lr * stage.lr_scale, warmup_steps=min(tr.warmup_steps, steps // 2),
                        min_lr_ratio=tr.min_lr_ratio, val_every=tr.val_every, log_every=tr.log_every,
                        progress_every=tr.progress_every, checkpoint_every=tr.checkpoint_every,
                        grad_clip=tr.grad_clip, amp=state.amp, channels_last=state.channels_last, device=state.device,
                        tag=stage.tag("train"), val_tag=stage.tag("val"),
                        first_step=state.step - (resume["step"] if resume else 0),
                        validate_start=stage.validate_start, **lr_course(state, stage))


def lr_course(state: RunState, stage: Stage) -> dict:
    """A fine-tuning stage's lr course (schedule.finetune_lr); others warm up and decay."""
    shape = state.schedule.finetune_lr if stage.validate_start else "cosine"
    if shape != "rewind":
        return {"shape": shape}
    tr = state.tr
    return {"shape": shape, "replay": LoopSettings(steps=tr.steps, lr=tr.lr, warmup_steps=min(tr.warmup_steps,
                                                                                                tr.steps // 2),
                                                   min_lr_ratio=tr.min_lr_ratio)}


def attach_controller(state: RunState, s: LoopSettings, resume: dict | None) -> Pruner:
    """The budget controller of the constraint (method.md s.3), measuring through the returned
    Pruner. Its forecast looks ahead by the learning rate the rest of the stage will apply."""
    rest = [0.0] * (s.steps + 1)
    for t in range(s.steps - 1, -1, -1):
        rest[t] = rest[t + 1] + lr_at(t, s)
    c, pruner, mode = state.constraint, pruner_of(state), state.schedule.budget_on
    forecast = lambda step: pruner.cost_if_pruned(mode, c.forecast_off(rest[step + 1]))  # noqa: E731
    actual = lambda: pruner.cost_if_pruned(mode)  # noqa: E731
    if mode == "latency":  # the table's line refitted where the controller is, every tenth of the stage
        actual = recalibrating(state, pruner, actual, max(1, s.steps // (10 * c.budget_every)))
    budget = state.schedule.controller_budget(state.budget)  # above a latency budget: the search cuts the rest
    c.controller = BudgetController(budget, forecast, s.steps, c.budget_every, ramp=c.budget_ramp,
                                    actual=actual, deadline=c.budget_deadline,
                                    enforce=lambda: enforce_budget(state, pruner))
    if resume:
        c.load_state_dict(resume["constraint"])
    return pruner


def recalibrating(state: RunState, pruner: Pruner, actual, n: int):
    """``actual`` that first refits the latency table's line (``cutting.calibrate_latency``)
    on its first call and every ``n``-th after: timing costs seconds, a check milliseconds.
    (Refitting also at every check near the budget and whenever the fraction moved by 0.05
    was tried and did not stop jsp's overshoot: docs/benchmarks.md.)"""
    calls = [0]

    def wrapped() -> float:
        if calls[0] % n == 0:
            calibrate_latency(state, pruner)
        calls[0] += 1
        return actual()
    return wrapped


def take_resume_state(state: RunState, name: str) -> dict | None:
    """The interrupted training state of stage ``name``, loaded into model and constraint."""
    saved, state.resume_state = state.resume_state, None
    if saved is None or saved["stage"] != name:
        return None
    restore_weights(state.model, saved["layers"], saved["model"])
    state.constraint.attach(state.model, state.c_in)
    state.constraint.load_state_dict(saved["constraint"])
    rngs = saved.get("rng_ranks", [saved["rng"]])
    if len(rngs) != distributed.world():
        log.warning("resume: the stage was saved by %d processes and continues on %d; it continues, but not "
                    "bit for bit as it would have", len(rngs), distributed.world())
    torch.set_rng_state(rngs[distributed.rank()] if len(rngs) == distributed.world() else saved["rng"])
    state.goto(saved["global_step"])
    log.info("resume: %s continues at step %d", name, saved["step"])
    return saved


def record(state: RunState, stage: Stage, val: dict | None = None, cut: dict | None = None,
           compute: dict | None = None) -> dict:
    """Evaluate on the test split, with cost; record in metrics.json and save the model.
    val: the stage's validation metrics (None: measured here); cut: what a prune stage's cut
    did (``prune``), recorded with the change of test mIoU it caused."""
    tr, name, prefix = state.tr, stage.name, stage.tag("test")
    metrics, examples, per_image = state.eval_on("test", tr.eval_examples)
    val = val or state.eval_on("val").metrics  # what sweeps select on: the test split only reports
    metrics.update(val_miou=val["miou"], **({"val_f1": val["f1"]} if "f1" in val else {}))
    before = list(state.logger.metrics.values())[-1] if state.logger.metrics else {}  # the previous stage
    if cut is not None:
        metrics.update(cut, cut_miou_change=metrics["miou"] - before["miou"])
    compute = compute or {"train_steps": 0, "train_macs": 0}  # the run's training so far, and this stage's
    metrics.update(compute, train_steps_total=before.get("train_steps_total", 0) + compute["train_steps"],
                   train_macs_total=before.get("train_macs_total", 0) + compute["train_macs"])
    # latency: timed by rank 0 alone (the others would compete with it for the machine)
    metrics.update(cost_report(state.model, state.c_in, state.data.full_size,
                               tr.latency_s if distributed.main() else 0, state.device))
    metrics.update(log_units(state.logger, state.constraint, state.step), constraint=state.constraint.settings(),
                   schedule=state.schedule.settings(), global_step=state.step)
    metrics.update(params_ratio=metrics["params"] / state.dense_cost["params"],
                   macs_ratio=metrics["macs"] / state.dense_cost["macs"])
    # Settings go to metrics.json and the HParams tab, not to the scalars.
    state.logger.scalars(prefix, {k: v for k, v in metrics.items() if k not in ("constraint", "schedule")}, state.step)
    state.logger.examples(prefix, examples, state.step)
    folder = state.run_dir / "checkpoints" / name
    if distributed.main():
        save_model(folder, state.model, state.architecture, **state.model_info(name, metrics))
        save_constraint_stats(folder, state.constraint.state_dict())
        write_per_image(folder / "per_image.csv", per_image)
    state.logger.stage(name, metrics)  # last: a stage counts as done once its model is saved
    distributed.barrier()  # the other ranks may read what rank 0 saved (restore, the teacher)
    log.info("%s: test mIoU %.4f | params %s | MACs %.3g | units off %.1f%%", name, metrics["miou"],
             f"{metrics['params']:,}", metrics["macs"], 100 * metrics["units_off"])
    return metrics


def dense_from_cache(state: RunState, dense: Stage) -> bool:
    """Copy the dense stage from ``dense_cache`` or train it and store it there; True if trained here."""
    container = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    trainer = {k: v for k, v in container(state.tr).items() if k not in dense_cache.IGNORED_TRAINER_KEYS}
    key = dense_cache.dense_key({"dataset": state.data_cfg, "model": state.builder, "seed": state.cfg.seed,
                                 "constraint": container(state.cfg.constraint), "trainer": trainer,
                                 "init": state.init_sha256,
                                 "device": state.device.type,
                                 **({"processes": distributed.world()} if distributed.world() > 1 else {})})
    folder = state.run_dir / "checkpoints" / dense.name
    # Rank 0 alone claims, reads and stores the entry; the others learn from it what it found.
    with dense_cache.claim(state.cfg.dense_cache, key) if distributed.main() else nullcontext() as entry:
        cached, entry = distributed.broadcast((dense_cache.fetch(entry, folder) if entry else None, str(entry)))
        if cached is None:
            record(state, dense, **train(state, dense))
            if distributed.main():
                dense_cache.store(Path(entry), folder, state.logger.metrics[dense.name], state.run_dir)
            return True
    log.info("dense: copied from %s (trained in %s); this run trains no dense network", entry,
             cached.pop("trained_in"))
    cached.update(schedule=state.schedule.settings(), dense_from=str(entry))
    state.logger.scalars(dense.tag("test"), {k: v for k, v in cached.items() if isinstance(v, (int, float))},
                         cached.get("global_step", 0))
    state.logger.stage(dense.name, cached)
    return False
