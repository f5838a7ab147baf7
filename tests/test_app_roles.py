"""What each role sees on the pages (AppTest), the audit trail's person filter, sign-in through an
identity provider (``st.login``/``st.user``), start buttons disabled while their job runs, and
issue 13's small page fixes (Balance chart layout, the Queue strategy description, export names).

The services refuse what a role may not do (tests/test_access.py); these tests check that the
pages do not offer it in the first place.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import users
from core.access import Principal
from core.jobs import start_job
from core.labeling import save_label
from data import accounts
from data.workspace import ENV_WORKSPACE, Workspace

from app_fixtures import build_pool

APP = Path(__file__).resolve().parents[1] / "app"
PASSWORD = "correct horse battery"
MAINT = Principal("mia", "maintainer")
ANNOT = Principal("ann", "annotator")
REVIEWER = Principal("rob", "reviewer")

# Controls only a maintainer is offered, per page (the CVAT server is not configured here, so
# its page offers the connection form and the manual route).
MAINTAINER_BUTTONS = {
    "0_Overview.py": ["Simulated annotator", "Draw evaluation set"],
    "3_CVAT.py": ["Build zip", "Import labels"],
    "4_Train.py": ["Retrain"],
    "6_Queue.py": ["Rank next batch", "Push to CVAT"],
    "7_Export.py": ["Build export"],
}


def add_team(ws: Workspace) -> Workspace:
    users.add_user(ws, "mia", "maintainer", PASSWORD)  # no accounts yet: the local maintainer
    users.add_user(ws, "ann", "annotator", PASSWORD, principal=MAINT)
    users.add_user(ws, "rob", "reviewer", PASSWORD, principal=MAINT)
    return ws


@pytest.fixture(scope="module")
def team_template(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A labelled pool with a model record (no weights: these tests look at controls, not
    predictions, and training one would cost most of this file's time)."""
    ws = build_pool(tmp_path_factory.mktemp("roles") / "ws", n=24, first_batch=12)
    with ws.store() as store:
        store.add_model("no-weights.pt", metrics={})
    return add_team(ws)


