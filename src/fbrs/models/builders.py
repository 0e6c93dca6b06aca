"""Registered model builders. `build_model(name, **overrides)` makes a randomly initialised model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from fbrs.models.interactive_model import InteractiveModel, ModelConfig
from fbrs.registry import MODELS

_BASE_CONFIGS = {
    # The original f-BRS models (output stride 8, ASPP rates 12/24/36).
    "resnet34_dh128": ModelConfig("resnet34_dh128", "resnet34", 128, aspp_dropout=0.2, head_mid_channels=64),
    "resnet50_dh128": ModelConfig("resnet50_dh128", "resnet50", 128, aspp_dropout=0.2, head_mid_channels=64),
    "resnet101_dh256": ModelConfig(
        "resnet101_dh256", "resnet101", 256, aspp_dropout=0.5, head_mid_channels=128
    ),
    # Our small model: MobileNetV2 at output stride 16, so ASPP uses the stride-16 rates 6/12/18.
    "mobilenetv2_dh128": ModelConfig(
        "mobilenetv2_dh128", "mobilenetv2", 128, aspp_rates=(6, 12, 18), aspp_dropout=0.2, head_mid_channels=64
    ),
    # For tests: a few thousand parameters.
    "tiny_test": ModelConfig(
        "tiny_test", "tiny", 8, aspp_rates=(2, 4, 6), aspp_dropout=0.0, skip_channels=4, head_mid_channels=4
    ),
}


def _make_builder(base: ModelConfig):
    def build(
        backbone_weights: str | Path | None = None, fusion_init: str = "random", **overrides: Any
    ) -> InteractiveModel:
        config = dataclasses.replace(base, **overrides) if overrides else base
        model = InteractiveModel(config)
        if backbone_weights is not None:
            if config.backbone != "mobilenetv2":
                raise ValueError(f"no ImageNet weight loader for backbone {config.backbone!r}")
            from fbrs.models.mobilenetv2 import load_imagenet_features

            load_imagenet_features(model.feature_extractor.backbone, backbone_weights)
        if fusion_init == "passthrough":
            init_fusion_passthrough(model)
        elif fusion_init != "random":
            raise ValueError(f"fusion_init must be 'random' or 'passthrough', got {fusion_init!r}")
        return model

    build.__doc__ = f"Build `{base.name}` ({base.backbone} backbone, {base.deeplab_ch}-channel DeepLab head)."
    return build


for _name, _config in _BASE_CONFIGS.items():
    MODELS.register(_name, config=_config)(_make_builder(_config))


def init_fusion_passthrough(model: InteractiveModel, click_weight: float = 0.1) -> None:
    """Start the fusion conv (image + 2 distance maps -> 3 channels) as a near pass-through of the image.

    An ImageNet backbone expects a normalised RGB image; a randomly initialised fusion conv scrambles it
    and training must first undo that. Here each colour channel c takes two hidden units, +x_c and -x_c,
    so that LeakyReLU(x) - LeakyReLU(-x) = 1.2 x recovers it; the two distance maps take the last two
    units and enter the output with a small weight that training grows.
    """
    first, _, _, last = model.rgb_conv
    with torch.no_grad():
        first.weight.zero_()
        first.bias.zero_()
        last.weight.zero_()
        last.bias.zero_()
        for channel in range(3):
            first.weight[channel, channel] = 1.0
            first.weight[channel + 3, channel] = -1.0
            last.weight[channel, channel] = 1.0 / 1.2
            last.weight[channel, channel + 3] = -1.0 / 1.2
        first.weight[6, 3] = 1.0  # positive clicks' distance map
        first.weight[7, 4] = 1.0  # negative clicks' distance map
        last.weight[:, 6] = click_weight
        last.weight[:, 7] = -click_weight


def build_model(name: str, **overrides: Any) -> InteractiveModel:
    """Build a registered model by name; keyword overrides replace ModelConfig fields.

    `backbone_weights=PATH` loads ImageNet features into the backbone (MobileNetV2 only).
    `fusion_init="passthrough"` starts the fusion conv as an image pass-through (see init_fusion_passthrough;
    an option for training from ImageNet weights whose benefit is not measured yet; the original is "random").
    """
    return MODELS.get(name)(**overrides)


def build_model_from_config(config: ModelConfig) -> InteractiveModel:
    return InteractiveModel(config)


def list_models() -> list[str]:
    return MODELS.names()
