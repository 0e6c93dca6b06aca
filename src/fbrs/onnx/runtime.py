"""ONNX Runtime backend for the feed-forward part of a prediction (optional: `pip install 'fbrs[onnx]'`).

    predictor = Predictor(model, mode="f-BRS-B", backend="onnx")  # exports to the cache on first use
    # or with files of `fbrs export-onnx`:
    backend = fbrs.onnx.OnnxBackend(model, ["default.after_aspp.onnx", "default.decoder_head.onnx"], threads=1)
    predictor = Predictor(model, mode="f-BRS-B", backend=backend)

What runs where:

* NoBRS: the whole forward pass in ONNX Runtime (part ``full``). With only an insertion-point part, that part
  runs in ONNX Runtime and the rest in torch.
* f-BRS-A/B/C: the network up to the insertion point (once per click while clicks enter the network) in ONNX
  Runtime; so is the whole-map pass of the local layers after it at every L-BFGS evaluation when the local
  part (``decoder_head`` / ``head``) is loaded. The gradient of each evaluation (on small windows around the
  clicks, or through ASPP for f-BRS-A) stays in torch.
* RGB-BRS / DistMap-BRS differentiate through the whole network at every L-BFGS step: not supported.

`backend="onnx"` without files exports the parts a mode needs (`fbrs.onnx.policy.parts_for_mode`) once per
model into a cache folder (`fbrs.onnx.cache`: $FBRS_CACHE_DIR, else $XDG_CACHE_HOME/fbrs, else ~/.cache/fbrs),
keyed by the weights' sha256; the export needs the `onnx` extra too and takes seconds to a minute per part.

The distance maps (which depend on the number of clicks) are always computed in torch; the files hold the
network from the fusion conv on (see `fbrs.onnx.export`). A file records the sha256 of the weights it
was exported from and is refused for another model, since the torch half of f-BRS would silently use
different weights. Predictions agree with the torch backend up to float summation order (ONNX Runtime fuses
BatchNorm into the convolutions and uses its own kernels), not bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from fbrs.errors import CheckpointError, ConfigError
from fbrs.models.interactive_model import INSERTIONS, InteractiveModel
from fbrs.onnx.parts import (
    FORMAT_VERSION,
    LOCAL_PART_AFTER,
    OUTPUT_NAMES,
    PART_INPUTS,
    PARTS,
    require_modules,
    weights_fingerprint,
)

PathLike = str | os.PathLike


@runtime_checkable
class OnnxMode(Protocol):
    """What the ONNX side needs to know of a learned mode (fbrs.inference.modes.LearnedMode has it)."""

    name: str
    onnx: bool  # its feed-forward part can run in ONNX Runtime (not RGB-/DistMap-BRS)
    insertion: str | None  # the f-BRS insertion point, None for NoBRS


def unsupported_mode(mode: str) -> ConfigError:
    return ConfigError(
        f"{mode} differentiates through the whole network at every L-BFGS step: the ONNX backend "
        "supports NoBRS and f-BRS-A/B/C; use backend='torch'"
    )


class OnnxBackend:
    """ONNX Runtime sessions for exported parts (`fbrs export-onnx`) of one torch model, on the CPU.

    Args:
        model: the InteractiveModel the files were exported from (checked by the weights' sha256); it still
            computes the distance maps and the layers after an f-BRS insertion point.
        paths: one or more .onnx files, at most one per part.
        threads: ONNX Runtime intra-op threads; None = torch.get_num_threads() at construction, so that
            `torch.set_num_threads` / `--threads` govern both backends alike.
        check_weights: refuse files exported from other weights (default True).
    """

    #: What Predictor.backend reports (fbrs.inference.backends.Backend protocol).
    name = "onnx"

    def __init__(
        self,
        model: InteractiveModel,
        paths: PathLike | Sequence[PathLike],
        threads: int | None = None,
        check_weights: bool = True,
    ) -> None:
        require_modules("onnxruntime")
        import onnxruntime

        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not paths:
            raise ConfigError("OnnxBackend needs at least one .onnx file (fbrs export-onnx)")
        self.model = model
        self.threads = threads if threads is not None else torch.get_num_threads()
        self.sessions: dict[str, Any] = {}
        self.paths: dict[str, Path] = {}
        fingerprint = weights_fingerprint(model) if check_weights else None
        for path in map(Path, paths):
            session = self._open(onnxruntime, path)
            meta = session.get_modelmeta().custom_metadata_map
            part = meta.get("fbrs.part")
            if part not in PARTS or meta.get("fbrs.format_version") != FORMAT_VERSION:
                raise CheckpointError(
                    f"{path} is not an fbrs ONNX export (format {FORMAT_VERSION}); write one with fbrs export-onnx"
                )
            if part in self.sessions:
                raise ConfigError(f"two files for the ONNX part {part!r}: {self.paths[part]} and {path}")
            if fingerprint is not None and meta.get("fbrs.weights_sha256") != fingerprint:
                raise CheckpointError(
                    f"{path} was exported from other weights than this model "
                    f"({meta.get('fbrs.weights_sha256', '?')[:12]} vs {fingerprint[:12]}); export it again "
                    "from this model: fbrs export-onnx --model MODEL -o OUT.onnx"
                )
            outputs = tuple(output.name for output in session.get_outputs())
            inputs = tuple(item.name for item in session.get_inputs())
            if inputs != PART_INPUTS[part] or outputs != OUTPUT_NAMES[part]:
                raise CheckpointError(f"{path}: unexpected inputs {inputs} / outputs {outputs} for part {part!r}")
            self.sessions[part] = session
            self.paths[part] = path

    def _open(self, onnxruntime: Any, path: Path) -> Any:
        if not path.is_file():
            raise CheckpointError(f"ONNX file not found: {path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads would otherwise spin on the cores that torch needs for the BRS head in between.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: its graph-optimisation notes are not for our users
        try:
            return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            raise CheckpointError(f"{path}: not a readable ONNX model ({error})") from error

    def __deepcopy__(self, memo: dict) -> OnnxBackend:
        # Sessions are never modified after construction (run is thread-safe): copies share them.
        return self

    def __reduce__(self):
        # Sessions cannot be pickled: another process re-opens the same files (and checks them again).
        return (type(self), (self.model, list(self.paths.values()), self.threads))

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(part for part in PARTS if part in self.sessions)

    def run(self, part: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The part's inputs (fbrs.onnx.parts.PART_INPUTS: image (B,3,H,W) and coord_features
        (B,2,H,W), or features (B,C,h,w)) -> its outputs (OUTPUT_NAMES) as CPU float32 tensors."""
        if part not in self.sessions:
            raise ConfigError(f"no ONNX file for part {part!r}; have: {', '.join(self.parts)}")
        names = PART_INPUTS[part]
        if len(inputs) != len(names):
            raise ConfigError(f"ONNX part {part!r} takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}")
        feeds = {
            name: np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)
            for name, tensor in zip(names, inputs, strict=True)
        }
        return tuple(torch.from_numpy(output) for output in self.sessions[part].run(None, feeds))

    def check_mode(self, mode: OnnxMode) -> None:
        """Raise ConfigError unless the files cover the feed-forward part of `mode`."""
        if not mode.onnx:
            raise unsupported_mode(mode.name)
        if mode.insertion is None and not any(part in self.sessions for part in ("full", *INSERTIONS)):
            raise ConfigError(
                f"{mode.name} needs the ONNX part 'full' or an insertion point (have: {', '.join(self.parts)}); "
                "write it with fbrs export-onnx --part full"
            )
        if mode.insertion is not None and mode.insertion not in self.sessions:
            raise ConfigError(
                f"{mode.name} needs the ONNX part {mode.insertion!r} (have: {', '.join(self.parts)}); "
                f"write it with fbrs export-onnx --part {mode.insertion}"
            )

    def network(self, model: InteractiveModel, mode: OnnxMode, device: torch.device) -> OnnxAcceleratedModel:
        """What a Predictor of `model` in `mode` hands its refiner (fbrs.inference.backends.Backend protocol):
        a stand-in for the model whose feed-forward calls run in these sessions. ConfigError unless the files
        are of this model's weights, the model is on the CPU and the files cover the mode."""
        if self.model is not model and weights_fingerprint(self.model) != weights_fingerprint(model):
            raise ConfigError("this OnnxBackend was built for a model with other weights")
        if device.type != "cpu":
            raise ConfigError(f"the ONNX backend runs on the CPU; the model is on {device}")
        self.check_mode(mode)
        return OnnxAcceleratedModel(model, self)


