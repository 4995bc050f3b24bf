"""The training loop, used for both training and fine-tuning stages."""
from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from jsp.constraints import Constraint
from jsp.engine import distributed, preemption
from jsp.engine.logger import RunLogger
from jsp.engine.losses import distillation_loss
from jsp.errors import JSPError


log = logging.getLogger("jsp")


class NonFiniteLoss(JSPError):
    """The loss became NaN or infinite."""


@dataclass
class LoopSettings:
    """How one stage trains. ``tag``/``val_tag``: TensorBoard prefixes of its losses and its
    validation metrics."""
    steps: int
    lr: float
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    val_every: int = 100
    log_every: int = 10
    progress_every: int = 50  # without a terminal (no tqdm bar): a progress line every N steps
    checkpoint_every: int = 0  # 0: only on a stop signal
    grad_clip: float = 0.0
    amp: bool = False
    channels_last: bool = False
    device: torch.device = torch.device("cpu")
    tag: str = "train"
    val_tag: str = "val"
    first_step: int = 0   # global step of this stage's first step (TensorBoard x axis)
    validate_start: bool = False  # the starting weights compete for "best" (fine-tuning may not help)
    shape: str = "cosine"  # the lr's course: cosine (warm-up, cosine), onecycle, rewind (``replay``'s tail)
    replay: "LoopSettings | None" = None  # rewind: the training stage whose last ``steps`` lrs are replayed


@dataclass
class Objective:
    """What one step minimises and how: task loss ``loss_fn(logits, y) -> (loss, terms)``, the
    constraint (its penalty, statistics and proximal step) and the optimiser. With a
    ``teacher`` (frozen, eval mode) and ``distill`` = alpha > 0 the task loss becomes
    ``(1 - alpha) task + alpha * distillation_loss(student, teacher, temperature)``."""
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    constraint: Constraint
    teacher: nn.Module | None = None
    distill: float = 0.0
    temperature: float = 1.0

    def task(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, s: "LoopSettings") -> tuple:
        """(task loss, its terms) of a batch, distillation included."""
        task, terms = self.loss_fn(logits, y)
        if self.teacher is None or not self.distill:
            return task, terms
        with torch.no_grad(), torch.autocast(s.device.type, enabled=s.amp):
            target = self.teacher(x)
        kd = distillation_loss(logits, target, self.temperature)
        return (1 - self.distill) * task + self.distill * kd, {**terms, "own": task.detach(), "kd": kd.detach()}


@dataclass
class Hooks:
    """What the loop calls out to. validate(model, global step) -> metrics with "miou" (the
    criterion), optionally "eligible" (see Best); checkpoint(steps done, best, best_state)
    runs every ``checkpoint_every`` steps and on a stop signal."""
    validate: Callable[[nn.Module, int], dict]
    logger: RunLogger
    checkpoint: Callable[[int, dict, dict | None], None] | None = None


