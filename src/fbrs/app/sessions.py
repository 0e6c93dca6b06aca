"""Annotation sessions: one image, its finished objects, and a warm predictor for the current object.

A session takes clicks in (x, y) image pixel coordinates (as the HTTP API and the UI do) and converts
them to the library's (y, x) here, in `_predict_click`, and nowhere else. Every public method takes the
session's lock, so requests for one session run in order; the server calls them from worker threads.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fbrs.app.engine import PredictionEngine, PredictorSettings
from fbrs.app.errors import AnnotationConflictError, ModeUnavailableError
from fbrs.app.export import ImageAnnotation, SavedObject, color_hex, instance_id_map
from fbrs.app.labels import LabelSet
from fbrs.app.validation import MAX_CLICKS_PER_OBJECT, parse_bool, parse_coordinate
from fbrs.errors import ConfigError, InvalidClickError
from fbrs.images import as_rgb_uint8

__all__ = ["MAX_CLICKS_PER_OBJECT", "AnnotationSession", "AppClick"]


@dataclass(frozen=True)
class AppClick:
    """A click as the app sees it: x = column, y = row, full-resolution image pixels."""

    x: float
    y: float
    positive: bool

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "positive": self.positive}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AppClick:
        """{"x", "y", "positive"} with finite numbers and a real boolean; else InvalidClickError."""
        if not isinstance(values, dict) or not {"x", "y", "positive"} <= values.keys():
            raise InvalidClickError(f"a click needs numeric 'x', 'y' and boolean 'positive', got {values!r}")
        return cls(parse_coordinate(values["x"], "x"), parse_coordinate(values["y"], "y"),
                   parse_bool(values["positive"], "positive"))


def _buffer_bytes(value: Any, seen: set[int], depth: int = 0) -> int:
    """Bytes of the NumPy arrays and torch tensors reachable from `value` (containers and plain objects,
    a few levels deep); a buffer already in `seen` (shared between states) counts once."""
    if value is None or depth > 8 or isinstance(value, (bool, int, float, str, bytes)):
        return 0
    if isinstance(value, np.ndarray):
        owner = value.base if isinstance(value.base, np.ndarray) else value
        if id(owner) in seen:
            return 0
        seen.add(id(owner))
        return int(owner.nbytes)
    if type(value).__module__.startswith("torch"):
        storage = getattr(value, "untyped_storage", None)
        if storage is None:
            return 0  # a module or another torch object: shared, not the session's
        key = value.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return int(value.untyped_storage().nbytes())
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, dict):
        return sum(_buffer_bytes(item, seen, depth + 1) for item in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return sum(_buffer_bytes(item, seen, depth + 1) for item in value)
    fields = getattr(value, "__dict__", None)
    if isinstance(fields, dict):
        return sum(_buffer_bytes(item, seen, depth + 1) for item in fields.values())
    return 0


@dataclass
class _Step:
    """What one click left behind, so undo and redo restore it without recomputing.

    `probabilities` is kept only while the step is the current one when the predictor can give it back
    from `predictor_state` (the library's predictors store it packed: a 12-megapixel map would otherwise
    cost 48 MB per click); otherwise (baselines without state) it is always kept."""

    click: AppClick
    probabilities: np.ndarray | None
    predictor_state: Any


class AnnotationSession:
    """One image being annotated. `image`: (H, W, 3) uint8 RGB; `image_name`: folder file name or None."""

    def __init__(
        self,
        image: np.ndarray,
        engine: PredictionEngine,
        settings: PredictorSettings | None = None,
        image_name: str | None = None,
        saved: ImageAnnotation | None = None,
        session_id: str | None = None,
        source: bytes | None = None,
        labels: LabelSet | None = None,
    ) -> None:
        self.session_id = session_id or uuid.uuid4().hex
        self.source = source  # an uploaded image's file bytes: what an evicted session is rebuilt from
        self.image = as_rgb_uint8(image)
        self.height, self.width = self.image.shape[:2]
        self.image_name = image_name
        self.engine = engine
        self.settings = settings or engine.default_settings()
        self.labels = labels if labels is not None else LabelSet()
        self.label = self.labels.default  # the current object's label; kept through undo / redo / reset
        self.lock = threading.RLock()
        self.objects: list[SavedObject] = []
        self.done = False
        self.last_latency_ms: float | None = None
        self.version = 0  # bumps on every change; the UI uses it to refetch the overlay
        self.closed = False  # set (under the lock) once the store has evicted the session: callers retry
        self.pins = 0  # requests using the session now (SessionStore.checkout); a pinned session stays live
        self._memory_estimate: tuple[tuple[int, int], int] | None = None
        self._steps: list[_Step] = []
        self._redo: list[_Step] = []
        self._predictor: Any = None
        self._predictor_settings: PredictorSettings | None = None
        if saved is not None:
            self._restore(saved)

    # ------------------------------------------------------------------------------------ properties

    @property
    def clicks(self) -> list[AppClick]:
        return [step.click for step in self._steps]

    @property
    def probabilities(self) -> np.ndarray | None:
        """(H, W) float32 probabilities of the current object, None before its first click."""
        return self._steps[-1].probabilities if self._steps else None

    def _push_step(self, step: _Step) -> None:
        """Make `step` the current one; the previous step's map is dropped when its state restores it."""
        if self._steps:
            self._drop_probabilities(self._steps[-1])
        self._steps.append(step)

    def _drop_probabilities(self, step: _Step) -> None:
        if step.predictor_state is not None and hasattr(self._predictor, "probabilities"):
            step.probabilities = None

    def _restore_step(self, step: _Step) -> None:
        """Put the predictor back into `step`'s state and make sure the step has its map (model lock held)."""
        self._predictor.set_state(step.predictor_state)
        if step.probabilities is None:
            step.probabilities = np.asarray(self._predictor.probabilities, dtype=np.float32)

    def memory_bytes(self) -> int:
        """What the session holds in memory, roughly: the image (twice once a predictor has a copy), the
        upload's bytes, the finished masks, the kept probability maps and the predictor states kept for
        undo / redo (their arrays and tensors, each buffer counted once: mostly the f-BRS feature cache of
        each click's crop, ~10 MB per click whatever the image size). Cached per version.

        Lock-free on purpose: the store asks while holding its own lock, and must not wait for a session
        that is busy predicting. The lists are copied before they are walked and states are never changed
        in place, so a concurrent click makes the estimate one click stale, nothing worse."""
        key = (self.version, id(self._predictor))
        cached = self._memory_estimate
        if cached is not None and cached[0] == key:
            return cached[1]
        seen: set[int] = set()
        steps = list(self._steps) + list(self._redo)
        total = self.image.nbytes * (2 if self._predictor is not None else 1) + len(self.source or b"")
        total += sum(_buffer_bytes(item.mask, seen) for item in list(self.objects))
        total += sum(_buffer_bytes(step.probabilities, seen) + _buffer_bytes(step.predictor_state, seen)
                     for step in steps)
        self._memory_estimate = (key, total)
        return total

    def next_object_id(self) -> int:
        return max((item.object_id for item in self.objects), default=0) + 1

    def current_mask(self) -> np.ndarray:
        """(H, W) bool mask of the current object (probabilities > threshold); empty before a click."""
        if not self._steps:
            return np.zeros((self.height, self.width), dtype=bool)
        return self._steps[-1].probabilities > self.settings.prob_threshold

    def label_map(self, include_current: bool = False) -> np.ndarray:
        """(H, W) uint8/uint16 instance ids of the finished objects (and the current one, on top)."""
        objects = [(item.object_id, item.mask) for item in self.objects]
        if include_current and self._steps:
            objects.append((self.next_object_id(), self.current_mask()))
        return instance_id_map((self.height, self.width), objects)

    def object_mask(self, object_id: int) -> np.ndarray:
        for item in self.objects:
            if item.object_id == object_id:
                return item.mask
        raise AnnotationConflictError(f"session has no object with id {object_id}")

    # ---------------------------------------------------------------------------------- predictions

    def _ensure_predictor(self) -> Any:
        if self._predictor is None or self._predictor_settings != self.settings:
            predictor = self.engine.create(self.settings)
            predictor.set_image(self.image)
            self._predictor, self._predictor_settings = predictor, self.settings
        return self._predictor

    def _predict_click(self, click: AppClick) -> _Step:
        predictor = self._ensure_predictor()
        with self.engine.model_lock:
            # The one place where the app's (x, y) becomes the library's (y, x).
            probabilities = predictor.add_click(click.y, click.x, click.positive)
            state = predictor.get_state() if hasattr(predictor, "get_state") else None
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if probabilities.shape != (self.height, self.width):
            raise RuntimeError(
                f"predictor returned probabilities of shape {probabilities.shape}, "
                f"expected {(self.height, self.width)}"
            )
        return _Step(click, probabilities, state)

    def _validate_click(self, click: AppClick) -> None:
        if not (math.isfinite(click.x) and math.isfinite(click.y)):
            raise InvalidClickError(f"click (x={click.x}, y={click.y}) has non-finite coordinates")
        if not (0 <= click.x < self.width and 0 <= click.y < self.height):
            raise InvalidClickError(
                f"click (x={click.x:g}, y={click.y:g}) is outside the image "
                f"(width {self.width}, height {self.height}; x in [0, {self.width}), y in [0, {self.height}))"
            )
        if len(self._steps) >= MAX_CLICKS_PER_OBJECT:
            raise AnnotationConflictError(
                f"an object takes at most {MAX_CLICKS_PER_OBJECT} clicks; finish it or reset it"
            )

    def _replay(self, clicks: list[AppClick]) -> None:
        """Rebuild the current object from scratch with the current settings."""
        self._steps, self._redo = [], []
        if self._predictor is not None and self._predictor_settings == self.settings:
            self._predictor.reset()
        for click in clicks:
            self._push_step(self._predict_click(click))

    def _timed(self, action: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = action()
        self.last_latency_ms = (time.perf_counter() - started) * 1000.0
        return result

    def _changed(self) -> None:
        self.version += 1

    # ------------------------------------------------------------------------------------- actions

    def add_click(self, x: float, y: float, positive: bool, label: str | None = None) -> np.ndarray:
        """Add a click at column x, row y (and label the current object `label`, one of the project's).
        Returns the current object's (H, W) float32 probabilities."""
        with self.lock:
            click = AppClick(float(x), float(y), bool(positive))
            if label is not None:
                label = self.labels.require(label)
            self._validate_click(click)
            step = self._timed(lambda: self._predict_click(click))
            self._push_step(step)
            self._redo.clear()
            if label is not None:
                self.label = label
            self._changed()
            return step.probabilities

    def set_label(self, label: str) -> None:
        """Label the current object (and the next ones, until changed) with one of the project's labels."""
        with self.lock:
            self.label = self.labels.require(label)
            self._changed()

    def set_object_label(self, object_id: int, label: str) -> None:
        """Change a finished object's label."""
        with self.lock:
            label = self.labels.require(label)
            self.object_mask(object_id)  # raises for an unknown id
            self.objects = [SavedObject(item.object_id, item.mask, item.clicks, item.settings, label)
                            if item.object_id == object_id else item for item in self.objects]
            self.done = False
            self._changed()

    def color_of(self, object_id: int, label: str) -> str:
        """Display colour #rrggbb: the label's, else (the default label "object") the object id's."""
        return self.labels.color_of(label) or color_hex(object_id)

    def undo(self) -> None:
        """Remove the current object's last click (exactly back to the state before it)."""
        with self.lock:
            if not self._steps:
                raise AnnotationConflictError("nothing to undo: the current object has no clicks")
            started = time.perf_counter()
            undone = self._steps.pop()
            self._drop_probabilities(undone)
            self._redo.append(undone)
            if self._predictor is not None:
                with self.engine.model_lock:
                    if self._steps and self._steps[-1].predictor_state is not None:
                        self._restore_step(self._steps[-1])
                    elif self._steps:
                        self._predictor.undo()
                    else:
                        self._predictor.reset()
            self.last_latency_ms = (time.perf_counter() - started) * 1000.0
            self._changed()

    def redo(self) -> None:
        """Re-apply the last undone click."""
        with self.lock:
            if not self._redo:
                raise AnnotationConflictError("nothing to redo")
            step = self._redo.pop()
            if step.predictor_state is not None and self._predictor is not None:
                started = time.perf_counter()
                with self.engine.model_lock:
                    self._restore_step(step)
                self.last_latency_ms = (time.perf_counter() - started) * 1000.0
            else:
                step = self._timed(lambda: self._predict_click(step.click))
            self._push_step(step)
            self._changed()

    def reset_object(self) -> None:
        """Drop every click of the current object (finished objects stay)."""
        with self.lock:
            self._steps, self._redo = [], []
            if self._predictor is not None:
                self._predictor.reset()
            self._changed()

    def finish_object(self) -> int:
        """Store the current mask as a finished object and start the next one; returns its id."""
        with self.lock:
            if not self._steps:
                raise AnnotationConflictError("nothing to finish: the current object has no clicks")
            mask = self.current_mask()
            if not mask.any():
                raise AnnotationConflictError(
                    f"the current object's mask is empty at threshold {self.settings.prob_threshold}; "
                    "add a positive click or lower the threshold"
                )
            object_id = self.next_object_id()
            self.done = False  # the saved files lack this object until the next save
            self.objects.append(
                SavedObject(object_id, mask, [click.to_dict() for click in self.clicks], self.settings.to_dict(),
                            self.label)
            )
            self.reset_object()
            return object_id

    def delete_object(self, object_id: int) -> None:
        with self.lock:
            self.object_mask(object_id)  # raises for an unknown id
            self.objects = [item for item in self.objects if item.object_id != object_id]
            self.done = False
            self._changed()

    def update_settings(self, values: dict[str, Any]) -> None:
        """Change mode / zoom_in / prob_threshold / flip; the current object's clicks are replayed."""
        with self.lock:
            try:
                settings = PredictorSettings.from_dict(values, base=self.settings)
            except (TypeError, ValueError) as error:
                raise ConfigError(str(error)) from None
            self.engine.check_mode(settings.mode)
            # The threshold also steers BRS (its early exits), so any change replays the clicks: the
            # object then is exactly "these clicks with these settings", as the click log records it.
            rebuild = settings != self.settings
            self.settings = settings
            if rebuild and self._steps:
                clicks = self.clicks
                self._timed(lambda: self._replay(clicks))
            self._changed()

    def mark_done(self, done: bool = True) -> None:
        with self.lock:
            self.done = done

    # ------------------------------------------------------------------------------- persistence

    def to_annotation(self) -> ImageAnnotation:
        with self.lock:
            return ImageAnnotation(
                image_name=self.image_name or f"{self.session_id}.png",
                width=self.width,
                height=self.height,
                objects=list(self.objects),
                current_clicks=[click.to_dict() for click in self.clicks],
                current_settings=self.settings.to_dict(),
                done=self.done,
                current_label=self.label,
            )

    def _restore(self, saved: ImageAnnotation) -> None:
        if (saved.height, saved.width) != (self.height, self.width):
            raise AnnotationConflictError(
                f"saved annotation of {saved.image_name} is {saved.width}x{saved.height} "
                f"but the image is {self.width}x{self.height}"
            )
        self.objects = list(saved.objects)
        if saved.current_label in self.labels:
            self.label = saved.current_label  # else the list changed since: the project's first label
        if saved.current_settings:
            settings = PredictorSettings.from_dict(saved.current_settings, base=self.settings)
            try:
                self.engine.check_mode(settings.mode)
                self.settings = settings
            except ModeUnavailableError:
                pass  # saved with a mode this app cannot run (e.g. no model now): resume with the default
        if saved.current_clicks:
            clicks = [AppClick.from_dict(values) for values in saved.current_clicks]
            self._timed(lambda: self._replay(clicks))
        self.done = saved.done

    # ------------------------------------------------------------------------------------ reports

    def overlay_rgba(self) -> np.ndarray:
        """(H, W, 4) uint8: each object's colour with alpha 255 where it is visible, current on top."""
        with self.lock:
            labels = self.label_map(include_current=True)
            colors = {item.object_id: self.color_of(item.object_id, item.label) for item in self.objects}
            if self._steps:
                colors[self.next_object_id()] = self.color_of(self.next_object_id(), self.label)
        # An object may have no visible pixel (empty mask, or covered by later ones): size by ids too.
        palette = np.zeros((max([int(labels.max(initial=0)), *colors]) + 1, 4), dtype=np.uint8)
        for object_id, color in colors.items():
            palette[object_id] = (*_rgb(color), 255)
        return palette[labels]

    def state(self) -> dict[str, Any]:
        """JSON-ready description of the session, clicks in (x, y)."""
        with self.lock:
            current_mask = self.current_mask()
            return {
                "session_id": self.session_id,
                "image_name": self.image_name,
                "width": self.width,
                "height": self.height,
                "version": self.version,
                "settings": self.settings.to_dict(),
                "clicks": [click.to_dict() for click in self.clicks],
                "can_undo": bool(self._steps),
                "can_redo": bool(self._redo),
                "current_object": {
                    "id": self.next_object_id(),
                    "color": self.color_of(self.next_object_id(), self.label),
                    "label": self.label,
                    "area": int(current_mask.sum()),
                },
                "objects": [
                    {
                        "id": item.object_id,
                        "color": self.color_of(item.object_id, item.label),
                        "label": item.label,
                        "area": int(item.mask.sum()),
                        "clicks": len(item.clicks),
                    }
                    for item in self.objects
                ],
                "done": self.done,
                "latency_ms": None if self.last_latency_ms is None else round(self.last_latency_ms, 1),
            }


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)
