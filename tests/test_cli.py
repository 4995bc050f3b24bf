"""jsp-train as a user runs it: a fresh process, a tiny config, outputs read back."""
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY, TINY_TRAIN, cli, run_cli

BINARY_KEYS = {"miou", "params", "macs", "weight_mb", "f1", "auc", "se", "sp", "acc"}


def tags(run_dir: Path) -> tuple[set, set]:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"]), set(acc.Tags()["images"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "out"
    out = run_cli(*TINY, "schedule.keep_params=0.5", f"hydra.run.dir={run_dir}",
                  cwd=tmp_path_factory.mktemp("elsewhere"))
    assert out.returncode == 0, out.stdout + out.stderr
    return run_dir


def test_run_writes_metrics_json(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics) == {"dense", "pruned", "finetuned", "final"}  # the default: the whole method
    for stage in metrics.values():
        assert BINARY_KEYS <= set(stage)
        assert 0 <= stage["miou"] <= 1 and 0 <= stage["auc"] <= 1
    assert metrics["final"]["params"] == metrics["finetuned"]["params"] < metrics["dense"]["params"]
    assert metrics["pruned"]["params_ratio"] == metrics["final"]["params"] / metrics["dense"]["params"]
    assert metrics["final"]["params_ratio"] == pytest.approx(0.5, abs=0.02)
    assert metrics["final"]["time_s"] > 0


def test_run_writes_hydra_config_and_checkpoints(tiny_run):
    assert (tiny_run / ".hydra" / "config.yaml").is_file()
    for stage in ("dense", "pruned", "finetuned", "final"):
        assert (tiny_run / "checkpoints" / stage / "model.json").is_file()
        assert (tiny_run / "checkpoints" / stage / "model.safetensors").is_file()


def test_run_logs_tensorboard_tags(tiny_run):
    scalars, images = tags(tiny_run)
    for tag in ("train/loss/total", "train/loss/task", "train/loss/ce", "train/loss/dice", "train/lr",
                "val/miou", "val/f1", "test/miou", "test/f1", "test/auc", "test/params", "test/macs",
                "test/iou/vessel", "prune/test/miou", "prune/test/params", "finetune/loss/task",
                "finetune/val/miou", "finetune/test/miou", "finetune/test/macs", "prune/surgery_s"):
        assert tag in scalars, tag
    assert "test/example_0" in images and "finetune/test/example_0" in images
    hp = Path(tiny_run / "tensorboard")
    assert any(p.name.startswith("events") for p in hp.rglob("*")), "no event files"


def test_summary_is_printed(tiny_run):
    log = (tiny_run / "train.log").read_text()
    assert "stage" in log and "final" in log and "tensorboard --logdir" in log


def test_same_seed_same_metrics(tiny_run, tmp_path):
    out = run_cli(*TINY, "schedule.keep_params=0.5", f"hydra.run.dir={tmp_path / 'again'}")
    assert out.returncode == 0, out.stderr
    first = json.loads((tiny_run / "metrics.json").read_text())
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    for key in ("miou", "f1", "auc", "params", "macs"):
        assert first["final"][key] == again["final"][key], key


def test_multirun_gives_one_dir_per_job(tmp_path):
    out = run_cli("-m", *TINY, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert out.returncode == 0, out.stdout + out.stderr
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "metrics.json").is_file()
        assert any((tmp_path / "sweep" / job / "tensorboard").iterdir())


