"""Peak inference memory (issue 30): measured from the allocator, checked against an analytic
count of the activations of a network whose kernels need no workspace."""
import pytest
import torch
from torch import nn

from jsp.metrics.cost import cost_report, weight_mb
from jsp.metrics.memory import peak_memory
from jsp.models import UNet


def net():
    """1x1 convolutions: 3 -> 8 -> relu -> 16 -> relu -> 4 channels."""
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 4, 1))


def analytic(h, w):
    """Bytes live at the forward's peak: an op's input and output (its input's input is freed
    by then): the largest pair of consecutive activations (8+8, 8+16, 16+16, 16+4 channels)."""
    return max(8 + 8, 8 + 16, 16 + 16, 16 + 4) * h * w * 4


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (96, 96)])  # stride multiples: no padding
def test_peak_memory_is_the_analytic_count_where_kernels_need_no_workspace(size):
    model = net()
    with torch.backends.mkldnn.flags(enabled=False):  # oneDNN adds layout buffers of its own
        measured = peak_memory(model, 3, size)
    assert measured["activation_mb"] * 2**20 == analytic(*size)
    inputs = 3 * size[0] * size[1] * 4 / 2**20
    assert measured["peak_mb"] == pytest.approx(weight_mb(model) + inputs + analytic(*size) / 2**20)


@pytest.mark.parametrize("size", [(32, 32), (96, 96)])
def test_with_onednn_the_peak_is_within_60_percent_above_the_analytic_count(size):
    measured = peak_memory(net(), 3, size)["activation_mb"] * 2**20
    assert analytic(*size) <= measured <= 1.6 * analytic(*size)


def test_the_cost_report_has_the_peak_and_a_narrower_network_needs_less():
    wide, narrow = (cost_report(UNet(3, 2, width=w, depth=2).eval(), 3, (256, 256)) for w in (8, 4))
    assert wide["memory_device"] == "cpu" and wide["peak_mb"] > wide["weight_mb"] + wide["activation_mb"] * 0.99
    assert narrow["activation_mb"] < 0.75 * wide["activation_mb"]
