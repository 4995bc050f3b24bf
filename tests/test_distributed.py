"""One run across processes (issue 32): 2 processes on CPU with gloo, started as torchrun starts
them (RANK, WORLD_SIZE, MASTER_ADDR/PORT), through train -> prune -> fine-tune -> evaluate; the
ranks end with identical weights; evaluation split over ranks equals one process's; a stop
signal to one rank stops both, and the continued run equals the uninterrupted one; torchrun
and submitit's local executor (tasks_per_node=2) run a job end to end."""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import TINY_SYNTHETIC, cli, run_cli
from tests.test_robustness import comparable

# The default method (jsp with the budget controller), a budget met by the deadline, a cut and
# fine-tuning; 3 test images, so the ranks' shares differ in size (2 and 1).
DDP = [*TINY_SYNTHETIC, "dataset.num_test=3", "model.width=4", "model.depth=2", "trainer.steps=16",
       "trainer.batch_size=4", "trainer.val_every=8", "trainer.log_every=4", "trainer.warmup_steps=2",
       "trainer.checkpoint_every=5", "schedule.finetune_steps=8", "trainer.latency_s=0", "trainer.device=cpu",
       "trainer.eval_examples=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _worker(rank: int, world: int, port: int, run_dir: str, overrides: list, out: str, stop: tuple) -> None:
    """One rank: compose the config, run the pipeline in-process; write the final weights' hash
    and how the run ended to ``out``. stop (rank, training step): that rank receives SIGTERM
    after that step (counted over all stages)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from hydra import compose, initialize_config_dir

    import jsp.engine.train as loop
    from jsp import pipeline
    from jsp.cli import CONF_DIR
    from jsp.engine import preemption

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    finish = pipeline.finish

    def hashed_finish(state, last):
        Path(out, f"hash{rank}").write_text(weights_hash(state.model))
        return finish(state, last)

    pipeline.finish = hashed_finish
    if stop and stop[0] == rank:
        real, calls = loop.train_step, [0]

        def step(*args, **kwargs):
            calls[0] += 1
            result = real(*args, **kwargs)
            if calls[0] == stop[1]:
                preemption._received.append(signal.SIGTERM)
            return result

        loop.train_step = step
    try:
        pipeline.run(cfg, run_dir)
        ended = "finished"
    except preemption.Preempted as e:
        ended = f"preempted: {e}"
    Path(out, f"ended{rank}").write_text(ended)


def spawn(run_dir: Path, out: Path, overrides=(), stop=(), world: int = 2) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(world, free_port(), str(run_dir), [*DDP, *overrides], str(out), tuple(stop)),
             nprocs=world, join=True)
    return [Path(out, f"ended{r}").read_text() for r in range(world)]


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    """The uninterrupted 2-process run."""
    root = tmp_path_factory.mktemp("ddp")
    assert spawn(root / "run", root / "out") == ["finished", "finished"]
    return root


def test_two_processes_run_every_stage_and_end_with_identical_weights(two):
    metrics = json.loads((two / "run" / "metrics.json").read_text())
    assert list(metrics) == ["dense", "pruned", "finetuned", "final"]
    assert metrics["pruned"]["params"] < metrics["dense"]["params"]
    assert metrics["pruned"]["cut_live_units"] == 0
    hashes = [(two / "out" / f"hash{r}").read_text() for r in range(2)]
    assert hashes[0] == hashes[1]
    # rank 0 alone wrote TensorBoard's events (their file names carry the writer's pid)
    assert len({p.name.split(".")[4] for p in (two / "run" / "tensorboard").iterdir()}) == 1
    assert (two / "run" / "checkpoints" / "final" / "model.json").is_file()


def test_the_same_weights_evaluate_the_same_on_one_and_two_processes(two, tmp_path):
    """The 2-process run's final test metrics (each rank scored its share, counts summed) equal
    jsp-eval's of the saved weights in one process, per image too."""
    out = run_cli(f"checkpoint={two / 'run'}", "latency_s=0", "device=cpu", f"hydra.run.dir={tmp_path}",
                  entry="eval")
    assert out.returncode == 0, out.stdout + out.stderr
    one = json.loads((tmp_path / "eval_metrics.json").read_text())["metrics"]
    final = json.loads((two / "run" / "metrics.json").read_text())["final"]
    for key in ("miou", "acc", "f1", "auc", "se", "sp", "precision"):
        assert final[key] == one[key], key
    assert (two / "run" / "checkpoints" / "final" / "per_image.csv").read_text() == \
        (tmp_path / "per_image.csv").read_text()


@pytest.mark.parametrize("stop_at", [7, 19])  # mid-dense (after a periodic checkpoint), mid-fine-tuning
def test_a_stop_signal_to_one_rank_stops_both_and_the_continued_run_is_the_uninterrupted_one(stop_at, two,
                                                                                            tmp_path):
    ended = spawn(tmp_path / "run", tmp_path / "out", stop=(1, stop_at))
    assert all(e.startswith("preempted") for e in ended), ended
    assert "another rank" in ended[0] and "SIGTERM" in ended[1]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2
    assert (tmp_path / "run" / "checkpoints" / "PREEMPTED").is_file()
    assert spawn(tmp_path / "run", tmp_path / "out2") == ["finished", "finished"]
    assert comparable(tmp_path / "run") == comparable(two / "run")
    assert (tmp_path / "out2" / "hash0").read_text() == (two / "out" / "hash0").read_text()


def test_a_global_batch_the_processes_cannot_share_is_refused_in_one_line(tmp_path):
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "JSP_DIST_TIMEOUT_S": "60"}
    procs = [subprocess.Popen([*cli(), *DDP, "trainer.batch_size=3", f"hydra.run.dir={tmp_path / 'cli'}"],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outs
    assert "not divisible by the 2 processes" in outs[0] and "Traceback" not in outs[0]


def test_torchrun_runs_a_job_end_to_end(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun is not installed beside this interpreter")
    out = subprocess.run([torchrun, "--nproc_per_node=2", f"--master_port={free_port()}", "--no-python", *cli(),
                          *DDP, f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = (tmp_path / "train.log").read_text()
    assert "distributed: 2 processes (gloo)" in log and "final" in log
    assert json.loads((tmp_path / "metrics.json").read_text())["final"]["params"] > 0


def test_submitit_tasks_per_node_2_runs_one_job_as_two_ranks(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = run_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", *DDP,
                  f"hydra.sweep.dir={tmp_path}", timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = (tmp_path / "0" / "train.log").read_text()
    assert "distributed: 2 processes (gloo), this is rank 0" in log
    assert "final" in json.loads((tmp_path / "0" / "metrics.json").read_text())


def test_the_ranks_shares_of_a_batch_make_up_the_batch_one_process_draws():
    from jsp.data import prepare
    from jsp.data import make_synthetic
    from jsp.engine.runtime import patch_loader

    images = prepare(make_synthetic(image_size=48, num_train=3, num_val=1, num_test=1).train, "rgb", False)
    process = {"patch_size": 16, "augment": True}
    one = list(patch_loader(images, process, 3, 4, 0, 0, torch.device("cpu"), start=1))
    shares = [list(patch_loader(images, process, 3, 4, 0, 0, torch.device("cpu"), start=1, part=(r, 2)))
              for r in range(2)]
    assert len(one) == 2 and all(len(s) == 2 for s in shares)
    for step, (x, y) in enumerate(one):
        assert shares[0][step][0].shape[0] == 2
        assert torch.equal(torch.cat([shares[0][step][0], shares[1][step][0]]), x)
        assert torch.equal(torch.cat([shares[0][step][1], shares[1][step][1]]), y)
    assert not torch.equal(shares[0][0][0], shares[1][0][0])


def test_the_dense_cache_and_the_scratch_control_work_on_two_processes(tmp_path):
    """The first run trains the dense stage and caches it (rank 0 alone claims and stores); the
    second, the scratch control, copies it on both ranks and trains jsp's architecture anew."""
    cache = [f"dense_cache={tmp_path / 'cache'}"]
    assert spawn(tmp_path / "a", tmp_path / "oa", overrides=cache) == ["finished", "finished"]
    assert spawn(tmp_path / "b", tmp_path / "ob", overrides=[*cache, "control=scratch"]) == ["finished", "finished"]
    a, b = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("a", "b"))
    assert "dense_from" in b["dense"] and b["dense"]["miou"] == a["dense"]["miou"]
    assert b["final"]["params"] == a["final"]["params"]  # jsp's architecture, new weights
    assert (tmp_path / "ob" / "hash0").read_text() == (tmp_path / "ob" / "hash1").read_text()
    assert (tmp_path / "ob" / "hash0").read_text() != (tmp_path / "oa" / "hash0").read_text()


def test_a_real_sigterm_to_one_rank_exits_both_with_75_and_marks_the_run_preempted(tmp_path):
    """Two jsp-train processes started as torchrun starts them; SIGTERM to rank 1 alone once
    the dense stage has a periodic checkpoint: both stop at one step, rank 0 saves, both exit 75."""
    run_dir, port = tmp_path / "run", free_port()
    long = [*DDP, "trainer.steps=400", "trainer.val_every=400", f"hydra.run.dir={run_dir}"]
    procs = [subprocess.Popen([*cli(), *long], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                                   "JSP_DIST_TIMEOUT_S": "120"}) for r in range(2)]
    ckpt, deadline = run_dir / "checkpoints" / "last.pt", time.time() + 240
    while time.time() < deadline and procs[1].poll() is None and not ckpt.is_file():
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [75, 75], outs
    state = torch.load(ckpt, weights_only=True)
    assert state["stage"] == "dense" and 0 < state["step"] < 400
    assert "stopped at step" in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "checkpoints" / "PREEMPTED").read_text())["signal"] == "a stop signal to another rank"
