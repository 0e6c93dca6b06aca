"""Caches of the ONNX backend: exported files on disk, and open ONNX Runtime sessions in this process.

* Files: `backend="onnx"` without files exports the parts a mode needs once per model into
  <cache_dir>/onnx/<model name>-<weights' sha256 prefix>/<part>.onnx (`cached_onnx_files`).
* Sessions: `shared_backend` keeps the OnnxBackend of each (weights, files, threads), so that a predictor
  per sample (as `fbrs evaluate` makes them) does not open its sessions again each time (~0.1-1 s).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from fbrs.errors import CheckpointError, ConfigError
from fbrs.models.interactive_model import InteractiveModel
from fbrs.onnx.parts import PARTS, require_modules, weights_fingerprint
from fbrs.onnx.runtime import OnnxAcceleratedModel, OnnxBackend, OnnxMode, PathLike


def default_cache_dir() -> Path:
    """Where `backend="onnx"` keeps its exports: $FBRS_CACHE_DIR, else $XDG_CACHE_HOME/fbrs, else ~/.cache/fbrs."""
    if os.environ.get("FBRS_CACHE_DIR"):
        return Path(os.environ["FBRS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fbrs"


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
    from fbrs.onnx import export  # looked up at call time: tests replace export.export_onnx

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
            export.export_onnx(model, path, part)
        paths.append(path)
    return paths


def export_for_modes(
    model: InteractiveModel, modes: Sequence[str], notify: Callable[[str], None] | None = None
) -> list[Path]:
    """Export into the cache, now, what the named modes need to run in ONNX Runtime: the CLIs call it before
    a run so that the wait is announced and workers do not race to export."""
    from fbrs.onnx.policy import parts_for_mode

    parts = [part for mode in modes for part in parts_for_mode(mode)]
    return cached_onnx_files(model, list(dict.fromkeys(parts)), notify=notify) if parts else []


# (weights' sha256, resolved file paths, torch thread count) -> OnnxBackend, least recently used first.
# Bounded because each entry holds open ONNX Runtime sessions (about the size of the model's weights each)
# and a reference to its torch model, and a long process (the app, a notebook trying models) would otherwise
# keep every model it ever ran alive. Evicting is safe: predictors hold their own reference to their
# backend, and a later predictor merely opens the sessions again. 8 = every mode's file set (NoBRS,
# f-BRS-A/B/C) of two models. `clear_shared_backends()` empties it (frees the memory at once).
_SHARED_BACKENDS: OrderedDict[tuple, OnnxBackend] = OrderedDict()
_SHARED_BACKENDS_SIZE = 8
_SHARED_BACKENDS_LOCK = threading.Lock()


def shared_backend(model: InteractiveModel, paths: PathLike | Sequence[PathLike]) -> OnnxBackend:
    """One OnnxBackend per (weights, files, thread count) in this process (see _SHARED_BACKENDS).
    Sessions are thread-safe and never modified after opening, so predictors may share them."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    key = (weights_fingerprint(model), tuple(str(Path(path).resolve()) for path in paths), torch.get_num_threads())
    with _SHARED_BACKENDS_LOCK:
        backend = _SHARED_BACKENDS.get(key)
        if backend is not None:
            _SHARED_BACKENDS.move_to_end(key)
            return backend
    backend = OnnxBackend(model, paths)  # outside the lock: opening sessions takes up to a second
    with _SHARED_BACKENDS_LOCK:
        backend = _SHARED_BACKENDS.setdefault(key, backend)
        _SHARED_BACKENDS.move_to_end(key)
        while len(_SHARED_BACKENDS) > _SHARED_BACKENDS_SIZE:
            _SHARED_BACKENDS.popitem(last=False)
    return backend


def clear_shared_backends() -> None:
    """Forget every shared OnnxBackend (their sessions close once no predictor uses them any more)."""
    with _SHARED_BACKENDS_LOCK:
        _SHARED_BACKENDS.clear()


class LazyOnnxBackend:
    """What `Predictor(backend="onnx", onnx_files=...)` runs (fbrs.inference.backends.Backend protocol): the
    shared OnnxBackend of `onnx_files`, or without files of the parts the mode needs from the file cache,
    exported there on first use."""

    name = "onnx"

    def __init__(self, onnx_files: PathLike | Sequence[PathLike] | None = None) -> None:
        self.onnx_files = onnx_files

    def network(self, model: InteractiveModel, mode: OnnxMode, device: torch.device) -> OnnxAcceleratedModel:
        if self.onnx_files is not None:
            backend = shared_backend(model, self.onnx_files)
        else:
            from fbrs.onnx.policy import parts_for_mode

            parts = parts_for_mode(mode)
            try:
                backend = shared_backend(model, cached_onnx_files(model, parts))
            except CheckpointError:
                # A cached file another fbrs version wrote (other format) or one damaged on disk: export again.
                backend = shared_backend(model, cached_onnx_files(model, parts, refresh=True))
        return backend.network(model, mode, device)
