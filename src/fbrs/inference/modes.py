"""The learned DeepLab modes (the paper's six and their guarded variants): what each one does. Their
registry entries are built in fbrs.inference.deeplab_modes (which imports the Predictor; this module is
imported by the Predictor, so it must not).

The refiner kind ("none" | "input" | "feature") is read here only: the Predictor builds its refiner with
`LearnedMode.build_refiner`, and everything else asks the facts (`onnx`, `insertion`, `gradients`,
`oracle`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fbrs.inference.brs.guard import GuardConfig
    from fbrs.inference.brs.objective import BRSConfig
    from fbrs.inference.brs.refiners import Refiner


@dataclass(frozen=True)
class LearnedMode:
    name: str
    refiner: str  # "none" | "input" | "feature"
    target: str | None  # InputBRS target or FeatureBRS insertion point
    clicks_limit: int | None  # default net-clicks limit of the original code
    description: str
    guard: bool = False  # FeatureBRS with fbrs.inference.brs.guard on by default (the "-guarded" variants)

    @property
    def insertion(self) -> str | None:
        """The f-BRS insertion point (fbrs.models.INSERTIONS), None for the other modes."""
        return self.target if self.refiner == "feature" else None

    @property
    def onnx(self) -> bool:
        """The feed-forward part can run in ONNX Runtime: NoBRS and f-BRS. RGB-/DistMap-BRS differentiate
        through the whole network at every L-BFGS step."""
        return self.refiner != "input"

    @property
    def gradients(self) -> bool:
        """Backpropagation-based refinement (BRS) after each click."""
        return self.refiner != "none"

    @property
    def oracle(self) -> bool:
        """Predictor.oracle_refine works (it continues the f-BRS optimisation)."""
        return self.refiner == "feature"

    def build_refiner(
        self, config: BRSConfig, clicks_limit: int | None, with_flip: bool, windowed_gradient: bool,
        guard: GuardConfig | bool | None,
    ) -> Refiner:
        """The refiner of this mode (fbrs.inference.brs.refiners); guard None = the mode's default."""
        from fbrs.inference.brs.guard import resolve_guard
        from fbrs.inference.brs.refiners import FeatureBRS, InputBRS, NoRefinement

        common = {"clicks_limit": clicks_limit, "with_flip": with_flip, "config": config}
        if self.refiner == "none":
            return NoRefinement(**common)
        if self.refiner == "input":
            return InputBRS(self.target, **common)
        return FeatureBRS(
            self.target, windowed_gradient=windowed_gradient, guard=resolve_guard(guard, self.guard), **common
        )


MODES: dict[str, LearnedMode] = {
    spec.name: spec
    for spec in (
        LearnedMode("NoBRS", "none", None, None, "plain feed-forward network"),
        LearnedMode("RGB-BRS", "input", "rgb", 5, "optimise a correction of the input image (original BRS)"),
        LearnedMode("DistMap-BRS", "input", "distance_maps", 5, "optimise a correction of the distance maps"),
        LearnedMode("f-BRS-A", "feature", "after_backbone", 8, "scale/bias after the backbone"),
        LearnedMode("f-BRS-B", "feature", "after_aspp", 8, "scale/bias after ASPP (recommended)"),
        LearnedMode("f-BRS-C", "feature", "after_decoder", 8, "scale/bias after the decoder"),
    )
}

#: The paper's six modes, whose behaviour (and goldens) never change.
PAPER_MODES = tuple(MODES)

# Guarded f-BRS (issue 14, item 5): the same modes with fbrs.inference.brs.guard on.
for _name in ("f-BRS-A", "f-BRS-B", "f-BRS-C"):
    _paper = MODES[_name]
    MODES[f"{_name}-guarded"] = LearnedMode(
        f"{_name}-guarded", "feature", _paper.target, _paper.clicks_limit,
        f"{_paper.description}, guarded: a click never flips much of the mask far from every click", guard=True,
    )
