"""Sweeps: method presets, multirun with the basic and the joblib launcher, jsp-report."""
import csv
import statistics
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from jsp.cli import CONF_DIR
from jsp.report import headline_lines, main as report_main, rank_budgets
from tests.conftest import TINY, run_cli

METHODS = {  # method.md s.5: constraint during training, importance at pruning
    "dense": (".Constraint", 0, None), "l1_norm": (".Constraint", 1, "l1_norm"),
    "slimming": ("Slimming", 1, "bn_scale"), "group_lasso": ("GroupLasso", 1, "group_norm"),
    "correlation": (".Constraint", 1, "correlation"), "random": (".Constraint", 1, "random"),
    "gradient_count": ("JSPConstraint", 1, "gradient_count"), "redundancy": ("JSPConstraint", 1, "redundancy"),
    "jsp": ("JSPConstraint", 1, "jsp"), "jsp_v1": ("JSPConstraint", 1, "jsp"), "taylor": (".Constraint", 1, "taylor"),
    "uniform": (".Constraint", 1, "jsp"), "scratch": ("JSPConstraint", 1, "jsp"),
    "depgraph": ("CoupledGroupLasso", 1, "depgraph"),
}


def test_every_method_preset_sets_constraint_and_importance():
    assert {p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml")} == set(METHODS)
    for name, (constraint, rounds, importance) in METHODS.items():
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"method={name}"])
        assert cfg.constraint._target_.endswith(constraint), name
        assert cfg.schedule.rounds == rounds, name
        if rounds:
            assert cfg.schedule.importance == importance, name
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["method=redundancy"])
    assert cfg.constraint.lambda_s == 0 and cfg.constraint.lambda_r > 0
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        v1 = compose(config_name="train", overrides=["method=jsp_v1"]).constraint
    assert (v1.count_on, v1.sign, v1.chance, v1["update"], v1.tau) == ("filters", "abs", False, "loss", 0.1)
    for control in ("uniform", "scratch"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            assert compose(config_name="train", overrides=[f"method={control}"]).control == control


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep") / "multirun"
    out = run_cli("-m", *TINY, "method=dense,jsp", "schedule.keep_params=0.5", f"hydra.sweep.dir={root}")
    assert out.returncode == 0, out.stdout + out.stderr
    return root


def test_report_on_a_multirun_dir(sweep, capsys):
    assert report_main([str(sweep)]) == 0
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert sorted(r["method"] for r in rows) == ["dense", "jsp"]
    jsp = next(r for r in rows if r["method"] == "jsp")
    dense = next(r for r in rows if r["method"] == "dense")
    assert float(jsp["keep"]) == 0.5 and float(dense["keep"]) == 1.0
    assert int(jsp["params"]) < int(dense["params"]) and "lambda_s=" in jsp["lambdas"]
    own = json.loads((sweep / "1" / "metrics.json").read_text())  # before fine-tuning, units zeroed
    assert float(jsp["pruned_miou"]) == pytest.approx(own["pruned"]["miou"])
    assert float(jsp["zeroed"]) == pytest.approx(own["dense"]["units_off"])
    md = (sweep / "summary.md").read_text()
    assert "Mean +- std over seeds" in md and "| jsp |" in md
    assert "## synthetic / unet-w4 / keep 0.5" in md  # the width is part of the model label
    assert "jsp is the only method at this budget" in md

    alone = sweep / "1"  # the jsp run alone: vs dense from its own dense stage
    assert report_main([str(alone), "--out", str(sweep / "alone")]) == 0
    assert "| mIoU before FT | zeroed |" in (sweep / "alone" / "summary.md").read_text()
    own = json.loads((alone / "metrics.json").read_text())
    gap = own["final"]["miou"] - own["dense"]["miou"]
    assert f"| {gap:+.4f} |" in (sweep / "alone" / "summary.md").read_text()
    assert (sweep / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (sweep / "pareto_macs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for measured in ("latency_ms", "peak_mb"):  # every run timed itself and measured its memory
        assert (sweep / f"pareto_{measured}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert float(jsp["peak_mb"]) > float(jsp["weight_mb"]) > 0 and "| peak MB |" in md


def _row(method, keep, seed, miou, model="unet"):
    return {"dataset": "drive", "method": method, "model": model, "lambdas": "-", "keep": keep, "seed": seed,
            "params": 1000 * keep, "macs": 1e9, "weight_mb": 0.1, "latency_ms": 5.0, "miou": miou, "f1": miou,
            "auc": 0.9, "run": f"{method}/{seed}"}


def test_ranking_names_the_winner_per_budget_and_judges_the_gap_by_a_paired_interval():
    rows = [_row("dense", 1.0, s, 0.80) for s in range(3)]
    rows += [_row("jsp", 0.01, s, m) for s, m in enumerate((0.805, 0.806, 0.807))]  # clear lead
    rows += [_row("l1_norm", 0.01, s, m) for s, m in enumerate((0.780, 0.781, 0.782))]
    rows += [_row("jsp", 0.1, s, m) for s, m in enumerate((0.800, 0.820, 0.810))]  # noisy lead
    rows += [_row("slimming", 0.1, s, m) for s, m in enumerate((0.808, 0.806, 0.807))]
    rows += [_row("jsp", 0.5, 0, 0.79, "mobilenetv3"), _row("dense", 1.0, 0, 0.78, "mobilenetv3"),
             _row("l1_norm", 0.5, 0, 0.70, "mobilenetv3")]
    budgets = {(b["model"], b["keep"]): b for b in rank_budgets(rows)}
    assert [k for k in budgets if k[0] == "unet"] == [("unet", "1.0"), ("unet", "0.1"), ("unet", "0.01")]
    tiny = budgets[("unet", "0.01")]
    assert [e["method"] for e in tiny["ranked"]] == ["jsp", "l1_norm"]
    assert abs(tiny["ranked"][0]["miou"] - 0.806) < 1e-9 and abs(tiny["ranked"][0]["vs_dense"] - 0.006) < 1e-9
    assert "jsp leads l1_norm by 0.0250" in tiny["verdict"] and tiny["verdict"].endswith("a clear win")
    noisy = budgets[("unet", "0.1")]["verdict"]  # jsp's mean is higher, but per seed it loses once
    assert "no clear winner" in noisy and noisy.endswith("(not distinguishable from the leader: jsp, slimming)")
    mnv3 = budgets[("mobilenetv3", "0.5")]
    assert "no interval" in mnv3["verdict"] and abs(mnv3["ranked"][0]["vs_dense"] - 0.01) < 1e-9


def test_headline_names_each_budgets_leader_and_where_jsp_stands():
    rows = [_row("dense", 1.0, s, 0.80) for s in range(3)]
    rows += [_row("jsp", 0.01, s, m) for s, m in enumerate((0.805, 0.806, 0.807))]  # clear lead
    rows += [_row("l1_norm", 0.01, s, m) for s, m in enumerate((0.780, 0.781, 0.782))]
    rows += [_row("slimming", 0.1, s, m) for s, m in enumerate((0.830, 0.831, 0.832))]  # jsp clearly behind
    rows += [_row("jsp", 0.1, s, m) for s, m in enumerate((0.800, 0.802, 0.801))]
    rows += [_row("taylor", 0.1, s, m) for s, m in enumerate((0.790, 0.820, 0.800))]
    table = [line for line in headline_lines(rank_budgets(rows)) if line.startswith("| unet")]
    assert len(table) == 2  # the dense budget has nothing to rank
    tenth, hundredth = table  # budgets in the report's order: 0.1, then 0.01
    assert "| jsp | 0.8060 +- 0.0010 | l1_norm | +0.0250 [95% CI +0.0250, +0.0250]" in hundredth
    assert "| clear win |" in hundredth and hundredth.endswith("vs l1_norm: clear |")
    # slimming leads taylor (a noisy runner-up: 0.040, 0.011, 0.032) without a clear win, but
    # jsp (third) is clearly behind slimming
    assert "| slimming | 0.8310 +- 0.0010 | taylor |" in tenth and "| no clear winner |" in tenth
    assert "-0.0300 [95% CI -0.0325, -0.0275] over 3 paired seeds vs slimming: clear |" in tenth


def test_paired_interval_equals_scipys_ttest_rel():
    from scipy.stats import ttest_rel

    from jsp.stats import paired

    a = {0: 0.812, 1: 0.805, 2: 0.821, 3: 0.809, 4: 0.815}
    b = {0: 0.801, 1: 0.806, 2: 0.810, 3: 0.800, 4: 0.811, 9: 0.5}  # seed 9 has no partner: left out
    ours = paired(a, b)
    ci = ttest_rel([a[s] for s in range(5)], [b[s] for s in range(5)]).confidence_interval(0.95)
    assert ours.n == 5 and ours.low == pytest.approx(ci.low) and ours.high == pytest.approx(ci.high)
    assert ours.clear is (ci.low > 0 or ci.high < 0)


def test_tie_and_collapsed_runs_are_reported_as_such():
    rows = [_row("jsp", 0.01, s, 0.80) for s in range(3)] + [_row("l1_norm", 0.01, s, 0.80) for s in range(3)]
    rows += [dict(_row("random", 0.01, s, m), f1=f) for s, (m, f) in enumerate(((0.45, 0.0), (0.79, 0.78), (0.45, 0.01)))]
    (budget,) = rank_budgets(rows)
    assert budget["verdict"].startswith("jsp and l1_norm tie at 0.8000 mIoU") and "no clear winner" in budget["verdict"]
    random = next(e for e in budget["ranked"] if e["method"] == "random")
    assert random["collapsed"] == 2 and budget["ranked"][0]["collapsed"] == 0


def test_pareto_reference_is_the_runs_own_dense_stage_without_dense_runs():
    from jsp.pareto import pareto_curves

    rows = [dict(_row("jsp", 0.1, s, 0.78), own_dense_miou=0.80 + 0.01 * s, own_dense_params=10_000) for s in range(3)]
    rows.append(dict(_row("uniform", 0.1, 0, 0.70), own_dense_miou=0.70, own_dense_params=100))  # never pruned
    (dense,) = pareto_curves(rows)[("dense", "unet", "drive")]
    assert dense[0] == 10_000 and dense[1] == pytest.approx(0.81) and dense[2] == pytest.approx(0.01)
    rows = [dict(r, own_dense_macs=5e9 if r["method"] == "jsp" else 1e6) for r in rows]  # uniform: never pruned
    (by_macs,) = pareto_curves(rows, "macs")[("dense", "unet", "drive")]
    assert by_macs[0] == 5e9 and by_macs[1] == pytest.approx(0.81)
    with_dense = rows + [dict(_row("dense", 1.0, 0, 0.9), params=10_000)]
    assert pareto_curves(with_dense)[("dense", "unet", "drive")] == [(10_000, 0.9, 0.0)]


def test_report_says_when_there_is_nothing(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_report_command_is_installed(sweep, tmp_path):
    out = subprocess.run([sys.executable, "-m", "jsp.report", str(sweep), "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and (tmp_path / "summary.md").is_file(), out.stderr


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    out = run_cli("-m", *TINY, "schedule=none", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Joblib" in out.stdout + out.stderr
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "metrics.json").is_file()


def test_submitit_local_launcher_runs_the_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = run_cli("-m", *TINY, "schedule=none", "seed=0,1", "hydra/launcher=submitit_local",
                  "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert out.returncode == 0, out.stdout + out.stderr
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "metrics.json").is_file()


def test_slurm_preset_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = run_cli("--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert out.returncode == 0, out.stderr
    assert "SlurmLauncher" in out.stdout and "partition: gpu" in out.stdout and "gpus_per_node: 1" in out.stdout


def test_ray_preset_composes_when_the_plugin_is_installed():
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    out = run_cli("--cfg", "hydra", "hydra/launcher=ray_cluster")
    assert out.returncode == 0 and "RayLauncher" in out.stdout, out.stderr


def test_optuna_search_runs_trials_and_scores_the_budget(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import yaml

    out = run_cli("hparams_search=optuna_jsp", *TINY, "hydra.sweeper.n_trials=2", "max_params=1",
                  f"hydra.sweep.dir={tmp_path / 'study'}")
    assert out.returncode == 0, out.stdout + out.stderr
    result = yaml.safe_load((tmp_path / "study" / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"constraint.lambda_s", "constraint.lambda_r", "schedule.keep_params"}
    assert result["best_value"] < 0  # every run is over a 1-parameter budget: mIoU - 1
    finals = [json.loads((tmp_path / "study" / j / "metrics.json").read_text())["final"] for j in ("0", "1")]
    assert result["best_value"] == pytest.approx(max(f["val_miou"] for f in finals) - 1.0)  # validation, not test


def test_sweeps_optimise_validation_never_test():
    from jsp.cli import objective

    final = {"miou": 0.9, "val_miou": 0.6, "params": 100}  # test and validation disagree
    assert objective(final, None) == 0.6
    assert objective(final, 1000) == 0.6
    assert objective(final, 99) == pytest.approx(-0.4)


def _hparams_row(run_dir: Path) -> dict:
    """The HParams-tab row a run wrote: {setting: value} from its session-start summary."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def test_a_sweep_over_importance_gives_distinguishable_hparams_rows(tmp_path):
    out = run_cli("-m", *TINY, "schedule.importance=l1_norm,random", "schedule.keep_params=0.5",
                  f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [_hparams_row(tmp_path / str(i)) for i in (0, 1)]
    assert [r["schedule.importance"] for r in rows] == ["l1_norm", "random"]
    for row in rows:  # strings, None and numbers alike: the whole config, once
        assert row["trainer.lr"] == pytest.approx(3e-3) and row["trainer.batch_size"] == 2
        assert row["schedule.keep_params"] == 0.5 and row["schedule.keep_macs"] == "None"
        assert row["method"] == f"jsp+{row['schedule.importance']}" and row["dataset._target_"] == "jsp.data.make_synthetic"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "0" / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert not [t for t in scalars if "/constraint/" in t or "/schedule/" in t]  # settings are not plotted
    assert "test/miou" in scalars and "config/text_summary" in acc.Tags()["tensors"]


def _fake_run(root: Path, name: str, lam: float, seed: int, val: float, test: float) -> Path:
    """A finished run dir as jsp-train leaves it, with chosen validation and test mIoU."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    final = {"miou": test, "val_miou": val, "f1": test, "auc": 0.9, "params": 100, "macs": 1e6,
             "weight_mb": 0.1, "latency_ms": 1.0}
    (run / "metrics.json").write_text(json.dumps({"dense": {**final, "miou": 0.9, "params": 1000}, "final": final}))
    (run / ".hydra" / "config.yaml").write_text(
        f"seed: {seed}\nconstraint: {{lambda_s: {lam}, lambda_r: 1.0}}\nschedule: {{rounds: 1, keep_params: 0.1}}\n")
    (run / ".hydra" / "hydra.yaml").write_text(
        "hydra: {runtime: {choices: {method: jsp, model: unet, dataset: drive}}}\n")
    (run / ".hydra" / "overrides.yaml").write_text(
        f"- method=jsp\n- seed={seed}\n- constraint.lambda_s={lam}\n- schedule.keep_params=0.1\n- hydra.run.dir=x\n")
    return run


def test_selection_picks_the_setting_by_validation_where_test_disagrees(tmp_path):
    # lambda_s=1 is better on test, 0.1 on validation: the report must rank 0.1.
    for seed in (0, 1, 2):
        _fake_run(tmp_path, f"a{seed}", 1.0, seed, val=0.70 + 0.001 * seed, test=0.80)
        _fake_run(tmp_path, f"b{seed}", 0.1, seed, val=0.75 + 0.001 * seed, test=0.78)
    assert report_main([str(tmp_path)]) == 0
    md = (tmp_path / "summary.md").read_text()
    ranked = md.split("# Settings chosen on validation")[0]
    assert "| 1 | jsp | lambda_s=0.1,lambda_r=1 | 3 |" in ranked and "lambda_s=1,lambda_r=1" not in ranked
    assert "| 0.7800 +- 0.0000 |" in ranked or "| 0.7800 |" in ranked
    chosen = md.split("# Settings chosen on validation")[1].split("# Mean")[0]
    assert "| constraint.lambda_s=0.1 | 3 | 0.7510 | 0.7800 | **yes** |" in chosen
    assert "| constraint.lambda_s=1.0 | 3 | 0.7010 | 0.8000 |  |" in chosen
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert len(rows) == 6 and {r["setting"] for r in rows} == {"constraint.lambda_s=0.1", "constraint.lambda_s=1.0"}


def test_verdict_adds_a_paired_test_over_images_when_runs_have_per_image_metrics():
    from scipy.stats import ttest_rel

    images = {"01": 0.80, "02": 0.70, "03": 0.75, "04": 0.78}
    rows = []
    for seed in range(3):
        rows.append(dict(_row("jsp", 0.1, seed, 0.80 + 0.001 * seed),
                         per_image_f1={k: v + 0.02 + 0.001 * seed for k, v in images.items()}))
        rows.append(dict(_row("l1_norm", 0.1, seed, 0.79), per_image_f1={k: v + 0.01 * (k == "02") for k, v in images.items()}))
    (budget,) = rank_budgets(rows)
    jsp_means = [statistics.fmean(v + 0.02 + 0.001 * s for s in range(3)) for v in images.values()]
    l1_means = [v + 0.01 * (k == "02") for k, v in images.items()]
    ci = ttest_rel(jsp_means, l1_means).confidence_interval(0.95)
    assert f"Per-image F1, paired +0.0185 [95% CI {ci.low:+.4f}, {ci.high:+.4f}] over 4 paired images: clear" in budget["verdict"]
    rows[1]["per_image_f1"] = {}  # one run without per_image.csv: no image-level test
    assert "Per-image" not in rank_budgets(rows)[0]["verdict"]


def test_budgets_are_labelled_by_what_they_count_and_ordered_params_then_macs():
    from jsp.report import _budget_of, _keep_order

    one = {"rounds": 1, "budget_on": "params"}
    assert _budget_of({"budget": 0.1}, one) == 0.1
    assert _budget_of({"budget": 0.2}, {**one, "budget_on": "macs"}) == "macs 0.2"
    assert _budget_of({}, {**one, "keep_macs": 0.05}) == "macs 0.05"
    assert _budget_of({"budget": 0.3}, {**one, "keep_params": 0.01}) == 0.01  # the schedule's target decides
    assert _budget_of({}, one) == "threshold" and _budget_of({"budget": 0.1}, {"rounds": 0}) == 1.0
    assert _budget_of({}, {**one, "keep_latency": 0.5}) == "latency 0.5"
    assert _budget_of({"budget": 0.25}, {**one, "budget_on": "latency"}) == "latency 0.25"
    labels = ["threshold", "latency 0.25", "macs 0.05", 0.01, 1.0, "latency 0.5", "macs 0.2", 0.0025]
    assert sorted(labels, key=_keep_order) == [1.0, 0.01, 0.0025, "macs 0.2", "macs 0.05", "latency 0.5",
                                               "latency 0.25", "threshold"]
