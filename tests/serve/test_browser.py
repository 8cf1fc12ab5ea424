"""The Gradio demo in a real browser: Debian's Chromium driven by Playwright (no `playwright install`: the system
browser, with flags that keep it off the network). Upload a real photo, run, wait for both outputs, check their size,
and save a screenshot to tests/artifacts/demo.png.

The test runs on tiny random models. README's screenshot (docs/demo.png) comes from the same test on the
quickstart's real artifacts:
``GANKD_DEMO_ARTIFACTS=exports/teacher,exports/student pytest tests/serve/test_browser.py``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gankd.serve.app import build_app
from gankd.serve.ports import free_port

from helpers.paths import TESTS_DIR
from helpers.images import astronaut_crop

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update"]
SCREENSHOT = TESTS_DIR / "artifacts" / "demo.png"
pytestmark = pytest.mark.slow  # a real browser (make test-slow)


def _natural_size(page, elem_id: str) -> tuple[int, int]:
    img = page.locator(f"#{elem_id} img").first
    img.wait_for(state="visible", timeout=120_000)
    page.wait_for_function("(el) => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=120_000)
    return tuple(img.evaluate("(el) => [el.naturalWidth, el.naturalHeight]"))


def test_demo_in_a_real_browser(demo_artifacts, tmp_path):
    real = [Path(p) for p in os.environ.get("GANKD_DEMO_ARTIFACTS", "").split(",") if p]
    side = 64 if real else 40
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    photo = tmp_path / "photo.png"
    Image.fromarray(astronaut_crop(0, size=side)).save(photo)
    demo = build_app(real or demo_artifacts, default_tile=16)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
            page.locator("#input-image input[type=file]").set_input_files(str(photo))
            page.locator("#input-image img").first.wait_for(state="visible", timeout=120_000)
            page.locator("#run-button").click()
            sizes = [_natural_size(page, "out-teacher"), _natural_size(page, "out-student")]
            page.locator("#report").get_by_text("ms").first.wait_for(timeout=120_000)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            browser.close()
    finally:
        demo.close()
    assert sizes == [(4 * side, 4 * side)] * 2  # x4 models: 4x the upload
    assert np.asarray(Image.open(SCREENSHOT)).std() > 0
