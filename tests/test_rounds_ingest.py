"""Rounds and ingestion (issue 13, part 6): "then queue N" never strands an unfinished round,
the Label page opens the oldest unfinished round, the Overview lists unfinished rounds and can
ingest at any time, and the manual CVAT zip leaves out already-labelled images as push does."""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.jobs import JobContext
from core.labeling import default_batch, unfinished_rounds
from cvat_bridge.manual import export_round
from data.errors import UserError
from data.evalset import EVAL_ROUND_KIND
from data.store import ProjectStore
from data.workspace import Workspace

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))
import ui  # noqa: E402  - the same module object the pages import


def _pool(ws: Workspace, n: int) -> list[int]:
    with ws.store() as store:
        return [store.add_image(path=f"/p/{i}.jpg", name=f"{i}.jpg", sha256=f"h{i}", width=8,
                                height=8, nbytes=1, split="train")[0] for i in range(n)]


def _label(store: ProjectStore, ids: list[int]) -> None:
    for i in ids:
        store.add_label(i, {"color": "red"}, source="builtin", annotator="kim")


# -- the oldest unfinished round ---------------------------------------------------------------
def test_label_page_opens_the_oldest_unfinished_round(workspace: Workspace) -> None:
    ids = _pool(workspace, 9)
    with workspace.store() as store:
        first = store.create_round(ids[:3], kind="seed")
        second = store.create_round(ids[3:6], kind="query", strategy="entropy")
        third = store.create_round(ids[6:], kind="query", strategy="margin")
        _label(store, ids[:1])
        # rounds 0 and 1 both have unlabelled images: the older one comes first
        assert default_batch(store).number == first
        assert [b.number for b in unfinished_rounds(store)] == [first, second, third]
        _label(store, ids[1:3])
        assert default_batch(store).number == second
        _label(store, ids[3:])
        assert unfinished_rounds(store) == []
        assert default_batch(store).number == third          # all done: the newest


def test_the_evaluation_round_still_comes_first(workspace: Workspace) -> None:
    ids = _pool(workspace, 6)
    with workspace.store() as store:
        seed = store.create_round(ids[:3], kind="seed")
        evaluation = store.create_round(ids[3:], kind=EVAL_ROUND_KIND)
        assert default_batch(store).number == evaluation
        assert [b.number for b in unfinished_rounds(store)] == [evaluation, seed]
        _label(store, ids[3:])
        assert default_batch(store).number == seed


# -- "then queue N" ------------------------------------------------------------------------------
def test_then_queue_is_skipped_while_a_round_is_unfinished(workspace: Workspace) -> None:
    from core.job_runners import _queue_after_training

    ids = _pool(workspace, 10)
    with workspace.store() as store:
        number = store.create_round(ids[:4], kind="seed")
        _label(store, ids[:1])
        ctx = JobContext(store, store.create_job("train"))
        out = _queue_after_training(workspace, {"then_queue": 2, "strategy": "random"}, ctx,
                                    "model #1 trained")
        assert [r["number"] for r in store.rounds()] == [number]     # nothing new queued
    assert out["queue"]["skipped"] == [number]
    assert out["message"] == (f"model #1 trained; no batch queued: round {number} still has "
                              "3 of 4 images to label (label it first, or rank a batch on the "
                              "Queue page)")


def test_then_queue_ranks_once_every_round_is_labelled(workspace: Workspace) -> None:
    from core.job_runners import _queue_after_training

    ids = _pool(workspace, 10)
    with workspace.store() as store:
        store.create_round(ids[:4], kind="seed")
        _label(store, ids[:4])
        ctx = JobContext(store, store.create_job("train"))
        out = _queue_after_training(workspace, {"then_queue": 2, "strategy": "random"}, ctx,
                                    "model #1 trained")
        assert len(store.rounds()) == 2
    assert out["queue"]["size"] == 2 and out["message"].endswith("images queued")


# -- the manual CVAT zip ---------------------------------------------------------------------------
def _real_pool(ws: Workspace, folder: Path, n: int) -> list[int]:
    folder.mkdir()
    ids = []
    with ws.store() as store:
        for i in range(n):
            path = folder / f"c{i}.jpg"
            Image.fromarray(np.full((16, 16, 3), i * 20, np.uint8)).save(path)
            ids.append(store.add_image(path=str(path), name=path.name, sha256=f"s{i}", width=16,
                                       height=16, nbytes=path.stat().st_size, split="train")[0])
    return ids


