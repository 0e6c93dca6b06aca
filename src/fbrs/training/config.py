"""Typed training configuration: frozen dataclasses read from a TOML file, with `--set key=value` overrides.

One TOML file per recipe lives in `configs/` (`paper_r34.toml` is the paper's recipe, `default_mnv2.toml`
trained the bundled model). Every section of the file maps to one dataclass below; unknown keys and
values of the wrong type raise ConfigError naming the key, so a typo never silently falls back to a default.
Relative paths in a config are relative to the current working directory (run `fbrs train` from the
repository root for the bundled configs).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fbrs.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class DataSource:
    """One training set. kind: "folder" (images/ + masks/ [+ ignore/]), "pack" (a `fbrs pack-data` file) or
    "dataset" (any layout of fbrs.evaluation.datasets: SBD, PASCAL VOC, COCO json; `split` picks the list).
    weight: relative sampling frequency when several sets are mixed.

    Options for sets that are not plain instance maps (docs/training.md, "Data"):
    sets: of a pack, only the images of these sets (by folder name; empty = all), so that one pack can feed
        several sources, each with its own weight and options;
    ignore_value: a mask value that marks ignored pixels instead of an object (coco_train2017_extra stores its
        crowd regions as 255; 0 = none);
    parts: read the `parts/` label maps (ccp_person) instead of `masks/`: every garment region is an object
        (fbrs.training.data.garment_regions);
    background_band: for partly annotated sets (> 0): background farther than this many crop pixels from
        the target is left out of the loss and of the clicks, because an unlabelled object there would
        be taught as background;
    validation: whether the held-out images of this source give validation objects (their images stay out
        of training either way)."""

    path: str
    kind: str = "folder"
    weight: float = 1.0
    split: str = "train"
    sets: tuple[str, ...] = ()
    ignore_value: int = 0
    parts: bool = False
    background_band: int = 0
    validation: bool = True


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[DataSource, ...] = ()
    # Objects smaller than this many pixels (at the resolution after `max_side`) are never targets.
    min_object_area: int = 400
    # Images are downscaled on load so that their longest side is at most this (0 keeps the size).
    max_side: int = 0
    # Held-out split of the TRAINING images (by a hash of the image name, so it never changes).
    validation_fraction: float = 0.05
    validation_max_objects: int = 40
    # 0 means one epoch = one random object from every training image (as the paper's SBD loader).
    samples_per_epoch: int = 0
    num_workers: int = 0
    # A `fbrs pack-data` file that replaces the folders: each kind = "folder" source reads the pack's set of
    # the same folder name, with its own weight and options (e.g. on a GPU machine that got only the pack).
    pack: str = ""


@dataclass(frozen=True)
class AugmentConfig:
    crop_size: tuple[int, int] = (320, 480)  # (height, width)
    scale_range: tuple[float, float] = (0.75, 1.25)
    horizontal_flip: bool = True
    vertical_flip: bool = True
    # Maximum relative change of brightness / contrast / saturation; 0 disables colour jitter.
    color_jitter: float = 0.0
    # Copy-paste compositing (fbrs.training.augment.paste_object): with this probability a real object of
    # another training image is pasted over the crop; the masks beneath lose what it covers. 0 = off.
    copy_paste_probability: float = 0.0
    # The pasted object's longer side, as a fraction of the crop's shorter side.
    copy_paste_scale_range: tuple[float, float] = (0.3, 0.8)
    # A paste that would hide more than this fraction of the target is moved (or dropped after a few tries).
    copy_paste_max_occlusion: float = 0.5


@dataclass(frozen=True)
class ClickConfig:
    """Click simulation of Xu et al. 2016 (distances in pixels of the training crop)."""

    max_positive: int = 10
    max_negative: int = 10
    positive_margin: int = 5  # positives at least this far inside the object boundary
    positive_spacing: int = 10  # and this far from each other
    negative_margin: int = 5  # negatives at least this far outside the object
    negative_band: int = 40  # "near" negatives lie within this distance of the object, "far" ones beyond
    negative_spacing: int = 10
    # Relative frequency of the negative strategies: background band, far background, other objects.
    strategy_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Iterative sampling (fbrs.training.iterative): with probability `iterative_probability` a batch gets
    # 1..iterative_max more clicks, each placed on the errors of the model's own prediction (0 = off).
    iterative_max: int = 0
    iterative_probability: float = 0.8


@dataclass(frozen=True)
class ModelSection:
    name: str = "mobilenetv2_dh128"
    backbone_weights: str = ""  # ImageNet features for the backbone ("" = random init)
    init_from: str = ""  # a saved model (e.g. models/default.safetensors) to continue training from
    # The previous mask as a 6th input channel of the fusion block (RITM's recipe): zeros on the first click,
    # in training the prediction of the last iterative-sampling pass. With `init_from` a model without it
    # is widened with a zero weight for the new channel, so training starts from the parent's behaviour.
    prev_mask_input: bool = False
    # BatchNorm layers stay in eval mode while training: their running statistics are neither re-estimated nor
    # moved, and they normalise with them (as at inference). For continuing a model trained with larger batches
    # on small CPU batches of 8, whose statistics are noisy (docs/training.md, "Frozen BatchNorm").
    freeze_batchnorm: bool = False
    # With freeze_batchnorm: the BatchNorm scale and shift are not trained either (default: they are).
    freeze_batchnorm_affine: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # passed to build_model(name, **overrides)


@dataclass(frozen=True)
class LossConfig:
    name: str = "nfl"  # "nfl" (normalized focal loss) or "bce"
    gamma: float = 2.0


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    backbone_lr_multiplier: float = 0.1
    batch_size: int = 28  # total over all processes


@dataclass(frozen=True)
class ScheduleConfig:
    """kind "step": lr x drop_factor from `drop_epoch` on (paper: 100 + 20 epochs).
    kind "cosine": cosine decay to lr x min_factor over the run.
    `time_budget_minutes` > 0 measures the run's progress in wall-clock time instead of steps and stops
    when the budget is spent (the schedule then fits whatever the machine manages)."""

    kind: str = "step"
    epochs: int = 120
    drop_epoch: int = 100
    drop_factor: float = 0.1
    min_factor: float = 0.01
    warmup_steps: int = 0
    time_budget_minutes: float = 0.0


@dataclass(frozen=True)
class ValidationConfig:
    every_steps: int = 0  # 0 = after every epoch only
    clicks: tuple[int, ...] = (1, 3, 5)  # report mean IoU after these numbers of robot clicks
    iou_target: float = 0.85  # NoC@target is reported too, capped at max(clicks)
    max_side: int = 400  # validation images are downscaled to this longest side (speed)
    # Held-out objects smaller than this many pixels (after max_side) are left out: the benchmarks' objects
    # are large, and a split dominated by tiny COCO objects would rank models by something else.
    min_object_area: int = 0


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = "runs/train"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision (CUDA only)
    threads: int = 0  # torch CPU threads (0 = torch default)
    checkpoint_every_minutes: float = 10.0
    log_every_steps: int = 10
    export_dtype: str = "float16"  # dtype of best.safetensors


@dataclass(frozen=True)
class TrainConfig:
    name: str = "train"
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    clicks: ClickConfig = ClickConfig()
    model: ModelSection = ModelSection()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    validation: ValidationConfig = ValidationConfig()
    run: RunConfig = RunConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples become lists) that `TrainConfig.from_dict` reads back."""
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _build(cls, data, "")


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(item) for item in value]
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where or '<root>'!r} must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key {where + unknown[0]!r}; known keys in this section: {', '.join(sorted(known))}"
        )
    values = {name: _convert(hints[name], item, f"{where}{name}") for name, item in data.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin is tuple:
        arguments = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_convert(arguments[0], item, key) for item in value)
        if len(value) != len(arguments):
            raise ConfigError(f"config key {key!r} needs {len(arguments)} values, got {value!r}")
        return tuple(_convert(a, item, key) for a, item in zip(arguments, value, strict=True))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a table, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return value
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse "section.key=value" (value in TOML syntax; bare words are strings) into (path, value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw config table with every "a.b=value" override applied."""
    result = _to_plain(data)
    for text in overrides:
        path, value = parse_override(text)
        table = result
        for part in path[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
        table[path[-1]] = value
    return result


def read_recipe(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A TOML recipe as a plain dict with `section.key=value` overrides applied (ConfigError if unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot parse config {path}: {error}") from None
    return apply_overrides(raw, overrides or [])


def build_config(cls: type, data: dict[str, Any]) -> Any:
    """A typed, frozen config dataclass from a recipe dict (unknown keys and wrong types are ConfigErrors)."""
    return _build(cls, data, "")


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training recipe from TOML, apply `section.key=value` overrides, validate, return it."""
    config = TrainConfig.from_dict(read_recipe(path, overrides))
    validate_config(config)
    return config


def validate_config(config: TrainConfig) -> None:
    """Raise ConfigError for values no training run can use."""
    if not config.data.sources:
        raise ConfigError("config needs at least one [[data.sources]] entry")
    for source in config.data.sources:
        if source.kind not in ("folder", "pack", "dataset"):
            raise ConfigError(f"data source {source.path!r}: kind {source.kind!r} is not 'folder', 'pack' or 'dataset'")
        if source.weight <= 0:
            raise ConfigError(f"data source {source.path!r}: weight must be > 0, got {source.weight}")
        if source.background_band < 0 or not 0 <= source.ignore_value <= 255:
            raise ConfigError(
                f"data source {source.path!r}: background_band must be >= 0 and ignore_value in 0..255, got "
                f"{source.background_band} and {source.ignore_value}"
            )
        if source.sets and source.kind != "pack":
            raise ConfigError(f"data source {source.path!r}: `sets` selects sets of a pack; kind is {source.kind!r}")
        if source.parts and source.kind == "dataset":
            raise ConfigError(f"data source {source.path!r}: parts = true needs a folder or a pack with parts/")
    if any(size < 16 for size in config.augment.crop_size):
        raise ConfigError(f"augment.crop_size must be at least 16x16, got {config.augment.crop_size}")
    low, high = config.augment.scale_range
    if not 0 < low <= high:
        raise ConfigError(f"augment.scale_range must satisfy 0 < low <= high, got {config.augment.scale_range}")
    paste = config.augment
    if not 0.0 <= paste.copy_paste_probability <= 1.0 or not 0.0 < paste.copy_paste_max_occlusion <= 1.0:
        raise ConfigError(
            "augment.copy_paste_probability must be in [0, 1] and augment.copy_paste_max_occlusion in (0, 1], got "
            f"{paste.copy_paste_probability} and {paste.copy_paste_max_occlusion}"
        )
    if not 0 < paste.copy_paste_scale_range[0] <= paste.copy_paste_scale_range[1]:
        raise ConfigError(
            f"augment.copy_paste_scale_range must satisfy 0 < low <= high, got {paste.copy_paste_scale_range}"
        )
    if config.model.freeze_batchnorm_affine and not config.model.freeze_batchnorm:
        raise ConfigError("model.freeze_batchnorm_affine = true needs model.freeze_batchnorm = true")
    if config.clicks.max_positive < 1 or config.clicks.max_negative < 0:
        raise ConfigError("clicks.max_positive must be >= 1 and clicks.max_negative >= 0")
    if config.loss.name not in ("nfl", "bce"):
        raise ConfigError(f"loss.name must be 'nfl' or 'bce', got {config.loss.name!r}")
    if config.schedule.kind not in ("step", "cosine"):
        raise ConfigError(f"schedule.kind must be 'step' or 'cosine', got {config.schedule.kind!r}")
    if config.schedule.epochs < 1:
        raise ConfigError(f"schedule.epochs must be >= 1, got {config.schedule.epochs}")
    if config.optimizer.batch_size < 1 or config.optimizer.lr <= 0:
        raise ConfigError("optimizer.batch_size must be >= 1 and optimizer.lr > 0")
    if config.run.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"run.device must be auto, cpu or cuda, got {config.run.device!r}")
    if config.run.export_dtype not in ("float16", "float32"):
        raise ConfigError(f"run.export_dtype must be float16 or float32, got {config.run.export_dtype!r}")
    if not config.validation.clicks or min(config.validation.clicks) < 1:
        raise ConfigError(f"validation.clicks must be positive numbers, got {config.validation.clicks}")
