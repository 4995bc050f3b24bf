"""Stage work that changes the network: pruning, and the two controls (method.md s.5).

Each is a function over the running job (``jsp.pipeline.Run``: model, constraint, schedule,
data, logger), called by the pipeline's stage plan:
- ``prune``: remove channels to meet a target (with a budget: the zeroed units first);
- ``uniform``: shrink every layer by one width factor to the budget and re-initialise;
- ``reinitialise``: fresh weights for the architecture the model has now (``scratch``);
- ``dense_from_cache``: the dense stage copied from, or stored into, a shared cache.
"""
from __future__ import annotations

import logging
import time

import torch
from omegaconf import OmegaConf
from torch import nn

from jsp.engine import dense_cache
from jsp.engine.runtime import patch_loader
from jsp.models import pad_multiple
from jsp.pruning import Target, cost_if_pruned, layer_scores, layer_widths, prune as prune_model, taylor_statistic
from jsp.pruning.surgery import model_cost, shrink_uniformly

log = logging.getLogger("jsp")


def kept_cost(run, off: dict | None = None) -> float:
    """Fraction of the current cost left if the switched-off units (or ``off``) were removed."""
    s = run.schedule
    return cost_if_pruned(run.model, run.constraint.layers, run.constraint.eps, s.budget_on, run.c_in, 2 * pad_multiple(run.model),
                          run.data.full_size, s.min_channels, off)


def unit_scores(run) -> dict:
    """{layer: (U,) importance} of the current model under schedule.importance."""
    s, layers = run.schedule, run.constraint.layers
    run.constraint.refresh()  # redundancy on the weights being pruned (the restored best)
    stats = run.constraint.statistics()
    if s.importance == "taylor":
        batches = patch_loader(run.splits["train"], run.process, 8, run.tr.batch_size, run.cfg.seed, 0, run.device)
        stats.update(taylor_statistic(run.model, layers, batches, run.loss_fn, run.device))
    return layer_scores(s.importance, layers, stats, s.seed, getattr(run.constraint, "kind", "scale"), s.normalize)


def prune(run, target: Target, tag: str) -> None:
    """Remove channels to meet ``target``; log widths before and after. With a budget, the
    switched-off units go first (no change of function), then, if they were not enough,
    the least important others."""
    s, t0 = run.schedule, time.time()
    before = layer_widths(run.model)
    for t in [Target("threshold"), target] if run.budget else [target]:
        if t.mode != "threshold" and run.budget:
            dense, now = run.dense_cost[t.mode], model_cost(run.model, t.mode, run.c_in, run.data.full_size)
            if now <= dense * run.budget:
                break
            t = Target(t.mode, min(1.0, t.keep * dense / now))
        removed = prune_model(run.model, run.constraint.layers, unit_scores(run), t, run.c_in,
                              2 * pad_multiple(run.model), run.data.full_size, run.constraint.eps, s.min_channels, s.round_to,
                              s.min_keep, s.cost_aware)
        run.constraint.after_surgery(run.model, removed)
        log.info("%s: removed %d unit channels (%s importance, %s target)", tag,
                 sum(len(c) for c in removed.values()), s.importance, t.mode)
    log_widths(run, tag, before, t0)


def uniform(run, target: Target, tag: str = "uniform") -> None:
    """Shrink every channel group by one width factor so the model meets ``target``, then give
    it fresh weights: the ``uniform`` control, a narrower network trained from scratch."""
    t0 = time.time()
    before = layer_widths(run.model)
    factor = shrink_uniformly(run.model, run.constraint.layers, target, run.c_in, 2 * pad_multiple(run.model),
                              run.data.full_size, run.schedule.min_channels)
    reinitialise(run.model)
    run.set_model(run.model)
    log.info("%s: every layer at %.3f of its width, trained from scratch", tag, factor)
    log_widths(run, tag, before, t0)


@torch.no_grad()
def reinitialise(model: nn.Module) -> None:
    """Every layer's default initialisation and fresh BatchNorm statistics, in place."""
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()


def log_widths(run, tag: str, before: dict, t0: float) -> None:
    after = layer_widths(run.model)
    table = "| layer | before | after |\n|---|---|---|\n" + "\n".join(
        f"| {n} | {before[n]} | {after.get(n, 0)} |" for n in before)
    run.logger.writer.add_text(f"{tag}/widths", table, run.step)
    run.logger.scalars(tag, {"surgery_s": time.time() - t0,
                             "channels_removed": sum(before.values()) - sum(after.values())}, run.step)


def dense_from_cache(run, train_dense) -> bool:
    """Copy the dense stage from ``dense_cache`` or train it and store it there; True if trained here."""
    container = lambda node: OmegaConf.to_container(node, resolve=True)
    trainer = {k: v for k, v in container(run.tr).items() if k not in dense_cache.IGNORED_TRAINER_KEYS}
    key = dense_cache.dense_key({"dataset": run.data_cfg, "model": run.builder, "seed": run.cfg.seed,
                                 "constraint": container(run.cfg.constraint), "trainer": trainer,
                                 "device": run.device.type})
    folder = run.run_dir / "checkpoints" / "dense"
    with dense_cache.claim(run.cfg.dense_cache, key) as entry:
        cached = dense_cache.fetch(entry, folder)
        if cached is None:
            run.test_stage("dense", "test", train_dense())
            dense_cache.store(entry, folder, run.logger.metrics["dense"], run.run_dir)
            return True
    log.info("dense: copied from %s (trained in %s); this run trains no dense network", entry,
             cached.pop("trained_in"))
    cached.update(schedule=run.schedule.settings(), dense_from=str(entry))
    run.logger.scalars("test", {k: v for k, v in cached.items() if isinstance(v, (int, float))},
                        cached.get("global_step", 0))
    run.logger.stage("dense", cached)
    return False
