"""A/B timing of predictor variants, interleaved in one run (the machine is shared: compare ratios only).

    .venv/bin/python benchmarks/speed_ab.py --model mobilenetv2_dh128 --mode f-BRS-B \
        --variant base --variant 'whole_map_gradient:windowed_gradient=0' --threads 1

A variant is `name` or `name:key=value,key=value`. Keys: any `fbrs.Predictor` keyword (int/float/bool
values), `windowed_gradient` (FeatureBRS), `channels_last` (model memory format), `inference_mode`
(NoBRS forward under torch.inference_mode), `threads` (torch threads for this variant).
Every repeat runs every variant once on the same synthetic image and robot click sequence (the ones
`fbrs bench` uses) in a rotating order; the report gives the median seconds per click over clicks
2..N, its ratio to the first variant, and the mean number of L-BFGS evaluations per click.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from fbrs.evaluation.bench import robot_click_sequence, synthetic_scene
from fbrs.evaluation.predictors import load_model_for_evaluation
from fbrs.inference.predictor import Predictor


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, options = text.partition(":")
    parsed = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        parsed[key] = _parse_value(value)
    return name, parsed


def make_predictor(models: dict, mode: str, options: dict) -> Predictor:
    options = dict(options)
    options.pop("threads", None)
    windowed = options.pop("windowed_gradient", None)
    model = models["channels_last" if options.pop("channels_last", False) else "default"]
    options.pop("inference_mode", None)
    mode = options.pop("mode", mode)
    predictor = Predictor(model, mode=mode, zoom_in=False, **options)
    if windowed is not None:
        predictor.refiner.windowed_gradient = bool(windowed)
    return predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenetv2_dh128")
    parser.add_argument("--mode", default="f-BRS-B")
    parser.add_argument("--crop-size", type=int, default=400)
    parser.add_argument("--clicks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--json", help="also write the raw times here")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    default_threads = torch.get_num_threads()
    model, _ = load_model_for_evaluation(args.model)
    models = {"default": model, "channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last)}
    variants = [parse_variant(text) for text in args.variant]
    image, mask = synthetic_scene(args.crop_size)

    clicks = robot_click_sequence(model, image, mask, args.clicks)  # the clicks `fbrs bench` times

    times = {name: [] for name, _ in variants}
    evaluations = {name: [] for name, _ in variants}
    for repeat in range(args.repeats + 1):  # repeat 0 warms up
        order = variants[repeat % len(variants) :] + variants[: repeat % len(variants)]
        for name, options in order:
            torch.set_num_threads(options.get("threads", default_threads))
            predictor = make_predictor(models, args.mode, options)
            predictor.set_image(image)
            context = torch.inference_mode if options.get("inference_mode") else torch.no_grad
            for index, click in enumerate(clicks):
                start = time.perf_counter()
                if predictor.mode == "NoBRS":
                    with context():
                        predictor.add_click(click.y, click.x, click.is_positive)
                else:
                    predictor.add_click(click.y, click.x, click.is_positive)
                elapsed = time.perf_counter() - start
                if repeat > 0 and index > 0:
                    times[name].append(elapsed)
                    evaluations[name].append(len(getattr(predictor.refiner, "last_loss_values", [])))
        torch.set_num_threads(default_threads)

    base = np.median(times[variants[0][0]])
    print(f"model {args.model}, mode {args.mode}, crop {args.crop_size}, {args.clicks} clicks x {args.repeats}")
    for name, _ in variants:
        median = np.median(times[name])
        print(
            f"{name:28s} median {median:.3f} s  p95 {np.percentile(times[name], 95):.3f} s  "
            f"x{median / base:.2f}  evaluations/click {np.mean(evaluations[name]):.1f}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "times": times, "evaluations": evaluations}, handle, indent=1)


if __name__ == "__main__":
    main()
