"""HTTP API of the annotation app, through FastAPI's TestClient and one live uvicorn server."""

from __future__ import annotations

import io
import json
import threading

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fbrs.app.export import decode_rle, read_instance_png
from fbrs.app.project import AnnotationProject, AppLimits
from fbrs.app.server import create_app
from fbrs.inference.modes import PAPER_MODES
from tests.test_app_helpers import CREMA, SPOON, TABLE, LiveServer, classical_mode, sample_folder, tiny_engine


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


@pytest.fixture
def folder(tmp_path):
    return sample_folder(tmp_path)


def make_client(engine, folder, out_dir, **limits) -> TestClient:
    project = AnnotationProject(folder, out_dir, limits=AppLimits(**limits))
    return TestClient(create_app(engine, project), base_url="http://127.0.0.1")


@pytest.fixture
def client(engine, folder, tmp_path):
    with make_client(engine, folder, tmp_path / "out") as test_client:
        yield test_client


def png_array(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def image_bytes(array: np.ndarray, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    return buffer.getvalue()


def test_info_lists_the_six_learned_modes_and_the_folder(client):
    info = client.get("/api/info").json()
    names = [mode["name"] for mode in info["modes"]]
    assert names[:6] == list(PAPER_MODES)
    assert all(mode["available"] for mode in info["modes"])
    assert info["default_settings"]["mode"] == "f-BRS-B"
    assert info["folder"]["out_dir"].endswith("out")
    images = client.get("/api/images").json()
    assert [image["name"] for image in images] == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]
    assert images[2]["width"] == 600 and images[2]["height"] == 400
    assert not any(image["done"] for image in images)
    schema = client.get("/openapi.json").json()
    assert "/api/predict" in schema["paths"] and "/api/sessions/{session_id}/clicks" in schema["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for asset in ("app.js", "app.css"):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200
        assert "://" not in response.text  # everything the page loads ships with the package
    assert "://" not in page.text


def test_learned_mode_undo_and_redo_restore_the_exact_probabilities(client):
    state = client.post("/api/images/chelsea.jpg/session").json()
    session_id = state["session_id"]
    session = client.app.state.store.get(session_id)
    assert client.put(f"/api/sessions/{session_id}/settings", json={"mode": "f-BRS-B"}).status_code == 200
    client.post(f"/api/sessions/{session_id}/clicks", json={"x": 200, "y": 150, "positive": True})
    after_first = session.probabilities.copy()
    state = client.post(f"/api/sessions/{session_id}/clicks", json={"x": 20, "y": 20, "positive": False}).json()
    after_second = session.probabilities.copy()
    assert [click["positive"] for click in state["clicks"]] == [True, False]
    assert state["latency_ms"] is not None and state["can_undo"] and not state["can_redo"]
    assert after_second.shape == (300, 451) and after_second.dtype == np.float32
    assert not np.array_equal(after_first, after_second)  # else this test could not see a wrong undo

    state = client.post(f"/api/sessions/{session_id}/undo").json()
    assert state["clicks"] == [{"x": 200.0, "y": 150.0, "positive": True}] and state["can_redo"]
    np.testing.assert_array_equal(session.probabilities, after_first)
    assert len(session._predictor.clicks) == 1
    state = client.post(f"/api/sessions/{session_id}/redo").json()
    assert len(state["clicks"]) == 2
    np.testing.assert_array_equal(session.probabilities, after_second)
    assert len(session._predictor.clicks) == 2
    mask = png_array(client.get(f"/api/sessions/{session_id}/mask"))
    np.testing.assert_array_equal(mask > 0, after_second > state["settings"]["prob_threshold"])
    # The predictor itself went back too: clicking again after an undo equals replaying from scratch.
    client.post(f"/api/sessions/{session_id}/undo")
    client.post(f"/api/sessions/{session_id}/clicks", json={"x": 20, "y": 20, "positive": False})
    np.testing.assert_array_equal(session.probabilities, after_second)


def test_two_objects_are_saved_as_png_coco_and_click_log_and_resume(engine, folder, tmp_path):
    out_dir = tmp_path / "out"
    mode = classical_mode(engine)
    with make_client(engine, folder, out_dir) as client:
        session = client.post("/api/images/coffee.jpg/session").json()["session_id"]
        client.put(f"/api/sessions/{session}/settings", json={"mode": mode})
        client.post(f"/api/sessions/{session}/clicks", json={**CREMA, "positive": True})
        client.post(f"/api/sessions/{session}/clicks", json={**TABLE, "positive": False})
        current = png_array(client.get(f"/api/sessions/{session}/mask"))
        # (x, y) in the API -> row y, column x of the mask.
        assert current[CREMA["y"], CREMA["x"]] == 255 and current[TABLE["y"], TABLE["x"]] == 0
        finished = client.post(f"/api/sessions/{session}/finish").json()
        assert finished["finished_object_id"] == 1 and finished["clicks"] == []
        client.post(f"/api/sessions/{session}/clicks", json={**SPOON, "positive": True})
        client.post(f"/api/sessions/{session}/finish")
        client.post(f"/api/sessions/{session}/clicks", json={**TABLE, "positive": True})  # left unfinished
        saved = client.post(f"/api/sessions/{session}/save").json()
        assert saved["done"] and [item["id"] for item in saved["objects"]] == [1, 2]
        listing = {image["name"]: image for image in client.get("/api/images").json()}
        assert listing["coffee.jpg"]["done"] and listing["coffee.jpg"]["objects"] == 2

    labels = read_instance_png(out_dir / "masks" / "coffee.png")
    assert labels.shape == (400, 600) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[CREMA["y"], CREMA["x"]] == 1 and labels[SPOON["y"], SPOON["x"]] == 2
    assert labels[TABLE["y"], TABLE["x"]] == 0
    np.testing.assert_array_equal(labels == 1, current > 0)

    coco = json.loads((out_dir / "coco_instances.json").read_text())
    assert [image["file_name"] for image in coco["images"]] == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]
    coffee_id = coco["images"][2]["id"]
    annotations = [entry for entry in coco["annotations"] if entry["image_id"] == coffee_id]
    assert sorted(entry["fbrs_object_id"] for entry in annotations) == [1, 2]
    for entry in annotations:
        mask = decode_rle(entry["segmentation"])
        np.testing.assert_array_equal(mask, labels == entry["fbrs_object_id"])
        assert entry["area"] == int(mask.sum())
    polygons = json.loads((out_dir / "coco_instances_polygons.json").read_text())
    assert len(polygons["annotations"]) == 2
    assert all(isinstance(entry["segmentation"], list) and entry["segmentation"]
               for entry in polygons["annotations"])

    log = json.loads((out_dir / "clicks" / "coffee.json").read_text())
    assert log["objects"][0]["clicks"] == [{"x": 290.0, "y": 145.0, "positive": True},
                                           {"x": 540.0, "y": 60.0, "positive": False}]
    assert log["objects"][0]["settings"]["mode"] == mode
    assert log["current_object"]["clicks"] == [{"x": 540.0, "y": 60.0, "positive": True}]
    assert not list(out_dir.rglob("*.tmp"))

    # Reopening the folder resumes: both objects, the done flag and the unfinished click.
    with make_client(engine, folder, out_dir) as client:
        listing = {image["name"]: image for image in client.get("/api/images").json()}
        assert listing["coffee.jpg"]["done"] and not listing["astronaut.jpg"]["done"]
        state = client.post("/api/images/coffee.jpg/session").json()
        assert [item["id"] for item in state["objects"]] == [1, 2]
        assert state["clicks"] == [{"x": 540.0, "y": 60.0, "positive": True}]
        assert state["settings"]["mode"] == mode
        session = state["session_id"]
        np.testing.assert_array_equal(
            png_array(client.get(f"/api/sessions/{session}/mask", params={"object": "all"})), labels
        )
        assert state["done"]
        client.post(f"/api/sessions/{session}/undo")  # edits of the unfinished object keep "done"
        assert client.get(f"/api/sessions/{session}").json()["done"]
        # Deleting object 1 changes the saved files: the image is no longer done until saved again.
        state = client.delete(f"/api/sessions/{session}/objects/1").json()
        assert [item["id"] for item in state["objects"]] == [2] and not state["done"]
        assert not {image["name"]: image for image in client.get("/api/images").json()}["coffee.jpg"]["done"]
    labels = read_instance_png(out_dir / "masks" / "coffee.png")
    assert set(np.unique(labels)) == {0, 2}
    coco = json.loads((out_dir / "coco_instances.json").read_text())
    assert [entry["fbrs_object_id"] for entry in coco["annotations"]] == [2]


def test_uploaded_session_serves_masks_as_png_rle_and_polygons(client, engine):
    image = np.asarray(Image.open(sample_folder_file("chelsea.jpg")))
    response = client.post("/api/sessions", files={"image": ("cat.png", image_bytes(image))},
                           data={"mode": classical_mode(engine)})
    assert response.status_code == 201, response.text
    state = response.json()
    session = state["session_id"]
    assert (state["width"], state["height"]) == (451, 300) and state["image_name"] is None
    client.post(f"/api/sessions/{session}/clicks", json={"x": 250, "y": 170, "positive": True})
    mask = png_array(client.get(f"/api/sessions/{session}/mask")) > 0
    rle = client.get(f"/api/sessions/{session}/mask", params={"format": "rle"}).json()
    np.testing.assert_array_equal(decode_rle(rle["rle"]), mask)
    assert rle["area"] == int(mask.sum()) > 0
    polygons = client.get(f"/api/sessions/{session}/mask", params={"format": "polygons"}).json()["polygons"]
    assert polygons and all(len(polygon) >= 6 for polygon in polygons)
    client.post(f"/api/sessions/{session}/finish")
    object_rle = client.get(f"/api/sessions/{session}/mask", params={"object": "1", "format": "rle"}).json()
    np.testing.assert_array_equal(decode_rle(object_rle["rle"]), mask)
    overlay = png_array(client.get(f"/api/sessions/{session}/overlay.png", params={"max_side": 200}))
    assert overlay.shape == (133, 200, 4) and overlay[..., 3].any()
    display = Image.open(io.BytesIO(client.get(f"/api/sessions/{session}/image?max_side=200").content))
    assert display.size == (200, 133)
    saving = client.post(f"/api/sessions/{session}/save")
    assert saving.status_code == 409 and "folder" in saving.json()["detail"]
    assert client.delete(f"/api/sessions/{session}").status_code == 204
    assert client.get(f"/api/sessions/{session}").status_code == 404


def sample_folder_file(name: str):
    from fbrs.app.cli import SAMPLES_DIR

    return SAMPLES_DIR / name


def test_stateless_predict_returns_the_mask_of_the_clicks(client, engine):
    data = sample_folder_file("coffee.jpg").read_bytes()
    clicks = json.dumps([{**CREMA, "positive": True}, {**TABLE, "positive": False}])
    form = {"clicks": clicks, "mode": classical_mode(engine)}
    mask = png_array(client.post("/api/predict", files={"image": ("coffee.jpg", data)}, data=form)) > 0
    assert mask.shape == (400, 600) and mask[CREMA["y"], CREMA["x"]] and not mask[TABLE["y"], TABLE["x"]]
    rle = client.post("/api/predict", files={"image": ("coffee.jpg", data)}, data={**form, "format": "rle"})
    np.testing.assert_array_equal(decode_rle(rle.json()["rle"]), mask)

    # A previous mask stays as it was away from the clicks and the new object.
    previous = np.zeros((400, 600), dtype=np.uint8)
    previous[350:, :40] = 255
    previous[CREMA["y"], CREMA["x"] + 1] = 0
    merged = png_array(client.post(
        "/api/predict",
        files={"image": ("coffee.jpg", data), "previous_mask": ("old.png", image_bytes(previous))},
        data=form,
    )) > 0
    assert merged[350:, :40].all()
    assert merged[CREMA["y"], CREMA["x"] + 1] == mask[CREMA["y"], CREMA["x"] + 1]


def test_bad_input_gets_clear_4xx(client, engine):
    data = sample_folder_file("coffee.jpg").read_bytes()

    def predict(**form):
        files = form.pop("files", {"image": ("coffee.jpg", data)})
        return client.post("/api/predict", files=files, data=form)

    response = predict(clicks="[{\"x\": 700, \"y\": 10, \"positive\": true}]")
    assert response.status_code == 400 and "outside the image" in response.json()["detail"]
    assert "width 600" in response.json()["detail"]
    assert predict(clicks="not json").status_code == 400
    assert predict(clicks="[]").status_code == 400
    assert "'x'" in predict(clicks="[{\"y\": 1}]").json()["detail"]
    response = predict(clicks="[{\"x\": 1, \"y\": 1, \"positive\": true}]", mode="f-BRS-Z")
    assert response.status_code == 400 and "f-BRS-Z" in response.json()["detail"]
    response = predict(clicks="[{\"x\": 1, \"y\": 1, \"positive\": true}]",
                       files={"image": ("notes.txt", b"hello, not an image")})
    assert response.status_code == 400 and "not a readable image" in response.json()["detail"]
    response = predict(clicks="[{\"x\": 1, \"y\": 1, \"positive\": true}]", mode=classical_mode(engine),
                       files={"image": ("coffee.jpg", data),
                              "previous_mask": ("m.png", image_bytes(np.zeros((10, 10), np.uint8)))})
    assert response.status_code == 400 and "600x400" in response.json()["detail"]
    assert predict().status_code == 422  # clicks missing

    assert client.get("/api/sessions/nope").status_code == 404
    assert "never created" in client.post("/api/sessions/nope/undo").json()["detail"]
    assert client.post("/api/images/missing.jpg/session").status_code == 404
    assert client.post("/api/images/..%2Fsecret.jpg/session").status_code == 404

    session = client.post("/api/images/coffee.jpg/session").json()["session_id"]
    response = client.post(f"/api/sessions/{session}/clicks", json={"x": 10, "y": 400, "positive": True})
    assert response.status_code == 400 and "height 400" in response.json()["detail"]
    assert client.post(f"/api/sessions/{session}/clicks", json={"x": "left", "y": 4}).status_code == 422
    assert client.post(f"/api/sessions/{session}/undo").status_code == 409
    assert client.post(f"/api/sessions/{session}/redo").status_code == 409
    assert client.post(f"/api/sessions/{session}/finish").status_code == 409
    assert client.delete(f"/api/sessions/{session}/objects/7").status_code == 409
    assert client.put(f"/api/sessions/{session}/settings", json={"prob_threshold": 1.5}).status_code == 422
    assert client.put(f"/api/sessions/{session}/settings", json={"mode": "magic"}).status_code == 400
    assert client.get(f"/api/sessions/{session}/mask", params={"object": "x1"}).status_code == 400
    assert client.get(f"/api/sessions/{session}/mask", params={"format": "svg"}).status_code == 422


def test_limits_on_uploads_pixels_and_live_sessions(engine, folder, tmp_path):
    small = image_bytes(np.full((20, 30, 3), 128, np.uint8))
    with make_client(engine, folder, tmp_path / "out", max_upload_bytes=2000, max_image_pixels=1000,
                     max_sessions=2) as client:
        large = image_bytes(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
        response = client.post("/api/sessions", files={"image": ("big.png", large)})
        assert response.status_code == 413 and "2000" in response.json()["detail"]
        many_pixels = image_bytes(np.zeros((40, 40, 3), np.uint8))  # compresses below 2000 bytes
        response = client.post("/api/sessions", files={"image": ("wide.png", many_pixels)})
        assert response.status_code == 413 and "1600 pixels" in response.json()["detail"]
        response = client.post("/api/images/coffee.jpg/session")
        assert response.status_code == 413 and "coffee.jpg" in response.json()["detail"]

        first, second, third = (
            client.post("/api/sessions", files={"image": ("s.png", small)}).json()["session_id"] for _ in range(3)
        )
        store = client.app.state.store
        assert len(store) == 2 and first not in {session.session_id for session in store.sessions()}
        # An evicted session is rebuilt on its next request (and evicts the least recently used one).
        for session_id in (first, second, third, first):
            assert client.get(f"/api/sessions/{session_id}").status_code == 200
            assert len(store) == 2


def test_evicted_folder_session_keeps_its_clicks(engine, folder, tmp_path):
    out_dir = tmp_path / "out"
    mode = classical_mode(engine)
    with make_client(engine, folder, out_dir, max_sessions=1) as client:
        session = client.post("/api/images/coffee.jpg/session").json()["session_id"]
        client.put(f"/api/sessions/{session}/settings", json={"mode": mode})
        client.post(f"/api/sessions/{session}/clicks", json={**SPOON, "positive": True})
        client.post("/api/images/chelsea.jpg/session")  # evicts coffee, which saves its click log
        assert client.app.state.store.find_image("coffee.jpg") is None
        log = json.loads((out_dir / "clicks" / "coffee.json").read_text())
        assert log["current_object"]["clicks"] == [{"x": 365.0, "y": 285.0, "positive": True}]
        state = client.post("/api/images/coffee.jpg/session").json()
        assert state["session_id"] == session  # one session (one id) per folder image
        assert state["clicks"] == [{"x": 365.0, "y": 285.0, "positive": True}]
        assert state["current_object"]["area"] > 0


def test_a_click_waiting_for_a_busy_session_does_not_block_the_server(engine, folder, tmp_path):
    project = AnnotationProject(folder, tmp_path / "out")
    app = create_app(engine, project)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        session_id = http.post("/api/images/coffee.jpg/session").json()["session_id"]
        session = app.state.store.get(session_id)
        results = {}
        with session.lock:  # stands in for a slow prediction holding the session
            worker = threading.Thread(target=lambda: results.update(
                click=http.post(f"/api/sessions/{session_id}/clicks", json={"x": 5, "y": 5, "positive": True})))
            worker.start()
            # While that click waits, other requests (even of the same session's image) are served.
            assert http.get("/api/info").status_code == 200
            assert http.get("/api/images").status_code == 200
            assert worker.is_alive() and "click" not in results
        worker.join(timeout=60)
        assert results["click"].status_code == 200 and len(results["click"].json()["clicks"]) == 1


def test_overlay_of_an_object_without_visible_pixels(client, engine):
    """A negative-only object has an empty mask; its overlay must still load (regression: IndexError)."""
    image = np.asarray(Image.open(sample_folder_file("chelsea.jpg")))
    session = client.post("/api/sessions", files={"image": ("cat.png", image_bytes(image))},
                          data={"mode": classical_mode(engine)}).json()["session_id"]
    client.post(f"/api/sessions/{session}/clicks", json={"x": 5, "y": 5, "positive": False})
    assert not (png_array(client.get(f"/api/sessions/{session}/mask")) > 0).any()
    overlay = png_array(client.get(f"/api/sessions/{session}/overlay.png", params={"max_side": 200}))
    assert overlay.shape == (133, 200, 4) and not overlay[..., 3].any()


def test_onnx_backend_serves_the_modes_it_can(folder, tmp_path, capsys):
    """`fbrs app --backend onnx`: the default mode's parts are exported at start, ONNX predictors for NoBRS and
    f-BRS, torch for RGB-BRS; /api/info says which backend runs."""
    from fbrs.app.cli import build_app
    from fbrs.app.engine import PredictorSettings
    from fbrs.models import build_model

    app = build_app(folder, out_dir=tmp_path / "out", model=build_model("tiny_test"), backend="onnx")
    assert "exporting tiny_test part after_aspp" in capsys.readouterr().out
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        assert test_client.get("/api/info").json()["backend"] == "onnx"
    engine = app.state.engine
    assert engine.create(PredictorSettings(mode="f-BRS-B")).backend == "onnx"
    assert engine.create(PredictorSettings(mode="NoBRS")).backend == "onnx"
    assert engine.create(PredictorSettings(mode="RGB-BRS")).backend == "torch"
    assert tiny_engine().create(PredictorSettings(mode="f-BRS-B")).backend == "torch"  # the engine's default


def test_flip_is_off_by_default_and_a_setting_that_replays_the_clicks(client):
    state = client.post("/api/images/chelsea.jpg/session").json()
    session_id = state["session_id"]
    session = client.app.state.store.get(session_id)
    assert state["settings"]["flip"] is False
    client.post(f"/api/sessions/{session_id}/clicks", json={"x": 200, "y": 150, "positive": True})
    assert session._predictor.with_flip is False
    without_flip = session.probabilities.copy()
    state = client.put(f"/api/sessions/{session_id}/settings", json={"flip": True}).json()
    assert state["settings"]["flip"] is True and len(state["clicks"]) == 1
    assert session._predictor.with_flip is True
    assert not np.array_equal(session.probabilities, without_flip)  # the click was replayed with the mirror
    assert client.put(f"/api/sessions/{session_id}/settings", json={"flip": "maybe"}).status_code == 422


def test_backend_choice_resolves_to_what_runs(monkeypatch):
    from fbrs.app.cli import prepare_backend
    from fbrs.onnx import policy

    assert prepare_backend(None, "auto") == "torch"  # no model: baselines only
    monkeypatch.setattr(policy, "onnx_available", lambda: False)
    assert prepare_backend(tiny_engine().model, "auto") == "torch"
