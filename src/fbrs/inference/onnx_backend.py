"""ONNX Runtime backend for the feed-forward part of a prediction (optional: `pip install 'fbrs[onnx]'`).

    predictor = Predictor(model, mode="f-BRS-B", backend="onnx")  # exports to the cache on first use
    # or with files of `fbrs export-onnx`:
    backend = OnnxBackend(model, ["default.after_aspp.onnx", "default.decoder_head.onnx"], threads=1)
    predictor = Predictor(model, mode="f-BRS-B", backend=backend)

What runs where:

* NoBRS: the whole forward pass in ONNX Runtime (part ``full``). With only an insertion-point part, that part
  runs in ONNX Runtime and the rest in torch.
* f-BRS-A/B/C: the network up to the insertion point (once per click while clicks enter the network) in ONNX
  Runtime; so is the whole-map pass of the local layers after it at every L-BFGS evaluation when the local
  part (``decoder_head`` / ``head``) is loaded. The gradient of each evaluation (on small windows around the
  clicks, or through ASPP for f-BRS-A) stays in torch.
* RGB-BRS / DistMap-BRS differentiate through the whole network at every L-BFGS step: not supported.

`backend="onnx"` without files exports the parts a mode needs (`parts_for_mode`) once per model into a cache
folder (`default_cache_dir`: $FBRS_CACHE_DIR, else $XDG_CACHE_HOME/fbrs, else ~/.cache/fbrs), keyed by the
weights' sha256; the export needs the `onnx` extra too and takes seconds to a minute per part.

The distance maps (which depend on the number of clicks) are always computed in torch; the files hold the
network from the fusion conv on (see `fbrs.models.onnx_export`). A file records the sha256 of the weights it
was exported from and is refused for another model, since the torch half of f-BRS would silently use
different weights. Predictions agree with the torch backend up to float summation order (ONNX Runtime fuses
BatchNorm into the convolutions and uses its own kernels), not bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fbrs.errors import CheckpointError, ConfigError
from fbrs.models.interactive_model import INSERTIONS, InteractiveModel
from fbrs.models.onnx_export import (
    FORMAT_VERSION,
    LOCAL_PART_AFTER,
    OUTPUT_NAMES,
    PART_INPUTS,
    PARTS,
    require_modules,
    weights_fingerprint,
)

BACKENDS = ("torch", "onnx")
PathLike = str | os.PathLike


def default_cache_dir() -> Path:
    """Where `backend="onnx"` keeps its exports: $FBRS_CACHE_DIR, else $XDG_CACHE_HOME/fbrs, else ~/.cache/fbrs."""
    if os.environ.get("FBRS_CACHE_DIR"):
        return Path(os.environ["FBRS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fbrs"


def parts_for_mode(mode_spec: Any) -> tuple[str, ...]:
    """The ONNX parts that accelerate a mode (a fbrs.inference.modes.ModeSpec): NoBRS the whole pass, f-BRS
    the network up to its insertion point and the local part after it. RGB-/DistMap-BRS: ConfigError."""
    if mode_spec.refiner == "none":
        return ("full",)
    if mode_spec.refiner == "feature":
        return (mode_spec.target, LOCAL_PART_AFTER[mode_spec.target])
    raise _unsupported_mode(mode_spec.name)


def _unsupported_mode(mode: str) -> ConfigError:
    return ConfigError(
        f"{mode} differentiates through the whole network at every L-BFGS step: the ONNX backend "
        "supports NoBRS and f-BRS-A/B/C; use backend='torch'"
    )


def cached_onnx_files(
    model: InteractiveModel,
    parts: Sequence[str],
    cache_dir: PathLike | None = None,
    notify: Callable[[str], None] | None = None,
    refresh: bool = False,
) -> list[Path]:
    """The .onnx files of `parts` of `model` in the cache, exported (atomically) where missing, or all of
    them again with `refresh`.

    The folder is <cache_dir>/onnx/<model name>-<first 16 hex digits of the weights' sha256>, so a retrained
    or recalibrated model never meets the files of another. notify(message) is called before each export
    (the CLIs print it: an export takes seconds to a minute)."""
    from fbrs.models.onnx_export import export_onnx

    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        raise ConfigError(f"unknown ONNX part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    folder = Path(cache_dir or default_cache_dir()) / "onnx" / f"{model.config.name}-{weights_fingerprint(model)[:16]}"
    paths = []
    for part in parts:
        path = folder / f"{part}.onnx"
        if refresh or not path.is_file():
            require_modules("onnx", "onnxscript", "onnxruntime")
            if notify is not None:
                notify(f"exporting {model.config.name} part {part} to ONNX (once per model): {path}")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                message = f"cannot create the ONNX cache folder {path.parent}: {error}; set FBRS_CACHE_DIR"
                raise ConfigError(message) from error
            export_onnx(model, path, part)
        paths.append(path)
    return paths


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
        """The part's inputs (fbrs.models.onnx_export.PART_INPUTS: image (B,3,H,W) and coord_features
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

    def check_mode(self, refiner: str, target: str | None, mode: str) -> None:
        """Raise ConfigError unless the files cover the feed-forward part of a mode (see fbrs.inference.modes)."""
        if refiner == "input":
            raise _unsupported_mode(mode)
        if refiner == "none" and not any(part in self.sessions for part in ("full", *INSERTIONS)):
            raise ConfigError(
                f"{mode} needs the ONNX part 'full' or an insertion point (have: {', '.join(self.parts)}); "
                "write it with fbrs export-onnx --part full"
            )
        if refiner == "feature" and target not in self.sessions:
            raise ConfigError(
                f"{mode} needs the ONNX part {target!r} (have: {', '.join(self.parts)}); "
                f"write it with fbrs export-onnx --part {target}"
            )


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


