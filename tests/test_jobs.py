"""Background jobs: a real worker process, one job per lock group, cancel, dead workers, errors."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from core.cli import main
from data.errors import UserError
from core.jobs import (JobConflict, JobContext, active_jobs, cancel_job,
                       get_job, latest_job, log_path, reap_stale, run_job, start_job, wait_job)
from data.workspace import Workspace


def test_worker_process_runs_job_and_records_progress(workspace: Workspace) -> None:
    job_id = start_job(workspace, "selftest", {"steps": 3})
    job = wait_job(workspace, job_id, timeout=120)
    assert job["status"] == "succeeded", (job["message"], log_path(workspace, job_id).read_text())
    assert job["progress"] == 1.0
    assert job["result"]["steps"] == 3
    assert [e["step"] for e in job["log"]] == [1, 2, 3]
    assert [e["value"] for e in job["log"]] == [1, 4, 9]
    assert job["pid"] and job["message"] == "counted to 3"
    assert "job %d: succeeded" % job_id in log_path(workspace, job_id).read_text()


def test_second_job_in_same_group_is_refused_then_cancel_frees_it(workspace: Workspace) -> None:
    first = start_job(workspace, "selftest", {"steps": 200, "delay": 0.1})
    with pytest.raises(JobConflict, match=f"#{first}"):
        start_job(workspace, "selftest", {"steps": 1})
    # another tab (a fresh store connection) sees the same active job
    with workspace.store() as store:
        assert [j["id"] for j in active_jobs(store, kind="selftest")] == [first]
    cancel_job(workspace, first)
    job = wait_job(workspace, first, timeout=120)
    assert job["status"] == "cancelled"
    assert job["progress"] < 1.0
    second = start_job(workspace, "selftest", {"steps": 1}, spawn=False)
    assert run_job(workspace, second) == "succeeded"


def test_dead_worker_is_marked_failed_and_releases_the_lock(workspace: Workspace) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job_id = start_job(workspace, "selftest", {"steps": 1}, spawn=False)
    with workspace.store() as store:
        store.update_job(job_id, status="running", pid=dead.pid)
        assert reap_stale(store) == [job_id]
        assert "stopped unexpectedly" in store.job(job_id)["message"]
    start_job(workspace, "selftest", {"steps": 1}, spawn=False)  # not refused any more


def test_queued_job_without_worker_expires(workspace: Workspace) -> None:
    job_id = start_job(workspace, "selftest", {}, spawn=False)
    with workspace.store() as store:
        created = store.job(job_id)["created_at"]
        assert reap_stale(store, now=created + 1) == []
        assert reap_stale(store, now=created + 3600) == [job_id]


def test_failure_is_a_readable_message(workspace: Workspace) -> None:
    job_id = start_job(workspace, "selftest", {"steps": 3, "fail_at": 2}, spawn=False)
    assert run_job(workspace, job_id) == "failed"
    job = get_job(workspace, job_id)
    assert job["message"] == "self-test failed at step 2 as asked"
    assert [e["step"] for e in job["log"]] == [1]
    assert latest_job(workspace.store(), "selftest")["id"] == job_id


def test_cancel_before_start_and_unknown_kind(workspace: Workspace) -> None:
    job_id = start_job(workspace, "selftest", {}, spawn=False)
    cancel_job(workspace, job_id)
    assert get_job(workspace, job_id)["status"] == "cancelled"
    assert run_job(workspace, job_id) == "cancelled"  # a worker arriving late does nothing
    with pytest.raises(UserError, match="unknown job kind"):
        start_job(workspace, "nope", {})


def test_typo_in_our_own_module_is_an_error_not_a_missing_feature(workspace: Workspace,
                                                                   monkeypatch) -> None:
    """Issue 11, defect 6: a missing first-party module is a bug; it must not read as
    "not available in this installation"."""
    from core import jobs
    monkeypatch.setitem(jobs.JOB_KINDS, "ghost",
                        jobs.JobKind("core.no_such_module:run", "ghost", "ghost"))
    job_id = start_job(workspace, "ghost", {}, spawn=False)
    assert run_job(workspace, job_id) == "failed"
    message = get_job(workspace, job_id)["message"]
    assert "not available" not in message
    assert message == "ModuleNotFoundError: No module named 'core.no_such_module'"


@pytest.mark.parametrize("exc, expected", [
    (ModuleNotFoundError("No module named 'cvat_sdk'", name="cvat_sdk"),
     "this feature is not available in this installation (the cvat_sdk package is not installed)"),
    (ModuleNotFoundError("No module named 'onnxruntime.quantization'",
                         name="onnxruntime.quantization"),
     "this feature is not available in this installation (the onnxruntime package is not installed)"),
    (ImportError("cannot import name 'Client' from 'cvat_sdk'", name="cvat_sdk"),
     "ImportError: cannot import name 'Client' from 'cvat_sdk'"),
    (ModuleNotFoundError("No module named 'cvat_bridge.servce'", name="cvat_bridge.servce"),
     "ModuleNotFoundError: No module named 'cvat_bridge.servce'"),
])
def test_only_a_missing_optional_package_is_a_missing_feature(workspace: Workspace, monkeypatch,
                                                              exc, expected) -> None:
    from core import jobs

    def runner(ws, params, ctx):
        raise exc
    monkeypatch.setattr(jobs, "_load_runner", lambda kind: runner)
    job_id = start_job(workspace, "selftest", {}, spawn=False)
    assert run_job(workspace, job_id) == "failed"
    assert get_job(workspace, job_id)["message"] == expected


def test_context_throttles_progress_but_keeps_log(workspace: Workspace) -> None:
    job_id = start_job(workspace, "selftest", {}, spawn=False)
    with workspace.store() as store:
        ctx = JobContext(store, job_id, min_interval=3600)
        ctx.progress(0.1, "a", force=True)
        ctx.progress(0.5, "b")           # throttled: not written
        assert store.job(job_id)["progress"] == pytest.approx(0.1)
        ctx.log(epoch=1, train_loss=0.5)  # log entries always written
        job = store.job(job_id)
        assert job["progress"] == pytest.approx(0.5) and job["log"][0]["epoch"] == 1
        store.request_cancel(job_id)
        ctx._last_cancel_check = 0
        assert ctx.cancelled()


def test_cli_job_run_and_jobs_listing(workspace: Workspace, capsys) -> None:
    job_id = start_job(workspace, "selftest", {"steps": 2}, spawn=False)
    assert main(["--workspace", str(workspace.root), "job-run", str(job_id)]) == 0
    assert main(["--workspace", str(workspace.root), "jobs", "--all"]) == 0
    out = capsys.readouterr().out
    assert f"#{job_id} selftest" in out and "succeeded" in out


def test_job_runners_take_a_new_user_from_demo_pool_to_a_ranked_queue(workspace: Workspace,
                                                                       monkeypatch) -> None:
    """The app's path without a terminal: demo pool -> simulated labels -> train -> queue."""
    monkeypatch.setenv("CARGROUP_JOB_THREADS", "1")

    def run(kind: str, params: dict) -> dict:
        job_id = start_job(workspace, kind, params, spawn=False)
        status = run_job(workspace, job_id)
        job = get_job(workspace, job_id)
        assert status == "succeeded", job["message"]
        return job

    demo = run("demo", {"n": 50, "size": 32, "sample": 24})
    assert "first batch of 24 images queued" in demo["message"]
    n_eval = demo["result"]["sample"]["eval_size"]        # the evaluation set: round 0
    assert n_eval > 0 and f"evaluation set of {n_eval} images queued first (round 0)" in demo["message"]
    assert demo["result"]["sample"]["round"] == 1
    assert run("label_sim", {})["result"]["labelled"] == 24 + n_eval
    train = run("train", {"epochs": 2, "image_size": 32, "batch_size": 16, "pretrained": False})
    epochs = [e for e in train["log"] if e.get("phase") == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all("val_loss" in e for e in epochs)
    assert set(train["result"]["evaluation"]["heads"]) == {"color", "type", "orientation"}
    assert "test accuracy color" in train["message"]
    # force_promote: two 1-epoch models differ by noise, so the promotion gate could refuse the
    # new one (tests/test_guardrails.py covers that); here the "then queue" path is under test
    warm = run("train", {"epochs": 1, "warm_start": True, "warm_epochs": 1, "image_size": 32,
                         "batch_size": 16, "then_queue": 3, "force_promote": True})
    assert warm["result"]["queue"] == {"round": 2, "size": 3}
    assert warm["message"].endswith("round 2: 3 images queued")
    train = warm
    queue = run("queue", {"strategy": "margin", "top_k": 5, "weights": {"orientation": 2.0}})
    assert queue["result"]["size"] == 5 and queue["result"]["round"] == 3
    with workspace.store() as store:
        assert store.current_model()["id"] == train["result"]["model_id"]
        assert store.current_model()["parent_id"] is not None  # the warm start
        assert store.round(3)["strategy"] == "margin"
        assert store.round(3)["params"]["weights"] == {"orientation": 2.0}
        assert train["result"]["evaluation"]["eval_set"]["members"] == n_eval


def test_cancelled_training_leaves_no_new_model(tmp_path, monkeypatch) -> None:
    """A real worker process: cancel mid-training; the job ends cancelled and no model appears."""
    from app_fixtures import build_pool

    monkeypatch.setenv("CARGROUP_JOB_THREADS", "1")
    ws = build_pool(tmp_path / "ws")
    job_id = start_job(ws, "train", {"epochs": 200, "image_size": 32, "batch_size": 8,
                                     "pretrained": False})
    deadline = time.monotonic() + 120
    while not get_job(ws, job_id)["log"]:  # wait until training reports its first steps
        assert get_job(ws, job_id)["status"] in ("queued", "running"), get_job(ws, job_id)["message"]
        assert time.monotonic() < deadline, "training never reported progress"
        time.sleep(0.2)
    with pytest.raises(JobConflict, match="training"):
        start_job(ws, "train", {"epochs": 1})  # one training at a time
    cancel_job(ws, job_id)
    job = wait_job(ws, job_id, timeout=120)
    assert job["status"] == "cancelled", job["message"]
    with ws.store() as store:
        assert store.models() == [] and store.current_model() is None


class _FakeContext:
    """A JobContext stand-in: records progress and log entries; cancel flips after ``polls``."""

    def __init__(self, cancel_after_polls: int | None = None) -> None:
        self.polls = 0
        self.cancel_after = cancel_after_polls
        self.entries: list[dict] = []

    def progress(self, fraction=None, message=None, *, log=None, force=False) -> None:
        if log is not None:
            self.entries.append(dict(log))

    def log(self, **entry) -> None:
        self.entries.append(entry)

    def cancelled(self) -> bool:
        self.polls += 1
        return self.cancel_after is not None and self.polls > self.cancel_after

    def check_cancel(self) -> None:
        from core.jobs import JobCancelled
        if self.cancelled():
            raise JobCancelled()

    def stage(self, lo, hi, label):
        return lambda *a, **k: None


def _toy_pool(tmp_path, *, test_labels: bool) -> Workspace:
    from tests.test_train import add_images
    from data.workspace import WorkspaceConfig
    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=32))
    add_images(ws, 32, split="train", seed=1)
    add_images(ws, 8, split="val", seed=2)
    add_images(ws, 8, split="test", seed=3, label=test_labels)
    return ws


