"""Property-based fuzzing (hypothesis) of the API and of the readers behind it: whatever a client sends,
the answer is a 4xx (or a success), never a 500; the server keeps serving; files on disk are never
half-written; the image, click and checkpoint readers raise only their clear error types.

Bounded: a few dozen examples per property and no deadline, so the module adds seconds, not minutes,
to `make test`. The engine is `recording` (no network), so the time goes into the request paths.
"""

from __future__ import annotations

import io
import json
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fbrs.errors import CheckpointError, InvalidClickError, InvalidImageError
from tests.test_app_helpers import recording_engine, sample_folder
from tests.test_app_hostile import client_for, encoded, folder_app

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=15,
)
click_like = st.fixed_dictionaries(
    {}, optional={"x": json_values, "y": json_values, "positive": json_values,
                  "prob_threshold": json_values, "mode": json_values, "zoom_in": json_values, "flip": json_values},
)


def sample_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    return [encoded(picture, "PNG"), encoded(picture, "JPEG"), encoded(picture, "BMP"), encoded(picture, "TIFF"),
            encoded(picture[:, :, 0], "GIF"), encoded((picture[:, :, 0].astype(np.uint16) * 257), "PNG")]


@st.composite
def mangled_images(draw) -> bytes:
    """A valid small image file with bytes flipped, cut or spliced, or plain random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(sample_images())))
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def assert_clean(response) -> None:
    assert response.status_code < 500, (response.request.method, response.request.url, response.text[:300])
    if response.headers.get("content-type", "").startswith("application/json"):
        json.loads(response.text)  # serialisable: no NaN, no half body


@pytest.fixture
def app(tmp_path):
    return folder_app(recording_engine(), sample_folder(tmp_path), tmp_path)


def test_json_routes_answer_4xx_to_anything(app):
    with client_for(app) as client:
        session = client.post("/api/images/coffee.jpg/session").json()["session_id"]

        @FUZZ
        @given(body=click_like | json_values, route=st.sampled_from(["clicks", "settings"]))
        def check(body, route):
            content = json.dumps(body, allow_nan=True)
            method = client.post if route == "clicks" else client.put
            assert_clean(method(f"/api/sessions/{session}/{route}", content=content,
                                headers={"content-type": "application/json"}))

        check()
        assert client.get(f"/api/sessions/{session}").status_code == 200


def test_query_and_path_values_answer_4xx(app):
    with client_for(app) as client:
        session = client.post("/api/images/coffee.jpg/session").json()["session_id"]

        @FUZZ
        @given(value=st.text(max_size=40) | st.integers(-10**40, 10**40).map(str) | st.just("7" * 5000))
        def check(value):
            assert_clean(client.get(f"/api/sessions/{session}/mask", params={"object": value}))
            assert_clean(client.get(f"/api/sessions/{session}/image", params={"max_side": value}))
            segment = quote(value, safe="")
            assert_clean(client.get(f"/api/sessions/{segment}"))
            assert_clean(client.post(f"/api/images/{segment}/session"))

        check()


def test_uploads_of_mangled_images_answer_4xx(app):
    with client_for(app) as client:
        @FUZZ
        @given(data=mangled_images())
        def check(data):
            response = client.post("/api/sessions", files={"image": ("x.png", data)})
            assert_clean(response)
            if response.status_code == 201:
                session = response.json()["session_id"]
                assert client.get(f"/api/sessions/{session}/image").status_code == 200
                assert client.delete(f"/api/sessions/{session}").status_code == 204

        check()


def test_stateless_predict_answers_4xx_to_any_clicks_and_masks(app):
    image = sample_images()[0]
    with client_for(app) as client:
        @FUZZ
        @given(clicks=st.lists(click_like, max_size=4).map(json.dumps) | st.text(max_size=60),
               mask=st.none() | mangled_images(),
               form=st.dictionaries(st.sampled_from(["mode", "zoom_in", "prob_threshold", "flip", "format"]),
                                    st.text(max_size=8), max_size=3))
        def check(clicks, mask, form):
            files = {"image": ("i.png", image)}
            if mask is not None:
                files["previous_mask"] = ("m.png", mask)
            assert_clean(client.post("/api/predict", files=files, data={"clicks": clicks, **form}))

        check()
        assert client.get("/api/info").status_code == 200


operations = st.lists(
    st.one_of(
        st.tuples(st.just("click"), st.integers(-5, 610), st.integers(-5, 410), st.booleans()),
        st.tuples(st.sampled_from(["undo", "redo", "reset", "finish", "save"])),
        st.tuples(st.just("delete"), st.integers(0, 4)),
        st.tuples(st.just("threshold"), st.floats(0.01, 0.99)),
    ),
    max_size=12,
)


def test_any_sequence_of_edits_leaves_whole_files(app, tmp_path):
    from fbrs.app.export import load_image_annotation, read_instance_png

    out_dir = tmp_path / "out"
    with client_for(app) as client:
        session = client.post("/api/images/coffee.jpg/session").json()["session_id"]

        @settings(max_examples=15, deadline=None, derandomize=True)
        @given(steps=operations)
        def check(steps):
            for step in steps:
                if step[0] == "click":
                    response = client.post(f"/api/sessions/{session}/clicks",
                                           json={"x": step[1], "y": step[2], "positive": step[3]})
                elif step[0] == "delete":
                    response = client.delete(f"/api/sessions/{session}/objects/{step[1]}")
                elif step[0] == "threshold":
                    response = client.put(f"/api/sessions/{session}/settings", json={"prob_threshold": step[1]})
                else:
                    response = client.post(f"/api/sessions/{session}/{step[0]}")
                assert_clean(response)
            state = client.get(f"/api/sessions/{session}").json()
            saved = load_image_annotation(out_dir, "coffee.jpg")
            if saved is not None:  # what is on disk parses and agrees with the session's finished objects
                assert [item.object_id for item in saved.objects] == [item["id"] for item in state["objects"]]
                if saved.objects:
                    assert read_instance_png(out_dir / "masks" / "coffee.png").shape == (400, 600)
            for name in ("coco_instances.json", "coco_instances_polygons.json"):
                if (out_dir / name).exists():
                    json.loads((out_dir / name).read_text())
            assert not list(out_dir.rglob("*.tmp"))

        check()


# ----------------------------------------------------------------------------------------------- readers


@FUZZ
@given(data=mangled_images())
def test_the_image_reader_returns_rgb_or_raises_invalid_image(data):
    from fbrs.images import load_image, load_mask

    try:
        image = load_image(data, max_pixels=10_000)
    except InvalidImageError:
        pass
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    try:
        mask = load_mask(data, width=16, height=12, max_pixels=10_000)
    except InvalidImageError:
        pass
    else:
        assert mask.shape == (12, 16) and mask.dtype == bool


@FUZZ
@given(text=st.text(max_size=30) | st.from_regex(r"-?[0-9.e]{0,6},-?[0-9.e]{0,6},[+\-a-z01]{0,3}", fullmatch=True))
def test_the_click_reader_returns_a_click_or_raises_invalid_click(text):
    from fbrs.inference.cli import parse_click

    try:
        y, x, positive = parse_click(text)
    except InvalidClickError:
        return
    assert isinstance(y, float) and isinstance(x, float) and isinstance(positive, bool)


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    from fbrs.models import build_model, save_model

    path = save_model(build_model("tiny_test"), tmp_path_factory.mktemp("fuzz") / "tiny.safetensors")
    return path.read_bytes()


def test_the_checkpoint_reader_raises_only_checkpoint_errors(checkpoint_bytes, tmp_path):
    from fbrs.models import load_model

    @settings(max_examples=20, deadline=None, derandomize=True)
    @given(data=st.data())
    def check(data):
        content = bytearray(checkpoint_bytes)
        kind = data.draw(st.sampled_from(["flip", "cut", "random"]))
        if kind == "random":
            content = bytearray(data.draw(st.binary(max_size=200)))
        elif kind == "cut":
            content = content[: data.draw(st.integers(0, len(content) - 1))]
        else:
            header_length = min(len(content) - 1, 8 + int.from_bytes(content[:8], "little"))
            for _ in range(data.draw(st.integers(1, 4))):
                content[data.draw(st.integers(0, header_length))] = data.draw(st.integers(0, 255))
        path = tmp_path / "fuzzed.safetensors"
        path.write_bytes(bytes(content))
        try:
            load_model(path)
        except CheckpointError:
            pass

    check()


def test_fuzzed_images_can_be_encoded_back():  # the sample set itself must be valid, or the fuzzing is blind
    for data in sample_images():
        with Image.open(io.BytesIO(data)) as image:
            image.load()
