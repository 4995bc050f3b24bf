"""Loaders for the official layouts of CHASE_DB1, STARE, HRF, CamVid and a user's folder."""
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from jsp.cli import CONF_DIR
from jsp.data import load_camvid, load_chase_db1, load_folder, load_hrf, load_stare
from jsp.data.io import cached_fov, derive_fov
from jsp.errors import DatasetError
from jsp.metrics import SegmentationMeter
from jsp.pipeline import run
from tests.conftest import TINY_TRAIN, write_camvid, write_chase, write_folder, write_hrf, write_stare


def test_fov_of_a_disc_image_is_the_disc(tmp_path):
    h, w = 120, 140
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - 60) ** 2 + (xx - 70) ** 2 <= 50**2
    image = np.zeros((h, w, 3), np.uint8)
    image[disc] = (150, 70, 30)
    image[disc & (xx % 9 == 0)] = (25, 10, 5)        # dark vessels inside must not punch holes
    image += np.random.default_rng(0).integers(0, 8, image.shape, dtype=np.uint8)  # sensor noise
    fov = derive_fov(image)
    assert (fov & ~disc).sum() == 0                   # nothing outside the disc
    assert fov.sum() > 0.9 * disc.sum()               # nearly all of it (a small erosion)
    src = tmp_path / "img.jpg"
    src.write_bytes(b"x")
    cached = cached_fov(image, src, tmp_path / "cache")
    assert np.array_equal(cached, fov) and len(list((tmp_path / "cache").iterdir())) == 1
    assert np.array_equal(cached_fov(image, src, tmp_path / "cache"), fov)  # read back from the cache


def test_chase_db1(tmp_path):
    data = load_chase_db1(str(write_chase(tmp_path / "CHASE")), train_count=4, val_count=1,
                          fov_cache=str(tmp_path / "cache"))
    assert [len(data.train), len(data.val), len(data.test)] == [3, 1, 2]
    assert data.train[0].name == "Image_01L" and data.test[-1].name == "Image_03R"
    s = data.train[0]
    assert s.image.shape == (48, 50, 3) and set(np.unique(s.label)) == {0, 1}
    assert 0.4 < s.fov.mean() < 0.9                   # a derived disc, not the whole frame


def test_chase_db1_missing_label(tmp_path):
    root = write_chase(tmp_path / "CHASE")
    (root / "Image_02R_1stHO.png").unlink()
    with pytest.raises(DatasetError, match="Image_02R.jpg has no matching"):
        load_chase_db1(str(root), train_count=4, val_count=1, fov_cache=None)


def test_stare_reads_plain_and_gzipped_ppm(tmp_path):
    data = load_stare(str(write_stare(tmp_path / "STARE")), train_count=2, val_count=0, fov_cache=None)
    assert [len(data.train), len(data.test)] == [2, 2] and [s.name for s in data.val] == ["im0001", "im0002"]
    assert data.train[0].name == "im0001" and data.test[0].image.shape == (44, 48, 3)
    assert set(np.unique(data.test[1].label)) == {0, 1}


def test_hrf_mixed_case_downscale_and_unlabelled(tmp_path, caplog):
    data = load_hrf(str(write_hrf(tmp_path / "HRF")), scale=0.5, train_count=4, val_count=1)
    assert [len(data.train), len(data.val), len(data.test)] == [3, 1, 2]
    assert data.train[0].name == "01_dr" and data.train[0].image.shape == (30, 45, 3)
    assert data.train[0].fov.dtype == bool and set(np.unique(data.train[0].label)) <= {0, 1}
    assert "99_h.jpg has no label" in caplog.text


def test_camvid_classes_and_void(tmp_path):
    data = load_camvid(str(write_camvid(tmp_path / "CamVid")))
    assert data.num_classes == 11 and data.ignore_index == 11 and data.class_names[0] == "sky"
    assert [len(data.train), len(data.val), len(data.test)] == [3, 2, 2]
    assert data.train[0].label.max() <= 11 and data.train[0].fov.all()


def test_camvid_label_outside_classes_is_named(tmp_path):
    from PIL import Image

    root = write_camvid(tmp_path / "CamVid")
    Image.fromarray(np.full((36, 48), 40, np.uint8)).save(root / "testannot" / "0001TP_000001.png")
    with pytest.raises(DatasetError, match=r"0001TP_000001.png: label values \[40\]"):
        load_camvid(str(root))


def test_folder_with_split_files_and_fov(tmp_path):
    data = load_folder(str(write_folder(tmp_path / "mine")), num_classes=3, class_names=["a", "b", "c"])
    assert [len(data.train), len(data.test)] == [4, 2] and data.val is data.train
    assert data.test[0].name == "case4" and data.ignore_index == 255


def test_folder_without_split_files_shuffles_deterministically(tmp_path):
    root = write_folder(tmp_path / "mine", n=10, split_files=False)
    a = load_folder(str(root), num_classes=3, val_fraction=0.2, test_fraction=0.3)
    b = load_folder(str(root), num_classes=3, val_fraction=0.2, test_fraction=0.3)
    assert [len(a.train), len(a.val), len(a.test)] == [5, 2, 3]
    assert [s.name for s in a.test] == [s.name for s in b.test]


def test_void_pixels_are_not_scored():
    meter = SegmentationMeter(3, ignore_index=11)
    target = torch.tensor([[0, 1, 2, 11]])
    probs = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2, 0]]), 3).permute(0, 2, 1).float()[..., None]
    meter.update(probs, target[..., None])
    m = meter.compute()
    assert m["miou"] == 1.0 and m["acc"] == 1.0


WRITERS = {
    "chase_db1": (write_chase, ["dataset.train_count=4", "dataset.val_count=1"]),
    "stare": (write_stare, ["dataset.train_count=2", "dataset.val_count=1"]),
    "hrf": (write_hrf, ["dataset.train_count=4", "dataset.val_count=1", "dataset.scale=0.5"]),
    "camvid": (write_camvid, []),
    "folder": (write_folder, ["dataset.num_classes=3"]),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_short_training_run_on_each_dataset(name, tmp_path):
    writer, extra = WRITERS[name]
    root = writer(tmp_path / name)
    overrides = [*TINY_TRAIN, f"dataset={name}", f"dataset.root={root}", "dataset.process.patch_size=24",
                 "schedule.keep_params=0.5", *extra]
    if name in ("chase_db1", "stare"):
        overrides.append(f"dataset.fov_cache={tmp_path / 'cache'}")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    metrics = run(cfg, tmp_path / "run")
    final = metrics["final"]
    classes = {"camvid": 11, "folder": 3}.get(name, 2)
    assert len(final["iou"]) == classes and 0 <= final["miou"] <= 1
    assert ("auc" in final) == (classes == 2)
