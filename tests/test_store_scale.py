"""SQLite at pool scale (issue 11, defect 5): id lists past SQLite's parameter limit, indexed
Label-page queries whose cost does not follow the pool's size, the v1 -> v2 migration."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Callable

import pytest

from core import labeling
from core.dashboard import learning_curve
from data.store import MIGRATIONS, ProjectStore


def _bulk_pool(store: ProjectStore, n: int) -> None:
    """n images in one transaction (add_image one by one is too slow for a test)."""
    t = time.time()
    with store.transaction():
        store.conn.executemany(
            "INSERT INTO images(path, name, sha256, width, height, bytes, split, added_at) "
            "VALUES (?,?,?,?,?,?,?,?)",
            ((f"/p/{i}.jpg", f"{i}.jpg", f"h{i}", 8, 8, 1, ("train", "val", "test")[i % 3], t)
             for i in range(1, n + 1)))


def test_images_predictions_ground_truth_take_100k_ids(tmp_path: Path) -> None:
    """Today: one bound parameter per id, 'too many SQL variables' past SQLite's limit."""
    n = 100_000
    with ProjectStore(tmp_path / "p.db") as store:
        # SQLite's default limit; this Python's build may allow more, the README's users' not.
        store.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32766)
        _bulk_pool(store, n)
        model = store.add_model("m.pt")
        with store.transaction():
            store.conn.executemany(
                "INSERT INTO predictions(model_id, image_id, attribute, value, prob) "
                "VALUES (?,?,?,?,?)", ((model, i, "color", "red", 0.5) for i in range(1, n + 1)))
            store.conn.executemany(
                "INSERT INTO ground_truth(image_id, attribute, value) VALUES (?,?,?)",
                ((i, "color", "red") for i in range(1, n + 1)))
        ids = list(range(1, n + 1))
        records = store.images(ids)
        assert len(records) == n and records[0].id == 1 and records[-1].id == n
        assert len(store.images(ids, split="test")) == n // 3
        assert len(store.predictions(model, ids)) == n
        assert len(store.ground_truth(ids)) == n
        assert store.images([5, 3, 3, 999_999]) == [store.image(3), store.image(5)]
        assert store.predictions(model, []) == {} and store.ground_truth([]) == {}


def _vm_steps(store: ProjectStore, fn: Callable[[], object]) -> int:
    """SQLite virtual-machine steps (in hundreds) that ``fn`` costs: a full scan shows up."""
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0
    store.conn.set_progress_handler(tick, 100)
    try:
        fn()
    finally:
        store.conn.set_progress_handler(None, 0)
    return steps[0]


def _label_page_store(path: Path, pool: int) -> tuple[ProjectStore, int, int]:
    """A pool of ``pool`` images with predictions for all, 3 rounds of 20, 30 labels."""
    store = ProjectStore(path)
    _bulk_pool(store, pool)
    model = store.add_model("m.pt")
    with store.transaction():
        store.conn.executemany(
            "INSERT INTO predictions(model_id, image_id, attribute, value, prob) VALUES (?,?,?,?,?)",
            ((model, i, a, "x", 0.5) for i in range(1, pool + 1) for a in ("color", "type")))
        store.conn.executemany(
            "INSERT INTO ground_truth(image_id, attribute, value) VALUES (?,?,?)",
            ((i, "color", "red") for i in range(1, pool + 1)))
    for r in range(3):
        store.create_round(list(range(1 + 20 * r, 21 + 20 * r)), kind="al")
    for i in range(1, 31):
        store.add_label(i, {"color": "red"}, source="builtin")
    return store, model, 45


