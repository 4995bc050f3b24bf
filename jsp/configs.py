"""Typed schemas for the config groups whose keys are fixed (trainer, schedule, dataset
processing), registered in Hydra's ConfigStore as each group's ``base``, and for the primary
configs of jsp-eval, jsp-export and jsp-predict (``<name>_schema``). The YAML options
extend them, so a wrong type (``trainer.lr=abc``) or an unknown key (``trainer.stesp=10``)
fails when the config is composed, before anything runs. Ranges are checked where the value
is used (the classes the config builds).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class TrainerConfig:
    steps: int = 600
    batch_size: int = 8
    lr: float = 3e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.01
    grad_clip: float = 0.0
    val_every: int = 100
    checkpoint_every: int = 100
    log_every: int = 10
    progress_every: int = 50
    device: str = "auto"
    amp: bool = False
    channels_last: Any = "auto"     # auto | true | false
    num_workers: Any = "auto"       # auto | a number
    eval_examples: int = 2
    latency_s: float = 2.0
    optimizer: Any = field(default_factory=dict)
    loss: Any = field(default_factory=dict)


@dataclass
class ScheduleConfig:
    _target_: str = "jsp.pruning.Schedule"
    rounds: int = 1
    importance: str = "jsp"
    keep_params: Optional[float] = None
    keep_macs: Optional[float] = None
    min_channels: int = 2
    min_keep: float = 0.0
    normalize: str = "max"
    cost_aware: Optional[str] = None
    budget_on: str = "params"
    round_to: int = 1
    finetune_steps: int = 300
    finetune_lr_scale: float = 1.0
    constraint_scale: float = 0.0
    control_steps: Optional[int] = None
    seed: int = 0
    distill: float = 0.0
    distill_temperature: float = 1.0
    finetune_lr: str = "cosine"
    control_compute: bool = False


@dataclass
class ProcessConfig:
    channels: str = "rgb"
    clahe: bool = True
    patch_size: int = 96
    augment: bool = True


@dataclass
class EvalConfig:
    """jsp-eval (conf/eval.yaml)."""
    checkpoint: str = "???"
    dataset: Any = None
    max_model_params: int = 2_000_000_000
    max_image_pixels: int = 200_000_000
    device: str = "auto"
    latency_s: float = 2.0


@dataclass
class ExportConfig:
    """jsp-export (conf/export.yaml)."""
    checkpoint: str = "???"
    max_model_params: int = 2_000_000_000
    formats: list = field(default_factory=lambda: ["torchscript", "onnx"])
    out: Optional[str] = None
    input_size: Optional[list] = None


@dataclass
class PredictConfig:
    """jsp-predict (conf/predict.yaml)."""
    checkpoint: str = "???"
    input: str = "???"
    output: str = "???"
    fov: str = "auto"
    overlay: bool = True
    tile_size: int = 1024
    tile_overlap: int = 64
    batch_size: int = 4
    device: str = "auto"
    max_model_params: int = 2_000_000_000
    max_image_pixels: int = 200_000_000


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="predict_schema", node=PredictConfig)
    cs.store(group="trainer", name="base", node=TrainerConfig)
    cs.store(group="schedule", name="base", node=ScheduleConfig)
    cs.store(group="dataset/process", name="base", node=ProcessConfig)


register()
