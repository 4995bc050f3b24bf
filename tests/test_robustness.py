"""What happens when things go wrong: bad input, bad config, a kill, a NaN. Each as a user
meets it: a fresh process, its exit code and what it prints."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY, TINY_TRAIN, cli, run_cli, write_drive, write_folder

WALL_CLOCK = ("time_s", "latency_ms", "latency_iqr_ms", "latency_runs", "provenance")  # differ between identical runs


def drive_case(tmp_path, damage):
    root = write_drive(tmp_path / "DRIVE")
    damage(root)
    return [*TINY_TRAIN, "dataset=drive", f"dataset.root={root}", "dataset.val_count=1",
            "dataset.process.patch_size=32"]


def folder_case(tmp_path, damage):
    root = write_folder(tmp_path / "mine")
    damage(root)
    return [*TINY_TRAIN, "dataset=folder", f"dataset.root={root}", "dataset.num_classes=3",
            "dataset.process.patch_size=24"]


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[:80])


BAD_INPUT = {
    "missing root": (lambda t: [*TINY_TRAIN, "dataset=drive", f"dataset.root={t / 'nowhere'}"],
                     ["does not exist", "training/1st_manual/21_manual1.gif"]),
    "wrong layout": (lambda t: (t / "empty").mkdir() or [*TINY_TRAIN, "dataset=drive", f"dataset.root={t / 'empty'}"],
                     ["no images found", "ROOT/test/mask/01_test_mask.gif"]),
    "image without label": (lambda t: drive_case(t, lambda r: (r / "training/1st_manual/22_manual1.gif").unlink()),
                            ["22_training.tif has no matching", "22_manual1.gif"]),
    "truncated image": (lambda t: drive_case(t, lambda r: truncate(r / "test/images/02_test.tif")),
                        ["cannot read image", "02_test.tif"]),
    "label of another size": (lambda t: drive_case(t, lambda r: Image.fromarray(np.zeros((9, 9), np.uint8)).save(
        r / "test/1st_manual/01_manual1.gif")), ["01_test.tif", "same size"]),
    "label outside the classes": (lambda t: folder_case(t, lambda r: Image.fromarray(np.full((40, 40), 7, np.uint8)).save(
        r / "masks/case1.png")), ["case1.png", "label values [7] are outside the classes 0..2"]),
    "empty split": (lambda t: folder_case(t, lambda r: (r / "test.txt").write_text("")), ["the test split is empty"]),
}

BAD_CONFIG = {
    "negative lambda": (["constraint.lambda_s=-0.1"], ["constraint.lambda_s must be >= 0"]),
    "keep_params above 1": (["schedule.keep_params=1.5"], ["schedule.keep_params must be in (0, 1]"]),
    "keep_params zero": (["schedule.keep_params=0"], ["schedule.keep_params must be in (0, 1]"]),
    "no steps": (["trainer.steps=0"], ["trainer.steps must be a positive number"]),
    "patch larger than images": (["dataset.process.patch_size=512"], ["patch_size=512 is larger than"]),
    "unknown importance": (["schedule.importance=magic"], ["schedule.importance must be one of"]),
    # caught when Hydra composes the config (typed schemas, jsp/configs.py): one line, exit 2
    "misspelt trainer key": (["trainer.stesp=10"], ["trainer.stesp", "did you mean trainer.steps?"]),
    "trainer.lr not a number": (["trainer.lr=abc"], ["trainer.lr=abc", "could not be converted to Float"]),
    "trainer.steps not a number": (["trainer.steps=abc"], ["trainer.steps=abc", "could not be converted to Integer"]),
    "misspelt top-level key": (["sed=3"], ["Could not override 'sed'"]),
    "keep_params not a number": (["schedule.keep_params=abc"], ["schedule.keep_params=abc"]),
    "unknown model": (["model=resnet"], ["Could not find 'model/resnet'", "options: mobilenetv3"]),
    # constraint and model keys depend on the option chosen: checked against the target's
    # signature when built, before any data is read
    "misspelt constraint key": (["+constraint.lambda_ss=1"], ["constraint.lambda_ss: not a setting of JSPConstraint",
                                                             "did you mean constraint.lambda_s?"]),
    "constraint weight not a number": (["constraint.lambda_s=abc"], ["constraint.lambda_s=abc: JSPConstraint takes a "
                                                                     "number"]),
    "model width not a number": (["model.width=abc"], ["model.width=abc: UNet takes a number"]),
}


def assert_clean_failure(out, expected):
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    for piece in expected:
        assert piece in text, (piece, text[-2000:])
    assert "Traceback" not in text
    if "config error" in text:  # a compose-time error is exactly one line
        assert len(text.strip().splitlines()) == 1, text


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_clear_error(case, tmp_path):
    make, expected = BAD_INPUT[case]
    out = run_cli(*make(tmp_path), f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_failure(out, expected)


@pytest.mark.parametrize("case", sorted(BAD_CONFIG))
def test_bad_config_is_caught_before_any_work(case, tmp_path):
    overrides, expected = BAD_CONFIG[case]
    out = run_cli(*TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_failure(out, expected)
    assert not (tmp_path / "run" / "tensorboard").exists()  # nothing was trained or logged


def test_debug_switch_shows_the_traceback(tmp_path):
    env = {**os.environ, "JSP_DEBUG": "1"}
    out = subprocess.run([*cli(), *TINY, "trainer.steps=0",
                          f"hydra.run.dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "ConfigError" in out.stdout + out.stderr


@pytest.fixture
def saved_model(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("model") / "run"
    out = run_cli(*TINY, "schedule=none", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr
    return run_dir / "checkpoints" / "final"


@pytest.mark.parametrize("damage", ["missing", "truncated", "not a jsp model"])
def test_bad_checkpoint_is_one_clear_error(damage, saved_model, tmp_path):
    target = tmp_path / "ckpt"
    if damage != "missing":
        target.mkdir()
        for f in ("model.json", "model.safetensors"):
            (target / f).write_bytes((saved_model / f).read_bytes())
        if damage == "truncated":
            truncate(target / "model.safetensors")
        else:
            (target / "model.json").write_text(json.dumps({"format": "something else"}))
    expected = {"missing": "not a saved jsp model", "truncated": "cannot read weights",
                "not a jsp model": "is not a jsp model description"}[damage]
    out = run_cli(f"checkpoint={target}", f"hydra.run.dir={tmp_path / 'eval'}", entry="eval")
    assert_clean_failure(out, [expected])


def test_nan_loss_stops_with_the_step_and_terms_and_keeps_the_last_good_checkpoint(tmp_path):
    out = run_cli(*TINY, "trainer.lr=1e30", "trainer.warmup_steps=0", "trainer.checkpoint_every=1",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_failure(out, ["the loss is not finite at step 1", "ce=nan", "resume=true"])
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 1 and all(torch.isfinite(v.float()).all() for v in state["model"].values())


LONG = [o for o in TINY if not o.startswith(("trainer.steps", "trainer.val_every", "schedule.finetune_steps"))] + [
    "trainer.steps=120", "trainer.val_every=20", "trainer.checkpoint_every=10", "schedule.finetune_steps=60",
    "schedule.keep_params=0.5"]


def comparable(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {stage: {k: v for k, v in m.items() if k not in WALL_CLOCK} for stage, m in metrics.items()}


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("full") / "run"
    out = run_cli(*LONG, f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stdout + out.stderr
    return run_dir


@pytest.mark.parametrize("stage", ["dense", "finetuned"])
def test_killed_run_resumes_to_the_same_metrics(stage, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ)
    proc = subprocess.Popen([*cli(), *LONG, f"hydra.run.dir={run_dir}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # kill once the stage has a mid-stage checkpoint
        try:
            state = torch.load(ckpt, weights_only=True)
            if state["stage"] == stage and 0 < state["step"] < (120 if stage == "dense" else 60):
                break
        except Exception:  # not written yet (or being replaced)
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)
    assert killed_at["stage"] == stage, "the run finished the stage before it could be killed"
    out = run_cli(*LONG, f"hydra.run.dir={run_dir}", "resume=true")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resume: {stage} continues at step" in out.stdout + out.stderr
    assert comparable(run_dir) == comparable(uninterrupted)


def test_same_seed_gives_identical_metrics_json(uninterrupted, tmp_path):
    out = run_cli(*LONG, f"hydra.run.dir={tmp_path / 'again'}")
    assert out.returncode == 0, out.stderr
    assert comparable(tmp_path / "again") == comparable(uninterrupted)


@pytest.fixture(scope="module")
def a_saved_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("saved") / "run"
    out = run_cli(*TINY, "schedule=none", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr
    return run_dir


OTHER_COMMANDS = {  # (command, arguments, what the one message must say)
    "eval without checkpoint": ("eval", [], ["Missing mandatory value: checkpoint"]),
    "export without checkpoint": ("export", [], ["Missing mandatory value: checkpoint"]),
    "predict without checkpoint": ("predict", ["input={tmp}", "output={tmp}/out"], ["Missing mandatory value: checkpoint"]),
    "predict without input": ("predict", ["checkpoint={run}", "output={tmp}/out"], ["Missing mandatory value: input"]),
    "eval on a missing dataset root": ("eval", ["checkpoint={run}", "dataset=drive", "dataset.root={tmp}/nowhere"],
                                       ["DRIVE root", "does not exist"]),
    "eval with a misspelt key": ("eval", ["checkpoint={run}", "devcie=cpu"], ["Could not override 'devcie'"]),
    "eval with a wrong type": ("eval", ["checkpoint={run}", "latency_s=abc"], ["latency_s"]),
    "export to an unknown format": ("export", ["checkpoint={run}", "formats=[pdf]"], ["formats must be torchscript"]),
    "predict with a model that is not one": ("predict", ["checkpoint={tmp}", "input={tmp}", "output={tmp}/out"],
                                             ["is not a saved jsp model"]),
}


@pytest.mark.parametrize("case", sorted(OTHER_COMMANDS))
def test_every_command_fails_in_one_message_with_exit_2(case, a_saved_run, tmp_path):
    entry, args, expected = OTHER_COMMANDS[case]
    args = [a.format(run=a_saved_run, tmp=tmp_path) for a in args]
    out = run_cli(*args, f"hydra.run.dir={tmp_path / 'cmd'}", entry=entry, cwd=tmp_path)
    assert_clean_failure(out, expected)
    lines = [l for l in (out.stdout + out.stderr).strip().splitlines() if "does not exist" not in l or "ROOT" in l]
    assert not any(l.startswith("Error executing job") for l in lines)


def test_jsp_report_skips_a_damaged_run_and_fails_cleanly_with_none(a_saved_run, tmp_path):
    import shutil

    from jsp.report import main as report_main

    shutil.copytree(a_saved_run, tmp_path / "good")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{half a file")
    out = subprocess.run([sys.executable, "-c", "from jsp.report import main; raise SystemExit(main())", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "skipped" in out.stderr and "bad/metrics.json" in out.stderr and "Traceback" not in out.stderr
    assert report_main([str(tmp_path / "bad")]) == 2
