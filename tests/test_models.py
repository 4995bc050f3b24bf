import pytest
import torch

from jsp.engine.evaluate import predict
from jsp.errors import ConfigError
from jsp.metrics import count_params
from jsp.models import SMPModel, UNet, mobilenetv3


def test_classic_unet_has_textbook_size():
    assert count_params(UNet(3, 2, width=64, depth=4)) == pytest.approx(31.04e6, rel=0.01)


@pytest.mark.parametrize("depth", [2, 3])
def test_unet_shapes(depth):
    m = UNet(1, 3, width=4, depth=depth)
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 3, 32, 32)


def test_predict_pads_odd_sizes_and_returns_probabilities():
    m = UNet(3, 2, width=4, depth=3).eval()
    p = predict(m, torch.randn(1, 3, 37, 45))
    assert p.shape == (1, 2, 37, 45)
    assert torch.allclose(p.sum(1), torch.ones(1, 37, 45))


@pytest.mark.parametrize("variant", ["large", "small"])
def test_mobilenetv3_builds_offline(variant):
    m = mobilenetv3(3, 2, variant, decoder_channels=(32, 16, 16, 8, 8)).eval()
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    assert m.pad_multiple == 32


def test_smp_model_by_name():
    m = SMPModel(3, 5, arch="FPN", encoder="resnet18").eval()
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 5, 64, 64)


def test_bad_smp_names_are_config_errors():
    with pytest.raises(ConfigError, match="nosuchnet"):
        SMPModel(3, 2, arch="Unet", encoder="nosuchnet")
