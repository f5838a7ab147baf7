"""Races between processes (issue 11, defects 3 and 5): each test runs two or more real processes.

The racing process is tests/race_worker.py. Where a race window is microseconds wide, the worker
sleeps at the exact spot (named in each test) so the interleaving happens on every run; the fix
must hold with the window wide open.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.jobs import (JobConflict, get_job, job_in_this_process, pid_alive, process_start_time,
                       reap_stale, start_job)
from data.cache import ImageCache
from data.store import MIGRATIONS, ProjectStore
from data.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
WORKER = str(REPO / "tests" / "race_worker.py")


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WORKER, *args], cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen], timeout: float = 240.0) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"worker failed ({p.returncode}):\n{out}\n{err}"
        outs.append(out)
    return outs


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker ended early:\n{proc.communicate()}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _pool(ws: Workspace, n: int) -> list[int]:
    with ws.store() as store:
        return [store.add_image(path=f"/p/{i}.jpg", name=f"{i}.jpg", sha256=f"h{i}", width=8,
                                height=8, nbytes=1, split="train")[0] for i in range(n)]


def test_two_processes_appending_to_the_image_cache_keep_their_own_rows(tmp_path: Path) -> None:
    """Without a lock both appenders read the same end of file and return the same row numbers,
    so one image's database row points at the other's pixels."""
    go = tmp_path / "go"
    procs = [_spawn("cache", str(tmp_path / "cache"), str(tag), "150", str(go),
                    str(tmp_path / f"rows{tag}.json")) for tag in (1, 2)]
    time.sleep(0.5)
    go.write_text("1")
    _finish(procs)
    cache = ImageCache(tmp_path / "cache", 8)
    assert len(cache) == 300
    pixels = cache.array()
    for tag in (1, 2):
        rows = json.loads((tmp_path / f"rows{tag}.json").read_text())
        assert len(set(rows)) == 150
        assert all(int(pixels[r, 0, 0, 0]) == tag and (pixels[r] == tag).all() for r in rows), \
            f"rows returned to appender {tag} hold another appender's pixels"


def test_two_queue_processes_never_queue_the_same_image(workspace: Workspace, tmp_path) -> None:
    """Both read the candidates, both spend 1 s selecting, both record: today they share images.
    Recording re-checks the picks in the IMMEDIATE transaction that writes the round."""
    _pool(workspace, 30)
    go = tmp_path / "go"
    outs = [tmp_path / f"q{i}.json" for i in (0, 1)]
    procs = [_spawn("queue", str(workspace.root), "10", "1.0", str(go), str(o)) for o in outs]
    time.sleep(0.5)
    go.write_text("1")
    _finish(procs)
    batches = [json.loads(o.read_text()) for o in outs]
    assert sorted(b["round"] for b in batches) == [0, 1]
    a, b = (set(x["ids"]) for x in batches)
    assert len(a) == len(b) == 10
    assert not a & b, f"two rounds queued the same images {sorted(a & b)}"
    with workspace.store() as store:
        assert len(store.queued_ids()) == 20


def test_concurrent_first_open_migrates_once(tmp_path: Path) -> None:
    """Three processes open a new database; each sleeps after reading the schema version. If
    the version is read before the write lock, the later ones re-run migration 1 and fail."""
    go, db = tmp_path / "go", tmp_path / "project.db"
    procs = [_spawn("open", str(db), "0.4", str(go)) for _ in range(3)]
    time.sleep(0.5)
    go.write_text("1")
    _finish(procs)
    with ProjectStore(db) as store:
        assert store.schema_version == len(MIGRATIONS)


def test_concurrent_round_record_merges_keep_every_key(workspace: Workspace, tmp_path) -> None:
    """update_round_record reads, merges and writes; outside a transaction, two processes
    overwrite each other's keys."""
    ids = _pool(workspace, 2)
    with workspace.store() as store:
        number = store.create_round(ids, kind="seed")
    go = tmp_path / "go"
    procs = [_spawn("record", str(workspace.root), str(number), prefix, "3", "0.2", str(go))
             for prefix in ("a", "b")]
    time.sleep(0.5)
    go.write_text("1")
    _finish(procs)
    with workspace.store() as store:
        record = store.round(number)["record"]
    assert set(record) == {f"{p}{i}" for p in "ab" for i in range(3)}


