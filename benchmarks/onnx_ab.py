"""Seconds per click with the torch and the ONNX Runtime backends, interleaved in one run (issue #7).

    nice .venv/bin/python benchmarks/onnx_ab.py --threads 1 --crop-size 400 --clicks 6 --repeats 2 \
        --onnx-dir work/onnx --out benchmarks/results/onnx_default.md

For every mode (NoBRS and f-BRS-B by default) a torch predictor and an ONNX predictor
(`Predictor(backend=OnnxBackend)`) run the same robot click sequence on the synthetic image of `fbrs bench`
(crop_size x crop_size, Zoom-In off, flip TTA on or --no-flip); f-BRS modes also run a third variant,
"onnx-ff", with only the network up to the insertion point in ONNX Runtime (the whole-map pass of each
L-BFGS evaluation in torch), which tells what the local part (`decoder_head` / `head`) adds. The variants
rotate their order every repeat so that the load of a shared machine hits them alike. Reported: median
seconds per click over clicks 2..N (the first click is a plain forward pass in every mode and is reported
apart), the ratio torch / ONNX, L-BFGS evaluations per click, and how far the ONNX predictions are from the
torch ones (max |diff| of the probabilities, pixels whose mask differs). The .onnx files are exported into
the cache layout under --onnx-dir (`fbrs.onnx.cached_onnx_files`) unless already there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fbrs.evaluation.bench import _device_name, robot_click_sequence, synthetic_scene
from fbrs.evaluation.predictors import load_model_for_evaluation
from fbrs.evaluation.reports import _model_label
from fbrs.inference.modes import MODES
from fbrs.inference.predictor import Predictor
from fbrs.io_utils import write_text_atomic
from fbrs.onnx import LOCAL_PARTS, OnnxBackend, cached_onnx_files, parts_for_mode


def onnx_files(model, modes: list[str], folder: Path) -> tuple[dict[str, Path], dict[str, float]]:
    """The files the modes need, exported into the cache layout under `folder` where missing
    -> ({part: path}, export seconds of the parts exported now)."""
    parts = list(dict.fromkeys(part for mode in modes for part in parts_for_mode(MODES[mode])))
    paths, export_seconds = {}, {}
    for part in parts:
        started = time.perf_counter()
        (path,) = cached_onnx_files(model, [part], cache_dir=folder, notify=print)
        if time.perf_counter() - started > 1.0:  # hashing the weights takes milliseconds, an export seconds
            export_seconds[part] = time.perf_counter() - started
        paths[part] = path
    return paths, export_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint or architecture name; default: the bundled model")
    parser.add_argument("--modes", default="NoBRS,f-BRS-B")
    parser.add_argument("--crop-size", type=int, default=400)
    parser.add_argument("--clicks", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-flip", action="store_true", help="flip test-time augmentation off")
    parser.add_argument("--onnx-dir", type=Path, default=Path("work/onnx"))
    parser.add_argument("--out", type=Path, help="write a Markdown report here (and the raw numbers as .json)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    model, description = load_model_for_evaluation(args.model)
    paths, export_seconds = onnx_files(model, modes, args.onnx_dir)
    backend = OnnxBackend(model, list(paths.values()), threads=args.threads)  # shared: sessions are built once
    feed_forward_parts = [path for part, path in paths.items() if part not in LOCAL_PARTS]
    feed_forward_only = OnnxBackend(model, feed_forward_parts, threads=args.threads)
    backends = {"torch": "torch", "onnx": backend, "onnx-ff": feed_forward_only}
    flip = not args.no_flip
    image, mask = synthetic_scene(args.crop_size)

    clicks = robot_click_sequence(model, image, mask, args.clicks, with_flip=flip)  # the clicks `fbrs bench` times

    variants = [
        (mode, name)
        for mode in modes
        for name in ("torch", "onnx", *(("onnx-ff",) if MODES[mode].insertion is not None else ()))
    ]
    times = {variant: [] for variant in variants}
    first = {variant: [] for variant in variants}
    evaluations = {variant: [] for variant in variants}
    probabilities = {variant: [] for variant in variants}  # per click, from the warm-up round
    for repeat in range(args.repeats + 1):  # repeat 0 warms up (and records the predictions)
        shift = repeat % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            mode, name = variant
            predictor = Predictor(model, mode=mode, zoom_in=False, with_flip=flip, backend=backends[name])
            predictor.set_image(image)
            for index, click in enumerate(clicks):
                start = time.perf_counter()
                probs = predictor.add_click(click.y, click.x, click.is_positive)
                elapsed = time.perf_counter() - start
                if repeat == 0:
                    probabilities[variant].append(probs)
                elif index == 0:
                    first[variant].append(elapsed)
                else:
                    times[variant].append(elapsed)
                    evaluations[variant].append(len(predictor.refiner.last_loss_values))

    rows, summary = [], {}
    for mode in modes:
        torch_median = float(np.median(times[(mode, "torch")]))
        onnx_median = float(np.median(times[(mode, "onnx")]))
        pairs = zip(probabilities[(mode, "torch")], probabilities[(mode, "onnx")], strict=True)
        diffs = [(float(np.abs(a - b).max()), int(((a > 0.49) != (b > 0.49)).sum())) for a, b in pairs]
        summary[mode] = {
            "torch_median_spc": torch_median,
            "onnx_median_spc": onnx_median,
            "torch_over_onnx": torch_median / onnx_median,
            "torch_first_click": float(np.median(first[(mode, "torch")])),
            "onnx_first_click": float(np.median(first[(mode, "onnx")])),
            "torch_evaluations_per_click": float(np.mean(evaluations[(mode, "torch")])),
            "onnx_evaluations_per_click": float(np.mean(evaluations[(mode, "onnx")])),
            "max_abs_prob_diff": max(d for d, _ in diffs),
            "max_mask_pixels_differing": max(n for _, n in diffs),
        }
        entry = summary[mode]
        feed_forward = times.get((mode, "onnx-ff"))
        if feed_forward:
            entry["onnx_feed_forward_only_median_spc"] = float(np.median(feed_forward))
        feed_forward_cell = f"{np.median(feed_forward):.3f}" if feed_forward else "-"
        rows.append(
            f"| {mode} | {torch_median:.3f} | {feed_forward_cell} | {onnx_median:.3f} | "
            f"**x{entry['torch_over_onnx']:.2f}** | "
            f"{entry['torch_first_click']:.3f} / {entry['onnx_first_click']:.3f} | "
            f"{entry['torch_evaluations_per_click']:.1f} / {entry['onnx_evaluations_per_click']:.1f} | "
            f"{entry['max_abs_prob_diff']:.1e} | {entry['max_mask_pixels_differing']} |"
        )
    import onnxruntime

    device = _device_name(torch.device("cpu"))
    header = (
        f"Model: {_model_label(description)}. Image {args.crop_size}x{args.crop_size} (Zoom-In off), "
        f"flip {'on' if flip else 'off'}, "
        f"{args.clicks} robot clicks x {args.repeats} repeats per variant (after a warm-up), variants interleaved. "
        f"{device}, {args.threads} thread(s), torch {torch.__version__}, onnxruntime {onnxruntime.__version__}. "
        f"{time.strftime('%Y-%m-%dT%H:%M:%S')}."
    )
    table = "\n".join(
        [
            "| mode | torch, s/click | onnx-ff, s/click | onnx, s/click | torch / onnx | 1st click torch / onnx, s | "
            "L-BFGS evals/click torch / onnx | max abs prob diff | mask pixels differing (of "
            f"{args.crop_size**2}) |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    exported = ", ".join(f"{part} {seconds:.0f} s" for part, seconds in export_seconds.items()) or "reused"
    report = (
        f"{header}\n\n{table}\n\nMedian seconds per click over clicks 2..N. onnx-ff: only the network up to the "
        f"f-BRS insertion point in ONNX Runtime; onnx: also the whole-map pass of every L-BFGS evaluation. "
        f"Export: {exported}.\n"
    )
    print(report)
    if args.out:
        write_text_atomic(args.out, "# torch vs ONNX Runtime backend\n\n" + report)
        raw = {
            "args": {key: str(value) for key, value in vars(args).items()},
            "model": description,
            "summary": summary,
            "times": {f"{mode}/{name}": values for (mode, name), values in times.items()},
            "export_seconds": export_seconds,
        }
        write_text_atomic(args.out.with_suffix(".json"), json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
