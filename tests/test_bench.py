"""jsp-bench (issue 30): saved models timed side by side in one process, in interleaved rounds;
speed-ups and MAC ratios against the first model; peak memory per model."""
import json

import pytest
import torch

from jsp.bench import main, measure, rows_of
from jsp.constraints import find_units
from jsp.metrics import count_macs
from jsp.models import UNet
from jsp.models.saved import save_model
from jsp.pruning import Target, layer_scores
from jsp.pruning import prune as prune_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    builder = {"name": "unet", "args": {"in_channels": 3, "num_classes": 2, "width": 8, "depth": 2}}
    torch.manual_seed(0)
    dense = UNet(3, 2, width=8, depth=2).eval()
    save_model(root / "dense", dense, builder, stage="dense", input_size=[48, 48], in_channels=3)
    small = UNet(3, 2, width=8, depth=2).eval()
    layers = find_units(small, 3)
    prune_model(small, layers, layer_scores("l1_norm", layers, {}), Target("macs", 0.25), 3, 48, (48, 48))
    save_model(root / "small", small, builder, stage="pruned", input_size=[48, 48], in_channels=3)
    return root, count_macs(dense, 3, (48, 48)) / count_macs(small, 3, (48, 48))


def test_models_are_timed_in_rotated_rounds():
    order = []
    calls = {k: (lambda k=k: order.append(k)) for k in "abc"}
    times = measure(calls, rounds=3, seconds=0.001)
    assert all(len(t) == 3 for t in times.values())
    timed = [k for k in order[-sum(1 for _ in order):]]  # every call, warm-up and calibration included
    blocks = [k for i, k in enumerate(timed) if i == 0 or k != timed[i - 1]]
    assert blocks[-9:] == list("abcbcacab")  # each round starts one model later


def test_jsp_bench_reports_speedups_against_the_first_model(saved, tmp_path):
    root, mac_ratio = saved
    runtimes = ["torch"] + (["onnxruntime"] if _has("onnxruntime") and _has("onnx") else [])
    out = tmp_path / "bench.json"
    assert main([str(root / "dense"), str(root / "small"), "--runtime", *runtimes, "--batch", "1", "2",
                 "--rounds", "2", "--seconds", "0.02", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert len(rows) == 2 * len(runtimes) * 2
    for r in rows:
        first = r["model"].endswith("dense")
        assert r["speedup"] == pytest.approx(1.0) if first else r["speedup"] > 0
        assert r["mac_ratio"] == pytest.approx(1.0 if first else mac_ratio)
        assert r["speedup_of_mac_ratio"] == pytest.approx(r["speedup"] / r["mac_ratio"])
        assert r["ms"] > 0 and r["peak_mb"] > 0 and r["input"] == [3, 48, 48]  # the size model.json records
    small = {r["peak_mb"] for r in rows if r["model"].endswith("small")}
    dense = {r["peak_mb"] for r in rows if r["model"].endswith("dense")}
    assert max(small) < min(dense)
    assert report["environment"]["threads"] == 1


def test_the_speedup_pairs_each_round():
    # the machine slows 3x over three rounds, except in the small model's third block
    times = {("a", "torch", 1): [0.1, 0.2, 0.3], ("b", "torch", 1): [0.05, 0.1, 0.06]}
    info = {"a": {"macs": 100}, "b": {"macs": 25}}
    a, b = rows_of(times, info, ["a", "b"])
    assert b["ms"] == pytest.approx(60.0) and a["ms"] == pytest.approx(200.0)
    assert b["speedup"] == pytest.approx(2.0)  # paired rounds 2, 2 and 5; the medians' ratio is 3.3
    assert b["speedup_of_mac_ratio"] == pytest.approx(0.5) and "key" not in b


def test_a_missing_model_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nothing")]) == 2
    assert "jsp-bench:" in capsys.readouterr().err


def _has(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False
