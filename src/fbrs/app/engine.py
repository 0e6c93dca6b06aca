"""The app's only door into the library: which predictor modes exist and how one is built.

The app never knows how a mode refines a prediction; it asks `PredictionEngine.create(settings)` for an
object with the library's predictor interface (an `fbrs.inference.interactive.InteractivePredictor`, or any
object with `set_image`, `add_click(y, x, positive) -> probs`, `undo`, `reset`, which the session wraps in
the same undo / redo history) and calls it with (y, x).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from fbrs.app.errors import ModeUnavailableError
from fbrs.app.latency import LatencyLog

#: The app's default predictor mode (README "Which mode is the default"); where it cannot run (the SAM
#: files or ONNX Runtime missing) the app falls back to fbrs.inference.default_mode.FALLBACK_MODE and says so.
DEFAULT_MODE = "SAM-f-BRS-tokens-guarded-zoom"


APP_MAX_IMAGE_SIDE = 1024


@dataclass(frozen=True)
class PredictorSettings:
    """What a predictor is built with. prob_threshold in (0, 1): mask = probabilities > threshold.
    flip: average with the mirrored image (learned modes). Off in the app, unlike `fbrs evaluate`: it doubles
    the time of a click for about one click fewer to NoC@90 (docs/performance.md), and a click should feel
    instant."""

    mode: str = DEFAULT_MODE
    zoom_in: bool = True
    prob_threshold: float = 0.49
    flip: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: PredictorSettings | None = None) -> PredictorSettings:
        known = {key: values[key] for key in ("mode", "zoom_in", "prob_threshold", "flip") if key in values}
        settings = replace(base or cls(), **known)
        if not 0.0 < float(settings.prob_threshold) < 1.0:
            raise ValueError(f"prob_threshold must lie in (0, 1), got {settings.prob_threshold}")
        return replace(
            settings,
            zoom_in=bool(settings.zoom_in),
            prob_threshold=float(settings.prob_threshold),
            flip=bool(settings.flip),
        )


PredictorFactory = Callable[[PredictorSettings], Any]


def _registered_modes() -> list[tuple[str, bool]]:
    """(name, needs_model) of every registered predictor mode, learned modes first."""
    from fbrs.registry import PREDICTORS

    # Registration order puts the paper's six first, in their order, then the other learned modes (e.g.
    # "f-BRS-B-guarded"); the stable sort keeps it and moves the modes without a model (SAM family,
    # baselines) after them.
    modes = [(spec.name, spec.needs_model) for spec in PREDICTORS.specs()]
    modes.sort(key=lambda item: not item[1])
    return modes


_NEEDS_MODEL = "needs a model (start the app with --model)"


def _unavailable_reason(name: str) -> str | None:
    """Why the registered mode `name` cannot be built here (a missing optional dependency), else None."""
    from fbrs.registry import PREDICTORS

    return PREDICTORS.spec(name).unavailable_reason if name in PREDICTORS else None


class PredictionEngine:
    """Builds predictors for the app and serialises their use of the shared model.

    model: an InteractiveModel or None (then only modes registered with needs_model=False work).
    factory: optional replacement of the library's `create_predictor` (settings -> predictor), used
    to run the app against something other than the registered modes.
    backend: "torch", "onnx" or "auto" for the learned modes (fbrs.onnx.policy.backend_for_mode).
    default_mode: the mode of new sessions (None: DEFAULT_MODE); where it cannot run, the fall-back mode
    (`default_note` says why).
    """

    def __init__(self, model: Any = None, factory: PredictorFactory | None = None,
                 modes: list[tuple[str, bool]] | None = None, model_name: str | None = None,
                 backend: str = "torch", default_mode: str | None = None) -> None:
        self.model = model
        self.backend = backend
        self.model_name = model_name or (None if model is None else type(model).__name__)
        self._factory = factory
        self._modes = modes if modes is not None else _registered_modes()
        # Sessions share one model. Their predictions take turns: on a CPU box parallel forward passes
        # only fight over the cores, and predictors (baselines included) need not be thread-safe.
        self.model_lock = threading.Lock()
        self.latency = LatencyLog()  # every session's prepare / click times (GET /api/info reports them)
        self._preferred_default = default_mode or DEFAULT_MODE
        self._default: tuple[str, str | None] | None = None

    def modes(self) -> list[dict[str, Any]]:
        """Every mode as {"name", "needs_model", "available", "unavailable_reason"} (the reason None when
        available: "needs a model" or a missing optional dependency)."""
        entries = []
        for name, needs_model in self._modes:
            reason = _unavailable_reason(name)
            if reason is None and needs_model and self.model is None:
                reason = _NEEDS_MODEL
            entries.append(
                {"name": name, "needs_model": needs_model, "available": reason is None, "unavailable_reason": reason}
            )
        return entries

    def default_settings(self) -> PredictorSettings:
        return PredictorSettings(mode=self.default_mode)

    @property
    def default_mode(self) -> str:
        """The mode of new sessions: the preferred default if it can run here, else the fall-back mode,
        else the first available one (decided once: files do not come and go while the app runs)."""
        if self._default is None:
            self._default = self._resolve_default()
        return self._default[0]

    @property
    def default_note(self) -> str | None:
        """Why the preferred default mode is not the default (None: it is)."""
        self.default_mode  # noqa: B018 - resolves it
        return self._default[1]

    def _resolve_default(self) -> tuple[str, str | None]:
        from fbrs.inference.default_mode import FALLBACK_MODE, unavailable_reason

        available = [mode["name"] for mode in self.modes() if mode["available"]]
        preferred = self._preferred_default
        # A test's own factory builds its modes itself: nothing on disk to check.
        reason = None if self._factory is not None or preferred not in available else unavailable_reason(preferred)
        if preferred in available and reason is None:
            return preferred, None
        for candidate in (FALLBACK_MODE, *available):
            if candidate in available and (self._factory is not None or unavailable_reason(candidate) is None):
                note = None if reason is None else f"default mode {preferred} unavailable: {reason}; using {candidate}"
                return candidate, note
        return preferred, None  # nothing runs: check_mode explains it at the first request

    def check_mode(self, mode: str) -> None:
        for entry in self.modes():
            if entry["name"] == mode:
                if entry["unavailable_reason"] == _NEEDS_MODEL:
                    raise ModeUnavailableError(f"predictor mode {mode!r} needs a model; start the app with --model")
                if not entry["available"]:
                    raise ModeUnavailableError(f"predictor mode {mode!r} is unavailable: {entry['unavailable_reason']}")
                return
        names = ", ".join(entry["name"] for entry in self.modes())
        raise ModeUnavailableError(f"unknown predictor mode {mode!r}; available: {names}")

    def create(self, settings: PredictorSettings) -> Any:
        """A fresh predictor for `settings` (no image set yet)."""
        self.check_mode(settings.mode)
        if self._factory is not None:
            return self._factory(settings)
        from fbrs.inference import create_predictor
        from fbrs.onnx.policy import backend_for_mode

        needs_model = dict(self._modes).get(settings.mode, True)
        options: dict[str, Any] = {}
        if needs_model:
            options = {
                "backend": backend_for_mode(self.backend, settings.mode),
                "with_flip": settings.flip,
                # Photos of many megapixels: the whole-image pass (first click) runs on a 1024 px copy, which
                # bounds time and memory; Zoom-In crops later clicks at full resolution anyway.
                "max_image_side": APP_MAX_IMAGE_SIDE,
                # Latency over bit-exactness to the original's trajectories (see Predictor's docstring).
                "windowed_gradient": True,
            }
        return create_predictor(
            settings.mode,
            model=self.model if needs_model else None,
            zoom_in=settings.zoom_in,
            prob_threshold=settings.prob_threshold,
            **options,
        )
