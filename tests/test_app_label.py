"""The Label page's states under AppTest (issue 13): the all-unsure guard, the annotator kept in
the URL, the labelling guide beside the buttons, the pre-fill settings, the acceptance table."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_fixtures import build_pool
from data.workspace import ENV_WORKSPACE, Workspace

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))


def open_page(ws: Workspace, monkeypatch: pytest.MonkeyPatch, page: str = "1_Label.py",
              query: dict[str, str] | None = None) -> AppTest:
    monkeypatch.setenv(ENV_WORKSPACE, str(ws.root))
    at = AppTest.from_file(str(APP / "views" / page), default_timeout=60)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture
def pool(tmp_path: Path) -> Workspace:
    """A demo pool with round 0 labelled and a fresh 3-image round to label (no model)."""
    ws = build_pool(tmp_path / "ws", n=30, first_batch=10)
    with ws.store() as s:
        s.create_round(s.unlabelled_ids(exclude_queued=True)[:3], kind="al", strategy="random")
    return ws


def save(at: AppTest) -> AppTest:
    return next(b for b in at.button if b.label == "Save & next").click().run()


def test_all_unsure_on_a_fresh_image_needs_a_second_press(pool: Workspace, monkeypatch) -> None:
    at = open_page(pool, monkeypatch)
    assert_clean(at)
    at.text_input[0].input("kim").run()
    first = at.session_state["label_image"]
    for attr in pool.schema.attributes:  # nothing, not even unsure, is selected on a fresh image
        assert at.button(key=f"btn_{attr}__unsure").proto.type != "primary"
    at = save(at)
    assert_clean(at)
    assert any("Press **Save & next** again" in w.value for w in at.warning)
    assert at.session_state["label_image"] == first
    with pool.store() as s:
        assert s.current_label(first) is None  # the first press stored nothing
    at = save(at)
    assert_clean(at)
    with pool.store() as s:
        assert s.current_label(first).values == {}  # confirmed: stored as all unsure
    assert at.session_state["label_image"] != first
    # choosing unsure for every attribute, key by key, is a choice: one press saves it
    second = at.session_state["label_image"]
    for attr in pool.schema.attributes:
        at.button(key=f"btn_{attr}__unsure").click().run()
        assert at.button(key=f"btn_{attr}__unsure").proto.type == "primary"
    at = save(at)
    with pool.store() as s:
        assert s.current_label(second).values == {}


def test_a_choice_disarms_the_all_unsure_confirmation(pool: Workspace, monkeypatch) -> None:
    at = open_page(pool, monkeypatch, query={"annotator": "kim"})
    first = at.session_state["label_image"]
    at = save(at)
    assert at.session_state.get("label_unsure_armed") == first
    at.button(key="btn_color_red").click().run()
    assert "label_unsure_armed" not in at.session_state
    at = save(at)
    with pool.store() as s:
        assert s.current_label(first).values == {"color": "red"}


def test_annotator_name_comes_from_and_goes_to_the_url(pool: Workspace, monkeypatch) -> None:
    at = open_page(pool, monkeypatch, query={"annotator": "ana"})
    assert_clean(at)
    assert at.text_input[0].value == "ana"
    assert not next(b for b in at.button if b.label == "Save & next").disabled
    at.text_input[0].input("bo").run()
    assert at.query_params["annotator"] in ("bo", ["bo"])
    at.button(key="btn_color_blue").click().run()
    first = at.session_state["label_image"]
    save(at)
    with pool.store() as s:
        assert s.current_label(first).annotator == "bo"


def test_guide_and_prefill_settings_beside_the_buttons(pool: Workspace, monkeypatch) -> None:
    at = open_page(pool, monkeypatch)
    assert_clean(at)
    assert (pool.root / "guide.md").is_file()
    assert any(e.label == "Labelling guide" for e in at.expander)
    assert any(str(pool.root / "guide.md") in c.value for c in at.caption)
    assert any("nose points to the **left of the picture**" in m.value for m in at.markdown)
    assert len(at.get("image")) > 20  # reference thumbnails, drawings and the image itself
    at.number_input(key="prefill_type").set_value(0.55).run()
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert_clean(at)
    assert Workspace(pool.root).config.prefill_thresholds["type"] == 0.55


def test_overview_shows_acceptance_and_override_rates(pool: Workspace, monkeypatch) -> None:
    from core import labeling

    with pool.store() as s:
        number = s.latest_round()["number"]
        ids = [it["image_id"] for it in s.round_items(number)[:2]]
        model = s.add_model("models/1/model.pt")
        s.save_predictions(model, [(i, "color", "red", 0.9) for i in ids])
        for image_id, value in zip(ids, ("red", "blue")):
            task = labeling.task_for(s, image_id, number)
            labeling.save_label(s, pool.schema, image_id, {"color": value}, annotator="kim",
                                suggestions=task.suggestions)
    at = open_page(pool, monkeypatch, "0_Overview.py")
    assert_clean(at)
    assert any(e.label.startswith("Model suggestions") for e in at.expander)
    frames = [f.value for f in at.dataframe]
    people = next(f for f in frames if "annotator" in f.columns)
    row = people[people["annotator"] == "kim"].iloc[0]
    assert row["shown"] == 2 and row["accepted"] == 1 and row["changed"] == 1
    assert row["acceptance"] == pytest.approx(50.0)


def test_signed_in_identity_wins_over_the_url(pool: Workspace, monkeypatch) -> None:
    """With a sign-in the annotator is the signed-in user, whatever the address says; an
    annotator is offered no pre-fill settings (maintainers only)."""
    import time

    from core import users
    from core.access import Principal

    users.add_user(pool, "mia", "maintainer", "correct horse battery")
    users.add_user(pool, "ann", "annotator", "correct horse battery",
                   principal=Principal("mia", "maintainer"))
    monkeypatch.setenv(ENV_WORKSPACE, str(pool.root))
    at = AppTest.from_file(str(APP / "views" / "1_Label.py"), default_timeout=60)
    at.query_params["annotator"] = "mallory"
    at.session_state["auth_session"] = users.Session(Principal("ann", "annotator"),
                                                     time.time() + 3600)
    at.run()
    assert_clean(at)
    assert at.text_input[0].value == "ann" and at.text_input[0].disabled
    assert not any(e.label == "Pre-fill settings" for e in at.expander)
    first = at.session_state["label_image"]
    at.button(key="btn_color_red").click().run()
    save(at)
    with pool.store() as s:
        assert s.current_label(first).annotator == "ann"
