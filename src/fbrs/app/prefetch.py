"""Encode the next folder image in the background, so that it is ready when the user gets there.

For the SAM family a new image costs an encoder run (seconds on a CPU); its embedding is cached in the
shared SamModel (`SamModel.embed`, a few images). Once an image is prepared, the app asks the prefetcher
to encode the next image of the folder. One worker thread, at most one waiting request (a newer one
replaces it: the user moved on), one image at a time: bounded work, memory bounded by the model's cache.

It never blocks a click on the current image: it does not take the engine's model lock nor any session's
lock, and SamModel.embed runs the encoder outside its cache lock; a session that opens the image being
prefetched waits for that result instead of encoding it twice. It does share the CPU with the click
(the encoder is the one heavy thing it does), at a lower priority (nice + 10, on Linux). A failed prefetch
is logged and forgotten: the session encodes the image itself when it gets there.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from fbrs.app.engine import PredictionEngine, PredictorSettings
from fbrs.images import as_rgb_uint8

LOGGER = logging.getLogger("fbrs.app")
#: Added to the worker thread's nice value: where the CPU is short, a click on the current image goes first.
PREFETCH_NICENESS = 10


def cached_embedding_model(engine: PredictionEngine, settings: PredictorSettings) -> Any:
    """The model whose `embed(image)` the predictor of `settings` uses on set_image (a SAM-family mode's
    SamModel), or None when that mode caches nothing across predictors (DeepLab modes, baselines)."""
    from fbrs.registry import PREDICTORS

    if settings.mode not in PREDICTORS or PREDICTORS.spec(settings.mode).family != "sam":
        return None
    model = getattr(engine.create(settings), "model", None)
    return model if callable(getattr(model, "embed", None)) else None


def _lower_this_threads_priority() -> None:
    """Linux schedules threads one by one: raise this thread's nice value (an unprivileged process may).
    ONNX Runtime runs a 1-thread session's work in the calling thread, so then the whole encoding yields to
    clicks; with more threads its pool threads keep their priority. Elsewhere: nothing."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREFETCH_NICENESS)
    except (AttributeError, OSError):
        pass


class EmbeddingPrefetcher:
    """load_image: image name -> (H, W, 3) uint8 (the folder's reader: the same pixels a session gets)."""

    def __init__(self, engine: PredictionEngine, load_image: Callable[[str], np.ndarray]) -> None:
        self.engine = engine
        self._load_image = load_image
        self._condition = threading.Condition()
        self._waiting: tuple[str, PredictorSettings] | None = None
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.done: list[str] = []  # names encoded (or found cached) so far, for tests and logs

    def schedule(self, image_name: str, settings: PredictorSettings) -> None:
        """Encode `image_name` for `settings`' mode soon; replaces a request not yet started."""
        with self._condition:
            if self._closed:
                return
            self._waiting = (image_name, settings)
            if self._thread is None:  # started on first use: creating an app starts no thread
                self._thread = threading.Thread(target=self._run, name="fbrs-prefetch", daemon=True)
                self._thread.start()
            self._condition.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is waiting or running; False on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: self._waiting is None and not self._busy, timeout)

    def close(self) -> None:
        """Stop the worker (after the image it is encoding, if any)."""
        with self._condition:
            self._closed = True
            self._waiting = None
            self._condition.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60)

    def _run(self) -> None:
        _lower_this_threads_priority()
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._waiting is not None or self._closed)
                if self._closed:
                    return
                (image_name, settings), self._waiting = self._waiting, None
                self._busy = True
            try:
                self._prefetch(image_name, settings)
            except Exception as error:  # noqa: BLE001 - a prefetch is an optimisation: never fatal
                LOGGER.warning("prefetch of %s failed: %s", image_name, error)
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    def _prefetch(self, image_name: str, settings: PredictorSettings) -> None:
        model = cached_embedding_model(self.engine, settings)
        if model is None:
            return
        # as_rgb_uint8: the exact array a session's predictor hands to embed, hence the same cache key.
        model.embed(as_rgb_uint8(self._load_image(image_name)))
        self.done.append(image_name)
