"""schedule.keep_latency (issue 30): the latency table is cached, reused, and invalidated when
the device description (threads) or the image size changes; interpolation between grid widths;
the search meets a latency target within 5 % of a deterministic fake "measured" latency that the
table alone mispredicts; latency-aware allocation prunes where a channel saves most time; the
pipeline runs with keep_latency and with the budget controller on latency. Timing itself is a
benchmark (scripts/bench_latency.py), never asserted here."""
import json
import logging
import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from jsp.cli import CONF_DIR
from jsp.constraints import find_units
from jsp.errors import ConfigError
from jsp.models import UNet
from jsp.pipeline import run
from jsp.runs import describe
from jsp.pruning import Pruner, PruneSettings, Schedule, Target
from jsp.pruning.latency import ConvShape, LatencyTable, conv_shapes
from tests.conftest import TINY_SYNTHETIC

SIZE = (64, 64)


class FakeLatency(LatencyTable):
    """Deterministic timings: a convolution costs its MACs (1e-6 ms each) plus a launch cost
    that steps every 8 output channels; a whole model costs its convolutions plus what the table
    does not see (elementwise work on every output pixel and a fixed overhead)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timed = 0

    def time_conv(self, s: ConvShape) -> float:
        self.timed += 1
        return self.true_conv(s)

    @staticmethod
    def true_conv(s: ConvShape) -> float:
        out = (s.height // s.stride[0]) * (s.width // s.stride[1]) * (4 if s.transposed else 1)
        macs = s.cin * (1 if s.depthwise else s.cout) * math.prod(s.kernel) * out
        return 1e-6 * macs + 0.02 * math.ceil(s.cout / 8)

    def time_blocks(self, models, in_channels, size, blocks=15):
        return [[self.truth(m, in_channels, size)] * 3 for m in models]

    def truth(self, model, in_channels, size):
        shapes = conv_shapes(model, in_channels, size)
        return sum(self.true_conv(s) + 4e-5 * s.cout * s.height * s.width for s in shapes) + 3.0


def unet():
    torch.manual_seed(0)
    return UNet(3, 2, width=8, depth=3).eval()


def test_the_table_is_cached_reused_and_invalidated_by_threads_and_image_size(tmp_path):
    model = unet()
    first = FakeLatency("cpu", tmp_path)
    ms = first.predict(model, 3, SIZE)
    assert first.timed > 0 and len(list(tmp_path.glob("*.json"))) == 1
    again = FakeLatency("cpu", tmp_path)  # a new process on the same machine: read, not timed
    assert again.predict(model, 3, SIZE) == ms and again.timed == 0
    bigger = FakeLatency("cpu", tmp_path)  # another image size: other geometries, timed
    assert bigger.predict(model, 3, (128, 128)) > ms and bigger.timed > 0
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)  # another thread count: another table
        other = FakeLatency("cpu", tmp_path)
        other.predict(model, 3, SIZE)
        assert other.timed == first.timed and other.description["threads"] == threads + 1
    finally:
        torch.set_num_threads(threads)
    assert len(list(tmp_path.glob("*.json"))) == 2
    path = again.path  # a file whose description differs (another device under that name) is not used
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "description": {**saved["description"], "name": "another cpu"}}))
    stale = FakeLatency("cpu", tmp_path)
    stale.predict(model, 3, SIZE)
    assert stale.timed == first.timed


def test_widths_between_grid_points_are_interpolated_linearly(tmp_path):
    table = FakeLatency("cpu")
    shape = ConvShape(False, (3, 3), (1, 1), (1, 1), (1, 1), (0, 0), False, 32, 32, 20, 40)
    at = lambda cin, cout: table.true_conv(ConvShape(**{**shape.__dict__, "cin": cin, "cout": cout}))  # noqa: E731
    # 20 lies between grid widths 16 and 24 (weights 1/2, 1/2), 40 between 32 and 48 (1/2, 1/2)
    expected = sum(at(a, b) for a in (16, 24) for b in (32, 48)) / 4
    assert table.conv_ms(shape) == pytest.approx(expected)
    assert table.timed == 4
    on_grid = ConvShape(**{**shape.__dict__, "cin": 16, "cout": 32})
    assert table.conv_ms(on_grid) == pytest.approx(at(16, 32))


@pytest.mark.parametrize("round_to", [1, 4])
@pytest.mark.parametrize("cost_aware", [None, "latency"])
def test_a_latency_target_is_met_within_five_percent_of_the_measured_latency(round_to, cost_aware):
    model, table = unet(), FakeLatency("cpu")
    layers = find_units(model, 3)
    pruner = Pruner(model, layers, 3, SIZE, PruneSettings(round_to=round_to, cost_aware=cost_aware), latency=table)
    dense_true, dense_table = table.truth(model, 3, SIZE), table.predict(model, 3, SIZE)
    scores = {l.name: torch.rand(l.size) for l in layers}
    pruner.prune(scores, Target("latency", 0.5))
    kept_true = table.truth(model, 3, SIZE) / dense_true
    assert abs(kept_true - 0.5) <= 0.05 * 0.5, kept_true
    assert pruner.measured_keep == pytest.approx(kept_true)
    # the table alone mispredicts (it misses the elementwise work): the timing's correction mattered
    assert abs(table.predict(model, 3, SIZE) / dense_table - 0.5) > 0.05 * 0.5
    assert all(l.size % round_to == 0 for l in find_units(model, 3))
    assert model(torch.zeros(1, 3, *SIZE)).shape == (1, 2, *SIZE)


class CurvedLatency(FakeLatency):
    """A measured fraction far from the table's line: each model after the first times as the
    first times its true fraction cubed (kernels that run much faster below some width), the
    kind of curve on which a proportional correction jumps between too little and too much."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cuts_timed = 0

    def time_blocks(self, models, in_channels, size, blocks=15):
        ref = self.truth(models[0], in_channels, size)
        self.cuts_timed += len(models) - 1
        return [[ref * (self.truth(m, in_channels, size) / ref) ** 3] * 3 for m in models]


