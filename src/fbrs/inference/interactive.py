"""What every interactive predictor shares: the image it works on, its clicks, typed states and the one
undo / redo history.

`InteractivePredictor` is the base of the learned `Predictor`, the SAM family's `SamPredictor` and the
classical baselines' `SeededPredictor` (and of the app's wrapper around a foreign predictor). A subclass
says how to compute the map of the current clicks (`_compute`) and what else a state must hold to
continue exactly from it (`_model_state` / `_restore_model_state` / `_reset_model`); clicks, their check,
the history, `get_state` / `set_state` and the stateless `predict` live here, once.

The history is a chain: every state links the state before its last click (`PredictorState.previous`),
so undo is `set_state(state.previous)` (exact, nothing recomputed, nothing copied: arrays and tensors are
shared between states and never modified in place) and a state given back to `set_state` brings its
undo history with it. Undone states wait on a redo stack until the next click.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fbrs.errors import InvalidClickError, InvalidImageError, InvalidStateError
from fbrs.images import ImageIdentity, as_rgb_uint8
from fbrs.inference.clicks import Click, click_sequence, clicks_are_prefix, validate_click
from fbrs.inference.packed import UpsampledMap, unpack


@dataclass(frozen=True, eq=False, repr=False)
class PredictorState:
    """Everything that determines a predictor's future predictions after some clicks on one image.

    image: the identity of the image the state was made on; `set_state` and `predict(prev_state=...)`
        refuse a state of another image (its crop and cached features would silently be reused).
    clicks: the clicks so far, oldest first.
    probabilities: the (H, W) float32 map after them (read-only), or the smaller network output it was
        resized from (fbrs.inference.packed.UpsampledMap), or None before the first click.
    previous: the state before the last click (the undo history), or None.

    Subclasses add what their family needs (refiner variables, Zoom-In crop, SAM's mask input). States
    are compared by identity. For code written against the dicts of earlier versions a state also reads
    as a mapping: `state["probabilities"]`, `{**state, "probabilities": other}`; such a dict goes back
    through `set_state`, which checks it as any state.
    """

    image: ImageIdentity
    clicks: tuple[Click, ...]
    probabilities: np.ndarray | UpsampledMap | None
    previous: PredictorState | None

    def __getitem__(self, name: str) -> Any:
        if name not in self._field_names():
            raise KeyError(name)
        return getattr(self, name)

    def keys(self) -> tuple[str, ...]:
        return self._field_names()

    def chain(self) -> Iterator[PredictorState]:
        """This state, then the one before its last click, and so on back to the first."""
        state: PredictorState | None = self
        while state is not None:
            yield state
            state = state.previous

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.clicks)} clicks on the {self.image})"


class InteractivePredictor:
    """Interactive segmentation of one object at a time on one image: clicks in, (H, W) maps out.

    >>> predictor.set_image(rgb)                       # (H, W, 3) uint8
    >>> probs = predictor.add_click(120, 80, True)    # (y, x) = (row, column); (H, W) float32 in [0, 1]
    >>> predictor.undo(); predictor.redo()            # exact, nothing recomputed

    Subclasses implement `_compute` (and, when they keep more than the map, `_model_state`,
    `_restore_model_state`, `_reset_model`, `_load_image`), set `prob_threshold` and `max_clicks`, and call
    `super().__init__()`.
    """

    #: the state class this predictor's `get_state` returns; a subclass with more fields names its own
    state_type: ClassVar[type[PredictorState]] = PredictorState
    prob_threshold: float = 0.49
    max_clicks: int | None = None

    def __init__(self) -> None:
        self._image: np.ndarray | None = None
        self._identity: ImageIdentity | None = None
        self._clicks: list[Click] = []
        self._probabilities: np.ndarray | None = None
        # The current map as states store it: the map itself or the UpsampledMap it was resized from.
        self._stored: np.ndarray | UpsampledMap | None = None
        self._previous: PredictorState | None = None
        self._redo: list[PredictorState] = []
        # The state object of the current state once made (by get_state or restored by _apply), None after
        # a change: get_state then returns that very object, so states stay identical along the history.
        self._state: PredictorState | None = None

    # -- public surface ---------------------------------------------------------------------------
    def set_image(self, image: np.ndarray) -> None:
        """image: (H, W, 3) uint8 RGB; (H, W) grayscale, RGBA and 16-bit are converted, else InvalidImageError.

        Forgets all clicks and the history."""
        image = as_rgb_uint8(image)
        identity = ImageIdentity.of(image)
        self._load_image(image)
        self._image, self._identity = image, identity
        self.reset()

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the current image."""
        return self._require_image().shape[:2]

    @property
    def clicks(self) -> list[Click]:
        """The clicks so far, oldest first (a copy)."""
        return list(self._clicks)

    @property
    def probabilities(self) -> np.ndarray | None:
        """The last probability map (H, W) float32 (read-only), or None before the first click."""
        return self._probabilities

    @property
    def mask(self) -> np.ndarray | None:
        """The last mask (H, W) bool = probabilities > prob_threshold, or None before the first click."""
        return None if self._probabilities is None else self._probabilities > self.prob_threshold

    @property
    def can_undo(self) -> bool:
        return self._previous is not None

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def add_click(self, y: float, x: float, positive: bool) -> np.ndarray:
        """Add a click at (y, x) = (row, column) in image pixels; returns the (H, W) float32 probabilities.

        The array is read-only: the undo history shares it instead of keeping a copy per click (a
        12-megapixel image costs 48 MB per copy). `.copy()` it to modify it. Clears the redo stack."""
        click = validate_click(Click(y, x, positive), self.image_size)
        if self.max_clicks is not None and len(self._clicks) >= self.max_clicks:
            raise InvalidClickError(f"click limit reached: at most {self.max_clicks} clicks per object")
        before = self.get_state()
        self._clicks.append(click)
        self._state = None
        try:
            with self._inference():
                probabilities, stored = self._compute()
        except BaseException:
            self._apply(before)  # a failed click leaves the predictor as it was
            raise
        probabilities.flags.writeable = False
        self._probabilities = probabilities
        self._stored = probabilities if stored is None else stored
        self._previous = before
        self._redo.clear()
        return probabilities

    def undo(self) -> np.ndarray | None:
        """Remove the last click, restoring the exact state before it (the undone one can be redone).
        Returns the probabilities then (None when no click remains, or nothing was to undo)."""
        if self._previous is None:
            return self._probabilities
        current = self.get_state()
        self._apply(self._previous)
        self._redo.append(current)
        return self._probabilities

    def redo(self) -> np.ndarray | None:
        """Re-apply the last undone click exactly (nothing recomputed). Returns the probabilities then."""
        if self._redo:
            self._apply(self._redo.pop())
        return self._probabilities

    def reset(self) -> None:
        """Forget all clicks of the current object and the history (keeps the image)."""
        self._clicks = []
        self._probabilities = self._stored = None
        self._previous = None
        self._redo = []
        self._state = None
        self._reset_model()

    def get_state(self) -> PredictorState:
        """Everything that determines future predictions, and the undo history; `set_state` restores it
        exactly. Arrays and tensors are shared, not copied: none of them is ever modified in place."""
        self._require_image()
        if self._state is None:
            self._state = self.state_type(
                image=self._identity,
                clicks=tuple(self._clicks),
                probabilities=self._stored,
                previous=self._previous,
                **self._model_state(),
            )
        return self._state

    def set_state(self, state: PredictorState | Mapping[str, Any]) -> None:
        """Go back (or forward) to `state`, from `get_state` or `predict(..., return_state=True)` on this
        image; its undo history comes with it, the redo stack is cleared. InvalidStateError for a state of
        another image or another kind of predictor."""
        self._apply(self._checked_state(state))
        self._redo.clear()

    def kept_states(self) -> list[PredictorState]:
        """Every state undo and redo can return to, the current one first (to measure what they hold)."""
        if self._image is None:
            return []
        seen: set[int] = set()
        states = []
        for top in [self.get_state(), *reversed(self._redo)]:
            for state in top.chain():
                if id(state) in seen:
                    break  # the rest of this chain is shared with one already listed
                seen.add(id(state))
                states.append(state)
        return states

    def predict(
        self,
        points: np.ndarray | Sequence[Sequence[float]],
        labels: np.ndarray | Sequence[int | bool],
        prev_state: PredictorState | Mapping[str, Any] | None = None,
        return_state: bool = False,
    ):
        """Stateless prediction for a whole click sequence.

        points: (N, 2) (y, x) in image pixels, in click order; labels: (N,) 1/True positive, 0/False negative.
        prev_state: a state of this image from `get_state()`/an earlier `predict(..., return_state=True)`;
        when its clicks are a prefix of `points` only the new clicks are computed. The predictor's own state
        is unchanged. Returns the (H, W) float32 probabilities, or (probabilities, state) with return_state;
        that state has no undo history (a server keeping many of them would otherwise keep every earlier
        click's cached features alive).
        """
        points, labels = click_sequence(points, labels)
        start_state = None if prev_state is None else self._checked_state(prev_state)
        saved = self.get_state()
        saved_redo = list(self._redo)
        try:
            start = 0
            if start_state is not None and clicks_are_prefix(start_state.clicks, points, labels):
                self._apply(start_state)
                start = len(start_state.clicks)
            else:
                self.reset()
            for (y, x), label in zip(points[start:], labels[start:], strict=True):
                self.add_click(y, x, bool(label))
            result = self._probabilities
            state = dataclasses.replace(self.get_state(), previous=None)
        finally:
            self._apply(saved)
            self._redo = saved_redo
        return (result, state) if return_state else result

    # -- what a subclass provides ----------------------------------------------------------------
    def _load_image(self, image: np.ndarray) -> None:
        """Per-image work on the (H, W, 3) uint8 image (before it becomes the current one)."""

    def _compute(self) -> tuple[np.ndarray, UpsampledMap | None]:
        """The (H, W) float32 map of `self._clicks` (the new click is the last), and the smaller output it
        was resized from when a state should store that instead. Updates the subclass's own state."""
        raise NotImplementedError

    def _model_state(self) -> dict[str, Any]:
        """The subclass's fields of the current state (the extra fields of `state_type`)."""
        return {}

    def _restore_model_state(self, state: PredictorState) -> None:
        """Restore the subclass's own state from `state` (clicks and probabilities are already restored)."""

    def _reset_model(self) -> None:
        """Forget the subclass's per-object state."""

    def _inference(self) -> AbstractContextManager[Any]:
        """The context a click's computation runs in."""
        return nullcontext()

    # -- internals --------------------------------------------------------------------------------
    def _require_image(self) -> np.ndarray:
        if self._image is None:
            raise InvalidImageError("no image set: call set_image(image) first")
        return self._image

    def _checked_state(self, state: PredictorState | Mapping[str, Any]) -> PredictorState:
        self._require_image()
        if type(state) is not self.state_type:  # a subclass's state is another predictor's
            names = self.state_type._field_names()
            if not isinstance(state, Mapping) or set(state.keys()) != set(names):
                given = type(state).__name__ if not isinstance(state, Mapping) else sorted(state.keys())
                raise InvalidStateError(
                    f"not a state of this {type(self).__name__}: expected a {self.state_type.__name__} from "
                    f"get_state() (fields {', '.join(names)}), got {given}"
                )
            state = self.state_type(**state)
        if state.image != self._identity:
            raise InvalidStateError(
                f"this state was made on another image ({state.image}) than the current one "
                f"({self._identity}): set_image that image first, or use a state of this one"
            )
        return state

    def _apply(self, state: PredictorState) -> None:
        """Make `state` (already checked) the current one."""
        self._clicks = list(state.clicks)
        self._stored = state.probabilities
        self._probabilities = unpack(state.probabilities)
        self._previous = state.previous
        self._restore_model_state(state)
        self._state = state
