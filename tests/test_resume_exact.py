"""Exact resume at the default settings (issue 32): the budget controller, cost-aware pressure,
redundancy every 20 steps, the budget deadline, the exact cut and fine-tuning. A run stopped at
any step of any stage, by a stop signal (the state is saved at that step) or by a hard kill
(the last periodic checkpoint), then continued, must end with the uninterrupted run's
metrics.json in every key but times."""
import signal

import pytest
from hydra import compose, initialize_config_dir

import jsp.engine.train as loop
from jsp.cli import CONF_DIR
from jsp.engine import preemption
from jsp.pipeline import run
from tests.conftest import TINY_SYNTHETIC
from tests.test_robustness import comparable

DEFAULTS = [*TINY_SYNTHETIC, "model.width=8", "model.depth=2", "trainer.steps=60", "trainer.val_every=20",
            "trainer.checkpoint_every=7", "trainer.batch_size=4", "trainer.warmup_steps=5",
            "schedule.finetune_steps=30", "trainer.latency_s=0", "trainer.eval_examples=0", "trainer.device=cpu"]


class Killed(BaseException):
    """A hard kill: the process is gone, nothing is saved."""


def go(run_dir, resume="auto", stop_at=None, how="term", monkeypatch=None):
    """Run the default config in-process; with ``stop_at`` (a count of training steps over all
    stages), stop there: "term" as a stop signal after that step, "kill" before it."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*DEFAULTS, f"resume={resume}"])
    if stop_at is not None:
        real, calls = loop.train_step, [0]

        def step(*args, **kwargs):
            calls[0] += 1
            if how == "kill" and calls[0] == stop_at:
                raise Killed
            out = real(*args, **kwargs)
            if how == "term" and calls[0] == stop_at:
                preemption._received.append(signal.SIGTERM)
            return out

        monkeypatch.setattr(loop, "train_step", step)
    try:
        return run(cfg, run_dir)
    finally:
        monkeypatch is None or monkeypatch.undo()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    metrics = go(run_dir)
    assert metrics["pruned"]["cut_live_units"] == 0    # the defaults: a budget met before the cut
    return comparable(run_dir)


# Stop points (steps counted over all stages; the dense stage has 60, fine-tuning 30): mid-dense
# before the ramp ends, after the budget deadline (step 54), on the dense stage's last step (the
# stop lands between the stages: after "dense" is recorded, before the cut), mid-fine-tuning.
@pytest.mark.parametrize("stop_at,how", [(23, "term"), (57, "term"), (60, "term"), (71, "term"),
                                         (26, "kill"), (80, "kill")])
def test_a_stopped_default_run_continues_to_the_uninterrupted_metrics(stop_at, how, reference, tmp_path,
                                                                      monkeypatch):
    run_dir = tmp_path / "run"
    with pytest.raises(preemption.Preempted if how == "term" else Killed):
        go(run_dir, stop_at=stop_at, how=how, monkeypatch=monkeypatch)
    go(run_dir, resume="auto" if how == "term" else "true")
    assert comparable(run_dir) == reference