def test_drive_end_to_end_on_fixture(drive_root, tmp_path):
    out = run_cli(*TINY_TRAIN, "dataset=drive", f"dataset.root={drive_root}", "dataset.val_count=1",
                  "dataset.process.patch_size=32", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stdout + out.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert BINARY_KEYS <= set(metrics["final"])


def test_missing_drive_is_one_clear_error(tmp_path):
    out = run_cli("dataset=drive", f"dataset.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}",
                  cwd=tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "does not exist" in text and "training/1st_manual" in text
    assert "Traceback" not in text


def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = run_cli(*TINY, "trainer.device=cuda", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode != 0 and "no CUDA GPU" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_jsp_eval_reproduces_the_run_in_a_fresh_process(tiny_run, tmp_path):
    out = run_cli(f"checkpoint={tiny_run}", f"hydra.run.dir={tmp_path / 'eval'}", entry="eval")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    final = json.loads((tiny_run / "metrics.json").read_text())["final"]
    assert result["matches_saved"] is True and result["stage"] == "final"
    for key in ("miou", "f1", "auc", "se", "sp", "acc", "params", "macs"):
        assert result["metrics"][key] == final[key], key


def test_jsp_eval_of_a_stage_on_another_dataset(tiny_run, drive_root, tmp_path):
    out = run_cli(f"checkpoint={tiny_run / 'checkpoints' / 'dense'}", "dataset=drive", f"dataset.root={drive_root}",
                  "dataset.val_count=1", f"hydra.run.dir={tmp_path / 'eval'}", entry="eval")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert result["stage"] == "dense" and 0 <= result["metrics"]["miou"] <= 1


def test_jsp_eval_of_a_missing_checkpoint_is_one_clear_error(tmp_path):
    out = run_cli(f"checkpoint={tmp_path / 'nothing'}", f"hydra.run.dir={tmp_path / 'eval'}", entry="eval")
    assert out.returncode == 2 and "not a saved jsp model" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_jsp_export_writes_torchscript_and_onnx(tiny_run, tmp_path):
    out = run_cli(f"checkpoint={tiny_run}", f"out={tmp_path}", entry="export")
    assert out.returncode == 0, out.stdout + out.stderr
    from jsp.models.saved import load_model

    model, _ = load_model(tiny_run / "checkpoints" / "final")
    model.eval()
    scripted = torch.jit.load(str(tmp_path / "model.torchscript.pt"))
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(scripted(x), model(x))
    try:
        import onnxruntime
    except ImportError:
        pytest.skip("onnx / onnxruntime not installed (the export extra): ONNX not checked here")
    assert "onnxruntime matches PyTorch" in out.stdout + out.stderr
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 48, 48), (3, 3, 64, 96)):  # dynamic batch and image size
        x = torch.randn(*shape)
        with torch.no_grad():
            np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], model(x).numpy(), atol=1e-4)


def test_jsp_export_without_onnx_writes_torchscript_and_says_how(tiny_run, tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "onnx.py").write_text("raise ImportError('hidden for this test')\n")  # as if not installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([*cli("export"), f"checkpoint={tiny_run}", f"out={tmp_path / 'x'}"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ONNX skipped" in out.stdout + out.stderr and 'pip install "jsp[export]"' in out.stdout + out.stderr
    assert (tmp_path / "x" / "model.torchscript.pt").is_file() and not (tmp_path / "x" / "model.onnx").exists()


def test_a_run_without_a_terminal_logs_progress_lines(tmp_path):
    """nohup / Slurm: no tqdm bar, so train.log gets step, loss, lr, speed and ETA lines."""
    out = run_cli(*TINY, "trainer.progress_every=2", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    log = (tmp_path / "train.log").read_text()
    assert re.search(r"train step 2/6 \| loss \d+\.\d+ \(task \d+\.\d+, penalty [\d.e+-]+\) \| lr [\d.e+-]+ \| "
                     r"[\d.]+ steps/s \| ETA \d+m\d\ds", log), log
    assert "train step 3/6 | val mIoU" in log and "finetune step 4/4 | loss" in log


def _summed(per_image_csv: Path):
    """Rows of a per_image.csv and the metrics of their summed confusion counts."""
    import csv

    import numpy as np

    from jsp.metrics.segmentation import metrics_from_confusion

    rows = list(csv.DictReader(per_image_csv.open()))
    k = int(round(sum(1 for c in rows[0] if c.startswith("cm_")) ** 0.5))
    cm = np.array([[sum(int(r[f"cm_{t}_{p}"]) for r in rows) for p in range(k)] for t in range(k)])
    return rows, metrics_from_confusion(cm)


@pytest.mark.parametrize("stage", ["dense", "pruned", "final"])
def test_per_image_counts_of_each_test_stage_sum_to_its_metrics(tiny_run, stage):
    rows, summed = _summed(tiny_run / "checkpoints" / stage / "per_image.csv")
    metrics = json.loads((tiny_run / "metrics.json").read_text())[stage]
    assert [r["image"] for r in rows] == ["test_000", "test_001"]
    for key in ("miou", "f1", "se", "sp", "acc"):
        assert summed[key] == metrics[key], key
    f1s = [float(r["f1"]) for r in rows]
    assert all(0 <= f <= 1 for f in f1s) and min(f1s) <= metrics["f1"] <= max(f1s)


def test_jsp_eval_writes_per_image_metrics_that_sum_to_its_own(tiny_run, tmp_path):
    out = run_cli(f"checkpoint={tiny_run}", f"hydra.run.dir={tmp_path}", entry="eval")
    assert out.returncode == 0, out.stdout + out.stderr
    rows, summed = _summed(tmp_path / "per_image.csv")
    metrics = json.loads((tmp_path / "eval_metrics.json").read_text())["metrics"]
    assert len(rows) == 2 and summed["miou"] == metrics["miou"] and summed["f1"] == metrics["f1"]
    train_rows = list(__import__("csv").DictReader((tiny_run / "checkpoints" / "final" / "per_image.csv").open()))
    assert [r["f1"] for r in rows] == [r["f1"] for r in train_rows]  # the same model, the same images
