"""Regenerate docs/screenshots/app.png: the app on the bundled samples, bundled models, its default mode.

    .venv/bin/python docs/screenshots/make_screenshot.py [--out docs/screenshots/app.png]

Needs Debian's chromium (`make test` installs it) and the playwright package (dev extra). One positive click
on the cup's crema (finished as object 1) and one on the spoon (in progress), then the picture. The mode
is the app's default (SAM, since issue 14; the bundled DeepLab model is the engine's f-BRS model).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # tests.test_app_helpers: the live server and the sample click points

from tests.test_app_browser import CHROMIUM, CHROMIUM_ARGS, IDLE, click_canvas  # noqa: E402
from tests.test_app_helpers import CREMA, SPOON, LiveServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots" / "app.png")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from fbrs.app.cli import SAMPLES_DIR
    from fbrs.app.engine import PredictionEngine
    from fbrs.app.project import AnnotationProject
    from fbrs.app.server import create_app
    from fbrs.models import load_default_model

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        shutil.copytree(SAMPLES_DIR, folder, ignore=shutil.ignore_patterns("*.md"))
        engine = PredictionEngine(load_default_model(), model_name="bundled default")
        app = create_app(engine, AnnotationProject(folder, Path(scratch) / "out"))
        with LiveServer(app) as server, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 860})
                page.goto(server.url + "/")
                page.wait_for_function("() => window.fbrsApp && window.fbrsApp.session !== null")
                page.wait_for_function(IDLE)
                page.click("#image-list li[data-name='coffee.jpg']")
                page.wait_for_function("() => window.fbrsApp.session.image_name === 'coffee.jpg'")
                page.wait_for_function(IDLE)

                click_canvas(page, CREMA, timeout_ms=120_000)
                page.click("#finish")
                page.wait_for_function(IDLE)
                click_canvas(page, SPOON, timeout_ms=120_000)
                page.screenshot(path=str(args.out))
            finally:
                browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
