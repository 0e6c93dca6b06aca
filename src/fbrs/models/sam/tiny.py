"""A tiny random SAM-shaped model for tests: every tensor has SamDecoder's layout, at toy sizes."""

from __future__ import annotations

import numpy as np
import torch

from fbrs.models.sam.config import SamDecoderConfig
from fbrs.models.sam.decoder import SamDecoder
from fbrs.models.sam.image_encoder import ImageEmbedding, preprocess
from fbrs.models.sam.model import SamModel

TINY_CONFIG = SamDecoderConfig(
    name="tiny_sam_test",
    embed_dim=16,
    embedding_size=16,
    input_size=128,
    mask_in_channels=8,
    transformer_depth=2,
    num_heads=2,
    mlp_dim=32,
    iou_head_hidden=16,
    upscale_channels=(8, 4),
)


class TinyImageEncoder:
    """Preprocess as the real encoder does, average-pool to the embedding grid, project with a fixed
    random 1x1 convolution (plus a little spatial context) to embed_dim channels."""

    def __init__(self, config: SamDecoderConfig, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.config = config
        self.weight = torch.randn(config.embed_dim, 3, 3, 3, generator=generator) * 0.5

    def __call__(self, image: np.ndarray) -> ImageEmbedding:
        batch, scale, size = preprocess(image, self.config.input_size)
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(batch), self.config.embedding_size)
        embedding = torch.tanh(torch.nn.functional.conv2d(pooled, self.weight, padding=1))
        return ImageEmbedding(embedding, scale, (image.shape[0], image.shape[1]), size)


def build_tiny_sam_model(seed: int = 0) -> SamModel:
    """A SamModel with random weights (seeded): a few thousand parameters, milliseconds per click."""
    torch.manual_seed(seed)
    decoder = SamDecoder(TINY_CONFIG).eval()
    for parameter in decoder.parameters():
        parameter.requires_grad_(False)
    return SamModel(TinyImageEncoder(TINY_CONFIG, seed), decoder)
