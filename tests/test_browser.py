"""The dashboard in a real browser: label with the keyboard, Retrain, see the new accuracy.

Starts the app exactly as a user does (``python -m core --workspace W app --port P``, which runs
``streamlit run`` on 127.0.0.1), drives Debian's headless Chromium through the ``playwright``
package, and saves a screenshot of every page as a test artifact in ``test-artifacts/screenshots/``
(or ``$CARGROUP_SCREENSHOTS``; run with ``CARGROUP_SCREENSHOTS=docs/screenshots`` to refresh the
pictures the README shows, so an ordinary test run never rewrites tracked files).
Skips with a reason where Chromium or playwright is missing.

Every test stands alone: it starts its own app on its own copy of a workspace in the state it
needs (empty, evaluation set + first batch queued, labelled, trained, queue ranked). The states are
built once through the core API, not through the browser, so any single test, or any order of
tests, runs the same.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

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


class AppServer:
    """The app on one workspace, started exactly as a user does, on a free local port."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.url = f"http://127.0.0.1:{free_port()}"
        # the suite switches the automatic head refit off (tests/conftest.py); the app is tested
        # as users run it
        env = dict(os.environ, OMP_NUM_THREADS="1", CARGROUP_JOB_THREADS="1", CARGROUP_AUTO_REFIT="1")
        self.log_file = ws.root.parent / "app.log"
        self.log = open(self.log_file, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "core", "--workspace", str(ws.root), "app", "--port",
             self.url.rsplit(":", 1)[1]], cwd=REPO, env=env, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the app did not start:\n" + self.log_file.read_text()[-3000:])
            time.sleep(0.3)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        self.log.close()
        # pytest shows captured output only for a failed test: the app's side of the story
        print(f"--- app log ({self.log_file}) ---\n" + self.log_file.read_text(errors="replace")[-3000:])


STATES = ("round0", "labelled", "trained", "queued")


class Templates:
    """Workspaces in each state a test starts from, built once through the core API (not the
    browser) and copied for every test, so each test stands alone and runs in any order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, state: str) -> Path:
        root = self.folder / state
        if root.exists():
            return root
        if state == "round0":          # demo pool; evaluation set (round 0) + seed batch (round 1)
            from core.evalset import start_labelling
            from data.demo import create_demo_pool
            from data.workspace import WorkspaceConfig

            ws = Workspace(root).init(WorkspaceConfig(cache_size=32))
            create_demo_pool(ws, 60, seed=0, size=32)
            with ws.store() as store:
                start_labelling(store, ws.schema, 30, seed=0)
            return root
        previous = self.get(STATES[STATES.index(state) - 1])
        shutil.copytree(previous, root)
        ws = Workspace(root)
        if state == "labelled":
            from core.loop import simulate_pending
            simulate_pending(ws)
        elif state == "trained":
            import torch

            from core.training import train_and_promote
            from models.train import TrainConfig
            old = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                train_and_promote(ws, TrainConfig(epochs=2, batch_size=16, image_size=32,
                                                  pretrained=False, num_threads=1))
            finally:
                torch.set_num_threads(old)
        elif state == "queued":
            from core.queue import build_queue
            build_queue(ws, "entropy", 12)
        return root


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Templates:
    return Templates(tmp_path_factory.mktemp("templates"))


@pytest.fixture
def launch(templates: Templates, tmp_path: Path, browser) -> Iterator[Callable[[str], tuple[str, Workspace]]]:
    """``launch(state)`` copies that state's workspace for this test alone and serves it."""
    servers: list[AppServer] = []

    def start(state: str) -> tuple[str, Workspace]:
        root = tmp_path / "ws"
        if state != "empty":           # "empty": no workspace at all; the app creates it
            shutil.copytree(templates.get(state), root)
        server = AppServer(Workspace(root))
        servers.append(server)
        server.wait_ready()
        return server.url, server.ws

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser context (no cookies, no session state) for every test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


