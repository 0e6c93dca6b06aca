"""The six learned predictor modes, registered by name (the paper's names)."""

from __future__ import annotations

from dataclasses import dataclass

from fbrs.registry import PREDICTORS


@dataclass(frozen=True)
class ModeSpec:
    name: str
    refiner: str  # "none" | "input" | "feature"
    target: str | None  # InputBRS target or FeatureBRS insertion point
    clicks_limit: int | None  # default net-clicks limit of the original code
    description: str
    guard: bool = False  # FeatureBRS with fbrs.inference.brs.guard on by default (the "-guarded" variants)


MODES: dict[str, ModeSpec] = {
    spec.name: spec
    for spec in (
        ModeSpec("NoBRS", "none", None, None, "plain feed-forward network"),
        ModeSpec("RGB-BRS", "input", "rgb", 5, "optimise a correction of the input image (original BRS)"),
        ModeSpec("DistMap-BRS", "input", "distance_maps", 5, "optimise a correction of the distance maps"),
        ModeSpec("f-BRS-A", "feature", "after_backbone", 8, "scale/bias after the backbone"),
        ModeSpec("f-BRS-B", "feature", "after_aspp", 8, "scale/bias after ASPP (recommended)"),
        ModeSpec("f-BRS-C", "feature", "after_decoder", 8, "scale/bias after the decoder"),
    )
}

#: The paper's six modes, whose behaviour (and goldens) never change.
PAPER_MODES = tuple(MODES)

# Guarded f-BRS (issue 14, item 5): the same modes with fbrs.inference.brs.guard on.
for _name in ("f-BRS-A", "f-BRS-B", "f-BRS-C"):
    _paper = MODES[_name]
    MODES[f"{_name}-guarded"] = ModeSpec(
        f"{_name}-guarded", "feature", _paper.target, _paper.clicks_limit,
        f"{_paper.description}, guarded: a click never flips much of the mask far from every click", guard=True,
    )


#: Where the feed-forward part runs: "torch", "onnx" (ONNX Runtime, `fbrs.inference.onnx_backend`), or
#: "auto" (the CLIs' choice: ONNX Runtime where it is installed and the mode supports it).
BACKEND_CHOICES = ("auto", "torch", "onnx")


def supports_onnx(mode: str) -> bool:
    """Whether `mode` can run its feed-forward part in ONNX Runtime: NoBRS and f-BRS-A/B/C. RGB-/DistMap-BRS
    differentiate through the whole network, and the classical baselines have no network."""
    return mode in MODES and MODES[mode].refiner != "input"


def onnx_available() -> bool:
    """onnxruntime and the exporter (onnx, onnxscript) are installed: pip install 'fbrs[onnx]'."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "onnxscript"))


def check_backend_choice(choice: str, device: str = "cpu") -> None:
    """ConfigError unless `choice` is one of BACKEND_CHOICES and fits `device` (ONNX Runtime runs on the CPU)."""
    from fbrs.errors import ConfigError

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


def _register(spec: ModeSpec) -> None:
    def factory(model=None, **options):
        from fbrs.inference.predictor import Predictor

        if model is None:
            from fbrs.models import load_default_model

            model = load_default_model()
        return Predictor(model, mode=spec.name, **options)

    factory.__doc__ = spec.description
    PREDICTORS.register(spec.name, needs_model=True, description=spec.description)(factory)


for _spec in MODES.values():
    _register(_spec)
