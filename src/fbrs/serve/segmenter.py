"""One model for many images: a predictor kept warm per image (LRU), so the k-th click costs one click.

Annotation tools send the whole click list with every request (Label Studio's context, CVAT's points).
The segmenter remembers, per image, the predictor states of the last click lists it answered; a request
whose clicks extend one of them starts from that state (`Predictor.predict(prev_state=...)`), so only the
new clicks run the network. Removing a click (the tool's undo) finds the shorter list's state, or starts
again from the first click when it is no longer kept.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fbrs.errors import InvalidClickError
from fbrs.images import as_rgb_uint8
from fbrs.inference.clicks import Click, validate_click

#: (rmin, rmax, cmin, cmax), inclusive, in pixels: the convention of fbrs.inference.bbox.
Box = tuple[int, int, int, int]

#: Longer side the first click's whole-image pass runs at (as in `fbrs app`): bounds time and memory on
#: photos of many megapixels; Zoom-In crops later clicks at full resolution anyway.
DEFAULT_MAX_IMAGE_SIDE = 1024


@dataclass(frozen=True)
class Segmentation:
    probabilities: np.ndarray  # (H, W) float32 in [0, 1]
    mask: np.ndarray  # (H, W) bool = probabilities > threshold
    score: float  # mean probability inside the mask (0 for an empty mask): a confidence in [0, 1]
    computed_clicks: int  # clicks that ran the network for this request (1 for a click added to a warm image)


class _ImageEntry:
    def __init__(self, image: np.ndarray, predictor: Any) -> None:
        self.image = image
        self.predictor = predictor
        self.lock = threading.Lock()
        # click list -> the predictor state after it; newest last.
        self.states: OrderedDict[tuple[Click, ...], dict[str, Any]] = OrderedDict()


class WarmSegmenter:
    """Segment objects on many images with one model, keeping the last `cache_size` images warm.

    model: an InteractiveModel (`fbrs.load_default_model()`); mode: a learned mode ("f-BRS-B", "NoBRS", ...).
    states_per_image: click lists remembered per image (undo and redo of recent clicks stay one click away).
    max_clicks: clicks per object; more are refused (InvalidClickError) before any work.
    Thread-safe: requests for different images run in parallel, those for one image one after another.
    """

    def __init__(
        self,
        model: Any,
        mode: str = "f-BRS-B",
        cache_size: int = 8,
        states_per_image: int = 16,
        max_clicks: int = 100,
        max_image_side: int | None = DEFAULT_MAX_IMAGE_SIDE,
        prob_threshold: float = 0.49,
    ) -> None:
        from fbrs.inference.modes import MODES

        if mode not in MODES:
            raise ValueError(f"unknown predictor mode {mode!r}; available: {', '.join(MODES)}")
        if cache_size < 1 or states_per_image < 1 or max_clicks < 1:
            raise ValueError("cache_size, states_per_image and max_clicks must be at least 1")
        self.model = model
        self.mode = mode
        self.cache_size = cache_size
        self.states_per_image = states_per_image
        self.max_clicks = max_clicks
        self.prob_threshold = prob_threshold
        self.predictor_options: dict[str, Any] = {"max_image_side": max_image_side, "prob_threshold": prob_threshold}
        if MODES[mode].insertion is not None:  # f-BRS
            # Latency over bit-exactness to the original's trajectories, as `fbrs app` (see Predictor).
            self.predictor_options["windowed_gradient"] = True
        self._images: OrderedDict[str, _ImageEntry] = OrderedDict()
        self._lock = threading.Lock()
        # Totals since start, for /health: clicks_computed == requests on warm images clicked one at a time.
        self.stats = {"requests": 0, "clicks_computed": 0, "images_loaded": 0}

    def new_predictor(self) -> Any:
        """A predictor configured as the segmenter's own (no image set): tests compare against it."""
        from fbrs.inference.predictor import Predictor

        return Predictor(self.model, mode=self.mode, **self.predictor_options)

    @property
    def cached_images(self) -> list[str]:
        with self._lock:
            return list(self._images)

    def image_size(self, key: str, load_image: Callable[[], np.ndarray]) -> tuple[int, int]:
        """(height, width) of the image named `key`, loading it (and keeping it warm) when it is not."""
        return self._entry(key, load_image).image.shape[:2]

    def segment(
        self,
        key: str,
        load_image: Callable[[], np.ndarray],
        clicks: Sequence[Click],
        box: Box | None = None,
        threshold: float | None = None,
        in_click_order: bool = True,
    ) -> Segmentation:
        """The object marked by `clicks` (in order) on the image named `key`.

        load_image: called only when `key` is not warm; returns (H, W, 3) uint8 RGB.
        box: the object's box; the mask is cut to it, and without a positive click its centre is one.
        threshold: mask threshold (default: the segmenter's prob_threshold).
        in_click_order: False when the caller does not know the order of the clicks (CVAT sends positive and
            negative points as two lists): the clicks of the longest kept click list among them come first, in
            its order, the others after them, so a click added to an object still costs one click.
        """
        entry = self._entry(key, load_image)
        height, width = entry.image.shape[:2]
        clicks = list(clicks)
        if not in_click_order:
            with entry.lock:
                clicks = _continue_known_order(entry.states, clicks)
        if box is not None:
            box = _check_box(box, height, width)
            if not any(click.is_positive for click in clicks):
                clicks.insert(0, Click((box[0] + box[1]) / 2, (box[2] + box[3]) / 2, True))
        _check_clicks(clicks, height, width, self.max_clicks)
        with entry.lock:
            prefix = _longest_prefix(entry.states, clicks)
            points = [(click.y, click.x) for click in clicks]
            labels = [click.is_positive for click in clicks]
            probabilities, state = entry.predictor.predict(
                points, labels, prev_state=entry.states.get(prefix), return_state=True
            )
            key_clicks = tuple(clicks)
            entry.states.pop(key_clicks, None)
            entry.states[key_clicks] = state
            while len(entry.states) > self.states_per_image:
                entry.states.popitem(last=False)
            computed = len(clicks) - len(prefix)
            with self._lock:
                self.stats["requests"] += 1
                self.stats["clicks_computed"] += computed
        if box is not None:
            probabilities = probabilities.copy()
            inside = np.zeros(probabilities.shape, bool)
            inside[box[0] : box[1] + 1, box[2] : box[3] + 1] = True
            probabilities[~inside] = 0
        mask = probabilities > (self.prob_threshold if threshold is None else threshold)
        score = float(probabilities[mask].mean()) if mask.any() else 0.0
        return Segmentation(probabilities, mask, score, computed)

    def _entry(self, key: str, load_image: Callable[[], np.ndarray]) -> _ImageEntry:
        with self._lock:
            entry = self._images.get(key)
            if entry is not None:
                self._images.move_to_end(key)
                return entry
        # Decode outside the lock: other images' requests go on meanwhile.
        image = as_rgb_uint8(load_image())
        predictor = self.new_predictor()
        predictor.set_image(image)
        entry = _ImageEntry(image, predictor)
        with self._lock:
            existing = self._images.get(key)
            if existing is not None:  # another request loaded it first: keep that one (and its states)
                self._images.move_to_end(key)
                return existing
            self._images[key] = entry
            self.stats["images_loaded"] += 1
            while len(self._images) > self.cache_size:
                self._images.popitem(last=False)
        return entry