TINY = {"epochs": 2, "batch_size": 16, "image_size": 32, "pretrained": False, "num_threads": 1}


def _current(ws: Workspace) -> tuple[int | None, int]:
    with ws.store() as store:
        current = store.current_model()
        return (current and current["id"]), len(store.models())


@pytest.mark.usefixtures("one_torch_thread")
def test_train_job_outcome_matches_the_current_model_without_test_labels(tmp_path) -> None:
    """Defect 1: without labelled test images the job must not fail with a new model current
    (the Train page then says "the previous model stays current")."""
    from core.job_runners import run_train
    ws = _toy_pool(tmp_path, test_labels=False)
    try:
        result = run_train(ws, dict(TINY), _FakeContext())
    except UserError:
        assert _current(ws) == (None, 0), "job failed but its model became current"
        return
    assert _current(ws) == (result["model_id"], 1)
    assert "not evaluated" in result["message"]


@pytest.mark.usefixtures("one_torch_thread")
def test_train_job_cancelled_after_the_last_step_promotes_nothing(tmp_path) -> None:
    """Defect 1: a cancel that lands after the epochs (during evaluation) must not leave the new
    model current while the job reports "cancelled"."""
    from core.jobs import JobCancelled
    from core.job_runners import run_train
    ws = _toy_pool(tmp_path, test_labels=True)
    ctx = _FakeContext(cancel_after_polls=4)  # 2 steps x 2 epochs train, then the cancel arrives
    with pytest.raises(JobCancelled):
        run_train(ws, dict(TINY), ctx)
    assert _current(ws) == (None, 0)
    assert not any(e.get("promoted") for e in ctx.entries)
