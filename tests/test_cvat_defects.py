"""Issue 12: the eleven defects found against a real CVAT 2.23.1, each driven by cvat-sdk.

Every test here failed on the bridge before the fix (run against the test server brought up to
flows g-m of ../shared/cvat-trace) and passes after it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import urllib3

from cvat_helpers import PASSWORD, CvatTestServer, add_pool, fast_settings
from core.cli import main
from cvat_bridge import records
from cvat_bridge.client import CvatServerError, CvatTimeout, connect
from cvat_bridge.pull import pull, task_status
from cvat_bridge.push import push_round
from cvat_bridge.service import check
from data.datumaro_io import import_datumaro

logging.getLogger("cvat_bridge").setLevel(logging.CRITICAL)

GOOD = {"color": "red", "type": "sedan", "orientation": "front"}


def _stems(srv: CvatTestServer, task_id: int) -> list[str]:
    return [Path(n).stem for n in srv.frame_names(task_id)]


def _cli(ws, *args: str) -> int:
    if args[0] == "cvat":
        args = ("cvat", "--poll", "0.02", *args[1:])
    return main(["--workspace", str(ws.root), *args])


def _env(monkeypatch, srv: CvatTestServer, **extra: str) -> None:
    monkeypatch.setenv("CVAT_HOST", srv.url)
    monkeypatch.setenv("CVAT_USERNAME", "admin")
    monkeypatch.setenv("CVAT_PASSWORD", PASSWORD)
    for k, v in extra.items():
        monkeypatch.setenv(k, v)


# 1 ----------------------------------------------------------------------------------------
def test_access_token_works_against_cvat_2_23(workspace):
    """2.23.1 answers `Authorization: Bearer` with 401; the key works as `Token <key>`."""
    with CvatTestServer(tokens={"key-23": "admin"}) as srv:
        http = urllib3.PoolManager()
        bearer = http.request("GET", srv.url + "/api/users/self",
                              headers={"Authorization": "Bearer key-23"})
        assert bearer.status == 401 and bearer.headers["WWW-Authenticate"] == "Token"
        assert json.loads(bearer.data) == {"detail": "Authentication credentials were not provided."}
        settings = fast_settings(srv.url, username=None, password=None, access_token="key-23")
        with connect(settings) as c:
            assert c.username == "admin"
            ids = add_pool(workspace, 2)
            with workspace.store() as store:
                res = push_round(c, workspace, store, store.create_round(ids, kind="seed"))
        assert res.images == 2
        assert ("POST", "/api/auth/login", 200) not in srv.log


# 2 ----------------------------------------------------------------------------------------
def test_named_project_wins_over_the_remembered_one(workspace, monkeypatch, capsys):
    ids = add_pool(workspace, 4)
    with CvatTestServer() as srv, workspace.store() as store, \
            connect(fast_settings(srv.url)) as conn:
        first = push_round(conn, workspace, store, store.create_round(ids[:2], kind="seed"))
        other = push_round(conn, workspace, store, store.create_round(ids[2:], kind="active"),
                           project_name="other")
        assert other.project_id != first.project_id and other.project_created
        assert srv.state.projects[other.project_id]["name"] == "other"
        # check names the chosen project and checks its spec
        bad = srv.add_project("bad", [{"name": "vehicle", "type": "tag", "attributes": []}])
        _env(monkeypatch, srv, CVAT_PROJECT="bad")
        assert _cli(workspace, "cvat", "check") == 1
        out = capsys.readouterr().out
        assert f"'bad' #{bad}" in out and "DIFFERS" in out


# 3 ----------------------------------------------------------------------------------------
def _prefilled(workspace, srv, conn, store, n=4, segment_size=2, attrs=("color", "type",
                                                                         "orientation")):
    ids = add_pool(workspace, n)
    number = store.create_round(ids, kind="seed")
    model = store.add_model("m.pt")
    store.save_predictions(model, [(i, a, GOOD[a], 0.9) for i in ids for a in attrs])
    res = push_round(conn, workspace, store, number, prefill=True, segment_size=segment_size)
    return ids, res


def test_unreviewed_prefilled_tags_are_never_human_labels(workspace):
    with CvatTestServer() as srv, workspace.store() as store, \
            connect(fast_settings(srv.url)) as conn:
        ids, res = _prefilled(workspace, srv, conn, store)
        assert res.prefilled == 4
        [r] = pull(conn, workspace, store)                 # nobody touched CVAT
        assert r.report.counts["imported"] == 0 and r.report.counts["held"] == 4
        assert store.labelled_ids() == set()
        assert r.sources == {"pre-filled, not reviewed": 4}
        # a person corrects one tag in the UI (source semi-auto) ...
        stems = _stems(srv, res.task_id)
        srv.edit_tag(res.task_id, stems[0], {"color": "blue"})
        # ... and finishes the second job (frames 2-3) without edits
        srv.set_job_state(srv.jobs_of(res.task_id)[1], "completed")
        [r] = pull(conn, workspace, store)
        assert r.report.counts["imported"] == 3 and r.report.counts["held"] == 1
        assert r.sources == {"by people": 1, "pre-filled, reviewed": 2,
                             "pre-filled, not reviewed": 1}
        assert any("not reviewed" in line for line in r.details())
        labels = store.current_labels()
        assert len(labels) == 3 and {"color": "blue", "type": "sedan",
                                     "orientation": "front"} in labels.values()


# 4 ----------------------------------------------------------------------------------------
def test_left_out_attribute_never_comes_back_as_a_label(workspace):
    with CvatTestServer() as srv, workspace.store() as store, \
            connect(fast_settings(srv.url)) as conn:
        ids, res = _prefilled(workspace, srv, conn, store, n=2, segment_size=None,
                              attrs=("type", "orientation"))       # unsure about colour
        [label] = srv.task_labels(res.task_id)
        assert {a["name"]: a["default_value"] for a in label["attributes"]} == {
            "color": "", "type": "", "orientation": ""}
        assert srv.tags(res.task_id)[0] == {"type": "sedan", "orientation": "front"}
        srv.set_job_state(srv.jobs_of(res.task_id)[0], "completed")
        [r] = pull(conn, workspace, store)
        assert r.report.counts["imported"] == 2
        assert all(v == {"type": "sedan", "orientation": "front"}
                   for v in store.current_labels().values())
    # an older project whose default is a real class is flagged by check
    with CvatTestServer() as srv2:
        srv2.add_project("old", [{"name": "vehicle", "type": "tag", "attributes": [
            {"name": a, "input_type": "select", "values": list(workspace.schema.classes[a]),
             "default_value": workspace.schema.classes[a][0]}
            for a in workspace.schema.attributes]}])
        result = check(workspace, fast_settings(srv2.url, project_name="old"))
        assert any("defaults to 'red'" in d for d in result.spec_differences)


# 6 ----------------------------------------------------------------------------------------
def test_deleted_task_is_skipped_and_can_be_forgotten(workspace, monkeypatch, capsys):
    ids = add_pool(workspace, 4)
    with CvatTestServer() as srv:
        with workspace.store() as store, connect(fast_settings(srv.url)) as conn:
            a = push_round(conn, workspace, store, store.create_round(ids[:2], kind="seed"))
            b = push_round(conn, workspace, store, store.create_round(ids[2:], kind="active"))
            for t in (a.task_id, b.task_id):
                srv.set_tags(t, {s: GOOD for s in _stems(srv, t)})
            conn.client.tasks.retrieve(b.task_id).remove()             # DELETE -> 204
            results = pull(conn, workspace, store)
        assert [r.missing for r in results] == [False, True]
        assert results[0].report.counts["imported"] == 2
        _env(monkeypatch, srv)
        assert _cli(workspace, "cvat", "push", "--round", "1") == 2      # still recorded
        assert f"forget --task {b.task_id}" in capsys.readouterr().err
        assert _cli(workspace, "cvat", "forget", "--task", str(b.task_id)) == 0
        assert _cli(workspace, "cvat", "push", "--round", "1") == 0
        with workspace.store() as store:
            assert records.task(store, srv.url, b.task_id) is None


# 7 ----------------------------------------------------------------------------------------
def test_retry_after_export_timeout_waits_on_the_running_request(workspace):
    ids = add_pool(workspace, 2)
    with CvatTestServer() as srv, workspace.store() as store:
        with connect(fast_settings(srv.url)) as conn:
            res = push_round(conn, workspace, store, store.create_round(ids, kind="seed"))
        srv.set_tags(res.task_id, {s: GOOD for s in _stems(srv, res.task_id)})
        srv.faults.export_worker_stopped = True
        with connect(fast_settings(srv.url, operation_timeout_s=0.2)) as conn:
            with pytest.raises(CvatTimeout):
                pull(conn, workspace, store)
        srv.faults.export_worker_stopped = False
        srv.log.clear()
        with connect(fast_settings(srv.url, operation_timeout_s=5)) as conn:
            [r] = pull(conn, workspace, store)
        assert r.report.counts["imported"] == 2
        exports = [(m, s) for m, p, s in srv.log if "/dataset/export" in p]
        assert exports == [("POST", 409)]
        assert any(p.startswith("/api/requests?") and f"task_id={res.task_id}" in p
                   for _, p, _ in srv.log)


# 8 ----------------------------------------------------------------------------------------
def test_server_error_page_becomes_one_sentence(workspace):
    ids = add_pool(workspace, 2)
    with CvatTestServer() as srv, workspace.store() as store, \
            connect(fast_settings(srv.url, retries=0)) as conn:
        push_round(conn, workspace, store, store.create_round(ids, kind="seed"))
        srv.faults.policy_engine_down = True
        with pytest.raises(CvatServerError) as err:
            task_status(conn, store)
    text = str(err.value)
    assert "500" in text and "Server Error (500)" in text
    assert "<" not in text and "\n" not in text


# 9 ----------------------------------------------------------------------------------------
def test_tag_deleted_after_a_pull_is_reported_and_can_be_retracted(workspace, monkeypatch,
                                                                   capsys):
    ids = add_pool(workspace, 3)
    with CvatTestServer() as srv:
        with workspace.store() as store, connect(fast_settings(srv.url)) as conn:
            res = push_round(conn, workspace, store, store.create_round(ids, kind="seed"))
            stems = _stems(srv, res.task_id)
            srv.set_tags(res.task_id, {s: GOOD for s in stems})
            pull(conn, workspace, store)
            srv.set_tags(res.task_id, {stems[0]: None})             # deleted in CVAT
            [r] = pull(conn, workspace, store)
            assert [i for i, _ in r.removed_tags] == [stems[0]] and not r.retracted
            assert any("retract-deleted" in line for line in r.details())
            assert len(store.labelled_ids()) == 3                  # reported, not changed yet
        _env(monkeypatch, srv)
        assert _cli(workspace, "cvat", "pull", "--retract-deleted") == 0
        assert "retracted 1 label" in capsys.readouterr().out
        with workspace.store() as store:
            image_id = records.items(store, records.task(store, srv.url, res.task_id))[0][0]
            assert len(store.labelled_ids()) == 2 and image_id not in store.labelled_ids()
            history = store.label_history(image_id)
            assert [h.values for h in history] == [GOOD, {}]


# 10 ---------------------------------------------------------------------------------------
def test_frames_deleted_in_cvat_are_reported_and_status_agrees(workspace):
    ids = add_pool(workspace, 4)
    with CvatTestServer() as srv, workspace.store() as store, \
            connect(fast_settings(srv.url)) as conn:
        res = push_round(conn, workspace, store, store.create_round(ids, kind="seed"),
                         segment_size=2)
        stems = _stems(srv, res.task_id)
        srv.set_tags(res.task_id, {s: GOOD for s in stems})
        conn.client.tasks.retrieve(res.task_id).remove_frames_by_ids([1])
        [st] = task_status(conn, store)
        assert st.tagged == 3 and st.deleted_frames == [1] and "3/3 tagged" in st.summary()
        [r] = pull(conn, workspace, store)
        assert r.report.counts["imported"] == 3 == st.tagged
        assert [(i, f) for i, _, f in r.deleted_frames] == [(stems[1], 1)]
        assert any("deleted in CVAT" in line for line in r.details())


# 11 ---------------------------------------------------------------------------------------
def _doc(label: str, items: list[tuple[str, dict]]) -> dict:
    return {"info": {}, "categories": {
        "label": {"labels": [{"name": label, "parent": "", "attributes": []}],
                  "attributes": ["color", "occluded", "orientation", "type"]},
        "points": {"items": []}},
        "items": [{"id": i, "annotations": [{"id": 0, "type": "label", "attributes": v,
                                             "group": 0, "label_id": 0}],
                   "attr": {"frame": n}, "image": {"path": f"{i}.jpg", "size": [24, 32]}}
                  for n, (i, v) in enumerate(items)]}


@pytest.mark.parametrize("label, note", [("Vehicle", "ignoring case"),
                                         ("car", "only label 'car'")])
def test_label_name_matched_ignoring_case_or_single_label(workspace, tmp_path, label, note):
    add_pool(workspace, 4)
    orient = ["fl", "fr", "bl", "br"]
    items = [(f"img_{k:03d}", {"color": "red", "type": "sedan", "orientation": o})
             for k, o in enumerate(orient)]
    path = tmp_path / "default.json"
    path.write_text(json.dumps(_doc(label, items)))
    report = import_datumaro(workspace, path)
    assert report.counts["imported"] == 4 and any(note in n for n in report.notes)
    with workspace.store() as store:
        got = sorted(v["orientation"] for v in store.current_labels().values())
    assert got == ["back-left", "back-right", "front-left", "front-right"]


# progress ---------------------------------------------------------------------------------
def test_push_and_pull_report_real_progress_through_sdk_hooks(workspace):
    ids = add_pool(workspace, 6)
    seen: list[tuple[float, str]] = []
    with CvatTestServer() as srv, workspace.store() as store, \
            connect(fast_settings(srv.url)) as conn:
        res = push_round(conn, workspace, store, store.create_round(ids, kind="seed"),
                         progress=lambda p: seen.append((p.fraction, p.message)))
        uploads = [f for f, m in seen if m.startswith("uploading images")]
        assert len(set(uploads)) >= 2 and 0.05 <= min(uploads) < max(uploads) <= 0.85
        srv.set_tags(res.task_id, {s: GOOD for s in _stems(srv, res.task_id)})
        seen.clear()
        pull(conn, workspace, store, progress=lambda p: seen.append((p.fraction, p.message)))
    downloads = [f for f, m in seen if m.startswith("downloading")]
    assert downloads and max(downloads) > min(downloads)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen) and seen[-1][0] == 1.0
