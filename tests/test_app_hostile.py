"""The app under hostile input and load (issue 16): every request gets a 4xx or an answer, never a 500,
limits are checked before any work, and no session's work is lost."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fbrs.app.project import AnnotationProject, AppLimits
from fbrs.app.server import create_app
from tests.test_app_helpers import (
    CREMA,
    LiveServer,
    RecordingPredictor,
    recording_engine,
    sample_folder,
)

LOCAL = "http://127.0.0.1"


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (8-bit grey) but that holds one row of pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))
            + chunk(b"IEND", b""))


def encoded(array: np.ndarray, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def client_for(app) -> TestClient:
    # raise_server_exceptions=False: a bug shows as the 500 a user would get, not as a test-side exception.
    return TestClient(app, base_url=LOCAL, raise_server_exceptions=False)


@pytest.fixture
def engine():
    RecordingPredictor.created = 0
    return recording_engine()


@pytest.fixture
def folder(tmp_path):
    return sample_folder(tmp_path)


def folder_app(engine, folder, tmp_path, **limits):
    return create_app(engine, AnnotationProject(folder, tmp_path / "out", limits=AppLimits(**limits)))


SMALL = np.full((20, 30, 3), 90, np.uint8)
ONE_CLICK = json.dumps([{"x": 5, "y": 5, "positive": True}])


# ------------------------------------------------------------------------------ limits before work


def test_an_oversized_previous_mask_is_refused_from_its_header(engine, folder, tmp_path):
    with client_for(folder_app(engine, folder, tmp_path, max_image_pixels=10_000)) as client:
        def predict(mask: bytes):
            files = {"image": ("i.png", encoded(SMALL)), "previous_mask": ("m.png", mask)}
            started = time.perf_counter()
            response = client.post("/api/predict", files=files, data={"clicks": ONE_CLICK})
            return response, time.perf_counter() - started

        response, seconds = predict(png_header_only(13000, 13000))  # 169 Mpx, under Pillow's bomb bound
        assert response.status_code == 413, response.text
        assert "13000x13000" in response.json()["detail"] and seconds < 2
        response, seconds = predict(png_header_only(20000, 20000))  # 400 Mpx: Pillow's DecompressionBombError
        assert response.status_code == 413, response.text
        assert seconds < 2
        response, _ = predict(encoded(np.zeros((21, 30), np.uint8)))  # within the limit, wrong size: 400
        assert response.status_code == 400 and "30x21" in response.json()["detail"]
    assert RecordingPredictor.created == 0


def test_a_decompression_bomb_image_is_a_413_everywhere(engine, folder, tmp_path):
    bomb = png_header_only(20000, 20000)
    with client_for(folder_app(engine, folder, tmp_path)) as client:
        response = client.post("/api/predict", files={"image": ("b.png", bomb)}, data={"clicks": ONE_CLICK})
        assert response.status_code == 413, response.text
        assert client.post("/api/sessions", files={"image": ("b.png", bomb)}).status_code == 413


def test_too_many_or_invalid_clicks_are_refused_before_any_prediction(engine, folder, tmp_path):
    with client_for(folder_app(engine, folder, tmp_path)) as client:
        def predict(clicks):
            return client.post("/api/predict", files={"image": ("i.png", encoded(SMALL))},
                               data={"clicks": json.dumps(clicks)})

        started = time.perf_counter()
        response = predict([{"x": 1, "y": 1, "positive": True}] * 10_000)
        assert response.status_code == 413 and "at most 100" in response.json()["detail"]
        assert time.perf_counter() - started < 2
        # One bad click among good ones: refused before the good ones run.
        response = predict([{"x": 1, "y": 1, "positive": True}] * 50 + [{"x": 99, "y": 1, "positive": True}])
        assert response.status_code == 400 and "outside the image" in response.json()["detail"]
        response = predict([{"x": 1, "y": 1, "positive": True}, {"x": 1, "y": "NaN", "positive": True}])
        assert response.status_code == 400 and "finite" in response.json()["detail"]
        assert predict([{"x": 1, "y": 1, "positive": "maybe"}]).status_code == 400
        assert predict([[1, 1, True]]).status_code == 400
    assert RecordingPredictor.created == 0


def test_booleans_are_parsed_strictly_in_both_click_routes(engine, folder, tmp_path):
    app = folder_app(engine, folder, tmp_path)
    with client_for(app) as client:
        created = []
        original = engine.create
        engine.create = lambda settings: created.append(original(settings)) or created[-1]
        spellings = [True, False, "true", "false", "0", "1", 0, 1, "no", "yes"]
        expected = [True, False, True, False, False, True, False, True, False, True]
        clicks = [{"x": 5 + index, "y": 5, "positive": value} for index, value in enumerate(spellings)]
        response = client.post("/api/predict", files={"image": ("i.png", encoded(SMALL))},
                               data={"clicks": json.dumps(clicks), "format": "rle"})
        assert response.status_code == 200, response.text
        assert [positive for _, _, positive in created[-1].clicks] == expected
        session = client.post("/api/sessions", files={"image": ("i.png", encoded(SMALL))}).json()["session_id"]
        for value, positive in zip(spellings, expected, strict=True):
            state = client.post(f"/api/sessions/{session}/clicks", json={"x": 3, "y": 3, "positive": value}).json()
            assert state["clicks"][-1]["positive"] is positive
        assert client.post(f"/api/sessions/{session}/clicks",
                           json={"x": 3, "y": 3, "positive": "maybe"}).status_code == 422


def test_nan_and_odd_ids_get_serialisable_4xx_and_the_connection_survives(engine, folder, tmp_path):
    app = folder_app(engine, folder, tmp_path)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        session = http.post("/api/images/coffee.jpg/session").json()["session_id"]
        nan_body = {"headers": {"content-type": "application/json"}}
        attempts = [
            lambda: http.get(f"/api/sessions/{session}/mask", params={"object": "\u00b2"}),
            lambda: http.get(f"/api/sessions/{session}/mask", params={"object": "7" * 5000}),
            lambda: http.get(f"/api/sessions/{session}/mask", params={"object": "70000"}),
            lambda: http.delete(f"/api/sessions/{session}/objects/{'9' * 5000}"),
            lambda: http.put(f"/api/sessions/{session}/settings", content='{"prob_threshold": NaN}', **nan_body),
            lambda: http.put(f"/api/sessions/{session}/settings", content='{"prob_threshold": Infinity}', **nan_body),
            lambda: http.post(f"/api/sessions/{session}/clicks", content='{"x": NaN, "y": 3}', **nan_body),
            lambda: http.post(f"/api/sessions/{session}/clicks", content='{"x": 1e400, "y": 3}', **nan_body),
            lambda: http.post("/api/sessions", files={"image": ("i.png", encoded(SMALL))},
                              data={"prob_threshold": "nan"}),
        ]
        for attempt in attempts:
            response = attempt()
            assert 400 <= response.status_code < 500, (response.request.url, response.status_code, response.text)
            assert "NaN" not in response.text and "Infinity" not in response.text
            json.loads(response.text)
            assert http.get("/api/info").status_code == 200  # the same keep-alive connection is still served
        state = http.get(f"/api/sessions/{session}").json()
        assert state["clicks"] == [] and math.isfinite(state["settings"]["prob_threshold"])


def test_a_chunked_body_is_cut_off_at_the_limit(engine, folder, tmp_path):
    """No Content-Length: the body is counted as it streams, so the server stops reading at the limit
    instead of spooling it all to /tmp first."""
    app = folder_app(engine, folder, tmp_path, max_upload_bytes=2000)
    chunk = b"x" * 65536
    consumed = 0
    sent: list[dict] = []

    async def receive():
        nonlocal consumed
        if consumed >= 8 * 2**20:
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += len(chunk)
        prefix = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' if consumed == len(
            chunk) else b""
        return {"type": "http.request", "body": prefix + chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/sessions", "raw_path": b"/api/sessions", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"multipart/form-data; boundary=b"),
                    (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    status = next(message["status"] for message in sent if message["type"] == "http.response.start")
    assert status == 413
    assert consumed <= 2000 + 64 * 1024 + len(chunk)


# ---------------------------------------------------------------------------------- one image reader


def test_a_16_bit_png_upload_is_scaled_like_the_folder_and_the_cli(engine, folder, tmp_path):
    from fbrs.images import read_image

    ramp = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)
    data = encoded(ramp)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    (folder / "deep.png").write_bytes(data)
    app = folder_app(engine, folder, tmp_path)
    with client_for(app) as client:
        uploaded = client.post("/api/sessions", files={"image": ("deep.png", data)}).json()["session_id"]
        from_folder = client.post("/api/images/deep.png/session").json()["session_id"]
        store = app.state.store
        upload_image, folder_image = store.get(uploaded).image, store.get(from_folder).image
    np.testing.assert_array_equal(upload_image, folder_image)
    np.testing.assert_array_equal(upload_image, read_image(folder / "deep.png"))
    assert 120 < upload_image.mean() < 135  # scaled by 1/257, not clipped to white


def oriented_jpeg(width: int, height: int, orientation: int) -> bytes:
    picture = np.zeros((height, width, 3), np.uint8)
    picture[: height // 2] = 250  # top half bright, as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(picture, "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_applied_to_uploads_and_folder_images(engine, folder, tmp_path):
    data = oriented_jpeg(60, 40, 6)  # stored 60x40; shown turned 90 degrees: 40 wide, 60 high
    (folder / "turned.jpg").write_bytes(data)
    app = folder_app(engine, folder, tmp_path)
    with client_for(app) as client:
        listing = {item["name"]: item for item in client.get("/api/images").json()}
        assert (listing["turned.jpg"]["width"], listing["turned.jpg"]["height"]) == (40, 60)
        state = client.post("/api/images/turned.jpg/session").json()
        assert (state["width"], state["height"]) == (40, 60)
        upload = client.post("/api/sessions", files={"image": ("t.jpg", data)}).json()
        assert (upload["width"], upload["height"]) == (40, 60)
        image = app.state.store.get(upload["session_id"]).image
        # Orientation 6 = rotate 90 degrees clockwise to view: the stored top half becomes the right half.
        assert image[:, 30:].mean() > 200 and image[:, :10].mean() < 50
        response = client.post("/api/predict", files={"image": ("t.jpg", data)},
                               data={"clicks": json.dumps([{"x": 39, "y": 59, "positive": True}])})
        assert response.status_code == 200  # (39, 59) is inside the 40x60 image as displayed


def test_docs_page_loads_nothing_from_outside(engine, folder, tmp_path):
    with client_for(folder_app(engine, folder, tmp_path)) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "/openapi.json" in page.text
        scripts = [client.get("/static/docs.js").text, page.text]
        assert all("cdn" not in text.lower() for text in scripts)
        assert all("://" not in text for text in scripts)
        assert client.get("/openapi.json").json()["paths"]


# ---------------------------------------------------------------------------------- sessions, folders


def test_concurrent_opens_of_one_image_share_one_session(engine, folder, tmp_path, monkeypatch):
    app = folder_app(engine, folder, tmp_path)
    project = app.state.project
    load = project.load_image

    def slow_load(name):
        time.sleep(0.2)  # widens the window in which concurrent opens used to each create a session
        return load(name)

    monkeypatch.setattr(project, "load_image", slow_load)
    with LiveServer(app) as server:
        results: list[str] = []

        def open_coffee():
            with httpx.Client(base_url=server.url, timeout=60) as http:
                results.append(http.post("/api/images/coffee.jpg/session").json()["session_id"])

        threads = [threading.Thread(target=open_coffee) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == 8 and len(set(results)) == 1
        assert sum(session.image_name == "coffee.jpg" for session in app.state.store.sessions()) == 1
        # Two tabs finishing objects: both objects are kept.
        with httpx.Client(base_url=server.url, timeout=60) as first, httpx.Client(base_url=server.url) as second:
            for tab, x in ((first, CREMA["x"]), (second, CREMA["x"] + 100)):
                session = tab.post("/api/images/coffee.jpg/session").json()["session_id"]
                tab.post(f"/api/sessions/{session}/clicks", json={"x": x, "y": CREMA["y"], "positive": True})
                assert tab.post(f"/api/sessions/{session}/finish").status_code == 200
    log = json.loads((tmp_path / "out" / "clicks" / "coffee.json").read_text())
    assert [item["id"] for item in log["objects"]] == [1, 2]


def test_an_unreadable_file_in_the_folder_is_skipped_with_a_warning(engine, folder, tmp_path, caplog):
    (folder / "empty.jpg").write_bytes(b"")
    os.symlink("/etc/passwd", folder / "passwd.jpg")
    with caplog.at_level("WARNING", logger="fbrs.app"):
        app = folder_app(engine, folder, tmp_path)
    assert "empty.jpg" in caplog.text and "passwd.jpg" in caplog.text
    with client_for(app) as client:
        response = client.get("/api/images")
        assert response.status_code == 200
        assert [item["name"] for item in response.json()] == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]
        assert set(client.get("/api/info").json()["folder"]["skipped"]) == {"empty.jpg", "passwd.jpg"}
        assert client.post("/api/images/passwd.jpg/session").status_code == 404
        # A file that breaks while the app runs drops out of the list; the others stay.
        (folder / "chelsea.jpg").write_bytes(b"broken")
        app.state.project._status.pop("chelsea.jpg", None)
        assert [item["name"] for item in client.get("/api/images").json()] == ["astronaut.jpg", "coffee.jpg"]
        assert "chelsea.jpg" in client.get("/api/info").json()["folder"]["skipped"]


@pytest.mark.parametrize("bound", [{"max_session_bytes": 1}, {"max_sessions": 1}], ids=["memory", "count"])
def test_evicted_sessions_are_rebuilt_with_their_clicks(engine, folder, tmp_path, bound):
    """Memory (or count) pressure evicts, but a session that existed never answers 404: it is rebuilt from
    what was saved at eviction (its click log), the unfinished object's clicks replayed."""
    app = folder_app(engine, folder, tmp_path, **bound)  # room for one session only
    store = app.state.store
    with client_for(app) as client:
        uploads = [client.post("/api/sessions", files={"image": ("i.png", encoded(SMALL + index))}).json()["session_id"]
                   for index in range(3)]
        coffee = client.post("/api/images/coffee.jpg/session").json()["session_id"]
        for round_number in range(2):
            for index, session in enumerate([*uploads, coffee]):
                response = client.post(f"/api/sessions/{session}/clicks",
                                       json={"x": 3 + index, "y": 2 + round_number, "positive": True})
                assert response.status_code == 200, response.text
                assert len(store) == 1
        client.post(f"/api/sessions/{uploads[0]}/finish")
        for index, session in enumerate([*uploads, coffee]):
            state = client.get(f"/api/sessions/{session}").json()
            assert state["session_id"] == session
            clicks = [(click["x"], click["y"]) for click in state["clicks"]]
            assert clicks == ([] if index == 0 else [(3 + index, 2), (3 + index, 3)])
        assert len(client.get(f"/api/sessions/{uploads[0]}").json()["objects"]) == 1
        assert store.evictions >= 8 and store.restores >= 8
        image = np.asarray(Image.open(io.BytesIO(client.get(f"/api/sessions/{uploads[2]}/image").content)))
        assert abs(float(image.mean()) - 92) < 3  # the right image came back
        assert client.delete(f"/api/sessions/{uploads[1]}").status_code == 204
        assert client.get(f"/api/sessions/{uploads[1]}").status_code == 404


