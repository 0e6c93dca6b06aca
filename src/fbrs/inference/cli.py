"""Sub-commands `fbrs predict`, `fbrs convert`, `fbrs export-onnx`, `fbrs models` and `fbrs demo`."""

from __future__ import annotations

import argparse
import math
import os
import re
import time
from pathlib import Path

import numpy as np

from fbrs.errors import ConfigError, InvalidClickError

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "samples"
#: `fbrs predict`'s mode when --mode is not given (README "Which mode is the default"). With --model (a
#: DeepLab file) the default is fbrs.inference.default_mode.FALLBACK_MODE instead, and without the SAM files.
DEFAULT_PREDICT_MODE = "SAM-f-BRS-tokens-guarded-zoom"


_CLICK_OR_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.]+,")


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text}")
    return value


def _thread_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _thread_count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a whole number >= 1, got 0")
    return value


def parse_click(text: str) -> tuple[float, float, bool]:
    """'Y,X,+' / 'Y,X,-' (also pos/neg, 1/0) -> (y, x, positive); (y, x) = (row, column)."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 3:
        raise InvalidClickError(f"click {text!r} must look like Y,X,+ or Y,X,- (row, column, sign)")
    try:
        y, x = float(parts[0]), float(parts[1])
    except ValueError:
        raise InvalidClickError(f"click {text!r}: Y and X must be numbers") from None
    signs = {"+": True, "pos": True, "1": True, "p": True, "-": False, "neg": False, "0": False, "n": False}
    if parts[2].lower() not in signs:
        raise InvalidClickError(f"click {text!r}: the sign must be + or -")
    return y, x, signs[parts[2].lower()]


def _load_model_arg(path: str | None):
    from fbrs.models import load_default_model, load_model

    return load_default_model() if path is None else load_model(path)


def check_output_path(path: str | os.PathLike, option: str) -> Path:
    """Refuse, before any work, an output path that cannot be written: a folder, a path under a file,
    a folder without write permission. Returns the path."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{option} {target} is a folder: give the file to write")
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{option} {target}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {target}: no permission to write in {ancestor}")
    return target


def check_clicks_inside(clicks: list[tuple[float, float, bool]], height: int, width: int) -> None:
    """Every (y, x, positive) click passes `validate_click` on an image of (height, width), before any work."""
    from fbrs.inference.clicks import Click, validate_click

    for y, x, positive in clicks:
        validate_click(Click(y, x, positive), (height, width))


def run_predict(args: argparse.Namespace) -> int:
    """Everything is checked before anything is computed, and nothing is written until every output can
    be: the clicks and the output paths, then the image (its size from the header), then the model."""
    import torch

    from fbrs.images import load_image
    from fbrs.inference import accepted_options, available_modes, create_predictor
    from fbrs.registry import PREDICTORS

    if args.mode is None:
        args.mode = default_predict_mode(args.model)
    if args.mode not in available_modes():
        raise ConfigError(f"unknown mode {args.mode!r}; available: {', '.join(available_modes())}")
    clicks = [parse_click(text) for text in args.click]
    if not clicks:
        raise InvalidClickError("give at least one --click Y,X,+")
    outputs = [check_output_path(args.output, "-o")]
    if args.probs:
        outputs.append(check_output_path(args.probs, "--probs"))
        if outputs[0].resolve() == outputs[1].resolve():
            raise ConfigError(f"-o and --probs are the same file ({args.output}); give two files")
    image = load_image(args.image, max_pixels=args.max_image_pixels)  # EXIF orientation applied: clicks are as shown
    check_clicks_inside(clicks, *image.shape[:2])
    if args.threads:
        torch.set_num_threads(args.threads)
    needs_model = PREDICTORS.spec(args.mode).needs_model
    # The SAM family brings its own model and takes only some options; a classical baseline takes none.
    options, ignored = accepted_options(
        args.mode,
        {"zoom_in": args.zoom_in, "with_flip": args.flip, "prob_threshold": args.threshold, "backend": args.backend},
    )
    defaults = {"zoom_in": True, "with_flip": True, "prob_threshold": 0.49, "backend": "torch"}
    flags = {"zoom_in": "--no-zoom-in", "with_flip": "--no-flip", "prob_threshold": "--threshold",
             "backend": "--backend"}
    changed = [flags[name] for name in ignored if getattr(args, _PREDICT_ARGS[name]) != defaults[name]]
    if changed:
        _print_stderr(f"mode {args.mode} ignores {', '.join(changed)}")
    if args.model is not None and not needs_model:
        _print_stderr(f"mode {args.mode} ignores --model (it uses its own model)")
    model = _load_model_arg(args.model) if needs_model else None
    if needs_model and args.backend == "onnx":
        from fbrs.onnx import export_for_modes

        # Here rather than inside the Predictor: tell the user why the first run waits.
        export_for_modes(model, [args.mode], notify=_print_stderr)
    predictor = create_predictor(args.mode, model=model, **options)
    predictor.set_image(image)
    started = time.perf_counter()
    for y, x, positive in clicks:
        click_start = time.perf_counter()
        probs = predictor.add_click(y, x, positive)
        if args.verbose:
            print(f"click ({y:g}, {x:g}, {'+' if positive else '-'}): {time.perf_counter() - click_start:.3f} s")
    mask = probs > args.threshold
    write_outputs(outputs, (mask * 255).astype(np.uint8), probs if args.probs else None)
    print(
        f"{args.output}: {int(mask.sum())} of {mask.size} pixels in the mask "
        f"({len(clicks)} clicks, {args.mode}, {time.perf_counter() - started:.2f} s)"
    )
    return 0


