import numpy as np
import pytest
from PIL import Image

from jsp.data import PatchDataset, load_drive, make_synthetic, prepare
from jsp.data.transforms import enhance, normalize
from jsp.errors import ConfigError, DatasetError


def test_synthetic_is_deterministic_and_plausible():
    a = make_synthetic(seed=3, image_size=64, num_train=3, num_val=1, num_test=2)
    b = make_synthetic(seed=3, image_size=64, num_train=3, num_val=1, num_test=2)
    c = make_synthetic(seed=4, image_size=64, num_train=3, num_val=1, num_test=2)
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.label, y.label) for x, y in zip(a.train, b.train))
    assert not np.array_equal(a.train[0].image, c.train[0].image)
    s = a.train[0]
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    assert set(np.unique(s.label)) <= {0, 1}
    assert not s.label[~s.fov].any()              # no vessel outside the field of view
    assert s.image[~s.fov].max() == 0             # black outside the FOV
    frac = np.mean([x.label[x.fov].mean() for x in a.train + a.test])
    assert 0.03 < frac < 0.3                      # vessels are a minority, as in real fundus images
    # vessels are darker than background in green, on average
    assert s.image[..., 1][s.label == 1].mean() < s.image[..., 1][(s.label == 0) & s.fov].mean()


def test_split_sizes_are_independent():
    a = make_synthetic(seed=0, image_size=48, num_train=2, num_val=1, num_test=1)
    b = make_synthetic(seed=0, image_size=48, num_train=5, num_val=1, num_test=1)
    assert np.array_equal(a.test[0].image, b.test[0].image)


def test_drive_loader_reads_official_formats(drive_root):
    data = load_drive(str(drive_root), val_count=1)
    assert [len(data.train), len(data.val), len(data.test)] == [2, 1, 2]
    s = data.train[0]
    assert s.image.shape == (40, 44, 3) and s.label.shape == (40, 44)
    assert set(np.unique(s.label)) == {0, 1} and s.fov.dtype == bool
    assert s.name == "21_training" and data.val[0].name == "23_training"
    assert data.full_size == (40, 44)


def test_drive_missing_root_names_expected_layout(tmp_path):
    with pytest.raises(DatasetError, match="(?s)does not exist.*1st_manual"):
        load_drive(str(tmp_path / "nope"))


def test_drive_missing_label_is_named(drive_root):
    (drive_root / "test" / "1st_manual" / "02_manual1.gif").unlink()
    with pytest.raises(DatasetError, match="02_test.tif has no matching .*02_manual1.gif"):
        load_drive(str(drive_root), val_count=1)


def test_drive_truncated_image_is_named(drive_root):
    path = drive_root / "training" / "images" / "22_training.tif"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DatasetError, match="cannot read image .*22_training.tif"):
        load_drive(str(drive_root), val_count=1)


def test_drive_label_of_other_size_is_rejected(drive_root):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(drive_root / "test" / "1st_manual" / "01_manual1.gif")
    with pytest.raises(DatasetError, match="same size"):
        load_drive(str(drive_root), val_count=1)


def test_drive_val_count_must_leave_training_images(drive_root):
    with pytest.raises(DatasetError, match="val_count=3"):
        load_drive(str(drive_root), val_count=3)


@pytest.mark.parametrize("channels,clahe,c", [("rgb", False, 3), ("rgb", True, 3), ("green", False, 1), ("green", True, 1)])
def test_preprocessing_shapes_and_standardisation(channels, clahe, c):
    s = make_synthetic(image_size=64, num_train=1, num_val=1, num_test=1).train[0]
    im = enhance(s.image, channels, clahe)
    assert im.shape == (64, 64, c) and im.dtype == np.uint8
    p = prepare([s], channels, clahe)[0]
    x = normalize(p.image, p.fov, p.mean, p.std)
    assert x.shape == (c, 64, 64)
    assert np.allclose(x[:, p.fov].mean(1), 0, atol=1e-4) and np.allclose(x[:, p.fov].std(1), 1, atol=1e-3)
    assert (x[:, ~p.fov] == 0).all()


def test_unknown_channels_is_a_config_error():
    with pytest.raises(ConfigError, match="channels"):
        enhance(np.zeros((4, 4, 3), np.uint8), "infrared")


def test_patches_are_a_function_of_the_index():
    data = make_synthetic(image_size=64, num_train=2, num_val=1, num_test=1)
    ds = PatchDataset(prepare(data.train), patch_size=32, length=10, seed=1)
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32) and y.dtype.is_floating_point is False
    x2, y2 = ds[3]
    assert (x == x2).all() and (y == y2).all()
    assert not (ds[4][0] == x).all()
    assert len(ds) == 10


def test_patch_larger_than_images_is_rejected():
    data = make_synthetic(image_size=48, num_train=1, num_val=1, num_test=1)
    with pytest.raises(ConfigError, match="patch_size=64"):
        PatchDataset(prepare(data.train), patch_size=64, length=1)