# ------------------------------------------------------------------------------------------ security


def test_foreign_hosts_and_cross_origin_writes_are_refused(engine, folder, tmp_path):
    app = folder_app(engine, folder, tmp_path)
    with client_for(app) as client:
        assert client.get("/api/info", headers={"host": "attacker.example"}).status_code == 400
        assert client.get("/api/info", headers={"host": "localhost:8000"}).status_code == 200
        upload = {"files": {"image": ("i.png", encoded(SMALL))}}
        response = client.post("/api/sessions", headers={"origin": "http://attacker.example"}, **upload)
        assert response.status_code == 403
        response = client.post("/api/sessions", headers={"origin": "null"}, **upload)
        assert response.status_code == 403
        response = client.post("/api/sessions", headers={"origin": "http://127.0.0.1:8000", "host": "127.0.0.1:8001"},
                               **upload)
        assert response.status_code == 403  # another port is another origin
        response = client.post("/api/sessions", headers={"origin": LOCAL}, **upload)
        assert response.status_code == 201  # the app's own page
        assert client.post("/api/sessions", **upload).status_code == 201  # no Origin: not a browser
        assert client.get("/api/images", headers={"origin": "http://attacker.example"}).status_code == 200
    configured = create_app(engine, AnnotationProject(folder, tmp_path / "out2"), allowed_hosts=["annotate.lan"],
                            allowed_origins=["https://labels.example.org"])
    with TestClient(configured, base_url="http://annotate.lan") as client:
        assert client.get("/api/info").status_code == 200
        assert client.get("/api/info", headers={"host": "127.0.0.1"}).status_code == 400
        response = client.post("/api/sessions", headers={"origin": "https://labels.example.org"},
                               files={"image": ("i.png", encoded(SMALL))})
        assert response.status_code == 201