def _longest_prefix(states: OrderedDict[tuple[Click, ...], Any], clicks: list[Click]) -> tuple[Click, ...]:
    best: tuple[Click, ...] = ()
    for stored in states:
        if len(best) < len(stored) <= len(clicks) and tuple(clicks[: len(stored)]) == stored:
            best = stored
    return best


def _continue_known_order(states: OrderedDict[tuple[Click, ...], Any], clicks: list[Click]) -> list[Click]:
    requested = Counter(clicks)
    best: tuple[Click, ...] = ()
    for stored in states:
        if len(best) < len(stored) <= len(clicks) and not Counter(stored) - requested:
            best = stored
    rest = requested - Counter(best)
    ordered = list(best)
    for click in clicks:
        if rest[click] > 0:
            ordered.append(click)
            rest[click] -= 1
    return ordered


def _check_clicks(clicks: Sequence[Click], height: int, width: int, max_clicks: int) -> None:
    if not clicks:
        raise InvalidClickError("at least one click is needed")
    if len(clicks) > max_clicks:
        raise InvalidClickError(f"{len(clicks)} clicks; at most {max_clicks} per object")
    for click in clicks:
        validate_click(click, (height, width))


def _check_box(box: Box, height: int, width: int) -> Box:
    if len(box) != 4 or not all(math.isfinite(value) for value in box):
        raise InvalidClickError(f"a box is 4 finite numbers, got {box!r}")
    rmin, rmax, cmin, cmax = (int(round(value)) for value in box)
    rmin, cmin = max(rmin, 0), max(cmin, 0)
    rmax, cmax = min(rmax, height - 1), min(cmax, width - 1)
    if rmin > rmax or cmin > cmax:
        raise InvalidClickError(f"the box {tuple(box)} does not overlap the image (height {height}, width {width})")
    return rmin, rmax, cmin, cmax
