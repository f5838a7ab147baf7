"""A page's own address asks for a sign-in too (issue 14), in a real browser.

Before the fix, ``http://host:port/Label`` drew the Label page to anyone (Streamlit served the
file from ``app/views/`` without running ``Home.py``). Skips where Chromium or playwright is
missing.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from test_browser import AppServer, browser, settle  # noqa: F401 - `browser` is a fixture
from test_browser_roles import team_workspace

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_every_page_address_shows_the_sign_in_form(browser, tmp_path: Path) -> None:
    server = AppServer(team_workspace(tmp_path / "ws"))
    try:
        server.wait_ready()
        page = browser.new_page()
        for path in ["Label", "Train", "Export", "Review", "CVAT"]:
            page.goto(f"{server.url}/{path}")
            page.get_by_label("Password", exact=True).wait_for(timeout=60_000)
            settle(page)
            text = page.inner_text("body")
            for leaked in ("Save & next", "Retrain", "Build export", "Save decision",
                           "Workspace:"):
                assert leaked not in text, (path, leaked)
        page.close()
    finally:
        server.stop()
