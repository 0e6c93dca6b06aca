"""Where a click's time goes on real photos: cProfile over the evaluation protocol on a few images (issue #7).

    .venv/bin/python benchmarks/profile_click.py --mode f-BRS-B --backend onnx --no-flip \
        --out benchmarks/results/profile_fbrs_b_onnx_noflip.txt

Runs `fbrs evaluate`'s robot (Zoom-In, stop at IoU 0.90, up to 20 clicks) on every --every-th sample of a
dataset with one predictor, under cProfile, and writes the seconds per click and the functions with the most
cumulative time (the model's parts: features_at = network up to the f-BRS insertion point, local_logits = the
whole-map decoder/head pass of an L-BFGS evaluation, ...).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from photo_protocol import add_photo_arguments, load_photo_samples, photo_predictor

from fbrs.evaluation.protocol import evaluate_sample
from fbrs.io_utils import write_text_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_photo_arguments(parser)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    parser.add_argument("--lines", type=int, default=30, help="functions to list")
    parser.add_argument("--out", help="write the report here (atomically) besides printing it")
    args = parser.parse_args()

    model, samples = load_photo_samples(args)
    predictor = photo_predictor(args, model, args.backend)
    evaluate_sample(predictor, samples[0], max_clicks=2, target_iou=0.90)  # warm-up: sessions, allocator
    profile = cProfile.Profile()
    clicks = 0
    started = time.perf_counter()
    profile.enable()
    for sample in samples:
        result = evaluate_sample(predictor, sample, max_clicks=20, target_iou=0.90)
        clicks += len(result.ious)
    profile.disable()
    elapsed = time.perf_counter() - started
    # ClickObjective.__call__ runs once per L-BFGS evaluation.
    calls = pstats.Stats(profile).stats.items()
    evaluations = sum(stat[0] for key, stat in calls if key[0].endswith("objective.py") and key[2] == "__call__")
    stream = io.StringIO()
    pstats.Stats(profile, stream=stream).sort_stats("cumulative").print_stats(args.lines)
    header = (
        f"{args.mode}, backend {args.backend}, flip {'off' if args.no_flip else 'on'}, {args.threads} thread(s), "
        f"{len(samples)} {args.dataset} samples (every {args.every}th), Zoom-In 400: {clicks} clicks in "
        f"{elapsed:.1f} s = {elapsed / clicks:.3f} s per click (profiler overhead included), "
        f"{evaluations} L-BFGS evaluations ({evaluations / clicks:.2f} per click). {time.strftime('%Y-%m-%dT%H:%M:%S')}"
    )
    report = header + "\n" + stream.getvalue()
    print(report)
    if args.out:
        write_text_atomic(args.out, report)


if __name__ == "__main__":
    main()
