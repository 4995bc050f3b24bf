"""The running state of one jsp-train job: what the pipeline built from the config, the model
as the stages change it, and the global step.

The stages (jsp/stages.py) are functions over one ``RunState``; the pipeline
(jsp/pipeline.py) builds it and runs them in order. The global step (the x axis of every
TensorBoard curve, so the stages' curves follow one another) changes only through ``goto``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from jsp.engine.evaluate import Evaluation, evaluate
from jsp.engine.logger import RunLogger


@dataclass
class RunState:
    """Filled in by ``jsp.pipeline.setup``; the stages read and change it.

    cfg/tr: the composed config and its trainer node; constraint, schedule, loss_fn: built from
    it; budget: the constraint's budget as a fraction (None: the schedule sets the target);
    control: "none", "uniform" or "scratch"; process: how raw images become tensors; data: the
    dataset (num_classes, full_size (H, W), class_names, ignore_index) and splits its prepared
    train/val/test images; builder/architecture: the model's settings and its registry record;
    dense_cost: {"params", "macs"} of the dense network budgets are relative to ("latency",
    the table's prediction, for a latency budget); init_sha256:
    the weights file training started from (``init_from``), else None; resume_state:
    an interrupted stage's training state (checkpoints/last.pt), taken by the stage it belongs to.
    """
    cfg: DictConfig
    run_dir: Path
    t_start: float = field(default_factory=time.time)
    tr: DictConfig | None = None
    device: torch.device = torch.device("cpu")
    constraint: object = None
    schedule: object = None
    control: str = "none"
    budget: float | None = None
    provenance: dict = field(default_factory=dict)
    data_cfg: dict = field(default_factory=dict)
    process: dict = field(default_factory=dict)
    c_in: int = 3
    data_record: dict = field(default_factory=dict)
    data: object = None
    splits: dict = field(default_factory=dict)
    builder: dict = field(default_factory=dict)
    architecture: dict = field(default_factory=dict)
    channels_last: bool = False
    amp: bool = False
    model: nn.Module | None = None
    dense_cost: dict = field(default_factory=dict)
    init_sha256: str | None = None
    loss_fn: object = None
    ckpt: Path | None = None
    resume: bool = False
    resume_state: dict | None = None
    logger: RunLogger | None = None
    teacher: nn.Module | None = None  # the frozen network distillation learns from (stages.teacher_of)
    latency: object = None  # the LatencyTable of latency budgets (jsp/pruning/latency.py), else None
    step: int = 0  # read freely; written only by goto()

    def goto(self, step: int) -> None:
        """Move the global step (the one place it is written)."""
        self.step = step

    def set_model(self, model: nn.Module) -> None:
        """Make ``model`` the run's model: on the device, in its memory format, under the constraint."""
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.constraint.attach(self.model, self.c_in)

    def eval_on(self, split: str, num_examples: int = 0) -> Evaluation:
        return evaluate(self.model, self.splits[split], self.data.num_classes, self.device, self.data.class_names,
                        self.amp, num_examples, desc=split, ignore_index=self.data.ignore_index, split_ranks=True)

    def model_info(self, stage: str, metrics: dict) -> dict:
        """What model.json records beside the architecture: how to feed the model, and its metrics."""
        return dict(stage=stage, dataset=self.data_record, process=self.process, input_size=list(self.data.full_size),
                    in_channels=self.c_in, class_names=list(self.data.class_names),
                    ignore_index=self.data.ignore_index,
                    metrics={k: v for k, v in metrics.items() if k not in ("units_off_layers", "provenance")},
                    provenance=self.provenance)