def shoot(page, name: str) -> Path:
    """Save a small PNG (128-colour palette) of the visible page, and check it is one."""
    from io import BytesIO

    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)  # let charts finish their first draw
    image = Image.open(BytesIO(page.screenshot()))
    out = SHOTS / f"{name}.png"
    image.convert("RGB").quantize(colors=128).save(out, optimize=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size < 400_000, out
    return out


def settle(page) -> None:
    """Wait until Streamlit has finished the current script run."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=30_000)


def open_page(page, url: str, path: str, marker: str) -> None:
    """Open a page and wait for ``marker``. Each test runs a fresh app, so this is usually its
    first script run (imports torch, plotly, ...): allow it longer than later clicks."""
    page.goto(f"{url}/{path}")
    page.get_by_text(marker, exact=False).first.wait_for(timeout=90_000)
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


def _round_sizes(ws: Workspace) -> dict[int, int]:
    with ws.store() as store:
        return {r["number"]: r["size"] for r in store.rounds()}


def test_empty_workspace_offers_demo_pool_and_creates_it(launch, page) -> None:
    url, ws = launch("empty")
    open_page(page, url, "", "Create demo pool")
    assert page.get_by_text("Ingest a folder or upload an archive").first.is_visible()
    shoot(page, "onboarding")
    set_number(page, "Images", 60)
    set_number(page, "First batch to label", 30)
    click_and_wait(page, "Create demo pool", "first batch of 30 images queued")
    with ws.store() as store:
        members = store.eval_set_ids()
        assert store.count_images() == 60 and len(store.round_items(1)) == 30
        assert store.round(0)["kind"] == "eval" and len(store.round_items(0)) == len(members) > 0


def test_label_with_the_keyboard(launch, page) -> None:
    url, ws = launch("round0")
    n_eval = _round_sizes(ws)[0]
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
                [image_id] = labels
                label = store.current_label(image_id)
                members = set(store.eval_set_ids())
                break
        assert time.monotonic() < deadline, "no label saved from the keyboard"
        time.sleep(0.3)
    assert label.values == {"color": "yellow", "type": "sedan", "orientation": "front-right"}
    assert label.source == "builtin" and label.annotator == "kim"
    assert image_id in members           # the evaluation set is served first
    page.get_by_text(f"1 of {n_eval} images in round 0 labelled").first.wait_for()


def test_simulated_annotator_labels_the_open_batches(launch, page) -> None:
    url, ws = launch("round0")
    sizes = _round_sizes(ws)
    open_page(page, url, "", "Simulated annotator")
    click_and_wait(page, "Simulated annotator", f"simulated annotator labelled {sizes[0] + sizes[1]}")
    with ws.store() as store:
        assert len(store.current_labels()) == sizes[0] + sizes[1]


def test_overview_shows_the_evaluation_set(launch, page) -> None:
    url, ws = launch("labelled")
    with ws.store() as store:
        n_eval = len(store.eval_set_ids())
    open_page(page, url, "", "Evaluation set")
    page.get_by_text(f"{n_eval} of {n_eval}", exact=False).first.wait_for()
    page.get_by_text("too few to decide anything", exact=False).first.wait_for()


def test_balance(launch, page) -> None:
    url, _ = launch("labelled")
    open_page(page, url, "Balance", "before / after flip balancing")
    shoot(page, "balance")


def test_retrain_and_see_the_new_accuracy(launch, page) -> None:
    url, ws = launch("labelled")
    open_page(page, url, "Train", "Retrain")
    set_number(page, "Epochs", 2)
    page.get_by_text("Pretrained weights", exact=True).click()  # offline: ResNet18 from random init, said loudly
    settle(page)
    page.get_by_role("button", name="Retrain", exact=True).click()
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


def test_evaluate(launch, page) -> None:
    url, _ = launch("trained")
    open_page(page, url, "Evaluate", "Macro F1")
    shoot(page, "evaluate")


def test_queue_rank_and_grid(launch, page) -> None:
    url, ws = launch("trained")
    open_page(page, url, "Queue", "Rank next batch")
    set_number(page, "Batch size", 12)
    # `auto` is the default; with a 30-label model it picks typicality and says why
    click_and_wait(page, "Rank next batch", "images ranked by auto (typiclust)")
    page.get_by_text("typicality: only", exact=False).first.wait_for()
    sizes = _round_sizes(ws)  # 12, or every candidate left when fewer (val and test stay out)
    size = sizes[max(sizes)]
    assert 0 < size <= 12
    page.get_by_text(f"{size} images, highest priority first", exact=False).first.wait_for()
    shoot(page, "queue")
    with ws.store() as store:
        assert store.latest_round()["strategy"] == "auto"
        assert not {it["image_id"] for it in store.round_items(store.latest_round()["number"])} & set(
            store.eval_set_ids())


def test_label_page_preselects_the_models_guess(launch, page) -> None:
    url, ws = launch("queued")
    sizes = _round_sizes(ws)
    number = max(sizes)
    open_page(page, url, "Label", "Save & next")
    # confident answers are pre-selected, the others shown as hints (issue 13's pre-fill threshold)
    page.get_by_text(re.compile("pre-selected by the model|model guesses")).first.wait_for()
    page.get_by_text(f"0 of {sizes[number]} images in round {number} labelled").first.wait_for()
    shoot(page, "label")


def test_queue_refreshes_after_a_saved_batch_without_retrain(launch, page) -> None:
    """One save on the Label page starts a head refit in the background; the open batch's order
    changes and both pages say it came from the refit, while no new model is trained."""
    url, ws = launch("queued")
    with ws.store() as store:
        number = store.latest_round()["number"]
        before = [it["image_id"] for it in store.round_items(number)]
        models = len(store.models())
    open_page(page, url, "Label", "Save & next")
    page.get_by_text("from model #", exact=False).first.wait_for()
    page.get_by_label("Annotator", exact=True).fill("kim")
    page.get_by_label("Annotator", exact=True).press("Tab")
    settle(page)
    page.locator("h1").first.click()  # focus out of the text box so keys reach the shortcuts
    for key in ("1", "Q", "A", "Enter"):
        page.keyboard.press(key)
        settle(page)
    deadline = time.monotonic() + 240
    while True:
        with ws.store() as store:
            jobs = store.jobs("refit")
        if jobs and jobs[-1]["status"] in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, f"no finished head refit: {jobs}"
        time.sleep(0.5)
    assert jobs[-1]["status"] == "succeeded", jobs[-1]["message"]
    with ws.store() as store:
        after = [it["image_id"] for it in store.round_items(number)]
        assert len(store.models()) == models  # no Retrain
    assert sorted(after) == sorted(before) and after != before
    open_page(page, url, "Queue", "Rank next batch")
    page.get_by_text("from head refit on", exact=False).first.wait_for()
    shoot(page, "queue_refit")
    open_page(page, url, "Label", "Save & next")
    page.get_by_text("from head refit on", exact=False).first.wait_for()


def test_cvat_and_export_pages(launch, page) -> None:
    url, _ = launch("trained")
    open_page(page, url, "CVAT", "Manual route")
    page.get_by_text("Import a Datumaro export", exact=False).first.wait_for()
    shoot(page, "cvat")
    open_page(page, url, "Export", "Build export")
    page.get_by_text("Nothing exported for model", exact=False).first.wait_for()
    shoot(page, "export")


def test_overview_after_training_shows_the_learning_curve(launch, page) -> None:
    url, _ = launch("trained")
    open_page(page, url, "", "Learning curve")
    page.locator(".js-plotly-plot").first.wait_for()
    assert page.get_by_text("Model #1", exact=False).first.is_visible()
    shoot(page, "overview")
