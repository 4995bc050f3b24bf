"""scripts/bench_compression.sh: one command per tier; every compared run starts from its
seed's dense network and trains as long in all; a second call skips what is finished."""
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, write_drive

TINY = ("trainer.steps=4 schedule.finetune_steps=2 trainer.val_every=2 trainer.log_every=2 trainer.latency_s=0 "
        "trainer.warmup_steps=1 dataset.process.patch_size=32 model.depth=2 dataset.val_count=1 "
        "schedule.min_channels=1")  # a 1 % budget is below what 2 channels a layer allow at depth 2


def _bench(root: Path, out: Path, parts: str = "p01", extra: str = TINY) -> subprocess.CompletedProcess:
    env = {**os.environ, "EXTRA": extra, "START_STEPS": "3", "HYDRA_FULL_ERROR": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", str(REPO / "scripts" / "bench_compression.sh"), "cpu", str(root), str(out), "0",
                           parts], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_the_cpu_tier_script_runs_a_part_from_one_start_and_resumes(tmp_path):
    root, out = write_drive(tmp_path / "DRIVE", n_train=3, n_test=2, size=(48, 48)), tmp_path / "bench"
    busy = out / "unet" / "taylor_params0.01" / "s0.lock"  # as if another call were running that run
    busy.parent.mkdir(parents=True)
    with open(busy, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = _bench(root, out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"busy in another call: {busy.with_suffix('')}" in done.stdout
    assert not (busy.parent / "s0").exists()
    done = _bench(root, out)  # the lock released: only that run is left to do
    assert done.stdout.count("[bench ") == 1 and "taylor_params0.01/s0" in done.stdout, done.stdout
    assert "FAILED" not in done.stdout, done.stdout
    start = json.loads((out / "start" / "unet" / "s0" / "metrics.json").read_text())
    assert start["final"]["global_step"] == 3
    runs = {p.parent.parent.name: json.loads(p.read_text()) for p in (out / "unet").glob("*/s0/metrics.json")}
    assert sorted(runs) == ["dense", "group_lasso_params0.01", "jsp_params0.01", "l1_norm_params0.01",
                            "slimming_params0.01", "taylor_params0.01"]
    starts = {m["final"]["provenance"]["init_from"]["sha256"] for m in runs.values()}
    assert len(starts) == 1  # one start for every method of the seed
    # Equal training after the start: the dense reference trains steps + fine-tune in one stage.
    assert runs["dense"]["final"]["global_step"] == 4 + 2
    assert all(m["finetuned"]["global_step"] == 4 + 2 for k, m in runs.items() if k != "dense")
    assert all(m["pruned"]["params"] < 0.03 * m["dense"]["params"] for k, m in runs.items() if k != "dense")
    summary = (out / "summary.md").read_text()
    for method in ("| dense |", "| jsp |", "| slimming |", "| group_lasso |", "| l1_norm |", "| taylor |"):
        assert method in summary, method
    again = _bench(root, out)  # everything finished: nothing runs again, the report is rewritten
    assert again.returncode == 0 and "[bench" not in again.stdout, again.stdout


def test_the_controls_train_from_scratch_as_long_as_start_and_run_together(tmp_path):
    root, out = write_drive(tmp_path / "DRIVE", n_train=3, n_test=2, size=(48, 48)), tmp_path / "bench"
    done = _bench(root, out, "ctrl", TINY.replace("model.depth=2", "model.depth=3"))  # 0.25 % is reachable at depth 3
    assert done.returncode == 0 and "FAILED" not in done.stdout, done.stdout + done.stderr
    runs = {p.parent.parent.name: json.loads(p.read_text()) for p in (out / "unet").glob("*/s0/metrics.json")}
    assert sorted(runs) == sorted(f"{c}_params{f}" for c in ("uniform", "scratch") for f in ("0.01", "0.1", "0.0025"))
    total = 3 + 4 + 2  # the start, the constrained phase and the fine-tuning of a compared run
    for name, m in runs.items():
        stage = m["uniform"] if name.startswith("uniform") else m["scratch"]
        trained = stage["global_step"] - (m["pruned"]["global_step"] if "pruned" in m else 0)
        assert trained == total, (name, trained)
    scratch = runs["scratch_params0.1"]
    assert scratch["scratch"]["params"] == scratch["pruned"]["params"] <= 0.1 * scratch["dense"]["params"]
    assert scratch["final"]["provenance"]["init_from"]["sha256"]  # jsp's phase started from the seed's start


def test_the_cpu_tier_gates_mobilenetv3_small_from_its_own_start(tmp_path):
    root, out = write_drive(tmp_path / "DRIVE", n_train=3, n_test=2, size=(48, 48)), tmp_path / "bench"
    tiny = TINY.replace(" model.depth=2", "")  # a UNet key; the run is MobileNetV3-Small
    done = _bench(root, out, "mnv3", extra=tiny)
    assert done.returncode == 0 and "FAILED" not in done.stdout, done.stdout + done.stderr
    start = json.loads((out / "start" / "mnv3" / "s0" / "metrics.json").read_text())
    dense = json.loads((out / "mnv3" / "dense" / "s0" / "metrics.json").read_text())
    assert start["final"]["global_step"] == 3 and dense["final"]["global_step"] == 4 + 2
    assert dense["final"]["provenance"]["init_from"]["sha256"]
    config = (out / "mnv3" / "dense" / "s0" / ".hydra" / "config.yaml").read_text()
    assert "variant: small" in config  # Large is the GPU tier's: 2.5 times dearer per step on a CPU
    assert not list((out / "mnv3").glob("*_params*"))  # the methods are part mnv3p


def test_the_recovery_part_distils_jsp_and_its_scratch_control_as_rec_says(tmp_path):
    """Part rec: jsp with the chosen recovery (REC), and jsp's architecture from scratch with
    REC's distillation only; each in its own run dir, from the seed's one start."""
    root, out = write_drive(tmp_path / "DRIVE", n_train=3, n_test=2, size=(48, 48)), tmp_path / "bench"
    env = {**os.environ, "EXTRA": TINY, "START_STEPS": "3", "HYDRA_FULL_ERROR": "0", "BUDGETS": "0.01",
           "REC": "schedule.distill=0.5 schedule.distill_temperature=4 schedule.finetune_lr=rewind",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "bench_compression.sh"), "cpu", str(root), str(out), "0",
                           "rec"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "FAILED" not in done.stdout, done.stdout + done.stderr
    runs = {p.parent.parent.name: json.loads(p.read_text())["final"] for p in (out / "unet").glob("*/s0/metrics.json")}
    assert sorted(runs) == ["jsp_params0.01_rec", "scratch_params0.01_kd"]
    jsp, scratch = runs["jsp_params0.01_rec"]["schedule"], runs["scratch_params0.01_kd"]["schedule"]
    assert (jsp["distill"], jsp["distill_temperature"], jsp["finetune_lr"]) == (0.5, 4.0, "rewind")
    assert (scratch["distill"], scratch["distill_temperature"], scratch["finetune_lr"]) == (0.5, 4.0, "cosine")
    assert runs["scratch_params0.01_kd"]["train_steps"] == 3 + 4 + 2   # equal steps: start + run, from scratch
    assert "| jsp+kd |" in (out / "summary.md").read_text()
