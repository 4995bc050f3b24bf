"""jsp-bench: time saved models side by side in one process, so their ratios are comparable.

    jsp-bench RUN_OR_MODEL [RUN_OR_MODEL ...] [--runtime torch onnxruntime] [--batch 1 8]
              [--device cpu|cuda] [--threads N] [--rounds 7] [--seconds 0.5] [--out bench.json]

One latency figure from one run and another from another run (different sessions, threads,
load) are not comparable on a noisy machine. jsp-bench loads every model, then times them in
rounds: in each round every model (in a rotated order) runs for about ``--seconds``, so drift
and noise fall on all of them alike. Per model, runtime and batch it reports the median time
per call over all rounds and its IQR, the speed-up against the first model (the median over
rounds of the ratio within a round, which the machine's drift does not move) and that speed-up
divided by the MAC ratio (1.0: the MACs saved all show as time), and the peak inference
memory. Runtimes: ``torch`` (eager; fp32, and fp16 autocast on CUDA) and ``onnxruntime``
(the export extra; the model exported to ONNX in a temporary folder). The device, threads and
runtime versions are recorded with the figures.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from jsp.errors import JSPError
from jsp.metrics import count_macs, count_params
from jsp.metrics.memory import peak_memory
from jsp.models import padded_size
from jsp.models.saved import load_model
from jsp.saved_runs import export_onnx, model_folder


def runner(model, runtime: str, x: torch.Tensor, fp16: bool, tmp: Path, name: str):
    """A no-argument callable that runs ``model`` once on ``x`` (synchronised on CUDA)."""
    if runtime == "onnxruntime":
        import onnxruntime

        path = export_onnx(model.cpu(), x.cpu()[:1], tmp / f"{name}.onnx")
        model.to(x.device)
        if path is None:
            raise JSPError("--runtime onnxruntime needs the export extra: pip install \"jsp[export]\"")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        providers = ["CUDAExecutionProvider"] if x.is_cuda else ["CPUExecutionProvider"]
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        feed = {"image": x.cpu().numpy()}
        return lambda: session.run(None, feed)

    def call():
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.float16, enabled=fp16):
            model(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
    return call


def measure(calls: dict[str, callable], rounds: int, seconds: float) -> dict[str, list[float]]:
    """{key: seconds per call, one figure per block}: ``rounds`` rounds, every callable in each
    (rotated order), each block about ``seconds`` long (the call count fixed per callable)."""
    counts = {}
    for key, call in calls.items():  # warm-up, and how many calls fill a block
        call()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 4:
            call()
            n += 1
        counts[key] = max(1, round(n / max(time.perf_counter() - t0, 1e-9) * seconds))
    times = {key: [] for key in calls}
    keys = list(calls)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            n, call = counts[key], calls[key]
            t0 = time.perf_counter()
            for _ in range(n):
                call()
            times[key].append((time.perf_counter() - t0) / n)
    return times


def bench(paths: list[str], runtimes: list[str], batches: list[int], device: str, rounds: int,
          seconds: float) -> dict:
    """Load the models, time them side by side; returns the report (rows and environment)."""
    dev = torch.device(device)
    models = []
    for p in paths:
        model, meta = load_model(model_folder(p), dev)
        size = padded_size(model, meta.get("input_size") or [256, 256])
        models.append((str(p), model.eval(), meta.get("in_channels", 3), size))
    calls, info = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model, c_in, size) in enumerate(models):
            info[name] = {"params": count_params(model), "macs": count_macs(model, c_in, tuple(size)),
                          "input": [c_in, *size], **peak_memory(model, c_in, tuple(size), dev)}
            for runtime in runtimes:
                for fp16 in ([False, True] if dev.type == "cuda" and runtime == "torch" else [False]):
                    for b in batches:
                        x = torch.zeros(b, c_in, *size, device=dev)
                        key = (name, runtime + ("-fp16" if fp16 else ""), b)
                        calls[key] = runner(model, runtime, x, fp16, Path(tmp), f"m{i}")
        times = measure(calls, rounds, seconds)
    return {"rows": rows_of(times, info, paths), "environment": environment(dev, runtimes), "rounds": rounds}


def rows_of(times: dict, info: dict, paths: list[str]) -> list[dict]:
    rows = []
    for (name, runtime, b), t in times.items():
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
        rows.append({"model": name, "runtime": runtime, "batch": b, "ms": 1000 * statistics.median(t),
                     "iqr_ms": 1000 * (q[2] - q[0]), **info[name]})
    for r in rows:
        ref = next(x for x in rows if x["model"] == str(paths[0]) and x["runtime"] == r["runtime"]
                   and x["batch"] == r["batch"])
        # paired: the reference's time over this model's in the same round, median over rounds
        # (the machine's speed drifts by tens of percent within a minute; a round is seconds)
        ref_t, t = times[(ref["model"], r["runtime"], r["batch"])], times[(r["model"], r["runtime"], r["batch"])]
        r["speedup"] = statistics.median(a / b for a, b in zip(ref_t, t))
        r["mac_ratio"] = ref["macs"] / r["macs"]
        r["speedup_of_mac_ratio"] = r["speedup"] / r["mac_ratio"]
    return rows


def environment(dev: torch.device, runtimes: list[str]) -> dict:
    env = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or
           platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M")}
    if "onnxruntime" in runtimes:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    return env


def table(report: dict) -> str:
    lines = [f"{'model':<48} {'runtime':<12} {'batch':>5} {'ms':>9} {'IQR':>7} {'speed-up':>9} {'MAC ratio':>10} "
             f"{'of MACs':>8} {'peak MB':>8}"]
    for r in report["rows"]:
        lines.append(f"{r['model'][-48:]:<48} {r['runtime']:<12} {r['batch']:>5} {r['ms']:>9.2f} {r['iqr_ms']:>7.2f} "
                     f"{r['speedup']:>8.2f}x {r['mac_ratio']:>9.2f}x {r['speedup_of_mac_ratio']:>8.2f} "
                     f"{r['peak_mb']:>8.1f}")
    e = report["environment"]
    lines.append(f"{e['device']}, {e['threads']} threads, torch {e['torch']}"
                 + (f", onnxruntime {e['onnxruntime']}" if "onnxruntime" in e else "")
                 + f"; medians over {report['rounds']} interleaved rounds; speed-up and MAC ratio against the first model")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="jsp-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    from jsp.provenance import version_line

    ap.add_argument("--version", action="version", version=version_line("jsp-bench"))
    ap.add_argument("models", nargs="+", help="run dirs (their final model) or saved model folders; the first is "
                                              "the reference")
    ap.add_argument("--runtime", nargs="+", default=["torch"], choices=["torch", "onnxruntime"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.5, help="length of one model's block in a round")
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        report = bench(a.models, a.runtime, a.batch, a.device, a.rounds, a.seconds)
    except JSPError as e:
        print(f"jsp-bench: {e}", file=sys.stderr)
        return 2
    print(table(report))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
