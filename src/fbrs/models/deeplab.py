"""DeepLabV3+ pieces with the module names of the original f-BRS code (so its checkpoints load unchanged).

Data path: backbone -> (c1 at stride 4, c4) ; skip_project(c1) -> 32 ch ; ASPP(c4) -> ch, upsampled to c1 ;
concat -> decoder head (two separable convs + 1x1) -> ch features at stride 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def upsample_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with align_corners=True, as everywhere in the original network."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class SeparableConv(nn.Module):
    """Depthwise 3x3 (no bias) + pointwise 1x1 (no bias) + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation if kernel == 3 else 0
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.gap = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_to(self.gap(x), x.shape[2:])


class ASPP(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, rates: tuple[int, ...] = (12, 24, 36), dropout: float = 0.2
    ) -> None:
        super().__init__()
        branches = [_conv_bn_relu(in_channels, out_channels)]
        branches += [_conv_bn_relu(in_channels, out_channels, 3, rate) for rate in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        # "concurent" (sic) is the original attribute name, kept so released checkpoints load unchanged.
        self.concurent = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(out_channels * len(branches), out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.concurent], dim=1))


class SkipProject(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 32) -> None:
        super().__init__()
        self.skip_project = _conv_bn_relu(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip_project(x)


class DecoderHead(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            SeparableConv(in_channels, mid_channels),
            SeparableConv(mid_channels, mid_channels),
            nn.Conv2d(mid_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DeepLabV3Plus(nn.Module):
    """backbone + ASPP + decoder. `forward` returns the decoder features (B, ch, H/4, W/4).

    The stages are exposed separately (`encode`, `aspp_and_skip`, `decode`) because f-BRS inserts its
    scale and bias between them: after the backbone (A), after ASPP+skip concat (B), after the decoder (C).
    """

    def __init__(
        self,
        backbone: nn.Module,
        channels: int = 128,
        skip_channels: int = 32,
        aspp_rates: tuple[int, ...] = (12, 24, 36),
        aspp_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.channels = channels
        self.skip_channels = skip_channels
        self.backbone_channels = backbone.out_channels
        # Attribute order = state_dict order of the original checkpoints.
        self.head = DecoderHead(channels + skip_channels, channels, channels)
        self.skip_project = SkipProject(backbone.low_level_channels, skip_channels)
        self.aspp = ASPP(backbone.out_channels, channels, aspp_rates, aspp_dropout)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B,3,H,W) -> (projected c1 (B, skip, H/4, W/4), c4 (B, C4, H/s, W/s))."""
        c1, c4 = self.backbone(x)
        return self.skip_project(c1), c4

    def aspp_and_skip(self, c1: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        """-> concat[upsampled ASPP(c4), c1]: (B, ch + skip, H/4, W/4)."""
        return torch.cat((upsample_to(self.aspp(c4), c1.shape[2:]), c1), dim=1)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.aspp_and_skip(*self.encode(x)))


class SegmentationHead(nn.Module):
    """Original `SepConvHead`: separable convs then a 1x1 conv to one logit channel (at stride 4)."""

    def __init__(self, in_channels: int, mid_channels: int, num_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(num_layers):
            layers.append(SeparableConv(channels, mid_channels))
            channels = mid_channels
        layers.append(nn.Conv2d(mid_channels, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
