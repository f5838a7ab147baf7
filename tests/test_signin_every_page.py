"""Every page asks for a sign-in on its own, not only through ``Home.py`` (issue 14).

Found in review: opening a page's address directly (``http://host:port/Label``) drew the page
with no sign-in, because Streamlit's automatic ``pages/`` folder served the page file without
running ``Home.py``'s gate. Two fences now: the page files live in ``app/views/`` (a folder
Streamlit does not serve by itself, so every address runs ``Home.py``), and every page body
runs through ``ui.run_page``, which stops where the workspace has accounts and nobody is signed
in. The AppTest half here runs each page file bare, as that old route did; the browser half
(tests/test_browser_signin_gate.py) opens each page's address.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import users
from core.access import Principal
from data.workspace import ENV_WORKSPACE, Workspace

from app_fixtures import build_pool

APP = Path(__file__).resolve().parents[1] / "app"
PAGE_FILES = sorted(p.name for p in (APP / "views").glob("*.py"))
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = build_pool(tmp_path_factory.mktemp("gate") / "ws", n=16, first_batch=6)
    users.add_user(ws, "mia", "maintainer", PASSWORD)
    return ws


def test_the_pages_live_outside_streamlits_automatic_pages_folder() -> None:
    assert not (APP / "pages").exists(), "app/pages/ is served by Streamlit without Home.py"
    assert len(PAGE_FILES) == 9


@pytest.mark.parametrize("page", PAGE_FILES)
def test_a_page_run_without_a_sign_in_draws_nothing(page: str, team: Workspace,
                                                     monkeypatch) -> None:
    monkeypatch.setenv(ENV_WORKSPACE, str(team.root))
    at = AppTest.from_file(str(APP / "views" / page), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [w.value for w in at.warning] and any(
        "Sign in" in w.value for w in at.warning), page
    assert not at.button and not at.selectbox and not at.get("plotly_chart"), page
    # signed in, the same page draws
    at = AppTest.from_file(str(APP / "views" / page), default_timeout=60)
    at.session_state["auth_session"] = users.Session(Principal("mia", "maintainer"),
                                                     time.time() + 3600)
    at.run()
    assert not at.exception and not any("Sign in" in w.value for w in at.warning), page