def export_for_modes(
    model: InteractiveModel, modes: Sequence[str], notify: Callable[[str], None] | None = None
) -> list[Path]:
    """Export into the cache, now, what the named modes (fbrs.inference.modes.MODES) need to run in ONNX
    Runtime: the CLIs call it before a run so that the wait is announced and workers do not race to export."""
    from fbrs.inference.modes import MODES

    parts = [part for mode in modes for part in parts_for_mode(MODES[mode])]
    return cached_onnx_files(model, list(dict.fromkeys(parts)), notify=notify) if parts else []


_SHARED_BACKENDS: dict[tuple, OnnxBackend] = {}


def shared_backend(model: InteractiveModel, paths: PathLike | Sequence[PathLike]) -> OnnxBackend:
    """One OnnxBackend per (weights, files, thread count) in this process: a predictor per sample (as
    `fbrs evaluate` makes them) must not open its ONNX Runtime sessions again each time (~0.1-1 s).
    Sessions are thread-safe and never modified after opening, so predictors may share them."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    key = (weights_fingerprint(model), tuple(str(Path(path).resolve()) for path in paths), torch.get_num_threads())
    if key not in _SHARED_BACKENDS:
        _SHARED_BACKENDS[key] = OnnxBackend(model, paths)
    return _SHARED_BACKENDS[key]


def accelerated_model(
    model: InteractiveModel,
    mode_spec: Any,
    backend: str | OnnxBackend,
    onnx_files: PathLike | Sequence[PathLike] | None,
    device: torch.device,
) -> InteractiveModel | OnnxAcceleratedModel:
    """What the Predictor hands to its refiner for `backend` ("torch", "onnx" with `onnx_files`, or an
    OnnxBackend of this model). mode_spec: a fbrs.inference.modes.ModeSpec."""
    if isinstance(backend, str):
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)} (or an OnnxBackend)")
        if backend == "torch":
            if onnx_files is not None:
                raise ConfigError("onnx_files is only used with backend='onnx'")
            return model
        if onnx_files is not None:
            backend = shared_backend(model, onnx_files)
        else:
            parts = parts_for_mode(mode_spec)
            try:
                backend = shared_backend(model, cached_onnx_files(model, parts))
            except CheckpointError:
                # A cached file another fbrs version wrote (other format) or one damaged on disk: export again.
                backend = shared_backend(model, cached_onnx_files(model, parts, refresh=True))
    elif not isinstance(backend, OnnxBackend):
        raise ConfigError(f"backend must be 'torch', 'onnx' or an OnnxBackend, got {type(backend).__name__}")
    elif onnx_files is not None:
        raise ConfigError("give either an OnnxBackend or onnx_files, not both")
    elif backend.model is not model and weights_fingerprint(backend.model) != weights_fingerprint(model):
        raise ConfigError("this OnnxBackend was built for a model with other weights")
    if device.type != "cpu":
        raise ConfigError(f"the ONNX backend runs on the CPU; the model is on {device}")
    backend.check_mode(mode_spec.refiner, mode_spec.target, mode_spec.name)
    return OnnxAcceleratedModel(model, backend)
