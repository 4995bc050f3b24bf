"""The pruning side of a run's stages (jsp/stages.py calls them): the ``prune`` stage with
the record of what its cut changed, the budget's cost as the controller sees it, its
deadline (``enforce_budget``), the stage-end ``snap`` that makes switched-off units exact
zeros before a threshold cut, and the controls' resets (``uniform``, ``fresh_weights``).
"""
from __future__ import annotations

import logging
import time

import torch

from jsp.constraints.units import snap_off
from jsp.engine import distributed
from jsp.errors import ConfigError
from jsp.engine.evaluate import probe
from jsp.engine.runtime import patch_loader
from jsp.pruning import PruneSettings, Pruner, Stage, Target, layer_scores, layer_widths, taylor_statistic
from jsp.pruning.latency import plain_copy
from jsp.pruning.surgery import reinitialise
from jsp.state import RunState

log = logging.getLogger("jsp")


def snap(state: RunState, stage: Stage, best: dict) -> dict:
    """Set the switched-off units of the stage's weights to exact zeros (constants: gamma = 0),
    so the threshold cut that follows changes no output; re-validate if anything moved."""
    zeroed, constant = snap_off(state.constraint.layers, state.constraint.eps)
    if not zeroed and not constant:
        return best
    log.info("%s: %d switched-off units set to exactly zero and %d to exactly constant before the cut",
             stage.name, zeroed, constant)
    return {**best, **state.eval_on("val").metrics}


def pruner_of(state: RunState) -> Pruner:
    """A Pruner for the run's model as it is now, with the schedule's settings."""
    s = state.schedule
    settings = PruneSettings(state.constraint.eps, s.min_channels, s.min_keep, s.round_to, s.cost_aware)
    return Pruner(state.model, state.constraint.layers, state.c_in, state.data.full_size, settings,
                  latency=state.latency)


def calibrate_latency(state: RunState, pruner: Pruner | None = None) -> None:
    """Fit the latency table's line through two networks timed side by side, so its
    predictions (what the budget controller steers and the search aims with) are in measured
    milliseconds. At setup (no ``pruner``): the dense network and the smallest cut the
    schedule's settings allow. During a budget run on latency (``pruner``: the controller's):
    the dense architecture and what the threshold cut would leave now. A line through the
    dense and the smallest network can be 30 % off in between (a UNet that keeps its
    full-resolution layers and loses its deep ones); a secant through the point the controller
    is steering is not. Rescaling the line leaves the latency-aware ranking as it was (every
    channel's saving scales alike)."""
    s, at_setup = state.schedule, pruner is None
    pruner = pruner or pruner_of(state)
    groups = pruner.groups()
    cut = groups.select(groups.total() if at_setup else None, s.min_channels, s.round_to, s.min_keep)
    if not any(cut) and not at_setup:
        return
    ms = pruner.calibrate_latency(cut)
    state.dense_cost["latency"] = ms[0]  # the line passes through the dense network's time
    log.info("latency: %s %.1f of %.1f ms dense (%.3f); the table's convolutions x %.3f %+.1f ms",
             "the smallest cut" if at_setup else "recalibrated at the controller's point:", ms[-1], ms[0],
             ms[-1] / ms[0], state.latency.scale, state.latency.offset)


def check_reachable(state: RunState) -> None:
    """Refuse, before training, a target no cut can meet: every group at its floor
    (schedule.min_channels, min_keep, rounded up to round_to) still costs more."""
    s = state.schedule
    if not state.budget and (s.rounds < 1 or s.mode == "threshold"):  # no target (method=dense: no cut)
        return
    mode, keep = (s.budget_on, state.budget) if state.budget else (s.mode, s.keep_at(s.rounds))
    smallest = pruner_of(state).smallest(mode)
    if keep < smallest:
        raise ConfigError(f"the budget {keep:.4g} of the {mode} is below what this model can become with "
                          f"schedule.round_to={s.round_to}, min_channels={s.min_channels}, min_keep={s.min_keep}: "
                          f"at least {smallest:.4g}; lower them or raise the budget")


def enforce_budget(state: RunState, pruner: Pruner) -> None:
    """The budget deadline (constraint.budget_deadline): zero what the cut would remove to meet
    the budget, the switched-off units first, then the least important by schedule.importance."""
    s = state.schedule
    if s.budget_on == "latency":
        calibrate_latency(state, pruner)
    kept, budget = pruner.cost_if_pruned(s.budget_on), state.constraint.controller.budget  # its own (latency_margin)
    target = Target(s.budget_on, min(1.0, budget * state.dense_cost[s.budget_on] / pruner.cost(s.budget_on)))
    zeroed = pruner.zero(unit_scores(state), target)
    log.warning("budget deadline: the constraint had reached %.3f of the %s (its controller's budget %.3f); %d more "
                "units zeroed (%s importance), now %.3f", kept, s.budget_on, budget, zeroed, s.importance,
                pruner.cost_if_pruned(s.budget_on))


def unit_scores(state: RunState) -> dict:
    """{layer: (U,) importance} of the current model under schedule.importance."""
    s, layers = state.schedule, state.constraint.layers
    state.constraint.refresh()  # redundancy on the weights being pruned (the restored best)
    stats = state.constraint.statistics()
    if s.importance == "taylor":  # the same batches on every rank: the same scores
        batches = patch_loader(state.splits["train"], state.process, 8, state.tr.batch_size, state.cfg.seed, 0,
                               state.device)
        stats.update(taylor_statistic(state.model, layers, batches, state.loss_fn, state.device))
    return layer_scores(s.importance, layers, stats, s.seed, state.constraint.measured_on, s.normalize)


