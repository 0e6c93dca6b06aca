"""Reports of evaluation runs: the paper's Table 3 / Table 4 layouts in Markdown, JSON and CSV, the run's
report files (with the plots), and `fbrs report` (several runs side by side)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fbrs.errors import FbrsError
from fbrs.evaluation.datasets import Dataset
from fbrs.evaluation.metrics import COLLAPSE_DROP
from fbrs.evaluation.plots import plot_miou_vs_clicks, write_worst_case_galleries
from fbrs.evaluation.run_folder import CONFIG_FILE
from fbrs.evaluation.settings import EvaluationSettings
from fbrs.evaluation.summary import STANDARD_MAX_CLICKS, summarize_run
from fbrs.io_utils import write_text_atomic

# ----------------------------------------------------------------------------------------------------------
# Rendering


def _number(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.{digits}f}"


def _model_label(model: dict[str, Any]) -> str:
    kind = model.get("kind")
    if kind == "checkpoint":
        return f"{Path(model['path']).name} (sha256 {model.get('sha256', '')[:12]})"
    if kind == "random-weights":
        return f"{model['name']} with random weights (seed {model.get('seed')})"
    return str(kind)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _by_key(summary: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(entry["dataset"], entry["mode"]): entry for entry in summary["results"]}


def _modes(summary: dict[str, Any]) -> list[str]:
    modes: list[str] = []
    for entry in summary["results"]:
        if entry["mode"] not in modes:
            modes.append(entry["mode"])
    return modes


def table3_markdown(summary: dict[str, Any], row_label: str = "") -> tuple[list[str], list[list[str]]]:
    """Paper Table 3 layout: one row per mode, NoC@85 and NoC@90 for every dataset."""
    entries = _by_key(summary)
    header = ["Method"] + [f"{d} NoC@{t}" for d in summary["datasets"] for t in ("85", "90")]
    rows = []
    for mode in _modes(summary):
        row = [f"{row_label}{mode}"]
        for dataset in summary["datasets"]:
            entry = entries.get((dataset, mode))
            row += [_number(entry["noc"].get(t)) if entry else "-" for t in ("85", "90")]
        rows.append(row)
    return header, rows


def render_summary_markdown(summary: dict[str, Any]) -> str:
    entries = _by_key(summary)
    datasets, modes = summary["datasets"], _modes(summary)
    n20 = min(STANDARD_MAX_CLICKS, summary["max_clicks"])
    parts = [
        f"# Evaluation `{summary['run']}`",
        "",
        f"Model: {_model_label(summary['model'])}. Max clicks {summary['max_clicks']}, target IoU "
        f"{summary['target_iou']:.2f}, zoom-in {'on' if summary['zoom_in'] else 'off'}"
        f"{'' if summary['stop_at_target'] else ', no early stop'}. Generated {summary['generated']}.",
        "",
        "Samples evaluated: "
        + ", ".join(
            f"{d}/{m} {e['samples']}" + (f" of {e['expected_samples']}" if e.get("expected_samples") else "")
            for (d, m), e in entries.items()
        )
        + ".",
        "",
        "## Number of clicks (paper Table 3 layout)",
        "",
        _table(*table3_markdown(summary)),
        "",
        "## Clicks and speed (paper Table 4 layout; collapses = samples that lose more than "
        f"{COLLAPSE_DROP:g} IoU from their best at some click; SPC = predictor seconds per click, "
        "Time = total seconds)",
        "",
    ]
    header = ["Method"]
    for dataset in datasets:
        header += [
            f"{dataset} NoC@90", f"{dataset} #>={n20}", f"{dataset} collapses", f"{dataset} SPC, s",
            f"{dataset} Time, s",
        ]
    rows = []
    for mode in modes:
        row = [mode]
        for dataset in datasets:
            entry = entries.get((dataset, mode))
            if entry is None:
                row += ["-"] * 5
                continue
            row += [
                _number(entry["noc"].get("90")),
                _number(entry["over_max"].get("90")),
                _number(entry["collapses"]),
                _number(entry["spc"], 3),
                _number(entry["time_seconds"], 1),
            ]
        rows.append(row)
    parts += [_table(header, rows), ""]

    if any("noc100_90" in e for e in entries.values()):
        header = ["Method"] + [f"{d} {c}" for d in datasets for c in ("NoC100@90", "#>=100")]
        rows = [
            [mode]
            + [
                _number(entries[(d, mode)].get(key)) if (d, mode) in entries else "-"
                for d in datasets
                for key in ("noc100_90", "over_100_90")
            ]
            for mode in modes
        ]
        parts += ["## 100 clicks", "", _table(header, rows), ""]

    if any("oracle_miou" in e for e in entries.values()):
        header = ["Method"] + [f"{d} oracle mIoU" for d in datasets]
        rows = [
            [mode] + [_number(entries.get((d, mode), {}).get("oracle_miou"), 3) for d in datasets]
            for mode in modes
            if any("oracle_miou" in entries.get((d, mode), {}) for d in datasets)
        ]
        parts += [
            "## f-BRS oracle (paper Appendix B: GT as loss target after the clicks)",
            "",
            _table(header, rows),
            "",
        ]

    clicks_shown = [k for k in (1, 3, 5, 10, 20, 50, 100) if k <= summary["max_clicks"]]
    header = ["Dataset", "Method"] + [f"mIoU@{k}" for k in clicks_shown]
    rows = [[d, m] + [_number(e["miou_per_click"][k - 1], 3) for k in clicks_shown] for (d, m), e in entries.items()]
    parts += ["## Mean IoU after k clicks", "", _table(header, rows), ""]
    return "\n".join(parts)


CSV_FIELDS = [
    "dataset",
    "mode",
    "samples",
    "noc_max_clicks",
    "noc@80",
    "noc@85",
    "noc@90",
    "over_max@85",
    "over_max@90",
    "collapses",
    "noc100@90",
    "over_100@90",
    "spc",
    "time_seconds",
    "total_clicks",
    "oracle_miou",
    "miou@1",
    "miou@5",
    "miou@10",
    "miou@20",
]


def render_summary_csv(summary: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for entry in summary["results"]:
        curve = entry["miou_per_click"]
        row = {
            "dataset": entry["dataset"],
            "mode": entry["mode"],
            "samples": entry["samples"],
            "noc_max_clicks": entry["noc_max_clicks"],
            "spc": entry["spc"],
            "time_seconds": entry["time_seconds"],
            "total_clicks": entry["total_clicks"],
            "collapses": entry["collapses"],
            "noc100@90": entry.get("noc100_90"),
            "over_100@90": entry.get("over_100_90"),
            "oracle_miou": entry.get("oracle_miou"),
        }
        for label in ("80", "85", "90"):
            row[f"noc@{label}"] = entry["noc"].get(label)
        for label in ("85", "90"):
            row[f"over_max@{label}"] = entry["over_max"].get(label)
        for k in (1, 5, 10, 20):
            row[f"miou@{k}"] = curve[k - 1] if len(curve) >= k else None
        writer.writerow(row)
    return buffer.getvalue()


def write_run_reports(
    run_dir: str | os.PathLike,
    datasets: dict[str, Dataset] | None = None,
    settings: EvaluationSettings | None = None,
    predictor_for: Callable[[str, str], Any] | None = None,
) -> dict[str, Any]:
    """Write summary.{md,json,csv}, the mIoU plot and the worst-case galleries of a run folder.

    datasets / settings (the run's): the expected sample counts (with settings.limit) and the galleries'
    samples. predictor_for(mode, dataset name) -> the run's predictor, to replay the galleries' samples
    whose masks were not saved; without it (or with settings.gallery_size 0) no galleries are drawn.
    """
    run_dir = Path(run_dir)
    expected = None
    if datasets is not None:
        limit = settings.limit if settings is not None else None
        expected = {name: len(d) if limit is None else min(limit, len(d)) for name, d in datasets.items()}
    summary = summarize_run(run_dir, expected)
    if not summary["results"]:
        return summary
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    write_text_atomic(run_dir / "summary.md", render_summary_markdown(summary))
    write_text_atomic(run_dir / "summary.csv", render_summary_csv(summary))
    plot_miou_vs_clicks(summary, run_dir / "miou_vs_clicks.png")
    if datasets is not None and settings is not None and predictor_for is not None and settings.gallery_size > 0:
        write_worst_case_galleries(run_dir, datasets, settings, predictor_for)
    return summary


# ----------------------------------------------------------------------------------------------------------
# fbrs report


def compare_runs_markdown(run_dirs: list[str | os.PathLike]) -> str:
    """One Markdown table with the runs side by side: a row per (run, mode), NoC@85/NoC@90, the samples never at
    the target within the standard clicks (#>=20), the collapses and SPC per dataset."""
    summaries = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not (run_dir / CONFIG_FILE).is_file():
            raise FbrsError(
                f"{run_dir} is not an evaluation run (no {CONFIG_FILE}); expected a folder made by fbrs evaluate"
            )
        summaries.append(summarize_run(run_dir))
    datasets: list[str] = []
    for summary in summaries:
        datasets += [d for d in summary["datasets"] if d not in datasets]
    columns = ("NoC@85", "NoC@90", "#>=20", "collapses", "SPC, s")
    header = ["Run", "Model", "Method"] + [f"{d} {c}" for d in datasets for c in columns]
    rows = []
    for summary in summaries:
        entries = _by_key(summary)
        for mode in _modes(summary):
            row = [summary["run"], _model_label(summary["model"]), mode]
            for dataset in datasets:
                entry = entries.get((dataset, mode))
                row += (
                    [
                        _number(entry["noc"].get("85")),
                        _number(entry["noc"].get("90")),
                        _number(entry["over_max"].get("90")),
                        _number(entry["collapses"]),
                        _number(entry["spc"], 3),
                    ]
                    if entry
                    else ["-"] * len(columns)
                )
            rows.append(row)
    notes = [
        f"- `{s['run']}`: max clicks {s['max_clicks']}, target IoU {s['target_iou']:.2f}, zoom-in "
        f"{'on' if s['zoom_in'] else 'off'}; samples "
        + ", ".join(f"{e['dataset']}/{e['mode']} {e['samples']}" for e in s["results"])
        for s in summaries
    ]
    return "\n".join(["# Evaluation runs compared", "", _table(header, rows), "", *notes, ""])