def test_manual_zip_leaves_out_labelled_images(workspace: Workspace, tmp_path: Path) -> None:
    ids = _real_pool(workspace, tmp_path / "imgs", 4)
    with workspace.store() as store:
        number = store.create_round(ids, kind="seed")
        _label(store, ids[:2])
        res = export_round(workspace, store, number, tmp_path / "r.zip")
    assert res.images == 2 and res.skipped_labelled == 2
    assert "2 already labelled images left out" in res.summary()
    with zipfile.ZipFile(tmp_path / "r.zip") as zf:
        images = sorted(n for n in zf.namelist() if n.startswith("images/"))
        manifest = zf.read("manifest.csv").decode()
    assert len(images) == 2 and all(f"c{i}.jpg" not in manifest for i in (0, 1))
    # everything labelled: a readable refusal, unless asked to include them
    with workspace.store() as store:
        _label(store, ids[2:])
        with pytest.raises(UserError, match="already labelled"):
            export_round(workspace, store, number, tmp_path / "r2.zip")
        res = export_round(workspace, store, number, tmp_path / "r3.zip", include_labelled=True)
    assert res.images == 4 and res.skipped_labelled == 0


# -- the Overview: unfinished rounds, ingest at any time ------------------------------------------
def _overview(ws: Workspace, monkeypatch: pytest.MonkeyPatch):
    from streamlit.testing.v1 import AppTest

    from data.workspace import ENV_WORKSPACE
    monkeypatch.setenv(ENV_WORKSPACE, str(ws.root))
    return AppTest.from_file(str(APP / "views" / "0_Overview.py"), default_timeout=60).run()


@pytest.fixture
def demo_ws(tmp_path: Path) -> Workspace:
    from data.demo import create_demo_pool
    from data.workspace import WorkspaceConfig

    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=32))
    create_demo_pool(ws, 12, seed=0, size=32)
    with ws.store() as store:
        ids = [r.id for r in store.images()]
        store.create_round(ids[:4], kind="seed")
        store.create_round(ids[4:7], kind="query", strategy="entropy")
        _label(store, ids[:2])
    return ws


def test_overview_lists_unfinished_rounds(demo_ws: Workspace, monkeypatch) -> None:
    at = _overview(demo_ws, monkeypatch)
    assert not at.exception and not at.error
    assert any(m.value == "##### Unfinished rounds" for m in at.markdown)
    table = next(d.value for d in at.dataframe if "to label" in d.value.columns)
    assert table[["round", "to label", "of"]].values.tolist() == [[0, 2, 4], [1, 3, 3]]


def test_overview_ingests_into_a_non_empty_pool(demo_ws: Workspace, monkeypatch,
                                                tmp_path: Path) -> None:
    from core.jobs import get_job, run_job, start_job
    from data.demo import generate_demo_images

    folder = tmp_path / "more"
    generate_demo_images(folder, 5, seed=7, size=32)
    started = []

    def record(ws, kind, params):
        started.append((kind, params))
        return start_job(ws, kind, params, spawn=False)
    at = _overview(demo_ws, monkeypatch)
    monkeypatch.setattr(ui, "start_job", record)
    at.text_input(key="ingest_path_more").input(str(folder)).run()
    at.button(key="ingest_more").click().run()
    assert not at.exception and not at.error
    assert started == [("ingest", {"path": str(folder)})]
    assert run_job(demo_ws, 1) == "succeeded" and "5 added" in get_job(demo_ws, 1)["message"]
    # the same folder again: nothing new, duplicates skipped by content hash
    assert start_job(demo_ws, "ingest", {"path": str(folder)}, spawn=False) == 2
    assert run_job(demo_ws, 2) == "succeeded" and "0 added" in get_job(demo_ws, 2)["message"]
    with demo_ws.store() as store:
        assert store.count_images() == 17


def test_overview_offers_ingest_to_maintainers_only(demo_ws: Workspace, monkeypatch) -> None:
    monkeypatch.setattr(ui, "may", lambda action: action != "ingest")
    at = _overview(demo_ws, monkeypatch)
    assert not at.exception
    assert not [b for b in at.button if b.label == "Ingest"]
    assert not [e for e in at.expander if "Add images" in e.label]


def test_label_page_opens_on_the_oldest_unfinished_round(demo_ws: Workspace, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    from data.workspace import ENV_WORKSPACE
    monkeypatch.setenv(ENV_WORKSPACE, str(demo_ws.root))
    at = AppTest.from_file(str(APP / "views" / "1_Label.py"), default_timeout=60).run()
    assert not at.exception and not at.error
    assert at.selectbox(key="label_batch").value == 0        # not the newer round 1