@pytest.fixture
def team(team_template: Workspace, tmp_path: Path) -> Workspace:
    """A copy of the trained team workspace for tests that change it."""
    shutil.copytree(team_template.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def run_as(ws: Workspace, monkeypatch: pytest.MonkeyPatch, page: str,
           who: Principal | None) -> AppTest:
    monkeypatch.setenv(ENV_WORKSPACE, str(ws.root))
    path = APP / "Home.py" if page == "Home.py" else APP / "views" / page
    at = AppTest.from_file(str(path), default_timeout=60)
    if who is not None:
        at.session_state["auth_session"] = users.Session(who, time.time() + 3600)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def button_labels(at: AppTest) -> list[str]:
    return [b.label for b in at.button]


def expander_labels(at: AppTest) -> list[str]:
    return [e.label for e in at.expander]


@pytest.mark.parametrize("page", sorted(MAINTAINER_BUTTONS))
def test_annotator_is_not_offered_maintainer_controls(page: str, team_template: Workspace,
                                                      monkeypatch) -> None:
    for who in (ANNOT, REVIEWER):
        at = run_as(team_template, monkeypatch, page, who)
        shown = button_labels(at)
        for label in MAINTAINER_BUTTONS[page]:
            assert label not in shown, (page, who, label)
        notes = [c.value for c in at.caption if ":material/lock:" in c.value]
        assert notes and all("maintainers only" in n and f"signed in as {who.user}" in n
                             for n in notes), (page, notes)
    at = run_as(team_template, monkeypatch, page, MAINT)
    shown = button_labels(at)
    for label in MAINTAINER_BUTTONS[page]:
        assert label in shown, (page, label, shown)
    assert not [c.value for c in at.caption if ":material/lock:" in c.value]


def test_cvat_settings_only_for_maintainers(team_template: Workspace, monkeypatch) -> None:
    at = run_as(team_template, monkeypatch, "3_CVAT.py", ANNOT)
    assert "Change the CVAT connection" not in expander_labels(at)
    assert any("Changing the CVAT connection: maintainers only" in c.value for c in at.caption)
    at = run_as(team_template, monkeypatch, "3_CVAT.py", MAINT)
    assert "Change the CVAT connection" in expander_labels(at)


def test_nobody_signed_in_is_offered_nothing_and_single_user_mode_everything(
        team_template: Workspace, tmp_path: Path, monkeypatch) -> None:
    at = run_as(team_template, monkeypatch, "4_Train.py", None)  # accounts exist: a stray run
    assert "Retrain" not in button_labels(at)
    solo = build_pool(tmp_path / "solo", n=12, first_batch=4)  # no accounts: local maintainer
    at = run_as(solo, monkeypatch, "4_Train.py", None)
    assert "Retrain" in button_labels(at)


def test_a_running_job_disables_its_start_button_and_hides_cancel_from_annotators(
        team: Workspace, monkeypatch) -> None:
    at = run_as(team, monkeypatch, "6_Queue.py", MAINT)
    rank = next(b for b in at.button if b.label == "Rank next batch")
    assert not rank.disabled
    job_id = start_job(team, "queue", {"strategy": "random", "top_k": 4}, spawn=False,
                       principal=MAINT)  # queued: active until a worker would take it
    at = run_as(team, monkeypatch, "6_Queue.py", MAINT)
    rank = next(b for b in at.button if b.label == "Rank next batch")
    assert rank.disabled
    assert any(b.label == "Cancel" for b in at.button)
    at = run_as(team, monkeypatch, "6_Queue.py", ANNOT)
    assert not any(b.label == "Cancel" for b in at.button)
    assert any(f"Job #{job_id}" in p.proto.text for p in at.get("progress"))


def test_overview_audit_trail_filters_by_person(team: Workspace, monkeypatch) -> None:
    with team.store() as store:
        image = store.images()[0].id
        attr, classes = next(iter(team.schema.classes.items()))
        save_label(store, team.schema, image, {attr: classes[0]}, principal=ANNOT)
    start_job(team, "queue", {"strategy": "random", "top_k": 4}, spawn=False, principal=MAINT)
    at = run_as(team, monkeypatch, "0_Overview.py", MAINT)
    person = at.selectbox(key="audit_person")
    assert {"ann", "mia"} <= set(person.options) and person.value == "everyone"
    trail = at.dataframe[-1].value
    assert {"ann", "mia"} <= set(trail["who"])
    person.select("ann").run()
    trail = at.dataframe[-1].value
    assert set(trail["who"]) == {"ann"} and "label" in set(trail["action"])
    assert f"image_id={image}" in " ".join(trail["details"])
    person = at.selectbox(key="audit_person")
    person.select("mia").run()
    trail = at.dataframe[-1].value
    assert set(trail["who"]) == {"mia"} and "rank" in set(trail["action"])


# -- sign-in through the team's identity provider (st.login) --------------------------------------
def home_with_user(ws: Workspace, monkeypatch, user: dict) -> AppTest:
    monkeypatch.setenv(ENV_WORKSPACE, str(ws.root))
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=60)
    at.user = user
    return at.run()


def test_identity_provider_sign_in_takes_the_role_of_the_matching_account(
        workspace: Workspace, monkeypatch) -> None:
    users.add_user(workspace, "mia", "maintainer", PASSWORD)
    users.add_user(workspace, "ann@example.org", "annotator", PASSWORD, principal=MAINT)
    at = home_with_user(workspace, monkeypatch,
                        {"is_logged_in": True, "email": "Ann@Example.org", "name": "Ann"})
    assert not at.exception and any(t.value == "Overview" for t in at.title)
    assert at.session_state["auth_session"].principal == Principal("ann@example.org", "annotator")
    assert any("Signed in as **ann@example.org** (annotator)" in c.value for c in at.sidebar.caption)
    with workspace.store() as store:
        [entry] = accounts.audit_entries(store, user="ann@example.org", action="sign_in")
    assert entry["details"] == {"via": "oidc"}


def test_identity_provider_user_without_an_account_is_refused(workspace: Workspace,
                                                             monkeypatch) -> None:
    users.add_user(workspace, "mia", "maintainer", PASSWORD)
    users.add_user(workspace, "eve@example.org", "annotator", PASSWORD, principal=MAINT)
    users.set_disabled(workspace, "eve@example.org", principal=MAINT)
    for email in ("stranger@example.org", "eve@example.org"):
        at = home_with_user(workspace, monkeypatch, {"is_logged_in": True, "email": email})
        assert not at.exception
        assert any("has no enabled account" in e.value for e in at.error)
        assert not any(t.value == "Overview" for t in at.title)
        assert "auth_session" not in at.session_state


