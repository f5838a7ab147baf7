"""Status and the queue's page queries read the labels, never the pool's rows (issue 11, scale).

``status`` was 12/18/36 ms at 10k/100k/1M images because it joined every current label to its
image row for the split; the queue's ``training_label_count`` and ``covered_ids`` (run by
``auto_reason`` on every Queue page load) read every image. Labels now carry their image's split
(kept by triggers), so these queries cost what the labels cost.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

import pytest

from core import queue_view
from data.store import MIGRATIONS, ProjectStore
from data.workspace import Workspace
from tests.test_store_scale import _bulk_pool, _label_page_store, _vm_steps


def _tables_read(store: ProjectStore, fn: Callable[[], object]) -> set[str]:
    """Tables whose columns ``fn``'s statements read (SQLite's authorizer, at prepare time)."""
    seen: set[str] = set()

    def auth(action: int, arg1, arg2, db, trigger) -> int:
        if action == sqlite3.SQLITE_READ and arg1:
            seen.add(arg1)
        return sqlite3.SQLITE_OK
    store.conn.set_authorizer(auth)
    try:
        fn()
    finally:
        store.conn.set_authorizer(None)
    return seen


def test_status_reads_no_pool_row(tmp_path: Path) -> None:
    store, _, _ = _label_page_store(tmp_path / "s.db", 300)
    with store:
        tables = _tables_read(store, store.status_counts)
        assert "labels" in tables and "images" not in tables
        assert _tables_read(store, lambda: store.labelled_count(exclude_splits=("test",))) \
            .isdisjoint({"images"})
        assert _tables_read(store, lambda: store.label_value_counts(exclude_splits=("test",))) \
            .isdisjoint({"images"})


def test_label_counts_match_a_plain_recount(tmp_path: Path) -> None:
    store, _, _ = _label_page_store(tmp_path / "s.db", 300)
    with store:
        store.add_label(4, {"color": "blue", "type": "van"}, source="cvat")   # a re-label
        store.add_label(7, {}, source="builtin")                             # all unsure
        store.set_split(10, "val")                                           # train -> val
        split = {im.id: im.split for im in store.images()}
        labels = store.current_labels()
        not_test = [i for i in labels if split[i] != "test"]
        assert store.labelled_count() == len(labels)
        assert store.labelled_count(exclude_splits=("test",)) == len(not_test)
        counts: dict[str, dict[str, int]] = {}
        for i in not_test:
            for a, v in labels[i].items():
                counts.setdefault(a, {}).setdefault(v, 0)
                counts[a][v] += 1
        assert store.label_value_counts(exclude_splits=("test",)) == counts
        taken = store.labelled_ids() | store.queued_ids()
        want = sorted(i for i in taken if split[i] not in ("val", "test"))
        assert store.covered_ids(exclude_splits=("val", "test")) == want
        assert store.covered_ids() == sorted(taken)
        assert store.split_ids("val") == sorted(i for i, s in split.items() if s == "val")
        by_split = store.status_counts()["labelled_by_split"]
        assert by_split == {s: sum(1 for i in labels if split[i] == s) for s in ("train", "val", "test")}


@pytest.mark.parametrize("name, query", [
    ("training_label_count", lambda s: s.labelled_count(exclude_splits=("test",))),
    ("label_counts", lambda s: s.label_value_counts(exclude_splits=("test",))),
    ("covered_ids", lambda s: s.covered_ids(exclude_splits=("val", "test"))),
])
def test_queue_page_queries_do_not_scan_the_pool(tmp_path: Path, name: str, query) -> None:
    small, _, _ = _label_page_store(tmp_path / "small.db", 500)
    large, _, _ = _label_page_store(tmp_path / "large.db", 10_000)
    try:
        assert query(small) == query(large)
        s, l = _vm_steps(small, lambda: query(small)), _vm_steps(large, lambda: query(large))
        assert l <= 1.5 * s + 5, f"{name}: {s} -> {l} hundred VM steps for a 20x larger pool"
    finally:
        small.close()
        large.close()


def test_queue_view_uses_the_indexed_counts(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws").init()
    with ws.store() as store:
        _bulk_pool(store, 60)
        store.create_round([1, 2, 3, 4, 5, 6], kind="seed")
        for i in (1, 2, 3):
            store.add_label(i, {"color": "red"}, source="builtin")
    # ids 1..6: splits val, test, train, val, test, train (_bulk_pool: i % 3)
    assert queue_view.training_label_count(ws) == 2           # 1 (val) and 3 (train)
    assert queue_view.covered_ids(ws) == [3, 6]               # train only: labelled or queued
    assert queue_view.label_counts(ws) == {"color": {"red": 2}}


def test_labels_of_an_older_database_get_their_split(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for script in MIGRATIONS[:4]:
        conn.executescript(script)
    conn.execute("INSERT INTO images(path, name, sha256, width, height, bytes, split, added_at)"
                 " VALUES ('p','n','a',1,1,1,'val',0)")
    conn.execute("INSERT INTO labels(image_id, version, source, created_at) VALUES (1,1,'builtin',0)")
    conn.execute("INSERT INTO label_values(label_id, attribute, value) VALUES (1,'color','red')")
    conn.execute("PRAGMA user_version=4")
    conn.commit()
    conn.close()
    with ProjectStore(db) as store:
        assert store.status_counts()["labelled_by_split"] == {"train": 0, "val": 1, "test": 0}