def test_cli_demo_pool_holds_the_pool_lock_against_the_app(workspace: Workspace, tmp_path) -> None:
    """A CLI demo-pool in progress is an active pool job: the app's ingest is refused, and the
    CLI's job ends succeeded when the command does."""
    started, release = tmp_path / "started", tmp_path / "release"
    proc = _spawn("cli_demo", str(workspace.root), str(started), str(release))
    try:
        _wait_for(started, proc)
        with pytest.raises(JobConflict, match="create demo pool"):
            start_job(workspace, "ingest", {"path": "/x"}, spawn=False)
        with workspace.store() as store:
            active = store.jobs(active_only=True)
        assert [(j["kind"], j["pid"]) for j in active] == [("demo", proc.pid)]
    finally:
        release.write_text("1")
    _finish([proc])
    assert get_job(workspace, active[0]["id"])["status"] == "succeeded"


def test_cli_ingest_is_refused_while_the_app_ingests(workspace: Workspace, tmp_path) -> None:
    """The other direction: an app pool job running, the CLI ingest stops with one line."""
    (tmp_path / "imgs").mkdir()
    with job_in_this_process(workspace, "demo", {}):
        proc = subprocess.run([sys.executable, "-m", "core", "--workspace", str(workspace.root),
                               "ingest", str(tmp_path / "imgs"), "--quiet"], cwd=str(REPO),
                              capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: a create demo pool job")
    assert "Traceback" not in proc.stderr


def test_then_queue_after_training_takes_the_queue_lock(workspace: Workspace, tmp_path) -> None:
    """While a training job ranks its follow-up batch, a queue job is refused (today it only
    held the model lock, so a queue job could rank the same images at the same time)."""
    _pool(workspace, 12)
    started, release = tmp_path / "started", tmp_path / "release"
    proc = _spawn("train_queue", str(workspace.root), str(started), str(release))
    try:
        _wait_for(started, proc, timeout=240)
        with pytest.raises(JobConflict, match="score pool and rank queue"):
            start_job(workspace, "queue", {}, spawn=False)
    finally:
        release.write_text("1")
    assert _finish([proc])[0].strip().splitlines()[-1] == "succeeded"
    with workspace.store() as store:
        train = store.jobs("train")[-1]
        queue = store.jobs("queue")[-1]
    assert train["result"]["queue"] == {"round": 0, "size": 3}
    assert queue["status"] == "succeeded" and queue["params"]["after_training"] is True


def test_then_queue_is_skipped_with_a_reason_while_another_queue_job_runs(
        workspace: Workspace) -> None:
    from core.job_runners import _queue_after_training
    from core.jobs import JobContext

    _pool(workspace, 5)
    with workspace.store() as store:
        ctx = JobContext(store, store.create_job("train"))
        with job_in_this_process(workspace, "queue", {}):
            out = _queue_after_training(workspace, {"then_queue": 2, "strategy": "random"}, ctx,
                                        "model #1 trained")
        assert store.rounds() == []
    assert "refused" in out["queue"]
    assert out["message"].startswith("model #1 trained; no batch queued: a score pool")


def test_reused_pid_is_not_a_live_worker(workspace: Workspace) -> None:
    """A job row names its worker by pid and start time. A live process that now holds the pid
    but started at another time is not that worker: the job is reaped."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = process_start_time(other.pid)
        assert started is not None and pid_alive(other.pid, started)
        assert not pid_alive(other.pid, str(int(started) - 100))
        with workspace.store() as store:
            same = store.create_job("selftest")
            store.update_job(same, status="running", pid=other.pid, pid_started=started)
        with workspace.store() as store:
            assert reap_stale(store) == []
        with workspace.store() as store:
            store.update_job(same, status="succeeded")
            reused = store.create_job("selftest")
            store.update_job(reused, status="running", pid=other.pid,
                             pid_started=str(int(started) - 100))
        with workspace.store() as store:
            assert reap_stale(store) == [reused]
        assert "stopped unexpectedly" in get_job(workspace, reused)["message"]
    finally:
        other.kill()
        other.wait()


def test_worker_records_its_start_time(workspace: Workspace) -> None:
    from core.jobs import wait_job
    job_id = start_job(workspace, "selftest", {"steps": 1})
    job = wait_job(workspace, job_id, timeout=120)
    assert job["status"] == "succeeded"
    assert job["pid_started"] is not None and int(job["pid_started"]) > 0
