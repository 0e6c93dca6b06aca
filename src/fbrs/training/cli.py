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


def _calibrate(args: argparse.Namespace) -> int:
    import torch

    from fbrs.errors import ConfigError
    from fbrs.models.checkpoint import load_model, read_metadata, save_model
    from fbrs.training.calibration import DEFAULT_OFFSETS, calibrate_logit_offset, shift_output_logit
    from fbrs.training.config import load_config
    from fbrs.training.data import TrainingData

    config = load_config(args.config, args.set)
    try:
        offsets = DEFAULT_OFFSETS if args.offsets is None else [float(value) for value in args.offsets.split(",")]
    except ValueError:
        raise ConfigError(f"--offsets must be comma-separated numbers, got {args.offsets!r}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    metadata = read_metadata(args.model) if str(args.model).endswith(".safetensors") else {}
    if "calibration" in metadata:
        raise ConfigError(f"{args.model} is already calibrated (offset {metadata['calibration']['logit_offset']})")
    objects = TrainingData(config.data).validation_objects(
        config.validation.max_side, config.validation.min_object_area
    )
    print(f"calibrating on {len(objects)} held-out training objects, offsets {offsets}")
    result = calibrate_logit_offset(
        model, objects, tuple(config.validation.clicks), config.validation.iou_target, offsets
    )
    for offset, score in sorted(result.scores.items()):
        print(f"  offset {offset:+.2f}: score {score:.4f}{'  <- chosen' if offset == result.offset else ''}")
    shift_output_logit(model, result.offset)
    metadata["calibration"] = {
        "logit_offset": result.offset,
        "validation_objects": len(objects),
        "metrics": result.metrics,
        "uncalibrated_metrics": result.baseline_metrics,
    }
    dtype = torch.float16 if args.dtype == "float16" else torch.float32
    save_model(model, args.output, metadata=metadata, dtype=dtype)
    print(
        f"wrote {args.output} (logit offset {result.offset:+.2f}, score {result.scores[0.0]:.4f} -> "
        f"{result.scores[result.offset]:.4f})"
    )
    return 0


def _train_sam(args: argparse.Namespace) -> int:
    import torch

    from fbrs.models.sam.checkpoint import DEFAULT_ENCODER_PATH
    from fbrs.training.sam_decoder import fit_sam_decoder, load_sam_tune_config

    config = load_sam_tune_config(args.config, args.set)
    if args.action == "fit":
        best = fit_sam_decoder(config, resume=args.resume, log=lambda line: print(line, flush=True))
        print(f"best: step {best.get('step')}, held-out NoC@90 {best.get('noc@90', float('nan')):.2f}; "
              f"{config.run.output_dir}/best.safetensors")
        return 0
    from fbrs.io_utils import file_sha256
    from fbrs.models.sam.image_encoder import OnnxImageEncoder
    from fbrs.training.data import TrainingData
    from fbrs.training.sam_embeddings import EmbeddingCache, fill_cache, images_to_encode

    torch.set_num_threads(1)
    encoder_path = config.run.encoder or DEFAULT_ENCODER_PATH
    cache = EmbeddingCache(config.run.embeddings, file_sha256(encoder_path))
    items = images_to_encode(TrainingData(config.data))
    print(f"{len(items)} images; shard {args.shard} of {args.shards}; cache {cache.folder}", flush=True)
    encoder = OnnxImageEncoder(encoder_path, threads=args.threads or 1)
    done = fill_cache(cache, items, encoder, args.shard, args.shards, log=lambda line: print(line, flush=True))
    print(f"encoded {done} images")
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

    calibrate = subparsers.add_parser(
        "calibrate",
        help="fold the best output-logit offset, found on the held-out training split, into a model",
        description="Under-confident models (short training) give near-empty masks at the protocol's 0.49. "
        "This tries constant offsets of the output logit on the recipe's held-out TRAINING objects (robot "
        "clicks, mean IoU after 1/3/5 clicks) and writes the model with the best one folded into its last bias.",
    )
    calibrate.add_argument("config", help="the training recipe (its data and validation sections are used)")
    calibrate.add_argument("--model", required=True, help="model to calibrate (.safetensors)")
    calibrate.add_argument("--output", "-o", required=True, help="calibrated model to write")
    calibrate.add_argument("--offsets", default=None, help="comma-separated logit offsets (default -1 ... 2.5)")
    calibrate.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    calibrate.add_argument("--threads", type=int, default=None)
    calibrate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    calibrate.set_defaults(handler=_calibrate)

    sam = subparsers.add_parser(
        "train-sam",
        help="fine-tune a SAM-family decoder on the training sets with the robot's clicks",
        description="`embed` stores the encoder's embedding of every training image (once; resumable; "
        "--shard/--shards split it over processes), `fit` fine-tunes the decoder on them (docs/sam.md).",
    )
    sam.add_argument("action", choices=("embed", "fit"))
    sam.add_argument("config", help="recipe (TOML), e.g. configs/sam_decoder_tune.toml")
    sam.add_argument("--resume", action="store_true", help="fit: continue from OUTPUT_DIR/last.pt")
    sam.add_argument("--shard", type=int, default=0, help="embed: this process's share (0-based)")
    sam.add_argument("--shards", type=int, default=1, help="embed: number of processes sharing the work")
    sam.add_argument("--threads", type=int, default=None, help="embed: encoder threads (1)")
    sam.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    sam.set_defaults(handler=_train_sam)

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
