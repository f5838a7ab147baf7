"""One progress/cancel callback signature everywhere (data.progress), right counts, no bar in pipes."""
from __future__ import annotations

import ast
import io
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli_progress import progress_bar
from core.jobs import JobContext
from data.demo import create_demo_pool
from data.progress import Progress, scaled
from data.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
# Parameters called "progress" that are values, not callbacks: a job row's stored fraction and
# cvat-sdk's own reporter API.
NOT_CALLBACKS = {("data/store.py", "update_job"), ("cvat_bridge/progress.py", "report_status"),
                 ("core/commands/training.py", "__call__")}


def _callback_params() -> list[tuple[str, str, str, str]]:
    found = []
    for layer in ("data", "models", "cvat_bridge", "core"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for fn in ast.walk(tree):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for arg in fn.args.args + fn.args.kwonlyargs:
                    if arg.arg in ("progress", "should_cancel") and (rel, fn.name) not in NOT_CALLBACKS:
                        note = ast.unparse(arg.annotation) if arg.annotation else "(none)"
                        found.append((rel, fn.name, arg.arg, note))
    return found


def test_every_progress_and_cancel_parameter_has_the_one_signature():
    params = _callback_params()
    names = {(rel, fn) for rel, fn, _, _ in params}
    # the long tasks of every layer take it
    for where in [("data/ingest.py", "ingest"), ("data/demo.py", "create_demo_pool"),
                  ("models/train.py", "train"), ("cvat_bridge/push.py", "push_round"),
                  ("cvat_bridge/pull.py", "pull"), ("core/training.py", "train_and_promote"),
                  ("core/scoring.py", "score_pool"), ("core/queue.py", "build_queue")]:
        assert where in names
    wrong = [p for p in params
             if p[3] != {"progress": "ProgressFn | None", "should_cancel": "CancelFn | None"}[p[2]]]
    assert wrong == []


def test_the_check_sees_an_old_style_callback(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    for layer in ("models", "cvat_bridge", "core"):
        (tmp_path / layer).mkdir()
    (tmp_path / "data" / "x.py").write_text(
        "def f(progress: Callable[[int, int], None] | None = None): pass\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _callback_params() == [("data/x.py", "f", "progress", "Callable[[int, int], None] | None")]


def test_cvat_sdk_reporter_speaks_progress():
    from cvat_bridge.progress import StageProgress

    seen: list[Progress] = []
    bar = StageProgress(seen.append, 0.2, 0.6, "uploading images")
    bar.start2(4)
    bar.advance(2)
    bar.finish()
    assert all(isinstance(p, Progress) for p in seen)
    assert seen[1].fraction == pytest.approx(0.4) and (seen[1].done, seen[1].total) == (2, 4)
    assert seen[-1].text == "uploading images 4/4" and seen[-1].fraction == pytest.approx(0.6)


def test_job_stage_maps_progress_onto_its_slice(workspace: Workspace):
    with workspace.store() as store:
        job_id = store.create_job("selftest")
        ctx = JobContext(store, job_id, min_interval=0)
        ctx.stage(0.5, 1.0, "ingesting")(Progress.counted(3, 6))
        job = store.job(job_id)
    assert job["progress"] == pytest.approx(0.75) and job["message"] == "ingesting: 3/6"


def test_demo_pool_counts_its_images_not_twice(workspace: Workspace):
    """Issue 13 §8: a 600-image demo pool showed 1200 (generation + ingestion in one count)."""
    seen: list[Progress] = []
    create_demo_pool(workspace, 24, seed=5, size=32, progress=seen.append)
    assert {p.total for p in seen} == {24}
    assert max(p.done for p in seen) == 24
    assert [p.message for p in seen if p.done == 24] == ["generating", "ingesting"]
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert max(p.fraction for p in seen if p.message == "generating") == pytest.approx(0.5)
    again: list[Progress] = []           # images exist: ingestion is the whole task
    create_demo_pool(workspace, 24, seed=5, size=32, progress=again.append)
    assert {p.message for p in again} == {"ingesting"} and again[-1].fraction == 1.0


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_bar_shows_each_stage_in_items():
    out = _Tty()
    update, bar = progress_bar("demo pool", stream=out)
    stage = scaled(update, 0.0, 0.5, "generating")
    for i in range(1, 601):
        stage(Progress.counted(i, 600))
    stage2 = scaled(update, 0.5, 1.0, "ingesting")
    for i in range(1, 601):
        stage2(Progress.counted(i, 600))
    bar.close()
    text = out.getvalue()
    assert "demo pool (generating)" in text and "demo pool (ingesting)" in text
    assert "600/600" in text and "1200" not in text


def test_no_bar_when_stderr_is_not_a_terminal():
    update, bar = progress_bar("ingest", stream=io.StringIO())
    assert update is None
    bar.close()


def test_piped_cli_error_is_a_line_of_its_own(tmp_path):
    """Piped output carries no bar: stderr is plain lines, the error one of them."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.jpg").write_bytes(b"not an image")
    proc = subprocess.run([sys.executable, "-m", "core", "--workspace", str(tmp_path / "ws"),
                           "ingest", str(empty)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    assert "it/s" not in proc.stderr and "img/s]" not in proc.stderr
    assert "rejected broken.jpg" in proc.stdout
