"""The interactive segmentation network: distance maps + fusion conv + DeepLabV3+ + head.

`InteractiveModel(image, points) -> logits` is the whole feed-forward pass. For backpropagating
refinement the same pass is also available in two halves around a named insertion point:
`features_at(insertion, ...)` runs everything up to it once (cached by the predictor) and
`logits_from(insertion, ...)` runs only what comes after it, so f-BRS re-runs only the head.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fbrs.models.deeplab import DecoderHead, DeepLabV3Plus, SegmentationHead, SeparableConv, upsample_to
from fbrs.models.distance_maps import DistanceMaps

#: f-BRS insertion points (paper names A, B, C).
INSERTIONS = ("after_backbone", "after_aspp", "after_decoder")

_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Dropout, nn.Identity)
_LOCAL_CONTAINERS = (nn.Sequential, DecoderHead, SegmentationHead, SeparableConv)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; stored inside our checkpoints."""

    name: str
    backbone: str  # resnet34 | resnet50 | resnet101 | mobilenetv2 | tiny
    deeplab_ch: int = 128
    aspp_rates: tuple[int, ...] = (12, 24, 36)
    aspp_dropout: float = 0.2
    skip_channels: int = 32
    head_mid_channels: int = 64
    norm_radius: float = 260.0
    # The previous mask as a 6th fusion input (RITM's recipe). Files written before it existed lack the key:
    # False, so they load and run exactly as before.
    prev_mask_input: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (training recipe, ...)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["aspp_rates"] = list(self.aspp_rates)
        if not self.prev_mask_input:
            del data["prev_mask_input"]  # files of models without it stay as they were before the option
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        data = dict(data)
        if "aspp_rates" in data:
            data["aspp_rates"] = tuple(int(rate) for rate in data["aspp_rates"])
        return cls(**data)


