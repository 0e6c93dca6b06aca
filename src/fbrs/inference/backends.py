"""Where a Predictor's feed-forward part runs: one backend object behind a small protocol.

A backend turns (model, mode, device) into the *network* the refiner calls: something with the
InteractiveModel interface the refiners use (`__call__(image, points) -> logits`, `features_at`,
`logits_from`, `local_logits`, `dist_maps`, ...). The torch backend hands over the model itself; the ONNX
backends (fbrs.onnx) hand over a stand-in whose feed-forward calls run in ONNX Runtime. The user-facing
option stays a string: `Predictor(backend="torch" | "onnx", onnx_files=...)`; `backend_from_option` turns
it into a backend object, importing fbrs.onnx only when "onnx" is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from fbrs.errors import ConfigError

#: The values of Predictor's `backend` option (or a Backend object, e.g. an fbrs.onnx.OnnxBackend).
BACKENDS = ("torch", "onnx")


@runtime_checkable
class Backend(Protocol):
    """name: what Predictor.backend reports ("torch" or "onnx"). network(model, mode, device): the network
    the refiner runs for `model` in `mode` (a fbrs.inference.modes.LearnedMode) on `device`; raises
    ConfigError where the backend cannot run that mode."""

    name: str

    def network(self, model: Any, mode: Any, device: torch.device) -> Any: ...


class TorchBackend:
    """The model itself, in torch (the default)."""

    name = "torch"

    def network(self, model: Any, mode: Any, device: torch.device) -> Any:
        return model


def backend_from_option(
    backend: str | Backend, onnx_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None
) -> Backend:
    """The Backend of Predictor's `backend` and `onnx_files` options; ConfigError for other values."""
    if isinstance(backend, str):
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)} (or an OnnxBackend)")
        if backend == "torch":
            if onnx_files is not None:
                raise ConfigError("onnx_files is only used with backend='onnx'")
            return TorchBackend()
        from fbrs.onnx.cache import LazyOnnxBackend  # the user asked for ONNX: only now import it

        return LazyOnnxBackend(onnx_files)
    if not isinstance(backend, Backend):
        raise ConfigError(f"backend must be 'torch', 'onnx' or an OnnxBackend, got {type(backend).__name__}")
    if onnx_files is not None:
        raise ConfigError("give either an OnnxBackend or onnx_files, not both")
    return backend
