"""The app's sign-in gate (Home.py) under AppTest: no page before a sign-in when accounts exist."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import users
from core.access import Principal
from data.workspace import ENV_WORKSPACE, Workspace

APP = Path(__file__).resolve().parents[1] / "app"
PASSWORD = "correct horse battery"


def home(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(ENV_WORKSPACE, str(ws.root))
    return AppTest.from_file(str(APP / "Home.py"), default_timeout=60).run()


def test_accounts_mean_a_sign_in_form_before_any_page(workspace: Workspace, monkeypatch) -> None:
    users.add_user(workspace, "mia", "maintainer", PASSWORD)
    users.add_user(workspace, "ann", "annotator", PASSWORD,
                   principal=Principal("mia", "maintainer"))
    at = home(workspace, monkeypatch)
    assert not at.exception
    assert [t.label for t in at.text_input] == ["User name", "Password"]
    assert not any(t.value == "Overview" for t in at.title)
    at.text_input(key="signin_name").input("ann")
    at.text_input(key="signin_password").input("wrong password!")
    at.button[0].click().run()
    assert any("wrong user name or password" in e.value for e in at.error)
    assert not any(t.value == "Overview" for t in at.title)
    at.text_input(key="signin_name").input("ann")
    at.text_input(key="signin_password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception
    assert any(t.value == "Overview" for t in at.title)
    assert any("Signed in as **ann** (annotator)" in c.value for c in at.sidebar.caption)
    # The annotator is offered no demo-pool build (and the service would refuse it anyway).
    session = at.session_state["auth_session"]
    assert session.principal == Principal("ann", "annotator")


def test_expired_session_asks_to_sign_in_again(workspace: Workspace, monkeypatch) -> None:
    users.add_user(workspace, "mia", "maintainer", PASSWORD)
    at = home(workspace, monkeypatch)
    at.session_state["auth_session"] = users.Session(Principal("mia", "maintainer"), 0.0)
    at.run()
    assert any("session expired" in i.value for i in at.info)
    assert [t.label for t in at.text_input] == ["User name", "Password"]


def test_no_accounts_on_loopback_is_single_user(workspace: Workspace, monkeypatch) -> None:
    at = home(workspace, monkeypatch)
    assert not at.exception and any(t.value == "Overview" for t in at.title)
