import numpy as np
import pytest
import torch

from jsp.metrics import (SegmentationMeter, auc_from_histograms, confusion_matrix, count_macs,
                         count_params, metrics_from_confusion, weight_mb)


def test_confusion_matrix_counts_by_hand():
    target = torch.tensor([0, 0, 1, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]


def test_confusion_matrix_skips_outside_fov_and_ignore_index():
    target = torch.tensor([0, 1, 255, 1])
    pred = torch.tensor([0, 0, 1, 1])
    valid = torch.tensor([True, False, True, True])
    assert confusion_matrix(pred, target, 2, valid).tolist() == [[1, 0], [0, 1]]


def test_binary_metrics_equal_hand_computed_values():
    # tn=50, fp=10, fn=5, tp=35
    m = metrics_from_confusion(np.array([[50, 10], [5, 35]]), ["bg", "vessel"])
    assert m["iou"]["bg"] == pytest.approx(50 / 65)
    assert m["iou"]["vessel"] == pytest.approx(35 / 50)
    assert m["miou"] == pytest.approx((50 / 65 + 35 / 50) / 2)
    assert m["f1"] == pytest.approx(70 / 85)
    assert m["se"] == pytest.approx(35 / 40)
    assert m["sp"] == pytest.approx(50 / 60)
    assert m["acc"] == pytest.approx(85 / 100)


def test_miou_ignores_classes_absent_from_target_and_prediction():
    m = metrics_from_confusion(np.array([[4, 0, 0], [0, 2, 2], [0, 0, 0]]))
    assert m["iou"]["2"] == 0.0  # predicted but never present: IoU 0, counted
    m = metrics_from_confusion(np.array([[4, 0, 0], [0, 4, 0], [0, 0, 0]]))
    assert m["iou"]["2"] is None and m["miou"] == 1.0


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    pos_scores = rng.integers(0, 50, 200)
    neg_scores = rng.integers(0, 50, 300)
    pairs = (pos_scores[:, None] > neg_scores[None]).mean() + 0.5 * (pos_scores[:, None] == neg_scores[None]).mean()
    auc = auc_from_histograms(np.bincount(pos_scores, minlength=50), np.bincount(neg_scores, minlength=50))
    assert auc == pytest.approx(pairs)
    assert auc_from_histograms(np.array([0, 1]), np.array([1, 0])) == 1.0


def test_meter_accumulates_over_images_not_per_image_mean():
    meter = SegmentationMeter(2)
    # image 1: perfect on 1 vessel pixel; image 2: 3 vessel pixels all missed
    for target, p1 in (([[1, 0]], [[0.9, 0.1]]), ([[1, 1, 1, 0]], [[0.2, 0.3, 0.1, 0.05]])):
        t = torch.tensor(target)
        p = torch.tensor(p1).float()
        meter.update(torch.stack([1 - p, p], 1), t)
    m = meter.compute()
    assert m["se"] == pytest.approx(1 / 4)  # 1 of 4 vessel pixels found over the set
    assert 0.5 < m["auc"] <= 1.0


def test_cost_of_a_single_conv():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_params(conv) == 3 * 8 * 9 + 8
    conv.pad_multiple = 1
    assert count_macs(conv, 3, (10, 12)) == 3 * 8 * 9 * 10 * 12
    assert weight_mb(conv) == pytest.approx((3 * 8 * 9 + 8) * 4 / 2**20)


def test_latency_is_timed_adaptively_with_a_fixed_thread_count():
    from torch import nn

    from jsp.metrics.cost import cost_report, latency

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    small = latency(model, 3, (32, 32), "cpu", max_run_time=0.5)
    assert small["threads"] == torch.get_num_threads() and small["runs"] >= 2
    assert small["ms"] > 0 and small["iqr_ms"] >= 0
    report = cost_report(model, 3, (32, 32), latency_s=0.2)
    assert {"latency_ms", "latency_iqr_ms", "latency_runs", "latency_threads"} <= set(report)
    assert "latency_ms" not in cost_report(model, 3, (32, 32), latency_s=0)