@pytest.mark.parametrize("goal", [0.3, 0.5, 0.8])
def test_the_search_brackets_the_measured_fraction_where_the_table_is_far_off(goal):
    model, table = unet(), CurvedLatency("cpu")
    layers = find_units(model, 3)
    pruner = Pruner(model, layers, 3, SIZE, PruneSettings(cost_aware="latency", min_channels=2), latency=table)
    dense = table.truth(model, 3, SIZE)
    torch.manual_seed(1)
    pruner.prune({l.name: torch.rand(l.size) for l in layers}, Target("latency", goal))
    measured = (table.truth(model, 3, SIZE) / dense) ** 3
    assert abs(measured - goal) <= 0.05 * goal, measured
    assert pruner.measured_keep == pytest.approx(measured)
    assert 1 <= table.cuts_timed <= 9  # at most 8 candidates timed, and the one kept confirmed


def test_a_target_can_be_a_fraction_of_another_networks_latency():
    # a budget run: the threshold cut left 0.7 of the dense latency; the search goes on to 0.4 of the dense one
    dense, table = unet(), CurvedLatency("cpu")
    model = unet()
    layers = find_units(model, 3)
    Pruner(model, layers, 3, SIZE, PruneSettings(min_channels=2), latency=table).prune(
        {l.name: torch.rand(l.size) for l in layers}, Target("latency", 0.7))
    now = (table.truth(model, 3, SIZE) / table.truth(dense, 3, SIZE)) ** 3
    layers = find_units(model, 3)
    pruner = Pruner(model, layers, 3, SIZE, PruneSettings(min_channels=2), latency=table)
    pruner.latency_reference = (dense, now)
    pruner.prune({l.name: torch.rand(l.size) for l in layers}, Target("latency", 0.4))
    measured = (table.truth(model, 3, SIZE) / table.truth(dense, 3, SIZE)) ** 3
    assert abs(now - 0.7) <= 0.035 and abs(measured - 0.4) <= 0.05 * 0.4, (now, measured)
    assert pruner.measured_keep == pytest.approx(measured)


