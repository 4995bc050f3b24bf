"""Structured pruning: budgets met, coupled channels removed together, function preserved."""
import pytest
import torch

from jsp.constraints import CoupledGroupLasso, JSPConstraint, find_units
from jsp.errors import ConfigError, JSPError
from jsp.metrics import count_macs, count_params
from jsp.models import SMPModel, UNet, mobilenetv3
from jsp.models.saved import load_model, save_model
from jsp.engine.losses import CEDiceLoss
from jsp.pruning import IMPORTANCES, Schedule, Target, layer_scores, taylor_statistic
from jsp.pruning import prune as prune_model


def prune(model, target, importance="l1_norm", stats=None, min_channels=1, round_to=1, size=(64, 64), eps=0.01):
    layers = find_units(model, 3)
    scores = layer_scores(importance, layers, stats or {})
    return prune_model(model, layers, scores, target, 3, 64, size, eps, min_channels, round_to)


MODELS = {
    "unet": lambda: UNet(3, 2, width=8, depth=3),
    "mobilenetv3": lambda: mobilenetv3(3, 2, "large", decoder_channels=(32, 16, 16, 8, 8)),
    "mobilenetv3_small": lambda: mobilenetv3(3, 2, "small", decoder_channels=(32, 16, 16, 8, 8)),
    "smp_resnet18": lambda: SMPModel(3, 2, "Unet", "resnet18", decoder_channels=(32, 16, 16, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_keep_params_is_met_within_two_percent(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    dense = count_params(model)
    prune(model, Target("params", 0.25))
    assert count_params(model) / dense == pytest.approx(0.25, abs=0.02)
    out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 2, 64, 64)  # the classes survive


@pytest.mark.parametrize("name", sorted(MODELS))
def test_budget_probes_on_one_graph_cost_what_a_fresh_surgery_costs(name):
    """The budget search prunes one meta copy and puts it back between probes; every probe,
    in any order, must cost exactly what surgery on a fresh copy of the model costs."""
    from jsp.pruning import ChannelGroups
    from jsp.pruning.surgery import MetaProbe, meta_copy, model_cost, remove_channels

    torch.manual_seed(0)
    model = MODELS[name]()
    layers = find_units(model, 3)
    groups = ChannelGroups(model, layers, {l.name: torch.rand(l.size) for l in layers}, 3, 64)
    probe = MetaProbe(model, layers, groups.example_shape, 3, (96, 80))
    ks = [groups.total() // 2, 5, groups.total() - 1, 0, groups.total() // 4, groups.total() // 2]
    for mode in ("params", "macs"):
        probed = [probe.cost(groups.select(k), mode) for k in ks]
        fresh = []
        for k in ks:
            clone, mapped = meta_copy(model, layers)
            remove_channels(clone, mapped, groups.select(k), groups.example_shape, fold=False)
            fresh.append(model_cost(clone, mode, 3, (96, 80)))
        assert probed == fresh and len(set(probed)) == 5, (mode, probed, fresh)
    assert count_params(probe.clone) == count_params(model)  # put back whole


def test_keep_macs_is_met():
    model = UNet(3, 2, width=8, depth=3).eval()
    dense = count_macs(model, 3, (64, 64))
    prune(model, Target("macs", 0.5))
    assert count_macs(model, 3, (64, 64)) / dense == pytest.approx(0.5, abs=0.02)


def test_classifier_is_never_pruned():
    model = UNet(3, 5, width=4, depth=2).eval()
    prune(model, Target("params", 0.05))
    assert model.classifier.out_channels == 5
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5, 32, 32)


def test_min_channels_and_rounding():
    model = UNet(3, 2, width=8, depth=2).eval()
    dense = count_params(model)
    prune(model, Target("params", 0.08), min_channels=3, round_to=2)  # the floors allow 0.065 at least
    assert 0.98 * 0.08 <= count_params(model) / dense <= 0.08
    for layer in find_units(model, 3):
        assert layer.size >= 3 and layer.size % 2 == 0, (layer.name, layer.size)


def _zero_units(model, layer_name, idxs):
    layers = {l.name: l for l in find_units(model, 3)}
    layer = layers[layer_name]
    with torch.no_grad():
        w = layer.conv.weight
        w.index_fill_(layer.out_dim, torch.tensor(idxs), 0.0)
        for p in layer.extras():
            p[idxs] = 0.0


def test_pruning_zeroed_units_keeps_the_function():
    torch.manual_seed(0)
    model = UNet(3, 2, width=8, depth=2)
    model.train()
    model(torch.randn(4, 3, 32, 32))  # give BatchNorm non-trivial running statistics
    model.eval()
    _zero_units(model, "inc.0", [1, 5])
    _zero_units(model, "down.1.3", [0, 3, 7, 20])     # encoder output, coupled to a transposed conv
    _zero_units(model, "up.0.up", [2, 9])             # transposed conv, feeds a concatenation
    _zero_units(model, "up.1.conv.0", [4])
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    dense = count_params(model)
    removed = prune(model, Target("threshold"), eps=1e-6)
    assert removed["inc.0"] == [1, 5] and removed["up.0.up"] == [2, 9]
    assert count_params(model) < dense
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_every_importance_scores_and_prunes(importance):
    model = UNet(3, 2, width=4, depth=2).eval()
    c = JSPConstraint().attach(model)
    stats = c.statistics()
    batches = [(torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32)))]
    stats.update(taylor_statistic(model, c.layers, batches, CEDiceLoss(), torch.device("cpu")))
    stats.update(CoupledGroupLasso().attach(model, 3, 32).statistics())
    model.eval()
    scores = layer_scores(importance, c.layers, stats)
    assert all(s.shape == (l.size,) and s.max() <= 1.0 + 1e-6 for s, l in zip(scores.values(), c.layers))
    prune(model, Target("params", 0.5), importance=importance, stats=stats)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_jsp_importance_prefers_active_distinct_units():
    model = UNet(3, 2, width=4, depth=2).eval()
    c = JSPConstraint().attach(model)
    with torch.no_grad():  # BatchNorm's default gamma = 1, beta = 0: every n_u is equal
        model.inc[1].weight.uniform_(0.9, 1.1)
    c.a[:4] = torch.tensor([1.0, 0.1, 1.0, 1.0])   # inc.0 unit 1 is idle
    s = layer_scores("jsp", c.layers, c.statistics())["inc.0"]
    assert s.argmin() == 1


def test_gradient_count_importance_needs_statistics():
    model = UNet(3, 2, width=4, depth=2)
    with pytest.raises(ConfigError, match="gradient_count needs"):
        layer_scores("gradient_count", find_units(model, 3), {})
    with pytest.raises(ConfigError, match="importance"):
        layer_scores("magic", find_units(model, 3), {})


def test_statistics_follow_the_surgery():
    model = UNet(3, 2, width=4, depth=2).eval()
    c = JSPConstraint().attach(model, 3)
    c.a.copy_(torch.linspace(0, 1, len(c.a)))
    before = c.statistics()["activity"]["inc.0"].clone()
    _zero_units(model, "inc.0", [0, 2])
    removed = prune(model, Target("threshold"), eps=1e-6)
    c.after_surgery(model, removed)
    assert torch.equal(c.statistics()["activity"]["inc.0"], before[[1, 3]])


def test_iterative_schedule_keeps_geometric_fractions():
    s = Schedule(rounds=3, keep_params=0.125)
    keeps = [k for _, k in s.targets()]
    assert keeps == pytest.approx([0.5, 0.25, 0.125])
    assert [t.keep for t, _ in s.targets()] == pytest.approx([0.5, 0.5, 0.5])  # each relative to the last
    assert Schedule(rounds=0).targets() == []
    with pytest.raises(ConfigError, match="keep_params"):
        Schedule(keep_params=1.5)
    with pytest.raises(ConfigError, match="importance"):
        Schedule(importance="magic")


def test_schedule_yields_the_stages_of_a_run():
    """Each stage's one name, its kind, steps, lr, seed offset and TensorBoard prefixes."""
    it = Schedule(rounds=2, keep_params=0.25, finetune_steps=50, finetune_lr_scale=0.5, constraint_scale=0.1)
    plan = it.stages(train_steps=200)
    assert [(s.name, s.kind, s.steps) for s in plan] == [
        ("dense", "train", 200), ("pruned_1", "prune", 0), ("finetuned_1", "train", 50),
        ("pruned_2", "prune", 0), ("finetuned_2", "train", 50)]
    dense, pruned, tuned = plan[:3]
    assert dense.main and not tuned.main and tuned.validate_start and not dense.validate_start
    assert (tuned.lr_scale, tuned.constraint_scale, tuned.seed_offset, plan[4].seed_offset) == (0.5, 0.1, 1, 2)
    assert [pruned.target.keep, plan[3].target.keep] == pytest.approx([0.5, 0.5])
    assert [dense.tag(w) for w in ("train", "val", "test")] == ["train", "val", "test"]
    assert [tuned.tag(w) for w in ("train", "val", "test")] == ["finetune_1", "finetune_1/val", "finetune_1/test"]
    assert pruned.tag("") == "prune_1" and pruned.tag("test") == "prune_1/test"
    # A constraint budget is the one-shot target by itself (None: the budget, met by pruning).
    assert [s.target for s in Schedule().stages(100, budget=0.1) if s.kind == "prune"] == [None]
    assert [s.name for s in Schedule(rounds=0).stages(100)] == ["dense"]
    assert [s.name for s in Schedule(finetune_steps=0).stages(100)] == ["dense", "pruned"]
    # The controls: equal training (train + fine-tune steps) from fresh weights.
    uniform, = Schedule(keep_params=0.1, finetune_steps=30).stages(100, control="uniform")
    assert (uniform.name, uniform.steps, uniform.reset, uniform.target.keep, uniform.main) == \
        ("uniform", 130, "uniform", 0.1, True)
    scratch = Schedule(keep_params=0.1, finetune_steps=30).stages(100, control="scratch")[-1]
    assert (scratch.name, scratch.steps, scratch.reset, scratch.constraint_scale, scratch.seed_offset) == \
        ("scratch", 130, "reinit", 0.0, 1)


def test_saved_pruned_model_reloads_without_pickle(tmp_path):
    torch.manual_seed(0)
    builder = {"name": "unet", "args": {"in_channels": 3, "num_classes": 2, "width": 8, "depth": 2}}
    model = UNet(3, 2, width=8, depth=2).eval()
    prune(model, Target("params", 0.3))
    save_model(tmp_path / "m", model, builder, stage="pruned")
    loaded, meta = load_model(tmp_path / "m")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    assert meta["stage"] == "pruned" and count_params(loaded) == count_params(model)


def test_saved_model_errors_are_clear(tmp_path):
    with pytest.raises(JSPError, match="not a saved jsp model"):
        load_model(tmp_path)
    model = UNet(3, 2, width=4, depth=2)
    with pytest.raises(JSPError, match="architecture.name"):  # jsp never writes what it would refuse to load
        save_model(tmp_path / "m", model, {"name": "os.system", "args": {"command": "echo hi"}})
    save_model(tmp_path / "t", model, {"name": "unet", "args": {"width": 4, "depth": 2}})
    path = tmp_path / "t" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(JSPError, match="cannot read weights"):
        load_model(tmp_path / "t")


def test_loading_a_saved_model_executes_no_pickle(tmp_path, monkeypatch):
    import pickle

    model = UNet(3, 2, width=4, depth=2).eval()
    save_model(tmp_path / "m", model, {"name": "unet", "args": {"width": 4, "depth": 2}})

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded, _ = load_model(tmp_path / "m")
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(loaded(x), model(x))
