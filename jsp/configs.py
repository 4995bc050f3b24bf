"""Typed schemas for the config groups whose keys are fixed (trainer, schedule, dataset
processing), registered in Hydra's ConfigStore as each group's ``base``, and for the primary
configs of jsp-eval, jsp-export and jsp-predict (``<name>_schema``). The YAML options
extend them, so a wrong type (``trainer.lr=abc``) or an unknown key (``trainer.stesp=10``)
fails when the config is composed, before anything runs. Ranges are checked where the value
is used (the classes the config builds).
"""
from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from jsp.pruning.schedule import Schedule


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


def schema_of(cls: type, target: str) -> type:
    """The structured config of ``cls``: a dataclass with ``_target_`` and every keyword of
    ``cls.__init__`` with its type and default, so a setting is declared once, in the
    signature (typos and wrong types still fail at compose time)."""
    hints = typing.get_type_hints(cls.__init__)
    fields = [("_target_", str, field(default=target))]
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self":
            continue
        kind = hints.get(name, Any)
        args = typing.get_args(kind)
        if type(None) in args:  # OmegaConf spells "X | None" as Optional[X]
            others = [a for a in args if a is not type(None)]
            kind = Optional[others[0]] if len(others) == 1 else Any
        fields.append((name, kind, field(default=p.default)))
    return make_dataclass(f"{cls.__name__}Config", fields)


#: schedule=...: the keywords of jsp.pruning.Schedule (its docstring says what each means)
ScheduleConfig = schema_of(Schedule, "jsp.pruning.Schedule")


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
