"""Labels (categories) in the annotation app: the project list, per-object labels, COCO and the click log."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fbrs.app.cli import build_app, labels_from_args
from fbrs.app.export import build_coco, decode_rle, read_instance_png
from fbrs.app.labels import LabelSet, load_labels_file, parse_labels_option
from fbrs.app.project import AnnotationProject
from fbrs.app.server import create_app
from fbrs.cli import build_parser, main
from fbrs.errors import ConfigError
from tests.test_app_helpers import CREMA, SPOON, TABLE, classical_mode, sample_folder, tiny_engine


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


@pytest.fixture
def folder(tmp_path):
    return sample_folder(tmp_path)


def make_client(engine, folder, out_dir, labels=None) -> TestClient:
    project = AnnotationProject(folder, out_dir, labels=labels)
    return TestClient(create_app(engine, project), base_url="http://127.0.0.1")


def open_coffee(client, engine) -> str:
    session = client.post("/api/images/coffee.jpg/session").json()["session_id"]
    assert client.put(f"/api/sessions/{session}/settings", json={"mode": classical_mode(engine)}).status_code == 200
    return session


# ------------------------------------------------------------------------------------------ label lists


def test_labels_from_the_cli_option_and_files(tmp_path):
    args = build_parser().parse_args(["app", "--labels", "cat, dog:#FF8800"])
    labels = labels_from_args(args.labels, args.labels_file)
    assert labels.names == ["cat", "dog"] and labels.explicit
    assert labels.color_of("dog") == "#ff8800"
    assert labels.color_of("cat").startswith("#") and len(labels.color_of("cat")) == 7
    assert labels.categories() == [{"id": 1, "name": "cat", "supercategory": "object"},
                                   {"id": 2, "name": "dog", "supercategory": "object"}]
    assert build_parser().parse_args(["app"]).labels is None
    assert labels_from_args(None, None) is None

    text = tmp_path / "labels.txt"
    text.write_text("# animals\ncat\n\ndog #00ff00\nred panda\n", encoding="utf-8")
    from_text = load_labels_file(text)
    assert from_text.names == ["cat", "dog", "red panda"] and from_text.color_of("dog") == "#00ff00"
    listed = tmp_path / "labels.json"
    listed.write_text(json.dumps(["cat", {"name": "dog", "color": "#112233"}]), encoding="utf-8")
    assert load_labels_file(listed).names == ["cat", "dog"]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"labels": [{"name": "bird"}]}), encoding="utf-8")
    assert labels_from_args(None, str(wrapped)).names == ["bird"]

    default = LabelSet()
    assert default.names == ["object"] and not default.explicit and default.color_of("object") is None
    assert default.categories() == [{"id": 1, "name": "object", "supercategory": "object"}]


@pytest.mark.parametrize("option", ["cat,cat", "cat,Cat", "cat,,dog", "cat:red", "cat:#12345", " , ", "a" * 65])
def test_bad_labels_are_refused(option):
    with pytest.raises(ConfigError):
        parse_labels_option(option)


def test_bad_label_files_and_options_are_refused(tmp_path, capsys, folder):
    for name, content in [("empty.txt", "# nothing\n"), ("bad.json", "{"), ("dict.json", '{"cat": 1}'),
                          ("twice.json", '["cat", "cat"]'), ("colour.json", '[{"name": "cat", "color": 3}]'),
                          ("extra.json", '[{"name": "cat", "size": 3}]')]:
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        with pytest.raises(ConfigError, match="labels file"):
            load_labels_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_labels_file(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="not both"):
        labels_from_args("cat", str(tmp_path / "empty.txt"))
    # The command refuses them with a message, before any model loads.
    assert main(["app", str(folder), "--labels", "cat,dog,cat"]) == 2
    assert "'cat' is given twice" in capsys.readouterr().err


def test_build_app_serves_the_labels_in_info(folder, tmp_path):
    from fbrs.models import build_model

    app = build_app(folder, out_dir=tmp_path / "out", model=build_model("tiny_test"),
                    labels=parse_labels_option("cat,dog"), backend="torch")
    with TestClient(app, base_url="http://127.0.0.1") as client:
        info = client.get("/api/info").json()
    assert [label["name"] for label in info["labels"]] == ["cat", "dog"]
    assert all(label["color"].startswith("#") for label in info["labels"])


# -------------------------------------------------------------------------------- labelled objects


def test_a_dog_ends_in_coco_with_the_dog_category(engine, folder, tmp_path):
    out_dir = tmp_path / "out"
    labels = parse_labels_option("cat,dog:#00aa00")
    with make_client(engine, folder, out_dir, labels) as client:
        session = open_coffee(client, engine)
        state = client.get(f"/api/sessions/{session}").json()
        assert state["current_object"]["label"] == "cat"  # the first label by default
        state = client.post(f"/api/sessions/{session}/clicks", json={**CREMA, "positive": True, "label": "dog"}).json()
        assert state["current_object"]["label"] == "dog" and state["current_object"]["color"] == "#00aa00"
        client.post(f"/api/sessions/{session}/clicks", json={**TABLE, "positive": False})
        finished = client.post(f"/api/sessions/{session}/finish").json()
        assert finished["objects"][0]["label"] == "dog" and finished["objects"][0]["color"] == "#00aa00"
        assert finished["current_object"]["label"] == "dog"  # the label stays for the next object
        client.put(f"/api/sessions/{session}/label", json={"label": "cat"})
        client.post(f"/api/sessions/{session}/clicks", json={**SPOON, "positive": True})
        client.post(f"/api/sessions/{session}/finish")
        response = client.get(f"/api/sessions/{session}/overlay.png", params={"max_side": 8192})
        overlay = np.asarray(Image.open(io.BytesIO(response.content)))
        assert tuple(overlay[CREMA["y"], CREMA["x"]]) == (0x00, 0xAA, 0x00, 255)  # drawn in the dog colour
        client.post(f"/api/sessions/{session}/save")

    coco = json.loads((out_dir / "coco_instances.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "cat", "supercategory": "object"},
                                  {"id": 2, "name": "dog", "supercategory": "object"}]
    by_object = {entry["fbrs_object_id"]: entry for entry in coco["annotations"]}
    assert by_object[1]["category_id"] == 2 and by_object[2]["category_id"] == 1
    labels_png = read_instance_png(out_dir / "masks" / "coffee.png")
    np.testing.assert_array_equal(decode_rle(by_object[1]["segmentation"]), labels_png == 1)
    polygons = json.loads((out_dir / "coco_instances_polygons.json").read_text())
    assert {entry["fbrs_object_id"]: entry["category_id"] for entry in polygons["annotations"]} == {1: 2, 2: 1}
    log = json.loads((out_dir / "clicks" / "coffee.json").read_text())
    assert [item["label"] for item in log["objects"]] == ["dog", "cat"]
    assert log["current_object"]["label"] == "cat"


def test_unknown_labels_get_4xx_and_change_nothing(engine, folder, tmp_path):
    with make_client(engine, folder, tmp_path / "out", parse_labels_option("cat,dog")) as client:
        session = open_coffee(client, engine)
        response = client.post(f"/api/sessions/{session}/clicks", json={**CREMA, "label": "horse"})
        assert response.status_code == 400 and "unknown label 'horse'" in response.json()["detail"]
        assert client.get(f"/api/sessions/{session}").json()["clicks"] == []
        for body in ({"label": "horse"}, {"label": ""}, {"label": 3}, {}, {"label": "x" * 65}):
            response = client.put(f"/api/sessions/{session}/label", json=body)
            assert 400 <= response.status_code < 500, body
        assert client.get(f"/api/sessions/{session}").json()["current_object"]["label"] == "cat"
        response = client.put(f"/api/sessions/{session}/objects/1/label", json={"label": "dog"})
        assert response.status_code == 409  # no such object yet
        client.post(f"/api/sessions/{session}/clicks", json=CREMA)
        client.post(f"/api/sessions/{session}/finish")
        assert client.put(f"/api/sessions/{session}/objects/1/label", json={"label": "horse"}).status_code == 400
        state = client.put(f"/api/sessions/{session}/objects/1/label", json={"label": "dog"}).json()
        assert state["objects"][0]["label"] == "dog"


def test_labels_survive_undo_redo_and_a_reload_from_disk(engine, folder, tmp_path):
    out_dir = tmp_path / "out"
    labels = parse_labels_option("cat,dog")
    with make_client(engine, folder, out_dir, labels) as client:
        session = open_coffee(client, engine)
        client.post(f"/api/sessions/{session}/clicks", json={**CREMA, "label": "dog"})
        client.post(f"/api/sessions/{session}/clicks", json={**TABLE, "positive": False})
        assert client.post(f"/api/sessions/{session}/undo").json()["current_object"]["label"] == "dog"
        assert client.post(f"/api/sessions/{session}/undo").json()["current_object"]["label"] == "dog"
        assert client.post(f"/api/sessions/{session}/redo").json()["current_object"]["label"] == "dog"
        client.post(f"/api/sessions/{session}/finish")  # object 1: dog
        client.put(f"/api/sessions/{session}/label", json={"label": "cat"})
        client.post(f"/api/sessions/{session}/clicks", json=SPOON)
        client.post(f"/api/sessions/{session}/finish")  # object 2: cat
        client.put(f"/api/sessions/{session}/label", json={"label": "dog"})
        client.post(f"/api/sessions/{session}/clicks", json=TABLE)  # unfinished, a dog
        client.post(f"/api/sessions/{session}/save")

    # A new server on the same folder: the objects and the unfinished one keep their labels.
    with make_client(engine, folder, out_dir, labels) as client:
        state = client.post("/api/images/coffee.jpg/session").json()
        assert [(item["id"], item["label"]) for item in state["objects"]] == [(1, "dog"), (2, "cat")]
        assert state["current_object"]["label"] == "dog" and len(state["clicks"]) == 1
        session = state["session_id"]
        assert client.post(f"/api/sessions/{session}/undo").json()["current_object"]["label"] == "dog"
        assert client.post(f"/api/sessions/{session}/redo").json()["current_object"]["label"] == "dog"
        client.post(f"/api/sessions/{session}/finish")
    coco = json.loads((out_dir / "coco_instances.json").read_text())
    assert {entry["fbrs_object_id"]: entry["category_id"] for entry in coco["annotations"]} == {1: 2, 2: 1, 3: 2}

    # Reopened with another list: saved labels stay in the COCO file, as categories after the list's.
    with make_client(engine, folder, out_dir, parse_labels_option("bird")) as client:
        state = client.post("/api/images/coffee.jpg/session").json()
        assert state["current_object"]["label"] == "bird"
        client.post(f"/api/sessions/{state['session_id']}/save")
    coco = json.loads((out_dir / "coco_instances.json").read_text())
    assert [category["name"] for category in coco["categories"]] == ["bird", "dog", "cat"]
    assert {entry["fbrs_object_id"]: entry["category_id"] for entry in coco["annotations"]} == {1: 2, 2: 3, 3: 2}


def test_default_label_keeps_the_old_output(engine, folder, tmp_path):
    out_dir = tmp_path / "out"
    with make_client(engine, folder, out_dir) as client:
        assert client.get("/api/info").json()["labels"] == [{"name": "object", "color": None}]
        session = open_coffee(client, engine)
        client.post(f"/api/sessions/{session}/clicks", json=CREMA)
        state = client.post(f"/api/sessions/{session}/finish").json()
        assert state["objects"][0]["label"] == "object"
    coco = json.loads((out_dir / "coco_instances.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert [entry["category_id"] for entry in coco["annotations"]] == [1]
    # A click log written before labels existed reads as "object".
    log_path = out_dir / "clicks" / "coffee.json"
    log = json.loads(log_path.read_text())
    for item in log["objects"]:
        del item["label"]
    log["current_object"].pop("label", None)
    log_path.write_text(json.dumps(log))
    with make_client(engine, folder, out_dir) as client:
        state = client.post("/api/images/coffee.jpg/session").json()
        assert state["objects"][0]["label"] == "object"
    assert build_coco([("a.jpg", 4, 4, [])], polygons=False)["categories"][0]["name"] == "object"


def test_uploaded_sessions_take_labels_too(engine, tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), 128, dtype=np.uint8)).save(buffer, format="PNG")
    app = create_app(engine, labels=parse_labels_option("cat,dog"))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        state = client.post("/api/sessions", files={"image": ("a.png", buffer.getvalue(), "image/png")}).json()
        assert state["current_object"]["label"] == "cat"
        state = client.put(f"/api/sessions/{state['session_id']}/label", json={"label": "dog"}).json()
        assert state["current_object"]["label"] == "dog"


def test_the_label_picker_labels_the_object_in_chromium(engine, folder, tmp_path):
    from tests.test_app_browser import CHROMIUM, CHROMIUM_ARGS, IDLE, click_canvas, require_chromium
    from tests.test_app_helpers import LiveServer

    require_chromium()
    from playwright.sync_api import sync_playwright

    out_dir = tmp_path / "out"
    app = create_app(engine, AnnotationProject(folder, out_dir, labels=parse_labels_option("cat,dog")))
    with LiveServer(app) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(server.url + "/")
            page.wait_for_function("() => window.fbrsApp && window.fbrsApp.session !== null")
            page.click("#image-list li[data-name='coffee.jpg']")
            page.wait_for_function("() => window.fbrsApp.session.image_name === 'coffee.jpg'")
            page.wait_for_function(IDLE)
            assert page.locator("#label option").all_inner_texts() == ["cat", "dog"]
            page.select_option("#mode", classical_mode(engine))
            page.wait_for_function(IDLE)
            page.select_option("#label", "dog")
            page.wait_for_function(IDLE)
            assert page.evaluate("window.fbrsApp.session.current_object.label") == "dog"
            click_canvas(page, CREMA)
            page.keyboard.press("Space")
            page.wait_for_function("() => window.fbrsApp.session.objects.length === 1")
            page.wait_for_function(IDLE)
            assert page.locator("#object-list select.object-label").input_value() == "dog"
        finally:
            browser.close()
    coco = json.loads((out_dir / "coco_instances.json").read_text())
    assert [entry["category_id"] for entry in coco["annotations"]] == [2]
