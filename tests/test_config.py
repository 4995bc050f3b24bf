"""Every config option composes and instantiates."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from jsp.cli import CONF_DIR
from jsp.constraints import Constraint
from jsp.data import SegmentationData
from tests.conftest import run_cli, write_drive


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def compose_with(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_every_group_has_options():
    for group in ("dataset", "model", "constraint", "schedule", "trainer", "experiment"):
        assert options(group), group
    assert (Path(CONF_DIR) / "hparams_search").is_dir()


@pytest.mark.parametrize("name", options("model"))
def test_model_options_instantiate(name):
    cfg = compose_with(f"model={name}")
    if name.startswith("mobilenet"):
        cfg.model.decoder_channels = [16, 16, 8, 8, 8]  # keep the test small
    model = instantiate(cfg.model, in_channels=3, num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.parametrize("name", options("dataset"))
def test_dataset_options_instantiate(name, tmp_path):
    from tests.test_datasets import WRITERS

    if name == "synthetic":
        extra = ["dataset.num_train=2", "dataset.image_size=48"]
    elif name == "drive":
        extra = [f"dataset.root={write_drive(tmp_path / 'DRIVE')}", "dataset.val_count=1"]
    else:
        writer, extra = WRITERS[name]
        extra = [f"dataset.root={writer(tmp_path / name)}", *extra]
        if name in ("chase_db1", "stare"):
            extra.append(f"dataset.fov_cache={tmp_path / 'cache'}")
    cfg = compose_with(f"dataset={name}", *extra)
    data_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
    process = data_cfg.pop("process")
    assert {"channels", "clahe", "patch_size", "augment"} <= set(process)
    assert isinstance(instantiate(data_cfg), SegmentationData)


@pytest.mark.parametrize("group", ["constraint", "schedule"])
def test_constraint_and_schedule_options_instantiate(group):
    for name in options(group):
        obj = instantiate(compose_with(f"{group}={name}")[group])
        if group == "constraint":
            assert isinstance(obj, Constraint)
        assert isinstance(obj.settings(), dict)


def test_trainer_builds_optimizer_and_loss():
    cfg = compose_with("trainer.lr=0.5")
    opt = instantiate(cfg.trainer.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert opt.param_groups[0]["lr"] == 0.5
    loss_fn = instantiate(cfg.trainer.loss, ignore_index=None)
    total, terms = loss_fn(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    assert set(terms) == {"ce", "dice"} and torch.isfinite(total)


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_presets_compose(name):
    cfg = compose_with(f"experiment={name}")
    assert cfg.trainer.steps > 0


def test_public_overrides_land_where_documented():
    cfg = compose_with("dataset=drive", "dataset.root=/x", "model=unet", "model.width=8", "trainer.steps=7",
                       "trainer.device=cpu", "seed=3")
    assert (cfg.dataset.root, cfg.model.width, cfg.trainer.steps, cfg.trainer.device, cfg.seed) == ("/x", 8, 7, "cpu", 3)


def test_cfg_job_and_help_from_another_directory(tmp_path):
    out = run_cli("--cfg", "job", "model.width=8", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "width: 8" in out.stdout and "_target_: jsp.data.make_synthetic" in out.stdout
    out = run_cli("--help", cwd=tmp_path)
    assert out.returncode == 0 and "dataset.root=PATH" in out.stdout and "mobilenetv3_small" in out.stdout
