"""Evaluate the classical baselines with the standard click robot (NoC@85/90, seconds per click).

Until `fbrs evaluate` runs the baselines itself, this script drives them with fbrs.evaluation's robot and
metrics: the robot clicks at the interior point of the larger error region, the prediction is
`scores > 0.49`, a sample stops at IoU >= 0.90 or after 20 clicks.

    nice -n 10 env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
        .venv/bin/python benchmarks/baselines_eval.py --datasets GrabCut,Berkeley --out results/baselines

Samples are processed interleaved (GrabCut #0, Berkeley #0, GrabCut #1, ...; every mode on a sample
before the next), so a run stopped early still compares all modes on the same samples. Writes one
JSON-lines file per (mode, dataset) with each sample's IoU curve, wall-clock and CPU seconds spent in
add_click (resumable: samples already there are skipped) and, at the end or with --summary-only, the
summary table. CPU seconds are reported beside wall seconds because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fbrs.evaluation.datasets import load_dataset
from fbrs.evaluation.metrics import PREDICTION_THRESHOLD, compute_noc, iou
from fbrs.evaluation.robot import ClickRobot
from fbrs.registry import PREDICTORS


def evaluate_sample(predictor, sample, max_clicks: int, target_iou: float) -> tuple[list[float], float, float]:
    """IoU after each click, and the total wall-clock and CPU seconds spent inside add_click."""
    predictor.set_image(sample.image)
    robot = ClickRobot(sample.mask, sample.ignore)
    prediction = np.zeros(sample.mask.shape, dtype=bool)
    ious, seconds, cpu_seconds = [], 0.0, 0.0
    for _ in range(max_clicks):
        click = robot.next_click(prediction)
        start, cpu_start = time.perf_counter(), time.process_time()
        scores = predictor.add_click(click.y, click.x, click.is_positive)
        seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu_start
        prediction = scores > PREDICTION_THRESHOLD
        ious.append(iou(sample.mask, prediction, sample.ignore))
        if ious[-1] >= target_iou:
            break
    return ious, seconds, cpu_seconds


def summarise(records: list[dict], max_clicks: int) -> dict:
    curves = [record["ious"] for record in records]
    (noc85, noc90), (over85, over90) = compute_noc(curves, [0.85, 0.9], max_clicks)
    clicks = sum(len(curve) for curve in curves)
    return {
        "samples": len(records),
        "NoC@85": noc85,
        "NoC@90": noc90,
        ">=20@90": over90,
        "SPC": sum(record["seconds"] for record in records) / max(clicks, 1),
        "CPU SPC": sum(record["cpu_seconds"] for record in records) / max(clicks, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(PREDICTORS.names(family="baseline")))
    parser.add_argument("--datasets", default="GrabCut,Berkeley")
    parser.add_argument("--out", default="results/baselines")
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--target-iou", type=float, default=0.90)
    parser.add_argument("--limit", type=int, default=None, help="first N samples only (smoke runs)")
    parser.add_argument("--summary-only", action="store_true", help="only summarise the existing logs")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="predictor option for every mode, e.g. border_background=false or max_side=null (ablations)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = _parse_options(args.option)
    options_path = out / "options.json"
    recorded = json.loads(options_path.read_text()) if options_path.exists() else {}
    if any(out.glob("*.jsonl")) and recorded != options:
        raise SystemExit(f"{out} was run with options {recorded}, not {options}: use another --out")
    options_path.write_text(json.dumps(options))
    modes = args.modes.split(",")
    datasets = {name: load_dataset(name) for name in args.datasets.split(",")}
    counts = {name: len(d) if args.limit is None else min(args.limit, len(d)) for name, d in datasets.items()}
    records = {(mode, name): _read_log(out / f"{mode}__{name}.jsonl") for mode in modes for name in datasets}
    predictors = {mode: PREDICTORS.get(mode)(**options) for mode in modes}
    for index in range(0 if args.summary_only else max(counts.values())):
        for name, dataset in datasets.items():
            if index >= counts[name]:
                continue
            sample = dataset[index]
            for mode in modes:
                if any(record["name"] == sample.name for record in records[mode, name]):
                    continue
                ious, seconds, cpu_seconds = evaluate_sample(predictors[mode], sample, args.max_clicks, args.target_iou)
                record = {"name": sample.name, "ious": ious, "seconds": seconds, "cpu_seconds": cpu_seconds}
                records[mode, name].append(record)
                with (out / f"{mode}__{name}.jsonl").open("a") as log:
                    log.write(json.dumps(record) + "\n")
                print(index, name, mode, len(ious), f"{ious[-1]:.3f}", f"{seconds:.1f}s", flush=True)
    summary = {f"{mode} {name}": summarise(records[mode, name], args.max_clicks) for mode, name in records}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for key, row in summary.items():
        print(key, json.dumps(row))


def _parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator:
            raise SystemExit(f"--option needs KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            raise SystemExit(f"--option {key}: {value!r} is not a JSON value (true, false, null, 320, ...)") from None
    return options


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


if __name__ == "__main__":
    main()
