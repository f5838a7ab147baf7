"""Project store: images, label history and provenance, fixed test split, rounds, jobs, migrations."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from data.store import MIGRATIONS, ProjectStore, StoreError


@pytest.fixture
def store(tmp_path: Path) -> ProjectStore:
    s = ProjectStore(tmp_path / "project.db")
    yield s
    s.close()


def _add(store: ProjectStore, n: int, split: str = "train") -> int:
    image_id, created = store.add_image(path=f"/pool/{n}.jpg", name=f"{n}.jpg", sha256=f"h{n}",
                                        width=64, height=48, nbytes=1000, split=split)
    assert created
    return image_id


def test_pragmas_and_migrations(store: ProjectStore, tmp_path: Path) -> None:
    assert store.schema_version == len(MIGRATIONS)
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    store.close()
    again = ProjectStore(tmp_path / "project.db")   # reopening does not re-run migrations
    assert again.schema_version == len(MIGRATIONS)
    again.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer version"):
        ProjectStore(path)


def test_same_content_hash_is_one_image(store: ProjectStore) -> None:
    a = _add(store, 1)
    again, created = store.add_image(path="/elsewhere/copy.jpg", name="copy.jpg", sha256="h1",
                                     width=64, height=48, nbytes=1000, split="train")
    assert (again, created) == (a, False)
    assert store.count_images() == 1
    with pytest.raises(StoreError, match="split"):
        store.add_image(path="x", name="x", sha256="h9", width=1, height=1, nbytes=1,
                        split="holdout")


def test_relabel_adds_versions_with_provenance(store: ProjectStore) -> None:
    image = _add(store, 1)
    assert store.add_label(image, {"color": "red"}, source="builtin", annotator="ann") == 1
    assert store.add_label(image, {"color": "red"}, source="builtin", annotator="ann") is None
    assert store.add_label(image, {"color": "blue", "type": "suv"}, source="cvat",
                           source_ref="task 3 / job 7") == 2
    assert store.add_label(image, {"color": "blue", "type": "suv"}, source="import",
                           skip_if_same=False) == 3
    history = store.label_history(image)
    assert [h.version for h in history] == [1, 2, 3]
    assert [h.source for h in history] == ["builtin", "cvat", "import"]
    assert history[0].values == {"color": "red"}           # never overwritten
    assert history[1].source_ref == "task 3 / job 7" and history[0].annotator == "ann"
    current = store.current_label(image)
    assert current is not None and current.version == 3
    assert current.values == {"color": "blue", "type": "suv"}


def test_partial_labels_and_counts(store: ProjectStore) -> None:
    a, b, c = _add(store, 1), _add(store, 2, "test"), _add(store, 3)
    store.add_label(a, {"color": "red"}, source="builtin")
    store.add_label(b, {"orientation": "left", "type": "van"}, source="simulated")
    store.add_label(c, {}, source="builtin")                # an empty label is not "labelled"
    assert store.current_labels() == {a: {"color": "red"},
                                      b: {"orientation": "left", "type": "van"}}
    assert store.current_labels(split="test") == {b: {"orientation": "left", "type": "van"}}
    assert store.labelled_ids() == {a, b}
    assert store.unlabelled_ids() == [c]
    counts = store.status_counts()
    assert counts["labelled"] == 2 and counts["unlabelled"] == 1
    assert counts["labelled_by_attribute"] == {"color": 1, "orientation": 1, "type": 1}
    assert counts["by_split"] == {"train": 2, "val": 0, "test": 1}
    assert counts["labelled_by_source"]["simulated"] == 1


def test_unknown_source_and_image_are_refused(store: ProjectStore) -> None:
    image = _add(store, 1)
    with pytest.raises(StoreError, match="source"):
        store.add_label(image, {"color": "red"}, source="guess")
    with pytest.raises(StoreError, match="no image"):
        store.add_label(999, {"color": "red"}, source="builtin")


def test_test_split_is_fixed(store: ProjectStore) -> None:
    train, test = _add(store, 1, "train"), _add(store, 2, "test")
    store.set_split(train, "val")
    assert store.image(train).split == "val"
    with pytest.raises(StoreError, match="fixed"):
        store.set_split(test, "train")
    with pytest.raises(StoreError, match="fixed"):
        store.set_split(train, "test")
    assert store.image(test).split == "test"


def test_ground_truth_is_separate_from_labels(store: ProjectStore) -> None:
    image = _add(store, 1)
    store.set_ground_truth(image, {"color": "red", "type": "bus"})
    store.set_ground_truth(image, {"color": "blue"})
    assert store.ground_truth() == {image: {"color": "blue"}}
    assert store.current_label(image) is None


def test_rounds_queue_and_records(store: ProjectStore) -> None:
    ids = [_add(store, i) for i in range(5)]
    assert store.create_round(ids[:2], kind="seed", strategy="random") == 0
    assert store.create_round(ids[2:4], kind="al", strategy="entropy", scores=[0.9, 0.5]) == 1
    assert [r["size"] for r in store.rounds()] == [2, 2]
    assert [i["image_id"] for i in store.round_items(1)] == ids[2:4]
    assert store.round_items(1)[0]["score"] == pytest.approx(0.9)
    assert store.queued_ids() == set(ids[:4])
    assert store.unlabelled_ids(exclude_queued=True) == [ids[4]]
    store.update_round_record(1, {"labelled": 2})
    assert store.latest_round()["record"] == {"labelled": 2}
    with pytest.raises(StoreError):
        store.create_round(ids[:1], kind="al", scores=[1.0, 2.0])


def test_rejects_upsert(store: ProjectStore) -> None:
    store.add_reject("/pool/bad.jpg", "truncated image", "/pool")
    store.add_reject("/pool/bad.jpg", "zero-byte file", "/pool")
    assert [(r["path"], r["reason"]) for r in store.rejects()] == [("/pool/bad.jpg", "zero-byte file")]


def test_jobs_lifecycle(store: ProjectStore) -> None:
    job = store.create_job("train", {"epochs": 2})
    assert store.job(job)["status"] == "queued"
    store.update_job(job, status="running", progress=0.5, message="epoch 1", pid=123,
                     log_entry={"epoch": 1, "loss": 0.7})
    store.update_job(job, log_entry={"epoch": 2, "loss": 0.5})
    store.request_cancel(job)
    j = store.job(job)
    assert (j["status"], j["progress"], j["pid"], j["cancel_requested"]) == ("running", 0.5, 123, 1)
    assert [e["epoch"] for e in j["log"]] == [1, 2] and j["params"] == {"epochs": 2}
    assert [x["id"] for x in store.jobs(active_only=True)] == [job]
    store.update_job(job, status="succeeded", result={"model": 1})
    assert store.jobs("train", active_only=True) == []
    assert store.job(job)["result"] == {"model": 1}
    with pytest.raises(sqlite3.IntegrityError):
        store.update_job(job, status="exploded")
    with pytest.raises(StoreError):
        store.job(999)


def test_models_predictions_scores(store: ProjectStore) -> None:
    image = _add(store, 1)
    m1 = store.add_model("models/1.pt", metrics={"acc": 0.5})
    m2 = store.add_model("models/2.pt")
    assert store.current_model()["id"] == m2
    store.set_current_model(m1)
    assert store.current_model()["metrics"] == {"acc": 0.5}
    store.save_predictions(m1, [(image, "color", "red", 0.8)])
    store.save_predictions(m1, [(image, "color", "blue", 0.6)])
    assert store.predictions(m1) == {image: {"color": ("blue", 0.6)}}
    store.save_scores(m1, [(image, "entropy", 1.5)])
    assert store.scores(m1, "entropy") == {image: 1.5}


def test_transaction_rolls_back_as_a_whole(store: ProjectStore) -> None:
    with pytest.raises(RuntimeError):
        with store.transaction():
            _add(store, 1)
            raise RuntimeError("boom")
    assert store.count_images() == 0


def test_foreign_keys_are_enforced(store: ProjectStore) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.conn.execute("INSERT INTO ground_truth(image_id, attribute, value) VALUES (42, 'color', 'red')")
