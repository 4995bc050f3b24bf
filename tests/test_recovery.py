"""Recovery (issue 29): distillation from the network before pruning, fine-tuning lr courses,
training compute, the scratch control at equal compute, and a 0.25 % budget met before the cut."""
import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from jsp.cli import CONF_DIR
from jsp.engine.losses import distillation_loss
from jsp.engine.train import LoopSettings, Objective, lr_at, train_step
from jsp.constraints import Constraint
from jsp.pipeline import run
from jsp.recovery import equal_compute_steps, frozen, step_macs
from tests.conftest import TINY, TINY_SYNTHETIC


def test_distillation_loss_is_the_hand_computed_kl_and_alpha_zero_is_the_task_loss():
    s = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)
    t = torch.tensor([0.0, 2.0, 0.0]).view(1, 3, 1, 1)
    T = 2.0
    p_s = [math.exp(v / T) for v in (1.0, 0.0, -1.0)]
    p_t = [math.exp(v / T) for v in (0.0, 2.0, 0.0)]
    p_s, p_t = [v / sum(p_s) for v in p_s], [v / sum(p_t) for v in p_t]
    hand = T * T * sum(q * math.log(q / p) for q, p in zip(p_t, p_s))
    assert float(distillation_loss(s, t, T)) == pytest.approx(hand, rel=1e-6)
    assert float(distillation_loss(t, t, T)) == pytest.approx(0.0, abs=1e-7)

    ce = lambda logits, y: (nn.functional.cross_entropy(logits, y), {})  # noqa: E731
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    student, teacher = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
    logits = student(x)
    s = LoopSettings(steps=1, lr=0.1)
    off = Objective(ce, None, Constraint(), teacher, distill=0.0).task(logits, x, y, s)[0]
    assert off.item() == pytest.approx(ce(logits, y)[0].item())
    half, terms = Objective(ce, None, Constraint(), teacher, distill=0.5, temperature=T).task(logits, x, y, s)
    kd = distillation_loss(logits, teacher(x), T).item()
    assert half.item() == pytest.approx(0.5 * ce(logits, y)[0].item() + 0.5 * kd, rel=1e-6)
    assert float(terms["kd"]) == pytest.approx(kd, rel=1e-6)


def test_the_teacher_is_frozen_in_eval_mode_and_does_not_change_while_the_student_learns():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    teacher = frozen(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = []
    teacher.register_forward_hook(lambda m, i, o: seen.append(m.training))
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    ce = lambda logits, y: (nn.functional.cross_entropy(logits, y), {})  # noqa: E731
    objective = Objective(ce, opt, Constraint().attach(student, 3, 8), teacher, distill=0.5, temperature=2.0)
    s = LoopSettings(steps=3, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    student_before = [p.clone() for p in student.parameters()]
    for step in range(3):
        train_step(student, torch.randn(4, 3, 8, 8), torch.randint(0, 2, (4, 8, 8)), objective, s, scaler, step, 0.1)
    assert seen == [False, False, False]                                  # eval mode on every step
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # running stats too
    assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student.parameters()))


def test_training_compute_equals_a_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Conv2d(4, 2, 1, bias=False))
    net.pad_multiple = 1
    forward = 3 * 4 * 9 * 8 * 8 + 4 * 2 * 8 * 8           # MACs of one 8x8 image
    assert step_macs(net, 3, 8, batch=2) == 2 * 3 * forward
    assert step_macs(net, 3, 8, batch=2, teacher=net) == 2 * 4 * forward
    # Scratch-B: 300 dense steps at 10 MACs and 100 pruned steps at 2 cost 3200, 1600 pruned steps
    assert equal_compute_steps(400, 100, dense_step=10, pruned_step=2) == 1600


def test_finetuning_lr_courses():
    train = LoopSettings(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.01)
    rewind = LoopSettings(steps=30, lr=0.5, shape="rewind", replay=train)
    assert [lr_at(i, rewind) for i in (0, 29)] == [lr_at(70, train), lr_at(99, train)]
    one = LoopSettings(steps=100, lr=1.0, shape="onecycle")
    assert lr_at(0, one) == pytest.approx(1 / 25) and lr_at(30, one) == pytest.approx(1.0)
    assert lr_at(99, one) == pytest.approx(1e-4)
    assert max(lr_at(i, one) for i in range(100)) == pytest.approx(1.0)


def compose_run(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, *overrides])
    return run(cfg, tmp_path)


def test_a_distilled_scratch_control_at_equal_compute_records_its_compute(tmp_path):
    m = compose_run(tmp_path, "control=scratch", "schedule.distill=0.5", "schedule.distill_temperature=2",
                    "schedule.control_compute=true")
    dense, scratch = m["dense"], m["scratch"]
    pruned_step = scratch["train_macs"] / scratch["train_steps"]
    dense_step = dense["train_macs"] / dense["train_steps"]
    assert scratch["train_steps"] > 6 + 4                   # more steps than equal steps: it is smaller
    # what the compressed run cost: 6 dense steps and 4 pruned (student + teacher) steps
    budget = 6 * dense_step + 4 * pruned_step
    assert 0 <= scratch["train_macs"] - budget < pruned_step           # the fewest steps that reach it
    assert m["final"]["train_macs_total"] == dense["train_macs"] + scratch["train_macs"]
    assert m["final"]["schedule"]["distill"] == 0.5


def test_a_budget_of_a_quarter_percent_is_met_before_the_cut(tmp_path):
    """0.25 % of the parameters of a width-32 UNet: the deadline zeroes what the constraint has
    not, the cut removes exact zeros only, and the pruned network predicts what the trained one did."""
    m = compose_run(tmp_path, *TINY_SYNTHETIC, "model.width=32", "trainer.steps=20", "trainer.val_every=10",
                    "schedule.finetune_steps=0", "constraint.budget=0.0025", "schedule.min_channels=1")
    dense, pruned = m["dense"], m["pruned"]
    assert pruned["params_ratio"] <= 0.0025
    assert pruned["cut_live_units"] == 0 and pruned["cut_constant_units"] == 0
    assert pruned["cut_logit_change"] < 1e-5 and pruned["miou"] == pytest.approx(dense["miou"], abs=1e-6)