class OnnxAcceleratedModel:
    """Stands in for an InteractiveModel inside the refiners: the no-grad feed-forward calls (`__call__`,
    `features_at`) run in ONNX Runtime, everything else (distance maps, `logits_from` and the parts that
    BRS differentiates) is the torch model's."""

    def __init__(self, model: InteractiveModel, backend: OnnxBackend) -> None:
        self.model = model
        self.backend = backend

    def __call__(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """image (B,3,H,W) normalised, points (B,2N,2) -> logits (B,1,H,W), as InteractiveModel.forward."""
        coord_features = self.model.dist_maps(image, points)
        if "full" in self.backend.sessions:
            return self.backend.run("full", image, coord_features)[0]
        # Only an insertion-point part: run it in ONNX Runtime and the rest in torch (still one forward).
        insertion = next(part for part in INSERTIONS if part in self.backend.sessions)
        features, skip = self._features(insertion, image, coord_features)
        return self.model.logits_from(insertion, features, skip, tuple(image.shape[2:]))

    def features_at(
        self, insertion: str, image: torch.Tensor, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As InteractiveModel.features_at: (features, skip), skip only after the backbone."""
        return self._features(insertion, image, self.model.dist_maps(image, points))

    def _features(
        self, insertion: str, image: torch.Tensor, coord_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        outputs = self.backend.run(insertion, image, coord_features)
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)

    def local_logits(self, insertion: str, x: torch.Tensor) -> torch.Tensor:
        """As InteractiveModel.local_logits. In ONNX Runtime when no gradient is wanted (the whole-map pass of
        each f-BRS evaluation) and the local part after `insertion` is loaded; in torch otherwise."""
        part = LOCAL_PART_AFTER[insertion]
        if part in self.backend.sessions and not (torch.is_grad_enabled() and x.requires_grad):
            return self.backend.run(part, x)[0]
        return self.model.local_logits(insertion, x)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not defined above: dist_maps, logits_from, local_logits, ... Not for
        # dunders or our own fields, which copy/pickle look up before __init__ ran (endless recursion otherwise).
        if name.startswith("__") or name in ("model", "backend"):
            raise AttributeError(name)
        return getattr(self.model, name)
