"""JSP version 2 (method.md s.1-4): statistics that BatchNorm cannot fool, signed chance-corrected
redundancy, the proximal step, constant folding, and importances that tell units apart."""
import pytest
import torch
from torch import nn

from jsp.constraints import GroupLasso, JSPConstraint, Slimming, find_units
from jsp.constraints.composite import V1
from jsp.constraints.redundancy import layer_redundancy
from jsp.pruning import Target, layer_scores, prune


def conv_bn(width=6, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 2, 1))


def counted(model, constraint, x, y):
    """(U,) g_u of the first layer after one backward pass of the task loss."""
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return constraint.counted.grad_norms()[: constraint.layers[0].size].clone()


@pytest.mark.parametrize("v1", [False, True], ids=["v2", "v1"])
def test_scaling_a_filter_under_batchnorm(v1):
    """v2's g_u is on (gamma, beta): a 0.1x filter leaves it unchanged. v1's, on W_u, grows ~10x.
    (BatchNorm's eps, 1e-5 of the variance, is the only scale dependence; it is set to ~0 here.)"""
    m = conv_bn()
    m[1].eps = 1e-12
    c = JSPConstraint(**(V1 if v1 else {})).attach(m)
    x, y = torch.randn(8, 2, 12, 12), torch.randint(0, 2, (8, 12, 12))
    before = counted(m, c, x, y)
    with torch.no_grad():
        m[0].weight[3] *= 0.1
    after = counted(m, c, x, y)
    if v1:
        assert after[3] / before[3] == pytest.approx(10.0, rel=0.05)
    else:
        torch.testing.assert_close(after, before, rtol=1e-4, atol=0)


def test_tau_one_puts_activity_inside_zero_one():
    """tau = 1 (above the layer mean) discriminates: a_u spreads over (0, 1), unlike v1's tau 0.1."""
    m = conv_bn(width=16)
    means = {}
    for name, settings in (("v2", {}), ("v1", V1)):
        c = JSPConstraint(beta=0.9, **settings).attach(m)
        for step in range(60):
            x = torch.randn(8, 2, 12, 12)
            counted(m, c, x, (x[:, 0] > 0).long())
            c.observe(m, step)
        means[name] = c.a.mean().item()
    assert 0.2 < means["v2"] < 0.7 and means["v1"] > 0.85


def test_prox_step_zeroes_units_exactly_and_pruning_them_changes_nothing():
    m = conv_bn().eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-1, 1)
    c = JSPConstraint(lambda_s=1.0, lambda_r=0.0).attach(m)
    c.min_units = 0                                          # no unit protected
    c.a[:] = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])  # units 1 and 3 idle: c_u = lambda_s
    c.step(m, lr=10.0)                                      # shrink 10 / sqrt(2) > any n_u
    assert torch.equal(m[1].weight[[1, 3]], torch.zeros(2)) and torch.equal(m[1].bias[[1, 3]], torch.zeros(2))
    assert (m[1].weight[[0, 2, 4, 5]] == 1).all()          # a_u = 1: no pressure, untouched
    x = torch.randn(3, 2, 12, 12)
    before = m(x)
    removed = prune(m, find_units(m, 2), {"0": torch.ones(6)}, Target("threshold"), 2, 12, (12, 12))
    assert removed == {"0": [1, 3]} and m[0].out_channels == 4
    torch.testing.assert_close(m(x), before, rtol=0, atol=1e-6)


def test_slimming_prox_soft_thresholds_gamma_and_group_lasso_zeroes_whole_units():
    m = conv_bn()
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([0.05, -0.5, 1.0, 0.2, -2.0, 0.01]))
        m[1].bias.fill_(0.3)
    slim = Slimming(lam=1.0).attach(m)
    slim.min_units = 0
    slim.step(m, lr=0.1)
    expected = torch.tensor([0.0, -0.4, 0.9, 0.1, -1.9, 0.0])
    torch.testing.assert_close(m[1].weight.detach(), expected)
    assert (m[1].bias == 0.3).all()                         # beta is not penalised by slimming
    lasso = GroupLasso(lam=1e6).attach(m)
    lasso.step(m, lr=1.0)                                   # min_units = 2: the two largest survive
    assert m[1].weight.nonzero().flatten().tolist() == [2, 4]
    lasso.min_units = 0
    lasso.step(m, lr=1.0)
    assert all((p == 0).all() for p in (m[0].weight, m[1].weight, m[1].bias))


