"""Faults between the bridge and CVAT: clear errors, bounded retries, nothing half-written."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from cvat_helpers import CvatTestServer, add_pool, fast_settings
from cvat_bridge import records
from cvat_bridge.client import (CvatAuthError, CvatServerError, CvatTimeout, CvatUnavailable,
                                connect)
from cvat_bridge.pull import pull
from cvat_bridge.push import push_round

logging.getLogger("cvat_bridge").setLevel(logging.CRITICAL)

GOOD = {"color": "red", "type": "sedan", "orientation": "front"}


def snapshot(store) -> tuple:
    q = store.conn.execute
    return (q("SELECT * FROM labels ORDER BY id").fetchall(),
            q("SELECT * FROM label_values ORDER BY label_id, attribute").fetchall(),
            q("SELECT * FROM cvat_tasks ORDER BY id").fetchall(),
            q("SELECT * FROM cvat_task_items ORDER BY cvat_task, frame").fetchall())


@pytest.fixture
def pushed(workspace):
    """A server with a pushed, fully tagged 4-image task; yields (server, task id)."""
    ids = add_pool(workspace, 4)
    with CvatTestServer() as srv:
        with workspace.store() as store, connect(fast_settings(srv.url)) as conn:
            number = store.create_round(ids, kind="seed")
            res = push_round(conn, workspace, store, number)
        srv.set_tags(res.task_id, {Path(n).stem: GOOD for n in srv.frame_names(res.task_id)})
        yield srv, res.task_id


def _statuses(srv, pattern: str) -> list[int]:
    return [s for m, p, s in srv.log if pattern in p]


def test_5xx_is_retried_then_succeeds(pushed, workspace):
    srv, task_id = pushed
    srv.log.clear()
    srv.faults.fail(r"^/api/jobs\?", times=2)                     # GET: urllib3 retries
    srv.faults.fail(r"/dataset/export", times=1, method="POST")   # POST: whole export retried
    with workspace.store() as store, connect(fast_settings(srv.url)) as conn:
        [res] = pull(conn, workspace, store)
    assert res.report.counts["imported"] == 4
    assert _statuses(srv, "/api/jobs?")[:3] == [500, 500, 200]
    assert _statuses(srv, "/dataset/export") == [500, 202]


def test_persistent_5xx_gives_clear_error_and_no_change(pushed, workspace):
    srv, _ = pushed
    srv.log.clear()
    srv.faults.fail(r"action=download", times=None)
    with workspace.store() as store, connect(fast_settings(srv.url)) as conn:
        before = snapshot(store)
        t0 = time.monotonic()
        with pytest.raises(CvatServerError, match="500"):
            pull(conn, workspace, store)
        assert time.monotonic() - t0 < 5                          # bounded
        assert snapshot(store) == before
    downloads = _statuses(srv, "action=download")
    assert 1 < len(downloads) <= 3 * 3 and set(downloads) == {500}


def test_401_after_sessions_expire(pushed, workspace):
    srv, _ = pushed
    with workspace.store() as store, connect(fast_settings(srv.url)) as conn:
        before = snapshot(store)
        srv.expire_sessions()
        with pytest.raises(CvatAuthError, match="refused the credentials"):
            pull(conn, workspace, store)
        assert snapshot(store) == before


def test_wrong_password_is_an_auth_error():
    with CvatTestServer() as srv:
        with pytest.raises(CvatAuthError, match="Unable to log in"):
            connect(fast_settings(srv.url, password="wrong"))


def test_403_readonly_user_cannot_push(workspace):
    ids = add_pool(workspace, 2)
    with CvatTestServer(users={"viewer": "pw"}, readonly_users={"viewer"}) as srv:
        with workspace.store() as store, \
                connect(fast_settings(srv.url, username="viewer", password="pw")) as conn:
            number = store.create_round(ids, kind="seed")
            before = snapshot(store)
            with pytest.raises(CvatAuthError, match="may not"):
                push_round(conn, workspace, store, number)
            assert snapshot(store) == before
        assert srv.state.tasks == {}


def test_slow_server_times_out(pushed, workspace):
    srv, _ = pushed
    with workspace.store() as store, \
            connect(fast_settings(srv.url, timeout_s=0.3, retries=1)) as conn:
        before = snapshot(store)
        srv.faults.slow(r"^/api/requests/", 1.0)
        t0 = time.monotonic()
        with pytest.raises(CvatTimeout, match="did not answer in time"):
            pull(conn, workspace, store)
        assert time.monotonic() - t0 < 8
        assert snapshot(store) == before


def test_export_that_never_finishes(pushed, workspace):
    srv, _ = pushed
    srv.faults.export_never_finishes = True
    with workspace.store() as store, \
            connect(fast_settings(srv.url, operation_timeout_s=0.3)) as conn:
        before = snapshot(store)
        with pytest.raises(CvatTimeout, match="did not finish within 0.3 s"):
            pull(conn, workspace, store)
        assert snapshot(store) == before


def test_server_down(pushed, workspace):
    srv, _ = pushed
    url = srv.url
    srv.stop()
    with pytest.raises(CvatUnavailable, match="cannot reach CVAT"):
        connect(fast_settings(url))


def test_failed_task_creation_removes_the_task_and_records_nothing(workspace):
    ids = add_pool(workspace, 3)
    with CvatTestServer() as srv:
        srv.faults.create_fails_with = "Not enough disk space"
        with workspace.store() as store, connect(fast_settings(srv.url)) as conn:
            number = store.create_round(ids, kind="seed")
            with pytest.raises(CvatServerError, match="Not enough disk space"):
                push_round(conn, workspace, store, number)
            assert records.tasks(store) == []
        assert srv.state.tasks == {}                   # the half-made task was deleted
        assert ("DELETE", "/api/tasks/1", 204) in srv.log


def test_pull_of_several_tasks_is_all_or_nothing(workspace):
    ids = add_pool(workspace, 4)
    with CvatTestServer() as srv, workspace.store() as store, \
            connect(fast_settings(srv.url)) as conn:
        first = push_round(conn, workspace, store, store.create_round(ids[:2], kind="seed"))
        second = push_round(conn, workspace, store, store.create_round(ids[2:], kind="active"))
        for task_id in (first.task_id, second.task_id):
            srv.set_tags(task_id, {Path(n).stem: GOOD for n in srv.frame_names(task_id)})
        srv.faults.fail(rf"/api/tasks/{second.task_id}/annotations\?", times=None)
        before = snapshot(store)
        with pytest.raises(CvatServerError):
            pull(conn, workspace, store)
        assert snapshot(store) == before                    # task 1's labels not written either
        srv.faults.clear()
        results = pull(conn, workspace, store)
        assert [r.report.counts["imported"] for r in results] == [2, 2]


def test_task_deleted_on_the_server(pushed, workspace):
    from cvat_bridge.pull import task_status
    srv, task_id = pushed
    del srv.state.tasks[task_id]
    with workspace.store() as store, connect(fast_settings(srv.url)) as conn:
        [status] = task_status(conn, store)
        assert status.exists is False and "deleted on the server" in status.summary()
        before = snapshot(store)
        [res] = pull(conn, workspace, store)            # skipped with a warning (defect 6)
        assert res.missing and "deleted on the server, skipped" in res.summary()
        assert f"forget --task {task_id}" in res.summary()
        assert snapshot(store) == before
