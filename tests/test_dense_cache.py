"""dense_cache=DIR: runs that would train the same dense network train it once."""
import json

from tests.conftest import TINY, run_cli


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_runs_that_train_the_same_dense_network_share_it(tmp_path):
    cache, sweep = tmp_path / "cache", tmp_path / "sweep"
    # l1_norm and random both train without a constraint; jsp trains a different network
    out = run_cli("-m", *TINY, "method=l1_norm,random,jsp", "schedule.keep_params=0.5", f"dense_cache={cache}",
                  f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stdout + out.stderr
    logs = [(sweep / str(i) / "train.log").read_text() for i in range(3)]
    assert ["copied from" in log for log in logs] == [False, True, False]
    assert "dense: best val" in logs[0] and "dense: best val" not in logs[1]
    l1, rnd, jsp = (_metrics(sweep / str(i)) for i in range(3))
    assert rnd["dense"]["miou"] == l1["dense"]["miou"] and rnd["dense"]["dense_from"].startswith(str(cache))
    assert rnd["dense"]["schedule"]["importance"] == "random"  # this run's schedule, not the cached run's
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2

    # A run of the same job without the cache trains its own dense network: same result exactly.
    ref = tmp_path / "ref"
    out = run_cli(*TINY, "method=random", "schedule.keep_params=0.5", f"hydra.run.dir={ref}")
    assert out.returncode == 0, out.stderr
    for stage in ("dense", "pruned", "finetuned"):
        assert _metrics(ref)[stage]["miou"] == rnd[stage]["miou"], stage
        assert _metrics(ref)[stage]["params"] == rnd[stage]["params"], stage


def test_a_different_seed_or_trainer_setting_trains_again(tmp_path):
    cache = tmp_path / "cache"
    out = run_cli("-m", *TINY, "schedule=none", "seed=0,1", f"dense_cache={cache}",
                  f"hydra.sweep.dir={tmp_path / 'a'}")
    assert out.returncode == 0, out.stderr
    out = run_cli(*TINY, "schedule=none", "trainer.lr=1e-3", f"dense_cache={cache}", f"hydra.run.dir={tmp_path / 'b'}")
    assert out.returncode == 0, out.stderr
    assert "copied from" not in (tmp_path / "b" / "train.log").read_text()
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 3
    # Logging settings do not change the network: this one is served from the cache.
    out = run_cli(*TINY, "schedule=none", "trainer.log_every=1", f"dense_cache={cache}", f"hydra.run.dir={tmp_path / 'c'}")
    assert out.returncode == 0, out.stderr
    assert "copied from" in (tmp_path / "c" / "train.log").read_text()
