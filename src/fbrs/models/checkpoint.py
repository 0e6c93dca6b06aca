"""Checkpoint I/O.

Two formats load with `load_model(path)`:

* ours: a safetensors file whose metadata holds the ModelConfig (`fbrs_config`), so the file alone
  rebuilds the model; weights may be stored as float16 (loaded back as float32);
* the original f-BRS `.pth` files: a raw state_dict (no config). The architecture is read explicitly
  from the keys and tensor shapes (block type, block counts, channel widths) - never guessed from how
  many keys there are - and an unknown layout is refused with a message saying what was found.
  Files are opened with `weights_only=True`: no arbitrary object is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from fbrs.errors import CheckpointError
from fbrs.io_utils import atomic_path
from fbrs.models.builders import _BASE_CONFIGS
from fbrs.models.interactive_model import InteractiveModel, ModelConfig

FORMAT_VERSION = "1"
#: The bundled model, package data of `fbrs` (so a wheel or sdist installed with pip carries it).
DEFAULT_MODEL_PATH = Path(str(resources.files("fbrs").joinpath("weights", "default.safetensors")))


def default_model_path() -> Path:
    """The model used when none is given: $FBRS_DEFAULT_MODEL if set, else the bundled DEFAULT_MODEL_PATH."""
    override = os.environ.get("FBRS_DEFAULT_MODEL")
    return Path(override) if override else DEFAULT_MODEL_PATH


def save_model(
    model: InteractiveModel,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write `model` as a self-describing safetensors file (atomically). Returns the path.

    metadata: extra JSON-serialisable notes stored beside the config (training recipe, metrics, ...).
    dtype: torch.float16 halves the file; integer buffers are kept as they are.
    """
    from safetensors.torch import save_file

    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    header = {
        "fbrs_format": FORMAT_VERSION,
        "fbrs_config": model.config.to_json(),
        "fbrs_metadata": json.dumps(metadata or {}, sort_keys=True),
    }
    path = Path(path)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=header)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return the user metadata stored in one of our safetensors checkpoints."""
    header = _safetensors_header(Path(path))
    if header is None:
        raise CheckpointError(f"{path} is not an fbrs safetensors checkpoint")
    return json.loads(header.get("__metadata__", {}).get("fbrs_metadata", "{}"))


def lineage_entry(metadata: dict[str, Any], name: str) -> dict[str, Any]:
    """One line of a model's history: what trained the model whose metadata this is (a file written by the
    trainer, maybe calibrated since). A model trained with `model.init_from` stores its parent's lineage plus
    the parent's own entry under "lineage", so a file says how it came to be across runs and machines."""
    recipe = metadata.get("training_config", {})
    entry: dict[str, Any] = {"file": name}
    for key in ("step", "epoch", "elapsed_seconds", "device", "world_size"):
        if key in metadata:
            entry[key] = metadata[key]
    if recipe:
        entry["recipe"] = {
            "name": recipe.get("name"),
            "data": [source.get("path") for source in recipe.get("data", {}).get("sources", [])],
            "batch_size": recipe.get("optimizer", {}).get("batch_size"),
            "lr": recipe.get("optimizer", {}).get("lr"),
            "crop_size": recipe.get("augment", {}).get("crop_size"),
            "time_budget_minutes": recipe.get("schedule", {}).get("time_budget_minutes"),
        }
    if "score" in metadata.get("validation", {}):
        entry["validation_score"] = metadata["validation"]["score"]
    if "calibration" in metadata:
        entry["calibration_offset"] = metadata["calibration"].get("logit_offset")
    return entry


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> InteractiveModel:
    """Load a model from our safetensors format or an original f-BRS `.pth` state_dict.

    Returns the model in eval mode with requires_grad False, on `device`. Raises CheckpointError for a
    missing, truncated or foreign file, naming the file and what was wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    header = _safetensors_header(path)
    if header is not None:
        model = _load_safetensors(path, header)
    else:
        state_dict = _read_torch_state_dict(path)
        config = infer_original_config(state_dict, source=str(path))
        model = InteractiveModel(config)
        _load_state_dict_checked(model, state_dict, path)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(device)


def load_default_model(device: str | torch.device = "cpu") -> InteractiveModel:
    """The bundled default model (`fbrs/weights/default.safetensors` inside the package, or $FBRS_DEFAULT_MODEL)."""
    path = default_model_path()
    if not path.is_file():
        raise CheckpointError(
            f"the bundled default model is missing ({path}); pass --model PATH or set FBRS_DEFAULT_MODEL"
        )
    return load_model(path, device)


# -- our format -----------------------------------------------------------------------------------
def _safetensors_header(path: Path) -> dict[str, Any] | None:
    """Parse the JSON header if `path` looks like safetensors; None when it is another format."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            if prefix[:1] == b"{" or path.suffix == ".safetensors":
                raise CheckpointError(f"{path} is truncated (only {len(prefix)} bytes)")
            return None
        (length,) = struct.unpack("<Q", prefix)
        first = handle.read(1)
        if first != b"{" or length > 100_000_000:
            if path.suffix == ".safetensors":
                raise CheckpointError(f"{path} is not a valid safetensors file (bad header)")
            return None
        raw = first + handle.read(length - 1)
    if len(raw) < length:
        raise CheckpointError(f"{path} is truncated: its header is incomplete")
    try:
        return json.loads(raw)
    except ValueError as error:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        raise CheckpointError(f"{path} has a corrupt safetensors header: {error}") from None


def _load_safetensors(path: Path, header: dict[str, Any]) -> InteractiveModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    metadata = header.get("__metadata__") or {}
    if "fbrs_config" not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file without an fbrs model config (not written by fbrs); "
            "convert original f-BRS .pth files with `fbrs convert`"
        )
    try:
        config = ModelConfig.from_dict(json.loads(metadata["fbrs_config"]))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path} has an invalid model config: {error}") from None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path} (truncated or corrupt?): {error}") from None
    model = InteractiveModel(config)
    _load_state_dict_checked(model, tensors, path)
    return model


