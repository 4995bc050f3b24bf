"""The cut is exact by construction (issue 31): the units a threshold cut removes are exact zeros
before it (the budget deadline, the hold, the stage-end snap), whatever the CPU's arithmetic."""
import pytest
import torch

from jsp.constraints import find_units
from jsp.constraints.budget import BudgetController
from jsp.constraints.units import snap_off
from jsp.errors import ConfigError
from jsp.models import UNet
from jsp.pruning import Target, cost_if_pruned, prune, zero_to_target
from jsp.pruning.schedule import Schedule


def controller(actual, calls, deadline=0.9, steps=100):
    return BudgetController(0.3, cost=lambda step: 0.5, total_steps=steps, every=10, actual=lambda: actual,
                            deadline=deadline, enforce=lambda: calls.append(1))


def test_the_deadline_forces_a_budget_not_met_once_and_leaves_one_met_alone():
    calls = []
    c = controller(actual=0.5, calls=calls)
    for step in range(100):
        c.update(step)
    assert calls == [1] and c.met and c.deadline_step == 90      # forced once, at 90 % of training
    calls = []
    c = controller(actual=0.29, calls=calls)
    for step in range(100):
        c.update(step)
    assert calls == [] and c.met                                # met by itself at the first check
    calls = []
    c = controller(actual=0.5, calls=calls, deadline=None)
    for step in range(100):
        c.update(step)
    assert calls == [] and not c.met                            # no deadline: never forced
    assert controller(0.5, [], steps=10).deadline_step == 8      # at least one step is left to hold
    with pytest.raises(ConfigError, match="budget_deadline"):
        controller(0.5, [], deadline=1.5)


def tiny_unet():
    torch.manual_seed(0)
    m = UNet(3, 2, width=4, depth=2).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
        for layer in find_units(m, 3, 32):
            if layer.normalised:
                layer.bn.weight.uniform_(0.5, 1.5)     # no unit off by chance
    return m, find_units(m, 3, 32)


def test_snap_makes_small_units_exact_zeros_and_small_gammas_exact_constants():
    m, layers = tiny_unet()
    bn = layers[0].bn
    with torch.no_grad():
        bn.weight[0], bn.bias[0] = 1e-6, 1e-6           # scale tiny: output ~0
        bn.weight[1], bn.bias[1] = 1e-6, 0.7            # gamma tiny: output ~0.7, a constant
    assert snap_off(layers, eps=0.01) == (1, 1)
    assert bn.weight[0] == 0 and bn.bias[0] == 0
    assert bn.weight[1] == 0 and float(bn.bias.detach()[1]) == pytest.approx(0.7)
    assert snap_off(layers, eps=0.01) == (0, 0)         # idempotent: a resumed stage end changes nothing


def test_zero_to_target_zeroes_what_the_cut_then_removes_without_changing_the_function():
    m, layers = tiny_unet()
    scores = {l.name: torch.rand(l.size) for l in layers}
    zeroed = zero_to_target(m, layers, scores, Target("params", 0.4), 3, 32, (32, 32))
    assert zeroed > 0
    assert cost_if_pruned(m, layers, 0.01, "params", 3, 32, (32, 32)) <= 0.4   # the zeros alone meet it
    x = torch.randn(2, 3, 32, 32)
    before = m(x)
    prune(m, layers, scores, Target("threshold"), 3, 32, (32, 32))
    torch.testing.assert_close(m(x), before, rtol=0, atol=1e-5)


def test_only_a_train_stage_before_a_threshold_cut_snaps():
    budget = Schedule().stages(100, budget=0.3)
    assert [(s.name, s.snap) for s in budget] == [("dense", True), ("pruned", False), ("finetuned", False)]
    target = Schedule(keep_params=0.5).stages(100)
    assert not any(s.snap for s in target)               # a target cut removes live units anyway
    iterative = Schedule(rounds=2).stages(100)
    assert [s.name for s in iterative if s.snap] == ["dense", "finetuned_1"]


def test_slimming_measures_units_without_a_batchnorm_by_their_scale_not_as_zero():
    """bn_scale (slimming's importance) ranks a unit by |gamma_u|, and a unit with no BatchNorm
    (the UNet's transposed convolutions) by n_u on its scale (W_u, b_u). It used to take the
    proximal step's group, gamma, which such a unit lacks: every one scored 0 and went first."""
    from jsp.constraints import Slimming
    from jsp.pruning import layer_scores

    m, layers = tiny_unet()
    c = Slimming(lam=1.0).attach(m, 3, 32)
    scores = layer_scores("bn_scale", c.layers, {}, kind=c.measured_on)
    bare = [l.name for l in c.layers if not l.normalised]
    assert bare and all(scores[name].min() > 0.05 for name in bare)


def test_measuring_the_budget_leaves_a_training_model_in_training_mode():
    """Torch-Pruning's trace puts a model in eval mode. The budget controller measures the model
    it is training every 10 steps; before this was restored, every budget run trained on from
    its first check with BatchNorm frozen on running statistics, and a resumed run (which
    calls model.train()) went another way."""
    m, layers = tiny_unet()
    m.train()
    assert cost_if_pruned(m, layers, 0.01, "params", 3, 32, (32, 32)) == 1.0
    assert m.training and all(mod.training for mod in m.modules())