def default_predict_mode(model_path: str | None) -> str:
    """The mode of `fbrs predict` without --mode: DEFAULT_PREDICT_MODE, unless a (DeepLab) --model is given
    or the default cannot run here (then the fall-back mode, with a line on stderr saying why)."""
    from fbrs.inference.default_mode import FALLBACK_MODE, runnable_default

    if model_path is not None:
        return FALLBACK_MODE
    mode, note = runnable_default(DEFAULT_PREDICT_MODE)
    if note:
        _print_stderr(note)
    return mode


#: Predictor option -> the `fbrs predict` argument it comes from.
_PREDICT_ARGS = {"zoom_in": "zoom_in", "with_flip": "flip", "prob_threshold": "threshold", "backend": "backend"}


def write_outputs(paths: list[Path], mask: np.ndarray, probabilities: np.ndarray | None) -> None:
    """The mask PNG (and the .npy probabilities): both files or neither."""
    from PIL import Image

    from fbrs.io_utils import atomic_paths

    try:
        with atomic_paths(paths) as temporaries:
            Image.fromarray(mask).save(temporaries[0], format="PNG")
            if probabilities is not None:
                with open(temporaries[1], "wb") as handle:
                    np.save(handle, probabilities)
    except OSError as error:
        raise ConfigError(f"cannot write {error.filename or paths[0]}: {error.strerror or error}") from None


def _print_stderr(message: str) -> None:
    import sys

    print(f"fbrs: {message}", file=sys.stderr, flush=True)


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from fbrs.models import load_model, save_model

    model = load_model(args.source)
    dtype = torch.float16 if args.float16 else torch.float32
    save_model(model, args.destination, metadata={"converted_from": Path(args.source).name}, dtype=dtype)
    precision = "float16" if args.float16 else "float32"
    print(f"{args.destination}: {model.config.name} ({model.config.backbone}), {precision}")
    return 0


