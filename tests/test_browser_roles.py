"""Serving the app to a team, in a real browser: sign-in, what each role sees, no outside requests.

One app is started exactly as a user does (``python -m core app``) on a workspace with accounts,
so every visitor must sign in. An annotator and a maintainer sign in from two browser contexts
(two people, two cookie jars). The annotator labels an image with the keyboard and is offered no
Retrain, no export build and no CVAT settings; the maintainer is offered them, and downloads an
export whose file name carries the model id. Every request either browser makes is recorded while
the maintainer visits every page: all of them must go to the app's own address (no fonts, icons or
usage statistics from outside hosts). Skips where Chromium or playwright is missing.
"""
from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from core import users
from core.access import Principal
from data.workspace import Workspace, WorkspaceConfig

from test_browser import AppServer, browser, settle  # noqa: F401 - `browser` is a fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "correct horse battery"
PAGES = ["Overview", "Label", "Balance", "CVAT", "Train", "Evaluate", "Queue", "Export"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def team_workspace(root: Path) -> Workspace:
    """A demo pool with an unlabelled evaluation set and seed batch, a model record with an
    exported ONNX file (so Export offers a download), and two accounts."""
    from core.evalset import start_labelling
    from data.demo import create_demo_pool

    ws = Workspace(root).init(WorkspaceConfig(cache_size=32))
    create_demo_pool(ws, 40, seed=0, size=32)
    with ws.store() as store:
        start_labelling(store, ws.schema, 12, seed=0)
        model_id = store.add_model("no-weights.pt", metrics={})
    folder = ws.exports_dir / f"model_{model_id}"  # core.exports.export_dir, without torch
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"not a real onnx file")  # models.export.FP32_NAME
    users.add_user(ws, "mia", "maintainer", PASSWORD)
    users.add_user(ws, "ann", "annotator", PASSWORD, principal=Principal("mia", "maintainer"))
    return ws


def sign_in(page, url: str, name: str) -> None:
    page.goto(url)
    page.get_by_label("User name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_text(f"Signed in as {name}", exact=False).first.wait_for(timeout=90_000)
    settle(page)


def go(page, title: str, marker: str) -> None:
    """Navigate with the sidebar (a reload would start a new session and ask to sign in again)."""
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).first.click()
    page.get_by_text(marker, exact=False).first.wait_for(timeout=60_000)
    settle(page)


def test_annotator_and_maintainer_see_what_their_role_may_do(browser, tmp_path: Path) -> None:
    ws = team_workspace(tmp_path / "ws")
    server = AppServer(ws)
    requests: list[str] = []
    contexts = []
    try:
        server.wait_ready()
        pages = {}
        for who in ("ann", "mia"):
            context = browser.new_context(viewport={"width": 1280, "height": 900},
                                          accept_downloads=True)
            context.on("request", lambda r: requests.append(r.url))
            contexts.append(context)
            pages[who] = context.new_page()
            pages[who].set_default_timeout(30_000)
            sign_in(pages[who], server.url, who)

        ann = pages["ann"]
        go(ann, "Label", "Save & next")
        ann.locator("h1").first.click()  # focus out of any text box so keys reach the shortcuts
        for key in ("3", "W", "H", "Enter"):   # yellow, sedan, front-right, save & next
            ann.keyboard.press(key)
            settle(ann)
        deadline = time.monotonic() + 20
        while True:
            with ws.store() as store:
                labels = store.current_labels()
                label = store.current_label(next(iter(labels))) if labels else None
            if label is not None:
                break
            assert time.monotonic() < deadline, "the annotator's label was not saved"
            time.sleep(0.3)
        assert label.annotator == "ann" and label.values["color"] == "yellow"
        go(ann, "Train", "Retrain: maintainers only")
        assert ann.get_by_role("button", name="Retrain", exact=True).count() == 0
        go(ann, "Export", "Build export: maintainers only")
        assert ann.get_by_role("button", name="Build export").count() == 0
        go(ann, "CVAT", "Changing the CVAT connection: maintainers only")
        assert ann.get_by_text("Change the CVAT connection").count() == 0
        go(ann, "Queue", "Rank next batch: maintainers only")
        assert ann.get_by_role("button", name="Rank next batch").count() == 0

        mia = pages["mia"]
        markers = {"Overview": "Audit trail", "Label": "Save & next",
                   "Balance": "before / after flip balancing", "CVAT": "Manual route",
                   "Train": "Start from", "Evaluate": "Evaluate", "Queue": "Rank next batch",
                   "Export": "Build export"}
        for title in PAGES:  # every page, recording every request the browser makes
            go(mia, title, markers[title])
            assert mia.get_by_text("maintainers only").count() == 0, title
            if title == "Train":
                assert mia.get_by_role("button", name="Retrain", exact=True).count() == 1
            elif title == "CVAT":
                assert mia.get_by_text("Change the CVAT connection").count() == 1
            elif title == "Queue":
                assert mia.get_by_role("button", name="Rank next batch").count() == 1
        assert mia.get_by_role("button", name="Build export").count() == 1
        with mia.expect_download() as download:
            mia.get_by_role("button", name="ONNX fp32", exact=False).click()
        assert download.value.suggested_filename == "cargroup_model_1.onnx"

    finally:
        for context in contexts:
            context.close()
        server.stop()
    outside = sorted({u for u in requests if urlsplit(u).scheme in ("http", "https", "ws", "wss")
                      and urlsplit(u).hostname not in LOCAL_HOSTS})
    others = sorted({u.split(":", 1)[0] for u in requests
                     if urlsplit(u).scheme not in ("http", "https", "ws", "wss", "data", "blob")})
    assert len(requests) > 50
    assert not outside, f"requests to outside hosts: {outside}"
    assert not others, others
