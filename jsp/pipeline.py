"""The stages of a jsp run: train -> (prune -> fine-tune)* -> evaluate.

This is the only module that reads the Hydra config; everything it calls takes plain values.
"""
from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from jsp.data import PatchDataset, prepare
from jsp.data.transforms import in_channels
from jsp.engine.checkpoint import save_checkpoint
from jsp.engine.evaluate import evaluate
from jsp.engine.logger import RunLogger, flatten
from jsp.engine.train import LoopSettings, train_loop
from jsp.errors import ConfigError
from jsp.metrics import cost_report

log = logging.getLogger("jsp")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is available; use trainer.device=auto or cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"trainer.device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def patch_loader(images, process, steps: int, batch_size: int, seed: int, workers, device) -> DataLoader:
    """DataLoader over exactly ``steps`` batches of random training patches."""
    dataset = PatchDataset(images, process["patch_size"], steps * batch_size, seed, process["augment"])
    if workers == "auto":  # on CPU the cores are better spent on the model
        workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=int(workers),
                      pin_memory=device.type == "cuda", persistent_workers=False, drop_last=True)


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run every stage; returns metrics.json's content. ``run_dir`` receives all outputs."""
    run_dir = Path(run_dir)
    t_start = time.time()
    seed_everything(cfg.seed)
    tr = cfg.trainer
    device = resolve_device(tr.device)
    if tr.steps <= 0 or tr.batch_size <= 0:
        raise ConfigError(f"trainer.steps and trainer.batch_size must be positive, got {tr.steps}, {tr.batch_size}")

    # Data: the loader returns raw splits; "process" says how they become tensors.
    data_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
    process = data_cfg.pop("process")
    data = instantiate(data_cfg)
    c_in = in_channels(process["channels"])
    splits = {name: prepare(getattr(data, name), process["channels"], process["clahe"])
              for name in ("train", "val", "test")}
    log.info("data: %d train / %d val / %d test images, %d classes, full size %s",
             *(len(v) for v in splits.values()), data.num_classes, data.full_size)

    model = instantiate(cfg.model, in_channels=c_in, num_classes=data.num_classes).to(device)
    channels_last = tr.channels_last == "auto" and device.type == "cuda" or tr.channels_last is True
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    constraint = instantiate(cfg.constraint).attach(model, c_in)
    schedule = instantiate(cfg.schedule)
    loss_fn = instantiate(tr.loss, ignore_index=data.ignore_index)
    logger = RunLogger(run_dir)
    amp = bool(tr.amp) and device.type == "cuda"

    def eval_on(split: str, num_examples: int = 0):
        return evaluate(model, splits[split], data.num_classes, device, data.class_names, amp,
                        num_examples, desc=split)

    def cost() -> dict:
        return cost_report(model, c_in, data.full_size, tr.latency_reps)

    def log_units(step: int) -> dict:
        """Per-layer unit statistics to TensorBoard; returns the switched-off fractions."""
        report = constraint.unit_report()
        logger.scalars("units", {"off_fraction": report["units_off"]}, step)
        logger.scalars("units/off_fraction_layer", report["units_off_layers"], step)
        logger.histograms("units/norm", {l.name: l.norms() for l in constraint.layers}, step)
        for stat, per_layer in constraint.statistics().items():
            logger.histograms(f"units/{stat}", per_layer, step)
        return report

    def validate(m, step: int) -> dict:
        log_units(step)
        return eval_on("val")[0]

    def test_stage(name: str, prefix: str, step: int) -> dict:
        metrics, examples = eval_on("test", tr.eval_examples)
        metrics.update(cost())
        metrics.update(log_units(step), constraint=constraint.settings())
        logger.scalars(prefix, metrics, step)
        logger.examples(prefix, examples, step)
        logger.stage(name, metrics)
        log.info("%s: test mIoU %.4f | params %s | MACs %.3g | units off %.1f%%", name, metrics["miou"],
                 metrics["params"], metrics["macs"], 100 * metrics["units_off"])
        return metrics

    def stage_loop(steps: int, tag: str, val_tag: str, seed: int) -> dict:
        settings = LoopSettings(steps=steps, lr=tr.lr, warmup_steps=min(tr.warmup_steps, steps // 2),
                                min_lr_ratio=tr.min_lr_ratio, val_every=tr.val_every,
                                log_every=tr.log_every, grad_clip=tr.grad_clip, amp=amp,
                                channels_last=channels_last)
        # The optimizer is built per stage: surgery replaces parameters between stages.
        optimizer = instantiate(tr.optimizer)(model.parameters())
        batches = patch_loader(splits["train"], process, steps, tr.batch_size, seed, tr.num_workers, device)
        best = train_loop(model, batches, loss_fn, optimizer, constraint, settings, device,
                          validate, logger, tag=tag, val_tag=val_tag)
        log.info("%s: best val mIoU %.4f at step %d", tag, best["miou"], best["step"])
        return best

    # Stage 1: train (with the constraint), keep the best validation weights.
    best_val = stage_loop(tr.steps, "train", "val", cfg.seed)
    save_checkpoint(run_dir / "checkpoints" / "dense.pt", model=model.state_dict(), stage="dense",
                    val_miou=best_val["miou"], constraint=constraint.state_dict())
    dense = test_stage("dense", "test", tr.steps)
    # Stages 2..: the schedule's prune -> fine-tune rounds go here; schedule=none has none.
    final = {**dense, "time_s": time.time() - t_start}
    logger.stage("final", final)
    save_checkpoint(run_dir / "checkpoints" / "final.pt", model=model.state_dict(), stage="final",
                    constraint=constraint.state_dict())
    choices = _choices(cfg)
    logger.hparams({**choices, "seed": cfg.seed, "steps": tr.steps,
                    **flatten(constraint.settings(), "constraint"), **flatten(schedule.settings(), "schedule"),
                    **_model_hparams(cfg)}, final)
    logger.close()
    _summary(logger.metrics, run_dir, choices)
    return logger.metrics


def _choices(cfg: DictConfig) -> dict:
    """Which option of each config group this run used (from Hydra, when run through it)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        picked = HydraConfig.get().runtime.choices
        return {g: str(picked.get(g)) for g in ("dataset", "model", "constraint", "schedule")}
    except ValueError:  # called without Hydra (tests calling run() directly)
        return {g: str(cfg[g].get("_target_", "?")).rsplit(".", 1)[-1] for g in ("dataset", "model",
                                                                                   "constraint", "schedule")}


def _model_hparams(cfg: DictConfig) -> dict:
    return {f"model.{k}": v for k, v in cfg.model.items() if isinstance(v, (int, float, str)) and k != "_target_"}


def _summary(metrics: dict, run_dir: Path, choices: dict) -> None:
    keys = [k for k in ("miou", "f1", "auc", "se", "sp", "acc") if k in metrics["final"]]
    lines = [f"jsp run: {', '.join(f'{g}={c}' for g, c in choices.items())}",
             f"{'stage':<10}" + "".join(f"{k:>9}" for k in keys) + f"{'params':>12}{'MMACs':>11}{'MB':>8}{'off%':>7}"]
    for name, m in metrics.items():
        lines.append(f"{name:<10}" + "".join(f"{m[k]:>9.4f}" for k in keys)
                     + f"{m['params']:>12,}{m['macs'] / 1e6:>11.1f}{m['weight_mb']:>8.2f}{100 * m['units_off']:>7.1f}")
    lines.append(f"time {metrics['final']['time_s']:.0f} s; outputs in {run_dir} "
                 f"(tensorboard --logdir {run_dir / 'tensorboard'})")
    log.info("\n" + "\n".join(lines))