def run_export_onnx(args: argparse.Namespace) -> int:
    """Export the requested parts of a model to ONNX; check each file against torch when onnxruntime is there."""
    import importlib.util

    import torch

    from fbrs.errors import ConfigError
    from fbrs.onnx import PARTS, export_onnx, max_difference, output_paths, require_modules

    # Fail before loading the model and tracing (slow) when the exporter's dependencies are missing.
    require_modules("onnx", "onnxscript")
    if args.threads:
        torch.set_num_threads(args.threads)
    requested = args.part or ["full"]
    parts = list(PARTS) if "all" in requested else list(dict.fromkeys(requested))
    try:
        height, width = (int(side) for side in args.example_size.split(","))
    except ValueError:
        raise ConfigError(f"--example-size must be H,W (two integers), got {args.example_size!r}") from None
    if Path(args.output).is_dir():
        raise ConfigError(f"-o {args.output} is a folder: give the .onnx file to write")
    model = _load_model_arg(args.model)
    check = args.check and importlib.util.find_spec("onnxruntime") is not None
    for part, path in output_paths(args.output, parts).items():
        started = time.perf_counter()
        export_onnx(model, path, part, example_size=(height, width))
        line = f"{path}: {model.config.name}, part {part}, dynamic batch/height/width"
        line += f", {path.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - started:.0f} s"
        if check:
            line += f"; onnxruntime vs torch max |diff| {max_difference(model, path):.2e}"
        print(line)
    if args.check and not check:
        print("onnxruntime is not installed: the files were not checked (pip install 'fbrs[onnx]')")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from fbrs.inference import available_modes
    from fbrs.models import list_models
    from fbrs.models.checkpoint import default_model_path
    from fbrs.registry import PREDICTORS

    print("models:", ", ".join(list_models()))
    print("modes: ", ", ".join(available_modes()))
    for name in available_modes():
        spec = PREDICTORS.spec(name)
        reason = spec.unavailable_reason
        print(f"  {name:<16} {spec.description}" + (f" (unavailable: {reason})" if reason else ""))
    from fbrs.inference.default_mode import FALLBACK_MODE, runnable_default

    mode, note = runnable_default(DEFAULT_PREDICT_MODE)
    print(f"default mode: {mode} (fbrs predict without --mode; {FALLBACK_MODE} with a DeepLab --model)"
          + (f"; {note}" if note else ""))
    path = default_model_path()
    if not path.is_file():
        print(f"default model: {path} (missing)")
        return 0
    print(f"default model: {path}")
    for line in describe_model_file(path):
        print(f"  {line}")
    return 0


def describe_model_file(path: Path) -> list[str]:
    """A few lines on a saved model: architecture, size and, from its metadata, how it was trained."""
    from fbrs.errors import CheckpointError
    from fbrs.models.checkpoint import lineage_entry, read_metadata

    try:
        metadata = read_metadata(path)
    except CheckpointError as error:
        return [f"unreadable: {error}"]
    lines = [f"{path.stat().st_size / 1e6:.1f} MB"]
    recipe = metadata.get("training_config", {})
    if recipe:
        lines[0] += f", {recipe.get('model', {}).get('name', '?')} trained with recipe {recipe.get('name', '?')!r}"
    runs = [*metadata.get("lineage", []), lineage_entry(metadata, path.name)] if recipe else []
    for index, run in enumerate(runs, start=1):
        if "step" not in run:
            continue
        minutes = float(run.get("elapsed_seconds", 0.0)) / 60.0
        score = run.get("validation_score")
        text = f"run {index}: {run['step']} steps on {run.get('device', '?')}, {minutes:.1f} min of training"
        if score is not None:
            text += f", held-out score {float(score):.3f}"
        lines.append(text)
    calibration = metadata.get("calibration")
    if calibration:
        lines.append(f"calibrated: logit offset {calibration.get('logit_offset', 0.0):+.2f}")
    return lines


def run_demo(args: argparse.Namespace) -> int:
    """Start the annotation app on the bundled sample images and the bundled default model."""
    from fbrs.app.cli import run_app  # FastAPI and uvicorn are required dependencies, imported only here

    return int(run_app(SAMPLES_DIR, model_path=args.model, out_dir=args.out, host=args.host, port=args.port) or 0)


