"""Plug-ins (jsp/plugins.py): the example package in examples/jsp-example-plugin, installed into
a scratch target, adds a model, a dataset, a constraint and an importance that jsp-train,
jsp-eval and jsp-predict use with nothing edited in jsp; where it is not installed, a saved
model that names it is refused in one line (exit 2)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, cli

TINY = ["trainer.steps=20", "trainer.val_every=10", "schedule.finetune_steps=10", "trainer.batch_size=4",
        "dataset.process.patch_size=32", "trainer.latency_s=0", "trainer.device=cpu"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(REPO / "examples" / "jsp-example-plugin", source)  # the build writes beside the source
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, text=True, timeout=300)
    return target


def jsp(entry, *args, site=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JSP_DEBUG")}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run([*cli(entry), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_plugin_package_trains_prunes_saves_evaluates_and_predicts(site, tmp_path):
    run = tmp_path / "run"
    r = jsp("train", "model=tinynet", "dataset=stripes", "constraint=filter_decay", "schedule.importance=filter_l2",
            "schedule.keep_params=0.5", *TINY, f"hydra.run.dir={run}", site=site, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.4 <= metrics["final"]["params_ratio"] <= 0.5 and metrics["final"]["miou"] > 0.5
    assert metrics["final"]["constraint"] == {"lam": 1e-3, "eps": 0.01}
    meta = json.loads((run / "checkpoints" / "final" / "model.json").read_text())
    plugin = {"package": "jsp-example-plugin", "version": "0.1.0"}
    assert meta["architecture"] == {"name": "tinynet", "args": {"width": 6, "in_channels": 3, "num_classes": 2},
                                    "plugin": plugin}                    # width 6: the package's own YAML
    assert meta["dataset"]["name"] == "stripes" and meta["dataset"]["plugin"] == plugin

    r = jsp("eval", f"checkpoint={run}", f"hydra.run.dir={tmp_path / 'eval'}", site=site, cwd=tmp_path)
    assert r.returncode == 0 and "matches the run's saved test metrics: yes" in r.stderr + r.stdout
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((40, 40, 3), 150, np.uint8)).save(tmp_path / "images" / "a.png")
    r = jsp("predict", f"checkpoint={run}", f"input={tmp_path / 'images'}", f"output={tmp_path / 'masks'}",
            site=site, cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "masks" / "a.png").is_file()

    # Not installed: one line naming the package, exit 2, for the saved model and the option.
    r = jsp("eval", f"checkpoint={run}", f"hydra.run.dir={tmp_path / 'eval2'}", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "not installed here (pip install jsp-example-plugin)" in out
    assert "Traceback" not in out
    assert jsp("train", "model=tinynet", *TINY, cwd=tmp_path).returncode == 2

    # A file asking the plug-in for more than it declares (jsp_ranges) is refused before building.
    path = run / "checkpoints" / "final" / "model.json"
    meta["architecture"]["args"]["width"] = 100_000
    path.write_text(json.dumps(meta))
    r = jsp("eval", f"checkpoint={run}", f"hydra.run.dir={tmp_path / 'eval3'}", site=site, cwd=tmp_path)
    assert r.returncode == 2 and "architecture.args.width: 100000 is outside [1, 512]" in r.stdout + r.stderr


def test_plugin_settings_take_overrides(site, tmp_path):
    r = jsp("train", "model=tinynet", "model.width=5", "dataset=stripes", "dataset.size=32", "--cfg", "job",
            site=site, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "_target_: jsp_example_plugin.TinyNet\n  width: 5" in r.stdout
    assert "size: 32" in r.stdout and "patch_size: 96" in r.stdout   # a dataset gets jsp's processing defaults