class TinyBackbone(nn.Module):
    """An 8/16-channel stand-in backbone for fast tests: c1 at stride 4, c4 at stride 8."""

    low_level_channels = 8
    out_channels = 16

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = nn.Sequential(block(3, 8), block(8, 8))
        self.deep = block(8, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c1 = self.stem(x)
        return c1, self.deep(c1)


def build_backbone(name: str) -> nn.Module:
    if name.startswith("resnet"):
        from fbrs.models.resnet import DilatedResNet

        return DilatedResNet(name)
    if name == "mobilenetv2":
        from fbrs.models.mobilenetv2 import MobileNetV2Backbone

        return MobileNetV2Backbone()
    if name == "tiny":
        return TinyBackbone()
    raise ValueError(f"unknown backbone {name!r}; known: resnet34, resnet50, resnet101, mobilenetv2, tiny")


class InteractiveModel(nn.Module):
    """DeepLabV3+ with the distance-maps fusion block (the original `DistMapsModel`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.dist_maps = DistanceMaps(norm_radius=config.norm_radius)
        self.rgb_conv = nn.Sequential(
            nn.Conv2d(6 if config.prev_mask_input else 5, 8, 1),
            nn.LeakyReLU(negative_slope=0.2),
            nn.BatchNorm2d(8),
            nn.Conv2d(8, 3, 1),
        )
        self.feature_extractor = DeepLabV3Plus(
            build_backbone(config.backbone),
            channels=config.deeplab_ch,
            skip_channels=config.skip_channels,
            aspp_rates=config.aspp_rates,
            aspp_dropout=config.aspp_dropout,
        )
        self.head = SegmentationHead(config.deeplab_ch, config.head_mid_channels)

    # -- the whole pass ---------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, points: torch.Tensor, prev_mask: torch.Tensor | None = None) -> torch.Tensor:
        """image (B,3,H,W) ImageNet-normalised float32; points (B,2N,2) (y, x), first N positive,
        padded with (-1, -1); prev_mask (B,1,H,W) probabilities of the previous prediction, only for a model
        with `config.prev_mask_input` (None = zeros: the first click). Returns logits (B,1,H,W)."""
        return self.forward_with_maps(image, self.dist_maps(image, points), prev_mask)

    def forward_with_maps(
        self, image: torch.Tensor, coord_features: torch.Tensor, prev_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Same as forward, with the (B,2,H,W) distance maps given (DistMap-BRS perturbs them)."""
        features = self.feature_extractor(self.fuse(image, coord_features, prev_mask))
        return upsample_to(self.head(features), image.shape[2:])

    def fuse(
        self, image: torch.Tensor, coord_features: torch.Tensor, prev_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The fusion block: image, distance maps [and previous mask] -> the backbone's 3 input channels."""
        inputs = [image, coord_features]
        if self.config.prev_mask_input:
            if prev_mask is None:
                prev_mask = image.new_zeros((image.shape[0], 1, *image.shape[2:]))
            elif prev_mask.shape != (image.shape[0], 1, *image.shape[2:]):
                raise ValueError(f"prev_mask must have shape (B, 1, H, W) = {(image.shape[0], 1, *image.shape[2:])}")
            inputs.append(prev_mask.to(image.dtype))
        elif prev_mask is not None:
            raise ValueError(f"{self.config.name} takes no previous mask (config.prev_mask_input is False)")
        return self.rgb_conv(torch.cat(inputs, dim=1))

    # -- the pass split around an f-BRS insertion point ------------------------------------------
    def insertion_channels(self, insertion: str) -> int:
        extractor = self.feature_extractor
        return {
            "after_backbone": extractor.backbone_channels,
            "after_aspp": extractor.channels + extractor.skip_channels,
            "after_decoder": extractor.channels,
        }[insertion]

    def features_at(
        self, insertion: str, image: torch.Tensor, points: torch.Tensor, prev_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the network up to `insertion`. Returns (features, skip) where skip is the projected
        low-level feature map needed after the backbone insertion (None otherwise)."""
        return self.features_from_maps(insertion, image, self.dist_maps(image, points), prev_mask)

    def features_from_maps(
        self,
        insertion: str,
        image: torch.Tensor,
        coord_features: torch.Tensor,
        prev_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`features_at` with the (B,2,H,W) distance maps given: the part an ONNX export holds (the maps,
        which depend on the number of clicks, stay in torch)."""
        x = self.fuse(image, coord_features, prev_mask)
        if insertion == "after_decoder":
            return self.feature_extractor(x), None
        c1, c4 = self.feature_extractor.encode(x)
        if insertion == "after_backbone":
            return c4, c1
        if insertion == "after_aspp":
            return self.feature_extractor.aspp_and_skip(c1, c4), None
        raise ValueError(f"unknown insertion point {insertion!r}; known: {INSERTIONS}")

    def logits_from(
        self, insertion: str, features: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]
    ) -> torch.Tensor:
        """Run the rest of the network after `insertion` on (possibly scaled) features -> (B,1,*size)."""
        return upsample_to(self.local_logits(insertion, self.nonlocal_part(insertion, features, skip)), size)

    # What follows an insertion point, split once more for f-BRS gradients on small windows:
    # a non-local part (ASPP with its image pooling, only after the backbone) and a local part (the
    # decoder and head: 3x3 and 1x1 convs, eval-mode BatchNorm, ReLU) whose low-resolution logit at a
    # pixel depends only on inputs within `local_radius` pixels of it.
    def nonlocal_part(self, insertion: str, features: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """features at `insertion` -> input of `local_logits`: (B, C, H/4, W/4). The identity unless
        insertion is after_backbone (then ASPP + skip concat)."""
        if insertion == "after_backbone":
            return self.feature_extractor.aspp_and_skip(skip, features)
        if insertion in ("after_aspp", "after_decoder"):
            return features
        raise ValueError(f"unknown insertion point {insertion!r}; known: {INSERTIONS}")

    def local_logits(self, insertion: str, x: torch.Tensor) -> torch.Tensor:
        """Input of the local part (B, C, h, w) -> low-resolution logits (B, 1, h, w), before upsampling."""
        if insertion in ("after_backbone", "after_aspp"):
            x = self.feature_extractor.decode(x)
        return self.head(x)

    def local_radius(self, insertion: str) -> int | None:
        """How far (in low-resolution pixels) the local part after `insertion` looks: the sum of the
        half-widths of its 'same'-padded stride-1 convolutions. None when a module is not known to be
        pixel-local (then callers must run the local part on whole maps)."""
        modules = [self.head]
        if insertion in ("after_backbone", "after_aspp"):
            modules.insert(0, self.feature_extractor.head)
        radius = 0
        for root in modules:
            for module in root.modules():
                if isinstance(module, nn.Conv2d):
                    kernel, dilation = module.kernel_size, module.dilation
                    reach = dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2
                    if module.stride != (1, 1) or module.padding != reach or reach[0] != reach[1]:
                        return None
                    radius += reach[0]
                elif isinstance(module, nn.BatchNorm2d):
                    if module.training:  # batch statistics mix all pixels
                        return None
                elif not isinstance(module, _LOCAL_CONTAINERS + _POINTWISE_MODULES):
                    return None
        return radius

    # -- parameter groups for training -----------------------------------------------------------
    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.feature_extractor.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        backbone_ids = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in backbone_ids]


# -- the previous mask as an input (issue 18) ----------------------------------------------------------------
def widen_for_previous_mask(model: InteractiveModel) -> InteractiveModel:
    """A copy of `model` with `prev_mask_input` on: the fusion conv gets a 6th input channel whose weight is
    zero, so the copy computes exactly what `model` does until training moves that weight."""
    if model.config.prev_mask_input:
        return model
    widened = InteractiveModel(dataclasses.replace(model.config, prev_mask_input=True))
    state = model.state_dict()
    old = state["rgb_conv.0.weight"]
    state["rgb_conv.0.weight"] = torch.cat((old, old.new_zeros((old.shape[0], 1, *old.shape[2:]))), dim=1)
    widened.load_state_dict(state)
    return widened.to(old.device).train(model.training)


class PreviousMaskNetwork:
    """The model with a previous mask bound to it, for callers that know only `model(image, points)`,
    `forward_with_maps` and `features_at` (the BRS refiners): every other attribute is the model's own.

    prev_mask: (B,1,h,w) probabilities on the network input (the flip batch included)."""

    def __init__(self, model: InteractiveModel, prev_mask: torch.Tensor) -> None:
        self.model, self.prev_mask = model, prev_mask

    def __call__(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.model(image, points, self.prev_mask)

    def forward_with_maps(self, image: torch.Tensor, coord_features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_with_maps(image, coord_features, self.prev_mask)

    def features_at(
        self, insertion: str, image: torch.Tensor, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model.features_at(insertion, image, points, self.prev_mask)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def previous_mask_network(
    network: Any,
    probabilities: Any,
    roi: tuple[int, int, int, int] | None,
    size: tuple[int, int],
    with_flip: bool,
) -> PreviousMaskNetwork:
    """What a predictor hands its refiner for a `prev_mask_input` model: the network with the previous
    probabilities bound, mapped as the image was (Zoom-In crop `roi` = inclusive (rmin, rmax, cmin, cmax) of
    the full image, then resized to the network input `size` (h, w); the mirrored copy for flip TTA).

    probabilities: the (H, W) float map of the previous click on the full image, or None (first click: zeros).
    Raises NotImplementedError for a stand-in network (ONNX Runtime): not supported yet."""
    if not isinstance(network, InteractiveModel):
        raise NotImplementedError(
            "models with prev_mask_input run in torch only: the ONNX backend does not support them yet"
        )
    device = next(network.parameters()).device
    height, width = size
    if probabilities is None:
        prev = torch.zeros((1, 1, height, width), device=device)
    else:
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if roi is not None:
            rmin, rmax, cmin, cmax = roi
            probabilities = probabilities[rmin : rmax + 1, cmin : cmax + 1]
        # A copy: the predictor's maps are read-only (shared with its undo history).
        prev = torch.tensor(probabilities, device=device)[None, None]
        if tuple(prev.shape[2:]) != (height, width):
            prev = upsample_to(prev, (height, width))
    if with_flip:
        prev = torch.cat((prev, torch.flip(prev, dims=[3])), dim=0)
    return PreviousMaskNetwork(network, prev)
