"""Several annotators on one project: claims with expiry, rounds handed to annotators, double
labelling, agreement, the review queue and per-annotator throughput (issue 13 parts 3-4, issue 14)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sklearn.metrics import cohen_kappa_score

from core import users
from core.access import AccessDenied, Principal
from core.agreement import agreement, double_pairs
from core.assignment import assign_round, assignees
from core.claims import ClaimedByOther, claim_next, live_claims, set_claim_minutes
from core.double import double_ids, set_double_share
from core.labeling import batches, next_image_id, save_label, skip_image, task_for
from core.review import decide, review_queue
from core.team_progress import annotator_progress
from data import accounts
from data.errors import UserError
from data.store import MIGRATIONS, ProjectStore
from data.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
MAINT = Principal("mia", "maintainer")
ANN = Principal("ann", "annotator")
BOB = Principal("bob", "annotator")
ROB = Principal("rob", "reviewer")
PASSWORD = "correct horse battery"


def _pool(store: ProjectStore, n: int) -> list[int]:
    """``n`` image rows (no files: these tests never open an image)."""
    start = store.count_images()
    return [store.add_image(path=f"img{i}.png", name=f"img{i}.png", sha256=f"{i:064x}", width=32,
                            height=32, nbytes=100, split="train")[0] for i in range(start, start + n)]


@pytest.fixture
def team(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    # cheap hashes: these tests are about labelling, not passwords (tests/test_access.py is)
    monkeypatch.setattr(accounts, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024,
                                                            parallelism=1))
    users.add_user(workspace, "mia", "maintainer", PASSWORD)
    for name, role in (("ann", "annotator"), ("bob", "annotator"), ("rob", "reviewer")):
        users.add_user(workspace, name, role, PASSWORD, principal=MAINT)
    return workspace


@pytest.fixture
def store(team: Workspace):
    with team.store() as s:
        yield s


def _round(store: ProjectStore, n: int = 10, *, share: float = 0.0) -> tuple[int, list[int]]:
    set_double_share(store, share, principal=MAINT)
    ids = _pool(store, n)
    return store.create_round(ids, kind="seed"), ids


# -- claims ------------------------------------------------------------------------------------
def test_two_annotators_are_served_different_images_and_a_reload_gets_the_same(team, store):
    number, ids = _round(store)
    a = next_image_id(store, number, principal=ANN)
    b = next_image_id(store, number, principal=BOB)
    assert a == ids[0] and b == ids[1]
    assert next_image_id(store, number, principal=ANN) == a  # reload: same image, fresh expiry
    # without a name nothing is claimed, and claimed images are not offered
    assert next_image_id(store, number) == ids[2]
    assert {(c.image_id, c.annotator) for c in live_claims(store)} == {(a, "ann"), (b, "bob")}


def test_saving_and_skipping_release_the_claim(team, store):
    number, ids = _round(store)
    a = next_image_id(store, number, principal=ANN)
    save_label(store, team.schema, a, {"color": "red"}, principal=ANN,
               round_id=store.round(number)["id"])
    assert live_claims(store) == []
    b = next_image_id(store, number, principal=ANN)
    assert b == ids[1]
    skip_image(store, b, principal=ANN)
    assert live_claims(store) == []
    assert next_image_id(store, number, principal=BOB) == b  # the skipped image is free again
    assert next_image_id(store, number, principal=ANN, skip={b}) == ids[2]


def test_an_expired_claim_goes_to_the_next_person_and_the_stale_save_is_refused(team, store):
    number, ids = _round(store)
    set_claim_minutes(store, 5, principal=MAINT)
    t0 = time.time()
    a = next_image_id(store, number, principal=ANN, now=t0)
    assert next_image_id(store, number, principal=BOB, now=t0 + 60) == ids[1]
    skip_image(store, ids[1], principal=BOB)
    # 5 minutes later ann's claim has lapsed: bob gets the image
    assert next_image_id(store, number, principal=BOB, now=t0 + 301) == a
    with pytest.raises(ClaimedByOther, match="being labelled by bob"):
        save_label(store, team.schema, a, {"color": "red"}, principal=ANN)
    assert store.current_label(a) is None
    with pytest.raises(AccessDenied):
        set_claim_minutes(store, 10, principal=ANN)
    with pytest.raises(UserError, match="between 1 minute"):
        set_claim_minutes(store, 0, principal=MAINT)


def test_two_processes_never_claim_the_same_image(team, tmp_path):
    with team.store() as s:
        number, ids = _round(s, 16)
        round_id = s.round(number)["id"]
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "team_worker.py"),
                               str(team.db_path), str(round_id), name, str(go),
                               str(tmp_path / f"{name}.json")], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("ann", "bob")]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"{n}.json.ready").exists() for n in ("ann", "bob")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    got = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ann", "bob")}
    assert not set(got["ann"]) & set(got["bob"])
    assert sorted(got["ann"] + got["bob"]) == sorted(ids)
    assert got["ann"] and got["bob"]  # both worked at once
    with team.store() as s:
        assert all(len(s.label_history(i)) == 1 for i in ids)


# -- rounds handed to annotators -------------------------------------------------------------
def test_an_annotator_labels_only_in_rounds_handed_to_them(team, store):
    open_round, open_ids = _round(store, 3)
    handed, handed_ids = _round(store, 3)
    assert assign_round(store, handed, ["bob"], principal=MAINT) == ["bob"]
    handed_id = store.round(handed)["id"]
    assert assignees(store, handed_id) == ["bob"]
    assert [b.number for b in batches(store, principal=ANN)] == [open_round]
    assert [b.number for b in batches(store, principal=BOB)] == [open_round, handed]
    assert [b.number for b in batches(store, principal=MAINT)] == [open_round, handed]
    with pytest.raises(AccessDenied, match="handed to bob, not to ann"):
        next_image_id(store, handed, principal=ANN)
    # a crafted save (no round given) is refused by the service, not only hidden by the page
    with pytest.raises(AccessDenied, match="handed to bob"):
        save_label(store, team.schema, handed_ids[0], {"color": "red"}, principal=ANN)
    assert store.current_label(handed_ids[0]) is None
    save_label(store, team.schema, handed_ids[0], {"color": "red"}, principal=BOB)
    save_label(store, team.schema, open_ids[0], {"color": "red"}, principal=ANN)
    save_label(store, team.schema, handed_ids[1], {"color": "red"}, principal=MAINT)
    assert next_image_id(store, handed, principal=BOB) == handed_ids[2]
    with pytest.raises(AccessDenied):
        assign_round(store, handed, ["ann"], principal=ROB)
    with pytest.raises(UserError, match="no account named 'zed'"):
        assign_round(store, handed, ["zed"], principal=MAINT)
    assign_round(store, handed, [], principal=MAINT)  # opened again
    assert next_image_id(store, handed, principal=ANN) is None  # bob holds the last one
    skip_image(store, handed_ids[2], principal=BOB)
    assert next_image_id(store, handed, principal=ANN) == handed_ids[2]
    events = [e["details"] for e in accounts.audit_entries(store, action="assign_rounds")]
    assert events == [{"round": handed, "annotators": []}, {"round": handed, "annotators": ["bob"]}]


def test_a_typed_name_grants_nothing_once_the_workspace_has_accounts(team, store):
    number, _ = _round(store, 2)
    with pytest.raises(AccessDenied, match="sign in first"):
        next_image_id(store, number, annotator="ann")


# -- double labelling --------------------------------------------------------------------------
def _label_round(store, schema, number, people_values):
    """Each (principal, values) in turn takes its next image and saves; returns who got what."""
    got: dict[str, list[int]] = {}
    round_id = store.round(number)["id"]
    busy = True
    while busy:
        busy = False
        for who, values in people_values:
            image = next_image_id(store, number, principal=who)
            if image is None:
                continue
            busy = True
            save_label(store, schema, image, values, principal=who, round_id=round_id)
            got.setdefault(who.user, []).append(image)
    return got


def test_a_share_of_the_round_is_labelled_twice_without_overwriting_the_first(team, store):
    number, ids = _round(store, 10, share=0.25)
    round_id = store.round(number)["id"]
    got = _label_round(store, team.schema, number,
                       [(ANN, {"color": "red"}), (BOB, {"color": "blue"})])
    doubles = double_ids(store, round_id)
    assert len(doubles) == 3  # ceil(25 % of 10)
    assert sorted(got["ann"] + got["bob"]) == sorted(ids + list(doubles))
    for image_id in ids:
        history = store.label_history(image_id)
        first = history[0]
        assert first.kind == "label" and store.current_label(image_id).id == first.id
        if image_id in doubles:
            [second] = history[1:]
            assert second.kind == "second" and second.annotator != first.annotator
            assert second.values != first.values
        else:
            assert len(history) == 1
    assert len(store.current_labels()) == 10
    assert store.round_progress(number)[0]["done"] == 10


def test_the_second_annotator_does_not_see_the_first_label_and_edits_keep_the_kind(team, store):
    number, ids = _round(store, 1, share=1.0)
    image = next_image_id(store, number, principal=ANN)
    save_label(store, team.schema, image, {"color": "red", "type": "van"}, principal=ANN)
    assert next_image_id(store, number, principal=ANN) is None  # not the first annotator again
    assert next_image_id(store, number, principal=BOB) == image
    task = task_for(store, image, number, annotator="bob")
    assert task.second_label and task.current == {} and not task.labelled_before
    assert "red" not in task.suggestion.values()
    save_label(store, team.schema, image, {"color": "blue"}, principal=BOB)
    save_label(store, team.schema, image, {"color": "green"}, principal=BOB)  # Back + edit
    assert [v.kind for v in store.label_history(image)] == ["label", "second", "second"]
    assert store.current_label(image).values == {"color": "red", "type": "van"}
    assert task_for(store, image, number, annotator="bob").current == {"color": "green"}
    assert next_image_id(store, number, principal=Principal("cy", "annotator")) is None


# -- agreement ---------------------------------------------------------------------------------
def test_agreement_percent_and_kappa_per_pair_and_class(team, store):
    number, ids = _round(store, 6, share=1.0)
    first = ["red", "red", "blue", "blue", "red", "green"]
    second = ["red", "blue", "blue", "blue", "red", "red"]
    round_id = store.round(number)["id"]
    for i, image in enumerate(ids):
        who1, who2 = (ANN, BOB) if i < 4 else (BOB, ANN)
        assert next_image_id(store, number, principal=who1) == image
        save_label(store, team.schema, image, {"color": first[i], "type": "van"}, principal=who1,
                   round_id=round_id)
    for i, image in enumerate(ids):
        who2 = BOB if i < 4 else ANN
        values = {"color": second[i]} | ({"type": "van"} if i else {})
        save_label(store, team.schema, image, values, principal=who2, round_id=round_id)
    report = agreement(store, team.schema)
    assert report.images == 6 and report.disagreements == 3  # 2 colours + image 0's type
    [color] = [a for a in report.overall if a.attribute == "color"]
    assert color.n == 6 and color.agreement == pytest.approx(4 / 6)
    assert color.kappa == pytest.approx(cohen_kappa_score(first, second))
    [pair] = [a for a in report.pairs if a.attribute == "color"]
    assert pair.annotators == ("ann", "bob") and pair.n == 6  # both orders are one pair
    [typ] = [a for a in report.overall if a.attribute == "type"]
    assert typ.n == 5 and typ.agreement == 1.0 and typ.kappa is None  # one class: undefined
    red = next(c for c in report.classes if (c.attribute, c.value) == ("color", "red"))
    assert red.n == 4 and red.agreement == pytest.approx(2 * 2 / (3 + 3))
    assert red.kappa == pytest.approx(cohen_kappa_score([f == "red" for f in first],
                                                        [s == "red" for s in second]))
    assert not any(c.value == "black" for c in report.classes)


# -- review --------------------------------------------------------------------------------------
def test_a_reviewer_settles_a_disagreement_with_history_and_audit(team, store):
    number, ids = _round(store, 3, share=1.0)
    _label_round(store, team.schema, number,
                 [(ANN, {"color": "red", "type": "van"}), (BOB, {"color": "red", "type": "bus"})])
    # bob's images were seconded by ann with her values, and vice versa: all three disagree on type
    queue = review_queue(store, team.schema)
    assert [q.attributes for q in queue] == [["type"]] * 3
    item = queue[0]
    with pytest.raises(AccessDenied, match="needs the reviewer role"):
        decide(store, team.schema, item.image_id, {"color": "red", "type": "van"}, principal=ANN)
    version = decide(store, team.schema, item.image_id, {"color": "red", "type": "van"},
                     principal=ROB)
    current = store.current_label(item.image_id)
    assert (current.version, current.kind, current.annotator) == (version, "review", "rob")
    assert current.values == {"color": "red", "type": "van"}
    assert [v.kind for v in store.label_history(item.image_id)] == ["label", "second", "review"]
    assert item.image_id not in {q.image_id for q in review_queue(store, team.schema)}
    with pytest.raises(UserError, match="no open disagreement"):
        decide(store, team.schema, item.image_id, {"color": "red"}, principal=MAINT)
    [entry] = accounts.audit_entries(store, action="review")
    assert entry["user"] == "rob" and entry["details"]["attributes"] == ["type"]
    assert {entry["details"]["first"]["annotator"], entry["details"]["second"]["annotator"]} == \
        {"ann", "bob"}
    # agreement still measures the two annotators, not the decision
    assert agreement(store, team.schema).disagreements == 3
    assert next(p for p in double_pairs(store) if p.image_id == item.image_id).decision.version \
        == version


# -- progress and throughput -----------------------------------------------------------------
def test_per_annotator_progress_and_images_per_hour(team, store, monkeypatch):
    number, ids = _round(store, 6, share=0.0)
    clock = [1_000_000.0]
    monkeypatch.setattr("data.store._now", lambda: clock[0])
    round_id = store.round(number)["id"]
    # ann: saves 60 s apart, then a 2 h break, then one more 60 s later
    for step, image in zip([0, 60, 60, 7200, 60], ids[:5]):
        clock[0] += step
        save_label(store, team.schema, image, {"color": "red"}, principal=ANN, round_id=round_id)
    clock[0] += 30
    save_label(store, team.schema, ids[5], {"color": "red"}, principal=BOB, round_id=round_id)
    rows = {p.annotator: p for p in annotator_progress(store, now=clock[0])}
    ann, bob = rows["ann"], rows["bob"]
    assert (ann.images, ann.saves, ann.active_s) == (5, 5, 180.0)
    assert ann.images_per_hour == pytest.approx(4 * 3600 / 180)   # the break is left out
    assert ann.by_round == {number: 5} and ann.last_hour == 2  # the two after the break
    assert bob.images == 1 and bob.images_per_hour is None        # one save: no rate yet
    assert list(rows) == ["ann", "bob"]


# -- the store migration ------------------------------------------------------------------------
def test_schema_6_workspace_migrates_with_its_labels(tmp_path):
    db = tmp_path / "old.db"
    store = ProjectStore(db)
    ids = _pool(store, 2)
    store.add_label(ids[0], {"color": "red"}, source="import")
    store.add_label(ids[0], {"color": "blue"}, source="builtin", annotator="kim")
    store.close()
    # take the database back to what schema 6 wrote: no migration-7 tables, the old trigger
    conn = __import__("sqlite3").connect(db)
    conn.executescript("""
        DROP TABLE claims; DROP TABLE round_assignees; DROP TABLE double_items;
        DROP INDEX labels_annotator; DROP TRIGGER labels_current_insert;
        ALTER TABLE labels DROP COLUMN kind;
        CREATE TRIGGER labels_current_insert AFTER INSERT ON labels BEGIN
            UPDATE labels SET is_current = (version = (SELECT MAX(version) FROM labels x
                                                       WHERE x.image_id = NEW.image_id))
                WHERE image_id = NEW.image_id;
        END;
        PRAGMA user_version=6;""")
    conn.close()
    with ProjectStore(db) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert [(v.version, v.kind) for v in store.label_history(ids[0])] == [(1, "label"), (2, "label")]
        assert store.current_label(ids[0]).values == {"color": "blue"}
        store.add_label(ids[0], {"color": "green"}, source="builtin", annotator="bo",
                        kind="second", skip_if_same=False)
        assert store.current_label(ids[0]).values == {"color": "blue"}
        assert store.add_label(ids[0], {"color": "gray"}, source="builtin") == 4
        assert store.current_label(ids[0]).version == 4
