"""The training loop: Adam with a 0.1x backbone learning rate, NFL/BCE, step or cosine schedule (by steps or
by a wall-clock budget), CSV log (+ TensorBoard when installed), validation on the held-out split, full
checkpoints every epoch and every few minutes, resume, DDP via torchrun and mixed precision on CUDA.

Files in `run.output_dir`:
  last.pt            full training state (model, optimizer, AMP scaler, epoch / position / step, elapsed
                     time, best metric, RNG states); `--resume` continues from it
  best.safetensors   the model (fbrs.save_model format) with the best validation score so far; its metadata
                     holds the recipe, step, validation and, after `model.init_from`, the parent's lineage
  train_log.csv      step, epoch, lr, loss, samples/s, elapsed seconds
  validation_log.csv step, epoch, IoU@k, NoC, elapsed seconds
  config.json        the full resolved config of the run
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fbrs.errors import CheckpointError, ConfigError
from fbrs.io_utils import atomic_path, write_text_atomic
from fbrs.training.config import TrainConfig
from fbrs.training.data import EpochPositions, TrainingData, TrainingDataset
from fbrs.training.losses import build_loss
from fbrs.training.validation import validate, validation_score

CHECKPOINT_FORMAT = "fbrs-train-checkpoint-1"


def parent_lineage(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The "lineage" a model trained from the file `path` inherits (empty for a file without metadata)."""
    from fbrs.models.checkpoint import lineage_entry, read_metadata

    if not str(path).endswith(".safetensors"):
        return []
    metadata = read_metadata(path)
    if not metadata:
        return []
    return [*metadata.get("lineage", []), lineage_entry(metadata, Path(path).name)]


def learning_rate_factor(config: TrainConfig, progress: float, step: int) -> float:
    """Multiplier of the base lr at `progress` in [0, 1] of the run (warmup ramps it linearly)."""
    schedule = config.schedule
    if schedule.kind == "step":
        factor = schedule.drop_factor if progress * schedule.epochs >= schedule.drop_epoch else 1.0
    else:
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        factor = schedule.min_factor + (1.0 - schedule.min_factor) * cosine
    if schedule.warmup_steps > 0 and step < schedule.warmup_steps:
        factor *= (step + 1) / schedule.warmup_steps
    return factor


def _rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def freeze_batchnorm(model: torch.nn.Module, affine: bool = False) -> int:
    """Put every BatchNorm layer of `model` (SyncBatchNorm included) in eval mode, so that a training forward
    pass normalises with the running statistics and leaves them as they are; with `affine` also stop the
    gradients of their scale and shift. Call it after every `model.train()`. Returns the number of layers."""
    layers = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.eval()
        if affine:
            for parameter in layer.parameters(recurse=False):
                parameter.requires_grad_(False)
    return len(layers)


