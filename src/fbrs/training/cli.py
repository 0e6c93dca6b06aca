"""`fbrs train` and `fbrs pack-data`."""

from __future__ import annotations

import argparse
import dataclasses


def _train(args: argparse.Namespace) -> int:
    from fbrs.training.config import load_config
    from fbrs.training.trainer import Trainer

    config = load_config(args.config, args.set)
    if args.output_dir:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, output_dir=args.output_dir))
    trainer = Trainer(config, device=args.device, resume=args.resume, progress=not args.no_progress)
    metrics = trainer.fit()
    if trainer.is_main and metrics:
        print(" ".join(f"{key}={value:.4f}" for key, value in metrics.items()))
        print(f"best model: {trainer.output_dir / 'best.safetensors'}")
    return 0


def _pack_data(args: argparse.Namespace) -> int:
    from fbrs.training.pack import pack_training_data

    summary = pack_training_data(
        args.folders,
        args.output,
        max_side=args.max_side,
        quality=args.quality,
        max_bytes=int(args.max_mib * 2**20) if args.max_mib else None,
        progress=not args.no_progress,
    )
    print(f"wrote {summary.path}: {summary.images} images, {summary.objects} objects, {summary.bytes / 2**20:.1f} MiB")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train an interactive segmentation model from a TOML recipe",
        description="Train from a recipe in configs/ (e.g. configs/default_mnv2.toml). Under torchrun "
        "(torchrun --nproc_per_node=N -m fbrs.cli train ...) it trains with DistributedDataParallel.",
    )
    train.add_argument("config", help="training recipe (TOML)")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt")
    train.add_argument("--device", choices=("cpu", "cuda"), default=None, help="overrides run.device")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optimizer.lr=1e-4 (TOML syntax; repeatable)",
    )
    train.add_argument("--output-dir", default=None, help="overrides run.output_dir")
    train.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")
    train.set_defaults(handler=_train)

    pack = subparsers.add_parser(
        "pack-data",
        help="pack training folders into one compact file (for shipping to a GPU machine)",
        description="Pack images/ + masks/ [+ ignore/] folders into one zip, downscaled to --max-side.",
    )
    pack.add_argument("folders", nargs="+", help="training folders (images/ + masks/ [+ ignore/])")
    pack.add_argument("--output", "-o", required=True, help="pack file to write (e.g. work/train.fbrspack)")
    pack.add_argument("--max-side", type=int, default=512, help="longest image side after packing (512)")
    pack.add_argument("--quality", type=int, default=90, help="JPEG quality of the packed images (90)")
    pack.add_argument("--max-mib", type=float, default=None, help="refuse to write a pack larger than this")
    pack.add_argument("--no-progress", action="store_true")
    pack.set_defaults(handler=_pack_data)
