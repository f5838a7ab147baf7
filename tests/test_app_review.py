"""The Review page under AppTest: nothing to review, disagreements settled by a reviewer, an
annotator who may not settle them, the maintainer's team settings; the Overview's team table."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from streamlit.testing.v1 import AppTest

from core import users
from core.access import Principal
from core.double import double_share, set_double_share
from core.assignment import assignees
from core.labeling import next_image_id, save_label
from data import accounts
from data.demo import create_demo_pool
from data.workspace import ENV_WORKSPACE, Workspace

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))
import ui  # noqa: E402

MAINT = Principal("mia", "maintainer")
ANN = Principal("ann", "annotator")
BOB = Principal("bob", "annotator")
ROB = Principal("rob", "reviewer")


@pytest.fixture
def pool(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    create_demo_pool(workspace, 6, seed=0, size=32)
    return workspace


@pytest.fixture
def team(pool: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """Accounts, and a round of 3 images all labelled twice: two colour disagreements."""
    monkeypatch.setattr(accounts, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024,
                                                            parallelism=1))
    users.add_user(pool, "mia", "maintainer", "password-1")
    for name, role in (("ann", "annotator"), ("bob", "annotator"), ("rob", "reviewer")):
        users.add_user(pool, name, role, "password-1", principal=MAINT)
    with pool.store() as s:
        set_double_share(s, 1.0, principal=MAINT)
        ids = [im.id for im in s.images()][:3]
        number = s.create_round(ids, kind="seed")
        for image in ids:
            assert next_image_id(s, number, principal=ANN) == image
            save_label(s, pool.schema, image, {"color": "red", "type": "van"}, principal=ANN)
        for image, color in zip(ids, ("red", "blue", "green")):
            assert next_image_id(s, number, principal=BOB) == image
            save_label(s, pool.schema, image, {"color": color, "type": "van"}, principal=BOB)
    return pool


def review_page(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                who: Principal | None = None, page: str = "8_Review.py") -> AppTest:
    monkeypatch.setenv(ENV_WORKSPACE, str(ws.root))
    at = AppTest.from_file(str(APP / "views" / page), default_timeout=60)
    if who is not None:
        at.session_state[ui.SESSION_KEY] = users.Session(who, time.time() + 3600)
    return at.run()


def test_nothing_to_review_yet(pool: Workspace, monkeypatch) -> None:
    at = review_page(pool, monkeypatch)
    assert not at.exception and not at.error
    assert any("Nothing to review yet" in i.value for i in at.info)
    assert [m.value for m in at.metric] == ["0", "0", "0"]
    assert not [b for b in at.button if b.label == "Save decision"]
    # single-user mode: the local maintainer sees the team settings
    assert "Save settings" in [b.label for b in at.button]


def test_a_reviewer_settles_the_disagreements_one_by_one(team: Workspace, monkeypatch) -> None:
    at = review_page(team, monkeypatch, ROB)
    assert not at.exception and not at.error
    assert [m.value for m in at.metric] == ["3", "2", "0"]
    assert "Save settings" not in [b.label for b in at.button]  # reviewers do not configure
    save = next(b for b in at.button if b.label == "Save decision")
    assert save.disabled  # nothing picked yet
    [radio] = at.radio  # only colour differs
    assert "ann said red, bob said blue" in radio.label
    assert radio.options[:2] == ["red (ann)", "blue (bob)"]
    image = int(radio.key.split("_")[1])
    radio.set_value("blue").run()
    next(b for b in at.button if b.label == "Save decision").click().run()
    assert not at.exception and not at.error
    with team.store() as s:
        current = s.current_label(image)
        assert (current.kind, current.annotator) == ("review", "rob")
        assert current.values == {"color": "blue", "type": "van"}
        assert [v.kind for v in s.label_history(image)] == ["label", "second", "review"]
    assert [m.value for m in at.metric] == ["3", "1", "1"]
    [radio] = at.radio
    assert "ann said red, bob said green" in radio.label
    radio.set_value("\u2205 unsure").run()
    next(b for b in at.button if b.label == "Save decision").click().run()
    assert any("No disagreements to review" in s.value for s in at.success)
    assert [m.value for m in at.metric] == ["3", "0", "2"]
    tables = [t.value for t in at.dataframe]
    overall = tables[0]
    assert list(overall["attribute"]) == ["color", "type", "orientation"]
    assert list(overall["agreement"][:2]) == ["33%", "100%"]


def test_an_annotator_sees_the_queue_but_cannot_settle_it(team: Workspace, monkeypatch) -> None:
    at = review_page(team, monkeypatch, ANN)
    assert not at.exception and not at.error
    assert any("2 disagreement(s) wait for a reviewer" in w.value for w in at.warning)
    assert not at.radio and "Save decision" not in [b.label for b in at.button]


def test_maintainer_sets_the_share_and_hands_a_round_out(team: Workspace, monkeypatch) -> None:
    at = review_page(team, monkeypatch, MAINT)
    assert not at.exception and not at.error
    at.number_input[0].set_value(20)
    next(b for b in at.button if b.label == "Save settings").click().run()
    with team.store() as s:
        assert double_share(s) == pytest.approx(0.2)
    at.multiselect[0].set_value(["bob"])
    next(b for b in at.button if b.label == "Hand out").click().run()
    assert not at.exception and not at.error
    with team.store() as s:
        assert assignees(s, s.round(0)["id"]) == ["bob"]
    table = at.dataframe[-1].value
    assert list(table["handed to"]) == ["bob"]


def test_overview_shows_per_annotator_progress(team: Workspace, monkeypatch) -> None:
    at = review_page(team, monkeypatch, MAINT, page="0_Overview.py")
    assert not at.exception and not at.error
    team_table = next(t.value for t in at.dataframe if "images / hour" in t.value.columns)
    assert list(team_table["annotator"]) == ["ann", "bob"]
    assert list(team_table["images"]) == [3, 3]
    assert list(team_table["second labels"]) == [0, 3]
