"""CPU seconds per click on real click sequences: replay the clicks an `fbrs evaluate` run recorded.

    python benchmarks/replay_latency.py work/runs/sam_tokzoom --dataset Berkeley \
        --modes SAM-zoom,SAM-f-BRS-tokens-guarded-zoom --limit 40 --out work/replay_latency.json

`fbrs bench` times one synthetic 400x400 image, where Zoom-In never crops and f-BRS finds its clicks already
respected (it stops at once): it cannot show what a crop's encoder run or a long L-BFGS costs. This script
takes the run folder's recorded clicks of each mode (each mode its own sequence, so every answer is the one the
evaluation scored), replays them on one thread and times every click in process CPU seconds (close to an idle
machine's wall time even on a loaded one) and wall seconds; modes interleaved per sample. The image encoder is
timed apart: set_image with the embedding cache emptied ("new image"). A replay whose last IoU differs from the
recorded one by more than 1e-4 is counted (the run was made on another machine, or with other settings).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fbrs.evaluation.datasets import load_dataset
from fbrs.evaluation.metrics import iou
from fbrs.evaluation.predictors import PredictorRecipe


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an fbrs evaluate run folder")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--modes", required=True, help="comma-separated; each must be in the run")
    parser.add_argument("--limit", type=int, default=None, help="the first K samples of the run")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--out", type=Path, default=None, help="JSON with every click's seconds")
    args = parser.parse_args()
    torch.set_num_threads(1)  # before the SAM model loads: its encoder session takes this count

    modes = args.modes.split(",")
    records: dict[str, dict[str, dict]] = {}
    for mode in modes:
        path = args.run / "results" / args.dataset / f"{mode}.jsonl"
        if not path.is_file():
            raise SystemExit(f"{path} not found: run `fbrs evaluate --datasets {args.dataset} --modes {mode}` first")
        records[mode] = {r["sample"]: r for r in map(json.loads, path.read_text().splitlines())}
    settings = json.loads((args.run / "config.json").read_text())["identity"]
    recipe = PredictorRecipe(options=settings["predictor_options"], zoom_in=settings["zoom_in"],
                             zoom_in_target_size=settings["zoom_in_target_size"])
    dataset = load_dataset(args.dataset, root=args.data_root)
    names = [s for s in records[modes[0]] if all(s in records[m] for m in modes)][: args.limit]
    wanted = set(names)
    predictors = {mode: recipe.build(mode, None, dataset.name) for mode in modes}
    result = {mode: {"click_cpu": [], "click_wall": [], "new_image_cpu": [], "mismatches": 0} for mode in modes}
    for sample in dataset:
        if sample.name not in wanted:
            continue
        for mode, predictor in predictors.items():
            model = getattr(predictor, "model", None)
            if hasattr(model, "clear_cache"):
                model.clear_cache()
            started = time.process_time()
            predictor.set_image(sample.image)
            result[mode]["new_image_cpu"].append(time.process_time() - started)
            record = records[mode][sample.name]
            probabilities = None
            for index, (y, x, positive) in enumerate(record["clicks"]):  # recorded as (y, x, positive 0/1)
                cpu, wall = time.process_time(), time.perf_counter()
                probabilities = predictor.add_click(y, x, bool(positive))
                if index > 0:  # clicks 2.., as fbrs bench (BRS starts at the second click)
                    result[mode]["click_cpu"].append(time.process_time() - cpu)
                    result[mode]["click_wall"].append(time.perf_counter() - wall)
            replayed = iou(sample.mask, probabilities > settings["pred_threshold"], sample.ignore)
            if abs(replayed - record["ious"][-1]) > 1e-4:
                result[mode]["mismatches"] += 1
    print(f"{len(names)} samples of {args.dataset}, one thread, clicks 2.. of each recorded sequence")
    print("| mode | clicks | CPU s / click: median / p95 / max | wall s / click: median | new image CPU, s: median |"
          " replays off the record |")
    print("|---|---|---|---|---|---|")
    for mode, timing in result.items():
        cpu = timing["click_cpu"]
        print(f"| {mode} | {len(cpu)} | {statistics.median(cpu):.3f} / {percentile(cpu, 95):.3f} / {max(cpu):.2f} |"
              f" {statistics.median(timing['click_wall']):.3f} | {statistics.median(timing['new_image_cpu']):.2f} |"
              f" {timing['mismatches']} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"run": str(args.run), "dataset": args.dataset, "samples": names,
                                        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "modes": result}) + "\n")


if __name__ == "__main__":
    main()
