"""Pruning schedules: the prune -> fine-tune rounds that follow training.

``rounds=0`` is ``schedule=none`` (keep the dense network), ``rounds=1`` is one-shot, more
rounds is iterative: round i keeps ``keep ** (i / rounds)`` of the dense cost, so the rounds
remove equal fractions of what is left.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from jsp.errors import ConfigError
from jsp.pruning.importance import NORMALIZE, check_importance
from jsp.pruning.pruner import Target


@dataclass(frozen=True)
class Stage:
    """One evaluated stage of a run: its ``name`` names its checkpoint folder, its metrics.json
    entry, its log lines and (through ``tb_prefix``) its TensorBoard curves.

    kind: "train" (``steps`` steps at ``lr_scale`` x trainer.lr, the constraint at
    ``constraint_scale`` x its weights, batches drawn with seed + ``seed_offset``; first
    ``reset``: "reinit" fresh weights, "uniform" every layer narrowed by one width factor to
    ``target`` and fresh weights) or "prune" (remove channels to meet ``target``; None: the
    constraint's budget). ``validate_start``: the starting weights compete for the best.
    Stages other than the ``main`` one train with the constraint scaled (its statistics go on).
    ``snap``: the stage ends by setting its switched-off units to exact zeros (or constants),
    because a threshold cut follows that removes them and must change no output.
    """
    name: str
    kind: str
    tb_prefix: str = ""            # "" is the top level (the dense stage: train/, val/, test/)
    steps: int = 0
    lr_scale: float = 1.0
    constraint_scale: float = 1.0
    seed_offset: int = 0
    target: Target | None = None
    reset: str | None = None
    validate_start: bool = False
    main: bool = False             # the run's own training: the constraint itself, budget controller included
    snap: bool = False

    @property
    def cuts_by_threshold(self) -> bool:
        """A prune stage whose first cut removes the switched-off units (with a budget, or a threshold target)."""
        return self.kind == "prune" and (self.target is None or self.target.mode == "threshold")

    def tag(self, what: str) -> str:
        """TensorBoard prefix of ``what``: "train" (losses), "val", "test" or "" (the stage's own)."""
        if not self.tb_prefix:
            return what or "train"
        return f"{self.tb_prefix}/{what}" if what not in ("", "train") else self.tb_prefix


class Schedule:
    """Args:
        rounds: number of prune -> fine-tune rounds (0 = no pruning).
        importance: how units are ranked (one of IMPORTANCES).
        keep_params: keep this fraction of the dense parameters (None: not a parameter budget).
        keep_macs: keep this fraction of the dense MACs (None: not a MAC budget).
        keep_latency: keep this fraction of the measured latency (torch eager, batch 1, full
            image, this device; jsp/pruning/latency.py): a latency table steers the cut and a
            timing of each candidate corrects it (None: not a latency budget).
            With none of the three, the target is ``threshold``: remove the units switched off
            (``constraint.eps``, the rule the unit report counts with).
        min_channels: never leave a channel group narrower than this.
        min_keep: never keep less than this fraction of a channel group.
        normalize: per-layer score normalisation, "max" or "rank" (method.md s.4).
        cost_aware: rank by importance per parameter ("params"), MAC ("macs") or predicted ms
            ("latency", HALP's allocation) removed; "none" by importance alone; None (the
            default) is "latency" for a latency budget and "none" otherwise.
        budget_on: what ``constraint.budget`` counts, "params", "macs" or "latency".
        latency_cache: the folder of the latency tables (one per device description).
        latency_margin: a penalty method's budget on latency (budget_on=latency): its budget
            controller stops at (1 + this) x the budget, and the cut's measured search removes
            the rest. A UNet's latency falls abruptly and noisily as the penalty switches units
            off (0.64 -> 0.40 of the dense latency within a tenth of training, docs/benchmarks.md),
            and what it switched off cannot be given back; approached from above, the last
            stretch is cut to the measured budget instead. 0: the controller aims at the budget.
        round_to: round kept widths up to a multiple of this (1 = no rounding).
        finetune_steps: training steps after each pruning (0 = no fine-tuning).
        finetune_lr_scale: fine-tuning peak lr = trainer.lr * this.
        constraint_scale: the constraint's weight during fine-tuning, relative to training.
        control_steps: how long the controls (uniform, scratch) train from scratch; None is
            train + fine-tune steps (equal training). A run that starts from a trained network
            (init_from) sets it to include that network's training.
        seed: for the ``random`` importance.
        distill: alpha of distillation in every stage after the dense one (fine-tuning, the
            controls): the loss is (1 - alpha) task + alpha KD from the dense network the run
            started from (init_from), else from the network before pruning; 0 = off.
        distill_temperature: T of the distillation's softened class distributions.
        finetune_lr: the course of the fine-tuning lr: cosine (warm-up + cosine, at
            finetune_lr_scale x trainer.lr), onecycle, or rewind (the training stage's last
            finetune_steps learning rates replayed).
        control_compute: the scratch control trains for the compressed run's compute (Liu et
            al.'s Scratch-B) instead of its steps: (control_steps - finetune_steps) steps of the
            dense network plus finetune_steps of the pruned one, over one pruned step.
    """
    FINETUNE_LR = ("cosine", "onecycle", "rewind")

    def __init__(self, rounds: int = 1, importance: str = "jsp", keep_params: float | None = None,
                 keep_macs: float | None = None, min_channels: int = 2, round_to: int = 1,
                 finetune_steps: int = 300, finetune_lr_scale: float = 1.0, constraint_scale: float = 0.0,
                 seed: int = 0, min_keep: float = 0.0, normalize: str = "max", cost_aware: str | None = None,
                 budget_on: str = "params", control_steps: int | None = None, distill: float = 0.0,
                 distill_temperature: float = 1.0, finetune_lr: str = "cosine", control_compute: bool = False,
                 keep_latency: float | None = None, latency_cache: str = "~/.cache/jsp/latency",
                 latency_margin: float = 0.15):
        if rounds < 0:
            raise ConfigError(f"schedule.rounds must be >= 0, got {rounds}")
        check_importance(importance)
        if normalize not in NORMALIZE:
            raise ConfigError(f"schedule.normalize must be one of {list(NORMALIZE)}, got {normalize!r}")
        if cost_aware is None and (keep_latency is not None or budget_on == "latency"):
            cost_aware = "latency"
        if cost_aware in (False, "none"):
            cost_aware = None
        if cost_aware not in (None, "params", "macs", "latency") or budget_on not in ("params", "macs", "latency"):
            raise ConfigError(f"schedule.cost_aware must be null, none, params, macs or latency and schedule.budget_on "
                              f"params, macs or latency, got {cost_aware!r}, {budget_on!r}")
        if not 0 <= min_keep < 1:
            raise ConfigError(f"schedule.min_keep must be in [0, 1), got {min_keep}")
        keeps = {"keep_params": keep_params, "keep_macs": keep_macs, "keep_latency": keep_latency}
        if sum(v is not None for v in keeps.values()) > 1:
            raise ConfigError("set one of schedule.keep_params, keep_macs and keep_latency, not several")
        for name, v in keeps.items():
            if v is not None and not 0 < v <= 1:
                raise ConfigError(f"schedule.{name} must be in (0, 1], got {v}")
        if control_steps is not None and control_steps < 1:
            raise ConfigError(f"schedule.control_steps must be >= 1 or null, got {control_steps}")
        if min_channels < 1 or round_to < 1 or finetune_steps < 0 or constraint_scale < 0:
            raise ConfigError("schedule.min_channels and round_to must be >= 1, finetune_steps and "
                              "constraint_scale >= 0")
        self.rounds, self.importance = rounds, importance
        self.keep_params, self.keep_macs, self.keep_latency = keep_params, keep_macs, keep_latency
        self.latency_cache = latency_cache
        if not 0 <= latency_margin < 1:
            raise ConfigError(f"schedule.latency_margin must be in [0, 1), got {latency_margin}")
        self.latency_margin = latency_margin
        self.min_channels, self.round_to = min_channels, round_to
        self.finetune_steps, self.finetune_lr_scale = finetune_steps, finetune_lr_scale
        self.constraint_scale, self.seed = constraint_scale, seed
        self.min_keep, self.normalize, self.cost_aware, self.budget_on = min_keep, normalize, cost_aware, budget_on
        self.control_steps = control_steps
        if not 0 <= distill <= 1 or distill_temperature <= 0:
            raise ConfigError(f"schedule.distill must be in [0, 1] and schedule.distill_temperature > 0, got "
                              f"{distill}, {distill_temperature}")
        if finetune_lr not in self.FINETUNE_LR:
            raise ConfigError(f"schedule.finetune_lr must be one of {list(self.FINETUNE_LR)}, got {finetune_lr!r}")
        self.distill, self.distill_temperature = distill, distill_temperature
        self.finetune_lr, self.control_compute = finetune_lr, bool(control_compute)

    @property
    def mode(self) -> str:
        for mode in ("params", "macs", "latency"):
            if getattr(self, f"keep_{mode}") is not None:
                return mode
        return "threshold"

    @property
    def uses_latency(self) -> bool:
        """Whether a cut or the budget is costed in latency (a latency table is needed)."""
        return self.rounds > 0 and (self.mode == "latency" or self.budget_on == "latency" or
                                    self.cost_aware == "latency")

    def controller_budget(self, budget: float) -> float:
        """What the budget controller aims at for the constraint's ``budget``: the budget itself,
        or on latency (1 + latency_margin) x it, kept below 1 (the cut's search does the rest)."""
        if self.budget_on != "latency":
            return budget
        return min(budget * (1 + self.latency_margin), (1 + budget) / 2)

    def keep_at(self, round_: int) -> float:
        """Fraction of the dense cost kept after round ``round_`` (1-based)."""
        keep = None if self.mode == "threshold" else getattr(self, f"keep_{self.mode}")
        return 1.0 if keep is None else keep ** (round_ / self.rounds)

    def targets(self) -> list[tuple[Target, float]]:
        """Per round: (target relative to the current model, kept fraction of the dense cost)."""
        out, before = [], 1.0
        for r in range(1, self.rounds + 1):
            keep = self.keep_at(r)
            out.append((Target(self.mode, keep / before), keep))
            before = keep
        return out

    def stages(self, train_steps: int, control: str = "none", budget: float | None = None) -> list[Stage]:
        """The evaluated stages in order: dense training, then per round prune (-> fine-tune).

        budget: the constraint's budget, a one-shot target by itself. control="uniform": one
        stage, the dense architecture shrunk by one width factor to the budget and trained from
        scratch for train + fine-tune steps (equal training; ``control_steps`` if set); "scratch":
        the pruned architecture re-initialised and trained from scratch for as long, instead of
        fine-tuned.
        """
        total = self.control_steps or train_steps + self.finetune_steps
        if control == "uniform":
            return [Stage("uniform", "train", "uniform", total, target=self.targets()[0][0], reset="uniform",
                          main=True)]
        out = [Stage("dense", "train", "", train_steps, main=True)]
        targets = [None] if budget else [t for t, _ in self.targets()]
        for r, target in enumerate(targets, start=1):
            x = "" if self.rounds == 1 else f"_{r}"
            out.append(Stage(f"pruned{x}", "prune", f"prune{x}", target=target))
            if control == "scratch":
                out.append(Stage("scratch", "train", "scratch", total, constraint_scale=0.0, seed_offset=1,
                                 reset="reinit"))
            elif self.finetune_steps:
                out.append(Stage(f"finetuned{x}", "train", f"finetune{x}", self.finetune_steps,
                                 self.finetune_lr_scale, self.constraint_scale, r, validate_start=True))
        return [replace(s, snap=s.kind == "train" and nxt.cuts_by_threshold) for s, nxt in zip(out, out[1:])] + out[-1:]

    def settings(self) -> dict:
        if self.rounds == 0:
            return {"rounds": 0}
        return {"rounds": self.rounds, "importance": self.importance, "mode": self.mode,
                "keep_params": self.keep_params, "keep_macs": self.keep_macs, "keep_latency": self.keep_latency,
                "min_channels": self.min_channels, "round_to": self.round_to, "min_keep": self.min_keep,
                "normalize": self.normalize, "cost_aware": self.cost_aware, "finetune_steps": self.finetune_steps,
                "distill": self.distill, "distill_temperature": self.distill_temperature,
                "finetune_lr": self.finetune_lr, "control_compute": self.control_compute}
