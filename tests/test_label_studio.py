"""The Label Studio ML backend (`fbrs serve label-studio`): the protocol in-process, the task image reader on
loopback servers, and the whole loop against a REAL Label Studio (started here from its own venv, see
label_studio_env.py): project + local storage + task through label-studio-sdk, the backend connected with
interactive pre-annotations on, clicks sent as the frontend sends them, and the brush RLE Label Studio
returns decoded with Label Studio's decoder and compared with fbrs.Predictor's mask for the same clicks.

Without Label Studio's venv the real-server test skips with the reason; under CI=true it installs it, and a
failure to set it up fails the test."""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import fbrs
from fbrs.images import load_image
from fbrs.serve.segmenter import WarmSegmenter
from fbrs.serve.task_images import ImageFetchError, LabelStudioConnection, TaskImageReader
from tests import label_studio_env

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO_ROOT / "src" / "fbrs" / "data"  # LOCAL_FILES_DOCUMENT_ROOT; a storage must be a subfolder
SAMPLES = DATA_ROOT / "samples"
SAMPLE = SAMPLES / "astronaut.jpg"  # 512 x 512
ON_CI = os.environ.get("CI", "").lower() == "true"

LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <KeyPointLabels name="click" toName="image" smart="true">
    <Label value="Astronaut" smart="true" background="#2277ee"/>
  </KeyPointLabels>
  <BrushLabels name="mask" toName="image">
    <Label value="Astronaut" background="#2277ee"/>
  </BrushLabels>
</View>"""


def _require_brush_encoder() -> None:
    from fbrs.errors import MissingDependencyError
    from fbrs.serve.brush_rle import brush_module

    try:
        brush_module()
    except MissingDependencyError as error:
        if ON_CI:
            pytest.fail(f"CI=true but {error}")
        pytest.skip(str(error))


def keypoint(x_percent: float, y_percent: float, positive: bool, width: int = 512, height: int = 512,
             region_id: str = "k") -> dict:
    """A smart keypoint as Label Studio's frontend serializes it (KeyPointRegion.serialize, dynamic)."""
    return {
        "id": region_id, "from_name": "click", "to_name": "image", "type": "keypointlabels", "origin": "manual",
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": x_percent, "y": y_percent, "width": 0.6, "keypointlabels": ["Astronaut"],
                  "labels": ["Astronaut"]},
        "is_positive": positive,
    }


def reference_mask(segmenter: WarmSegmenter, image: np.ndarray, regions: list[dict]) -> np.ndarray:
    """fbrs.Predictor's mask for the same clicks, converted from percent as the backend converts them."""
    predictor = segmenter.new_predictor()
    predictor.set_image(image)
    height, width = image.shape[:2]
    for region in regions:
        y = min(region["value"]["y"] * height / 100, height - 1)
        x = min(region["value"]["x"] * width / 100, width - 1)
        probabilities = predictor.add_click(y, x, region["is_positive"])
    return probabilities > predictor.prob_threshold


CLICKS = [keypoint(40, 62, True, region_id="p1"), keypoint(92, 8, False, region_id="n1"),
          keypoint(48, 22, True, region_id="p2")]


# -- the protocol, in-process ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return fbrs.load_default_model()


@pytest.fixture
def backend(model):
    from fastapi.testclient import TestClient

    from fbrs.serve.label_studio import LabelStudioBackend, create_label_studio_app

    _require_brush_encoder()
    segmenter = WarmSegmenter(model, mode="NoBRS", cache_size=2)
    state = LabelStudioBackend(segmenter, TaskImageReader(LabelStudioConnection(), local_files_root=DATA_ROOT))
    client = TestClient(create_label_studio_app(state))
    client.segmenter, client.state = segmenter, state
    return client


def _predict(client, regions, data=None, label_config=LABEL_CONFIG):
    context = {"result": regions} if regions is not None else None
    body = {"tasks": [{"id": 7, "data": data or {"image": "/data/local-files/?d=samples/astronaut.jpg"}}],
            "project": "1.1700000000", "label_config": label_config,
            "params": {"login": None, "password": None, "context": context}}
    # json.dumps writes NaN as Label Studio's Python would: the backend must refuse it, not crash.
    return client.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"})