def test_an_unreachable_latency_target_keeps_the_closest_cut_and_warns(caplog):
    model, table = unet(), FakeLatency("cpu")
    layers = find_units(model, 3)
    pruner = Pruner(model, layers, 3, SIZE, PruneSettings(min_channels=4), latency=table)
    dense, floor = table.truth(model, 3, SIZE), pruner.smallest("latency")
    with caplog.at_level(logging.WARNING, logger="jsp"):
        pruner.prune({l.name: torch.rand(l.size) for l in layers}, Target("latency", floor / 2))
    assert "closest cut found" in caplog.text
    assert all(l.size == 4 for l in find_units(model, 3))  # the smallest cut: every group at its floor
    assert pruner.measured_keep == pytest.approx(table.truth(model, 3, SIZE) / dense)


def test_a_timing_keeps_the_paired_ratio_of_each_block():
    from jsp.pruning.latency import Timing

    # the machine slows down 3x over the blocks, and one block of the cut is disturbed
    timing = Timing.of([[100.0, 200.0, 300.0, 300.0], [50.0, 100.0, 150.0, 600.0]])
    assert timing.ms == [250.0, 125.0]
    assert timing.keep == [1.0, 0.5]


def test_calibration_puts_the_tables_predictions_in_measured_milliseconds():
    model, table = unet(), FakeLatency("cpu")
    layers = find_units(model, 3)
    pruner = Pruner(model, layers, 3, SIZE, PruneSettings(min_channels=2), latency=table)
    groups = pruner.groups()
    smallest = pruner.probe.materialise(groups.select(groups.total(), 2), "cpu")
    middle = pruner.probe.materialise(groups.select(groups.total() // 2, 2), "cpu")
    raw = table.predict(middle, 3, SIZE)
    ms = table.calibrate([model, smallest], 3, SIZE)
    assert ms == pytest.approx([table.truth(model, 3, SIZE), table.truth(smallest, 3, SIZE)])
    assert table.predict(model, 3, SIZE) == pytest.approx(ms[0]) and table.predict(smallest, 3, SIZE) == pytest.approx(ms[1])
    truth = table.truth(middle, 3, SIZE)  # a network between the two: the line is far closer than the sum
    assert abs(table.predict(middle, 3, SIZE) - truth) < 0.25 * abs(raw - truth)


def test_a_budget_run_refits_the_line_through_the_cut_its_controller_is_heading_for():
    from types import SimpleNamespace

    from jsp.cutting import calibrate_latency

    model, table = unet(), FakeLatency("cpu")
    layers = find_units(model, 3)
    for layer in layers[1:5]:  # units the constraint has switched off: half of four layers
        layer.zero_(torch.arange(layer.size) < layer.size // 2)
    state = SimpleNamespace(schedule=Schedule(budget_on="latency"), latency=table, c_in=3,
                            data=SimpleNamespace(full_size=SIZE), dense_cost={})
    pruner = Pruner(model, layers, 3, SIZE, PruneSettings(), latency=table)
    calibrate_latency(state, pruner)
    cut = pruner.probe.materialise(pruner.groups().select(None), "cpu")
    assert state.dense_cost["latency"] == pytest.approx(table.truth(model, 3, SIZE))
    assert table.predict(cut, 3, SIZE) == pytest.approx(table.truth(cut, 3, SIZE))  # the line passes through it
    assert pruner.cost_if_pruned("latency") == pytest.approx(table.truth(cut, 3, SIZE) / table.truth(model, 3, SIZE))


def test_latency_aware_allocation_prunes_where_a_channel_saves_most_time():
    model, table = unet(), FakeLatency("cpu")
    layers = find_units(model, 3)
    pruner = Pruner(model, layers, 3, SIZE, PruneSettings(cost_aware="latency"), latency=table)
    costs = pruner.latency_costs()
    groups = pruner.groups()  # equal importance: the ranking is by time saved alone
    chosen = groups.select(groups.total() // 4)
    removed = [len(c) / n for c, n in zip(chosen, groups.sizes)]
    dearest, cheapest = max(range(len(costs)), key=costs.__getitem__), min(range(len(costs)), key=costs.__getitem__)
    assert costs[dearest] > 2 * costs[cheapest] > 0
    assert removed[dearest] > 0.5 and removed[cheapest] == 0


def test_schedule_latency_settings():
    s = Schedule(keep_latency=0.5)
    assert s.mode == "latency" and s.cost_aware == "latency" and s.uses_latency and s.keep_at(1) == 0.5
    assert Schedule(keep_latency=0.5, cost_aware="none").cost_aware is None
    assert Schedule(budget_on="latency").cost_aware == "latency"
    # a penalty's controller aims above a latency budget (the cut's search does the rest), elsewhere at it
    assert Schedule(budget_on="latency").controller_budget(0.5) == pytest.approx(0.575)
    assert Schedule(budget_on="latency", latency_margin=0.5).controller_budget(0.9) == pytest.approx(0.95)
    assert Schedule(budget_on="latency", latency_margin=0).controller_budget(0.5) == 0.5
    assert Schedule(budget_on="params").controller_budget(0.5) == 0.5
    with pytest.raises(ConfigError, match="latency_margin"):
        Schedule(latency_margin=1.0)
    assert not Schedule(keep_params=0.5).uses_latency
    with pytest.raises(ConfigError, match="not several"):
        Schedule(keep_params=0.5, keep_latency=0.5)
    with pytest.raises(ConfigError, match="keep_latency must be in"):
        Schedule(keep_latency=1.5)


TINY = [*TINY_SYNTHETIC, "model.width=8", "model.depth=2", "trainer.steps=30", "trainer.batch_size=4",
        "trainer.val_every=15", "trainer.warmup_steps=4", "schedule.finetune_steps=4", "trainer.latency_s=0",
        "trainer.eval_examples=0", "trainer.device=cpu"]


@pytest.mark.parametrize("overrides", [
    ["method=taylor", "schedule.keep_latency=0.6"],                   # an importance to a latency target
    ["constraint.budget=0.6", "schedule.budget_on=latency"],          # the budget controller on latency
], ids=["keep_latency", "budget_on"])
def test_runs_with_a_latency_budget_record_the_measured_fraction_and_reuse_the_table(tmp_path, caplog, monkeypatch,
                                                                                     overrides):
    """Each run calibrates the table on the dense and the smallest network, and its cut keeps
    at most the budget (within 5 %) of the fake's measured latency."""
    monkeypatch.setattr("jsp.pipeline.LatencyTable", FakeLatency)  # deterministic: timings are a benchmark
    cache = tmp_path / "tables"
    for name in ("a", "b"):
        caplog.clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"), caplog.at_level(logging.INFO, "jsp"):
            cfg = compose(config_name="train", overrides=[*TINY, *overrides, f"schedule.latency_cache={cache}"])
            run(cfg, tmp_path / name)
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        cut = metrics["pruned"]
        assert cut["latency_target"] == 0.6 and 0 < cut["latency_kept_measured"] <= 0.6 * 1.05
        assert abs(cut["latency_kept_measured"] - 0.6) <= 0.6 * 0.05
        if "schedule.budget_on=latency" in overrides:  # the controller stopped at 0.69 (latency_margin), above
            kept = [float(m.split("keeps ")[1].split()[0]) for m in messages(caplog, "the threshold cut keeps")]
            assert len(kept) == 1 and 0.6 * 1.05 < kept[0] <= 0.69 * 1.05, kept  # the budget: the search cut the rest
        assert describe(tmp_path / name)["latency_kept"] == cut["latency_kept_measured"]  # jsp-report's column
        assert metrics["final"]["macs"] < metrics["dense"]["macs"]
        assert metrics["final"]["schedule"]["cost_aware"] == "latency"
        timed = messages(caplog, "convolutions timed now")
        assert len(timed) == 1 and ((name == "a") != ("(0 convolutions timed now)" in timed[0])), timed
    assert len(list(cache.glob("*.json"))) == 1


def messages(caplog, part: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if part in r.getMessage()]


def test_the_uniform_control_shrinks_to_a_latency_budget(tmp_path, monkeypatch):
    monkeypatch.setattr("jsp.pipeline.LatencyTable", FakeLatency)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, "method=uniform", "schedule.keep_params=null", "schedule.keep_latency=0.5",
                                                      f"schedule.latency_cache={tmp_path / 'tables'}"])
        run(cfg, tmp_path / "run")
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert 0.1 < final["macs_ratio"] < 0.7, final["macs_ratio"]  # one width factor for half the (fake) latency
