"""Summaries of evaluation runs: the metrics of each (dataset, mode) from its result records (NoC@80/85/90,
the ">=20" counts, collapses, mIoU per click, SPC, oracle mIoU) and the hardest samples."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from fbrs.evaluation.metrics import (
    collapses,
    compute_noc,
    mean_iou_per_click,
    noc_thresholds,
    number_of_clicks,
    threshold_label,
)
from fbrs.evaluation.run_folder import load_run_records, read_run_config

STANDARD_MAX_CLICKS = 20  # NoC@85/90 and ">=20" of the paper
LONG_MAX_CLICKS = 100  # NoC100@90 and ">=100"


def summarize_records(
    records: list[dict[str, Any]], max_clicks: int, target_iou: float, expected_samples: int | None = None
) -> dict[str, Any]:
    """Metrics of one (dataset, mode) from its result records (see protocol.SampleResult.to_record).

    NoC@80/85/90 and the ">=20" counts use min(20, max_clicks) clicks (a longer run's curves are cut at 20,
    which gives exactly what a 20-click run gives); with max_clicks >= 100 NoC100@90 and ">=100@90" too.
    collapses = samples whose IoU falls more than metrics.COLLAPSE_DROP below its best so far at some click
    within those clicks. SPC = mean predictor time per click; time_seconds = total processing time of all
    samples.
    """
    curves = [record["ious"] for record in records]
    standard_clicks = min(STANDARD_MAX_CLICKS, max_clicks)
    thresholds = noc_thresholds(target_iou)
    nocs, over_max = compute_noc(curves, thresholds, standard_clicks)
    total_clicks = sum(len(curve) for curve in curves)
    click_seconds = sum(sum(record["click_seconds"]) for record in records)
    summary: dict[str, Any] = {
        "samples": len(records),
        "expected_samples": expected_samples,
        "noc_max_clicks": standard_clicks,
        "noc": {threshold_label(t): value for t, value in zip(thresholds, nocs, strict=True)},
        "over_max": {threshold_label(t): value for t, value in zip(thresholds, over_max, strict=True)},
        "collapses": sum(collapses(curve, max_clicks=standard_clicks) for curve in curves),
        "miou_per_click": mean_iou_per_click(curves, max_clicks),
        "total_clicks": total_clicks,
        "spc": click_seconds / total_clicks if total_clicks else None,
        "time_seconds": sum(record["seconds"] for record in records),
    }
    if max_clicks >= LONG_MAX_CLICKS:
        long_nocs, long_over = compute_noc(curves, [thresholds[-1]], LONG_MAX_CLICKS)
        summary["noc100_90"] = long_nocs[0]
        summary["over_100_90"] = long_over[0]
    oracle = [record["oracle_iou"] for record in records if record.get("oracle_iou") is not None]
    if oracle:
        summary["oracle_miou"] = float(np.mean(oracle))
        summary["oracle_samples"] = len(oracle)
    return summary


def summarize_run(run_dir: str | os.PathLike, expected: dict[str, int] | None = None) -> dict[str, Any]:
    """The summary of a run folder (what summary.json holds)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    identity = config["identity"]
    settings = config.get("settings", {})
    records = load_run_records(run_dir)
    mode_order = settings.get("modes") or []
    named_first = [d for d in config.get("dataset_names", []) if d in records]
    dataset_order = named_first + [d for d in records if d not in named_first]
    results = []
    for dataset in dataset_order:
        modes = sorted(records[dataset], key=lambda m: (mode_order.index(m) if m in mode_order else len(mode_order), m))
        for mode in modes:
            entry = summarize_records(
                records[dataset][mode],
                identity["max_clicks"],
                identity["target_iou"],
                (expected or {}).get(dataset),
            )
            results.append({"dataset": dataset, "mode": mode, **entry})
    return {
        "run": run_dir.name,
        "model": identity["model"],
        "max_clicks": identity["max_clicks"],
        "target_iou": identity["target_iou"],
        "zoom_in": identity["zoom_in"],
        "stop_at_target": identity["stop_at_target"],
        "datasets": dataset_order,
        "results": results,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def worst_samples(
    records: list[dict[str, Any]], count: int, target_iou: float, max_clicks: int
) -> list[dict[str, Any]]:
    """The `count` hardest samples: most clicks to reach the target IoU, then lowest final IoU."""
    threshold = noc_thresholds(target_iou)[-1]
    return sorted(
        records,
        key=lambda r: (-number_of_clicks(r["ious"], threshold, max_clicks), r["ious"][-1] if r["ious"] else 0.0),
    )[:count]


__all__ = ["LONG_MAX_CLICKS", "STANDARD_MAX_CLICKS", "summarize_records", "summarize_run", "worst_samples"]
