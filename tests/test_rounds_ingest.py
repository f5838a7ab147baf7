"""Rounds and ingestion (issue 13, part 6): "then queue N" never strands an unfinished round,
the Label page opens the oldest unfinished round, the Overview lists unfinished rounds and can
ingest at any time, and the manual CVAT zip leaves out already-labelled images as push does."""
from __future__ import annotations

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
