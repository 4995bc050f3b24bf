"""The constraints' statistics and penalties on tiny models with known answers."""
import copy

import pytest
import torch
from torch import nn

from jsp.constraints import L1, Constraint, GroupLasso, JSPConstraint, Slimming, find_units
from jsp.constraints.composite import V1
from jsp.constraints.group import UnitSet, weighted_group_norm
from jsp.engine.losses import CEDiceLoss
from jsp.engine.train import LoopSettings, Objective, train_step
from jsp.errors import ConfigError
from jsp.models import UNet, mobilenetv3


class ChannelMask(nn.Module):
    """Multiplies channels by a fixed mask: a 0 makes a unit's output irrelevant (no gradient)."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", torch.tensor(mask, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return x * self.mask


def toy(mask=(1.0, 1.0, 1.0, 1.0), width=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         ChannelMask(list(mask)), nn.Conv2d(width, 2, 1))


def test_units_of_unet_pair_bn_and_skip_classifier():
    m = UNet(3, 2, width=4, depth=2)
    layers = {l.name: l for l in find_units(m)}
    assert "classifier" not in layers
    assert layers["inc.0"].bn is m.inc[1] and layers["inc.0"].size == 4
    up = layers["up.0.up"]                     # transposed conv: output channels on axis 1
    assert up.out_dim == 1 and up.size == 8 and up.bn is None
    assert up.dim == 16 * 2 * 2 + 1
    assert layers["inc.3"].dim == 4 * 9 + 2


def test_units_of_mobilenetv3_include_depthwise_and_se():
    m = mobilenetv3(3, 2, "small", decoder_channels=(16, 16, 8, 8, 8))
    layers = find_units(m)
    names = [l.name for l in layers]
    assert "net.segmentation_head.0" not in names
    assert any("se.conv_reduce" in n for n in names) and any("se.conv_expand" in n for n in names)
    assert any(l.conv.groups > 1 and l.conv.groups == l.conv.in_channels for l in layers)  # depthwise
    assert all(l.bn is not None for l in layers if "conv_dw" in l.name)


def test_activity_of_dead_unit_goes_to_zero_and_of_live_units_stays_one():
    m = toy(mask=(0.0, 1.0, 1.0, 1.0))
    c = JSPConstraint(lambda_s=0, lambda_r=0, beta=0.99, **V1).attach(m)
    x = torch.randn(8, 1, 8, 8)
    y = (x[:, 0] > 0).long()
    for step in range(500):
        m.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        c.observe(m, step)
    a = c.statistics()["activity"]["0"]
    assert a[0] < 0.01
    assert (a[1:] > 0.99).all()


def test_identical_filters_give_one_redundant_unit_and_orthogonal_ones_none():
    m = toy()
    w = m[0].weight.data
    w.zero_()
    w[0, 0] = torch.tensor([[1.0, -1, 0], [0, 0, 0], [0, 0, 0]])
    w[1, 0] = w[0, 0]                                                      # duplicate of unit 0
    w[2, 0] = torch.tensor([[0.0, 0, 0], [1, -1, 0], [0, 0, 0]])           # orthogonal (centred)
    w[3, 0] = torch.tensor([[0.0, 0, 0], [0, 0, 0], [1, 0, -1]])
    c = JSPConstraint(**V1).attach(m)
    c.update_redundancy()
    r = c.statistics()["redundancy"]["0"]
    assert sorted(r[:2].tolist()) == pytest.approx([0.0, 1.0], abs=1e-5)  # exactly one of the pair
    assert r[2:].tolist() == pytest.approx([0.0, 0.0], abs=1e-5)


def test_redundancy_goes_to_the_less_active_unit():
    m = toy()
    m[0].weight.data[1] = m[0].weight.data[0]
    c = JSPConstraint().attach(m)
    c.a[:2] = torch.tensor([0.3, 0.9])  # unit 0 is less active: it is the redundant one
    c.update_redundancy()
    r = c.statistics()["redundancy"]["0"]
    assert r[0] == pytest.approx(1.0, abs=1e-5) and r[1] < 0.99


def _all_constraints():
    return [JSPConstraint(lambda_s=0.1, lambda_r=0.1, **V1), GroupLasso(lam=0.1, update="loss"), L1(lam=0.1),
            Slimming(lam=0.1, update="loss")]


@pytest.mark.parametrize("c", _all_constraints(), ids=lambda c: type(c).__name__)
def test_penalties_are_zero_at_zero_weight_and_differentiable(c):
    m = toy()
    c.attach(m)
    if isinstance(c, JSPConstraint):
        c.a.fill_(0.2)
        c.r.fill_(0.5)
    p = c.penalty(m)
    assert p.item() > 0 and p.requires_grad
    m.zero_grad()
    p.backward()
    grads = [q.grad for q in list(m[0].parameters()) + list(m[1].parameters()) if q.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        for q in list(m[0].parameters()) + list(m[1].parameters()):
            q.zero_()
    assert c.penalty(m).item() == 0.0


def test_analytic_gradient_matches_autograd():
    m = UNet(3, 2, width=4, depth=2)
    layers = find_units(m)
    units = UnitSet(layers)
    coefs = torch.rand(units.total)
    x = torch.randn(2, 3, 16, 16)
    grads = []
    for analytic in (True, False):
        m.zero_grad()
        task = m(x).square().mean()
        if analytic:
            pen = weighted_group_norm(units, coefs)[0]
        else:
            pen = sum((c * l.sq_norms('theta').sqrt() / l.dim**0.5).sum() for c, l in zip(units.split(coefs), layers))
        (task + pen).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], rtol=1e-5, atol=1e-7)


def test_counting_ignores_the_penalty_gradient():
    """Counting after (task + penalty).backward() equals counting the task gradient alone."""
    m = toy(mask=(0.0, 1.0, 1.0, 1.0))
    x = torch.randn(4, 1, 8, 8)
    y = (x[:, 0] > 0).long()
    with_pen = JSPConstraint(lambda_s=10.0, lambda_r=10.0, beta=0.5, **V1).attach(m)
    alone = JSPConstraint(lambda_s=0, lambda_r=0, beta=0.5, **V1).attach(m)
    with_pen.a.fill_(0.5)
    alone.a.fill_(0.5)
    m.zero_grad()
    nn.functional.cross_entropy(m(x), y).backward()
    alone.observe(m, 0)
    m.zero_grad()
    (nn.functional.cross_entropy(m(x), y) + with_pen.penalty(m)).backward()
    with_pen.observe(m, 0)
    assert torch.equal(with_pen.a, alone.a)
    assert with_pen.a[0] == 0.25  # the dead unit: its only gradient came from the penalty


def test_zero_lambdas_train_bit_identically_to_no_constraint():
    torch.manual_seed(0)
    base = UNet(3, 2, width=4, depth=2)
    batches = [(torch.randn(2, 3, 16, 16), torch.randint(0, 2, (2, 16, 16))) for _ in range(15)]
    finals = []
    for constraint in (Constraint(), JSPConstraint(lambda_s=0.0, lambda_r=0.0, redund_every=3)):
        m = copy.deepcopy(base)
        constraint.attach(m)
        opt = torch.optim.AdamW(m.parameters(), 1e-2)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        for step, (x, y) in enumerate(batches):
            train_step(m, x, y, Objective(CEDiceLoss(), opt, constraint), LoopSettings(steps=15, lr=1e-2), scaler, step,
                       1e-2)
        finals.append(m.state_dict())
    assert all(torch.equal(v, finals[1][k]) for k, v in finals[0].items())


def test_jsp_switches_off_dead_and_duplicated_units_and_keeps_useful_ones():
    torch.manual_seed(1)
    width = 6
    m = nn.Sequential(nn.Conv2d(1, width, 5, padding=2), nn.BatchNorm2d(width), nn.ReLU(),
                      ChannelMask([1.0] * 5 + [0.0]),     # unit 5 is dead: its output is never used
                      nn.Conv2d(width, 2, 1))
    with torch.no_grad():                                 # unit 1 is an exact duplicate of unit 0
        m[0].weight[1], m[0].bias[1], m[4].weight[:, 1] = m[0].weight[0], m[0].bias[0], m[4].weight[:, 0]
    c = JSPConstraint(lambda_s=0.02, lambda_r=0.1, beta=0.95, redund_every=5, **V1).attach(m)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for step in range(400):
        x = torch.randn(8, 1, 16, 16, generator=g)
        # A target that needs several filters: edges in both directions and the sign.
        y = ((x.roll(1, 2) - x).abs() + (x.roll(1, 3) - x).abs() + x > 1.2).long()[:, 0]
        loss = nn.functional.cross_entropy(m(x), y) + c.penalty(m)
        opt.zero_grad()
        loss.backward()
        c.observe(m, step)
        opt.step()
    n = c.layers[0].norms("theta")
    n = n / n.max()
    assert n[5] < 0.01, n                                 # the dead unit is switched off
    assert min(n[0], n[1]) < 0.05, n                      # one of the duplicated pair is too
    assert max(n[0], n[1]) > 0.2, n                       # ... and the other one stays
    assert (n[2:5] > 0.2).all(), n                        # useful units keep their norms
    assert c.a[5] < 0.01 and (c.a[2:5] > 0.9).all()


def test_statistics_survive_a_checkpoint():
    m = toy(mask=(0.0, 1.0, 1.0, 1.0))
    x = torch.randn(4, 1, 8, 8)
    y = (x[:, 0] > 0).long()
    c = JSPConstraint(beta=0.9, redund_every=2).attach(m)

    def steps(constraint, start, n):
        for step in range(start, start + n):
            m.zero_grad()
            (nn.functional.cross_entropy(m(x), y) + constraint.penalty(m)).backward()
            constraint.observe(m, step)

    steps(c, 0, 5)
    state = c.state_dict()
    resumed = JSPConstraint(beta=0.9, redund_every=2).attach(m)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.a, c.a) and torch.equal(resumed.r, c.r)
    steps(c, 5, 3)
    steps(resumed, 5, 3)
    assert torch.equal(resumed.a, c.a) and torch.equal(resumed.r, c.r)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="lambda_s"):
        JSPConstraint(lambda_s=-1)
    with pytest.raises(ConfigError, match="beta"):
        JSPConstraint(beta=1.0)
    with pytest.raises(ConfigError, match="lambda"):
        GroupLasso(**{"lambda": -0.1})
    with pytest.raises(ConfigError, match="unknown constraint settings"):
        L1(lamda=0.1)
    assert Slimming(**{"lambda": 0.3}).lam == 0.3


def test_unit_report_counts_zeroed_units():
    m = toy()
    c = Constraint(eps=0.01).attach(m)
    with torch.no_grad():
        m[0].weight[2] = 0
        m[1].weight[2] = 0
        m[1].bias[2] = 0
    report = c.unit_report()
    assert report["units_off"] == 0.25 and report["units_total"] == 4
    assert report["units_off_layers"] == {"0": 0.25}
