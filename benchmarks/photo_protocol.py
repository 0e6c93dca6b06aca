"""What the real-photo benchmarks share (`onnx_photos_ab.py`, `profile_click.py`): their common options and
the model, samples and predictor they build from them."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from fbrs.evaluation.datasets import load_dataset
from fbrs.evaluation.predictors import PredictorRecipe, load_model_for_evaluation


def add_photo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint; default: the bundled model")
    parser.add_argument("--dataset", default="GrabCut")
    parser.add_argument("--every", type=int, default=10, help="take every N-th sample")
    parser.add_argument("--mode", default="f-BRS-B")
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--threads", type=int, default=1)


def load_photo_samples(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """Set the thread count; -> (model, every --every-th sample of --dataset)."""
    torch.set_num_threads(args.threads)
    model, _ = load_model_for_evaluation(args.model)
    dataset = load_dataset(args.dataset)
    return model, [dataset[index] for index in range(0, len(dataset), args.every)]


def photo_predictor(args: argparse.Namespace, model: Any, backend: str) -> Any:
    """The predictor of `fbrs evaluate` for --mode (Zoom-In at 400 px), with flip unless --no-flip; backend
    "torch" or "onnx" (a mode ONNX Runtime cannot run stays in torch, as in `fbrs evaluate --backend onnx`)."""
    recipe = PredictorRecipe(options={"with_flip": not args.no_flip}, zoom_in_target_size=400, backend=backend)
    return recipe.build(args.mode, model)
