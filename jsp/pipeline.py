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
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from jsp.constraints.base import Scaled
from jsp.data import PatchDataset, prepare
from jsp.data.transforms import in_channels
from jsp.engine.evaluate import evaluate
from jsp.engine.logger import RunLogger, flatten
from jsp.engine.train import LoopSettings, train_loop
from jsp.errors import ConfigError
from jsp.metrics import cost_report
from jsp.models import pad_multiple
from jsp.models.saved import save_model
from jsp.pruning import ChannelGroups, apply, layer_scores, layer_widths, plan

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
    return Run(cfg, Path(run_dir)).execute()


class Run:
    """One jsp-train job: builds everything from the config, then runs the stages."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir, self.t_start = cfg, run_dir, time.time()
        seed_everything(cfg.seed)
        tr = self.tr = cfg.trainer
        self.device = resolve_device(tr.device)
        if tr.steps <= 0 or tr.batch_size <= 0:
            raise ConfigError(f"trainer.steps and trainer.batch_size must be positive, got {tr.steps}, {tr.batch_size}")

        # Data: the loader returns raw splits; "process" says how they become tensors.
        self.data_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
        loader_cfg = {k: v for k, v in self.data_cfg.items() if k != "process"}
        self.process = self.data_cfg["process"]
        self.data = instantiate(loader_cfg)
        self.c_in = in_channels(self.process["channels"])
        self.splits = {name: prepare(getattr(self.data, name), self.process["channels"], self.process["clahe"])
                       for name in ("train", "val", "test")}
        log.info("data: %d train / %d val / %d test images, %d classes, full size %s",
                 *(len(v) for v in self.splits.values()), self.data.num_classes, self.data.full_size)

        self.builder = {**OmegaConf.to_container(cfg.model, resolve=True), "in_channels": self.c_in,
                        "num_classes": self.data.num_classes}
        self.model = instantiate(self.builder).to(self.device)
        self.channels_last = tr.channels_last is True or (tr.channels_last == "auto" and self.device.type == "cuda")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.constraint = instantiate(cfg.constraint).attach(self.model, self.c_in)
        self.schedule = instantiate(cfg.schedule)
        self.loss_fn = instantiate(tr.loss, ignore_index=self.data.ignore_index)
        self.logger = RunLogger(run_dir)
        self.amp = bool(tr.amp) and self.device.type == "cuda"
        self.step = 0  # global step across stages, so TensorBoard curves follow one another

    def execute(self) -> dict:
        tr = self.tr
        self.train_stage(tr.steps, "train", "val", self.constraint, tr.lr, self.cfg.seed)
        dense = self.test_stage("dense", "test")
        last = dense
        for r, (target, _) in enumerate(self.schedule.targets(), start=1):
            suffix = "" if self.schedule.rounds == 1 else f"_{r}"
            self.prune(target, f"prune{suffix}")
            last = self.test_stage(f"pruned{suffix}", f"prune{suffix}/test", dense)
            if self.schedule.finetune_steps:
                ft_constraint = Scaled(self.constraint, self.schedule.constraint_scale)
                self.train_stage(self.schedule.finetune_steps, f"finetune{suffix}", f"finetune{suffix}/val",
                                 ft_constraint, tr.lr * self.schedule.finetune_lr_scale, self.cfg.seed + r)
                last = self.test_stage(f"finetuned{suffix}", f"finetune{suffix}/test", dense)
        final = {**last, "time_s": time.time() - self.t_start}
        self.logger.stage("final", final)
        self.save("final", final)
        choices = _choices(self.cfg)
        self.logger.hparams({**choices, "seed": self.cfg.seed, "steps": tr.steps,
                             **flatten(self.constraint.settings(), "constraint"),
                             **flatten(self.schedule.settings(), "schedule"), **_model_hparams(self.cfg)}, final)
        self.logger.close()
        _summary(self.logger.metrics, self.run_dir, choices)
        return self.logger.metrics

    def eval_on(self, split: str, num_examples: int = 0):
        return evaluate(self.model, self.splits[split], self.data.num_classes, self.device, self.data.class_names,
                        self.amp, num_examples, desc=split, ignore_index=self.data.ignore_index)

    def log_units(self) -> dict:
        """Per-layer unit statistics to TensorBoard; returns the switched-off fractions."""
        report, step = self.constraint.unit_report(), self.step
        self.logger.scalars("units", {"off_fraction": report["units_off"]}, step)
        self.logger.scalars("units/off_fraction_layer", report["units_off_layers"], step)
        self.logger.histograms("units/norm", {l.name: l.norms() for l in self.constraint.layers}, step)
        for stat, per_layer in self.constraint.statistics().items():
            self.logger.histograms(f"units/{stat}", per_layer, step)
        return report

    def test_stage(self, name: str, prefix: str, dense: dict | None = None) -> dict:
        """Evaluate on the test split, with cost; record in metrics.json and save the model."""
        metrics, examples = self.eval_on("test", self.tr.eval_examples)
        metrics.update(cost_report(self.model, self.c_in, self.data.full_size, self.tr.latency_reps))
        metrics.update(self.log_units(), constraint=self.constraint.settings(), schedule=self.schedule.settings())
        if dense is not None:
            metrics.update(params_ratio=metrics["params"] / dense["params"], macs_ratio=metrics["macs"] / dense["macs"])
        self.logger.scalars(prefix, metrics, self.step)
        self.logger.examples(prefix, examples, self.step)
        self.logger.stage(name, metrics)
        self.save(name, metrics)
        log.info("%s: test mIoU %.4f | params %s | MACs %.3g | units off %.1f%%", name, metrics["miou"],
                 f"{metrics['params']:,}", metrics["macs"], 100 * metrics["units_off"])
        return metrics

    def train_stage(self, steps: int, tag: str, val_tag: str, constraint, lr: float, seed: int) -> dict:
        tr = self.tr
        settings = LoopSettings(steps=steps, lr=lr, warmup_steps=min(tr.warmup_steps, steps // 2),
                                min_lr_ratio=tr.min_lr_ratio, val_every=tr.val_every, log_every=tr.log_every,
                                grad_clip=tr.grad_clip, amp=self.amp, channels_last=self.channels_last,
                                first_step=self.step)
        # The optimizer is built per stage: surgery replaces parameters between stages.
        optimizer = instantiate(tr.optimizer)(self.model.parameters())
        batches = patch_loader(self.splits["train"], self.process, steps, tr.batch_size, seed, tr.num_workers,
                               self.device)

        def validate(model, step):
            self.step = step
            self.log_units()
            return self.eval_on("val")[0]

        best = train_loop(self.model, batches, self.loss_fn, optimizer, constraint, settings, self.device,
                          validate, self.logger, tag=tag, val_tag=val_tag)
        self.step = settings.first_step + steps
        log.info("%s: best val mIoU %.4f at step %d", tag, best["miou"], best["step"])
        return best

    def prune(self, target, tag: str) -> None:
        """Remove channels to meet ``target``; log widths before and after."""
        s, t0 = self.schedule, time.time()
        before = layer_widths(self.model)
        layers = self.constraint.layers
        scores = layer_scores(s.importance, layers, self.constraint.statistics(), s.seed)
        groups = ChannelGroups(self.model, layers, scores, self.c_in, 2 * pad_multiple(self.model), s.eps)
        chosen = plan(self.model, layers, groups, target, self.data.full_size, s.min_channels, s.round_to)
        removed = apply(self.model, layers, chosen, groups.example_shape)
        self.constraint.after_surgery(self.model, removed)
        after = layer_widths(self.model)
        table = "| layer | before | after |\n|---|---|---|\n" + "\n".join(
            f"| {n} | {before[n]} | {after.get(n, 0)} |" for n in before)
        self.logger.writer.add_text(f"{tag}/widths", table, self.step)
        self.logger.scalars(tag, {"surgery_s": time.time() - t0,
                                  "channels_removed": sum(len(c) for c in chosen)}, self.step)
        log.info("%s: removed %d of %d channels (%s importance, %s target) in %.1f s", tag,
                 sum(len(c) for c in chosen), groups.total(), s.importance, target.mode, time.time() - t0)

    def save(self, stage: str, metrics: dict) -> None:
        folder = self.run_dir / "checkpoints" / stage
        save_model(folder, self.model, self.builder, stage=stage, dataset=self.data_cfg,
                   input_size=list(self.data.full_size), in_channels=self.c_in,
                   class_names=list(self.data.class_names), ignore_index=self.data.ignore_index,
                   metrics={k: v for k, v in metrics.items() if k not in ("units_off_layers",)})
        stats = {f"{stat}/{layer}": t.contiguous() for stat, per_layer in self.constraint.state_dict().items()
                 for layer, t in per_layer.items()}
        if stats:  # a_u, r_u of the saved units, so later stages or tools can read them
            save_file(stats, str(folder / "constraint.safetensors"))


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
