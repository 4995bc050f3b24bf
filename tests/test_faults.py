"""Faults that cluster and laptop users meet: a preemption (SIGTERM / Slurm's signals), a full
disk while a checkpoint is written, an unwritable run dir, two jobs on one run dir."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TINY, cli, run_cli
from tests.test_robustness import LONG, assert_clean_failure, comparable, uninterrupted  # noqa: F401


def start_and_signal(run_dir: Path, sig: int, stage: str = "dense") -> subprocess.CompletedProcess:
    """Start the LONG run, send ``sig`` once ``stage`` has a mid-stage checkpoint, wait for the exit."""
    env = dict(os.environ)
    proc = subprocess.Popen([*cli(), *LONG, f"hydra.run.dir={run_dir}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt, deadline = run_dir / "checkpoints" / "last.pt", time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            state = torch.load(ckpt, weights_only=True)
            if state["stage"] == stage and 0 < state["step"] < 60:
                break
        except Exception:  # not written yet (or being replaced)
            pass
        time.sleep(0.02)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preempted_run_saves_exits_75_and_the_next_job_continues_it(sig, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    first = start_and_signal(run_dir, sig)
    assert first.returncode == 75, first.stdout[-3000:]
    assert f"on {signal.Signals(sig).name}" in first.stdout and "Traceback" not in first.stdout
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["stage"] == "dense" and 0 < state["step"] < 120
    assert (run_dir / "checkpoints" / "PREEMPTED").is_file()
    # The requeued job is the same command (no resume=true): resume=auto continues it.
    again = run_cli(*LONG, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "was preempted" in again.stdout + again.stderr and "resume: dense continues at step" in again.stdout + again.stderr
    assert comparable(run_dir) == comparable(uninterrupted)
    assert not (run_dir / "checkpoints" / "PREEMPTED").exists()


def _submitit_tasks() -> list[int]:
    """Pids of submitit task processes (python -m submitit.core._submit ...)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"submitit.core._submit" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_submitit_requeues_a_preempted_sweep_job_which_finishes_like_an_uninterrupted_run(uninterrupted, tmp_path):
    """The Slurm path end to end with submitit's local executor: SIGUSR2 (submitit's preemption
    signal) mid-training -> last.pt, submitit requeues the job, the requeued job resumes."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    env = dict(os.environ)
    proc = subprocess.Popen([*cli(), "-m", "hydra/launcher=submitit_local", *LONG,
                             f"hydra.sweep.dir={sweep}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    ckpt, deadline = sweep / "0" / "checkpoints" / "last.pt", time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            state = torch.load(ckpt, weights_only=True)
            if state["stage"] == "dense" and 0 < state["step"] < 60:
                break
        except Exception:
            pass
        time.sleep(0.05)
    tasks = _submitit_tasks()
    assert tasks, "no submitit task found"
    for pid in tasks:
        os.kill(pid, signal.SIGUSR2)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    log = (sweep / "0" / "train.log").read_text()
    assert "stopped at step" in log and "on SIGUSR2" in log and "dense continues at step" in log, log[-3000:]
    assert comparable(sweep / "0") == comparable(uninterrupted)


HAND_ON = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from jsp.engine import preemption

    calls = []
    def requeue(signum, frame):  # stands for submitit's checkpoint_and_try_requeue
        calls.append(signum)
        print("REQUEUE", signal.Signals(signum).name, Path(sys.argv[1]).is_file(), flush=True)
        sys.exit(-1)
    signal.signal(signal.SIGUSR2, requeue)
    from jsp.cli import _guarded

    def job():
        preemption.install()
        os.kill(os.getpid(), signal.SIGTERM)   # the scheduler preempts
        assert preemption.requested() == "SIGTERM"
        Path(sys.argv[1]).write_text("state")   # what the training loop does at the step boundary
        raise preemption.Preempted("stopped")
    _guarded(job)
""")


def test_preemption_is_handed_to_submitit_after_the_state_is_saved(tmp_path):
    out = subprocess.run([sys.executable, "-c", HAND_ON, str(tmp_path / "last.pt")], capture_output=True, text=True,
                         cwd=REPO)
    assert "REQUEUE SIGUSR2 True" in out.stdout, out.stdout + out.stderr
    assert out.returncode == 255  # submitit's own exit after requeueing


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from jsp.engine import checkpoint
    from jsp.files import WriteError

    path = tmp_path / "last.pt"
    checkpoint.save_state(path, stage="train", step=5, model={"w": torch.ones(3)}, layers={})

    def full_disk(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(WriteError, match="the disk is full .the previous version is kept"):
        checkpoint.save_state(path, stage="train", step=10, model={"w": torch.zeros(3)}, layers={})
    monkeypatch.undo()
    state = checkpoint.load_state(path)
    assert state["step"] == 5 and torch.equal(state["model"]["w"], torch.ones(3))
    assert not path.with_name("last.pt.tmp").exists()


def test_full_disk_during_training_is_one_line_exit_2(tmp_path):
    """The same through jsp-train: the first checkpoint write fails, the run stops with exit 2."""
    script = textwrap.dedent(f"""
        import errno, sys, torch
        real = torch.save
        def full(obj, f, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")
        torch.save = full
        sys.argv = ["jsp-train", *{TINY!r}, "trainer.checkpoint_every=2", "hydra.run.dir={tmp_path / 'run'}"]
        from jsp.cli import train_main
        train_main()
    """)
    env = {k: v for k, v in os.environ.items() if k != "JSP_DEBUG"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO)
    assert_clean_failure(out, ["last.pt: the disk is full", "resume=true"])


def test_unwritable_run_dir_fails_before_any_work(tmp_path, monkeypatch):
    from jsp import files

    real = Path.write_bytes

    def read_only(self, data):
        if ".write-test" in self.name:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(files.WriteError, match="filesystem is read-only. Choose a writable hydra.run.dir"):
        files.probe_writable(tmp_path / "run" / "checkpoints")


def test_unwritable_run_dir_from_jsp_train(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    (run_dir / "checkpoints").write_text("a file where the folder should be")
    out = run_cli(*TINY, f"hydra.run.dir={run_dir}")
    assert_clean_failure(out, ["cannot write to the run dir"])
    assert "step" not in out.stdout.split("cannot write")[0].split("\n")[-1]
    assert not (run_dir / "tensorboard").exists()  # nothing was started


@pytest.mark.parametrize("entry, where", [("train", "hydra.run.dir"), ("train", "hydra.sweep.dir"),
                                          ("eval", "hydra.run.dir")])
def test_run_dir_hydra_cannot_create_is_one_line(entry, where, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    args = ["-m", "seed=0,1"] if where == "hydra.sweep.dir" else []
    if entry == "eval":
        args.append("checkpoint=/nowhere")
    overrides = TINY if entry == "train" else []
    out = run_cli(*args, *overrides, f"{where}={tmp_path / 'a_file' / 'run'}", entry=entry)
    assert_clean_failure(out, ["cannot write to the run dir", "Not a directory"])
    assert len((out.stdout + out.stderr).strip().splitlines()) == 1


def test_second_job_on_a_locked_run_dir_exits_2(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run_dir / ".jsp.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                       "since": "now"}))
        out = run_cli(*TINY, f"hydra.run.dir={run_dir}")
        assert_clean_failure(out, [f"is in use by process {holder.pid}"])
        assert not (run_dir / "metrics.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale and the next job takes it over (and releases it).
    out = run_cli(*TINY, f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "taking it over" in out.stdout + out.stderr
    assert (run_dir / "metrics.json").is_file() and not (run_dir / ".jsp.lock").exists()
