"""Deterministic weights of the golden reference (../shared/reference/README.md, "Weight recipe").

The original authors' code was run with these weights to produce the goldens; rebuilding them here lets
the tests compare our network and predictors with the original number for number.
"""

from __future__ import annotations

import hashlib
import math

import torch

from fbrs.models.builders import build_model
from fbrs.models.interactive_model import InteractiveModel


def reference_state_dict(model: InteractiveModel, variant: str = "calibrated") -> dict[str, torch.Tensor]:
    """Fill a state_dict by the reference recipe. variant: "base" or "calibrated" (final conv x 1e-3)."""
    if variant not in ("base", "calibrated"):
        raise ValueError(f"variant must be 'base' or 'calibrated', got {variant!r}")
    state = model.state_dict()
    filled: dict[str, torch.Tensor] = {}
    for index, (key, tensor) in enumerate(sorted(state.items(), key=lambda item: item[0])):
        shape = tuple(tensor.shape)
        generator = torch.Generator().manual_seed(index)
        if key.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith("num_batches_tracked"):
            value = tensor.clone()
        elif key.endswith("running_mean"):
            value = 0.1 * torch.randn(shape, generator=generator)
        elif tensor.dim() > 1:
            value = torch.randn(shape, generator=generator) * math.sqrt(2 / math.prod(shape[1:]))
        else:
            offset = 1.0 if key.endswith("weight") else 0.0
            value = offset + 0.1 * torch.randn(shape, generator=generator)
        filled[key] = value
    if variant == "calibrated":
        filled["head.layers.2.weight"] = filled["head.layers.2.weight"] * 1e-3
    return filled


def build_reference_model(variant: str = "calibrated") -> InteractiveModel:
    """ResNet-34 (dh128) with the reference weights, in eval mode, gradients off."""
    model = build_model("resnet34_dh128")
    model.load_state_dict(reference_state_dict(model, variant))
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of the float tensors as little-endian float32, in sorted-key order (reference convention)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        if key.endswith("num_batches_tracked"):
            continue
        digest.update(state_dict[key].float().contiguous().numpy().astype("<f4").tobytes())
    return digest.hexdigest()
