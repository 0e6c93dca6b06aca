"""Which modes run in ONNX Runtime, and what the CLIs' `--backend auto|torch|onnx` gives each mode.

Whether a mode can is a fact of its registry entry (`fbrs.registry.ModeSpec.onnx`): NoBRS and f-BRS-A/B/C
(their -guarded variants too) can; RGB-/DistMap-BRS differentiate through the whole network at every L-BFGS
step, the SAM family and the classical baselines have no DeepLab network."""

from __future__ import annotations

import importlib.util

from fbrs.errors import ConfigError
from fbrs.onnx.parts import LOCAL_PART_AFTER
from fbrs.onnx.runtime import OnnxMode, unsupported_mode

#: Where the feed-forward part runs: "torch", "onnx" (ONNX Runtime), or "auto" (the CLIs' choice: ONNX
#: Runtime where it is installed and the mode supports it).
BACKEND_CHOICES = ("auto", "torch", "onnx")


def supports_onnx(mode: str) -> bool:
    """Whether the registered mode `mode` can run its feed-forward part in ONNX Runtime (False for names the
    registry does not know)."""
    from fbrs.registry import PREDICTORS

    return mode in PREDICTORS and PREDICTORS.spec(mode).onnx


def onnx_available() -> bool:
    """onnxruntime and the exporter (onnx, onnxscript) are installed: pip install 'fbrs[onnx]'."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "onnxscript"))


def check_backend_choice(choice: str, device: str = "cpu") -> None:
    """ConfigError unless `choice` is one of BACKEND_CHOICES and fits `device` (ONNX Runtime runs on the CPU)."""
    if choice not in BACKEND_CHOICES:
        raise ConfigError(f"unknown backend {choice!r}; choose from {', '.join(BACKEND_CHOICES)}")
    if choice == "onnx" and device != "cpu":
        raise ConfigError(f"--backend onnx runs on the CPU, not on {device}: use --device cpu")


def backend_for_mode(choice: str, mode: str, device: str = "cpu") -> str:
    """The backend a CLI option `choice` (BACKEND_CHOICES) gives `mode`: "onnx" or "torch".

    "onnx" falls back to torch only for the modes ONNX cannot run (so that `--backend onnx --modes
    NoBRS,RGB-BRS,f-BRS-B` measures what it can); "auto" also when the onnx extra is not installed or the
    model is not on the CPU."""
    check_backend_choice(choice, device if choice == "onnx" else "cpu")
    if choice == "torch" or device != "cpu" or not supports_onnx(mode):
        return "torch"
    if choice == "auto" and not onnx_available():
        return "torch"
    return "onnx"


def parts_for_mode(mode: OnnxMode | str) -> tuple[str, ...]:
    """The ONNX parts that accelerate a mode (a registered name, or its fbrs.inference.modes.LearnedMode):
    NoBRS the whole pass, f-BRS the network up to its insertion point and the local part after it.
    ConfigError for a mode that cannot run in ONNX Runtime."""
    if isinstance(mode, str):
        from fbrs.registry import PREDICTORS

        config = PREDICTORS.spec(mode).config
        if not isinstance(config, OnnxMode):  # the SAM family, the classical baselines
            raise ConfigError(f"mode {mode} has no DeepLab network to run in ONNX Runtime: use backend='torch'")
        mode = config
    if not mode.onnx:
        raise unsupported_mode(mode.name)
    if mode.insertion is None:
        return ("full",)
    return (mode.insertion, LOCAL_PART_AFTER[mode.insertion])
