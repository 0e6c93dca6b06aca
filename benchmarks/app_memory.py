"""Peak memory of the annotation app's session with one large image open (issue #7: <= 1.5 GB at 4000x3000).

    .venv/bin/python benchmarks/app_memory.py --height 3000 --width 4000 --clicks 10 --threads 1

Builds the app's PredictionEngine and one AnnotationSession as the server does (default settings:
f-BRS-B, Zoom-In; `--max-image-side N` makes its predictors with that Predictor option), clicks a
synthetic object with the robot (run on a 1/4 copy of the masks: its memory is not the app's) and
prints the process RSS and its peak (ru_maxrss) after loading, after the image is open and after every
click. The model is the bundled one when it exists, else `mobilenetv2_dh128` with random weights (memory
does not depend on the weight values).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

ROBOT_STEP = 4


def rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", default=None, help="checkpoint or architecture; default: bundled or mobilenetv2")
    parser.add_argument(
        "--max-image-side", type=int, default=None,
        help="Predictor(max_image_side=...) through the engine's factory hook (default: the app's own predictors)",
    )
    parser.add_argument(
        "--backend", default="torch", choices=["torch", "onnx", "auto"],
        help="the engine's backend (fbrs app runs auto: ONNX Runtime when installed). Export the files into the "
        "cache first (a run before): an export in this process would count as the app's peak",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from fbrs.app.engine import PredictionEngine
    from fbrs.app.sessions import AnnotationSession
    from fbrs.errors import CheckpointError
    from fbrs.evaluation.predictors import load_model_for_evaluation
    from fbrs.evaluation.robot import ClickRobot
    from fbrs.inference.clicks import Click

    try:
        model, description = load_model_for_evaluation(args.model)
    except CheckpointError:
        model, description = load_model_for_evaluation("mobilenetv2_dh128")
    print(f"model: {description}")
    if args.backend != "torch":
        from fbrs.app.cli import prepare_backend

        args.backend = prepare_backend(model, args.backend)  # as the app does at start
        print(f"backend: {args.backend}")
    print(f"after import + model: rss {rss_mib():.0f} MiB, peak {peak_mib():.0f} MiB")

    rows, cols = np.mgrid[0 : args.height, 0 : args.width].astype(np.float32)
    mask = ((rows / args.height - 0.5) / 0.3) ** 2 + ((cols / args.width - 0.45) / 0.25) ** 2 < 1
    image = np.where(mask[..., None], np.uint8(200), np.uint8(60)).astype(np.uint8).repeat(3, axis=2)
    image[..., 1] = (cols % 256).astype(np.uint8)
    del rows, cols

    factory = None
    if args.max_image_side is not None:
        from fbrs.inference import create_predictor

        def factory(settings):
            return create_predictor(
                settings.mode, model=model, zoom_in=settings.zoom_in, prob_threshold=settings.prob_threshold,
                max_image_side=args.max_image_side, backend=args.backend, with_flip=settings.flip,
            )

    engine = PredictionEngine(model, factory=factory, backend=args.backend)
    session = AnnotationSession(image, engine)
    print(f"image {args.height}x{args.width} open: rss {rss_mib():.0f} MiB, peak {peak_mib():.0f} MiB")
    # The robot stands in for the user: it clicks on a 1/ROBOT_STEP copy of the masks, so that its own
    # distance transforms (~0.45 GB of peak at 12 megapixels) are not counted as the app's memory.
    robot = ClickRobot(mask[::ROBOT_STEP, ::ROBOT_STEP])
    prediction = np.zeros_like(mask)
    for index in range(args.clicks):
        click = robot.next_click(prediction[::ROBOT_STEP, ::ROBOT_STEP])
        start = time.perf_counter()
        probabilities = session.add_click(Click(click.y * ROBOT_STEP, click.x * ROBOT_STEP, click.is_positive))
        prediction = probabilities > 0.49
        iou = (prediction & mask).sum() / max(1, (prediction | mask).sum())
        print(
            f"click {index + 1}: {time.perf_counter() - start:.2f} s, IoU {iou:.3f}, "
            f"rss {rss_mib():.0f} MiB, peak {peak_mib():.0f} MiB"
        )
    print(f"PEAK {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
