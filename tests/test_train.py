import math

import pytest
import torch

from jsp.constraints import Constraint
from jsp.engine.logger import RunLogger
from jsp.engine.train import Hooks, LoopSettings, NonFiniteLoss, Objective, lr_at, train_loop


def test_lr_warmup_then_cosine():
    s = LoopSettings(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, s) == pytest.approx(0.1)
    assert lr_at(9, s) == pytest.approx(1.0)
    assert lr_at(10, s) == pytest.approx(1.0)
    assert lr_at(60, s) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(110, s) == pytest.approx(0.1)


def _toy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1))
    x = torch.randn(4, 1, 8, 8)
    y = (x[:, 0] > 0).long()
    return model, [(x, y)] * 100


def _ce(logits, y):
    loss = torch.nn.functional.cross_entropy(logits, y)
    return loss, {"ce": loss}


def test_loop_learns_and_keeps_best_validation_weights(tmp_path):
    model, batches = _toy()
    x, y = batches[0]
    before = _ce(model(x), y)[0].item()
    seen = []

    def validate(m, step):  # pretend validation gets worse after the first check
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"miou": 1.0 / len(seen)}

    logger = RunLogger(tmp_path)
    best = train_loop(model, batches, Objective(_ce, torch.optim.SGD(model.parameters(), lr=0.5), Constraint()),
                      LoopSettings(steps=40, lr=0.5, val_every=10), Hooks(validate, logger))
    logger.close()
    assert best["step"] == 10 and len(seen) == 4
    assert all(torch.equal(v, seen[0][k]) for k, v in model.state_dict().items())
    assert _ce(model(x), y)[0].item() < before


def test_loop_stops_on_non_finite_loss(tmp_path):
    model, batches = _toy()
    bad = lambda logits, y: (logits.sum() * math.inf, {})
    with pytest.raises(NonFiniteLoss, match="not finite at step 0"):
        train_loop(model, batches, Objective(bad, torch.optim.SGD(model.parameters(), lr=0.1), Constraint()),
                      LoopSettings(steps=5, lr=0.1), Hooks(lambda m, step: {"miou": 0}, RunLogger(tmp_path)))


def test_on_equal_validation_the_later_weights_win(tmp_path):
    model, batches = _toy()
    seen = []

    def validate(m, step):
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"miou": 0.5}

    best = train_loop(model, batches, Objective(_ce, torch.optim.SGD(model.parameters(), lr=0.5), Constraint()),
                      LoopSettings(steps=30, lr=0.5, val_every=10), Hooks(validate, RunLogger(tmp_path)))
    assert best["step"] == 30
    assert all(torch.equal(v, seen[-1][k]) for k, v in model.state_dict().items())


def test_fine_tuning_hands_back_the_starting_weights_when_it_never_beats_them(tmp_path):
    model, batches = _toy()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    scores = iter([0.9, 0.5, 0.6, 0.7])  # the starting network validates best

    best = train_loop(model, batches, Objective(_ce, torch.optim.SGD(model.parameters(), lr=0.5), Constraint()),
                      LoopSettings(steps=30, lr=0.5, val_every=10, validate_start=True),
                      Hooks(lambda m, step: {"miou": next(scores)}, RunLogger(tmp_path)))
    assert best == {"miou": 0.9, "step": 0}
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_fine_tuning_keeps_its_own_weights_when_they_validate_as_well(tmp_path):
    model, batches = _toy()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    scores = iter([0.5, 0.4, 0.5, 0.3])
    best = train_loop(model, batches, Objective(_ce, torch.optim.SGD(model.parameters(), lr=0.5), Constraint()),
                      LoopSettings(steps=30, lr=0.5, val_every=10, validate_start=True),
                      Hooks(lambda m, step: {"miou": next(scores)}, RunLogger(tmp_path)))
    assert best["step"] == 20
    assert not all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
