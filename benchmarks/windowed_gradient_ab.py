"""Windowed versus whole-map f-BRS gradient, on real photos, on this CPU: same clicks, per-click agreement.

The windowed gradient (fbrs.inference.brs.windows) equals the whole-map one in exact arithmetic; in floats
the two sum in other orders, and L-BFGS may amplify that into another trajectory. This script replays the
robot clicks of the whole-map run (the original code's computation) with both, interleaved, one thread,
and reports per click: L-BFGS evaluations of each, mask IoU and max |dp| between the two, seconds.

    .venv/bin/python benchmarks/windowed_gradient_ab.py --samples banana1 --samples 124084 --clicks 8
Results: benchmarks/results/windowed_gradient_ab.json (and a line per click on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="GrabCut")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--samples", action="append", help="sample names (default: banana1)")
    parser.add_argument("--clicks", type=int, default=8)
    parser.add_argument("--model", action="append", choices=("bundled", "reference_r34"),
                        help="bundled MobileNetV2 and/or the reference ResNet-34 (calibrated recipe)")
    parser.add_argument("--mode", default="f-BRS-B")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "windowed_gradient_ab.json")
    args = parser.parse_args()

    import numpy as np
    import torch

    import fbrs
    from fbrs.evaluation.datasets import load_dataset
    from fbrs.evaluation.metrics import iou
    from fbrs.evaluation.robot import ClickRobot
    from fbrs.io_utils import write_text_atomic
    from fbrs.models.reference_weights import build_reference_model

    torch.set_num_threads(1)
    dataset = load_dataset(args.dataset, root=args.data)
    wanted = args.samples or ["banana1"]
    samples = [dataset[i] for i in range(len(dataset)) if dataset[i].name in wanted]
    models = {"bundled": fbrs.load_default_model, "reference_r34": lambda: build_reference_model("calibrated")}
    rows = []
    for model_name in args.model or ["bundled", "reference_r34"]:
        model = models[model_name]()
        for sample in samples:
            predictors = {}
            for windowed in (False, True):
                predictor = fbrs.Predictor(model, mode=args.mode, windowed_gradient=windowed)
                predictor.set_image(sample.image)
                predictors[windowed] = predictor
            robot = ClickRobot(sample.mask, sample.ignore)
            mask = np.zeros_like(sample.mask)
            for index in range(args.clicks):
                click = robot.next_click(mask)
                result = {}
                for windowed, predictor in predictors.items():  # interleaved per click
                    start = time.perf_counter()
                    probs = predictor.add_click(click.y, click.x, click.is_positive)
                    result[windowed] = (np.array(probs), len(predictor.refiner.last_loss_values),
                                        time.perf_counter() - start)
                whole, windowed = result[False], result[True]
                mask = whole[0] > predictor.prob_threshold  # the robot follows the whole-map run
                agreement = (whole[0] > 0.49) == (windowed[0] > 0.49)
                union = (whole[0] > 0.49) | (windowed[0] > 0.49)
                row = {
                    "model": model_name, "sample": sample.name, "click": index + 1,
                    "evaluations_whole": whole[1], "evaluations_windowed": windowed[1],
                    "mask_iou_between": float(1 - (~agreement & union).sum() / max(1, union.sum())),
                    "max_abs_between": float(np.abs(whole[0] - windowed[0]).max()),
                    "iou_whole": float(iou(sample.mask, whole[0] > 0.49, sample.ignore)),
                    "iou_windowed": float(iou(sample.mask, windowed[0] > 0.49, sample.ignore)),
                    "seconds_whole": round(whole[2], 3), "seconds_windowed": round(windowed[2], 3),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    payload = {"cpu": os.environ.get("ONEDNN_MAX_CPU_ISA", "default ISA"), "mode": args.mode, "rows": rows,
               "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
