"""The review app in a real browser, on demo outputs built by the real pipeline (a small slice: a 2-fold
`adafocus cv` on MNI-template brains; a video model trained briefly on the moderation demo's clips over
real footage, then `adafocus score`). `streamlit run` on 127.0.0.1 with the viewer toolbar, driven in
Debian's Chromium through pip playwright (executable_path; never `playwright install`). Run with
`make test-browser` (or `pytest -m browser tests/test_review_e2e.py -s` to see the timings).

Screenshots go to the test's tmp folder, and also to $ADAFOCUS_SCREENSHOT_DIR when set (the README's
docs/screenshots/ are produced that way, with timings.json beside them)."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _review_fixtures import write_demo_scans, write_demo_videos
from adafocus.apps.review import app as review_app
from adafocus.apps.review import audit as ra
from adafocus.apps.review import logic as rl

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
REVIEWER = "Dr Ada Reviewer"
PAGE_TO_PAGE_LIMIT_S = 2.0
PLANES = ("sagittal", "coronal", "axial")


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


@pytest.fixture(scope="module")
def demo_outputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo")
    return {"scans": write_demo_scans(root / "scans"), "videos": write_demo_videos(root / "videos")}


@pytest.fixture
def app_url(demo_outputs):
    env = {**os.environ, review_app.ENV_SCANS: str(demo_outputs["scans"]),
           review_app.ENV_VIDEOS: str(demo_outputs["videos"])}
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", review_app.__file__, *review_app.STREAMLIT_FLAGS,
         "--server.port", str(port), "--server.fileWatcherType", "none"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        yield url, demo_outputs
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def rgb(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def yellow_pixels(png: bytes) -> int:
    """Pixels of the focus-box colour (review_render.BOX_COLOUR, allowing for resampling) in a screenshot."""
    image = rgb(png)
    return int(((image[..., 0] > 200) & (image[..., 1] > 170) & (image[..., 2] < 90)).sum())


def save_screenshot(page, name: str, folders: list[Path], height: int = 2700, scale: float = 0.55) -> None:
    """The whole view (a viewport tall enough that nothing scrolls), shrunk and palette-quantised so the
    PNG stays small for the README; the viewport is restored afterwards."""
    from PIL import Image

    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": height})
    page.evaluate("() => document.querySelectorAll('[data-testid=\"stMain\"], section.main, "
                  "[data-testid=\"stAppViewContainer\"]').forEach(e => e.scrollTo(0, 0))")
    page.wait_for_timeout(700)  # let the layout settle at the new size
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    page.set_viewport_size(size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        image.quantize(colors=128).save(folder / name, optimize=True)


def plane_image(page, plane: str):
    return page.locator("[data-testid='stImage']").filter(has_text=f"{plane} ").filter(
        has_not_text="native").locator("img").first


ARM_RUN_WATCH = """() => { const app = document.querySelector('[data-testid="stApp"]');
  window.__ran = false; window.__t0 = performance.now(); window.__last = window.__t0;
  if (window.__watch) window.__watch.disconnect();
  window.__watch = new MutationObserver(() => { window.__ran = true; window.__last = performance.now(); });
  window.__watch.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']}); }"""
# a run happened, the app is idle and has stayed idle for 400 ms (a callback's st.rerun starts a second run)
RUN_DONE = """() => window.__ran && document.querySelector('[data-testid="stApp"]')
  .getAttribute('data-test-script-state') === 'notRunning' && performance.now() - window.__last > 400"""
IMAGES_LOADED = """() => [...document.querySelectorAll('[data-testid="stImage"] img')]
  .every(i => i.complete && i.naturalWidth > 0)"""
# when the last script run ended or the last resource (image, video) of the new page arrived
SHOWN_AFTER_S = """() => { const ends = performance.getEntriesByType('resource')
  .filter(e => e.startTime >= window.__t0).map(e => e.responseEnd);
  return (Math.max(window.__last, ...ends) - window.__t0) / 1000; }"""


def act(page, action) -> float:
    """Do `action` (a click) and wait until the script run it started has finished and every image on the
    page has loaded; returns the seconds from the click until the page was complete (the last run's end
    or the last image's arrival, whichever came later)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.evaluate(ARM_RUN_WATCH)
    action()
    try:
        page.wait_for_function("() => window.__ran", timeout=3000)
    except PlaywrightTimeout:  # a click right after a screenshot's viewport change can land mid-layout: once more
        page.evaluate(ARM_RUN_WATCH)
        action()
    page.wait_for_function(RUN_DONE)
    page.wait_for_function(IMAGES_LOADED)
    return float(page.evaluate(SHOWN_AFTER_S))


def open_flagged(page) -> None:
    act(page, page.get_by_text("Needs review only").first.click)


def queue_order(folder: Path, kind: str) -> list[str]:
    """Names of the flagged items in the app's queue order (the same library calls the app makes)."""
    queue = rl.scan_queue(folder) if kind == "scan" else rl.video_queue(folder)
    queue = rl.flag_and_sort(queue, rl.DEFAULT_REVIEW_ENTROPY)
    return queue[queue["needs_review"]]["name"].tolist()


def timed_walk(page, kind: str, folder: Path, steps: int = 4) -> list[float]:
    """Seconds from pressing Next / Previous until the neighbouring item is shown with all its images:
    up to `steps` presses along the filtered queue away from the nearer end, and one back."""
    heading = page.locator("h3").filter(has_text=f"{kind.capitalize()} ").first
    order = queue_order(folder, kind)
    assert len(order) >= 2, f"the demo slice should flag at least two {kind}s"
    position = order.index(heading.inner_text().split(" ", 1)[1])
    forward = min(steps, len(order) - 1 - position)
    presses = ["Next"] * forward + ["Previous"] if forward else ["Previous"] * min(steps, position) + ["Next"]
    seconds = []
    for button in presses:
        title = heading.inner_text()
        seconds.append(act(page, page.get_by_role("button", name=button).click))
        assert heading.inner_text() != title, (button, len(seconds), order)
    return seconds


def review_scan(page, shots: list[Path], folder: Path) -> list[float]:
    page.get_by_text("Scan ", exact=False).first.wait_for()
    open_flagged(page)
    page.get_by_text("Needs review:").first.wait_for()
    prediction = page.locator("[data-testid='stMetricValue']").first.inner_text()
    assert prediction in ("CN", "AD")  # class names, not "class 1"
    assert page.get_by_text("Classes: 0 = CN, 1 = AD").is_visible()
    assert "DOE" not in page.locator("body").inner_text()
    for plane in PLANES:  # large planes, each with the 3D focus box drawn where it crosses
        image = plane_image(page, plane)
        assert image.bounding_box()["width"] >= 512, plane
        assert yellow_pixels(image.screenshot()) > 30, plane
    before = rgb(plane_image(page, "sagittal").screenshot())
    window = page.locator("[data-testid='stSelectbox']").filter(has_text="Window").locator("input").first
    window.click()
    window.fill("full")  # the combobox filters its options by the text typed
    act(page, page.get_by_role("option", name="full range").click)
    after = rgb(plane_image(page, "sagittal").screenshot())
    assert before.shape == after.shape and np.abs(before - after).mean() > 2.0  # window/level changed the pixels
    seconds = timed_walk(page, "scan", folder)
    act(page, page.get_by_role("button", name="Confirm").click)
    page.get_by_text(f"Saved decision: confirm by {REVIEWER}").wait_for()
    save_screenshot(page, "scan_view.png", shots)
    return seconds


def review_video(page, shots: list[Path], folder: Path) -> list[float]:
    act(page, page.get_by_role("radiogroup").first.get_by_text("Videos", exact=True).click)
    page.get_by_text("Video ", exact=False).first.wait_for()
    open_flagged(page)
    page.get_by_text("Needs review:").first.wait_for()
    prediction = page.locator("[data-testid='stMetricValue']").first.inner_text()
    assert prediction in ("NonViolence", "Violence")
    chart = page.locator("[data-testid='stVegaLiteChart']").first
    chart.wait_for()
    assert chart.bounding_box()["width"] > 400  # the temporal policy's timeline over the whole video
    assert page.get_by_text("Where the model looked in the whole video").is_visible()
    assert page.locator("video").count() == 1
    frames = page.locator("[data-testid='stImage'] img")
    assert frames.count() >= 1 and all(yellow_pixels(frames.nth(i).screenshot()) > 20 for i in range(frames.count()))
    assert frames.first.bounding_box()["width"] >= 480
    seconds = timed_walk(page, "video", folder)
    act(page, page.get_by_role("button", name="Dismiss").click)
    page.get_by_text(f"Saved decision: dismiss by {REVIEWER}").wait_for()
    save_screenshot(page, "video_view.png", shots)
    return seconds


def exported_audit(page) -> list[dict]:
    act(page, page.get_by_role("radiogroup").first.get_by_text("Decisions", exact=True).click)
    page.get_by_text("Audit log").first.wait_for()
    rows = []
    for kind in ("scan", "video"):
        with page.expect_download() as download:
            page.get_by_role("button", name=f"Export the {kind} audit log (CSV)").click()
        rows += list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    return rows


def test_review_app_on_demo_outputs_in_chromium(app_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    url, outputs = app_url
    shots = [tmp_path / "screenshots"]
    if os.environ.get("ADAFOCUS_SCREENSHOT_DIR"):
        shots.append(Path(os.environ["ADAFOCUS_SCREENSHOT_DIR"]))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            page.set_default_timeout(30_000)
            page.goto(url)
            page.get_by_label("Your name (stored with every decision you make)").fill(REVIEWER)
            act(page, page.get_by_role("button", name="Start reviewing").click)
            assert page.get_by_text("Deploy", exact=True).count() == 0  # viewer toolbar: no Deploy menu
            scan_times = review_scan(page, shots, outputs["scans"])
            video_times = review_video(page, shots, outputs["videos"])
            audit = exported_audit(page)
        finally:
            browser.close()
    timings = {"scan_next_s": [round(t, 3) for t in scan_times], "video_next_s": [round(t, 3) for t in video_times]}
    print("page-to-page seconds:", json.dumps(timings), "median", round(statistics.median(scan_times + video_times), 3))
    for folder in shots:
        (folder / "timings.json").write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    assert max(scan_times + video_times) < PAGE_TO_PAGE_LIMIT_S, timings
    decided = {(r["kind"], r["decision"], r["reviewer"]) for r in audit}
    assert {("scan", "confirm", REVIEWER), ("video", "dismiss", REVIEWER)} <= decided
    assert all(r["model_run"] for r in audit if r["kind"] == "scan")  # which fold's model was reviewed
    stored = ra.AuditLog(outputs["scans"] / ra.AUDIT_FILE).history("scan")
    assert [r["reviewer"] for r in stored] == [REVIEWER]
    assert all((shots[0] / n).stat().st_size > 10_000 for n in ("scan_view.png", "video_view.png"))
