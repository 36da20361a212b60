"""The review app in a real browser: `streamlit run` on 127.0.0.1 with fixture outputs, driven in Debian's
Chromium through pip playwright (executable_path; never `playwright install`). Run with `make test-browser`.

Screenshots go to the test's tmp folder, and also to $ADAFOCUS_SCREENSHOT_DIR when set (the README's
docs/screenshots/ are produced that way)."""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _review_fixtures import write_all
from adafocus.apps import review_app
from adafocus.apps import review_logic as rl

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("streamlit did not become healthy")


@pytest.fixture
def app_url(tmp_path):
    outputs = write_all(tmp_path / "outputs")
    env = {**os.environ, review_app.ENV_SCANS: str(outputs["scans"]), review_app.ENV_VIDEOS: str(outputs["videos"]),
           review_app.ENV_MODEL: str(outputs["model"])}
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", review_app.__file__, "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        yield url, outputs
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def yellow_pixels(png: bytes) -> int:
    """Pixels of the focus-box colour (BOX_COLOUR, allowing for resampling) in a PNG screenshot."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 200) & (rgb[..., 1] > 170) & (rgb[..., 2] < 90)).sum())


def save_screenshot(page, name: str, folders: list[Path], height: int = 2300, scale: float = 0.6) -> None:
    """The whole view (a viewport tall enough that nothing scrolls), shrunk and palette-quantised so the
    PNG stays small for the README; the viewport is restored afterwards."""
    from PIL import Image

    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": height})
    page.wait_for_timeout(500)  # let the layout settle at the new size
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    page.set_viewport_size(size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        image.quantize(colors=128).save(folder / name, optimize=True)


def open_item(page, label: str, search: str) -> None:
    """Pick the queue item whose label contains `search` in the selectbox `label` (typing filters it)."""
    box = page.locator("[data-testid='stSelectbox']").filter(has_text=label).locator("input").first
    box.click()
    box.fill(search)
    page.get_by_role("option").filter(has_text=search).first.click()


def test_review_app_in_chromium(app_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    url, outputs = app_url
    shots = [tmp_path / "screenshots"]
    if os.environ.get("ADAFOCUS_SCREENSHOT_DIR"):
        shots.append(Path(os.environ["ADAFOCUS_SCREENSHOT_DIR"]))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(tmp_path / "profile", executable_path=chromium,
                                                       headless=True, args=CHROMIUM_FLAGS,
                                                       viewport={"width": 1280, "height": 900})
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.goto(url)
            page.wait_for_selector("[data-testid='stAppViewContainer']")
            page.get_by_text("Selected slices", exact=True).wait_for()

            # a flagged scan: strip with boxes, planes, raw beside preprocessed; then a decision
            open_item(page, "Open scan", "P003")
            page.get_by_text("Scan P003 ses-M000").wait_for()
            page.get_by_text("Needs review: exit entropy").wait_for()
            strip = page.locator("[data-testid='stImage']").filter(has_text="selected-slice strip").locator("img")
            strip.wait_for()
            assert yellow_pixels(strip.screenshot()) > 50  # the focus boxes are drawn and visible
            assert page.locator("[data-testid='stImage'] img").count() == 7
            assert page.get_by_text("Raw scan beside the preprocessed one").is_visible()
            assert "DOE" not in page.locator("body").inner_text()  # header identifiers stay hidden
            page.get_by_role("textbox", name="Note").fill("atrophy pattern plausible")
            page.get_by_role("button", name="Save decision").click()
            page.get_by_text("Saved decision: confirm at").wait_for()
            page.get_by_text("1 reviewed").wait_for()
            save_screenshot(page, "scan_view.png", shots)

            # a flagged video: player, selected frames with boxes and times, jump, decision
            page.locator("[data-testid='stSidebar']").get_by_text("Videos", exact=True).click()
            page.get_by_text("Frames the model looked at").wait_for()
            open_item(page, "Open video", "fight.mp4")
            page.get_by_text("Video fight.mp4").wait_for()
            page.get_by_text("Needs review: exit entropy").wait_for()
            page.get_by_role("button", name="▶ 1.60 s").wait_for()
            assert page.locator("video").count() == 1
            frames = page.locator("[data-testid='stImage'] img")
            assert frames.count() == 2
            assert all(yellow_pixels(frames.nth(i).screenshot()) > 20 for i in range(2))
            page.get_by_role("button", name="▶ 1.60 s").click()
            # the player jumped (st.video start_time, whole seconds)
            page.wait_for_function("() => { const v = document.querySelector('video');"
                                   " return v !== null && v.currentTime >= 1; }")
            page.get_by_role("radio", name="dismiss").check(force=True)
            page.get_by_role("button", name="Save decision").click()
            page.get_by_text("Saved decision: dismiss at").wait_for()
            save_screenshot(page, "video_view.png", shots)
        finally:
            browser.close()
    saved = rl.DecisionStore(outputs["videos"] / rl.DECISIONS_FILE).latest("video")
    assert saved["fight.mp4"]["decision"] == "dismiss"
    assert rl.DecisionStore(outputs["scans"] / rl.DECISIONS_FILE).latest("scan")["P003/ses-M000"]["note"] == \
        "atrophy pattern plausible"
    assert all((shots[0] / n).stat().st_size > 10_000 for n in ("scan_view.png", "video_view.png"))
