"""SAM's two-way transformer: prompt tokens and image tokens attend to each other in turn.

Shapes: tokens (B, T, C) (output tokens then prompt tokens), image tokens (B, HW, C); positional
encodings are added to queries and keys (never to values) before every attention.
"""

from __future__ import annotations

import torch
from torch import nn

from fbrs.models.sam.config import SamDecoderConfig


class Attention(nn.Module):
    """Multi-head attention whose projections may work in fewer channels (C / downsample)."""

    def __init__(self, channels: int, num_heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = channels // downsample
        if inner % num_heads:
            raise ValueError(f"{inner} attention channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(channels, inner)
        self.k_proj = nn.Linear(channels, inner)
        self.v_proj = nn.Linear(channels, inner)
        self.out_proj = nn.Linear(inner, channels)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, inner = x.shape
        return x.reshape(batch, length, self.num_heads, inner // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Lq, C), k and v (B, Lk, C) -> (B, Lq, C)."""
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        scores = (q @ k.transpose(2, 3)) / (q.shape[-1] ** 0.5)
        out = torch.softmax(scores, dim=-1) @ v
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


class TwoWayBlock(nn.Module):
    """Self-attention of the tokens, tokens -> image, MLP on the tokens, image -> tokens."""

    def __init__(self, config: SamDecoderConfig, first: bool) -> None:
        super().__init__()
        channels = config.embed_dim
        # The first block's self-attention sees no positional encoding and has no residual.
        self.first = first
        self.self_attn = Attention(channels, config.num_heads)
        self.norm1 = nn.LayerNorm(channels)
        self.cross_attn_token_to_image = Attention(channels, config.num_heads, config.attention_downsample)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, config.mlp_dim), nn.ReLU(), nn.Linear(config.mlp_dim, channels))
        self.norm3 = nn.LayerNorm(channels)
        self.cross_attn_image_to_token = Attention(channels, config.num_heads, config.attention_downsample)
        self.norm4 = nn.LayerNorm(channels)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.first:
            queries = self.norm1(self.self_attn(queries, queries, queries))
        else:
            q = queries + query_pe
            queries = self.norm1(queries + self.self_attn(q, q, queries))
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, config: SamDecoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(config, first=index == 0) for index in range(config.transformer_depth))
        channels = config.embed_dim
        self.final_attn_token_to_image = Attention(channels, config.num_heads, config.attention_downsample)
        self.norm_final_attn = nn.LayerNorm(channels)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, C, H, W), image_pe (1 or B, C, H, W), tokens (B, T, C)
        -> (tokens (B, T, C), image tokens (B, HW, C))."""
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
