"""Metrics of the standard protocol: IoU, NoC@t (number of clicks to reach IoU t), the count of images that
never reach it, mean IoU per click, seconds per click; and collapses (a click that wrecks the mask).

Numerics follow the original evaluation code so our numbers are comparable with the paper:
  * IoU curves are stored as float32, and NoC compares them with the threshold in float32;
  * the thresholds are `np.arange(0.8, min(0.95, target) + 0.001, 0.05)` (so "0.9" is 0.9000000000000001
    before the float32 cast);
  * a sample that never reaches t counts max_clicks; ">=max_clicks" counts every sample whose NoC equals
    max_clicks, including one that reaches t exactly at the last click.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_TARGET_IOU = 0.90
DEFAULT_MAX_CLICKS = 20
PREDICTION_THRESHOLD = 0.49  # probs > 0.49 = object, as the original evaluation
COLLAPSE_DROP = 0.3  # issue 14: "instances whose IoU drops by > 0.3 at some click"


def iou(gt_mask: np.ndarray, pred_mask: np.ndarray, ignore_mask: np.ndarray | None = None) -> float:
    """Intersection over union of two (H, W) bool masks, leaving out `ignore_mask` pixels.

    Two empty masks (nothing to segment, nothing predicted) give 1.0 (the original divides 0 by 0).
    """
    gt_mask = np.asarray(gt_mask, dtype=bool)
    pred_mask = np.asarray(pred_mask, dtype=bool)
    if gt_mask.shape != pred_mask.shape:
        raise ValueError(f"mask shapes differ: ground truth {gt_mask.shape}, prediction {pred_mask.shape}")
    valid = np.ones_like(gt_mask) if ignore_mask is None else ~np.asarray(ignore_mask, dtype=bool)
    intersection = np.count_nonzero(gt_mask & pred_mask & valid)
    union = np.count_nonzero((gt_mask | pred_mask) & valid)
    return 1.0 if union == 0 else intersection / union


def noc_thresholds(target_iou: float = DEFAULT_TARGET_IOU) -> list[float]:
    """The IoU thresholds the original reports for a target IoU: 0.8, 0.85, ... up to min(0.95, target)."""
    target_iou = max(0.8, target_iou)
    return np.arange(0.8, min(0.95, target_iou) + 0.001, 0.05).tolist()


def threshold_label(threshold: float) -> str:
    """0.8500000000000001 -> "85"."""
    return f"{round(threshold * 100):d}"


def number_of_clicks(ious: Sequence[float], threshold: float, max_clicks: int = DEFAULT_MAX_CLICKS) -> int:
    """Clicks needed to reach IoU >= threshold (1-based), or max_clicks if never reached.

    ious: IoU after click 1, 2, ...; only the first max_clicks entries count.
    """
    reached = np.asarray(ious, dtype=np.float32)[:max_clicks] >= np.float32(threshold)
    return int(np.argmax(reached)) + 1 if reached.any() else max_clicks


def compute_noc(
    all_ious: Sequence[Sequence[float]], thresholds: Sequence[float], max_clicks: int = DEFAULT_MAX_CLICKS
) -> tuple[list[float], list[int]]:
    """Mean NoC over samples and the number of samples with NoC == max_clicks, for each threshold.

    all_ious: one IoU curve per sample. Returns (noc per threshold, over_max per threshold).
    """
    nocs, over_max = [], []
    for threshold in thresholds:
        per_sample = np.array([number_of_clicks(curve, threshold, max_clicks) for curve in all_ious], int)
        nocs.append(float(per_sample.mean()) if len(per_sample) else float("nan"))
        over_max.append(int((per_sample == max_clicks).sum()))
    return nocs, over_max


def mean_iou_per_click(all_ious: Sequence[Sequence[float]], max_clicks: int) -> list[float]:
    """Mean IoU after click 1..max_clicks over samples (the paper's Figure 6).

    A curve that stopped early (the sample reached the target IoU) keeps its last IoU for the remaining
    clicks: the annotator has stopped clicking and the mask stays as it is.
    """
    if not all_ious:
        return []
    table = np.zeros((len(all_ious), max_clicks), np.float64)
    for row, curve in enumerate(all_ious):
        curve = np.asarray(curve, np.float64)[:max_clicks]
        if len(curve) == 0:
            continue
        table[row, : len(curve)] = curve
        table[row, len(curve) :] = curve[-1]
    return table.mean(axis=0).tolist()


def time_metrics(all_ious: Sequence[Sequence[float]], elapsed_seconds: float) -> tuple[float, float]:
    """(seconds per click, seconds per image) of a dataset processed in `elapsed_seconds` (the original's
    `get_time_metrics`: clicks = total length of all IoU curves)."""
    n_clicks = sum(len(curve) for curve in all_ious)
    n_images = len(all_ious)
    seconds_per_click = elapsed_seconds / n_clicks if n_clicks else float("nan")
    seconds_per_image = elapsed_seconds / n_images if n_images else float("nan")
    return seconds_per_click, seconds_per_image


def collapses(ious: Sequence[float], drop: float = COLLAPSE_DROP, max_clicks: int = DEFAULT_MAX_CLICKS) -> bool:
    """Whether some click leaves the IoU more than `drop` below its best so far (a click wrecked the mask).

    ious: IoU after click 1, 2, ...; only the first max_clicks entries count. Measured against the best so
    far, not the previous click, so a slide over several clicks counts too.
    """
    best = -np.inf
    for value in np.asarray(ious, dtype=np.float64)[:max_clicks]:
        best = max(best, value)
        if best - value > drop:
            return True
    return False


def curve_metrics(all_ious: Sequence[Sequence[float]], max_clicks: int = DEFAULT_MAX_CLICKS) -> dict[str, float]:
    """The comparison numbers of a set of IoU curves, counted as `fbrs.evaluation.summary` counts them:
    {"noc@85", "noc@90", "over_max@90" (samples with NoC@90 = max_clicks), "collapses"}. For benchmarks and
    training-time validation, so that every table counts the same way."""
    (noc85, noc90), (_, over_max90) = compute_noc(all_ious, noc_thresholds(0.90)[1:], max_clicks)
    return {
        "noc@85": noc85,
        "noc@90": noc90,
        "over_max@90": float(over_max90),
        "collapses": float(sum(collapses(curve, max_clicks=max_clicks) for curve in all_ious)),
    }
