"""Which CVAT task holds which images of which round (the store's ``cvat_tasks`` tables).

Kept here rather than in data/store.py because only the bridge reads and writes these rows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class TaskRecord:
    id: int                 # row id in cvat_tasks
    host: str
    task_id: int
    round_id: int | None
    round_number: int | None
    name: str
    prefilled: bool
    created_at: float
    size: int


def _record(row: Any) -> TaskRecord:
    return TaskRecord(id=row["id"], host=row["host"], task_id=row["task_id"],
                      round_id=row["round_id"], round_number=row["number"], name=row["name"],
                      prefilled=bool(row["prefilled"]), created_at=row["created_at"],
                      size=row["size"])


_SELECT = ("SELECT t.*, r.number, (SELECT COUNT(*) FROM cvat_task_items i WHERE i.cvat_task=t.id)"
           " AS size FROM cvat_tasks t LEFT JOIN rounds r ON r.id=t.round_id")


def tasks(store: Any, host: str | None = None) -> list[TaskRecord]:
    sql, args = _SELECT, []
    if host is not None:
        sql += " WHERE t.host=?"
        args.append(host)
    return [_record(r) for r in store.conn.execute(sql + " ORDER BY t.id", args)]


def task(store: Any, host: str, task_id: int) -> TaskRecord | None:
    row = store.conn.execute(_SELECT + " WHERE t.host=? AND t.task_id=?", (host, task_id)).fetchone()
    return _record(row) if row else None


def tasks_for_round(store: Any, host: str, round_id: int) -> list[TaskRecord]:
    rows = store.conn.execute(_SELECT + " WHERE t.host=? AND t.round_id=? ORDER BY t.id",
                              (host, round_id))
    return [_record(r) for r in rows]


def items(store: Any, record: TaskRecord) -> list[tuple[int, int, str]]:
    """(image id, frame, item name) of a recorded task, in frame order."""
    return [(int(r[0]), int(r[1]), str(r[2])) for r in store.conn.execute(
        "SELECT image_id, frame, item_name FROM cvat_task_items WHERE cvat_task=? ORDER BY frame",
        (record.id,))]


def add_task(store: Any, *, host: str, task_id: int, round_id: int | None, name: str,
             prefilled: bool, rows: Iterable[tuple[int, int, str]]) -> int:
    """Record a task and its (image id, frame, item name) rows in one transaction."""
    with store.transaction():
        cur = store.conn.execute(
            "INSERT INTO cvat_tasks(host, task_id, round_id, name, prefilled, created_at) "
            "VALUES (?,?,?,?,?,?)", (host, task_id, round_id, name, int(prefilled), time.time()))
        row_id = int(cur.lastrowid)
        store.conn.executemany(
            "INSERT INTO cvat_task_items(cvat_task, image_id, frame, item_name) VALUES (?,?,?,?)",
            [(row_id, int(i), int(f), str(n)) for i, f, n in rows])
    return row_id


def forget_task(store: Any, record: TaskRecord) -> None:
    with store.transaction():
        store.conn.execute("DELETE FROM cvat_tasks WHERE id=?", (record.id,))
