"""The stages of a jsp run: train -> evaluate -> (prune -> evaluate -> fine-tune -> evaluate)*.

This module (with jsp/stages.py, the work of its stages) and jsp/saved_runs.py (jsp-eval,
jsp-export) are the only ones that read a Hydra config; everything they call takes plain values.
Every evaluated stage is saved (checkpoints/STAGE/ and metrics.json), and training stages
write checkpoints/last.pt every ``trainer.checkpoint_every`` steps, so ``resume=true`` skips
finished stages and continues an interrupted one where it stopped.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from jsp import stages
from jsp.constraints.base import Scaled
from jsp.constraints.budget import BudgetController
from jsp.data import prepare
from jsp.data.transforms import in_channels
from jsp.engine import preemption
from jsp.engine.checkpoint import load_state, save_state
from jsp.engine.evaluate import evaluate, write_per_image
from jsp.engine.logger import RunLogger, log_units, summary_table
from jsp.engine.resume import clear_preempted, load_constraint_stats, mark_preempted, restore_weights, resuming, \
    save_constraint_stats
from jsp.engine.runtime import patch_loader, resolve_device, seed_everything
from jsp.engine.train import LoopSettings, lr_at, train_loop
from jsp.data.io import set_max_pixels
from jsp.errors import ConfigError
from jsp.files import RunLock, probe_writable
from jsp.metrics import cost_report, count_macs, count_params
from jsp.models.saved import layer_spec, load_model, save_model
from jsp.provenance import hydra_overrides, provenance
from jsp.pruning import Target
from jsp.registry import describe
from jsp.run_config import build, check_control, effective_budget, check_trainer, choices, config_hparams

log = logging.getLogger("jsp")


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run every stage; returns metrics.json's content. ``run_dir`` receives all outputs.

    Fails before any work when ``run_dir`` cannot be written or another job holds it; on a stop
    signal the state is saved, the run dir is marked preempted and ``Preempted`` is raised.
    """
    run_dir = Path(run_dir)
    probe_writable(run_dir / "checkpoints")
    with RunLock(run_dir):
        preemption.install()
        try:
            return Run(cfg, run_dir).execute()
        except preemption.Preempted:
            mark_preempted(run_dir, preemption.requested())
            raise


