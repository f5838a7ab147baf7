"""The Label page's rules in core: safe pre-fill, recorded suggestions, the all-unsure guard,
acceptance rates, and the labelling guide (text file, references, orientation pictures)."""
from __future__ import annotations

import numpy as np
import pytest

from core import guide, labeling, suggestion_stats
from core.access import AccessDenied, Principal
from data.errors import UserError
from data.store import ProjectStore
from data.workspace import Workspace, WorkspaceConfig


def _workspace(tmp_path, n: int = 6) -> tuple[Workspace, list[int], int]:
    """A workspace with ``n`` pixel-less images in one round and a current model whose
    predictions are confident on color (0.95) and unsure on type (0.3) and orientation (0.12)."""
    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=32))
    with ws.store() as s:
        ids = [s.add_image(path=f"x/{i}.jpg", name=f"{i}.jpg", sha256=f"{i:064x}", width=8,
                           height=8, nbytes=1, split="train")[0] for i in range(n)]
        model = s.add_model("models/1/model.pt")
        s.save_predictions(model, [r for i in ids for r in (
            (i, "color", "red", 0.95), (i, "type", "bus", 0.3), (i, "orientation", "left", 0.12))])
        number = s.create_round(ids, kind="al", strategy="entropy")
    return ws, ids, number


def test_only_confident_answers_are_preselected(tmp_path) -> None:
    ws, ids, number = _workspace(tmp_path)
    with ws.store() as s:
        task = labeling.task_for(s, ids[0], number)
        assert task.suggestion == {"color": "red"}            # 0.95 >= 0.8; the rest are hints
        assert set(task.hints) == {"type", "orientation"}
        assert task.hints["type"] == ("bus", 0.3)
        low = labeling.task_for(s, ids[0], number, {"type": 0.25, "color": 0.99})
        assert low.suggestion == {"type": "bus"}
        assert {(sg.attribute, sg.preselected) for sg in low.suggestions} == {
            ("color", False), ("type", True), ("orientation", False)}


def test_thresholds_are_saved_per_head_and_checked(tmp_path) -> None:
    ws, _, _ = _workspace(tmp_path)
    assert labeling.prefill_thresholds(ws.config, ws.schema) == {
        a: labeling.DEFAULT_PREFILL_THRESHOLD for a in ws.schema.attributes}
    labeling.set_prefill_thresholds(ws, {"type": 0.6})
    again = Workspace(ws.root)  # read back from config.json
    assert labeling.prefill_thresholds(again.config, again.schema)["type"] == 0.6
    with pytest.raises(UserError, match="between 0 and 1"):
        labeling.set_prefill_thresholds(ws, {"type": 1.5})
    with pytest.raises(UserError, match="unknown head"):
        labeling.set_prefill_thresholds(ws, {"wheels": 0.5})


def test_annotators_may_not_change_thresholds(tmp_path) -> None:
    ws, _, _ = _workspace(tmp_path)
    with pytest.raises(AccessDenied):
        labeling.set_prefill_thresholds(ws, {"type": 0.5}, principal=Principal("ann", "annotator"))


def test_all_unsure_on_a_fresh_image_needs_confirmation(tmp_path) -> None:
    ws, ids, number = _workspace(tmp_path)
    with ws.store() as s:
        with pytest.raises(UserError, match="nothing was chosen"):
            labeling.save_label(s, ws.schema, ids[0], {"color": None}, annotator="kim")
        assert s.current_label(ids[0]) is None  # nothing stored
        assert labeling.save_label(s, ws.schema, ids[0], {}, annotator="kim",
                                   confirm_all_unsure=True) == 1
        assert s.current_label(ids[0]).values == {}
        # an image that already has a label may be set to all unsure (an edit, not a default)
        labeling.save_label(s, ws.schema, ids[1], {"color": "red"}, annotator="kim")
        assert labeling.save_label(s, ws.schema, ids[1], {}, annotator="kim") == 2


def test_suggestions_are_stored_with_their_outcome(tmp_path) -> None:
    ws, ids, number = _workspace(tmp_path)
    with ws.store() as s:
        task = labeling.task_for(s, ids[0], number)
        # kept the pre-selected color, picked the hinted type, chose another orientation
        labeling.save_label(s, ws.schema, ids[0], {"color": "red", "type": "bus",
                                                   "orientation": "back"},
                            annotator="kim", suggestions=task.suggestions)
        task = labeling.task_for(s, ids[1], number)
        labeling.save_label(s, ws.schema, ids[1], {"color": "blue", "type": None,
                                                   "orientation": "left"},
                            annotator="ana", suggestions=task.suggestions)
        rows = s.conn.execute(
            "SELECT l.annotator, g.attribute, g.suggested, g.preselected, g.outcome, g.probability "
            "FROM label_suggestions g JOIN labels l ON l.id = g.label_id "
            "ORDER BY l.annotator, g.attribute").fetchall()
        assert [tuple(r)[:5] for r in rows] == [
            ("ana", "color", "red", 1, "changed"), ("ana", "orientation", "left", 0, "accepted"),
            ("ana", "type", "bus", 0, "unsure"),
            ("kim", "color", "red", 1, "accepted"), ("kim", "orientation", "left", 0, "changed"),
            ("kim", "type", "bus", 0, "accepted")]
        assert rows[0]["probability"] == pytest.approx(0.95)
        people = {(r.group["annotator"], r.group["mode"]): r for r in suggestion_stats.by_annotator(s)}
        assert people[("kim", "pre-selected")].acceptance == 1.0
        assert people[("ana", "pre-selected")].override == 1.0
        assert people[("ana", "hint")].shown == 2 and people[("ana", "hint")].acceptance == 0.5
        classes = {(r.group["head"], r.group["suggested"]): r for r in suggestion_stats.by_class(s)}
        assert classes[("color", "red")].row()["acceptance"] == 0.5
        assert classes[("type", "bus")].unsure == 1


