"""MobileNetV2 (width 1.0) feature extractor, dilated to output stride 16, for the small default model.

Module names follow the stored ImageNet weights in ../shared/weights (tonylins layout: inside each
inverted residual `conv` is one flat Sequential with the ReLU6 modules), so those weights load with
strict=True via `load_imagenet_features`. The final 1x1 conv to 1280 channels (`features.18`) is dropped:
the segmentation head reads the 320-channel stage directly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fbrs.errors import CheckpointError

# (expansion t, channels c, repeats n, stride s) of the MobileNetV2 paper.
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_LOW_LEVEL_INDEX = 3  # output of features.3: 24 channels at stride 4


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_residual = stride == 1 and inp == oup
        depthwise = nn.Conv2d(hidden, hidden, 3, stride, dilation, dilation, groups=hidden, bias=False)
        if expand_ratio == 1:
            layers = [depthwise, nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        else:
            layers = [
                nn.Conv2d(inp, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
                depthwise,
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
            ]
        layers += [nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Backbone(nn.Module):
    """Returns (c1, c4): 24 channels at stride 4 and 320 channels at stride 16 (last stage dilated)."""

    low_level_channels = 24
    out_channels = 320

    def __init__(self) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True))
        ]
        channels, current_stride, dilation = 32, 2, 1
        for expand, out_channels, repeats, stride in _STAGES:
            for index in range(repeats):
                block_stride = stride if index == 0 else 1
                block_dilation = dilation
                if block_stride == 2 and current_stride == 16:
                    # Past stride 16 trade striding for dilation; this block keeps the old dilation.
                    block_stride, dilation = 1, dilation * 2
                elif block_stride == 2:
                    current_stride *= 2
                blocks.append(InvertedResidual(channels, out_channels, block_stride, expand, block_dilation))
                channels = out_channels
        self.features = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for index, block in enumerate(self.features):
            x = block(x)
            if index == _LOW_LEVEL_INDEX:
                c1 = x
        return c1, x


def load_imagenet_features(backbone: MobileNetV2Backbone, path: str | Path) -> None:
    """Load the ImageNet MobileNetV2 features (../shared/weights/mobilenetv2_imagenet_features.pt)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"backbone weights not found: {path}") from None
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not this file"
        raise CheckpointError(f"cannot read backbone weights {path}: {error}") from None
    state = {key: value for key, value in state.items() if not key.startswith("features.18.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} is not a MobileNetV2 feature checkpoint: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
