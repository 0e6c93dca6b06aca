"""Issue 14, item 3: the SAM family beside the bundled DeepLab, side by side, from `fbrs evaluate` run folders.

    .venv/bin/python benchmarks/sam_comparison.py work/runs/sam_grabcut work/runs/sam_berkeley ... \
        work/runs/v1_grabcut=v1 ... --out benchmarks/results/sam_comparison.md

(FOLDER=LABEL: that run's modes are named "LABEL mode", so that two models' runs of one mode stay apart.)

For each dataset and mode found in the runs: instances, NoC@85, NoC@90, #>=20 (never at 0.90 within the
clicks), mean IoU after clicks 1 / 3 / 5 / 10 / 20, seconds per click, the number of instances that lose more
than 0.3 IoU from their best so far at some click (fbrs.evaluation.metrics.collapses), and against the plain
`SAM` mode of the same dataset (where measured): instances solved sooner / later at 0.90. Only instances every
compared mode finished are counted in the comparison column; the other columns use every finished instance (the
count says how many).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fbrs.errors import FbrsError
from fbrs.evaluation.metrics import curve_metrics, mean_iou_per_click, number_of_clicks
from fbrs.evaluation.run_folder import load_run_records
from fbrs.io_utils import write_text_atomic

MAX_CLICKS = 20


def rows_for(dataset: str, by_mode: dict[str, list[dict]]) -> list[str]:
    baseline = {record["sample"]: record for record in by_mode.get("SAM", [])}
    lines = []
    for mode, records in by_mode.items():
        curves = [record["ious"] for record in records]
        if not curves:
            continue
        counts = curve_metrics(curves, MAX_CLICKS)
        miou = mean_iou_per_click(curves, MAX_CLICKS)
        seconds = sum(sum(r["click_seconds"]) for r in records) / max(1, sum(len(r["click_seconds"]) for r in records))
        sooner = later = 0
        if baseline and mode != "SAM":
            for record in records:
                if record["sample"] in baseline:
                    ours = number_of_clicks(record["ious"], 0.90, MAX_CLICKS)
                    theirs = number_of_clicks(baseline[record["sample"]]["ious"], 0.90, MAX_CLICKS)
                    sooner += ours < theirs
                    later += ours > theirs
        versus = f"{sooner} / {later}" if baseline and mode != "SAM" else "-"
        curve = " / ".join(f"{miou[k - 1]:.3f}" for k in (1, 3, 5, 10, 20))
        lines.append(
            f"| {dataset} | {mode} | {len(curves)} | {counts['noc@85']:.2f} | {counts['noc@90']:.2f} | "
            f"{counts['over_max@90']:.0f} | {curve} | {seconds:.3f} | {counts['collapses']:.0f} | {versus} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs", nargs="+", help="fbrs evaluate run folders; FOLDER=LABEL puts LABEL before its modes' names"
    )
    # No default file: a quick look at some runs must not overwrite the committed table.
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = parser.parse_args()
    merged: dict[str, dict[str, list[dict]]] = {}
    for run in args.runs:
        folder, _, label = run.partition("=")
        try:
            records_of_run = load_run_records(Path(folder))
        except FbrsError as error:
            parser.error(str(error))
        for dataset, by_mode in records_of_run.items():
            for mode, records in by_mode.items():
                name = f"{label} {mode}" if label else mode
                merged.setdefault(dataset, {}).setdefault(name, []).extend(records)
    header = [
        "| dataset | mode | n | NoC@85 | NoC@90 | #>=20 | mIoU @1 / 3 / 5 / 10 / 20 | s / click | collapses |"
        " NoC@90 sooner / later than SAM |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines = [line for dataset in sorted(merged) for line in rows_for(dataset, merged[dataset])]
    sources = ", ".join(f"`{run}`" for run in args.runs)
    text = "\n".join(header + lines) + f"\n\nFrom the run folders {sources}; `benchmarks/sam_comparison.py`.\n"
    if args.out is not None:
        write_text_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
