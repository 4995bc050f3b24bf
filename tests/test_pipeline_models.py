"""The whole method (jsp constraint, one-shot pruning to a budget, fine-tuning) on every model."""
import pytest
import torch
from hydra import compose, initialize_config_dir

from jsp.cli import CONF_DIR
from jsp.models.saved import load_model
from jsp.pipeline import run
from tests.conftest import TINY

MODELS = {
    "unet": [],
    "mobilenetv3": ["model.decoder_channels=[32,16,16,8,8]"],
    "mobilenetv3_small": ["model.decoder_channels=[32,16,16,8,8]"],
    "smp": ["model.encoder=resnet18", "model.decoder_channels=[32,16,16,8,8]"],
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pipeline_prunes_every_model_to_budget(name, tmp_path):
    overrides = [o for o in TINY if not o.startswith("model.")] + [f"model={name}", *MODELS[name]]
    if name == "unet":
        overrides += ["model.width=8", "model.depth=2"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, "dataset.image_size=64",
                                                      "schedule.keep_params=0.4"])
    metrics = run(cfg, tmp_path)
    assert metrics["final"]["params_ratio"] == pytest.approx(0.4, abs=0.02)
    assert metrics["final"]["macs"] < metrics["dense"]["macs"]
    model, meta = load_model(tmp_path / "checkpoints" / "final")
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)   # classes intact
    assert meta["metrics"]["params"] == metrics["final"]["params"]
