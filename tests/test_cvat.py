"""CVAT interactor (contract version 2): the nuclio function of integrations/cvat/fbrs driven with CVAT-shaped
events (nuclio's context and event replaced by minimal stand-ins), and the same contract over HTTP, in-process
and from a real `fbrs serve cvat` on loopback."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import fbrs
from fbrs.serve.cvat import CvatInteractor, create_cvat_app, largest_outer_contour, parse_request
from fbrs.serve.segmenter import WarmSegmenter

REPO_ROOT = Path(__file__).resolve().parents[1]
FUNCTION_DIR = REPO_ROOT / "integrations" / "cvat" / "fbrs"
SAMPLE = REPO_ROOT / "src" / "fbrs" / "data" / "samples" / "chelsea.jpg"  # 451 x 300
IMAGE_B64 = base64.b64encode(SAMPLE.read_bytes()).decode()


# -- nuclio stand-ins: the attributes CVAT's functions use, nothing more ----------------------------------
class _Logger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    warn = error = debug = info


class _Response:
    def __init__(self, body, headers, content_type, status_code) -> None:
        self.body, self.headers, self.content_type, self.status_code = body, headers, content_type, status_code


def _context() -> SimpleNamespace:
    return SimpleNamespace(user_data=SimpleNamespace(), logger=_Logger(), Response=_Response)


def _event(body) -> SimpleNamespace:
    # nuclio hands a JSON body to Python as a dict when the content type is application/json, else as bytes.
    return SimpleNamespace(body=body, content_type="application/json", method="POST", path="/")


@pytest.fixture(scope="module")
def model():
    return fbrs.load_default_model()


@pytest.fixture(scope="module")
def nuclio_main():
    spec = importlib.util.spec_from_file_location("fbrs_cvat_main", FUNCTION_DIR / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def function(nuclio_main, model):
    """A deployed function: init_context ran once, as nuclio does per worker (here with NoBRS: fast)."""
    context = _context()
    segmenter = WarmSegmenter(model, mode="NoBRS")
    nuclio_main.init_context(context, segmenter=segmenter)
    return SimpleNamespace(context=context, segmenter=segmenter,
                           call=lambda body: nuclio_main.handler(context, _event(body)))


def _expected_mask(segmenter: WarmSegmenter, clicks_yx_positive) -> np.ndarray:
    from fbrs.images import load_image

    predictor = segmenter.new_predictor()
    predictor.set_image(load_image(SAMPLE))
    for y, x, positive in clicks_yx_positive:
        probabilities = predictor.add_click(y, x, positive)
    return probabilities > predictor.prob_threshold


def test_function_yaml_declares_an_interactor_version_2_built_with_pip():
    text = (FUNCTION_DIR / "function.yaml").read_text()
    for pattern in (r"\n    type: interactor\n", r"\n    version: 2\n", r"\n    min_pos_points: 1\n",
                    r"\n  handler: main:handler\n", r"runtime: 'python:3\.1\d'", r"baseImage: python:3\.\d+-slim",
                    r"pip install /opt/nuclio/wheels/fbrs-\*\.whl"):
        assert re.search(pattern, text), pattern
    assert "value: git clone" not in text and "curl" not in text  # nothing fetched outside pip


def test_nuclio_handler_answers_the_mask_fbrs_gives_and_its_outer_contour(function):
    response = function.call({"image": IMAGE_B64, "pos_points": [[200, 150]], "neg_points": [[20, 20]],
                              "obj_bbox": None})
    assert response.status_code == 200 and response.content_type == "application/json"
    body = json.loads(response.body)
    mask = np.array(body["mask"], dtype=np.uint8)
    assert mask.shape == (300, 451) and set(np.unique(mask)) <= {0, 1}
    # CVAT's (x, y) is fbrs's (y, x); positives first, then negatives.
    expected = _expected_mask(function.segmenter, [(150, 200, True), (20, 20, False)])
    assert expected.any() and np.array_equal(mask.astype(bool), expected)
    points = np.array(body["points"])
    assert points.ndim == 2 and points.shape[1] == 2 and len(points) >= 3
    assert points[:, 0].max() <= 451 and points[:, 1].max() <= 300
    from skimage.draw import polygon

    filled = np.zeros(mask.shape, bool)
    filled[polygon(points[:, 1], points[:, 0], mask.shape)] = True
    from skimage.measure import label

    components = label(mask.astype(bool))
    largest = components == np.bincount(components.ravel())[1:].argmax() + 1
    assert (filled & largest).sum() / (filled | largest).sum() > 0.9


def test_nuclio_body_as_json_bytes_and_a_clicked_object_costs_one_click_per_new_point(function):
    calls = []
    original = function.segmenter.segment

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(result.computed_clicks)
        return result

    function.segmenter.segment = spy
    requests = [  # CVAT sends the lists again with every new point; a positive after a negative comes too
        {"pos_points": [[200, 150]], "neg_points": []},
        {"pos_points": [[200, 150]], "neg_points": [[20, 20]]},
        {"pos_points": [[200, 150], [300, 100]], "neg_points": [[20, 20]]},
    ]
    for request in requests:
        response = function.call(json.dumps({"image": IMAGE_B64, **request}).encode())
        assert response.status_code == 200, response.body
    assert calls == [1, 1, 1]
    # The order fbrs used is the order of the clicks: p1, n1, p2.
    expected = _expected_mask(function.segmenter, [(150, 200, True), (20, 20, False), (100, 300, True)])
    assert np.array_equal(np.array(json.loads(response.body)["mask"], bool), expected)


def test_obj_bbox_cuts_the_mask_to_the_box(function):
    response = function.call({"image": IMAGE_B64, "pos_points": [[200, 150]], "neg_points": [],
                              "obj_bbox": [[150, 100], [260, 220]], "threshold": 0.3})
    assert response.status_code == 200
    mask = np.array(json.loads(response.body)["mask"], bool)
    assert mask.any() and not mask[:100].any() and not mask[221:].any()
    assert not mask[:, :150].any() and not mask[:, 261:].any()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": "not base64 at all!"}, "not valid base64"),
        ({"image": base64.b64encode(b"GIF89a broken").decode()}, "not a readable image"),
        ({"image": None}, "base64 of the frame"),
        ({"pos_points": []}, "at least one point"),
        ({"pos_points": [[10]]}, "an [x, y] pair"),
        ({"pos_points": "10,10"}, "list of [x, y]"),
        ({"pos_points": [[10, 1e9]]}, "outside the 451x300 image"),
        ({"pos_points": [[-1, 10]]}, "outside the 451x300 image"),
        ({"neg_points": [[float("nan"), 3]]}, "finite number"),
        ({"pos_points": [[True, 3]]}, "finite number"),
        ({"obj_bbox": [[1, 2]]}, "obj_bbox"),
        ({"obj_bbox": [[500, 400], [600, 500]]}, "does not overlap"),
        ({"threshold": 1.5}, "strictly between 0 and 1"),
        ({"pos_points": [[1, 1]] * 101}, "at most 100"),
    ],
)
def test_bad_requests_are_a_400_with_a_message_before_any_work(function, change, message):
    def refuse(*args, **kwargs):
        raise AssertionError("the segmenter ran on a bad request")

    function.segmenter.segment = refuse
    body = {"image": IMAGE_B64, "pos_points": [[10, 10]], "neg_points": [], "obj_bbox": None, **change}
    response = function.call(body)
    assert response.status_code == 400
    assert message in json.loads(response.body)["error"]
    assert any(message in line for line in function.context.logger.lines)


def test_a_body_that_is_not_json_or_an_image_over_the_pixel_limit(function):
    assert function.call(b"{not json").status_code == 400
    assert function.call(["a list"]).status_code == 400
    small = CvatInteractor(function.segmenter, max_pixels=1000)
    status, body = small.handle({"image": IMAGE_B64, "pos_points": [[1, 1]], "neg_points": []})
    assert status == 413 and "limit is 1000 pixels" in body["error"]


def test_parse_request_converts_x_y_to_clicks_y_x_without_decoding_pixels():
    request = parse_request({"image": IMAGE_B64, "pos_points": [[5.5, 7]], "neg_points": [[1, 2]],
                             "obj_bbox": [[10.2, 20.7], [3, 4]]})
    assert (request.width, request.height) == (451, 300)
    assert [(c.y, c.x, c.is_positive) for c in request.clicks] == [(7, 5.5, True), (2, 1, False)]
    assert request.box == (4, 21, 3, 11)  # (rmin, rmax, cmin, cmax), grown to whole pixels


def test_largest_outer_contour_goes_around_the_biggest_region_not_its_hole():
    mask = np.zeros((40, 60), bool)
    mask[5:35, 10:50] = True
    mask[15:25, 20:40] = False  # a hole
    mask[1:3, 1:3] = True  # a speck
    points = np.array(largest_outer_contour(mask))
    # Pixel edges are at +-0.5; simplified to within half a pixel.
    assert points[:, 0].min() == pytest.approx(9.5, abs=0.5) and points[:, 0].max() == pytest.approx(49.5, abs=0.5)
    assert points[:, 1].min() == pytest.approx(4.5, abs=0.5) and points[:, 1].max() == pytest.approx(34.5, abs=0.5)
    assert len(points) <= 8  # the rectangle's corners (cut at 45 degrees), not a point per pixel
    assert largest_outer_contour(np.zeros((4, 4), bool)) == []


def test_http_route_in_process(model):
    from fastapi.testclient import TestClient

    client = TestClient(create_cvat_app(CvatInteractor(WarmSegmenter(model, mode="NoBRS"))))
    assert client.get("/health").json()["status"] == "UP"
    response = client.post("/", json={"image": IMAGE_B64, "pos_points": [[200, 150]], "neg_points": []})
    assert response.status_code == 200
    assert np.array(response.json()["mask"]).shape == (300, 451)
    bad = client.post("/interact", content=b"{", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.communicate()[0]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def test_fbrs_serve_cvat_on_loopback_answers_real_requests():
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fbrs.cli", "serve", "cvat", "--port", str(port), "--mode", "NoBRS"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/health", process)

        def post(body: bytes, host: str | None = None):
            request = urllib.request.Request(f"{base}/", data=body, headers={"Content-Type": "application/json"})
            if host:
                request.add_header("Host", host)
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        status, body = post(json.dumps({"image": IMAGE_B64, "pos_points": [[200, 150]], "neg_points": []}).encode())
        assert status == 200 and np.array(body["mask"]).shape == (300, 451) and body["points"]
        status, body = post(json.dumps({"image": IMAGE_B64, "pos_points": [], "neg_points": []}).encode())
        assert status == 400 and "at least one point" in body["error"]
        status, body = post(b"{}", host="attacker.example")  # loopback server: other names are refused
        assert status == 400 and "not allowed" in body["detail"]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
