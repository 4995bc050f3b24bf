"""Pretrained encoders without network access: model.encoder_weights=PATH."""
import json

import pytest
import torch
from safetensors.torch import save_file

from jsp.errors import ConfigError
from jsp.models import SMPModel
from jsp.models.smp_models import mobilenetv3
from tests.conftest import TINY, run_cli

TINY_SMP = [o for o in TINY if not o.startswith(("model.width", "model.depth"))]

DECODER = (32, 16, 16, 8, 8)


def _encoder_file(tmp_path, prefix="", seed=1, suffix=".safetensors"):
    torch.manual_seed(seed)
    source = SMPModel(3, 2, "Unet", "resnet18", decoder_channels=DECODER)
    state = {prefix + k: v.contiguous() for k, v in source.net.encoder.state_dict().items()}
    path = tmp_path / f"resnet18{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    return path, source.net.encoder.state_dict()


@pytest.mark.parametrize("prefix,suffix", [("", ".safetensors"), ("encoder.", ".safetensors"), ("", ".pth")])
def test_encoder_starts_from_the_file(tmp_path, prefix, suffix):
    path, expected = _encoder_file(tmp_path, prefix, suffix=suffix)
    torch.manual_seed(0)
    model = SMPModel(3, 2, "Unet", "resnet18", decoder_channels=DECODER, encoder_weights=str(path))
    for key, value in model.net.encoder.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    torch.manual_seed(0)
    fresh = SMPModel(3, 2, "Unet", "resnet18", decoder_channels=DECODER)
    assert not torch.equal(fresh.net.encoder.conv1.weight, model.net.encoder.conv1.weight)


def test_timm_weights_load_into_the_mobilenetv3_encoder(tmp_path):
    import timm

    torch.manual_seed(2)
    timm_model = timm.create_model("mobilenetv3_small_100", pretrained=False)  # the classifier is skipped
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, str(tmp_path / "mnv3.safetensors"))
    model = mobilenetv3(3, 2, "small", (32, 16, 16, 8, 8), encoder_weights=str(tmp_path / "mnv3.safetensors"))
    torch.testing.assert_close(model.net.encoder.model.conv_stem.weight, timm_model.conv_stem.weight)


def test_wrong_or_unsafe_files_are_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="fits 0 of the encoder's"):
        SMPModel(3, 2, "Unet", "resnet18", decoder_channels=DECODER, encoder_weights=str(tmp_path / "other.pt"))
    torch.save({"state_dict": {"x": object()}}, tmp_path / "pickle.pt")  # not tensors: weights_only refuses
    with pytest.raises(ConfigError, match="cannot read weights"):
        SMPModel(3, 2, "Unet", "resnet18", decoder_channels=DECODER, encoder_weights=str(tmp_path / "pickle.pt"))
    with pytest.raises(ConfigError, match="does not exist"):
        SMPModel(3, 2, "Unet", "resnet18", decoder_channels=DECODER, encoder_weights=str(tmp_path / "none.pt"))


def test_a_run_from_pretrained_weights_saves_a_model_that_needs_no_file(tmp_path):
    path, _ = _encoder_file(tmp_path)
    out = run_cli(*TINY_SMP, "model=smp", "model.decoder_channels=[32,16,16,8,8]", f"model.encoder_weights={path}",
                  "schedule=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "encoder weights: " in (tmp_path / "run" / "train.log").read_text()
    meta = json.loads((tmp_path / "run" / "checkpoints" / "final" / "model.json").read_text())
    assert "encoder_weights" not in meta["architecture"]["args"]
    path.unlink()  # the saved model is self-contained
    out = run_cli(f"checkpoint={tmp_path / 'run'}", f"hydra.run.dir={tmp_path / 'eval'}", entry="eval")
    assert out.returncode == 0 and json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())["matches_saved"]
