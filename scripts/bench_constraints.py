"""Cost of the JSP constraint: training-step time with constraint=none vs constraint=jsp.

Both models start from the same weights and see the same batches of the default synthetic
config; blocks of steps alternate between them (interleaved, so machine noise hits both
alike), and the median block time per step is compared.

    python scripts/bench_constraints.py [--width 16] [--rounds 12] [--block 10] [--cost-aware params] [--out FILE]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from jsp.constraints import Constraint, JSPConstraint
from jsp.data import PatchDataset, make_synthetic, prepare
from jsp.engine.losses import CEDiceLoss
from jsp.engine.train import LoopSettings, Objective, train_step
from jsp.models import UNet

from benchlib import write_report  # scripts/benchlib.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--block", type=int, default=10, help="steps per timed block")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cost-aware", default="params", help="constraint.cost_aware (conf/constraint/jsp.yaml's default)")
    ap.add_argument("--out", default="outputs/bench_constraints.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    data = make_synthetic()
    patches = PatchDataset(prepare(data.train), args.patch, args.batch * args.block, seed=0)
    loader = torch.utils.data.DataLoader(patches, batch_size=args.batch)
    batches = [b for b in loader]  # preloaded: time the step, not the data

    base = UNet(3, 2, args.width, args.depth).to(device)
    runs = {}
    cost_aware = None if args.cost_aware in ("null", "none") else args.cost_aware
    for name, constraint in (("none", Constraint()), ("jsp", JSPConstraint(cost_aware=cost_aware))):
        model = copy.deepcopy(base)
        runs[name] = dict(model=model, constraint=constraint.attach(model),
                          opt=torch.optim.AdamW(model.parameters(), 1e-3),
                          scaler=torch.amp.GradScaler(device.type, enabled=False), step=0, times=[])
    loss_fn = CEDiceLoss()
    settings = LoopSettings(steps=0, lr=1e-3, device=device)

    def block(r, timed: bool):
        t0 = time.perf_counter()
        for x, y in batches:
            train_step(r["model"], x, y, Objective(loss_fn, r["opt"], r["constraint"]), settings, r["scaler"], r["step"],
                       r["opt"].param_groups[0]["lr"])
            r["step"] += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        if timed:
            r["times"].append((time.perf_counter() - t0) / len(batches))

    for r in runs.values():  # warm-up
        block(r, timed=False)
    for i in range(args.rounds):
        order = ("none", "jsp") if i % 2 == 0 else ("jsp", "none")
        for name in order:
            block(runs[name], timed=True)

    result = {name: statistics.median(r["times"]) * 1000 for name, r in runs.items()}
    report = {
        "step_ms_none": result["none"],
        "step_ms_jsp": result["jsp"],
        "ratio": result["jsp"] / result["none"],
        "overhead_pct": 100 * (result["jsp"] / result["none"] - 1),
        "config": vars(args) | {"redund_every": runs["jsp"]["constraint"].redund_every},
    }
    print(f"step time none {report['step_ms_none']:.1f} ms | jsp {report['step_ms_jsp']:.1f} ms | "
          f"ratio {report['ratio']:.3f} ({report['overhead_pct']:+.1f}%)")
    write_report(report, args.out)


if __name__ == "__main__":
    main()