# -- the original format --------------------------------------------------------------------------
def _read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle/zip errors of every kind mean "unreadable"
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "weights only" in message.lower() or "weights_only" in message:
            # PyTorch's text goes on to advise weights_only=False, i.e. running the file's code: never that.
            message = "it holds Python objects besides tensors, and fbrs never unpickles those"
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a safetensors file nor a loadable PyTorch state_dict "
            f"(truncated, corrupt or containing arbitrary objects): {message}"
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    return dict(loaded)


def _shape(state_dict: dict[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"{source}: unknown checkpoint layout, key {key!r} is missing")
    return tuple(state_dict[key].shape)


def infer_original_config(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> ModelConfig:
    """Read the architecture of an original f-BRS DeepLab checkpoint from its keys and shapes."""
    if any("feature_extractor.stage2.0.branches" in key for key in state_dict):
        raise CheckpointError(f"{source}: HRNet f-BRS checkpoints are not supported (only DeepLab ones)")
    prefix = "feature_extractor.backbone."
    if not any(key.startswith(prefix) for key in state_dict):
        raise CheckpointError(
            f"{source}: unknown checkpoint layout, no '{prefix}*' keys (is this an f-BRS model file?)"
        )
    if f"{prefix}features.0.0.weight" in state_dict:
        backbone = "mobilenetv2"
    else:
        bottleneck = f"{prefix}layer1.0.conv3.weight" in state_dict
        layer3_blocks = {int(m.group(1)) for k in state_dict if (m := re.match(rf"{prefix}layer3\.(\d+)\.", k))}
        layout = (bottleneck, len(layer3_blocks))
        backbones = {(False, 6): "resnet34", (True, 6): "resnet50", (True, 23): "resnet101"}
        if layout not in backbones:
            raise CheckpointError(
                f"{source}: unknown backbone layout ({'bottleneck' if bottleneck else 'basic'} blocks, "
                f"{len(layer3_blocks)} blocks in layer3); known: ResNet-34/50/101"
            )
        backbone = backbones[layout]
    channels = _shape(state_dict, "feature_extractor.aspp.project.0.weight", source)[0]
    skip = _shape(state_dict, "feature_extractor.skip_project.skip_project.0.weight", source)[0]
    head_mid = _shape(state_dict, "head.layers.0.body.1.weight", source)[0]
    if "aspp_dropout" in state_dict:
        dropout = float(state_dict["aspp_dropout"])
    else:
        dropout = 0.5 if channels == 256 else 0.2
    name = {"resnet34": "resnet34_dh", "resnet50": "resnet50_dh", "resnet101": "resnet101_dh"}.get(
        backbone, "mobilenetv2_dh"
    ) + str(channels)
    rates = _BASE_CONFIGS["mobilenetv2_dh128"].aspp_rates if backbone == "mobilenetv2" else (12, 24, 36)
    return ModelConfig(
        name=name,
        backbone=backbone,
        deeplab_ch=channels,
        aspp_rates=rates,
        aspp_dropout=dropout,
        skip_channels=skip,
        head_mid_channels=head_mid,
    )


def _load_state_dict_checked(model: InteractiveModel, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(
            f"{path} does not match the {model.config.name} layout: {len(missing)} weights missing "
            f"(first: {missing[:3]})"
        )
    wrong = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(f"{path}: tensor shapes do not match {model.config.name}: {wrong[:3]}")
    unexpected = [k for k in state_dict if k not in expected and k != "aspp_dropout"]
    if unexpected:
        warnings.warn(f"{path}: ignoring {len(unexpected)} unknown keys (first: {unexpected[:3]})", stacklevel=3)
    converted = {
        k: (v.to(expected[k].dtype) if v.is_floating_point() else v) for k, v in state_dict.items() if k in expected
    }
    model.load_state_dict(converted, strict=False)
