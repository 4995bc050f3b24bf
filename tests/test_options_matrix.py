"""The options matrix: every documented constraint with the default schedule and importance,
every method preset and every schedule runs end to end at tiny size (models and datasets are
run through pruning by tests/test_pipeline_models.py and tests/test_datasets.py). A new YAML
in one of these groups fails ``test_the_matrix_covers_every_option`` until it is added here."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from jsp.cli import CONF_DIR
from jsp.pipeline import run
from tests.conftest import TINY
from tests.test_datasets import WRITERS
from tests.test_pipeline_models import MODELS

GROUPS = ("constraint", "method", "schedule")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


CASES = [(g, name) for g in GROUPS for name in options(g)]


def test_the_matrix_covers_every_option():
    assert options("model") == sorted(MODELS)
    assert options("dataset") == sorted([*WRITERS, "drive", "synthetic"])
    assert len(CASES) == sum(len(options(g)) for g in GROUPS) > 20


@pytest.mark.parametrize("group,name", CASES, ids=[f"{g}={n}" for g, n in CASES])
def test_every_option_runs_end_to_end(group, name, tmp_path):
    """A constraint runs with the default schedule (one-shot; a threshold cut, or its budget);
    a method preset prunes to half the parameters by its own importance (the uniform control
    shrinks to it); a schedule runs with the default constraint."""
    extra = ["schedule.keep_params=0.5"] if group == "method" else []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, f"{group}={name}", *extra])
    metrics = run(cfg, tmp_path)
    final, dense = metrics["final"], metrics["dense"] if "dense" in metrics else None
    assert 0 <= final["miou"] <= 1 and final["params"] > 0
    cut = next((m for k, m in metrics.items() if k.startswith("pruned")), None)
    if group == "method" and name != "dense":
        assert 0.4 <= final["params_ratio"] <= 0.5       # at most the target (width 4 is coarse)
    elif cut is None:
        assert final["params_ratio"] == 1.0 and (group, name) in {("method", "dense"), ("schedule", "none")}
    if group == "constraint" or (group == "schedule" and name == "oneshot"):
        # a threshold cut (or the constraint's budget, met by its deadline): exact zeros only
        assert cut["cut_live_units"] == 0 and cut["cut_logit_change"] < 1e-4
        assert cut["params"] <= dense["params"]
    if cut is not None:
        assert {"cut_logit_change", "cut_live_units", "cut_constant_units", "cut_miou_change"} <= set(cut)
