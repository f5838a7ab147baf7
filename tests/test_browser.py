"""The dashboard in a real browser: label with the keyboard, Retrain, see the new accuracy.

Starts the app exactly as a user does (``python -m core --workspace W app --port P``, which runs
``streamlit run`` on 127.0.0.1), drives Debian's headless Chromium through the ``playwright``
package, and saves a screenshot of every page as a test artifact in ``test-artifacts/screenshots/``
(or ``$CARGROUP_SCREENSHOTS``; run with ``CARGROUP_SCREENSHOTS=docs/screenshots`` to refresh the
pictures the README shows, so an ordinary test run never rewrites tracked files).
Skips with a reason where Chromium or playwright is missing.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from data.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("CARGROUP_SCREENSHOTS") or REPO / "test-artifacts" / "screenshots")
if not SHOTS.is_absolute():
    SHOTS = REPO / SHOTS
CHROMIUM = os.environ.get("CARGROUP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Workspace]]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    ws = Workspace(tmp_path_factory.mktemp("browser") / "ws")  # empty: the app creates it
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", CARGROUP_JOB_THREADS="1")
    log_file = ws.root.parent / "app.log"
    log = open(log_file, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "core", "--workspace", str(ws.root), "app",
                             "--port", str(port)], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the app did not start:\n" + log_file.read_text()[-3000:])
            time.sleep(0.3)
        yield url, ws
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def page(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        yield pg
        browser.close()


def shoot(page, name: str) -> Path:
    """Save a small PNG (256-colour palette) of the visible page."""
    from io import BytesIO

    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)  # let charts finish their first draw
    image = Image.open(BytesIO(page.screenshot()))
    out = SHOTS / f"{name}.png"
    image.convert("RGB").quantize(colors=128).save(out, optimize=True)
    return out


def settle(page) -> None:
    """Wait until Streamlit has finished the current script run."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=30_000)


def open_page(page, url: str, path: str, marker: str) -> None:
    page.goto(f"{url}/{path}")
    page.get_by_text(marker, exact=False).first.wait_for()
    settle(page)


def click_and_wait(page, button: str, done_text: str, timeout_s: float = 120) -> None:
    page.get_by_role("button", name=button).click()
    page.get_by_text(done_text, exact=False).first.wait_for(timeout=timeout_s * 1000)
    settle(page)


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")
    settle(page)


def test_empty_workspace_offers_demo_pool_and_creates_it(app, page) -> None:
    url, ws = app
    open_page(page, url, "", "Create demo pool")
    assert page.get_by_text("Ingest a folder or upload an archive").first.is_visible()
    shoot(page, "onboarding")
    set_number(page, "Images", 60)
    set_number(page, "First batch to label", 30)
    click_and_wait(page, "Create demo pool", "first batch of 30 images queued")
    with ws.store() as store:
        assert store.count_images() == 60 and len(store.round_items(0)) == 30


def test_label_with_the_keyboard(app, page) -> None:
    url, ws = app
    open_page(page, url, "Label", "Save & next")
    page.get_by_label("Annotator", exact=True).fill("kim")
    page.get_by_label("Annotator", exact=True).press("Tab")
    settle(page)
    page.locator("h1").first.click()  # focus out of the text box so keys reach the shortcuts
    for key in ("3", "W", "H"):       # yellow, sedan, front-right
        page.keyboard.press(key)
        settle(page)
    page.keyboard.press("Enter")      # save & next
    settle(page)
    deadline = time.monotonic() + 20
    while True:
        with ws.store() as store:
            labels = store.current_labels()
            if labels:
                label = store.current_label(next(iter(labels)))
                break
        assert time.monotonic() < deadline, "no label saved from the keyboard"
        time.sleep(0.3)
    assert label.values == {"color": "yellow", "type": "sedan", "orientation": "front-right"}
    assert label.source == "builtin" and label.annotator == "kim"
    page.get_by_text("1 of 30 images in round 0 labelled").first.wait_for()


def test_simulated_annotator_labels_the_rest(app, page) -> None:
    url, ws = app
    open_page(page, url, "", "Simulated annotator")
    click_and_wait(page, "Simulated annotator", "simulated annotator labelled 29")
    with ws.store() as store:
        assert len(store.current_labels()) == 30


def test_balance(app, page) -> None:
    url, _ = app
    open_page(page, url, "Balance", "before / after flip balancing")
    shoot(page, "balance")


def test_retrain_and_see_the_new_accuracy(app, page) -> None:
    url, ws = app
    open_page(page, url, "Train", "Retrain")
    set_number(page, "Epochs", 2)
    page.get_by_text("ImageNet weights").click()  # offline machines: skip the download attempt
    settle(page)
    page.get_by_role("button", name="Retrain").click()
    page.get_by_text("· training ·", exact=False).first.wait_for()
    # a second tab (and so a reload) shows the same job, read from the store
    other = page.context.new_page()
    other.goto(f"{url}/Train")
    other.get_by_text("· training ·", exact=False).first.wait_for()
    job_text = other.get_by_text("· training ·", exact=False).first.inner_text()
    other.close()
    with ws.store() as store:
        [train_job] = store.jobs("train")
    assert job_text.startswith(f"Job #{train_job['id']} · training ·")
    page.get_by_text("Test accuracy of the new model", exact=False).first.wait_for(timeout=120_000)
    settle(page)
    shoot(page, "train")
    with ws.store() as store:
        model = store.current_model()
    assert model is not None and model["metrics"]["test"]["accuracy"]
    shown = page.locator("[data-testid='stMarkdownContainer']",
                         has_text="Test accuracy of the new model").first.inner_text()
    for head, acc in model["metrics"]["test"]["accuracy"].items():
        assert f"{head}: {acc:.1%}" in shown


def test_evaluate(app, page) -> None:
    url, _ = app
    open_page(page, url, "Evaluate", "Macro F1")
    shoot(page, "evaluate")


def test_queue_rank_and_grid(app, page) -> None:
    url, ws = app
    open_page(page, url, "Queue", "Rank next batch")
    set_number(page, "Batch size", 12)
    click_and_wait(page, "Rank next batch", "images ranked by entropy")
    page.get_by_text("12 images, highest priority first", exact=False).first.wait_for()
    shoot(page, "queue")
    with ws.store() as store:
        assert store.latest_round()["strategy"] == "entropy"


def test_label_page_preselects_the_models_guess(app, page) -> None:
    url, ws = app
    open_page(page, url, "Label", "Save & next")
    page.get_by_text("pre-selected by the model", exact=False).first.wait_for()
    page.get_by_text("0 of 12 images in round 1 labelled").first.wait_for()
    shoot(page, "label")


def test_cvat_and_export_pages(app, page) -> None:
    url, _ = app
    open_page(page, url, "CVAT", "Manual route")
    page.get_by_text("Import a Datumaro export", exact=False).first.wait_for()
    shoot(page, "cvat")
    open_page(page, url, "Export", "Build export")
    page.get_by_text("Nothing exported for model", exact=False).first.wait_for()
    shoot(page, "export")


def test_overview_after_training_shows_the_learning_curve(app, page) -> None:
    url, ws = app
    open_page(page, url, "", "Learning curve")
    page.locator(".js-plotly-plot").first.wait_for()
    assert page.get_by_text("Model #1", exact=False).first.is_visible()
    shoot(page, "overview")


def test_screenshots_are_small_pngs() -> None:
    shots = sorted(SHOTS.glob("*.png"))
    if not shots:
        pytest.skip("no screenshots taken in this run")
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size < 400_000, shot

