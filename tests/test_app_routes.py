"""The app's layout: routers sharing one AppContext per app, and /api/predict without a session."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fbrs.app.context import AppContext
from fbrs.app.export import decode_rle
from fbrs.app.project import AnnotationProject, AppLimits
from fbrs.app.server import create_app
from fbrs.app.sessions import AnnotationSession
from tests.test_app_helpers import CREMA, SAMPLES_DIR, TABLE, classical_mode, sample_folder, tiny_engine

CLICKS = [{**CREMA, "positive": True}, {**TABLE, "positive": False}, {"x": 300, "y": 170, "positive": True}]


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


def client_for(app) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.mark.parametrize("mode", ["classical", "NoBRS"])
def test_stateless_predict_builds_no_session_and_matches_one(engine, monkeypatch, mode):
    mode = classical_mode(engine) if mode == "classical" else mode
    data = (SAMPLES_DIR / "coffee.jpg").read_bytes()
    with client_for(create_app(engine)) as client:
        session = client.post("/api/sessions", files={"image": ("coffee.jpg", data)}, data={"mode": mode}).json()
        for click in CLICKS:
            assert client.post(f"/api/sessions/{session['session_id']}/clicks", json=click).status_code == 200
        expected = decode_rle(client.get(f"/api/sessions/{session['session_id']}/mask",
                                         params={"format": "rle"}).json()["rle"])
        live = len(client.app.state.store)

        def no_session(*args, **kwargs):
            raise AssertionError("/api/predict built an AnnotationSession")

        monkeypatch.setattr(AnnotationSession, "__init__", no_session)
        response = client.post("/api/predict", files={"image": ("coffee.jpg", data)},
                               data={"clicks": json.dumps(CLICKS), "mode": mode, "format": "rle"})
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(decode_rle(response.json()["rle"]), expected)
        assert len(client.app.state.store) == live


def test_each_app_has_its_own_context(engine, tmp_path):
    first, second = create_app(engine), create_app(engine)
    assert isinstance(first.state.context, AppContext) and first.state.store is first.state.context.store
    data = (SAMPLES_DIR / "coffee.jpg").read_bytes()
    with client_for(first) as one, client_for(second) as other:
        session_id = one.post("/api/sessions", files={"image": ("coffee.jpg", data)}).json()["session_id"]
        assert one.get(f"/api/sessions/{session_id}").status_code == 200
        assert other.get(f"/api/sessions/{session_id}").status_code == 404  # the routers are shared, the state not
        assert len(second.state.store) == 0


def test_display_images_default_to_the_apps_display_max_side(engine, tmp_path):
    project = AnnotationProject(sample_folder(tmp_path), tmp_path / "out", limits=AppLimits(display_max_side=150))
    with client_for(create_app(engine, project)) as client:
        session_id = client.post("/api/images/coffee.jpg/session").json()["session_id"]
        image = Image.open(io.BytesIO(client.get(f"/api/sessions/{session_id}/image").content))
        overlay = Image.open(io.BytesIO(client.get(f"/api/sessions/{session_id}/overlay.png").content))
        assert image.size == overlay.size == (150, 100)  # coffee.jpg is 600 x 400
        image = Image.open(io.BytesIO(client.get(f"/api/sessions/{session_id}/image?max_side=300").content))
        assert image.size == (300, 200)
        assert client.get(f"/api/sessions/{session_id}/image?max_side=8").status_code == 422