def test_health_and_setup_answer_as_label_studio_expects(backend):
    for path in ("/", "/health"):
        health = backend.get(path).json()
        assert health["status"] == "UP" and health["model_version"] == "fbrs-0.1.0-NoBRS"
    setup = backend.post("/setup", json={"project": "1.1700000000", "schema": LABEL_CONFIG,
                                         "hostname": "http://localhost:8080", "access_token": "abc123",
                                         "model_version": None, "extra_params": None})
    assert setup.status_code == 200 and setup.json() == {"model_version": "fbrs-0.1.0-NoBRS"}
    connection = backend.state.images.connection
    assert (connection.url, connection.api_key) == ("http://localhost:8080", "abc123")
    assert backend.post("/versions").json()["versions"] == ["fbrs-0.1.0-NoBRS"]


def test_an_empty_context_answers_no_results(backend):
    for regions in (None, []):
        response = _predict(backend, regions)
        assert response.status_code == 200 and response.json()["results"] == []
    assert backend.segmenter.stats["requests"] == 0


def test_keypoint_clicks_answer_a_brush_region_in_label_studios_rle(backend):
    from fbrs.serve.brush_rle import rle_to_mask

    image = load_image(SAMPLE)
    for count in (1, 2, 3):
        response = _predict(backend, CLICKS[:count])
        assert response.status_code == 200, response.text
        body = response.json()
        [prediction] = body["results"]
        [region] = prediction["result"]
        assert prediction["model_version"] == body["model_version"] == "fbrs-0.1.0-NoBRS"
        assert {key: region[key] for key in ("type", "from_name", "to_name", "original_width", "original_height")} \
            == {"type": "brushlabels", "from_name": "mask", "to_name": "image", "original_width": 512,
                "original_height": 512}
        assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == ["Astronaut"]
        assert 0 < region["score"] <= 1 and prediction["score"] == region["score"]
        mask = rle_to_mask(region["value"]["rle"], 512, 512)
        assert mask.any() and np.array_equal(mask, reference_mask(backend.segmenter, image, CLICKS[:count]))
    # Warm: the k-th click cost one click (1 + 1 + 1), the image was read once.
    assert backend.segmenter.stats == {"requests": 3, "clicks_computed": 3, "images_loaded": 1}
    # Removing the last click (Label Studio's undo) finds the kept state: nothing to compute.
    assert _predict(backend, CLICKS[:2]).status_code == 200
    assert backend.segmenter.stats["clicks_computed"] == 3


def test_least_recently_used_images_are_dropped(backend):
    for name in ("astronaut.jpg", "coffee.jpg", "chelsea.jpg"):
        data = {"image": f"/data/local-files/?d=samples/{name}"}
        response = _predict(backend, [keypoint(50, 50, True)], data=data)
        assert response.status_code == 200, response.text
    assert len(backend.segmenter.cached_images) == 2 and backend.segmenter.stats["images_loaded"] == 3
    assert backend.get("/health").json()["images_warm"] == 2


def test_a_rectangle_alone_segments_inside_it(backend):
    from fbrs.serve.brush_rle import rle_to_mask

    box = {"id": "r", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
           "original_width": 512, "original_height": 512,
           "value": {"x": 25, "y": 40, "width": 30, "height": 50, "rotation": 0, "rectanglelabels": ["Astronaut"]}}
    response = _predict(backend, [box])
    assert response.status_code == 200, response.text
    region = response.json()["results"][0]["result"][0]
    mask = rle_to_mask(region["value"]["rle"], 512, 512)
    rows, cols = np.nonzero(mask)
    assert mask.any() and rows.min() >= 204 and rows.max() <= 461 and cols.min() >= 128 and cols.max() <= 282


