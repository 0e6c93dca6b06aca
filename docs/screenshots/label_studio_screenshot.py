"""Regenerate docs/screenshots/label_studio.png: Label Studio using `fbrs serve label-studio`, in headless Chromium.

    .venv/bin/python docs/screenshots/label_studio_screenshot.py [--out docs/screenshots/label_studio.png]

Starts a real Label Studio from its own venv (tests/label_studio_env.py; installed on first use, ~3 minutes) on
loopback with a temporary data folder, and the fbrs backend; creates the project, storage and task with
label-studio-sdk (tests/label_studio_driver.py), signs in, turns Auto-Annotation on, picks the smart keypoint
label and clicks the astronaut (suit and face positive, the helmet negative: Alt+click), waits for fbrs's
brush mask and takes the picture. Needs Debian's chromium and playwright (dev extra). Stops both servers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests import label_studio_env  # noqa: E402
from tests.test_app_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.test_label_studio import DATA_ROOT, LABEL_CONFIG, SAMPLES  # noqa: E402

CLICKS = [(0.40, 0.62, True), (0.47, 0.25, True), (0.80, 0.86, False)]  # (x, y) fractions of the image, positive?


def start_servers(scratch: Path, mode: str):
    label_studio_env.ensure_installed(allow_install=True)
    studio = label_studio_env.start_label_studio(scratch / "label-studio", DATA_ROOT)
    port = label_studio_env.free_port()
    backend = subprocess.Popen(
        [sys.executable, "-m", "fbrs.cli", "serve", "label-studio", "--port", str(port), "--mode", mode],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    backend_url = f"http://127.0.0.1:{port}"
    label_studio_env.wait_for_http(f"{backend_url}/health", backend, 90, "fbrs serve label-studio")
    ids = label_studio_env.run_driver(ROOT / "tests" / "label_studio_driver.py", {
        "url": studio.url, "token": studio.token, "label_config": LABEL_CONFIG, "title": "Astronauts (fbrs)",
        "local_files_root": str(SAMPLES), "task_data": {"image": "/data/local-files/?d=samples/astronaut.jpg"},
        "backend_url": backend_url, "out_dir": str(scratch), "contexts": [],
    })
    return studio, backend, ids


def shoot(url: str, project: int, task: int, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
            page.set_default_timeout(60_000)
            page.goto(f"{url}/user/login/")
            page.fill("input[name=email]", label_studio_env.USER)
            page.fill("input[name=password]", label_studio_env.PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(lambda address: "/user/login" not in address)
            page.goto(f"{url}/projects/{project}/data?task={task}")
            image = page.locator("img[alt=image]")  # the task image under Label Studio's canvas
            image.wait_for()
            page.wait_for_timeout(1500)
            page.get_by_text("Auto-Annotation", exact=True).click()
            smart_tool = page.locator(".lsf-tool_smart.key-point-tool, .lsf-tool_smart").first
            smart_tool.wait_for()
            page.wait_for_timeout(1000)
            smart_tool.click()  # the smart keypoint tool: its points go to the ML backend
            page.wait_for_timeout(500)
            page.get_by_text("Astronaut", exact=True).first.click()  # the KeyPointLabels' label
            page.wait_for_timeout(500)
            box = image.bounding_box()
            for x, y, positive in CLICKS:
                page.keyboard.press("Escape")  # unselect the region just made: a click would only unselect it
                page.wait_for_timeout(300)
                label = page.locator(".lsf-label", has_text="Astronaut").first
                if "selected" not in (label.get_attribute("class") or ""):
                    label.click()  # Label Studio drops the label after each region
                    page.wait_for_timeout(300)
                with page.expect_response(lambda response: "interactive-annotating" in response.url) as answer:
                    if not positive:
                        page.keyboard.down("Alt")  # Label Studio's negative smart keypoint
                    page.mouse.click(box["x"] + x * box["width"], box["y"] + y * box["height"])
                    if not positive:
                        page.keyboard.up("Alt")
                if answer.value.status != 200 or "errors" in answer.value.json():
                    raise RuntimeError(f"interactive annotation failed: {answer.value.text()[:500]}")
                page.wait_for_timeout(1500)
            page.screenshot(path=str(out))
        except Exception:
            page.screenshot(path=str(out.with_name(out.stem + "-failed.png")))
            raise
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots" / "label_studio.png")
    parser.add_argument("--mode", default="NoBRS", help="predictor mode of the backend (NoBRS: fast)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        studio, backend, ids = start_servers(Path(scratch), args.mode)
        try:
            shoot(studio.url, ids["project"], ids["task"], args.out)
        finally:
            label_studio_env.stop(backend)
            label_studio_env.stop(studio.process)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
