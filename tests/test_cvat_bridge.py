"""Push/status/pull round trips through the real cvat-sdk against the local CVAT test server."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cvat_helpers import CvatTestServer, add_pool, fast_settings
from core.rounds import sample_first_batch
from cvat_bridge import records
from cvat_bridge.client import connect
from cvat_bridge.pull import pull, task_status
from cvat_bridge.push import PushError, push_round
from cvat_bridge.spec import SpecMismatch, compare_labels, label_spec

logging.getLogger("cvat_bridge.client").setLevel(logging.ERROR)

GOOD = {"color": "red", "type": "sedan", "orientation": "front"}


@pytest.fixture
def server():
    with CvatTestServer() as srv:
        yield srv


@pytest.fixture
def conn(server):
    with connect(fast_settings(server.url)) as c:
        yield c


def _stems(server: CvatTestServer, task_id: int) -> list[str]:
    return [Path(n).stem for n in server.frame_names(task_id)]


def test_round_trip_push_annotate_pull(server, conn, workspace):
    add_pool(workspace, 12, folders=1)
    with workspace.store() as store:
        number, ids = sample_first_batch(store, 7, seed=1)
        res = push_round(conn, workspace, store, number, segment_size=3, chunk_size=2)
        assert res.images == 7 and len(res.jobs) == 3          # 3 + 3 + 1 frames
        assert [(j["start_frame"], j["stop_frame"]) for j in res.jobs] == [(0, 2), (3, 5), (6, 6)]
        rows = records.items(store, records.task(store, conn.host, res.task_id))
        assert sorted(r[0] for r in rows) == sorted(ids)

        stems = _stems(server, res.task_id)
        values = [GOOD, {"color": "grey", "type": "pick-up", "orientation": "rear left"},
                  {"color": "blue", "type": "bus", "orientation": "back"},
                  {"color": "white", "type": "van", "orientation": "fl"},
                  {"color": "black", "type": "suv", "orientation": "right"},
                  {"color": "green", "type": "truck", "orientation": "left"},
                  {"color": "yellow", "type": "hatchback", "orientation": "b"}]
        server.set_tags(res.task_id, dict(zip(stems, values)))

        status = task_status(conn, store)
        assert status[0].tagged == 7 and [j.tagged for j in status[0].jobs] == [3, 3, 1]

        before = store.labelled_ids()
        [result] = pull(conn, workspace, store)
        rep = result.report
        assert rep.counts == {"imported": 7, "unchanged": 0, "unlabelled": 0, "rejected": 0,
                              "skipped": 0, "held": 0}
        assert store.labelled_ids() - before == set(ids)
        by_item = dict(rows_to_stems(rows))
        second = by_item[stems[1]]
        lv = store.current_label(second)
        assert lv.values == {"color": "gray", "type": "pickup", "orientation": "back-left"}
        assert lv.source == "cvat"
        frame = next(f for i, f, _ in rows if i == second)
        job = next(j for j in res.jobs if j["start_frame"] <= frame <= j["stop_frame"])
        assert lv.source_ref == f"task:{res.task_id}/job:{job['id']}"
        assert lv.round_id == store.round(number)["id"] and lv.created_at > 0

        # Pulling again adds nothing.
        [again] = pull(conn, workspace, store)
        assert again.report.counts["imported"] == 0 and again.report.counts["unchanged"] == 7
        assert all(len(store.label_history(i)) == 1 for i in ids)

        # A changed tag becomes a new version; the old one is kept.
        server.set_tags(res.task_id, {stems[0]: {"color": "orange", "type": "sedan",
                                                  "orientation": "front"}})
        [third] = pull(conn, workspace, store, task_id=res.task_id)
        assert third.report.counts["imported"] == 1 and third.report.counts["unchanged"] == 6
        hist = store.label_history(by_item[stems[0]])
        assert [h.values["color"] for h in hist] == ["red", "orange"]


def rows_to_stems(rows):
    return [(Path(name).stem, image_id) for image_id, _, name in rows]


def test_unknown_value_rejected_and_untagged_reported(server, conn, workspace):
    ids = add_pool(workspace, 4)
    with workspace.store() as store:
        number = store.create_round(ids, kind="seed")
        res = push_round(conn, workspace, store, number)
        stems = _stems(server, res.task_id)
        server.set_tags(res.task_id, {
            stems[0]: GOOD,
            stems[1]: {"color": "pink", "type": "sedan", "orientation": "front"},  # CVAT keeps it
            stems[2]: {"color": "red", "type": "sedan", "orientation": "upside-down"},
        })
        [result] = pull(conn, workspace, store)
        rep = result.report
        assert rep.counts["imported"] == 1
        reasons = dict(rep.rejected)
        assert "pink" in reasons[stems[1]] and stems[1] in reasons[stems[1]]
        assert "upside-down" in reasons[stems[2]]
        assert rep.unlabelled == [stems[3]]
        assert len(store.labelled_ids()) == 1
        assert any("pink" in line for line in rep.details())


def test_same_base_names_in_different_folders_stay_apart(server, conn, workspace):
    ids = add_pool(workspace, 6, folders=2)          # cam0/img_000.jpg and cam1/img_000.jpg ...
    with workspace.store() as store:
        names = [r.name for r in store.images(ids)]
        assert len({Path(n).name for n in names}) == 3
        number = store.create_round(ids, kind="seed")
        res = push_round(conn, workspace, store, number)
        stems = _stems(server, res.task_id)
        assert len(set(stems)) == 6
        colors = ["red", "green", "blue", "black", "white", "gray"]
        server.set_tags(res.task_id, {s: dict(GOOD, color=c) for s, c in zip(stems, colors)})
        [result] = pull(conn, workspace, store)
        assert result.report.counts["imported"] == 6
        rows = records.items(store, records.task(store, conn.host, res.task_id))
        for image_id, frame, _ in rows:
            assert store.current_label(image_id).values["color"] == colors[frame]


def test_push_twice_refused_unless_forced(server, conn, workspace):
    ids = add_pool(workspace, 3)
    with workspace.store() as store:
        number = store.create_round(ids, kind="seed")
        first = push_round(conn, workspace, store, number)
        with pytest.raises(PushError, match="already pushed"):
            push_round(conn, workspace, store, number)
        assert len(server.state.tasks) == 1
        second = push_round(conn, workspace, store, number, force=True)
        assert second.task_id != first.task_id and len(server.state.tasks) == 2
        assert first.project_id == second.project_id and second.project_created is False


def test_prefill_from_predictions(server, conn, workspace):
    ids = add_pool(workspace, 4)
    with workspace.store() as store:
        model_id = store.add_model("m.pt")
        store.save_predictions(model_id, [(ids[0], "color", "blue", 0.9),
                                          (ids[0], "type", "suv", 0.8),
                                          (ids[1], "orientation", "left", 0.7)])
        number = store.create_round(ids, kind="active", model_id=model_id)
        res = push_round(conn, workspace, store, number, prefill=True)
        assert res.prefilled == 2 and "predictions" in res.task_name
        assert server.state.tasks[res.task_id]["name"] == res.task_name
        tags = server.tags(res.task_id)
        rows = records.items(store, records.task(store, conn.host, res.task_id))
        frame0 = next(f for i, f, _ in rows if i == ids[0])
        assert tags[frame0] == {"color": "blue", "type": "suv"}
        assert records.task(store, conn.host, res.task_id).prefilled


def test_prefill_without_predictions_refused(server, conn, workspace):
    ids = add_pool(workspace, 2)
    with workspace.store() as store:
        number = store.create_round(ids, kind="seed")
        with pytest.raises(PushError, match="model"):
            push_round(conn, workspace, store, number, prefill=True)
    assert server.state.tasks == {}


def test_spec_mismatch_refuses_push_and_names_differences(server, conn, workspace):
    spec = label_spec(workspace.schema)
    attrs = spec[0]["attributes"]
    attrs[0] = dict(attrs[0], name="colour")                                 # renamed
    attrs[1] = dict(attrs[1], values=[v for v in attrs[1]["values"] if v != "bus"])   # missing
    server.add_project("cargroup mismatched", spec)
    ids = add_pool(workspace, 2)
    with workspace.store() as store:
        number = store.create_round(ids, kind="seed")
        with pytest.raises(SpecMismatch) as info:
            push_round(conn, workspace, store, number, project_name="cargroup mismatched")
        diffs = info.value.differences
        assert any("'color' is missing" in d and "'colour'" in d for d in diffs)
        assert any("'type' lacks values ['bus']" in d for d in diffs)
        assert "nothing was pushed" in str(info.value)
        assert server.state.tasks == {} and records.tasks(store) == []


def test_compare_labels_accepts_own_spec(workspace):
    spec = label_spec(workspace.schema)
    assert compare_labels(workspace.schema, spec) == []
    assert "missing" in compare_labels(workspace.schema, [])[0]


def test_access_token_and_strict_version_check(workspace):
    with CvatTestServer(version="2.80.0", modern_about=True, tokens={"pat-1": "admin"}) as srv:
        settings = fast_settings(srv.url, username=None, password=None, access_token="pat-1")
        assert "pat-1" not in repr(settings)
        with connect(settings) as c:
            assert c.version_relaxed is False and c.warnings == []
            assert c.server_version == "2.80.0" and c.username == "admin"
        assert ("POST", "/api/auth/login", 200) not in srv.log


def test_old_server_connects_relaxed_with_warning(server):
    with connect(fast_settings(server.url)) as c:
        assert c.version_relaxed
        assert "2.23.1" in c.warnings[0] and "2.80.0" in c.warnings[0]


@pytest.mark.slow
def test_demo_pool_round_trip_labels_equal_ground_truth(server, conn, workspace):
    """Demo pool -> sample -> push -> annotators tag the truth -> pull: counts and values equal."""
    from data.demo import create_demo_pool
    create_demo_pool(workspace, 10, seed=3, size=48)
    with workspace.store() as store:
        number, ids = sample_first_batch(store, 6, seed=0)
        res = push_round(conn, workspace, store, number, segment_size=4)
        truth = store.ground_truth(ids)
        rows = records.items(store, records.task(store, conn.host, res.task_id))
        server.set_tags(res.task_id, {Path(name).stem: truth[image_id]
                                      for image_id, _, name in rows})
        [result] = pull(conn, workspace, store)
        assert result.report.counts["imported"] == len(ids) == 6
        labels = store.current_labels()
        assert {i: labels[i] for i in ids} == truth
        assert pull(conn, workspace, store)[0].report.counts["imported"] == 0


def test_already_labelled_images_are_left_out(server, conn, workspace):
    ids = add_pool(workspace, 4)
    with workspace.store() as store:
        store.add_label(ids[0], GOOD, source="builtin")
        number = store.create_round(ids, kind="seed")
        res = push_round(conn, workspace, store, number)
        assert res.images == 3 and res.skipped_labelled == 1 and "left out" in res.summary()
        store.add_label(ids[1], GOOD, source="builtin")
        more = push_round(conn, workspace, store, number, force=True, include_labelled=True)
        assert more.images == 4


def test_supported_check_fails_for_other_modern_versions():
    with CvatTestServer(version="2.50.0", modern_about=True) as srv:
        with connect(fast_settings(srv.url)) as c:
            assert c.version_relaxed and "not supported" in c.warnings[0]


def test_organisation_is_sent(server, workspace):
    ids = add_pool(workspace, 2)
    with connect(fast_settings(server.url, organization="team-a")) as c, \
            workspace.store() as store:
        push_round(c, workspace, store, store.create_round(ids, kind="seed"))
    assert "team-a" in server.org_headers
