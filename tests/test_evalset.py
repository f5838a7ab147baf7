"""The evaluation set (issue 11, defect 8): sized by the user, labelled first, never trained on
or queued, the same images for every model, and a warning when it is too small."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.cli import main
from core.dashboard import learning_curve
from core.evalset import MAX_INTERVAL_WIDTH, accuracy_interval, eval_set_status, start_labelling
from core.labeling import default_batch, next_image_id
from core.rounds import draw_eval_set, sample_first_batch
from data.evalset import EVAL_ROUND_KIND, EvalSetError, eval_target, fingerprint
from data.schema import LabelSchema, default_schema
from data.store import ProjectStore, StoreError
from data.workspace import Workspace, WorkspaceConfig

SCHEMA = default_schema()                      # largest head: 10 colours
SMALL = LabelSchema.from_dict({"attributes": {"color": ["red", "blue"], "type": ["car", "van", "bus"]}})


def _store(path: Path, n: int, *, test_every: int = 2) -> ProjectStore:
    """Synthetic rows (no pixels): every ``test_every``-th image is in the test split."""
    s = ProjectStore(path)
    with s.transaction():
        for i in range(n):
            s.add_image(path=f"{i}.jpg", name=f"{i}.jpg", sha256=f"h{i}", width=8, height=8,
                        nbytes=1, split="test" if i % test_every == 0 else "train")
    return s


@pytest.fixture
def store(tmp_path: Path) -> ProjectStore:
    s = _store(tmp_path / "p.db", 200)          # 100 test, 100 train
    yield s
    s.close()


def test_migration_adds_the_table_to_an_existing_database(tmp_path: Path) -> None:
    s = _store(tmp_path / "old.db", 4)
    assert s.schema_version >= 2 and s.eval_set_ids() == []
    s.close()
    again = ProjectStore(tmp_path / "old.db")     # re-opening migrates nothing twice
    assert again.count_images() == 4
    again.close()


def test_size_is_per_class_times_the_largest_head(store: ProjectStore) -> None:
    assert eval_target(SCHEMA, 30) == 300 and eval_target(SMALL, 30) == 90
    draw = draw_eval_set(store, SMALL, 30, seed=1)
    assert draw.target == 90 and draw.size == 90 and len(draw.added) == 90
    assert {store.image(i).split for i in store.eval_set_ids()} == {"test"}
    rnd = store.round(draw.round_number)
    assert rnd["kind"] == EVAL_ROUND_KIND
    assert [it["image_id"] for it in store.round_items(draw.round_number)] == draw.added


def test_draw_is_seeded_and_capped_by_the_test_split(store: ProjectStore, tmp_path: Path) -> None:
    draw = draw_eval_set(store, SCHEMA, 30, seed=5)      # wants 300, the test split has 100
    assert draw.size == 100 and draw.short_by == 200 and draw.available == 100
    twin = _store(tmp_path / "twin.db", 200)
    assert draw_eval_set(twin, SCHEMA, 30, seed=5).added == draw.added
    other = _store(tmp_path / "other.db", 200)
    assert draw_eval_set(other, SMALL, 5, seed=6).added != draw_eval_set(
        _store(tmp_path / "o2.db", 200), SMALL, 5, seed=5).added
    status = eval_set_status(store, SCHEMA)
    assert any("holds only 100 images, 200 short of the target 300" in w for w in status.warnings)


def test_the_set_only_grows_and_keeps_its_members(store: ProjectStore) -> None:
    first = draw_eval_set(store, SMALL, 10, seed=0)           # 30 members
    assert draw_eval_set(store, SMALL, 10, seed=99).added == []   # same size: nothing new
    assert draw_eval_set(store, SMALL, 5, seed=0).added == []     # smaller: never shrinks
    grown = draw_eval_set(store, SMALL, 20, seed=0)           # 60 members
    assert store.eval_set_ids()[:30] == first.added and len(store.eval_set_ids()) == 60
    assert not set(grown.added) & set(first.added)
    assert [r["kind"] for r in store.rounds()] == [EVAL_ROUND_KIND, EVAL_ROUND_KIND]
    with pytest.raises(EvalSetError, match="at least 1"):
        draw_eval_set(store, SMALL, 0)


def test_only_test_images_can_join(store: ProjectStore) -> None:
    with pytest.raises(StoreError, match="only test-split images"):
        store.add_to_eval_set([2])                  # image 2 is in the train split
    store.add_to_eval_set([1])
    with pytest.raises(StoreError, match="test split is fixed"):
        store.set_split(1, "train")                 # a member can never move into training


def test_labelled_test_images_of_an_older_project_join_first(store: ProjectStore) -> None:
    store.add_label(15, {"color": "red"}, source="import")      # a test image (ids start at 1)
    draw = draw_eval_set(store, SMALL, 10, seed=0)
    assert draw.added[0] == 15 and 15 not in draw.queued          # nothing to label for it


def test_evaluation_images_are_labelled_first(store: ProjectStore) -> None:
    result = start_labelling(store, SMALL, 40, eval_per_class=10, seed=0)
    eval_round, seed_round = result.eval_draw.round_number, result.seed_round
    assert eval_round < seed_round
    batch = default_batch(store)
    assert batch.kind == EVAL_ROUND_KIND and batch.number == eval_round
    members = set(store.eval_set_ids())
    for image_id in list(members):                   # the Label page serves every member first
        served = next_image_id(store, default_batch(store).number)
        assert served in members
        store.add_label(served, {"color": "red"}, source="builtin", annotator="kim")
    assert default_batch(store).number == seed_round     # then the training batch


def test_seed_batch_and_queue_leave_the_set_alone(tmp_path: Path) -> None:
    from core.queue import candidate_ids

    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=32))
    with ws.store() as s:
        with s.transaction():
            for i in range(120):
                s.add_image(path=f"{i}.jpg", name=f"{i}.jpg", sha256=f"h{i}", width=8, height=8,
                            nbytes=1, split="test" if i % 3 == 0 else "train")
        result = start_labelling(s, ws.schema, 30, eval_per_class=1, seed=0)   # 10 members
        members = set(s.eval_set_ids())
        test_ids = {r.id for r in s.images(split="test")}
    assert len(members) == 10
    assert not set(result.seed_ids) & test_ids           # the test split is the set's reservoir
    assert not set(candidate_ids(ws)) & members


def test_warning_when_the_set_is_too_small(store: ProjectStore) -> None:
    draw_eval_set(store, SMALL, 30, seed=0)              # 90 members
    members = store.eval_set_ids()
    for i in members[:20]:
        store.add_label(i, {"color": "red", "type": "car"}, source="builtin", annotator="a")
    status = eval_set_status(store, SMALL)
    assert status.members == 90 and status.labelled == 20
    assert [h.labelled for h in status.heads] == [20, 20]
    assert status.heads[0].class_counts == {"red": 20, "blue": 0}
    assert any("70 of 90 evaluation images still need a label" in w for w in status.warnings)
    color = status.heads[0]
    assert color.width > MAX_INTERVAL_WIDTH and "too few to decide anything" in color.warning
    assert f"{color.width * 100:.0f} points wide" in color.warning
    assert status.lines()[0].startswith("evaluation set: 20 of 90 images labelled")


def test_no_warning_when_the_interval_is_narrow(tmp_path: Path) -> None:
    s = _store(tmp_path / "big.db", 800)                 # 400 test images
    draw_eval_set(s, SMALL, 200, seed=0)                 # target 600, all 400 test images
    with s.transaction():
        for i in s.eval_set_ids():
            s.add_label(i, {"color": "blue", "type": "van"}, source="import")
    status = eval_set_status(s, SMALL)
    assert status.labelled == 400
    assert all(h.warning is None for h in status.heads), status.warnings
    assert accuracy_interval(0.5, 400)[1] - accuracy_interval(0.5, 400)[0] < MAX_INTERVAL_WIDTH
    assert accuracy_interval(0.5, 20)[1] - accuracy_interval(0.5, 20)[0] > 0.4


def test_no_set_says_how_to_draw_one(store: ProjectStore) -> None:
    status = eval_set_status(store, SCHEMA)
    assert not status.exists and "eval-set --per-class 30" in status.warnings[0]


def test_cli_sample_draws_the_set_first_and_eval_set_reports(tmp_path: Path, capsys) -> None:
    ws = Workspace(tmp_path / "W").init(WorkspaceConfig(cache_size=32))
    with ws.store() as s:
        with s.transaction():
            for i in range(90):
                s.add_image(path=f"{i}.jpg", name=f"{i}.jpg", sha256=f"h{i}", width=8, height=8,
                            nbytes=1, split="test" if i % 3 == 0 else "train")
    root = ["--workspace", str(ws.root)]
    assert main([*root, "sample", "--n", "20", "--eval-per-class", "2"]) == 0
    out = capsys.readouterr().out
    assert "round 0: evaluation set of 20 images to label first" in out
    assert "round 1: sampled 20 images" in out and "too few to decide anything" in out
    assert main([*root, "eval-set"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("evaluation set: 0 of 20 images labelled (target 20")
    assert main([*root, "eval-set", "--per-class", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["members"] == 30 and data["target"] == 30 and data["per_class"] == 3
    assert main([*root, "eval-set", "--per-class", "1"]) == 0
    assert "never shrinks" in capsys.readouterr().out
    assert main([*root, "status"]) == 0
    assert "eval set: 0 of 30 labelled" in capsys.readouterr().out
    assert main([*root, "eval-set", "--per-class", "0"]) == 2


@pytest.mark.usefixtures("one_torch_thread")
def test_same_set_for_every_model_across_rounds(tmp_path: Path) -> None:
    """Two real rounds on a demo pool: the set never changes, is never trained on or queued,
    and both learning-curve points are measured on it."""
    from core.loop import run_round, simulate_pending
    from data.cache import ImageCache
    from data.dataset import load_split
    from data.demo import create_demo_pool
    from models.train import TrainConfig

    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=32))
    create_demo_pool(ws, 120, seed=0, size=32)
    with ws.store() as s:
        start_labelling(s, ws.schema, 30, eval_per_class=2, seed=0)
        members = s.eval_set_ids()
    assert members
    simulate_pending(ws)                                  # eval round and seed round
    config = TrainConfig(epochs=1, batch_size=16, image_size=32, pretrained=False, num_threads=1,
                         augment=False, bf16=False, device="cpu")
    queued: set[int] = set()
    for _ in range(2):
        rep = run_round(ws, simulate=True, strategy="entropy", top_k=6, train_config=config)
        assert rep.status == "succeeded"
        queued |= set(rep.queue.image_ids)
        with ws.store() as s:
            assert s.eval_set_ids() == members            # stable across rounds
            cache = ImageCache(ws.cache_dir, ws.config.cache_size)
            trained_on = set(load_split(s, cache, "train").image_ids) | set(
                load_split(s, cache, "val").image_ids)
        assert not trained_on & set(members)
    assert not queued & set(members)
    with ws.store() as s:
        models = s.models()
        curve = learning_curve(s)
        labelled_members = [i for i in members if i in s.labelled_ids()]
    prints = {m["metrics"]["test"]["eval_set"]["fingerprint"] for m in models}
    assert prints == {fingerprint(labelled_members)}
    assert len({r["model"] for r in curve}) == 2 and all(r["same_set"] for r in curve)
    assert all(m["metrics"]["test"]["n_images"] == len(labelled_members) for m in models)
