"""jsp-predict: the masks a user gets for unlabelled images are the predictions jsp-eval scores."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jsp.engine.inference import predict_tiled, tile_starts
from tests.conftest import TINY_TRAIN, run_cli, write_drive


@pytest.fixture(scope="module")
def drive_run(tmp_path_factory) -> tuple[Path, Path]:
    root = write_drive(tmp_path_factory.mktemp("data") / "DRIVE", n_train=3, n_test=2, size=(40, 44))
    run_dir = tmp_path_factory.mktemp("run") / "out"
    out = run_cli(*TINY_TRAIN, "dataset=drive", f"dataset.root={root}", "dataset.val_count=1",
                  "dataset.process.patch_size=32", "schedule.keep_params=0.5", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stdout + out.stderr
    return root, run_dir


def _counts(pred: np.ndarray, label: np.ndarray, fov: np.ndarray) -> list[int]:
    """Confusion counts [tn, fp, fn, tp] inside the FOV."""
    p, t = pred[fov].astype(int), (label[fov] > 127).astype(int)
    return [int(((t == a) & (p == b)).sum()) for a in (0, 1) for b in (0, 1)]


def test_masks_of_the_drive_test_folder_are_what_the_run_scored(drive_run, tmp_path):
    root, run_dir = drive_run
    out = run_cli(f"checkpoint={run_dir}", f"input={root / 'test' / 'images'}", f"output={tmp_path}", entry="predict")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {r["image"]: r for r in csv.DictReader((run_dir / "checkpoints" / "final" / "per_image.csv").open())}
    assert sorted(rows) == ["01_test", "02_test"]
    for name, row in rows.items():
        pred = np.asarray(Image.open(tmp_path / f"{name}.png"))
        label = np.asarray(Image.open(root / "test" / "1st_manual" / f"{name[:2]}_manual1.gif").convert("L"))
        fov = np.asarray(Image.open(root / "test" / "mask" / f"{name}_mask.gif").convert("L")) > 127
        assert pred.shape == label.shape and set(np.unique(pred)) <= {0, 1} and not pred[~fov].any()
        assert _counts(pred, label, fov) == [int(row[f"cm_{t}_{p}"]) for t in (0, 1) for p in (0, 1)], name
        prob = np.asarray(Image.open(tmp_path / f"{name}_prob.png"))
        assert ((prob[fov] > 127.5) == (pred[fov] == 1)).mean() > 0.99  # the probability map agrees
        overlay = np.asarray(Image.open(tmp_path / f"{name}_overlay.png"))
        assert overlay.shape == (*label.shape, 3)
    assert (tmp_path / "predict.log").is_file()


def test_png_and_tiff_files_with_an_unreadable_one_skipped(drive_run, tmp_path):
    root, run_dir = drive_run
    images = tmp_path / "mine"
    images.mkdir()
    rgb = np.asarray(Image.open(root / "test" / "images" / "01_test.tif"))
    Image.fromarray(rgb).save(images / "a.png")
    Image.fromarray(rgb).save(images / "b.tiff")
    (images / "broken.png").write_bytes(b"not an image")
    (images / "notes.txt").write_text("ignored: not an image suffix")
    out = run_cli(f"checkpoint={run_dir}", f"input={images}", f"output={tmp_path / 'out'}", entry="predict")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "skipped" in out.stdout + out.stderr and "broken.png" in out.stdout + out.stderr
    a, b = (np.asarray(Image.open(tmp_path / "out" / f"{n}.png")) for n in ("a", "b"))
    assert a.shape == rgb.shape[:2] and np.array_equal(a, b)  # same pixels, same masks, whatever the format
    assert not (tmp_path / "out" / "broken.png").exists() and not (tmp_path / "out" / "notes.png").exists()


@pytest.mark.parametrize("args,message", [
    (["input=/nowhere/at/all"], "neither an image file nor a folder"),
    (["input={bad}"], "none of the 1 images"),
    (["input={bad}", "tile_overlap=5000"], "tile_overlap < tile_size"),
])
def test_user_errors_are_one_line(drive_run, tmp_path, args, message):
    _, run_dir = drive_run
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"\x00" * 10)
    args = [a.format(bad=bad) for a in args]
    out = run_cli(f"checkpoint={run_dir}", *args, f"output={tmp_path / 'out'}", entry="predict")
    assert out.returncode == 2 and message in out.stdout + out.stderr, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_missing_output_is_a_config_error(drive_run, tmp_path):
    _, run_dir = drive_run
    out = run_cli(f"checkpoint={run_dir}", f"input={tmp_path}", entry="predict", cwd=tmp_path)
    assert out.returncode == 2 and "output" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("size,tile,overlap", [((50, 70), 32, 8), ((33, 100), 16, 4), ((40, 40), 64, 8), ((70, 130), 40, 20)])
def test_tiles_cover_every_pixel_once_and_stitch_exactly(size, tile, overlap):
    """With a pointwise model every tile predicts its pixels exactly as the whole image does, so
    any gap, misplaced tile or wrong crop shows as a difference."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 2, 1)
    x = torch.randn(3, *size)
    whole = model(x[None])[0].softmax(0)
    tiled = predict_tiled(model, x, tile, overlap, batch_size=3)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)
    tile = -(-tile // 32) * 32  # what predict_tiled rounds to for a model of unknown stride
    starts = tile_starts(size[1], tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, size[1]) == size[1]
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
