"""init_from=FOLDER: training starts from a saved dense network's weights, read safely."""
import hashlib
import json

import pytest
import torch

from jsp.errors import ConfigError
from jsp.models import UNet
from jsp.models.saved import load_model, save_model
from jsp.models.warm_start import warm_start
from tests.conftest import TINY, run_cli

ARCH = {"name": "unet", "args": {"width": 4, "depth": 2, "in_channels": 3, "num_classes": 2}}


def _unet(seed: int, width: int = 4) -> UNet:
    torch.manual_seed(seed)
    return UNet(width=width, depth=2, in_channels=3, num_classes=2)


def test_warm_start_copies_every_weight_and_statistic(tmp_path):
    source = _unet(0)
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)  # statistics are part of the start too
    folder = save_model(tmp_path / "m", source, ARCH)
    target = _unet(1)
    assert not torch.equal(next(iter(target.parameters())), next(iter(source.parameters())))
    digest = warm_start(target, folder)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert digest == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_another_width_or_a_pruned_network_is_refused(tmp_path):
    save_model(tmp_path / "m", _unet(0), ARCH)
    with pytest.raises(ConfigError, match="init_from=.*not the one model= builds"):
        warm_start(_unet(0, width=6), tmp_path / "m")
    with pytest.raises(ConfigError, match="init_from=.*not a saved jsp model"):
        warm_start(_unet(0), tmp_path / "nothing")


def test_a_run_starts_from_the_saved_weights(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run_cli(*TINY, "method=dense", f"hydra.run.dir={a}").returncode == 0
    # One step at a vanishing learning rate: the trained weights are still A's, not a fresh init.
    still = ["schedule=none", "constraint=none", "trainer.steps=1", "trainer.lr=1e-12", "trainer.warmup_steps=0",
             "trainer.val_every=1"]
    out = run_cli(*TINY, *still, f"init_from={a}", f"hydra.run.dir={b}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert run_cli(*TINY, *still, f"hydra.run.dir={c}").returncode == 0
    start, _ = load_model(a / "checkpoints" / "final")
    warm, _ = load_model(b / "checkpoints" / "final")
    cold, _ = load_model(c / "checkpoints" / "final")
    conv = [k for k, v in start.state_dict().items() if k.endswith("weight") and v.dim() == 4]
    for key in conv:
        assert torch.allclose(warm.state_dict()[key], start.state_dict()[key], atol=1e-6), key
    assert any(not torch.allclose(cold.state_dict()[k], start.state_dict()[k], atol=1e-3) for k in conv)
    record = json.loads((b / "metrics.json").read_text())["final"]["provenance"]["init_from"]
    sha = hashlib.sha256((a / "checkpoints" / "final" / "model.safetensors").read_bytes()).hexdigest()
    assert record == {"path": str(a), "sha256": sha}


def test_a_control_cannot_start_from_trained_weights_and_the_cache_tells_starts_apart(tmp_path):
    a, cache = tmp_path / "a", tmp_path / "cache"
    assert run_cli(*TINY, "method=dense", f"hydra.run.dir={a}").returncode == 0
    out = run_cli(*TINY, "control=uniform", "schedule.keep_params=0.5", f"init_from={a}",
                  f"hydra.run.dir={tmp_path / 'u'}")
    assert out.returncode == 2 and "init_from and control=uniform" in out.stderr + out.stdout
    for name, extra in (("cold", []), ("warm", [f"init_from={a}"])):
        out = run_cli(*TINY, "method=l1_norm", "schedule.keep_params=0.5", f"dense_cache={cache}", *extra,
                      f"hydra.run.dir={tmp_path / name}")
        assert out.returncode == 0, out.stderr
    assert "copied from" not in (tmp_path / "warm" / "train.log").read_text()
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2
