"""What an fbrs ONNX file is: its parts, their input and output names, the metadata format, and the
fingerprint of the weights it was exported from. Shared by the exporter (`fbrs.onnx.export`) and the
runtime (`fbrs.onnx.runtime`), which must agree on all of it."""

from __future__ import annotations

import hashlib
import threading
import weakref

import torch
from torch import nn

from fbrs.errors import MissingDependencyError
from fbrs.models.interactive_model import INSERTIONS

#: The local part that f-BRS re-runs after each insertion point (see fbrs.onnx.export).
LOCAL_PART_AFTER = {"after_backbone": "decoder_head", "after_aspp": "decoder_head", "after_decoder": "head"}
#: Exportable parts: the whole pass, the network up to an f-BRS insertion point, the local parts after them.
PARTS = ("full", *INSERTIONS, "decoder_head", "head")
LOCAL_PARTS = ("decoder_head", "head")
INPUT_NAMES = ("image", "coord_features")
#: Input names of each part, in the order the exported graph takes them.
PART_INPUTS = {part: ("features",) if part in LOCAL_PARTS else INPUT_NAMES for part in PARTS}
#: Output names of each part, in the order the exported graph returns them.
OUTPUT_NAMES = {
    "full": ("logits",),
    "after_backbone": ("features", "skip"),
    "after_aspp": ("features",),
    "after_decoder": ("features",),
    "decoder_head": ("low_logits",),
    "head": ("low_logits",),
}
#: Version of the metadata layout; bumped when a reader must tell old files apart.
FORMAT_VERSION = "1"
#: For each local part, an insertion point it follows (f-BRS-A and f-BRS-B share decoder_head).
INSERTION_OF_LOCAL = {"decoder_head": "after_aspp", "head": "after_decoder"}
INSTALL_HINT = "install the optional ONNX dependencies: pip install 'fbrs[onnx]'"


def require_modules(*names: str) -> None:
    """Raise MissingDependencyError (an FbrsError) naming the extra when an optional module is missing."""
    import importlib.util

    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(f"{', '.join(missing)} not installed: {INSTALL_HINT}")


# model -> (stamp of its tensors, sha256). Hashing reads every weight (~0.1 s for the default model) and a
# predictor with backend="onnx" needs the fingerprint three times (cache folder, session key, file check),
# `fbrs evaluate` once more per sample. Why reusing it is safe: the stamp records, for every state_dict
# entry, its name, storage address, dtype, shape and torch's version counter, which every in-place write
# bumps (optimizer steps, load_state_dict's copy_, calibration); a replaced tensor has another address. So
# any change of the weights misses the cache and is hashed again. Weak keys: a model no longer used by
# anyone else is dropped from the cache with it.
_FINGERPRINTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()
_FINGERPRINTS_LOCK = threading.Lock()


def _stamp(state: dict[str, torch.Tensor]) -> tuple | None:
    try:
        return tuple(
            (name, tensor.data_ptr(), tensor._version, tensor.dtype, tuple(tensor.shape))
            for name, tensor in state.items()
        )
    except RuntimeError:  # tensors made under torch.inference_mode have no version counter: never cached
        return None


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the state_dict (names, dtypes, shapes, bytes; parameters and BatchNorm buffers), in key order.

    Ties an ONNX file to the torch model whose remaining layers run beside it. Computed once per model and
    weights (see _FINGERPRINTS)."""
    state = model.state_dict()
    stamp = _stamp(state)
    with _FINGERPRINTS_LOCK:
        cached = _FINGERPRINTS.get(model)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return cached[1]
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # view(uint8) instead of .numpy(): also works for bfloat16 and keeps the exact bytes.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    fingerprint = digest.hexdigest()
    if stamp is not None:
        with _FINGERPRINTS_LOCK:
            _FINGERPRINTS[model] = (stamp, fingerprint)
    return fingerprint
