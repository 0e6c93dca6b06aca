"""Everything fbrs knows about ONNX, in one package (optional dependencies: `pip install 'fbrs[onnx]'`).

* `parts`: what an fbrs ONNX file is (parts, input/output names, metadata, the weights' fingerprint);
* `export`: torch -> .onnx (`fbrs export-onnx`);
* `runtime`: `OnnxBackend` (ONNX Runtime sessions of one model's files) and the stand-in network the
  Predictor's refiner runs;
* `cache`: exported files on disk, and the process's open sessions (`shared_backend`, bounded);
* `policy`: which modes can run in ONNX Runtime and what `--backend auto|torch|onnx` gives each.

Nothing in fbrs.models or fbrs.inference imports this package at module level: the Predictor imports it
when a user asks for `backend="onnx"` (fbrs.inference.backends). onnx/onnxruntime themselves are imported
only when a file is exported or opened, so importing fbrs.onnx works without the extra.
"""

from fbrs.onnx.cache import (
    LazyOnnxBackend,
    cached_onnx_files,
    clear_shared_backends,
    default_cache_dir,
    export_for_modes,
    shared_backend,
)
from fbrs.onnx.export import export_onnx, export_onnx_bytes, max_difference, output_paths
from fbrs.onnx.parts import INSTALL_HINT, LOCAL_PARTS, PARTS, require_modules, weights_fingerprint
from fbrs.onnx.policy import BACKEND_CHOICES, backend_for_mode, check_backend_choice, onnx_available, parts_for_mode
from fbrs.onnx.runtime import OnnxAcceleratedModel, OnnxBackend

__all__ = [
    "BACKEND_CHOICES",
    "INSTALL_HINT",
    "LOCAL_PARTS",
    "PARTS",
    "LazyOnnxBackend",
    "OnnxAcceleratedModel",
    "OnnxBackend",
    "backend_for_mode",
    "cached_onnx_files",
    "check_backend_choice",
    "clear_shared_backends",
    "default_cache_dir",
    "export_for_modes",
    "export_onnx",
    "export_onnx_bytes",
    "max_difference",
    "onnx_available",
    "output_paths",
    "parts_for_mode",
    "require_modules",
    "shared_backend",
    "weights_fingerprint",
]