def test_identity_provider_configured_offers_its_button_beside_the_form(
        workspace: Workspace, monkeypatch) -> None:
    users.add_user(workspace, "mia", "maintainer", PASSWORD)
    at = home_with_user(workspace, monkeypatch, {"is_logged_in": False})
    assert "Sign in with your organisation's account" in button_labels(at)
    assert [t.label for t in at.text_input] == ["User name", "Password"]
    at = home_with_user(workspace, monkeypatch, {"email": "test@example.com"})  # no [auth]
    assert "Sign in with your organisation's account" not in button_labels(at)


# -- issue 13, section 9 ----------------------------------------------------------------------------
def plotly_figures(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_balance_charts_keep_title_and_legend_apart_and_empty_marks_upright(
        tmp_path: Path, monkeypatch) -> None:
    ws = build_pool(tmp_path / "ws", n=12, first_batch=4)  # 4 labels: many empty classes
    at = run_as(ws, monkeypatch, "2_Balance.py", None)
    figures = plotly_figures(at)[:len(ws.schema.attributes)]
    assert len(figures) == len(ws.schema.attributes)
    headings = [m.value for m in at.markdown]
    empties = 0
    for attr, fig in zip(ws.schema.attributes, figures):
        layout = fig["layout"]
        assert f"##### {attr}" in headings
        assert not (layout.get("title") or {}).get("text")  # the heading sits outside the chart
        assert layout["legend"]["yanchor"] == "bottom" and layout["legend"]["y"] >= 1
        assert layout["yaxis"]["rangemode"] == "nonnegative"
        marks = [a for a in layout.get("annotations", []) if a["text"] == "empty"]
        empties += len(marks)
        assert all(a["textangle"] == -90 for a in marks)
    assert empties >= 2  # neighbouring empty classes exist, and their marks stand upright


def test_queue_strategy_description_is_written_out_in_full(team_template: Workspace,
                                                           monkeypatch) -> None:
    from core.acquisition import STRATEGIES
    at = run_as(team_template, monkeypatch, "6_Queue.py", MAINT)
    box = at.selectbox[0]
    assert box.label == "Strategy" and set(box.options) <= set(STRATEGIES)
    assert any(c.value == f"**auto**: {STRATEGIES['auto'].description}" for c in at.caption)
    box.select("probcover").run()
    assert any(c.value == f"**probcover**: {STRATEGIES['probcover'].description}"
               for c in at.caption)


def test_an_annotators_saves_still_start_the_head_refit(team: Workspace, monkeypatch) -> None:
    """The refit that follows labelling runs for whoever labelled (with accounts there is no
    anonymous local maintainer to start it), and says so in the audit trail."""
    from core import refit_status
    monkeypatch.setenv(refit_status.ENV_AUTO_REFIT, "1")
    with team.store() as store:
        pending = [it["image_id"] for r in store.rounds() for it in store.round_items(r["number"])
                   if it["image_id"] not in store.current_labels(include_empty=True)]
        ids = [i.id for i in store.images() if i.id not in store.current_labels()]
        attr, classes = next(iter(team.schema.classes.items()))
        for image in (pending + ids)[:refit_status.DEFAULT_EVERY]:
            save_label(store, team.schema, image, {attr: classes[0]}, principal=ANNOT)
    job_id = refit_status.request_refit(team, spawn=False, principal=ANNOT)
    assert job_id is not None
    with team.store() as store:
        [entry] = accounts.audit_entries(store, job_id=job_id)
    assert (entry["user"], entry["details"]["event"]) == ("ann", "started")


def test_the_app_is_launched_without_usage_statistics_or_outside_requests(workspace) -> None:
    """Launcher flags and the repository's .streamlit/config.toml agree: no usage statistics,
    XSRF on (the browser test checks that no request leaves the machine)."""
    import tomllib

    from core.commands.app import streamlit_command
    cmd = streamlit_command(workspace, port=8501, address="127.0.0.1")
    flags = dict(zip(cmd, cmd[1:]))
    assert flags["--browser.gatherUsageStats"] == "false"
    assert flags["--server.enableXsrfProtection"] == "true"
    config = tomllib.loads((APP.parent / ".streamlit" / "config.toml").read_text())
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"]["enableXsrfProtection"] is True
    assert ".streamlit/secrets.toml" in (APP.parent / ".gitignore").read_text()
