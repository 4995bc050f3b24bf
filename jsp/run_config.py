"""What the pipeline reads from a composed config besides building objects: the checks that
need several settings at once, how a config node is built with jsp's errors, and the labels
(config-group choices, model settings) a run records."""
from __future__ import annotations

import inspect
import logging
import typing
from difflib import get_close_matches

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from jsp.errors import ConfigError, JSPError
from jsp.registry import check_process

log = logging.getLogger("jsp")


def build(node, where: str | None = None, **kwargs):
    """``instantiate`` that lets a jsp error raised by the target through as itself. With
    ``where`` (the node's config key), its settings are first checked against the target's
    signature: an unknown key or a word where a number belongs is one line naming the key."""
    if where is not None:
        check_arguments(node, where)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, JSPError):
            raise cause from None
        raise


def check_arguments(node, where: str) -> None:
    """Every key of a ``_target_`` node must be an argument of the target, and a number where
    the target's annotation says int or float (configs whose keys depend on the option chosen,
    such as ``constraint=...``, have no fixed schema to check them at compose time)."""
    target = node.get("_target_") if hasattr(node, "get") else None
    if not target:
        return
    try:
        fn = get_object(str(target))
        init = fn.__init__ if inspect.isclass(fn) else fn
        params, hints = inspect.signature(init).parameters, typing.get_type_hints(init)
    except Exception:  # noqa: BLE001  (a target we cannot inspect: instantiate reports it)
        return
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    name = str(target).rsplit(".", 1)[-1]
    for key, value in node.items():
        if str(key).startswith("_"):
            continue
        if key not in params and not open_ended:
            close = get_close_matches(str(key), [k for k in params if k != "self"], n=1)
            hint = f"; did you mean {where}.{close[0]}?" if close else ""
            raise ConfigError(f"{where}.{key}: not a setting of {name}{hint}")
        numeric = {int, float} & set(typing.get_args(hints.get(key)) or (hints.get(key),))
        if numeric and (isinstance(value, (str, bool)) or value is None and type(None) not in
                        typing.get_args(hints.get(key))):
            raise ConfigError(f"{where}.{key}={value}: {name} takes a number here")


def build_dataset(node) -> tuple[object, dict]:
    """(dataset, processing spec) from a dataset config node, for every command that takes
    ``dataset=``: the loader is built from every key but ``process``, which says how its
    images become tensors (checked as a saved model's would be)."""
    spec = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    process = check_process(spec.pop("process", None), "dataset.process")
    return build(spec), process


def check_trainer(tr) -> None:
    for key in ("steps", "batch_size", "val_every", "log_every"):
        if int(tr[key]) <= 0:
            raise ConfigError(f"trainer.{key} must be a positive number of steps, got {tr[key]}")
    if tr.lr <= 0 or tr.checkpoint_every < 0:
        raise ConfigError(f"trainer.lr must be > 0 and trainer.checkpoint_every >= 0, got {tr.lr}, "
                          f"{tr.checkpoint_every}")


def effective_budget(budget, schedule, control: str = "none"):
    """``constraint.budget`` is the target of a one-shot threshold schedule. With an explicit
    schedule target (keep_params / keep_macs), several rounds, no pruning or the uniform
    control, the schedule decides and the constraint trains without a budget (None)."""
    if budget is None or schedule.rounds != 1 or schedule.mode != "threshold" or control == "uniform":
        if budget is not None:
            log.info("constraint.budget=%s is not used: the schedule sets the target (rounds=%d, %s)", budget,
                     schedule.rounds, schedule.mode)
        return None
    return budget


def check_control(control: str, budget, schedule) -> None:
    if control not in ("none", "uniform", "scratch"):
        raise ConfigError(f"control must be none, uniform or scratch, got {control!r}")
    if control == "uniform" and (schedule.mode == "threshold" or schedule.rounds != 1):
        raise ConfigError("control=uniform needs schedule=oneshot with schedule.keep_params, keep_macs or keep_latency "
                          "(the budget)")
    if control == "scratch" and schedule.rounds != 1:
        raise ConfigError("control=scratch needs schedule=oneshot")


def check_init_control(init_from, control: str, control_steps) -> None:
    """The uniform control has no use for a start (it shrinks the dense architecture itself);
    the scratch control may take its architecture from a method run that starts from one, but
    then its own training must count that start's steps too, which only the user knows."""
    if not init_from or control == "none":
        return
    if control == "uniform":
        raise ConfigError("init_from and control=uniform contradict each other: the uniform control trains from "
                          "scratch")
    if control_steps is None:
        raise ConfigError("control=scratch with init_from: set schedule.control_steps to the start's training steps "
                          "+ trainer.steps + schedule.finetune_steps, so the scratch network trains as long as the "
                          "runs it is compared with")


def choices(cfg: DictConfig) -> dict:
    """Which option of each config group this run used (from Hydra, when run through it).
    Without a method preset, ``method`` names the constraint + importance pair (or dense)."""
    groups = ("dataset", "model", "constraint", "schedule", "method")
    try:
        from hydra.core.hydra_config import HydraConfig

        chosen = HydraConfig.get().runtime.choices
        picked = {g: str(chosen.get(g)) for g in groups}
    except ValueError:  # called without Hydra (tests calling run() directly)
        picked = {g: str((cfg.get(g) or {}).get("_target_", "?")).rsplit(".", 1)[-1] for g in groups}
    if picked["method"] in ("None", "?"):
        s = cfg.get("schedule") or {}
        unpruned = "dense" if picked["constraint"] in ("none", "Constraint") else f"{picked['constraint']} (unpruned)"
        picked["method"] = f"{picked['constraint']}+{s.get('importance')}" if s.get("rounds") else unpruned
    if cfg.get("control") not in (None, "none") and picked["method"] != cfg.get("control"):
        picked["method"] = f"{cfg.get('control')}({picked['method']})"
    return picked


def config_hparams(cfg: DictConfig) -> dict:
    """The whole composed config as one flat HParams row: ``trainer.lr``, ``schedule.importance``,
    ``schedule.keep_params``...; numbers and booleans as they are, strings, None and lists as text."""
    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001  (an interpolation only Hydra can resolve: keep it as written)
        tree = OmegaConf.to_container(cfg, resolve=False)

    def walk(node, prefix: str) -> dict:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in walk(value, f"{prefix}{key}.").items()}
        value = node if isinstance(node, (bool, int, float, str)) else str(node)
        return {prefix[:-1]: value}

    return walk(tree, "")