@pytest.mark.parametrize(
    ("regions", "label_config", "data", "status", "message"),
    [
        ([keypoint(150, 20, True)], LABEL_CONFIG, None, 400, "outside the image (0-100 percent)"),
        ([keypoint(float("nan"), 20, True)], LABEL_CONFIG, None, 400, "finite number"),
        ([{**keypoint(10, 20, True), "is_positive": "yes"}], LABEL_CONFIG, None, 400, "is_positive"),
        ([keypoint(10, 20, True)], "<View><Image name='image' value='$image'/></View>", None, 400, "no BrushLabels"),
        ([keypoint(10, 20, True)], "<View", None, 400, "not valid XML"),
        ([keypoint(10, 20, True)], LABEL_CONFIG, {"text": "no image"}, 400, "no image URL"),
        ([keypoint(10, 20, True)], LABEL_CONFIG, {"image": "/data/upload/1/x.jpg"}, 502, "whose URL is unknown"),
        ([keypoint(10, 20, True)], LABEL_CONFIG, {"image": "s3://bucket/x.jpg"}, 502, "only http(s) URLs"),
        ([keypoint(10, 20, True)], LABEL_CONFIG, {"image": "/data/local-files/?d=../../../etc/passwd"}, 502,
         "not a file under the local files root"),
        ([keypoint(10, 20, True)], LABEL_CONFIG, {"image": "data:image/png;base64,iVBOR"}, 400, "not valid base64"),
    ],
)
def test_bad_requests_answer_4xx_or_502_with_a_message(backend, regions, label_config, data, status, message):
    response = _predict(backend, regions, data=data, label_config=label_config)
    assert response.status_code == status and message in response.json()["error"], response.text
    assert backend.segmenter.stats["clicks_computed"] == 0