def register(subparsers: argparse._SubParsersAction) -> None:
    from fbrs.inference.modes import MODES

    predict = subparsers.add_parser(
        "predict",
        help="segment one object of an image from clicks, write the mask",
        description="Clicks are Y,X,SIGN with (Y, X) = (row, column) in pixels and SIGN + or -. "
        "Example: fbrs predict cat.jpg --click 120,80,+ --click 40,30,- -o mask.png",
    )
    predict.add_argument("image", help="input image (any format Pillow reads)")
    predict.add_argument(
        "--click", action="append", default=[], metavar="Y,X,SIGN", help="a click (repeatable, in order)"
    )
    # argparse takes "-5,20,+" for an unknown option; read it as a click value (which is then refused as
    # outside the image, with that message) like a negative number.
    predict._negative_number_matcher = _CLICK_OR_NUMBER
    predict.add_argument("--model", help="model file (.safetensors or original f-BRS .pth); default: bundled model")
    predict.add_argument(
        "--mode", default=None,
        help=f"predictor mode (default {DEFAULT_PREDICT_MODE}; f-BRS-B with --model or without the SAM files): "
        + ", ".join(MODES) + ", the SAM family (SAM, SAM-f-BRS-...), classical baselines; `fbrs models` lists them all",
    )
    predict.add_argument("--zoom-in", dest="zoom_in", action=argparse.BooleanOptionalAction, default=True)
    predict.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=True, help="flip test-time augmentation"
    )
    predict.add_argument("--threshold", type=_probability, default=0.49,
                         help="probability threshold of the mask, in (0, 1) (0.49)")
    predict.add_argument("-o", "--output", required=True, help="output mask PNG (0 / 255)")
    predict.add_argument("--probs", help="also save the probability map as .npy")
    predict.add_argument("--threads", type=_thread_count, default=0, help="torch CPU threads (0: torch's default)")
    predict.add_argument("--max-image-pixels", type=_positive_int, default=None,
                         help="refuse larger images (default: Pillow's decompression-bomb bound, about 179 million)")
    predict.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="onnx: run the feed-forward part in ONNX Runtime (NoBRS, f-BRS-A/B/C; ~2x faster on a CPU; needs "
        "fbrs[onnx]; the first use of a model exports it to the cache, $FBRS_CACHE_DIR or ~/.cache/fbrs)",
    )
    predict.add_argument("-v", "--verbose", action="store_true", help="print the time of every click")
    predict.set_defaults(handler=run_predict)

    convert = subparsers.add_parser("convert", help="convert an original f-BRS .pth checkpoint to our safetensors")
    convert.add_argument("source")
    convert.add_argument("destination")
    convert.add_argument("--float16", action="store_true", help="store weights as float16 (half the size)")
    convert.set_defaults(handler=run_convert)

    export = subparsers.add_parser(
        "export-onnx",
        help="export the feed-forward part of a model to ONNX (needs fbrs[onnx])",
        description="Export the network from the fusion conv on (inputs: the normalised image and the click "
        "distance maps) to ONNX, with dynamic batch/height/width. --part full is the whole NoBRS pass; an "
        "f-BRS insertion point (after_backbone, after_aspp, after_decoder) exports the part before it, and "
        "decoder_head (after f-BRS-A/B) / head (after f-BRS-C) the layers after it that L-BFGS re-runs, for "
        "Predictor(backend='onnx'). With several parts, -o OUT.onnx writes OUT.<part>.onnx for each. Example: "
        "fbrs export-onnx --part after_aspp --part decoder_head -o default.onnx. Predictor(backend='onnx') and "
        "--backend onnx need no export by hand: they export into a cache on first use.",
    )
    export.add_argument("--model", help="model file (.safetensors or original f-BRS .pth); default: bundled model")
    export.add_argument("-o", "--output", required=True, help="the .onnx file to write (atomically)")
    export.add_argument(
        "--part",
        action="append",
        # = fbrs.onnx.PARTS + "all", spelled out: importing it here would import torch for --help.
        choices=["full", "after_backbone", "after_aspp", "after_decoder", "decoder_head", "head", "all"],
        help="what to export (repeatable; default full)",
    )
    export.add_argument(
        "--example-size", default="320,288", metavar="H,W", help="size of the tracing input (the result is dynamic)"
    )
    export.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare each file with torch on a random input (needs onnxruntime)",
    )
    export.add_argument("--threads", type=_thread_count, default=0, help="torch CPU threads (0: torch's default)")
    export.set_defaults(handler=run_export_onnx)

    models = subparsers.add_parser("models", help="list model architectures and predictor modes")
    models.set_defaults(handler=run_models)

    demo = subparsers.add_parser("demo", help="start the annotation app on the bundled samples (make demo)")
    demo.add_argument("--model", help="model file; default: the bundled model")
    demo.add_argument("--out", help="where annotations are saved")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.set_defaults(handler=run_demo)
