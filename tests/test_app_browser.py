"""End to end in real headless Chromium: label two objects in the web UI, then read the files on disk.

Uses Debian's `chromium` (`make test` installs it where apt-get can) driven by Playwright; never
`playwright install`. Skips with the reason where Chromium is missing, except under CI=true.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from fbrs.app.export import decode_rle, read_instance_png
from fbrs.app.project import AnnotationProject, AppLimits
from fbrs.app.server import create_app
from tests.test_app_helpers import CREMA, SPOON, TABLE, LiveServer, classical_mode, sample_folder, tiny_engine

CHROMIUM = Path(os.environ.get("FBRS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
IDLE = "() => window.fbrsApp && document.body.dataset.busy === 'false' && window.fbrsApp.queued === 0"


def click_canvas(page, point: dict, button: str = "left", timeout_ms: int = 30_000) -> None:
    """Click image pixel point {"x", "y"} on the app's canvas (whatever its display scale) and wait until
    the app is idle again."""
    box = page.locator("#canvas").bounding_box()
    width, height = page.evaluate("[window.fbrsApp.session.width, window.fbrsApp.session.height]")
    page.mouse.click(box["x"] + (point["x"] + 0.5) * box["width"] / width,
                     box["y"] + (point["y"] + 0.5) * box["height"] / height, button=button)
    page.wait_for_function(IDLE, timeout=timeout_ms)


def require_chromium() -> None:
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found; `make test` installs Debian's chromium where apt-get can"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright Python package is not installed (pip install -e '.[dev]')"
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


TINT = """([x, y]) => {
  const canvas = document.getElementById("canvas");
  const column = Math.floor((x + 0.5) * canvas.width / window.fbrsApp.session.width);
  const row = Math.floor((y + 0.5) * canvas.height / window.fbrsApp.session.height);
  const shown = canvas.getContext("2d").getImageData(column, row, 1, 1).data;
  const plain = document.createElement("canvas");
  plain.width = canvas.width;
  plain.height = canvas.height;
  const context = plain.getContext("2d");
  context.drawImage(window.fbrsApp.picture, 0, 0, plain.width, plain.height);
  const base = context.getImageData(column, row, 1, 1).data;
  return Math.abs(shown[0] - base[0]) + Math.abs(shown[1] - base[1]) + Math.abs(shown[2] - base[2]);
}"""


def tint_at(page, point: dict) -> int:
    """How far the canvas pixel at an image point is from the plain image (sum of RGB differences)."""
    return page.evaluate(TINT, [point["x"], point["y"]])


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_label_two_objects_in_chromium_and_find_them_on_disk(tmp_path):
    require_chromium()
    from playwright.sync_api import sync_playwright

    folder = sample_folder(tmp_path)
    out_dir = tmp_path / "out"
    engine = tiny_engine()
    mode = classical_mode(engine)
    # Display at most 400 px wide: the 600 x 400 coffee image is shown downscaled, so the test also checks
    # that canvas clicks map back to full-resolution pixels and that masks are saved at full resolution.
    app = create_app(engine, AnnotationProject(folder, out_dir, limits=AppLimits(display_max_side=400)))
    page_errors: list[str] = []

    with LiveServer(app) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.on("console", lambda message: message.type == "error" and page_errors.append(message.text))
            page.goto(server.url + "/")
            page.wait_for_function("() => window.fbrsApp && window.fbrsApp.session !== null")
            page.wait_for_function(IDLE)
            assert page.locator("#image-list li").count() == 3
            assert page.locator("#mode option").count() >= 6
            assert "Space" in page.inner_text("#shortcuts")

            page.click("#image-list li[data-name='coffee.jpg']")
            page.wait_for_function("() => window.fbrsApp.session.image_name === 'coffee.jpg'")
            page.wait_for_function(IDLE)
            assert page.evaluate("[window.fbrsApp.picture.naturalWidth, window.fbrsApp.picture.naturalHeight]") == [
                400, 267]
            page.select_option("#mode", mode)
            page.wait_for_function(IDLE)
            assert page.evaluate("window.fbrsApp.session.settings.mode") == mode

            def click_image(point: dict, button: str = "left") -> None:
                click_canvas(page, point, button)

            # Object 1: positive on the crema, a stray click undone with Z, a negative (right) click.
            click_image(CREMA)
            click_image(SPOON, button="right")
            page.keyboard.press("z")
            page.wait_for_function(IDLE)
            assert len(page.evaluate("window.fbrsApp.session.clicks")) == 1
            click_image(TABLE, button="right")
            clicks = page.evaluate("window.fbrsApp.session.clicks")
            assert [click["positive"] for click in clicks] == [True, False]
            assert page.inner_text("#latency").startswith("latency:")
            assert "ms" in page.inner_text("#latency")
            page.keyboard.press("Space")
            page.wait_for_function(IDLE)

            # Object 2: the spoon, finished with the button.
            click_image(SPOON)
            page.click("#finish")
            page.wait_for_function(IDLE)
            assert page.locator("#object-list li").count() == 2

            page.click("#save")
            page.wait_for_function(IDLE)
            assert "saved 2 objects" in page.inner_text("#message")
            assert "done" in page.get_attribute("#image-list li[data-name='coffee.jpg']", "class")
            # The canvas shows the overlay: the crema is tinted, the table is not.
            assert tint_at(page, CREMA) > 30 and tint_at(page, TABLE) == 0
        finally:
            browser.close()

    assert page_errors == []
    labels = read_instance_png(out_dir / "masks" / "coffee.png")
    assert labels.shape == (400, 600)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[CREMA["y"], CREMA["x"]] == 1 and labels[SPOON["y"], SPOON["x"]] == 2
    assert labels[TABLE["y"], TABLE["x"]] == 0

    coco = json.loads((out_dir / "coco_instances.json").read_text())
    coffee_id = next(image["id"] for image in coco["images"] if image["file_name"] == "coffee.jpg")
    annotations = {entry["fbrs_object_id"]: entry for entry in coco["annotations"] if entry["image_id"] == coffee_id}
    assert sorted(annotations) == [1, 2]
    for object_id, entry in annotations.items():
        np.testing.assert_array_equal(decode_rle(entry["segmentation"]), labels == object_id)
    polygons = json.loads((out_dir / "coco_instances_polygons.json").read_text())
    assert len([entry for entry in polygons["annotations"] if entry["image_id"] == coffee_id]) == 2

    log = json.loads((out_dir / "clicks" / "coffee.json").read_text())
    assert log["done"] is True
    first_clicks = log["objects"][0]["clicks"]
    assert [click["positive"] for click in first_clicks] == [True, False]
    # The canvas maps to full-resolution (x, y): the logged click is the pixel that was clicked.
    assert abs(first_clicks[0]["x"] - CREMA["x"]) <= 1 and abs(first_clicks[0]["y"] - CREMA["y"]) <= 1
    assert abs(first_clicks[1]["x"] - TABLE["x"]) <= 1 and abs(first_clicks[1]["y"] - TABLE["y"]) <= 1


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_the_ui_recovers_when_the_server_has_lost_its_session(tmp_path):
    """Evicted sessions are rebuilt by the server; one it has lost outright (a restart, a delete) is reopened
    by the page from the saved click log, and the click that met the 404 is sent again, not dropped."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    folder = sample_folder(tmp_path)
    engine = tiny_engine()
    mode = classical_mode(engine)
    app = create_app(engine, AnnotationProject(folder, tmp_path / "out", limits=AppLimits(max_sessions=1)))
    store = app.state.store
    page_errors: list[str] = []
    with LiveServer(app) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(server.url + "/")
            page.wait_for_function("() => window.fbrsApp && window.fbrsApp.session !== null")
            page.click("#image-list li[data-name='coffee.jpg']")
            page.wait_for_function("() => window.fbrsApp.session.image_name === 'coffee.jpg'")
            page.wait_for_function(IDLE)
            page.select_option("#mode", mode)
            page.wait_for_function(IDLE)
            click_canvas(page, CREMA)
            old_id = page.evaluate("window.fbrsApp.session.session_id")
            # Evicted by another client's image: the next click is answered by the rebuilt session.
            assert httpx.post(server.url + "/api/images/chelsea.jpg/session", timeout=60).status_code == 200
            assert store.find_image("coffee.jpg") is None
            click_canvas(page, SPOON, button="right")
            assert len(page.evaluate("window.fbrsApp.session.clicks")) == 2
            # Lost outright: its saved click log brings it back under a new id, and the click still lands.
            session = store.remove(old_id)
            app.state.project.save(session.to_annotation())
            click_canvas(page, TABLE, button="right")
            state = page.evaluate("window.fbrsApp.session")
            assert state["session_id"] != old_id and len(state["clicks"]) == 3
            assert "reopened coffee.jpg" in page.inner_text("#message")
        finally:
            browser.close()
    assert page_errors == []