def test_a_constant_unit_is_folded_into_its_consumer():
    """gamma = 0, beta != 0: the unit's output is relu(beta) everywhere; pruning it adds that to
    the consumer's bias, so the output is unchanged (a 1x1 consumer: no padded border)."""
    m = conv_bn().eval()
    with torch.no_grad():
        m[1].weight[2] = 0.0
        m[1].bias[2] = 0.7
    x = torch.randn(3, 2, 12, 12)
    before = m(x)
    removed = prune(m, find_units(m, 2), {"0": torch.ones(6)}, Target("threshold"), 2, 12, (12, 12))
    assert removed == {"0": [2]}
    torch.testing.assert_close(m(x), before, rtol=0, atol=1e-6)


def test_a_constant_unit_before_a_3x3_conv_and_batchnorm_is_folded_away_from_the_border():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                      nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                      nn.Conv2d(4, 2, 1))
    m.train()
    m(torch.randn(8, 2, 12, 12))
    m.eval()
    with torch.no_grad():
        m[1].weight[1], m[1].bias[1] = 0.0, 0.5
    x = torch.randn(2, 2, 12, 12)
    before = m(x)
    prune(m, find_units(m, 2), {l.name: torch.ones(l.size) for l in find_units(m, 2)}, Target("threshold"),
          2, 12, (12, 12))
    assert m[3].in_channels == 3
    torch.testing.assert_close(m(x)[..., 1:-1, 1:-1], before[..., 1:-1, 1:-1], rtol=0, atol=1e-5)


def _filters(rows):
    return torch.stack(rows)


def test_signed_redundancy():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(45, generator=g)
    ones, norms = torch.ones(2), torch.tensor([2.0, 1.0])  # unit 0 ranks first
    r_neg = layer_redundancy(_filters([w, -w]), ones, norms, signed=True, chance=False)
    r_abs = layer_redundancy(_filters([w, -w]), ones, norms, signed=False, chance=False)
    assert r_neg.tolist() == [0.0, 0.0] and r_abs[1] == pytest.approx(1.0)
    r_dup = layer_redundancy(_filters([w, 2 * w + 0.05 * torch.randn(45, generator=g)]), ones, norms)
    assert r_dup[0] == 0 and r_dup[1] > 0.95


@pytest.mark.parametrize("units,dim", [(8, 9), (64, 27), (256, 144)])
def test_chance_correction_puts_random_filters_near_zero(units, dim):
    g = torch.Generator().manual_seed(1)
    f = torch.randn(units, dim, generator=g)
    a, n = torch.ones(units), torch.rand(units, generator=g)
    raw = layer_redundancy(f, a, n, signed=True, chance=False)
    corrected = layer_redundancy(f, a, n, signed=True, chance=True)
    assert corrected.mean() < 0.1 < raw.mean() or units == 8 and corrected.mean() < raw.mean()
    assert corrected.mean() < 0.1


def test_each_importance_ranks_a_hand_built_layer():
    """Five units built so each criterion has one clear loser (lowest score) and they differ."""
    m = conv_bn(width=5).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = torch.randn(5, 2, 3, 3, generator=g)
        w[4] = 1.5 * w[0] + 0.01 * torch.randn(2, 3, 3, generator=g)   # unit 4 duplicates unit 0
        w[2] *= 0.05                                                 # unit 2: tiny filter, large gamma
        m[0].weight.copy_(w)
        m[1].weight.copy_(torch.tensor([1.0, 0.2, 2.0, 1.0, 1.0]))    # unit 1: small gamma
        m[1].bias.zero_()
    layers = find_units(m, 2)
    stats = {"activity": {"0": torch.tensor([1.0, 1.0, 1.0, 0.05, 1.0])}}  # unit 3: idle
    lowest = {name: int(layer_scores(name, layers, stats)["0"].argmin())
              for name in ("l1_norm", "bn_scale", "gradient_count", "redundancy", "correlation", "jsp")}
    assert lowest["l1_norm"] == 2
    assert lowest["bn_scale"] == 1
    assert lowest["gradient_count"] == 3
    assert lowest["redundancy"] == 4 and lowest["correlation"] == 4
    assert lowest["jsp"] in (3, 4)