class Run:
    """One jsp-train job: builds everything from the config, then runs the stages."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir, self.t_start = cfg, run_dir, time.time()
        seed_everything(cfg.seed)
        set_max_pixels(cfg.get("max_image_pixels"))
        tr = self.tr = cfg.trainer
        # Everything a config can get wrong is checked before data is read or a step is run.
        self.device = resolve_device(tr.device)
        check_trainer(tr)
        self.constraint = build(cfg.constraint)
        self.schedule = build(cfg.schedule)
        self.control = cfg.get("control") or "none"
        self.budget = self.constraint.budget = effective_budget(self.constraint.budget, self.schedule, self.control)
        check_control(self.control, self.budget, self.schedule)
        self.constraint.min_units = self.schedule.min_channels
        self.provenance = provenance(hydra_overrides())

        # Data: the loader returns raw splits; "process" says how they become tensors.
        self.data_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
        self.process = self.data_cfg["process"]
        self.c_in = in_channels(self.process["channels"])
        self.data_record = describe("dataset", self.data_cfg)  # what model.json records: a registry key
        self.data = build({k: v for k, v in self.data_cfg.items() if k != "process"})
        smallest = min(min(s.label.shape) for s in self.data.train)
        if self.process["patch_size"] > smallest:
            raise ConfigError(f"dataset.process.patch_size={self.process['patch_size']} is larger than the smallest "
                              f"training image side ({smallest} px)")
        self.splits = {name: prepare(getattr(self.data, name), self.process["channels"], self.process["clahe"])
                       for name in ("train", "val", "test")}
        log.info("data: %d train / %d val / %d test images, %d classes, full size %s",
                 *(len(v) for v in self.splits.values()), self.data.num_classes, self.data.full_size)

        self.builder = {**OmegaConf.to_container(cfg.model, resolve=True), "in_channels": self.c_in,
                        "num_classes": self.data.num_classes}
        self.architecture = describe("model", self.builder)
        self.channels_last = tr.channels_last is True or (tr.channels_last == "auto" and self.device.type == "cuda")
        self.set_model(build(self.builder))
        # Budgets and ratios are relative to the dense network this config builds.
        self.dense_cost = {"params": count_params(self.model),
                           "macs": count_macs(self.model, self.c_in, self.data.full_size)}
        self.loss_fn = build(tr.loss, ignore_index=self.data.ignore_index)
        self.amp = bool(tr.amp) and self.device.type == "cuda"
        self.ckpt = run_dir / "checkpoints" / "last.pt"
        self.resume_state = None
        done = {}
        self.resume = resuming(cfg.resume, run_dir)
        if self.resume and (run_dir / "metrics.json").is_file():
            done = {k: v for k, v in json.loads((run_dir / "metrics.json").read_text()).items() if k != "final"}
        if self.resume and self.ckpt.is_file():
            self.resume_state = load_state(self.ckpt)
        self.step = 0  # global step across stages, so TensorBoard curves follow one another
        purge = self.resume_state["global_step"] if self.resume_state else max(
            [m.get("global_step", 0) for m in done.values()], default=0)
        self.logger = RunLogger(run_dir, metrics=done, purge_step=purge if self.resume else None)

    def set_model(self, model) -> None:
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.constraint.attach(self.model, self.c_in)

    def plan(self) -> list[tuple[str, callable]]:
        """The evaluated stages in order, each with the work that produces it.

        control=uniform: one stage, the dense architecture shrunk by one width factor to the
        budget and trained from scratch for train + fine-tune steps. control=scratch: the
        method's dense and pruned stages, then the pruned architecture re-initialised and
        trained from scratch for train + fine-tune steps instead of fine-tuning."""
        tr, s, seed = self.tr, self.schedule, self.cfg.seed
        total = tr.steps + s.finetune_steps  # equal training: what a pruned run trains in all
        if self.control == "uniform":
            def work():
                stages.uniform(self, s.targets()[0][0])
                return self.train_stage(total, "train", "val", self.constraint, tr.lr, seed)
            return [("uniform", work)]
        plan = [("dense", lambda: self.train_stage(tr.steps, "train", "val", self.constraint, tr.lr, seed))]
        # With constraint.budget the budget is the target; the units the controller zeroed rank last.
        targets = [(Target(s.budget_on, self.budget), self.budget)] if self.budget else s.targets()
        for r, (target, _) in enumerate(targets, start=1):
            suffix = "" if s.rounds == 1 else f"_{r}"
            plan.append((f"pruned{suffix}", lambda t=target, x=suffix: stages.prune(self, t, f"prune{x}")))
            if self.control == "scratch":
                def scratch():
                    stages.reinitialise(self.model)
                    self.set_model(self.model)
                    return self.train_stage(total, "scratch", "scratch/val", Scaled(self.constraint, 0.0), tr.lr,
                                            seed + 1)
                plan.append(("scratch", scratch))
            elif s.finetune_steps:
                plan.append((f"finetuned{suffix}", lambda x=suffix, r=r: self.train_stage(
                    s.finetune_steps, f"finetune{x}", f"finetune{x}/val", Scaled(self.constraint, s.constraint_scale),
                    tr.lr * s.finetune_lr_scale, seed + r, validate_start=True)))
        return plan

    def execute(self) -> dict:
        plan = self.plan()
        trained_here = False
        if self.cfg.get("dense_cache") and "dense" not in self.logger.metrics and self.resume_state is None:
            trained_here = stages.dense_from_cache(self, plan[0][1])
        done = [name for name, _ in plan if name in self.logger.metrics]
        if done and not trained_here:  # resume (or go on from a cached dense stage) from the last saved model
            self.restore_stage(done[-1])
            if self.resume:
                log.info("resume: stages %s are done; continuing after %s", ", ".join(done), done[-1])
        for name, work in plan:
            if name in done:
                continue
            if preemption.requested():  # between stages: everything so far is saved
                raise preemption.Preempted(f"stopped before stage {name} on {preemption.requested()}")
            val = work()  # a training stage returns its best validation metrics: the weights it hands on
            prefix = {"dense": "test"}.get(name, name.replace("pruned", "prune").replace("finetuned", "finetune") + "/test")
            self.test_stage(name, prefix, val)
        final = {**self.logger.metrics[plan[-1][0]], "time_s": time.time() - self.t_start,
                 "provenance": self.provenance}
        self.logger.stage("final", final)
        save_model(self.run_dir / "checkpoints" / "final", self.model, self.architecture, **self.model_info("final", final))
        last = self.run_dir / "checkpoints" / plan[-1][0] / "per_image.csv"
        if last.is_file():  # absent only for a stage copied from a dense cache of an older version
            shutil.copyfile(last, self.run_dir / "checkpoints" / "final" / "per_image.csv")
        picked = choices(self.cfg)
        self.logger.hparams({**picked, **config_hparams(self.cfg)}, final)
        self.logger.config_text(OmegaConf.to_yaml(self.cfg), self.step)
        self.logger.close()
        clear_preempted(self.run_dir)
        log.info("\n" + summary_table(self.logger.metrics, self.run_dir, picked))
        return self.logger.metrics

    def restore_stage(self, name: str) -> None:
        folder = self.run_dir / "checkpoints" / name
        model, _ = load_model(folder, self.device)
        self.set_model(model.train())
        self.constraint.load_state_dict(load_constraint_stats(folder))
        self.step = self.logger.metrics[name].get("global_step", 0)

    def eval_on(self, split: str, num_examples: int = 0):
        return evaluate(self.model, self.splits[split], self.data.num_classes, self.device, self.data.class_names,
                        self.amp, num_examples, desc=split, ignore_index=self.data.ignore_index)

    def test_stage(self, name: str, prefix: str, val: dict | None = None) -> dict:
        """Evaluate on the test split, with cost; record in metrics.json and save the model."""
        metrics, examples, per_image = self.eval_on("test", self.tr.eval_examples)
        val = val or self.eval_on("val").metrics  # what sweeps select on: the test split only reports
        metrics.update(val_miou=val["miou"], **({"val_f1": val["f1"]} if "f1" in val else {}))
        metrics.update(cost_report(self.model, self.c_in, self.data.full_size, self.tr.latency_s,
                                   self.device))
        metrics.update(log_units(self.logger, self.constraint, self.step), constraint=self.constraint.settings(),
                       schedule=self.schedule.settings(), global_step=self.step)
        metrics.update(params_ratio=metrics["params"] / self.dense_cost["params"],
                       macs_ratio=metrics["macs"] / self.dense_cost["macs"])
        # Settings go to metrics.json and the HParams tab, not to the scalars.
        self.logger.scalars(prefix, {k: v for k, v in metrics.items() if k not in ("constraint", "schedule")}, self.step)
        self.logger.examples(prefix, examples, self.step)
        folder = self.run_dir / "checkpoints" / name
        save_model(folder, self.model, self.architecture, **self.model_info(name, metrics))
        save_constraint_stats(folder, self.constraint.state_dict())
        write_per_image(folder / "per_image.csv", per_image)
        self.logger.stage(name, metrics)  # last: a stage counts as done once its model is saved
        log.info("%s: test mIoU %.4f | params %s | MACs %.3g | units off %.1f%%", name, metrics["miou"],
                 f"{metrics['params']:,}", metrics["macs"], 100 * metrics["units_off"])
        return metrics

    def model_info(self, stage: str, metrics: dict) -> dict:
        return dict(stage=stage, dataset=self.data_record, process=self.process, input_size=list(self.data.full_size),
                    in_channels=self.c_in,
                    class_names=list(self.data.class_names), ignore_index=self.data.ignore_index,
                    metrics={k: v for k, v in metrics.items() if k not in ("units_off_layers", "provenance")},
                    provenance=self.provenance)

    def train_stage(self, steps: int, tag: str, val_tag: str, constraint, lr: float, seed: int,
                    validate_start: bool = False) -> dict:
        tr = self.tr
        resume = self.take_resume_state(tag)
        settings = LoopSettings(steps=steps, lr=lr, warmup_steps=min(tr.warmup_steps, steps // 2),
                                min_lr_ratio=tr.min_lr_ratio, val_every=tr.val_every, log_every=tr.log_every,
                                progress_every=tr.progress_every,
                                grad_clip=tr.grad_clip, amp=self.amp, channels_last=self.channels_last,
                                first_step=self.step - (resume["step"] if resume else 0), validate_start=validate_start)
        # The optimizer is built per stage: surgery replaces parameters between stages.
        optimizer = build(tr.optimizer)(self.model.parameters())
        if self.budget and tag == "train":
            # The forecast looks ahead by the learning rate the rest of the stage will apply.
            rest = [0.0] * (steps + 1)
            for t in range(steps - 1, -1, -1):
                rest[t] = rest[t + 1] + lr_at(t, settings)
            forecast = lambda step: stages.kept_cost(self, self.constraint.forecast_off(rest[step + 1]))  # noqa: E731
            self.constraint.controller = BudgetController(self.budget, forecast, steps, self.constraint.budget_every,
                                                          ramp=self.constraint.budget_ramp,
                                                          actual=lambda: stages.kept_cost(self))
            if resume:
                self.constraint.load_state_dict(resume["constraint"])
        if resume:
            optimizer.load_state_dict(resume["optimizer"])
        batches = patch_loader(self.splits["train"], self.process, steps, tr.batch_size, seed, tr.num_workers,
                               self.device, start=resume["step"] if resume else 0)

        def validate(model, step):
            self.step = step
            log_units(self.logger, self.constraint, self.step)
            metrics = self.eval_on("val").metrics
            if self.constraint.controller is not None and tag == "train":
                # Only weights whose zeroed units meet the budget may be handed on.
                metrics.update(kept_cost=stages.kept_cost(self), eligible=self.constraint.controller.exact)
            return metrics

        def checkpoint(done: int, best: dict, best_state) -> None:
            save_state(self.ckpt, stage=tag, step=done, global_step=settings.first_step + done,
                       model=self.model.state_dict(), layers=layer_spec(self.model), optimizer=optimizer.state_dict(),
                       best=best, best_state=best_state, constraint=self.constraint.state_dict(),
                       rng=torch.get_rng_state())

        best = train_loop(self.model, batches, self.loss_fn, optimizer, constraint, settings, self.device,
                          validate, self.logger, tag=tag, val_tag=val_tag, resume=resume, checkpoint=checkpoint,
                          checkpoint_every=tr.checkpoint_every)
        self.step = settings.first_step + steps
        checkpoint(steps, best, None)  # stage end: the model now holds the best weights
        log.info("%s: best val mIoU %.4f at step %d", tag, best["miou"], best["step"])
        if validate_start and best["step"] == 0:
            log.warning("%s: no fine-tuned checkpoint beat the pruned network on validation; the pruned weights "
                        "are kept (a lower schedule.finetune_lr_scale may help)", tag)
        return best

    def take_resume_state(self, tag: str) -> dict | None:
        """The interrupted training state of stage ``tag``, loaded into model and constraint."""
        state, self.resume_state = self.resume_state, None
        if state is None or state["stage"] != tag:
            return None
        restore_weights(self.model, state["layers"], state["model"])
        self.constraint.attach(self.model, self.c_in)
        self.constraint.load_state_dict(state["constraint"])
        torch.set_rng_state(state["rng"])
        self.step = state["global_step"]
        log.info("resume: %s continues at step %d", tag, state["step"])
        return state
