"""Does the training loop wait for data? Images/s of the patch loader alone vs of the
training step alone, on the same config.

    python scripts/bench_data.py --root ../shared/data/DRIVE [--device cuda] [--workers 0 2 4]
        [--width 16] [--patch 64] [--batch 8] [--out FILE]

Without --root it uses the synthetic data. The loader is timed for each worker count; the step
is timed on random tensors already on the device, so each number is an upper bound for its side.
"""
from __future__ import annotations

import argparse
import time

import torch

from jsp.constraints import JSPConstraint
from jsp.data import load_drive, make_synthetic, prepare
from jsp.engine.losses import CEDiceLoss
from jsp.engine.runtime import patch_loader
from jsp.engine.train import LoopSettings, Objective, train_step
from jsp.models import UNet

from benchlib import write_report  # scripts/benchlib.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="outputs/bench_data.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    data = load_drive(args.root) if args.root else make_synthetic()
    images = prepare(data.train, "rgb", True)
    process = {"patch_size": args.patch, "augment": True}
    report = {"config": vars(args), "loader_img_s": {}}
    for workers in args.workers:
        loader = patch_loader(images, process, args.steps, args.batch, 0, workers, device)
        t0 = time.perf_counter()
        n = sum(x.to(device, non_blocking=True).shape[0] for x, _ in loader)
        if device.type == "cuda":
            torch.cuda.synchronize()
        report["loader_img_s"][workers] = n / (time.perf_counter() - t0)
    model = UNet(3, 2, args.width, 4).to(device)
    constraint = JSPConstraint().attach(model, 3)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    objective, settings = Objective(CEDiceLoss(), opt, constraint), LoopSettings(steps=0, lr=1e-3, device=device)
    x = torch.randn(args.batch, 3, args.patch, args.patch, device=device)
    y = torch.randint(0, 2, (args.batch, args.patch, args.patch), device=device)
    for step in range(3):  # warm-up
        train_step(model, x, y, objective, settings, scaler, step, 1e-3)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for step in range(args.steps):
        train_step(model, x, y, objective, settings, scaler, step, 1e-3)
    if device.type == "cuda":
        torch.cuda.synchronize()
    report["step_img_s"] = args.steps * args.batch / (time.perf_counter() - t0)
    best = max(report["loader_img_s"].values())
    report["loader_over_step"] = best / report["step_img_s"]
    for w, v in report["loader_img_s"].items():
        print(f"loader, {w} workers: {v:8.0f} images/s")
    print(f"training step:      {report['step_img_s']:8.0f} images/s  (loader/step = {report['loader_over_step']:.1f}: "
          f"{'data is not' if report['loader_over_step'] > 1.5 else 'data may be'} the bottleneck)")
    write_report(report, args.out)


if __name__ == "__main__":
    main()
