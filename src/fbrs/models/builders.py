"""Registered model builders. `build_model(name, **overrides)` makes a randomly initialised model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

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
    def build(backbone_weights: str | Path | None = None, **overrides: Any) -> InteractiveModel:
        config = dataclasses.replace(base, **overrides) if overrides else base
        model = InteractiveModel(config)
        if backbone_weights is not None:
            if config.backbone != "mobilenetv2":
                raise ValueError(f"no ImageNet weight loader for backbone {config.backbone!r}")
            from fbrs.models.mobilenetv2 import load_imagenet_features

            load_imagenet_features(model.feature_extractor.backbone, backbone_weights)
        return model

    build.__doc__ = f"Build `{base.name}` ({base.backbone} backbone, {base.deeplab_ch}-channel DeepLab head)."
    return build


for _name, _config in _BASE_CONFIGS.items():
    MODELS.register(_name, config=_config)(_make_builder(_config))


def build_model(name: str, **overrides: Any) -> InteractiveModel:
    """Build a registered model by name; keyword overrides replace ModelConfig fields.

    `backbone_weights=PATH` loads ImageNet features into the backbone (MobileNetV2 only).
    """
    return MODELS.get(name)(**overrides)


def build_model_from_config(config: ModelConfig) -> InteractiveModel:
    return InteractiveModel(config)


def list_models() -> list[str]:
    return MODELS.names()