def lr_at(step: int, s: LoopSettings) -> float:
    """The learning rate at ``step`` of the stage, by ``s.shape``:
    cosine: linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step;
    onecycle: linear from lr/25 to lr over the first 30 %, then cosine to lr/1e4 (Smith 2018);
    rewind: the last ``steps`` learning rates of the training stage ``s.replay``, replayed
    (learning-rate rewinding, Renda et al. 2020)."""
    if s.shape == "rewind":
        return lr_at(max(0, s.replay.steps - s.steps) + step, s.replay)
    if s.shape == "onecycle":
        up = max(1, round(0.3 * s.steps))
        if step < up:
            return s.lr / 25 + (s.lr - s.lr / 25) * step / up
        progress = (step - up) / max(1, s.steps - 1 - up)
        return s.lr * (1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress)))
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_step(model, x, y, objective: Objective, s: LoopSettings, scaler, step: int,
               lr: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One optimisation step on batch (x (N, C, p, p), y (N, p, p)); returns (task, penalty, terms).

    ``lr``: the step's learning rate, also the constraint's proximal step's."""
    constraint, optimizer = objective.constraint, objective.optimizer
    x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(s.device.type, enabled=s.amp):
        logits = model(x)
    task, terms = objective.task(logits, x, y, s)
    penalty = constraint.penalty(model)
    # One check a step: a NaN must stop the stage before it reaches the weights.
    if not torch.isfinite(task + penalty):
        parts = {"task": task, **terms, **constraint.terms, "penalty": penalty}
        bad = ", ".join(f"{k}={float(torch.as_tensor(v).detach()):.4g}" for k, v in parts.items())
        raise NonFiniteLoss(f"the loss is not finite at step {step} ({bad}); the weights of the last good "
                            "checkpoint are kept. Lower trainer.lr or the constraint weights, then resume=true")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(task + penalty).backward()
    # Several processes: every rank steps with the gradient of the global batch (and the same
    # BatchNorm statistics), so weights, statistics and pruning decisions stay identical.
    distributed.average_(model)
    # Statistics (e.g. gradient activity) from the task-loss part of the gradients.
    constraint.observe(model, step)
    if s.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    # The proximal step (update=prox) with the lr the optimiser just used, and the budget check.
    constraint.step(model, lr, step)
    return task, penalty, terms


def train_loop(model: nn.Module, batches: Iterable, objective: Objective, s: LoopSettings, hooks: Hooks,
               resume: dict | None = None) -> dict:
    """Train for ``s.steps`` steps; validate every ``s.val_every``; end with the best weights.

    batches: yields (x (N, C, p, p), y (N, p, p)) for the steps still to run. resume: {"step",
    "best", "best_state"} of an interrupted stage. With ``s.validate_start`` the starting
    weights compete as step 0. Returns the best validation metrics, with "step". Raises
    NonFiniteLoss (NaN or infinite loss) and Preempted (after a checkpoint) at the step
    boundary after a stop signal.
    """
    scaler = torch.amp.GradScaler(s.device.type, enabled=s.amp and s.device.type == "cuda")
    start = resume["step"] if resume else 0
    best = Best(resume)
    if s.validate_start and start == 0:
        # Fine-tuning starts from a network that already works; if no fine-tuned checkpoint
        # beats it on validation, the stage must hand it back rather than a worse one.
        best.offer(model, _validate(hooks, s.val_tag, model, s.first_step), 0, last=False)
    it = iter(batches)
    model.train()
    bar = tqdm(range(start, s.steps), desc=s.tag, disable=None, dynamic_ncols=True, initial=start, total=s.steps)
    progress = Progress(s.tag, start, s.steps, s.progress_every if bar.disable else 0)
    for step in bar:
        lr = lr_at(step, s)
        for group in objective.optimizer.param_groups:
            group["lr"] = lr
        x, y = next(it)
        task, penalty, terms = train_step(model, x, y, objective, s, scaler, step, lr)
        if step % s.log_every == 0 or step == s.steps - 1:
            total = _log_losses(hooks.logger, s.tag, task, penalty, {**terms, **objective.constraint.terms}, lr,
                                s.first_step + step)
            bar.set_postfix(loss=f"{total:.4f}", lr=f"{lr:.2e}")
        progress.step(step, task, penalty, lr)
        if (step + 1) % s.val_every == 0 or step + 1 == s.steps:
            metrics = _validate(hooks, s.val_tag, model, s.first_step + step + 1)
            progress.validated(step, metrics)
            best.offer(model, metrics, step + 1, last=step + 1 == s.steps)
        if step + 1 < s.steps:
            _save_or_stop(hooks.checkpoint, s.checkpoint_every, step + 1, s.steps, best, s.tag)
    if best.state is not None:
        model.load_state_dict(best.state)
    return best.metrics


def _validate(hooks: Hooks, val_tag: str, model: nn.Module, step: int) -> dict:
    metrics = hooks.validate(model, step)
    hooks.logger.scalars(val_tag, metrics, step)
    return metrics


def _save_or_stop(checkpoint, every: int, done: int, steps: int, best: "Best", tag: str) -> None:
    """Mid-stage: checkpoint every ``every`` steps, and on a stop signal checkpoint and raise."""
    stop = preemption.agreed()
    if checkpoint is not None and (stop or every and done % every == 0):
        checkpoint(done, best.metrics, best.state)
    if stop:
        raise preemption.Preempted(f"{tag}: stopped at step {done} of {steps} on {stop}; the state is in "
                                   "checkpoints/last.pt and the next job on this run dir continues it")


def _log_losses(logger: RunLogger, tag: str, task, penalty, terms: dict, lr: float, step: int) -> float:
    """Loss, its terms and the lr to TensorBoard; returns the total loss."""
    terms = {k: float(torch.as_tensor(v).detach()) for k, v in terms.items()}
    total = task.item() + penalty.item()
    logger.scalars(f"{tag}/loss", {"total": total, "task": task.item(), **terms}, step)
    logger.scalars(tag, {"lr": lr}, step)
    return total


class Best:
    """The best validation metrics so far (with "step") and their weights: what a stage hands on."""

    def __init__(self, resume: dict | None = None):
        self.metrics = resume["best"] if resume else {"miou": -1.0}
        self.state = resume["best_state"] if resume else None

    def offer(self, model: nn.Module, metrics: dict, step: int, last: bool) -> None:
        """On a tie the later, longer-trained weights win. Weights that are not eligible (a
        budget run whose units still cost more than the budget) cannot be best; if nothing was
        eligible by the ``last`` validation, the last weights are handed on."""
        if metrics.get("eligible", True) and metrics["miou"] >= self.metrics["miou"]:
            self.metrics, self.state = {**metrics, "step": step}, copy.deepcopy(model.state_dict())
        elif last and self.metrics["miou"] < 0:
            self.metrics, self.state = {**metrics, "step": step}, None


class Progress:
    """Progress lines for logs without a terminal (Slurm, nohup), where tqdm's bar is off:
    step, loss, lr, speed and ETA every ``every`` steps, and each validation (every=0: silent)."""

    def __init__(self, tag: str, start: int, steps: int, every: int):
        self.tag, self.start, self.steps, self.every, self.t0 = tag, start, steps, every, time.time()

    def step(self, step: int, task: torch.Tensor, penalty: torch.Tensor, lr: float) -> None:
        if not self.every or (step + 1) % self.every:
            return
        rate = (step + 1 - self.start) / max(time.time() - self.t0, 1e-9)
        eta = (self.steps - step - 1) / max(rate, 1e-9)
        t, p = task.item(), penalty.item()  # one device sync each
        log.info("%s step %d/%d | loss %.4f (task %.4f, penalty %.4g) | lr %.2e | %.2f steps/s | ETA %dm%02ds",
                 self.tag, step + 1, self.steps, t + p, t, p, lr, rate, eta // 60, eta % 60)

    def validated(self, step: int, metrics: dict) -> None:
        if self.every:
            log.info("%s step %d/%d | val mIoU %.4f", self.tag, step + 1, self.steps, metrics["miou"])
