"""schedule.round_to=K (issue 30): kept widths are multiples of K (or a group's whole width) on
every pruning path, and the budget is still met within 2 %: a parameter or MAC target, the
budget controller's threshold-then-target cut, the uniform control; a budget that rounding
makes unreachable is refused before training."""
import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from jsp.cli import CONF_DIR
from jsp.constraints import find_units
from jsp.errors import ConfigError, JSPError
from jsp.metrics import count_macs, count_params
from jsp.models import UNet, mobilenetv3
from jsp.pipeline import run
from jsp.pruning import Target, layer_scores
from jsp.pruning import prune as prune_model
from tests.conftest import TINY_SYNTHETIC

MODELS = {"unet": lambda: UNet(3, 2, width=16, depth=3), "mobilenetv3_small": lambda: mobilenetv3(3, 2, "small")}
SIZE = (96, 96)


def cost(model, mode):
    return count_params(model) if mode == "params" else count_macs(model, 3, SIZE)


def rounded(model, k):
    """Every unit layer's width is a multiple of k or its original width (a group narrower than k)."""
    return all(layer.size % k == 0 for layer in find_units(model, 3))


@pytest.mark.parametrize("mode", ["params", "macs"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_to_8_gives_multiples_of_8_and_meets_the_target_within_two_percent(name, mode):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    dense, layers = cost(model, mode), find_units(model, 3)
    plain = MODELS[name]().eval()  # without rounding the same cut leaves widths that are not multiples of 8
    plain_layers = find_units(plain, 3)
    prune_model(plain, plain_layers, layer_scores("l1_norm", plain_layers, {}), Target(mode, 0.3), 3, 64, SIZE)
    assert not rounded(plain, 8)
    prune_model(model, layers, layer_scores("l1_norm", layers, {}), Target(mode, 0.3), 3, 64, SIZE, round_to=8)
    kept = cost(model, mode) / dense
    assert rounded(model, 8), [layer.size for layer in find_units(model, 3)]
    assert 0.98 * 0.3 <= kept <= 0.3, kept
    assert model(torch.zeros(1, 3, *SIZE)).shape == (1, 2, *SIZE)


def test_a_target_rounding_cannot_reach_is_refused_with_the_smallest_reachable():
    model = UNet(3, 2, width=8, depth=3).eval()
    layers = find_units(model, 3)
    with pytest.raises(JSPError, match=r"smallest network these settings allow keeps 0\.\d+ \(schedule.round_to=8"):
        prune_model(model, layers, layer_scores("l1_norm", layers, {}), Target("macs", 0.05), 3, 64, SIZE,
                    round_to=8)


TINY = [*TINY_SYNTHETIC, "model.width=8", "model.depth=2", "trainer.steps=40", "trainer.batch_size=4",
        "trainer.val_every=20", "trainer.warmup_steps=4", "schedule.finetune_steps=4", "trainer.latency_s=0",
        "trainer.eval_examples=0", "trainer.device=cpu", "schedule.round_to=4"]


def go(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, *overrides])
    run(cfg, tmp_path / "run")
    from jsp.models.saved import load_model

    model, _ = load_model(tmp_path / "run" / "checkpoints" / "final", "cpu")
    return json.loads((tmp_path / "run" / "metrics.json").read_text()), model


@pytest.mark.parametrize("overrides", [
    ["constraint.budget=0.3"],                                        # the budget controller, then the cut
    ["method=l1_norm", "schedule.keep_params=0.3"],                   # an importance to a parameter target
    ["method=taylor", "schedule.keep_macs=0.4"],                      # to a MAC target
    ["method=uniform", "schedule.keep_params=0.3"],                   # the uniform control
], ids=["budget", "keep_params", "keep_macs", "uniform"])
def test_every_pruning_path_rounds_and_meets_its_budget(tmp_path, overrides):
    metrics, model = go(tmp_path, *overrides)
    final = metrics["final"]
    ratio, target = ((final["macs_ratio"], 0.4) if "keep_macs" in overrides[-1] else (final["params_ratio"], 0.3))
    assert rounded(model, 4), [layer.size for layer in find_units(model, 3)]
    assert final["params"] < metrics["dense"]["params"] if "uniform" not in overrides[0] else True
    assert ratio <= target + 1e-9 and ratio >= target - (0.02 if "uniform" not in overrides[0] else 0.1), ratio
    if overrides == ["constraint.budget=0.3"]:  # the controller steered to the rounded cost: nothing live cut
        assert metrics["pruned"]["cut_live_units"] == 0


def test_an_unreachable_budget_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="below what this model can become with schedule.round_to=8"):
        go(tmp_path, "constraint.budget=0.01", "schedule.round_to=8")
    assert not (tmp_path / "run" / "metrics.json").exists()
