"""The two-speed loop in the app: a saved batch re-ranks the queue without a Retrain (AppTest)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_fixtures import build_pool
from data.workspace import ENV_WORKSPACE, Workspace

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))


def run_page(ws: Workspace, monkeypatch: pytest.MonkeyPatch, page: str) -> AppTest:
    monkeypatch.setenv(ENV_WORKSPACE, str(ws.root))
    at = AppTest.from_file(str(APP / "views" / page), default_timeout=60)
    return at.run()


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture
def pool(tmp_path: Path, monkeypatch, one_torch_thread) -> Workspace:
    """60 demo images, round 0 (40) labelled, an open random batch of the rest; no model at all."""
    import core.embeddings as emb_mod
    from models.backbones import load_backbone

    # offline test machine: skip the ImageNet download attempt; the embedding path stays real
    monkeypatch.setattr(emb_mod, "load_backbone", lambda name: load_backbone(name, pretrained=False))
    ws = build_pool(tmp_path / "ws")
    with ws.store() as s:
        rest = s.unlabelled_ids(exclude_queued=True)
        s.create_round(rest, kind="seed", strategy="random")
    return ws


def test_a_saved_batch_reranks_the_queue_without_retrain(pool: Workspace, monkeypatch) -> None:
    import core.jobs as jobs
    import core.refit_status as refit_status
    from core.jobs import get_job, run_job
    from core.labeling import next_image_id

    started: list[int] = []
    real_start = jobs.start_job

    def record_only(ws, kind, params=None, *, spawn=True):  # the test plays the worker process
        job_id = real_start(ws, kind, params, spawn=False)
        started.append(job_id)
        return job_id

    monkeypatch.setattr(refit_status, "start_job", record_only)
    monkeypatch.setenv("CARGROUP_AUTO_REFIT", "1")  # the suite turns it off for other page tests
    with pool.store() as s:
        number = s.latest_round()["number"]
        before = [it["image_id"] for it in s.round_items(number)]
        assert not s.models()  # no trained model: only the fast loop can rank this batch

    at = run_page(pool, monkeypatch, "1_Label.py")
    assert_clean(at)
    assert at.selectbox[0].value == number
    assert any("Order: random order" in c.value for c in at.caption)
    at.text_input[0].input("ana").run()
    at.button(key="btn_color_red").click().run()
    next(b for b in at.button if b.label == "Save & next").click().run()
    assert_clean(at)
    assert len(started) == 1, "saving past the refit threshold starts one head-refit job"
    assert get_job(pool, started[0])["kind"] == "refit"
    assert run_job(pool, started[0]) == "succeeded", get_job(pool, started[0])["message"]

    with pool.store() as s:
        after = [it["image_id"] for it in s.round_items(number)]
        top = next(s.round_unvisited(number))  # the new order's first (the page holds a claim)
        assert not s.models()  # nothing was retrained
    assert sorted(after) == sorted(before) and after != before

    at.run()  # the annotator's next interaction: the Label page now follows the new order
    assert_clean(at)
    assert any("from head refit on" in c.value for c in at.caption)
    shown = at.session_state["label_image"]  # the image on screen is not swapped under the annotator
    next(b for b in at.button if b.label == "Skip").click().run()
    with pool.store() as s:  # served as "ana", who holds the image the page shows
        expected = next_image_id(s, number, annotator="ana", skip={shown})
        unvisited = list(s.round_unvisited(number))
    assert expected == (top if top != shown else [i for i in unvisited if i != top][0])
    assert at.session_state["label_image"] == expected  # the next one follows the new order

    q = run_page(pool, monkeypatch, "6_Queue.py")
    assert_clean(q)
    q.selectbox[-1].select(number).run()
    assert any("from head refit on" in c.value for c in q.caption)
    assert any("color:" in c.value for c in q.caption), "refit predictions on the thumbnails"
    # one more save right away is below the threshold: no second job
    at.button(key="btn_color_red").click().run()
    next(b for b in at.button if b.label == "Save & next").click().run()
    assert len(started) == 1


def test_queue_page_refit_now_starts_a_refit_job(pool: Workspace, monkeypatch) -> None:
    sys.path.insert(0, str(APP))
    import ui

    started = []
    monkeypatch.setattr(ui, "start_job", lambda ws, kind, params: started.append((kind, params)) or 1)
    at = run_page(pool, monkeypatch, "6_Queue.py")
    assert_clean(at)
    next(b for b in at.button if b.label == "Refit heads now").click().run()
    assert started == [("refit", {})]