def test_eviction_passes_over_a_busy_session_and_never_blocks_the_store(engine, folder, tmp_path):
    app = folder_app(engine, folder, tmp_path, max_sessions=2)
    store = app.state.store
    with client_for(app) as client:
        first, second = (client.post("/api/sessions", files={"image": ("i.png", encoded(SMALL))}).json()["session_id"]
                         for _ in range(2))
        busy = store.get(first)
        store.get(second)  # `first` is now the least recently used
        results = {}
        with busy.lock:  # stands in for a long prediction of `first`
            worker = threading.Thread(target=lambda: results.update(
                info=client.get("/api/info"),
                third=client.post("/api/sessions", files={"image": ("i.png", encoded(SMALL))})))
            worker.start()
            worker.join(timeout=20)
            assert not worker.is_alive(), "the store waited for a busy session"
        assert results["info"].status_code == 200 and results["third"].status_code == 201
        assert not busy.closed and first in {session.session_id for session in store.sessions()}
        assert client.get(f"/api/sessions/{second}").status_code == 200  # the idle one was evicted, and comes back


def test_memory_estimate_counts_the_predictor_states_kept_for_undo():
    from fbrs.app.sessions import AnnotationSession
    from fbrs.inference.clicks import Click
    from tests.test_app_helpers import tiny_engine

    image = np.asarray(Image.open(sample_folder_file("coffee.jpg")))
    session = AnnotationSession(image, tiny_engine())
    sizes = [session.memory_bytes()]
    for index in range(3):
        session.add_click(Click(CREMA["y"], CREMA["x"] + 10 * index, True))
        sizes.append(session.memory_bytes())
    assert sizes[0] == image.nbytes and sizes == sorted(sizes) and len(set(sizes)) == 4
    session.undo()
    assert session.memory_bytes() == sizes[-1]  # the undone step is kept for redo
    session.reset_object()
    assert session.memory_bytes() < sizes[1]


def sample_folder_file(name: str):
    from fbrs.app.cli import SAMPLES_DIR

    return SAMPLES_DIR / name


def test_a_session_in_use_is_never_evicted_under_it(engine):
    """Under load (more users than --max-sessions) a session must not be evicted between being looked up
    and being used: it is pinned for the request, and the bound waits for it (the load test's 404s)."""
    from fbrs.app.sessions import AnnotationSession
    from fbrs.app.store import SessionStore

    store = SessionStore(max_sessions=1)
    first = store.add(AnnotationSession(SMALL, engine))
    with store.checkout(first.session_id) as session:
        second = store.add(AnnotationSession(SMALL, engine))
        assert session is first and not first.closed and len(store) == 2  # over the bound while in use
    assert first.closed and [item.session_id for item in store.sessions()] == [second.session_id]