def prune(state: RunState, stage: Stage) -> dict:
    """Remove channels to meet ``stage.target``; log widths before and after. With the
    constraint's budget (target None), the switched-off units go first (no change of
    function), then, if they were not enough, the least important others.

    Returns {"cut": what the cut did}: the largest absolute change of the logits on a fixed
    probe (the first two validation images), and how many removed units were live (neither
    exactly zero nor exactly constant) or constant (folded into consumers: exact away from
    zero-padded borders)."""
    s, t0, budget = state.schedule, time.time(), state.budget
    before, logits = layer_widths(state.model), probe(state.model, state.splits["val"], state.device)
    cut = {"cut_live_units": 0, "cut_constant_units": 0}
    target = stage.target or Target(s.budget_on, budget)
    uncut = plain_copy(state.model) if target.mode == "latency" else None
    for t in [Target("threshold"), target] if budget else [target]:
        pruner = pruner_of(state)  # one per cut: the surgery changes the model
        if t.mode != "threshold" and budget:
            now = kept_now(state, pruner, t.mode, uncut)
            if now <= budget * (1 + (pruner.settings.tolerance if t.mode == "latency" else 0)):
                break
            if t.mode == "latency":  # searched on timings against the uncut network itself
                pruner.latency_reference = (uncut, now)
            else:
                t = Target(t.mode, min(1.0, t.keep / now))
        kinds = {l.name: unit_kinds(l) for l in state.constraint.layers}
        removed = pruner.prune(unit_scores(state), t)
        for name, idx in removed.items():
            cut["cut_live_units"] += int((kinds[name][idx] == 2).sum())
            cut["cut_constant_units"] += int((kinds[name][idx] == 1).sum())
        state.constraint.after_surgery(state.model, removed)
        log.info("%s: removed %d unit channels (%s importance, %s target)", stage.tag(""),
                 sum(len(c) for c in removed.values()), s.importance, t.mode)
    distributed.check_same(layer_widths(state.model), "the widths after pruning")
    if uncut is not None:  # a latency budget: the fraction this stage's cut kept, timed side by side
        timing = state.latency.measure([uncut, state.model], state.c_in, state.data.full_size)
        cut.update(latency_kept_measured=timing.keep[1], latency_target=target.keep)
        log.info("%s: measured latency %.2f of %.2f ms before the cut (%.3f paired; target %.3f)", stage.tag(""),
                 timing.ms[1], timing.ms[0], timing.keep[1], target.keep)
    after = probe(state.model, state.splits["val"], state.device)
    cut["cut_logit_change"] = max((float((a - b).abs().max()) for a, b in zip(after, logits)), default=0.0)
    log.info("%s: the cut changed the probe's logits by at most %.3g (%d live and %d constant units removed)",
             stage.tag(""), cut["cut_logit_change"], cut["cut_live_units"], cut["cut_constant_units"])
    log_widths(state, stage.tag(""), before, t0)
    return {"cut": cut}


def kept_now(state: RunState, pruner: Pruner, mode: str, uncut) -> float:
    """The fraction of the dense cost the model keeps now (after a threshold cut): counted
    for parameters and MACs, timed against the uncut network for latency (the table's line
    can be off by more than the tolerance where the penalty left the network)."""
    if mode == "latency":
        now = state.latency.measure([uncut, state.model], state.c_in, state.data.full_size).keep[1]
        log.info("latency: the threshold cut keeps %.3f of the measured latency (budget %.3f)", now, state.budget)
        return now
    return pruner.cost(mode) / state.dense_cost[mode]


def unit_kinds(layer) -> torch.Tensor:
    """(U,) 0 where a unit's output is exactly zero (s_u = 0), 1 exactly constant (gamma_u = 0), 2 live."""
    kinds = torch.full((layer.size,), 2)
    if layer.normalised:
        kinds[(layer.bn.weight.detach() == 0).cpu()] = 1
    kinds[(layer.norms() == 0).cpu()] = 0
    return kinds


def uniform(state: RunState, stage: Stage) -> None:
    """Shrink every channel group by one width factor so the model meets ``stage.target``, then
    give it fresh weights: the ``uniform`` control, a narrower network trained from scratch."""
    t0 = time.time()
    before = layer_widths(state.model)
    factor = pruner_of(state).shrink_uniformly(stage.target)
    fresh_weights(state, stage)
    log.info("%s: every layer at %.3f of its width, trained from scratch", stage.name, factor)
    log_widths(state, stage.tag(""), before, t0)


def fresh_weights(state: RunState, stage: Stage) -> None:
    reinitialise(state.model)
    state.set_model(state.model)


def log_widths(state: RunState, tag: str, before: dict, t0: float) -> None:
    after = layer_widths(state.model)
    table = "| layer | before | after |\n|---|---|---|\n" + "\n".join(
        f"| {n} | {before[n]} | {after.get(n, 0)} |" for n in before)
    state.logger.writer.add_text(f"{tag}/widths", table, state.step)
    state.logger.scalars(tag, {"surgery_s": time.time() - t0,
                               "channels_removed": sum(before.values()) - sum(after.values())}, state.step)