def test_redundancy_measured_on_feature_maps():
    """measure=features: a unit whose post-BatchNorm map copies another's (its filter is a
    scaled copy) is redundant; one whose map is the negative is not (signed)."""
    m = conv_bn(width=6)
    with torch.no_grad():
        m[0].weight[4] = 3.0 * m[0].weight[0]    # same map after BatchNorm as unit 0
        m[0].weight[5] = -m[0].weight[1]          # the negative map of unit 1
    r = {}
    for sign in ("signed", "abs"):
        c = JSPConstraint(redund_every=2, measure="features", sign=sign).attach(m)
        c.a[:] = torch.tensor([1.0, 1.0, 0.9, 0.9, 0.5, 0.5])  # units 4 and 5 rank below their partners
        for step in range(3):                                 # features captured at step 1, used at 2
            x = torch.randn(4, 2, 16, 16)
            counted(m, c, x, (x[:, 0] > 0).long())
            c.observe(m, step)
        r[sign] = c.statistics()["redundancy"]["0"]
    assert r["signed"][4] > 0.99 and r["abs"][4] > 0.99
    # The negative map is not a copy; what is left is its chance overlap with the other maps
    # (different filters on the same input are not independent), far below a copy's.
    assert r["abs"][5] > 0.99 and r["signed"][5] < 0.5


@pytest.mark.parametrize("threads", [1, 2])
def test_a_budget_run_meets_the_budget_by_threshold_pruning_with_the_function_unchanged(tmp_path, threads):
    """constraint.budget: the controller zeroes units during training until the ones left on
    cost the budget (by its deadline at the latest); pruning then removes exact zeros only, so
    the pruned network computes what the trained one did (its saved model gives the same
    outputs) at no more than the budget. This must not depend on the CPU's summation order, so
    it runs at 1 and 2 threads (1 thread failed on an AVX-512 EPYC before the deadline and the
    exact zeros): what the cut did is recorded, and it removed no live unit."""
    from hydra import compose, initialize_config_dir

    from jsp.cli import CONF_DIR
    from jsp.models.saved import load_model
    from jsp.pipeline import run
    from tests.conftest import TINY_SYNTHETIC

    overrides = [*TINY_SYNTHETIC, "model.width=8", "model.depth=2", "trainer.steps=150", "trainer.batch_size=4",
                 "trainer.val_every=50", "trainer.latency_s=0", "trainer.eval_examples=0", "trainer.device=cpu",
                 "schedule.finetune_steps=0", "constraint.budget=0.3", "constraint.lambda_s=20",
                 "constraint.lambda_r=20"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        metrics = run(cfg, tmp_path)
    finally:
        torch.set_num_threads(was)
    dense, pruned = metrics["dense"], metrics["pruned"]
    assert dense["units_off"] > 0.2                      # the controller switched units off in training
    assert 0.25 < pruned["params_ratio"] <= 0.3          # at most the budget, and close to it
    # The recorded cut: nothing live or constant was removed, and the probe's logits moved by no
    # more than float32 rounding (a consumer that lost zero input channels sums in another order).
    assert pruned["cut_live_units"] == 0 and pruned["cut_constant_units"] == 0
    assert pruned["cut_logit_change"] < 1e-5 and abs(pruned["cut_miou_change"]) < 1e-4
    x = torch.randn(2, 3, 64, 64)
    outputs = [load_model(tmp_path / "checkpoints" / stage, "cpu")[0].eval()(x) for stage in ("dense", "pruned")]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-5)
    assert metrics["pruned"]["auc"] == pytest.approx(dense["auc"], abs=1e-4)


