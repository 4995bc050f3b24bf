"""The two controls (method.md s.5): uniform (one width factor, trained from scratch) and
scratch (the pruned architecture of a method, re-initialised and trained from scratch)."""
import pytest
import torch
from hydra import compose, initialize_config_dir

from jsp.cli import CONF_DIR
from jsp.constraints import find_units
from jsp.metrics import count_macs, count_params
from jsp.models import SMPModel, UNet
from jsp.models.saved import load_model
from jsp.pipeline import run
from jsp.pruning import Target, layer_widths
from jsp.pruning import shrink_uniformly
from jsp.cutting import reinitialise
from tests.conftest import TINY

MODELS = {"unet": lambda: UNet(3, 2, width=16, depth=3),
          "smp_resnet18": lambda: SMPModel(3, 2, "Unet", "resnet18", decoder_channels=(32, 16, 16, 8, 8))}


@pytest.mark.parametrize("mode,keep", [("params", 0.1), ("macs", 0.25)])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_uniform_meets_the_budget_within_two_percent_with_one_width_factor(name, mode, keep):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    cost = (lambda m: count_params(m)) if mode == "params" else (lambda m: count_macs(m, 3, (64, 64)))
    before, widths = cost(model), layer_widths(model)
    factor = shrink_uniformly(model, find_units(model, 3), Target(mode, keep), 3, 64, (64, 64))
    ratio = cost(model) / before
    assert keep * 0.98 <= ratio <= keep, ratio
    after = layer_widths(model)
    # one factor: every shrunk layer keeps ceil(factor * width) channels (the classifier keeps its classes)
    shrunk = [n for n in widths if after[n] != widths[n]]
    assert len(shrunk) > len(widths) // 2
    assert all(abs(after[n] / widths[n] - factor) <= 1 / widths[n] + 1e-9 for n in shrunk)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_reinitialise_gives_fresh_weights_of_the_same_shapes():
    model = UNet(3, 2, width=4, depth=2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    reinitialise(model)
    assert all(not torch.all(p == 0.5) for p in model.parameters() if p.numel() > 1)


def _run(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, *overrides])
    return run(cfg, tmp_path)


def test_uniform_runs_through_the_pipeline_with_equal_training(tmp_path):
    metrics = _run(tmp_path, "method=uniform", "schedule.keep_params=0.3")
    assert list(metrics) == ["uniform", "final"]
    assert 0.3 * 0.8 <= metrics["final"]["params_ratio"] <= 0.3   # width 4: coarse steps
    # trained from scratch for trainer.steps + schedule.finetune_steps = 6 + 4
    assert metrics["uniform"]["global_step"] == 10


def test_scratch_copies_the_pruned_widths_with_new_weights(tmp_path):
    metrics = _run(tmp_path, "method=l1_norm", "control=scratch", "schedule.keep_params=0.3")
    assert list(metrics) == ["dense", "pruned", "scratch", "final"]
    pruned, _ = load_model(tmp_path / "checkpoints" / "pruned")
    scratch, _ = load_model(tmp_path / "checkpoints" / "scratch")
    assert layer_widths(pruned) == layer_widths(scratch)
    diffs = [(a - b).abs().max() for a, b in zip(pruned.state_dict().values(), scratch.state_dict().values())
             if a.is_floating_point() and a.numel() > 1]
    assert min(diffs) > 0
    assert metrics["scratch"]["global_step"] - metrics["pruned"]["global_step"] == 10
    assert metrics["scratch"]["params"] == metrics["pruned"]["params"]


def test_controls_refuse_what_they_cannot_do(tmp_path):
    from jsp.errors import ConfigError

    with pytest.raises(ConfigError, match="control=uniform needs"):
        _run(tmp_path, "method=uniform", "schedule.keep_params=null")
    with pytest.raises(ConfigError, match="control must be"):
        _run(tmp_path, "control=magic")


def test_scratch_from_a_start_needs_and_trains_control_steps(tmp_path):
    """With init_from, the method's constraint phase starts from the trained network, and the
    scratch network must train as long as the start + the compared run did (control_steps)."""
    from jsp.errors import ConfigError

    start = tmp_path / "start"
    _run(start, "method=dense")
    with pytest.raises(ConfigError, match="schedule.control_steps"):
        _run(tmp_path / "a", "method=l1_norm", "control=scratch", "schedule.keep_params=0.3", f"init_from={start}")
    with pytest.raises(ConfigError, match="control=uniform"):
        _run(tmp_path / "u", "method=uniform", "schedule.keep_params=0.3", f"init_from={start}",
             "schedule.control_steps=7")
    metrics = _run(tmp_path / "b", "method=l1_norm", "control=scratch", "schedule.keep_params=0.3",
                   f"init_from={start}", "schedule.control_steps=7")
    assert list(metrics) == ["dense", "pruned", "scratch", "final"]
    assert metrics["scratch"]["global_step"] - metrics["pruned"]["global_step"] == 7  # not 6 + 4
    assert metrics["final"]["provenance"]["init_from"]["path"] == str(start)


def test_control_steps_sets_the_uniform_controls_training_too(tmp_path):
    metrics = _run(tmp_path, "method=uniform", "schedule.keep_params=0.3", "schedule.control_steps=5")
    assert metrics["uniform"]["global_step"] == 5
