"""NoC / IoU / time metrics against the original compute_noc_metric examples (units.json); collapses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fbrs.evaluation.metrics import (
    collapses,
    compute_noc,
    iou,
    mean_iou_per_click,
    noc_thresholds,
    number_of_clicks,
    threshold_label,
    time_metrics,
)


@pytest.fixture(scope="module")
def units(reference_dir):
    return json.loads((reference_dir / "units.json").read_text())["metrics"]


@pytest.mark.parametrize("max_clicks", [20, 5])
def test_compute_noc_matches_original(units, max_clicks):
    expected = units["compute_noc_metric"][f"max_clicks={max_clicks}, thrs=[0.8,0.85,0.9]"]
    nocs, over_max = compute_noc(units["iou_curves"], [0.8, 0.85, 0.9], max_clicks=max_clicks)
    np.testing.assert_allclose(nocs, expected["noc_list"], rtol=1e-12)
    assert over_max == expected["over_max_list"]


def test_thresholds_for_target_090_are_the_originals_arange(units):
    assert noc_thresholds(0.90) == units["evaluate_model_iou_thrs_for_target_0.90"]
    assert [threshold_label(t) for t in noc_thresholds(0.90)] == ["80", "85", "90"]
    assert noc_thresholds(0.5) == [0.8]  # the original raises the target to at least 0.8


def test_time_metrics_match_original(units):
    assert list(time_metrics([[1, 2, 3], [4]], 10.0)) == units["get_time_metrics([[1,2,3],[4]], 10.0)"]


def test_iou_examples_match_original(reference_dir, units):
    with np.load(reference_dir / "clicker.npz") as archive:
        for case, expected in units["get_iou_examples"].items():
            labels = archive[f"{case}__gt"]
            ours = [iou(labels == 1, pred, labels == -1) for pred in archive[f"{case}__pred_masks"]]
            np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_float32_comparison_counts_an_iou_equal_to_the_threshold():
    # 0.9 stored as float32 is below the float64 threshold 0.9000000000000001, but the original compares
    # in float32, where both are equal.
    assert number_of_clicks([0.5, 0.9], noc_thresholds(0.9)[-1], max_clicks=20) == 2


def test_noc_ignores_clicks_beyond_max_clicks():
    curve = [0.1] * 20 + [0.95]
    assert number_of_clicks(curve, 0.9, max_clicks=20) == 20
    assert number_of_clicks(curve, 0.9, max_clicks=100) == 21


def test_mean_iou_per_click_keeps_the_last_value_of_stopped_curves():
    assert mean_iou_per_click([[0.5, 0.95], [0.2, 0.4, 0.6]], max_clicks=4) == pytest.approx(
        [0.35, 0.675, 0.775, 0.775]
    )


def test_iou_of_two_empty_masks_is_one_and_ignore_is_left_out():
    empty = np.zeros((3, 3), bool)
    assert iou(empty, empty) == 1.0
    gt = np.array([[1, 1, 0]], bool)
    pred = np.array([[1, 0, 1]], bool)
    assert iou(gt, pred) == pytest.approx(1 / 3)
    assert iou(gt, pred, ignore_mask=np.array([[0, 1, 1]], bool)) == 1.0


def test_collapse_is_a_fall_from_the_best_so_far_not_from_the_previous_click():
    assert collapses([0.9, 0.5])  # 0.4 at once (Berkeley 388016 fell 0.82 -> 0.01 at click 2)
    assert collapses([0.9, 0.75, 0.55])  # 0.15 + 0.2: a slide over two clicks
    assert not collapses([0.9, 0.61, 0.95])  # 0.29 is no collapse
    assert not collapses([0.1, 0.05, 0.9, 0.95])  # a bad start is no collapse
    assert not collapses([])
    assert collapses([0.9, 0.7], drop=0.1) and not collapses([0.9, 0.7])
    assert not collapses([0.9] * 20 + [0.1], max_clicks=20)  # only the clicks the NoC counts


def test_curve_metrics_count_as_the_run_summary_does():
    """Benchmarks and training validation use curve_metrics; the run summary (summarize_records) must agree."""
    from fbrs.evaluation.metrics import curve_metrics
    from fbrs.evaluation.summary import summarize_records

    rng = np.random.default_rng(0)
    curves = [np.clip(np.cumsum(rng.uniform(-0.2, 0.25, size=20)) + 0.3, 0, 1).astype(np.float32).tolist()
              for _ in range(30)]
    curves.append([0.5] * 19 + [0.9])  # reaches 0.90 at the last click: NoC 20, counted as ">= 20"
    records = [{"ious": c, "click_seconds": [0.0] * 20, "seconds": 0.0} for c in curves]
    summary = summarize_records(records, max_clicks=20, target_iou=0.90)
    metrics = curve_metrics(curves)
    assert metrics["noc@85"] == summary["noc"]["85"] and metrics["noc@90"] == summary["noc"]["90"]
    assert metrics["over_max@90"] == summary["over_max"]["90"] and metrics["collapses"] == summary["collapses"]
    assert 0 < metrics["collapses"] < 31 and metrics["over_max@90"] >= 1
