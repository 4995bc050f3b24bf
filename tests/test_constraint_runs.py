"""Every constraint option runs through the pipeline and logs its terms; the README snippet works."""
import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jsp.cli import CONF_DIR
from jsp.pipeline import run
from tests.conftest import REPO, TINY

TERMS = {"none": [], "jsp": ["sparse", "redund", "factor"], "jsp_v1": ["sparse", "redund"],
         "gradient_count": ["sparse", "redund"],
         "redundancy": ["sparse", "redund"], "l1": ["l1"], "group_lasso": ["group"], "slimming": ["slimming"],
         "depgraph": ["coupled", "factor"]}


OPTIONS = sorted(p.stem for p in (Path(CONF_DIR) / "constraint").glob("*.yaml"))


def test_the_term_table_names_only_options_that_exist():
    """Every constraint YAML runs below; a new one needs no entry here (it logs at least the
    total and task losses), so adding a constraint is its code and its YAML."""
    assert set(TERMS) <= set(OPTIONS) and len(OPTIONS) >= 9


@pytest.mark.parametrize("name", OPTIONS)
def test_constraint_runs_end_to_end_and_logs_terms(name, tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, f"constraint={name}", "schedule=none"])
    metrics = run(cfg, tmp_path)
    final = metrics["final"]
    assert 0 <= final["units_off"] <= 1 and final["units_total"] > 0
    assert set(final["units_off_layers"]) and all(0 <= v <= 1 for v in final["units_off_layers"].values())
    assert "eps" in final["constraint"]
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["final"]["constraint"] == final["constraint"]

    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"histograms": 0})
    acc.Reload()
    scalars, histograms = set(acc.Tags()["scalars"]), set(acc.Tags()["histograms"])
    for term in TERMS.get(name, []):
        assert f"train/loss/{term}" in scalars
    assert {"train/loss/total", "train/loss/task", "units/off_fraction"} <= scalars
    assert any(t.startswith("units/off_fraction_layer/") for t in scalars)
    assert any(t.startswith("units/norm/") for t in histograms)
    if name in ("jsp", "jsp_v1", "gradient_count", "redundancy"):
        assert any(t.startswith("units/activity/") for t in histograms)
        assert any(t.startswith("units/redundancy/") for t in histograms)
        assert set(final["constraint"]) >= {"lambda_s", "lambda_r", "tau", "beta"}


def test_readme_snippet_runs_as_written():
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- own-loop snippet -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lost its own-training-loop snippet"
    namespace = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    jsp, model = namespace["jsp"], namespace["model"]
    assert len(jsp.statistics()["activity"]) == len(jsp.layers) > 0
    assert float(jsp.terms["redund"]) > 0                   # the proximal step applied the penalty
    assert 0.0 <= jsp.unit_report()["units_off"] <= 1.0