@pytest.mark.parametrize("name, query", [
    ("batches", lambda s, m, i: labeling.batches(s)),
    ("default_batch", lambda s, m, i: labeling.default_batch(s)),
    ("next_image_id", lambda s, m, i: labeling.next_image_id(s, 2)),
    ("task_for", lambda s, m, i: labeling.task_for(s, i, 2)),
    ("predictions one image", lambda s, m, i: s.predictions(m, [i])),
    ("ground truth one image", lambda s, m, i: s.ground_truth([i])),
    ("current model", lambda s, m, i: s.current_model()["id"]),
    ("latest round", lambda s, m, i: s.latest_round()["number"]),
    ("taken_ids", lambda s, m, i: s.taken_ids(range(1, 200))),
    ("count_images", lambda s, m, i: s.count_images() > 0),
    ("status", lambda s, m, i: s.status_counts()["labelled_by_source"]),
    ("learning curve", lambda s, m, i: len(learning_curve(s))),
])
def test_label_page_queries_do_not_scan_the_pool(tmp_path: Path, name: str, query) -> None:
    """Same rounds and labels, a 20x larger pool: the query's SQLite work stays the same.
    Today predictions()/ground_truth() read every row and batches() every label."""
    small, m1, i1 = _label_page_store(tmp_path / "small.db", 500)
    large, m2, i2 = _label_page_store(tmp_path / "large.db", 10_000)
    try:
        assert query(small, m1, i1) == query(large, m2, i2)
        s, l = _vm_steps(small, lambda: query(small, m1, i1)), _vm_steps(large, lambda: query(large, m2, i2))
        assert l <= 1.5 * s + 5, f"{name}: {s} -> {l} hundred VM steps for a 20x larger pool"
    finally:
        small.close()
        large.close()


def test_status_counts_match_the_labels(tmp_path: Path) -> None:
    store, _, _ = _label_page_store(tmp_path / "s.db", 300)
    with store:
        store.add_label(1, {"color": "blue", "type": "van"}, source="cvat")  # a re-label
        store.add_label(31, {}, source="builtin")                           # visited, empty
        counts = store.status_counts()
        assert counts["images"] == 300 and counts["by_split"] == {"train": 100, "val": 100, "test": 100}
        assert counts["labelled"] == 30 and counts["unlabelled"] == 270
        assert sum(counts["labelled_by_split"].values()) == 30
        assert counts["labelled_by_split"]["train"] == sum(1 for i in range(1, 31) if i % 3 == 1)
        assert counts["labelled_by_source"] == {"builtin": 30, "cvat": 1}
        assert counts["labelled_by_attribute"] == {"color": 30, "type": 1}
        assert [r["size"] for r in counts["rounds"]] == [20, 20, 20]
        store.add_label(2, {}, source="builtin")  # labelled, then marked all-unsure
        assert store.labelled_ids() == set(store.current_labels()) == set(range(1, 31)) - {2}
        assert store.taken_ids([2, 31, 61, 299]) == {2, 31}  # queued in a round


def test_image_counts_follow_inserts_moves_and_deletes(tmp_path: Path) -> None:
    with ProjectStore(tmp_path / "c.db") as store:
        _bulk_pool(store, 30)
        store.set_split(3, "val")                         # train -> val
        store.add_image(path="x", name="x", sha256="new", width=1, height=1, nbytes=1,
                        split="test")
        store.conn.execute("DELETE FROM images WHERE id=1")  # a val image
        truth = dict(store.conn.execute("SELECT split, COUNT(*) FROM images GROUP BY split"))
        assert store.status_counts()["by_split"] == truth == {"train": 9, "val": 10, "test": 11}
        assert store.count_images() == 30


def test_version_1_database_is_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(MIGRATIONS[0])
    conn.execute("INSERT INTO jobs(kind, status, created_at, updated_at) VALUES ('x','running',0,0)")
    conn.executemany("INSERT INTO images(path, name, sha256, width, height, bytes, split, added_at)"
                     " VALUES ('p','n',?,1,1,1,?,0)", [("a", "train"), ("b", "train"), ("c", "test")])
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    with ProjectStore(db) as store:
        assert store.schema_version == len(MIGRATIONS) >= 2
        assert store.jobs()[0]["pid_started"] is None
        assert store.status_counts()["by_split"] == {"train": 2, "val": 0, "test": 1}
        indexes = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"round_items_rank", "images_name", "jobs_status"} <= indexes
