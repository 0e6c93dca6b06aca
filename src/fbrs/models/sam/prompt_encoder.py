"""SAM's prompt encoder: clicks -> sparse tokens, a low-res mask prompt -> a dense embedding.

Points are embedded with a random-Fourier positional encoding (a fixed Gaussian matrix) plus a learned
vector per label; the same encoding evaluated on the embedding grid gives the image's positional map.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fbrs.models.sam.config import SamDecoderConfig
from fbrs.models.sam.layers import ChannelLayerNorm

#: Point labels of the SAM prompt: padding, negative click, positive click, box corners.
LABEL_PADDING, LABEL_NEGATIVE, LABEL_POSITIVE = -1, 0, 1


class PromptEncoder(nn.Module):
    def __init__(self, config: SamDecoderConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.embed_dim
        # Fixed, not learned: the random projection of the Fourier features.
        self.register_buffer("gaussian_matrix", torch.randn(2, channels // 2))
        self.point_embeddings = nn.Parameter(torch.randn(4, channels) * 0.02)  # labels 0 (neg), 1 (pos), 2, 3 (box)
        self.not_a_point = nn.Parameter(torch.randn(1, channels) * 0.02)
        self.no_mask = nn.Parameter(torch.randn(1, channels) * 0.02)
        hidden = config.mask_in_channels
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, hidden // 4, kernel_size=2, stride=2),
            ChannelLayerNorm(hidden // 4),
            nn.GELU(),
            nn.Conv2d(hidden // 4, hidden, kernel_size=2, stride=2),
            ChannelLayerNorm(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )

    def fourier(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (..., 2) (x, y) in [0, 1] -> (..., C) = [sin, cos] of 2*pi*(2*coords - 1) @ G."""
        projected = (2 * coords - 1) @ self.gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def dense_positional_encoding(self) -> torch.Tensor:
        """(1, C, S, S) positional map of the embedding grid (S = embedding_size), at pixel centres."""
        size = self.config.embedding_size
        centres = (torch.arange(size, dtype=torch.float32, device=self.gaussian_matrix.device) + 0.5) / size
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        return self.fourier(torch.stack([xs, ys], dim=-1)).permute(2, 0, 1)[None]

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """coords (B, N, 2) (x, y) in the encoder-input frame (0..input_size, pixel indices as SAM's ONNX
        export takes them: +0.5 is added here); labels (B, N) float -1/0/1/2/3 -> tokens (B, N, C).

        A padding point (label -1) contributes only the learned not-a-point vector."""
        normalised = (coords + 0.5) / self.config.input_size
        encoding = self.fourier(normalised)
        labels = labels[..., None]
        padding = (labels == LABEL_PADDING).to(encoding.dtype)
        tokens = encoding * (1 - padding) + self.not_a_point * padding
        for label in range(self.point_embeddings.shape[0]):
            tokens = tokens + self.point_embeddings[label] * (labels == label).to(encoding.dtype)
        return tokens

    def embed_mask(self, mask_input: torch.Tensor | None, batch: int = 1) -> torch.Tensor:
        """mask_input (B, 1, 4S, 4S) low-res logits, or None -> dense embedding (B, C, S, S)."""
        if mask_input is None:
            size = self.config.embedding_size
            return self.no_mask[:, :, None, None].expand(batch, -1, size, size)
        return self.mask_downscaling(mask_input)
