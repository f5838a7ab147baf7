"""CLI: the demo flow end to end, ingest reporting, and user mistakes as one line, exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli import main
from data.workspace import Workspace

from conftest import REPO


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_sample_label_status_flow(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ws = str(tmp_path / "W")
    code, out, _ = run(capsys, "--workspace", ws, "demo-pool", "--n", "300", "--size", "48",
                          "--quiet")
    assert code == 0 and "300 added" in out
    code, out, _ = run(capsys, "--workspace", ws, "sample", "--n", "100")
    # the evaluation set comes first (all 300 x 20 % test images: short of 30 x 10), then round 1
    with Workspace(ws).store() as store:
        n_test = store.status_counts()["by_split"]["test"]
    assert code == 0 and f"round 0: evaluation set of {n_test} images to label first" in out
    assert "round 1: sampled 100" in out and "too few to decide anything" in out
    code, out, _ = run(capsys, "--workspace", ws, "label-sim")   # every open round, eval first
    assert code == 0
    assert out.index(f"round 0 (evaluation set): labelled {n_test} of {n_test}") < out.index(
        "round 1: labelled 100 of 100")
    total = 100 + n_test
    code, out, _ = run(capsys, "--workspace", ws, "status")
    assert code == 0
    assert "images: 300" in out and f"labelled: {total}" in out and f"simulated={total}" in out
    assert f"eval set: {n_test} of {n_test} labelled" in out
    code, out, _ = run(capsys, "--workspace", ws, "status", "--json")
    counts = json.loads(out)
    assert counts["images"] == 300 and counts["labelled_by_source"] == {"simulated": total}
    assert counts["eval_set"]["members"] == n_test
    # a second label-sim has nothing left to do in that round
    code, out, _ = run(capsys, "--workspace", ws, "label-sim", "--round", "1")
    assert code == 0 and "labelled 0 of 100" in out


def _mixed(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(folder / f"ok{i}.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "readme.txt").write_text("hello")
    return folder


def test_ingest_reports_rejects_and_is_idempotent(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    folder = _mixed(tmp_path / "pool")
    ws = str(tmp_path / "W")
    code, out, _ = run(capsys, "--workspace", ws, "ingest", str(folder), "--quiet")
    assert code == 0
    assert "3 added" in out and "2 rejected" in out
    assert "rejected empty.jpg: zero-byte file" in out and "readme.txt: not an image" in out
    code, out, _ = run(capsys, "--workspace", ws, "ingest", str(folder), "--quiet")
    assert code == 0 and "0 added" in out and "3 already known" in out
    code, out, _ = run(capsys, "--workspace", ws, "status")
    assert "images: 3" in out and "rejected: 2" in out and "zero-byte file" in out


def test_ingest_with_ground_truth_and_group_by_source(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "set"
    _mixed(root / "images")
    (root / "labels.csv").write_text(
        "file,color,type,orientation,source\n"
        "images/ok0.jpg,Grey,,,cam\nimages/ok1.jpg,,,fl,cam\nimages/ok2.jpg,,,,cam\n")
    ws = str(tmp_path / "W")
    code, out, _ = run(capsys, "--workspace", ws, "ingest", str(root / "images"),
                       "--ground-truth", str(root / "labels.csv"), "--group-by", "source",
                       "--quiet")
    assert code == 0 and "2 with ground truth" in out
    with Workspace(ws).store() as store:
        assert sorted(store.ground_truth().values(), key=str) == [
            {"color": "gray"}, {"orientation": "front-left"}]
        assert {i.group_key for i in store.images()} == {"cam#0"}
        assert store.create_round([i.id for i in store.images()], kind="seed") == 0
    code, out, _ = run(capsys, "--workspace", ws, "label-sim")
    assert code == 0 and "labelled 2 of 3" in out and "1 have no ground truth" in out


@pytest.mark.parametrize("argv_tail,needle", [
    (["ingest", "/no/such/folder"], "no such file or folder"),
    (["ingest", "{tmp}/pool", "--ground-truth", "/no/labels.csv"], "no such labels file"),
    (["ingest", "{tmp}/pool", "--group-by", "source"], "--group-by source needs"),
    (["ingest", "{tmp}/pool", "--ground-truth", "{tmp}/bad.csv"], "'teal'"),
    (["status"], "no workspace"),
    (["sample", "--n", "5"], "no workspace"),
    (["label-sim"], "no workspace"),
    (["init", "--schema", "{tmp}/schema.json"], "schema.json: attribute 'color' needs"),
    (["init", "--schema", "{tmp}/missing.json"], "cannot read schema file"),
    (["demo-pool", "--n", "0"], "--n must be positive"),
])
def test_user_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                         argv_tail: list[str], needle: str) -> None:
    _mixed(tmp_path / "pool")
    (tmp_path / "bad.csv").write_text("file,color\nok0.jpg,teal\n")
    (tmp_path / "schema.json").write_text('{"attributes": {"color": ["red"]}}')
    argv = ["--workspace", str(tmp_path / "W")] + [a.format(tmp=tmp_path) for a in argv_tail]
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in err + out


def test_init_with_schema_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    schema = tmp_path / "mine.json"
    schema.write_text('{"attributes": {"color": ["red", "gray"], "type": ["car", "bus"]}}')
    ws = tmp_path / "W"
    assert run(capsys, "--workspace", str(ws), "init", "--schema", str(schema))[0] == 0
    schema.unlink()                                    # the workspace kept its own copy
    assert Workspace(ws).schema.classes["type"] == ("car", "bus")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    code, _, err = run(capsys, "--workspace", str(tmp_path / "W2"), "init", "--schema", str(bad))
    assert code == 2 and "not valid JSON" in err
    assert not (tmp_path / "W2" / "project.db").exists()   # nothing half-created


def test_label_sim_needs_a_round(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ws = str(tmp_path / "W")
    assert run(capsys, "--workspace", ws, "init")[0] == 0
    code, _, err = run(capsys, "--workspace", ws, "label-sim")
    assert code == 2 and "no labeling round" in err
    code, _, err = run(capsys, "--workspace", ws, "label-sim", "--round", "3")
    assert code == 2 and "no round 3" in err


def test_real_process_prints_no_traceback(tmp_path: Path) -> None:
    """The installed entry point (python -m core), not just main(): one line on stderr, exit 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CARGROUP_WORKSPACE": str(tmp_path / "envws")}
    proc = subprocess.run([sys.executable, "-m", "core", "ingest", str(tmp_path / "missing")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: no such file or folder: {tmp_path / 'missing'}"]
    proc = subprocess.run([sys.executable, "-m", "core", "status"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no workspace at" in proc.stderr and str(tmp_path / "envws") in proc.stderr
    assert "Traceback" not in proc.stderr
