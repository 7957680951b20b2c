"""End to end: `weedseg app` served on localhost, a real field photo uploaded through the page's file
input in headless Chromium, the overlay and numbers awaited, a screenshot saved.

Needs Debian's chromium and chromium-driver (`make test` installs them with apt-get where it can) and
selenium; skipped where they are missing. WEEDSEG_APP_SCREENSHOT=PATH saves the screenshot there
(docs/app.png is taken this way, with WEEDSEG_MODELS pointing at a trained model's folder).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weedseg.checkpoint import load_checkpoint
from weedseg.export import export_onnx

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
if not (CHROMIUM.is_file() and DRIVER.is_file()):
    pytest.skip("no /usr/bin/chromium and /usr/bin/chromedriver (on Debian: apt-get install chromium chromium-driver; "
                "`make test` does this)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serving import free_port, wait_healthy  # noqa: E402


@pytest.fixture()
def models(tmp_path, random_checkpoint) -> Path:
    """$WEEDSEG_MODELS if set, else a folder with the untrained test model."""
    if os.environ.get("WEEDSEG_MODELS"):
        return Path(os.environ["WEEDSEG_MODELS"])
    folder = tmp_path / "models"
    folder.mkdir()
    export_onnx(load_checkpoint(random_checkpoint), folder / "test.onnx", input_short_side=128)
    return folder


@pytest.fixture()
def app_url(models, tmp_path):
    """`weedseg app` on a free localhost port; stopped after the test."""
    port = free_port()
    weedseg = Path(sys.executable).with_name("weedseg")
    cmd = [str(weedseg)] if weedseg.is_file() else [sys.executable, "-m", "weedseg.cli"]
    server = subprocess.Popen([*cmd, "app", "--port", str(port), "--models", str(models)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://localhost:{port}"
        wait_healthy(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture()
def browser(tmp_path):
    """Headless Chromium driven by selenium through Debian's chromedriver (no driver download)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1400,1700", "--hide-scrollbars"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(DRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_upload_a_field_photo_in_a_real_browser(app_url, browser, peanut_root, tmp_path):
    photo = peanut_root / "images" / "0239.jpg"  # a validation image with both crop and weeds
    browser.get(app_url)
    wait = WebDriverWait(browser, 60, poll_frequency=0.3)
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type=file]"))
    # Streamlit paints the page element by element: wait for the legend as for the uploader
    legend = wait.until(lambda d: d.find_element(By.CLASS_NAME, "weedseg-legend"))
    wait.until(lambda d: "Legend" in legend.text)
    upload.send_keys(str(photo))

    def captions(d) -> list[str]:
        return [c.text for c in d.find_elements(By.CSS_SELECTOR, "[data-testid=stImageCaption]")]

    wait.until(lambda d: {"Original", "Overlay", "Mask"} <= set(captions(d)))
    overlay = next(c for c in browser.find_elements(By.CSS_SELECTOR, "[data-testid=stImageCaption]")
                   if c.text == "Overlay")
    picture = overlay.find_element(By.XPATH, "ancestor::*[.//img][1]//img")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", picture))
    assert browser.execute_script("return arguments[0].naturalWidth", picture) == 960
    metrics = [m.text for m in browser.find_elements(By.CSS_SELECTOR, "[data-testid=stMetric]")]
    assert any(m.startswith("Weed cover") and "%" in m for m in metrics), metrics
    assert any("of 12" in m for m in metrics), metrics  # 960 x 720 in 256 px cells
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "All images" in body and "Everything (zip)" in body
    time.sleep(0.5)  # let the last images paint
    shot = Path(os.environ.get("WEEDSEG_APP_SCREENSHOT") or tmp_path / "app.png")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
