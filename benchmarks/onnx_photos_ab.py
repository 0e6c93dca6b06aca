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
from photo_protocol import add_photo_arguments, load_photo_samples, photo_predictor

from fbrs.evaluation.protocol import evaluate_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_photo_arguments(parser)
    args = parser.parse_args()

    model, samples = load_photo_samples(args)
    curves: dict[str, list[list[float]]] = {}
    for round_index, backends in enumerate((("torch", "onnx"), ("onnx", "torch"))):
        for backend in backends:
            predictor = photo_predictor(args, model, backend)
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