class _CsvLog:
    """Append-only CSV (one row per event; the header is written once). Appends, unlike artefacts, are not
    written atomically: a crash loses at most the last row."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns

    def write(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(
                {key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()}
            )


class Trainer:
    """Train an InteractiveModel as `config` says. Under torchrun (WORLD_SIZE > 1) it trains with
    DistributedDataParallel.

    `Trainer(config)` only reads and checks the config: no global state changes. `setup()` does everything
    that has effects beyond the object (torch's thread count, the process group, the global RNG seeds, the
    device, the output folder and its logs) and builds data, model and optimizer, then loads `last.pt`
    with `resume`; `fit()` calls it when it has not run and trains until the schedule ends, returning the
    final validation metrics."""

    def __init__(
        self,
        config: TrainConfig,
        device: str | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.output_dir = Path(config.run.output_dir)
        self.progress = progress
        self.resume = resume
        self.device_name = device or config.run.device
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.is_main = self.rank == 0
        if config.optimizer.batch_size % self.world_size:
            raise ConfigError(
                f"optimizer.batch_size {config.optimizer.batch_size} must divide by the {self.world_size} processes"
            )
        if config.clicks.iterative_max < 0 or not 0.0 <= config.clicks.iterative_probability <= 1.0:
            raise ConfigError(
                "clicks.iterative_max must be >= 0 and clicks.iterative_probability in [0, 1], got "
                f"{config.clicks.iterative_max} and {config.clicks.iterative_probability}"
            )
        self.epoch, self.position, self.step = 0, 0, 0
        self.elapsed_seconds = 0.0
        self.best_score = -math.inf
        self.last_metrics: dict[str, float] = {}
        self.lineage: list[dict[str, Any]] = []  # the init_from model's history (export metadata)
        self._ready = False

    def setup(self) -> Trainer:
        """Prepare the run (once; `fit` calls it): threads, process group, seeds, data, model, optimizer, logs,
        and the state of `last.pt` when resuming. Returns self."""
        if self._ready:
            return self
        config = self.config
        self.device = self._pick_device(self.device_name)
        if config.run.threads > 0:
            torch.set_num_threads(config.run.threads)
        if self.world_size > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)
        self._seed(config.run.seed + self.rank)

        self.data = TrainingData(config.data)
        self.dataset = TrainingDataset(self.data, config, seed=config.run.seed)
        self.steps_per_epoch = len(self.dataset) // config.optimizer.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"an epoch has {len(self.dataset)} samples, fewer than one batch of {config.optimizer.batch_size}"
            )
        self.total_steps = self.steps_per_epoch * config.schedule.epochs
        self.validation_objects = (
            self.data.validation_objects(config.validation.max_side, config.validation.min_object_area)
            if self.is_main
            else []
        )
        self.model = self._build_model().to(self.device)
        self.network: torch.nn.Module = self.model
        if self.world_size > 1:
            if self.device.type == "cuda":
                # Converted in place: self.model then holds the synchronised BatchNorms too.
                torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            # SyncBatchNorm exists only for CUDA; CPU processes (gloo) keep per-process BatchNorm statistics.
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = torch.nn.parallel.DistributedDataParallel(self.network, device_ids=device_ids)
            self._train_mode()  # the converted SyncBatchNorms too
        self.optimizer = self._build_optimizer()
        self.loss_function = build_loss(config.loss.name, config.loss.gamma)
        self.amp_dtype = None
        if config.run.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if self.resume:
            self._load_checkpoint(self.output_dir / "last.pt")
        self._tensorboard = None
        if self.is_main:
            self._open_logs()
        self._ready = True
        return self

    # -- set-up ------------------------------------------------------------------------------------
    def _pick_device(self, name: str) -> torch.device:
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("device cuda requested but torch sees no CUDA GPU; use --device cpu")
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local_rank)
            return torch.device("cuda", local_rank)
        return torch.device("cpu")

    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _build_model(self) -> torch.nn.Module:
        from fbrs.models import build_model, load_model

        section = self.config.model
        if section.init_from:
            model = load_model(section.init_from)
            self.lineage = parent_lineage(section.init_from)
            if model.config.name != section.name:
                raise ConfigError(
                    f"model.init_from {section.init_from} holds {model.config.name!r}, config says {section.name!r}"
                )
            model = model.float()
            if model.config.prev_mask_input and not section.prev_mask_input:
                raise ConfigError(
                    f"model.init_from {section.init_from} takes a previous mask: set model.prev_mask_input = true"
                )
            if section.prev_mask_input:
                from fbrs.models.interactive_model import widen_for_previous_mask

                model = widen_for_previous_mask(model)  # zero weight on the new channel: the parent's outputs
            for parameter in model.parameters():
                parameter.requires_grad_(True)
        else:
            overrides = dict(section.overrides)
            if section.backbone_weights:
                overrides["backbone_weights"] = section.backbone_weights
            if section.prev_mask_input:
                overrides["prev_mask_input"] = True
            model = build_model(section.name, **overrides)
        self._train_mode(model)
        return model

    def _train_mode(self, model: torch.nn.Module | None = None) -> None:
        """Training mode for `model` (default: the trained network), with BatchNorm kept in eval mode under
        `model.freeze_batchnorm`. Every switch back to training goes through here (after the iterative passes,
        after validation), so the frozen statistics stay frozen for the whole run, resumed runs included."""
        model = self.network if model is None else model
        model.train()
        if self.config.model.freeze_batchnorm:
            freeze_batchnorm(model, affine=self.config.model.freeze_batchnorm_affine)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        settings = self.config.optimizer
        backbone = self.model.backbone_parameters()
        head = self.model.head_parameters()
        groups = [
            {
                "params": backbone,
                "lr": settings.lr * settings.backbone_lr_multiplier,
                "lr_multiplier": settings.backbone_lr_multiplier,
            },
            {"params": head, "lr": settings.lr, "lr_multiplier": 1.0},
        ]
        return torch.optim.Adam(groups, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write the full training state to `last.pt` (atomically). Main process only."""
        path = self.output_dir / "last.pt"
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": json.dumps(self.config.to_dict()),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "position": self.position,
            "step": self.step,
            "elapsed_seconds": self.elapsed_seconds,
            "best_score": self.best_score,
            "rng": _rng_state(),
        }
        with atomic_path(path) as temporary:
            torch.save(state, temporary)
        return path

    def _load_checkpoint(self, path: Path) -> None:
        if not path.is_file():
            raise CheckpointError(f"cannot resume: no checkpoint {path} (run without --resume to start)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unpickling failure means a damaged file
            raise CheckpointError(f"cannot read training checkpoint {path}: {error}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a training checkpoint of fbrs ({CHECKPOINT_FORMAT})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.position, self.step = state["epoch"], state["position"], state["step"]
        self.elapsed_seconds = float(state["elapsed_seconds"])
        self.best_score = float(state["best_score"])
        _set_rng_state(state["rng"])

    # -- progress and schedule -----------------------------------------------------------------------
    def progress_fraction(self) -> float:
        budget = self.config.schedule.time_budget_minutes
        if budget > 0:
            return self.elapsed_seconds / (budget * 60.0)
        return self.step / self.total_steps

    def _set_learning_rate(self) -> float:
        factor = learning_rate_factor(self.config, self.progress_fraction(), self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.optimizer.lr * factor * group["lr_multiplier"]
        return self.config.optimizer.lr * factor

    # -- validation ------------------------------------------------------------------------------------
    def run_validation(self) -> dict[str, float]:
        """Validate on the held-out split, log it, and export best.safetensors when the score improves.
        Score = mean of the IoU@k values. Main process only."""
        settings = self.config.validation
        if not self.validation_objects:
            return {}
        metrics = validate(self.model, self.validation_objects, settings.clicks, settings.iou_target, self.device)
        self._train_mode()  # validate() restores plain train(), which would unfreeze BatchNorm
        score = validation_score(metrics)
        metrics["score"] = score
        self.last_metrics = metrics
        row = {"step": self.step, "epoch": self.epoch, "elapsed_s": self.elapsed_seconds, **metrics}
        self._validation_log.write(row)
        self._tensorboard_scalars("validation", metrics)
        self._say("validation " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + f" (step {self.step})")
        if score > self.best_score:
            self.best_score = score
            self.export_model(self.output_dir / "best.safetensors", metrics)
        return metrics

    def export_model(self, path: Path, metrics: dict[str, float]) -> Path:
        """Save the current weights with fbrs.save_model (dtype from run.export_dtype) and the recipe."""
        from fbrs.models import save_model

        metadata = {
            "training_config": self.config.to_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "elapsed_seconds": round(self.elapsed_seconds, 1),
            "device": str(self.device),
            "world_size": self.world_size,
            "validation": metrics,
        }
        if self.lineage:
            metadata["lineage"] = self.lineage
        dtype = torch.float16 if self.config.run.export_dtype == "float16" else torch.float32
        return save_model(self.model, path, metadata=metadata, dtype=dtype)

    # -- logging -----------------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.is_main:
            tqdm.write(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stdout)
            sys.stdout.flush()

    def _tensorboard_scalars(self, prefix: str, values: dict[str, float]) -> None:
        if self._tensorboard is not None:
            for key, value in values.items():
                self._tensorboard.add_scalar(f"{prefix}/{key}", value, self.step)

    def _open_logs(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.output_dir / "config.json", json.dumps(self.config.to_dict(), indent=2) + "\n")
        self._train_log = _CsvLog(
            self.output_dir / "train_log.csv", ["step", "epoch", "lr", "loss", "samples_per_s", "elapsed_s"]
        )
        clicks = [f"iou@{k}" for k in sorted(set(self.config.validation.clicks))]
        noc = f"noc@{round(self.config.validation.iou_target * 100)}"
        self._validation_log = _CsvLog(
            self.output_dir / "validation_log.csv", ["step", "epoch", *clicks, noc, "score", "elapsed_s"]
        )
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.output_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional
            pass

    # -- the loop ------------------------------------------------------------------------------------------
    def _autocast(self) -> torch.autocast:
        """Mixed precision for forward passes on CUDA (`run.amp`); a no-op context elsewhere."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _train_step(self, batch: dict[str, torch.Tensor]) -> float:
        images = batch["image"].to(self.device, non_blocking=True)
        points = batch["points"].to(self.device, non_blocking=True)
        masks = batch["mask"].to(self.device, non_blocking=True)
        valid = batch["valid"].to(self.device, non_blocking=True)
        prev_mask = None  # the previous mask input (model.prev_mask_input): zeros unless iterative passes ran
        if self.config.clicks.iterative_max > 0:
            points, prev_mask = self._add_error_clicks(images, points, masks, valid)
        with self._autocast():
            if self.model.config.prev_mask_input:
                logits = self.network(images, points, prev_mask)
            else:
                logits = self.network(images, points)
        loss = self.loss_function(logits.float(), masks, valid)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def _add_error_clicks(
        self, images: torch.Tensor, points: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Iterative click sampling (`clicks.iterative_max`): a few no-grad passes, each adding one click per
        sample on the current errors. Drawn from (seed, step), so a resumed run draws the same. The passes run
        in eval mode: they must not move BatchNorm's running statistics.

        Returns the points and, for a prev_mask_input model, the (B, 1, H, W) probabilities of the last pass
        (the mask the user saw before the last click; RITM's recipe), else None (zeros: no pass ran)."""
        from fbrs.training.iterative import add_error_clicks

        settings = self.config.clicks
        generator = torch.Generator().manual_seed(self.config.run.seed * 1_000_003 + self.step)
        if float(torch.rand((), generator=generator)) >= settings.iterative_probability:
            return points, None
        passes = int(torch.randint(1, settings.iterative_max + 1, (), generator=generator))
        takes_mask = self.model.config.prev_mask_input
        prev_mask = None
        self.model.eval()
        try:
            with torch.no_grad():
                for _ in range(passes):
                    with self._autocast():
                        logits = self.model(images, points, prev_mask) if takes_mask else self.model(images, points)
                    probabilities = torch.sigmoid(logits.float())
                    points = add_error_clicks(probabilities, masks, valid, points)
                    prev_mask = probabilities if takes_mask else None
        finally:
            self._train_mode()
        return points, prev_mask

    def fit(self) -> dict[str, float]:
        """Train until the schedule (epochs, or the time budget) is done; returns the last validation metrics."""
        self.setup()
        config = self.config
        if self.is_main:
            resuming = f"; resuming at step {self.step}, epoch {self.epoch}" if self.step else ""
            self._say(
                f"training {config.model.name} on {self.device} x{self.world_size}: "
                f"{self.data.num_train_images} images / {self.data.num_train_objects} objects for training, "
                f"{len(self.validation_objects)} held-out objects; {self.steps_per_epoch} steps per epoch of "
                f"{config.optimizer.batch_size}{resuming}"
            )
            if self.step == 0:
                self.run_validation()  # the untrained model: the baseline every later number is compared to
        per_process_batch = config.optimizer.batch_size // self.world_size
        last_checkpoint = time.monotonic()
        window_loss, window_samples, window_start = 0.0, 0, time.monotonic()
        finished = self.progress_fraction() >= 1.0
        sampler = EpochPositions(len(self.dataset), rank=self.rank, world_size=self.world_size)
        # One loader for the whole run: its workers persist across epochs (a GPU run lost ~2 s per epoch
        # restarting 14 of them); the sampler hands them (epoch, position) keys.
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=per_process_batch,
            sampler=sampler,
            num_workers=config.data.num_workers,
            persistent_workers=config.data.num_workers > 0,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
        )
        while not finished:
            self.dataset.set_epoch(self.epoch)
            sampler.start_epoch(self.epoch, self.position)
            bar = tqdm(
                loader,
                desc=f"epoch {self.epoch + 1}",
                disable=not (self.progress and self.is_main) or None,
                leave=False,
                dynamic_ncols=True,
            )
            tick = time.monotonic()
            for batch in bar:
                lr = self._set_learning_rate()
                loss = self._train_step(batch)
                self.step += 1
                self.position += config.optimizer.batch_size
                now = time.monotonic()
                self.elapsed_seconds += now - tick
                tick = now
                window_loss += loss
                window_samples += config.optimizer.batch_size
                if self.is_main:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                    if self.step % config.run.log_every_steps == 0:
                        steps_in_window = window_samples // config.optimizer.batch_size
                        row = {
                            "step": self.step,
                            "epoch": self.epoch,
                            "lr": lr,
                            "loss": window_loss / steps_in_window,
                            "samples_per_s": window_samples / max(now - window_start, 1e-9),
                            "elapsed_s": self.elapsed_seconds,
                        }
                        self._train_log.write(row)
                        self._tensorboard_scalars("train", {"loss": row["loss"], "lr": lr})
                        if bar.disable:
                            self._say(
                                f"step {self.step} epoch {self.epoch} loss {row['loss']:.4f} lr {lr:.2e} "
                                f"{row['samples_per_s']:.2f} samples/s"
                            )
                        window_loss, window_samples, window_start = 0.0, 0, now
                    if config.validation.every_steps and self.step % config.validation.every_steps == 0:
                        self.run_validation()
                        tick = time.monotonic()  # validation time is not training time
                    if now - last_checkpoint >= config.run.checkpoint_every_minutes * 60:
                        self.save_checkpoint()
                        last_checkpoint = time.monotonic()
                finished = self.progress_fraction() >= 1.0
                if finished:
                    break
            bar.close()
            if not finished or self.position + config.optimizer.batch_size > len(self.dataset):
                self.epoch += 1
                self.position = 0
                finished = finished or (
                    config.schedule.time_budget_minutes <= 0 and self.epoch >= config.schedule.epochs
                )
                if self.is_main:
                    if not config.validation.every_steps:
                        self.run_validation()
                    self.save_checkpoint()
                    last_checkpoint = time.monotonic()
        if self.is_main:
            if config.validation.every_steps and (not self.last_metrics or self.step % config.validation.every_steps):
                self.run_validation()
            self.save_checkpoint()
            self.export_model(self.output_dir / "last.safetensors", self.last_metrics)
            self._say(f"done: {self.step} steps, {self.epoch} epochs, {self.elapsed_seconds / 60:.1f} min")
            if self._tensorboard is not None:
                self._tensorboard.close()
        if self.world_size > 1:
            torch.distributed.barrier()
        return self.last_metrics
