"""Sub-commands of the evaluation area: `fbrs evaluate`, `fbrs report`, `fbrs bench` (`fbrs study` is fbrs.studies)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fbrs.errors import ConfigError

DEFAULT_DATASETS = "GrabCut,Berkeley,DAVIS"
DEFAULT_MODES = "NoBRS,f-BRS-B"


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "evaluate",
        help="NoC@85/90, mIoU curves and speed on the standard datasets (resumable)",
        description="Run the standard interactive-segmentation protocol (click robot, NoC@85/90, >=20, SPC) "
        "for every dataset x mode. Per-sample results are appended to OUT/results as they finish, so running the "
        "same command again resumes an interrupted run.",
    )
    evaluate.add_argument("--model", help="checkpoint file or architecture name (random weights); default: bundled")
    evaluate.add_argument(
        "--datasets",
        type=_comma_list,
        default=_comma_list(DEFAULT_DATASETS),
        help=f"names or paths ({DEFAULT_DATASETS})",
    )
    evaluate.add_argument("--modes", type=_comma_list, default=_comma_list(DEFAULT_MODES), help=f"({DEFAULT_MODES})")
    evaluate.add_argument("--out", required=True, type=Path, help="run folder, e.g. runs/r34-baseline")
    evaluate.add_argument("--max-clicks", type=int, default=20)
    evaluate.add_argument("--target-iou", type=float, default=0.90, help="stop a sample at this IoU (0.90)")
    evaluate.add_argument("--thresh", type=float, default=0.49, help="probability threshold of the mask (0.49)")
    evaluate.add_argument("--zoom-in", action=argparse.BooleanOptionalAction, default=True)
    evaluate.add_argument("--zoom-in-target-size", type=int, help="default 400, 600 for DAVIS (the original's)")
    evaluate.add_argument("--clicks-limit", type=int, help="clicks passed to the network (default: per mode)")
    evaluate.add_argument("--no-flip", action="store_true", help="disable the horizontal-flip averaging")
    evaluate.add_argument(
        "--max-image-side",
        type=int,
        help="run the whole-image pass (first click; every click without Zoom-In) on a copy with this longer side",
    )
    evaluate.add_argument(
        "--lbfgs-max-evaluations", type=int, help="BRS modes: L-BFGS function evaluations per click (default 20)"
    )
    evaluate.add_argument(
        "--no-early-stop", action="store_true", help="always make --max-clicks clicks (full mIoU curves)"
    )
    evaluate.add_argument("--oracle", action="store_true", help="paper App. B: continue f-BRS with the GT as target")
    evaluate.add_argument("--jobs", type=int, default=1, help="worker processes (torch threads split among them)")
    evaluate.add_argument("--threads", type=int, help="torch threads of a --jobs 1 run (default: torch's)")
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda (with --jobs 1)")
    evaluate.add_argument("--limit", type=int, help="only the first K samples of each dataset")
    evaluate.add_argument("--data-root", help="folder holding the datasets given by name (default: $FBRS_DATA, ...)")
    evaluate.add_argument("--save-masks", action="store_true", help="write every final mask to OUT/masks")
    evaluate.add_argument(
        "--gallery", type=int, default=6, help="worst cases per dataset x mode in OUT/gallery (0: none)"
    )
    evaluate.add_argument(
        "--backend",
        choices=["torch", "onnx", "auto"],
        default="torch",
        help="feed-forward part in torch or ONNX Runtime (~2x faster on a CPU, needs fbrs[onnx]; NoBRS and "
        "f-BRS-A/B/C; other modes stay in torch); predictions agree up to float rounding",
    )
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.set_defaults(handler=_evaluate)

    report = subparsers.add_parser(
        "report",
        help="put several evaluation runs side by side in one Markdown table",
        description="Compare evaluation runs (folders written by fbrs evaluate): NoC@85, NoC@90 and SPC per dataset.",
    )
    report.add_argument("runs", nargs="+", type=Path)
    report.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    report.set_defaults(handler=_report)

    bench = subparsers.add_parser(
        "bench",
        help="seconds per click of every mode (median/p95, f-BRS-B/NoBRS, RGB-BRS/f-BRS-B ratios, peak memory)",
        description="Speed benchmark: the same robot click sequence on one synthetic image of the crop size, for "
        "every mode, interleaved in one run; writes Markdown + JSON.",
    )
    bench.add_argument("--model", help="checkpoint file or architecture name; default: bundled model")
    bench.add_argument("--modes", type=_comma_list, help="default: the six learned modes")
    bench.add_argument("--crop-size", type=int, default=400, help="side of the square image fed to the network")
    bench.add_argument("--clicks", type=int, default=10, help="clicks per sequence (the first is not timed by BRS)")
    bench.add_argument("--repeats", type=int, default=3, help="sequences per mode")
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    bench.add_argument("--no-flip", action="store_true")
    bench.add_argument("--no-memory", action="store_true", help="skip the per-mode peak memory measurement")
    bench.add_argument(
        "--backend",
        choices=["torch", "onnx", "auto"],
        default="torch",
        help="feed-forward part in torch or ONNX Runtime (NoBRS, f-BRS-A/B/C; RGB-/DistMap-BRS stay in torch)",
    )
    bench.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS.md"), help="Markdown; JSON beside it")
    bench.set_defaults(handler=_bench)


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from fbrs.evaluation.runner import run_evaluation
    from fbrs.evaluation.settings import EvaluationSettings

    options = {}
    if args.clicks_limit is not None:
        options["clicks_limit"] = args.clicks_limit
    if args.no_flip:
        options["with_flip"] = False
    if args.max_image_side is not None:
        if args.max_image_side < 16:
            raise ConfigError(f"--max-image-side must be >= 16 pixels, got {args.max_image_side}")
        options["max_image_side"] = args.max_image_side
    if args.lbfgs_max_evaluations is not None:
        if args.lbfgs_max_evaluations < 1:
            raise ConfigError(f"--lbfgs-max-evaluations must be >= 1, got {args.lbfgs_max_evaluations}")
        options["lbfgs_max_evaluations"] = args.lbfgs_max_evaluations
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    _note_ignored_options(args.modes, options)
    settings = EvaluationSettings(
        datasets=args.datasets,
        modes=args.modes,
        model=args.model,
        max_clicks=args.max_clicks,
        target_iou=args.target_iou,
        pred_threshold=args.thresh,
        zoom_in=args.zoom_in,
        zoom_in_target_size=args.zoom_in_target_size,
        stop_at_target=not args.no_early_stop,
        oracle=args.oracle,
        predictor_options=options,
        data_root=args.data_root,
        limit=args.limit,
        jobs=args.jobs,
        device=args.device,
        save_masks=args.save_masks,
        gallery_size=args.gallery,
        backend=args.backend,
    )
    summary = run_evaluation(settings, args.out, progress=not args.no_progress)
    summary_path = args.out / "summary.md"
    if summary["results"]:
        print(summary_path.read_text(encoding="utf-8"))
    print(f"results in {args.out}")
    return 0


#: The command-line flag of each predictor option, for messages.
OPTION_FLAGS = {
    "clicks_limit": "--clicks-limit",
    "with_flip": "--no-flip",
    "max_image_side": "--max-image-side",
    "lbfgs_max_evaluations": "--lbfgs-max-evaluations",
}


def _note_ignored_options(modes: list[str], options: dict) -> None:
    """Say which modes ignore which of the given predictor options (e.g. the SAM family has no flip TTA,
    the classical baselines no L-BFGS), instead of dropping them silently."""
    from fbrs.evaluation.predictors import accepted_options

    for mode in modes:
        _, ignored = accepted_options(mode, options)
        if ignored:
            flags = ", ".join(OPTION_FLAGS.get(name, name) for name in ignored)
            print(f"note: mode {mode} ignores {flags} (not an option of that mode)")


def _report(args: argparse.Namespace) -> int:
    from fbrs.evaluation.reports import compare_runs_markdown
    from fbrs.io_utils import write_text_atomic

    markdown = compare_runs_markdown(args.runs)
    if args.out is None:
        print(markdown)
    else:
        write_text_atomic(args.out, markdown)
        print(f"wrote {args.out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from fbrs.evaluation.bench import BenchSettings, run_benchmark

    settings = BenchSettings(
        model=args.model,
        modes=args.modes,
        crop_size=args.crop_size,
        clicks=args.clicks,
        repeats=args.repeats,
        device=args.device,
        threads=args.threads,
        with_flip=not args.no_flip,
        measure_memory=not args.no_memory,
        backend=args.backend,
    )
    result = run_benchmark(settings, args.out)
    print(Path(args.out).read_text(encoding="utf-8"))
    print(f"wrote {args.out} and {result['json_path']}")
    return 0
