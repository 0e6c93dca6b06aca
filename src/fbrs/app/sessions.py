"""Annotation sessions: one image, its finished objects, and a warm predictor for the current object.

A session takes the library's `Click` (y, x): the HTTP layer (fbrs.app.validation) parses the API's
(x, y) JSON into it once. The current object's clicks, maps and undo / redo are its predictor's one history
(fbrs.inference.interactive); a predictor from an engine's own factory without it is wrapped in
`_ReplayedPredictor`. Every public method takes the session's lock, so requests for one session run in
order; the server calls them from worker threads.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from fbrs.app.engine import PredictionEngine, PredictorSettings
from fbrs.app.errors import AnnotationConflictError, ModeUnavailableError
from fbrs.app.export import ImageAnnotation, SavedObject, color_hex, instance_id_map
from fbrs.app.labels import LabelSet
from fbrs.app.validation import MAX_CLICKS_PER_OBJECT, click_from_json, click_to_json
from fbrs.errors import ConfigError
from fbrs.images import as_rgb_uint8
from fbrs.inference.clicks import Click, validate_click
from fbrs.inference.interactive import InteractivePredictor

__all__ = ["MAX_CLICKS_PER_OBJECT", "AnnotationSession"]


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


class _ReplayedPredictor(InteractivePredictor):
    """The one history around a predictor that has only set_image / add_click(y, x, positive) -> (H, W)
    map / undo / reset (a PredictionEngine factory's own): its states keep each click's map, and the wrapped
    predictor follows by its own undo (one click back), one add_click (redo) or, for any other jump, a
    reset and a replay of the clicks."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self._followed: list[Click] = []  # the clicks the wrapped predictor holds now

    def _load_image(self, image: np.ndarray) -> None:
        self.inner.set_image(image)
        self._followed = []

    def _compute(self) -> tuple[np.ndarray, None]:
        self._follow(self._clicks[:-1])
        click = self._clicks[-1]
        # A copy: the history keeps it read-only, and the wrapped predictor may reuse its own array.
        probabilities = np.array(self.inner.add_click(click.y, click.x, click.is_positive), dtype=np.float32)
        self._followed.append(click)
        if probabilities.shape != self.image_size:
            raise RuntimeError(
                f"predictor returned probabilities of shape {probabilities.shape}, expected {self.image_size}"
            )
        return probabilities, None

    def _restore_model_state(self, state: Any) -> None:
        self._follow(list(state.clicks))

    def _reset_model(self) -> None:
        self.inner.reset()
        self._followed = []

    def _follow(self, clicks: list[Click]) -> None:
        followed = self._followed
        if clicks == followed:
            return
        if clicks == followed[:-1]:
            self.inner.undo()
            followed.pop()
            return
        if clicks[:-1] != followed:
            self.inner.reset()
            followed.clear()
        for click in clicks[len(followed):]:
            self.inner.add_click(click.y, click.x, click.is_positive)
            followed.append(click)


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
        self.prepare_ms: float | None = None  # the last predictor build + set_image (SAM: the encoder)
        self.version = 0  # bumps on every change; the UI uses it to refetch the overlay
        self.closed = False  # set (under the lock) once the store has evicted the session: callers retry
        self.pins = 0  # requests using the session now (SessionStore.checkout); a pinned session stays live
        self._memory_estimate: tuple[tuple[int, int], int] | None = None
        self._predictor: InteractivePredictor | None = None  # holds the current object's clicks and history
        self._predictor_settings: PredictorSettings | None = None
        if saved is not None:
            self._restore(saved)

    # ------------------------------------------------------------------------------------ properties

    @property
    def clicks(self) -> list[Click]:
        """The current object's clicks, oldest first."""
        return [] if self._predictor is None else self._predictor.clicks

    @property
    def probabilities(self) -> np.ndarray | None:
        """(H, W) float32 probabilities of the current object (read-only), None before its first click."""
        return None if self._predictor is None else self._predictor.probabilities

    @property
    def can_undo(self) -> bool:
        return self._predictor is not None and self._predictor.can_undo

    @property
    def can_redo(self) -> bool:
        return self._predictor is not None and self._predictor.can_redo

    def memory_bytes(self) -> int:
        """What the session holds in memory, roughly: the image (twice once a predictor has a copy), the
        upload's bytes, the finished masks, the current map and the predictor states kept for undo / redo
        (their arrays and tensors, each buffer counted once: mostly the f-BRS feature cache of each click's
        crop, ~10 MB per click whatever the image size). Cached per version.

        Lock-free on purpose: the store asks while holding its own lock, and must not wait for a session
        that is busy predicting. States are never changed in place, so a concurrent click makes the
        estimate one click stale, nothing worse."""
        predictor = self._predictor
        key = (self.version, id(predictor))
        cached = self._memory_estimate
        if cached is not None and cached[0] == key:
            return cached[1]
        seen: set[int] = set()
        total = self.image.nbytes * (2 if predictor is not None else 1) + len(self.source or b"")
        total += sum(_buffer_bytes(item.mask, seen) for item in list(self.objects))
        if predictor is not None:
            total += _buffer_bytes(predictor.probabilities, seen)
            for state in predictor.kept_states():
                # `previous` is walked by kept_states itself, not by _buffer_bytes (whose depth is bounded).
                total += sum(_buffer_bytes(getattr(state, field.name), seen)
                             for field in dataclasses.fields(state) if field.name != "previous")
        self._memory_estimate = (key, total)
        return total

    def next_object_id(self) -> int:
        return max((item.object_id for item in self.objects), default=0) + 1

    def current_mask(self) -> np.ndarray:
        """(H, W) bool mask of the current object (probabilities > threshold); empty before a click."""
        probabilities = self.probabilities
        if probabilities is None:
            return np.zeros((self.height, self.width), dtype=bool)
        return probabilities > self.settings.prob_threshold

    def label_map(self, include_current: bool = False) -> np.ndarray:
        """(H, W) uint8/uint16 instance ids of the finished objects (and the current one, on top)."""
        objects = [(item.object_id, item.mask) for item in self.objects]
        if include_current and self.clicks:
            objects.append((self.next_object_id(), self.current_mask()))
        return instance_id_map((self.height, self.width), objects)

    def object_mask(self, object_id: int) -> np.ndarray:
        for item in self.objects:
            if item.object_id == object_id:
                return item.mask
        raise AnnotationConflictError(f"session has no object with id {object_id}")

    # ---------------------------------------------------------------------------------- predictions

    def _ensure_predictor(self) -> InteractivePredictor:
        if not self.prepared:
            started = time.perf_counter()
            predictor = self.engine.create(self.settings)
            if not isinstance(predictor, InteractivePredictor):
                predictor = _ReplayedPredictor(predictor)
            predictor.set_image(self.image)
            self._predictor, self._predictor_settings = predictor, self.settings
            self.prepare_ms = (time.perf_counter() - started) * 1000.0
            self.engine.latency.record("prepare", self.settings.mode, self.prepare_ms)
        return self._predictor

    @property
    def prepared(self) -> bool:
        """Whether the predictor for the current settings has the image (the next click does not wait for
        an image encoder)."""
        return self._predictor is not None and self._predictor_settings == self.settings

    def prepare(self) -> None:
        """Build the predictor and set the image now (the SAM family's encoder: seconds), so that the first
        click does not wait for it; the UI shows "preparing image" meanwhile. No-op when prepared."""
        with self.lock:
            self._ensure_predictor()

    def _predict_click(self, click: Click) -> np.ndarray:
        predictor = self._ensure_predictor()
        with self.engine.model_lock:
            return predictor.add_click(click.y, click.x, click.is_positive)

    def _replay(self, clicks: list[Click]) -> None:
        """Rebuild the current object from scratch with the current settings (the redo stack is dropped)."""
        self._ensure_predictor().reset()
        for click in clicks:
            self._predict_click(click)

    def _timed(self, action: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = action()
        self.last_latency_ms = (time.perf_counter() - started) * 1000.0
        return result

    def _changed(self) -> None:
        self.version += 1

    # ------------------------------------------------------------------------------------- actions

    def add_click(self, click: Click, label: str | None = None) -> np.ndarray:
        """Add a click (the library's Click: y = row, x = column) and label the current object `label`, one
        of the project's. Returns the current object's (H, W) float32 probabilities (read-only)."""
        with self.lock:
            if label is not None:
                label = self.labels.require(label)
            click = validate_click(click, (self.height, self.width))
            if len(self.clicks) >= MAX_CLICKS_PER_OBJECT:
                raise AnnotationConflictError(
                    f"an object takes at most {MAX_CLICKS_PER_OBJECT} clicks; finish it or reset it"
                )
            self._ensure_predictor()  # timed apart (prepare_ms): latency_ms is the click's own time
            probabilities = self._timed(lambda: self._predict_click(click))
            self.engine.latency.record("click", self.settings.mode, self.last_latency_ms)
            if label is not None:
                self.label = label
            self._changed()
            return probabilities

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
            if not self.can_undo:
                raise AnnotationConflictError("nothing to undo: the current object has no clicks")
            self._timed(lambda: self._in_model_lock(self._predictor.undo))
            self._changed()

    def redo(self) -> None:
        """Re-apply the last undone click."""
        with self.lock:
            if not self.can_redo:
                raise AnnotationConflictError("nothing to redo")
            self._timed(lambda: self._in_model_lock(self._predictor.redo))
            self._changed()

    def reset_object(self) -> None:
        """Drop every click of the current object (finished objects stay)."""
        with self.lock:
            if self._predictor is not None:
                self._predictor.reset()
            self._changed()

    def _in_model_lock(self, action: Callable[[], Any]) -> Any:
        with self.engine.model_lock:
            return action()

    def finish_object(self) -> int:
        """Store the current mask as a finished object and start the next one; returns its id."""
        with self.lock:
            if not self.clicks:
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
                SavedObject(object_id, mask, [click_to_json(click) for click in self.clicks], self.settings.to_dict(),
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
            clicks = self.clicks
            self.settings = settings
            if rebuild and clicks:
                self._timed(lambda: self._replay(clicks))
            elif rebuild:
                self._predictor = None  # built for the next click; its redo stack belonged to the old settings
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
                current_clicks=[click_to_json(click) for click in self.clicks],
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
            clicks = [click_from_json(values, f"saved click {index}")
                      for index, values in enumerate(saved.current_clicks)]
            self._timed(lambda: self._replay(clicks))
        self.done = saved.done

    # ------------------------------------------------------------------------------------ reports

    def overlay_rgba(self) -> np.ndarray:
        """(H, W, 4) uint8: each object's colour with alpha 255 where it is visible, current on top."""
        with self.lock:
            labels = self.label_map(include_current=True)
            colors = {item.object_id: self.color_of(item.object_id, item.label) for item in self.objects}
            if self.clicks:
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
                "clicks": [click_to_json(click) for click in self.clicks],
                "can_undo": self.can_undo,
                "can_redo": self.can_redo,
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
                "prepared": self.prepared,
                "prepare_ms": None if self.prepare_ms is None else round(self.prepare_ms, 1),
            }


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)