def test_malformed_bodies(backend):
    assert backend.post("/predict", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert "list of task" in backend.post("/predict", json={"tasks": "x"}).json()["error"]
    assert backend.post("/setup", content=b"[]").status_code == 400


def test_brush_targets_read_the_labelling_config():
    from fbrs.serve.label_studio import BrushTarget, brush_targets

    assert brush_targets(LABEL_CONFIG) == (BrushTarget("mask", "image", "image", ("Astronaut",)),)


# -- image URLs: local files, Label Studio's host with its key, other hosts without ---------------------------
class _Recorder(http.server.BaseHTTPRequestHandler):
    """Serves the sample for GET, a fixed access token for POST /api/token/refresh; records what it got."""

    seen: list[tuple[str, str | None]]

    def do_GET(self):  # noqa: N802 - http.server's name
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        body = SAMPLE.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        self.seen.append((self.path, json.loads(self.rfile.read(length)).get("refresh")))
        body = json.dumps({"access": "short-lived"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorders():
    servers = []
    for _ in range(2):
        handler = type("Handler", (_Recorder,), {"seen": []})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield [(f"http://127.0.0.1:{server.server_address[1]}", server.RequestHandlerClass.seen) for server in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


def test_uploads_are_fetched_from_label_studio_with_its_key_other_hosts_get_no_key(recorders):
    (studio, studio_seen), (other, other_seen) = recorders
    reader = TaskImageReader(LabelStudioConnection(url=studio, api_key="legacy-key"))
    assert reader.read("/data/upload/3/astronaut.jpg").shape == (512, 512, 3)
    assert reader.read(f"{studio}/data/upload/3/a.jpg").shape == (512, 512, 3)
    assert reader.read(f"{other}/photos/a.jpg").shape == (512, 512, 3)
    assert studio_seen == [("/data/upload/3/astronaut.jpg", "Token legacy-key"), ("/data/upload/3/a.jpg",
                                                                                   "Token legacy-key")]
    assert other_seen == [("/photos/a.jpg", None)]
    assert reader.key("/data/upload/3/astronaut.jpg") == f"{studio}/data/upload/3/astronaut.jpg"
    with pytest.raises(ImageFetchError, match="HTTP 404"):
        reader.read("/missing.jpg")
    small = TaskImageReader(LabelStudioConnection(url=studio), max_bytes=1000)
    with pytest.raises(ImageFetchError, match="limit is 1000"):
        small.read("/data/upload/big.jpg")


def test_a_personal_access_token_is_exchanged_for_an_access_token(recorders):
    (studio, seen), _ = recorders
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"
    reader = TaskImageReader(LabelStudioConnection(url=studio, api_key=jwt))
    reader.read("/data/upload/1/a.jpg")
    reader.read("/data/upload/1/b.jpg")
    assert seen == [("/api/token/refresh", jwt), ("/data/upload/1/a.jpg", "Bearer short-lived"),
                    ("/data/upload/1/b.jpg", "Bearer short-lived")]


def test_local_files_and_data_urls_are_read_in_place():
    reader = TaskImageReader(LabelStudioConnection(), local_files_root=DATA_ROOT)
    assert reader.read("/data/local-files/?d=samples%2Fchelsea.jpg").shape == (300, 451, 3)
    encoded = base64.b64encode(SAMPLE.read_bytes()).decode()
    assert reader.read(f"data:image/jpeg;base64,{encoded}").shape == (512, 512, 3)
    with pytest.raises(ImageFetchError, match="not a file under"):
        reader.read("/data/local-files/?d=")


def test_exif_orientation_is_applied_as_label_studio_shows_it(tmp_path):
    from PIL import Image

    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: shown 40 wide, 60 high
    Image.new("RGB", (60, 40), (200, 10, 10)).save(buffer, "JPEG", exif=exif)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "turned.jpg").write_bytes(buffer.getvalue())
    reader = TaskImageReader(LabelStudioConnection(), local_files_root=tmp_path)
    assert reader.read("/data/local-files/?d=images/turned.jpg").shape == (60, 40, 3)


# -- the real Label Studio -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A running Label Studio; skip (fail under CI=true) with the reason when it cannot be had."""
    try:
        label_studio_env.ensure_installed()
        server = label_studio_env.start_label_studio(tmp_path_factory.mktemp("label-studio-data"), DATA_ROOT)
    except label_studio_env.LabelStudioUnavailable as error:
        if ON_CI:
            pytest.fail(f"CI=true but Label Studio could not be set up: {error}")
        pytest.skip(str(error))
    yield server
    label_studio_env.stop(server.process)


@pytest.fixture(scope="module")
def fbrs_backend():
    """`fbrs serve label-studio` on loopback; Label Studio's URL and token reach it through /setup only."""
    port = label_studio_env.free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fbrs.cli", "serve", "label-studio", "--port", str(port), "--mode", "NoBRS"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        env={key: value for key, value in os.environ.items()
             if key not in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LOCAL_FILES_DOCUMENT_ROOT")},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        label_studio_env.wait_for_http(f"{url}/health", process, 90, "fbrs serve label-studio")
    except label_studio_env.LabelStudioUnavailable:
        label_studio_env.stop(process)
        raise
    yield url
    label_studio_env.stop(process)


def test_real_label_studio_gets_fbrs_masks_for_frontend_clicks(label_studio, fbrs_backend, model, tmp_path):
    _require_brush_encoder()
    spec = {
        "url": label_studio.url, "token": label_studio.token, "label_config": LABEL_CONFIG,
        "local_files_root": str(SAMPLES), "task_data": {"image": "/data/local-files/?d=samples/astronaut.jpg"},
        "backend_url": fbrs_backend, "out_dir": str(tmp_path),
        # The frontend sends every region of the object with each new click: 1, then 2, then 3 keypoints.
        "contexts": [CLICKS[:1], CLICKS[:2], CLICKS[:3]],
    }
    started = time.monotonic()
    result = label_studio_env.run_driver(Path(__file__).with_name("label_studio_driver.py"), spec)
    driver_seconds = time.monotonic() - started
    assert result["ml_backend"]["is_interactive"] is True
    assert "CONNECTED" in result["ml_backend"]["state"] or result["ml_backend"]["state"].endswith("CO"), result
    image = load_image(SAMPLE)
    segmenter = WarmSegmenter(model, mode="NoBRS")
    for count, response in enumerate(result["responses"], start=1):
        assert response["status"] == 200 and not response["errors"], (response, label_studio.log_tail())
        [region] = response["data"]["result"]
        assert region["type"] == "brushlabels" and region["from_name"] == "mask" and region["to_name"] == "image"
        assert (region["original_width"], region["original_height"]) == (512, 512)
        assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == ["Astronaut"]
        assert response["data"]["model_version"] == "fbrs-0.1.0-NoBRS"
        decoded = np.load(response["mask_file"])  # decoded in Label Studio's venv by label_studio_sdk
        expected = reference_mask(segmenter, image, CLICKS[:count])
        assert expected.any() and np.array_equal(decoded, expected), f"click {count}: masks differ"
    with urllib.request.urlopen(f"{fbrs_backend}/health", timeout=10) as answer:
        health = json.loads(answer.read())
    # The image came from Label Studio once (with the token /setup gave), and each click cost one click.
    assert health["images_loaded"] == 1 and health["clicks_computed"] == 3, health
    print(f"\nLabel Studio: install {label_studio_env.install_seconds()} s, start {label_studio.start_seconds:.1f} s; "
          f"driver {driver_seconds:.1f} s; interactive requests "
          f"{', '.join(str(response['seconds']) for response in result['responses'])} s")