def test_depgraph_zeroes_a_whole_coupled_group_and_ranks_by_its_norm():
    """A large lambda on one group: the producer's channel, its BatchNorm and the consumers'
    input slices all reach zero together; pruning the group then changes nothing."""
    from jsp.constraints import CoupledGroupLasso
    from jsp.models import UNet

    torch.manual_seed(0)
    m = UNet(3, 2, width=4, depth=2).eval()
    c = CoupledGroupLasso(lam=1.0).attach(m, 3, 32)
    g = next(i for i, units in enumerate(c.units_of) if any(name == "inc.3" for name, _, _ in units))
    norms = c.group_norms()[g]
    c.lam, c.min_units = 1e6, 0
    keep = [s for i, s in enumerate(c.groups) if i != g]
    c.groups, saved = [c.groups[g]], c.groups            # shrink only that group
    c.sizes, c.dims = [c.sizes[g]], [c.dims[g]]
    c.step(m, lr=1.0)
    assert all((t.transpose(0, axis)[idx] == 0).all() for t, axis, idx, _ in saved[g])
    assert any((t != 0).any() for s in keep for t, _, _, _ in s)
    stats = CoupledGroupLasso().attach(m, 3, 32).statistics()
    assert (stats["coupled"]["inc.3"] == 0).all() and norms.min() > 0
    x = torch.randn(2, 3, 32, 32)
    before = m(x)
    layers = find_units(m, 3)
    prune(m, layers, layer_scores("depgraph", layers, stats), Target("threshold"), 3, 32, (32, 32))
    assert m.inc[3].out_channels == 1                    # the whole group was zero: min_channels=1 left
    torch.testing.assert_close(m(x), before, rtol=0, atol=1e-5)


def test_cost_aware_pressure_scales_with_what_a_unit_saves():
    """constraint.cost_aware=params: a unit of a wide layer (many weights) is pushed harder
    than one of a narrow layer; macs also weighs the layer's output resolution."""
    from jsp.constraints.units import unit_costs
    from jsp.models import UNet

    m = UNet(3, 2, width=4, depth=2)
    layers = {l.name: l for l in find_units(m, 3)}
    params, macs = (dict(zip([n for n, l in layers.items() for _ in range(l.size)], unit_costs(list(layers.values()), k)))
                    for k in ("params", "macs"))
    assert params["down.1.3"] / params["inc.0"] == pytest.approx((16 * 9) / (3 * 9))
    assert macs["down.1.3"] / macs["inc.0"] == pytest.approx((16 * 9) / (3 * 9) / 16)  # 1/4 the side
    c = JSPConstraint(lambda_s=1.0, lambda_r=0.0, cost_aware="params").attach(m, 3)
    c.min_units, c.a[:] = 0, 0.0
    before = {n: l.norms().clone() for n, l in layers.items()}
    c.step(m, lr=1e-3)
    shrink = {n: float((before[n] - l.norms()).mean()) for n, l in layers.items()}
    assert shrink["down.1.3"] > 4 * shrink["inc.0"] > 0


def test_sqrt_dim_weighting_presses_large_groups_as_hard_as_small_ones():
    """A transposed convolution without BatchNorm has s_u = (W_u, b_u) with hundreds of entries;
    under the spec's 1/sqrt(dim) weight a proximal step barely moves it next to a BatchNorm
    unit (dim 2); under sqrt_dim both lose a comparable share of their norm."""
    from jsp.models import UNet

    share = {}
    for weighting in ("rms", "sqrt_dim"):
        torch.manual_seed(0)
        m = UNet(3, 2, width=8, depth=2)
        c = JSPConstraint(lambda_s=1.0, lambda_r=0.0, weighting=weighting).attach(m, 3)
        c.min_units, c.a[:] = 0, 0.0
        layers = {l.name: l for l in c.layers}
        before = {n: l.norms().clone() for n, l in layers.items()}
        c.step(m, lr=1e-4)
        share[weighting] = {n: float(1 - (layers[n].norms() / before[n]).mean()) for n in ("inc.0", "up.0.up")}
    assert layers["up.0.up"].dim_of("scale") > 100 and layers["inc.0"].dim_of("scale") == 2
    rms, sq = share["rms"], share["sqrt_dim"]
    dim = layers["up.0.up"].dim_of("scale")
    # relative to the BatchNorm unit, sqrt(dim) presses the large group dim / 2 times harder
    ratio = (sq["up.0.up"] / sq["inc.0"]) / (rms["up.0.up"] / rms["inc.0"])
    assert ratio == pytest.approx(dim / 2, rel=0.05)
    assert rms["up.0.up"] < rms["inc.0"] < sq["inc.0"] < sq["up.0.up"]
