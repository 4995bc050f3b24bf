"""Training throughput of one run on 1 process x N threads against N processes x 1 thread
(torchrun, gloo on CPU; NCCL on a GPU machine with --gpu), a benchmark line, not a test.

    python scripts/bench_distributed.py DRIVE_ROOT [--steps 100] [--procs 2] [--out FILE]
    python scripts/bench_distributed.py synthetic ...            # the embedded dataset

Each configuration trains the dense UNet of the CPU tier (width 8, 128 px patches, global batch
8) for --steps steps (method=dense, no validation until the end) and reports the training
loop's steps/s from its last progress line (rank 0's: the ranks step together). The global
batch is the same in both, so steps/s compare directly. The two configurations alternate
--repeats times (this machine is noisy); the table gives each one's median and range.
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import write_report  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(procs: int, threads: int, steps: int, data: list[str], device: str) -> dict:
    """steps/s of one configuration, from the run's last progress line."""
    run_dir = Path(tempfile.mkdtemp(prefix="jsp_bench_dist_"))
    args = [*data, "model=unet", "model.width=8", "method=dense", f"trainer.steps={steps}",
            "trainer.batch_size=8", f"trainer.val_every={steps}", "trainer.progress_every=10", "trainer.latency_s=0",
            f"trainer.device={device}", f"hydra.run.dir={run_dir}"]
    train = [sys.executable, "-c", "from jsp.cli import train_main; train_main()"]
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    command = train if procs == 1 else [torchrun, f"--nproc_per_node={procs}", f"--master_port={free_port()}",
                                        "--no-python", *train]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([*command, *args], env=env, capture_output=True, text=True)
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").is_file() else out.stdout + out.stderr
    rates = re.findall(rf"train step {steps}/{steps} .*?\| ([0-9.]+) steps/s", log)
    shutil.rmtree(run_dir, ignore_errors=True)
    if out.returncode != 0 or not rates:
        raise SystemExit(f"{procs} x {threads}: failed (exit {out.returncode})\n{out.stderr[-2000:]}")
    return {"processes": procs, "threads_each": threads, "steps_per_s": float(rates[-1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="the DRIVE folder, or 'synthetic'")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu", action="store_true", help="one GPU a process (NCCL) instead of CPU threads")
    p.add_argument("--out", default="outputs/bench_distributed.json")
    a = p.parse_args()
    data = ["dataset=synthetic", "dataset.process.patch_size=128"] if a.root == "synthetic" else \
        ["dataset=drive", f"dataset.root={Path(a.root).resolve()}", "dataset.process.patch_size=128"]
    device = "cuda" if a.gpu else "cpu"
    configs = [(1, 1 if a.gpu else a.procs), (a.procs, 1)]
    runs = [[one(p, t, a.steps, data, device)["steps_per_s"] for p, t in configs] for _ in range(a.repeats)]
    rows = [{"processes": p, "threads_each": t, "steps_per_s": sorted(r[i] for r in runs)[len(runs) // 2],
             "range": [min(r[i] for r in runs), max(r[i] for r in runs)]} for i, (p, t) in enumerate(configs)]
    print(f"{'processes':>10} {'threads each':>13} {'steps/s (median)':>17} {'range':>14}")
    for r in rows:
        print(f"{r['processes']:>10} {r['threads_each']:>13} {r['steps_per_s']:>17.2f} "
              f"{r['range'][0]:>6.2f} - {r['range'][1]:.2f}")
    ratio = rows[1]["steps_per_s"] / rows[0]["steps_per_s"]
    print(f"{a.procs} processes x 1 thread: {ratio:.2f}x the steps/s of 1 process x {rows[0]['threads_each']} threads "
          f"(medians of {a.repeats})")
    write_report({"rows": rows, "runs": runs, "ratio": ratio, "steps": a.steps, "dataset": a.root,
                  "device": device}, a.out)


if __name__ == "__main__":
    main()