def test_failed_save_stores_no_suggestions(tmp_path) -> None:
    ws, ids, number = _workspace(tmp_path)
    with ws.store() as s:
        task = labeling.task_for(s, ids[0], number)
        with pytest.raises(UserError):
            labeling.save_label(s, ws.schema, ids[0], {}, annotator="kim",
                                suggestions=task.suggestions)
        assert s.conn.execute("SELECT COUNT(*) FROM label_suggestions").fetchone()[0] == 0


def test_suggestion_table_is_indexed(tmp_path) -> None:
    with ProjectStore(tmp_path / "p.db") as s:
        plan = " ".join(r[3] for r in s.conn.execute(
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM label_suggestions WHERE attribute='type' "
            "AND suggested='bus' AND outcome='accepted'"))
    assert "label_suggestions_outcome" in plan


# -- the guide -----------------------------------------------------------------------------------
def test_guide_file_is_created_once_and_then_the_projects_text_is_kept(tmp_path) -> None:
    ws, _, _ = _workspace(tmp_path)
    path = guide.ensure_guide(ws)
    assert path == ws.root / "guide.md"
    sections = guide.guide_sections(guide.read_guide(ws))
    assert set(ws.schema.attributes) <= set(sections)
    assert "nose points to the **left of the picture**" in sections["orientation"]
    assert "separate, lower boot" in sections["type"]
    path.write_text("# Ours\n## type\nvans have no side windows\n", encoding="utf-8")
    assert guide.guide_sections(guide.read_guide(ws))["type"] == "vans have no side windows"


def test_references_come_from_labels_else_from_the_demo_renderer(tmp_path) -> None:
    from data.demo import generate_demo_images
    from data.ingest import ingest

    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=32))
    truth = generate_demo_images(tmp_path / "pool", 4, size=32)
    ingest(ws, tmp_path / "pool")
    with ws.store() as s:
        image = s.images()[0]
        s.add_label(image.id, {"type": "bus"}, source="builtin", annotator="kim")
        refs = guide.class_references(s, ws, "type", per_class=2, size=24)
    assert [r.source for r in refs["bus"]] == ["labelled"] and refs["bus"][0].caption == image.name
    assert [r.source for r in refs["van"]] == ["demo"]
    assert refs["van"][0].image.shape == (24, 24, 3)
    assert set(refs) == set(ws.schema.classes["type"])
    assert truth  # the pool was made


def test_orientation_pictures_follow_the_flip_map(tmp_path) -> None:
    """A mirrored "left" drawing is the "right" drawing: words, pictures and data agree."""
    pictures = dict(guide.orientation_pictures(Workspace(tmp_path).schema, size=48))
    assert len(pictures) == 8
    left, right = pictures["left"].astype(int), pictures["right"].astype(int)
    mirrored = np.abs(left[:, ::-1] - right).mean()
    assert mirrored < 4 and np.abs(left - right).mean() > 2.5 * mirrored  # not the same picture
    # "left": the nose points to the picture's left, so the red tail lights are on the right
    for view, side in (("left", 1), ("right", -1), ("back-left", 1)):
        img = guide.demo_reference(Workspace(tmp_path).schema, "orientation", view, 96).astype(int)
        red = (img[..., 0] > 80) & (img[..., 0] > img[..., 1] + 50) & (img[..., 0] > img[..., 2] + 50)
        assert red.sum() > 0, view
        assert side * (np.nonzero(red)[1].mean() - 48) > 0, view
    silhouettes = guide.type_silhouettes(Workspace(tmp_path).schema, size=32)
    assert [name for name, _ in silhouettes] == list(Workspace(tmp_path).schema.classes["type"])
    assert all(img.min() < 30 and img.max() == 255 for _, img in silhouettes)


def test_bench_label_save_smoke(tmp_path) -> None:
    """The benchmark script runs on a tiny store and times every step of a Save & next."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_label_save.py"
    spec = importlib.util.spec_from_file_location("bench_label_save", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ws = bench.build(tmp_path / "ws", 4600)
    figures = bench.measure(ws, 3)
    assert set(figures) == set(bench.STEPS) and figures["critical"]["n"] == 3
    with ws.store() as s:  # the saves recorded the model's suggestions
        assert s.conn.execute("SELECT COUNT(*) FROM label_suggestions").fetchone()[0] == 9
