"""torch vs ONNX Runtime backend on real photos: the evaluation protocol on a few images of a dataset (issue #7).

    .venv/bin/python benchmarks/onnx_photos_ab.py --dataset GrabCut --every 10 --mode f-BRS-B --no-flip

Runs `fbrs evaluate`'s robot (Zoom-In on, stop at IoU 0.90, up to 20 clicks) with a torch and an ONNX predictor on
every --every-th sample, twice, the order of the backends swapped in the second round (a shared machine's load
then hits both alike). Prints the median and mean seconds per click of each round and, per sample, the clicks
each backend needed and the largest IoU difference along the curve (ONNX Runtime sums in another order, so
L-BFGS may take another path on a flat loss). The ONNX files come from the cache ($FBRS_CACHE_DIR).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fbrs.evaluation.datasets import load_dataset
from fbrs.evaluation.runner import default_predictor_factory, evaluate_sample, load_model_for_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint; default: the bundled model")
    parser.add_argument("--dataset", default="GrabCut")
    parser.add_argument("--every", type=int, default=10, help="take every N-th sample")
    parser.add_argument("--mode", default="f-BRS-B")
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, _ = load_model_for_evaluation(args.model)
    dataset = load_dataset(args.dataset)
    samples = [dataset[index] for index in range(0, len(dataset), args.every)]
    curves: dict[str, list[list[float]]] = {}
    for round_index, backends in enumerate((("torch", "onnx"), ("onnx", "torch"))):
        for backend in backends:
            predictor = default_predictor_factory(
                args.mode, model, with_flip=not args.no_flip, zoom_in_target_size=400, backend=backend
            )
            seconds, ious = [], []
            for sample in samples:
                result = evaluate_sample(predictor, sample, max_clicks=20, target_iou=0.90)
                seconds += result.click_seconds
                ious.append(result.ious)
            curves.setdefault(backend, ious)
            print(
                f"round {round_index + 1} {backend:5s}: median {np.median(seconds):.3f} s/click, "
                f"mean {np.mean(seconds):.3f}, {len(seconds)} clicks on {len(samples)} samples",
                flush=True,
            )
    for sample, with_torch, with_onnx in zip(samples, curves["torch"], curves["onnx"], strict=True):
        shared = min(len(with_torch), len(with_onnx))
        difference = max(abs(a - b) for a, b in zip(with_torch[:shared], with_onnx[:shared], strict=True))
        print(f"{sample.name}: clicks torch {len(with_torch)} / onnx {len(with_onnx)}, max IoU diff {difference:.4f}")


if __name__ == "__main__":
    main()
