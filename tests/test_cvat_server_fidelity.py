"""The test server answers like the real CVAT 2.23.1 in ../shared/cvat-trace.

Replays the traced cvat-sdk 2.80 calls (flows a-e, f, and g-m) against the test server with the real
SDK and compares the (method, path, status) sequence, the JSON keys of every answer and the
exported ``annotations/default.json`` with the recordings.
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from cvat_helpers import PASSWORD, CvatTestServer
from cvat_sdk.api_client import exceptions as api_exc
from cvat_sdk.api_client import models
from cvat_sdk.core.client import Client, Config

TRACE = Path(__file__).resolve().parents[2] / "shared" / "cvat-trace"


def load(flow: str) -> list[dict]:
    path = TRACE / f"trace-{flow}-sdk2.80.jsonl"
    if not path.is_file():
        pytest.skip(f"CVAT traces not available at {TRACE}")
    return [json.loads(line) for line in path.read_text().splitlines()]


def norm(path: str) -> str:
    path = re.sub(r"(task|project|job)(_id=|s/|s%2F|-)\d+", r"\1\2N", path)
    path = re.sub(r"/(tasks|projects|jobs)/\d+", r"/\1/N", path)
    return re.sub(r"format-by-\d+", "format-by-U", path)


def keys(obj):
    if isinstance(obj, dict):
        return {k: keys(v) for k, v in obj.items() if not isinstance(v, str) or "truncated" not in v}
    if isinstance(obj, list):
        items = [x for x in obj if not (isinstance(x, str) and "truncated" in x)]
        return [keys(items[0])] if items and isinstance(items[0], (dict, list)) else "list"
    return "leaf"


@pytest.fixture
def replay(tmp_path):
    """Run the traced SDK steps against the test server; return (server log, bodies, zips)."""
    imgs = []
    for i in range(6):
        p = tmp_path / "images" / f"img_{i}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (64 + 8 * i, 48), (40 * i, 80, 120)).save(p, quality=90)
        imgs.append(p)
    with CvatTestServer(users={"admin": PASSWORD}) as srv:
        bodies: list = []
        seqs: dict[str, list] = {}

        def mark(flow: str) -> None:
            seqs[flow] = len(srv.log)

        mark("a")
        with pytest.raises(TypeError, match="logo_url"):
            Client(srv.url)                                             # a0: strict check fails
        client = Client(srv.url, check_server_version=False,
                        config=Config(allow_unsupported_server=True, status_check_period=0.01))
        client.login(("admin", PASSWORD))
        client.users.retrieve_current_user()
        client.api_client.server_api.retrieve_about(_parse_response=False)
        mark("b")
        spec = [{"name": "vehicle", "type": "tag", "attributes": [
            {"name": "color", "mutable": False, "input_type": "select",
             "values": ["red", "green", "yellow", "orange", "blue", "purple", "black", "white",
                        "brown", "gray"], "default_value": "red"},
            {"name": "type", "mutable": False, "input_type": "select",
             "values": ["hatchback", "sedan", "minivan", "van", "suv", "pickup", "truck", "bus"],
             "default_value": "hatchback"},
            {"name": "orientation", "mutable": False, "input_type": "select",
             "values": ["front", "back", "left", "right", "front-left", "front-right",
                        "back-left", "back-right"], "default_value": "front"}]}]
        project = client.projects.create({"name": "trace vehicles", "labels": spec})
        project = client.projects.retrieve(project.id)
        project.get_labels()
        mark("c")
        task = client.tasks.create_from_data(
            {"name": "trace task", "project_id": project.id, "segment_size": 3}, imgs,
            data_params={"image_quality": 90, "sorting_method": "natural"})
        jobs = task.get_jobs()
        task.get_meta()
        for job in jobs:
            job.get_meta()
        assert task.get_frame(0, quality="original").read() == imgs[0].read_bytes()
        mark("d")
        labels = task.get_labels()
        attr = {a.name: a.id for a in labels[0].attributes}
        values = {0: ("red", "sedan", "front"), 1: ("blue", "suv", "back-left"),
                  3: ("white", "truck", "right"), 5: ("gray", "bus", "front-right")}
        task.set_annotations(models.LabeledDataRequest(tags=[
            models.LabeledImageRequest(label_id=labels[0].id, frame=f, source="manual",
                                       attributes=[models.AttributeValRequest(spec_id=attr[a], value=v)
                                                   for a, v in zip(("color", "type", "orientation"), vals)])
            for f, vals in values.items()]))
        task.get_annotations()
        for job in jobs:
            job.get_annotations()
        mark("e")
        zips = {}
        for save in (False, True):
            out = tmp_path / f"export_{save}.zip"
            task.export_dataset("Datumaro 1.0", out, include_images=save)
            zips[save] = out
        mark("f")
        with pytest.raises(api_exc.NotFoundException):
            client.tasks.retrieve(999999)
        with pytest.raises(api_exc.ApiException) as bad:
            task.set_annotations(models.LabeledDataRequest(tags=[models.LabeledImageRequest(
                label_id=labels[0].id, frame=0, attributes=[
                    models.AttributeValRequest(spec_id=999999, value="red")])]))
        assert bad.value.status == 400 and json.loads(bad.value.body) == ["spec_id `999999` is invalid"]
        mark("end")
        client.logout()
        yield srv.log, seqs, zips


def _segment(log, seqs, flow, nxt):
    return [(m, norm(p), s) for m, p, s in log[seqs[flow]:seqs[nxt]]]


@pytest.mark.parametrize("flow, name, nxt", [("a", "a-login", "b"), ("b", "b-project", "c"),
                                             ("c", "c-task", "d"), ("d", "d-annotations", "e"),
                                             ("e", "e-export", "f")])
def test_request_sequences_match_the_trace(replay, flow, name, nxt):
    log, seqs, _ = replay
    expected = [(r["request"]["method"], norm(r["request"]["path"]), r["response"]["status"])
                for r in load(name)]
    assert _segment(log, seqs, flow, nxt) == expected


def test_exported_default_json_equals_the_real_one(replay):
    _, _, zips = replay
    real = load("e-export")
    for save, record in ((False, real[3]), (True, real[7])):
        with zipfile.ZipFile(zips[save]) as zf:
            ours = json.loads(zf.read("annotations/default.json"))
            assert sorted(zf.namelist()) == sorted(record["response"]["body"]["zip_members"])
        assert ours == record["response"]["body"]["annotations/default.json"]


def test_json_answers_have_the_traced_shape(tmp_path):
    """Every traced JSON body's keys (recursively) are what the test server sends."""
    with CvatTestServer() as srv:
        client = Client(srv.url, check_server_version=False,
                        config=Config(allow_unsupported_server=True, status_check_period=0.01))
        client.login(("admin", "admin-password"))
        img = tmp_path / "img_0.jpg"
        Image.new("RGB", (64, 48)).save(img)
        project = client.projects.create({"name": "p", "labels": [{"name": "vehicle", "type": "tag",
                                                                   "attributes": []}]})
        task = client.tasks.create_from_data({"name": "t", "project_id": project.id,
                                              "segment_size": 3}, [img])
        ours = {
            "/api/users/self": client.api_client.users_api.retrieve_self(_parse_response=False)[1],
            "/api/projects/N": client.api_client.projects_api.retrieve(project.id, _parse_response=False)[1],
            "/api/tasks/N": client.api_client.tasks_api.retrieve(task.id, _parse_response=False)[1],
            "/api/tasks/N/data/meta": client.api_client.tasks_api.retrieve_data_meta(task.id, _parse_response=False)[1],
            "/api/jobs?task_id=N&org=&page=1":
                client.api_client.jobs_api.list(task_id=task.id, _parse_response=False)[1],
        }
        ours = {k: json.loads(v.data) for k, v in ours.items()}
    traced = {}
    for flow in ("a-login", "b-project", "c-task"):
        for r in load(flow):
            if r["request"]["method"] == "GET" and r["response"]["body"]:
                traced.setdefault(norm(r["request"]["path"]), r["response"]["body"].get("json"))
    for path, body in ours.items():
        assert keys(body) == keys(traced[path]), path


# -- flows g-m (recorded later, sdk 2.80 against a real 2.23.1) -----------------------------
from cvat_sdk.core.helpers import make_request_headers  # noqa: E402
import urllib3  # noqa: E402

SPEC3 = [{"name": "vehicle", "type": "tag", "attributes": [
    {"name": "color", "mutable": False, "input_type": "select",
     "values": ["red", "green", "yellow", "orange", "blue", "purple", "black", "white", "brown",
                "gray"]},
    {"name": "type", "mutable": False, "input_type": "select",
     "values": ["hatchback", "sedan", "minivan", "van", "suv", "pickup", "truck", "bus"]},
    {"name": "orientation", "mutable": False, "input_type": "select",
     "values": ["front", "back", "left", "right", "front-left", "front-right", "back-left",
                "back-right"]}]}]


def _records(flow: str) -> dict[str, list[dict]]:
    """Trace records of a g-m flow grouped by their step tag (``g3``, ``h5``, ``setup`` ...)."""
    out: dict[str, list[dict]] = {}
    for r in load(flow):
        out.setdefault(r["sdk_step"].split()[0], []).append(r)
    return out


def _expected(recs: list[dict]) -> list[tuple]:
    return [(r["request"]["method"], norm(r["request"]["path"]), r["response"]["status"])
            for r in recs]


def _client(srv) -> Client:
    c = Client(srv.url, check_server_version=False,
               config=Config(allow_unsupported_server=True, status_check_period=0.01))
    c.login(("admin", PASSWORD))
    return c


def _raw(client: Client, method: str, path: str, body: dict | None = None):
    headers = make_request_headers(client.api_client)
    headers["Content-Type"] = "application/json"
    return client.api_client.rest_client.request(
        method, client.api_map.host + path, headers=headers,
        body=body, _parse_response=False, _check_status=False)


def _images(tmp_path: Path, prefix: str, n: int) -> list[Path]:
    out = []
    for i in range(n):
        p = tmp_path / f"{prefix}_{i}.jpg"
        Image.new("RGB", (64 + 8 * i, 48), (30 * i, 90, 120)).save(p, quality=90)
        out.append(p)
    return out


def _step(srv, fn) -> list[tuple]:
    start = len(srv.log)
    fn()
    return [(m, norm(p), s) for m, p, s in srv.log[start:]]


def test_g_auth_schemes_as_cvat_2_23(tmp_path):
    rec = _records("g-auth")
    with CvatTestServer(users={"admin": PASSWORD}) as srv:
        http = urllib3.PoolManager()

        def get(auth: str | None):
            return http.request("GET", srv.url + "/api/users/self",
                                headers={"Authorization": auth} if auth else {})
        login = http.request("POST", srv.url + "/api/auth/login",
                             body=json.dumps({"username": "admin", "password": PASSWORD}),
                             headers={"Content-Type": "application/json"})
        key = json.loads(login.data)["key"]
        wrong = "0" * len(key)
        import base64
        basic = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        for step, auth in (("g1", None), ("g4", f"Bearer {key}"), ("g5", f"Token {key}"),
                           ("g7", f"Token {wrong}"), ("g8", f"Bearer {wrong}"), ("g9", basic)):
            [r] = rec[step]
            got = get(auth)
            assert got.status == r["response"]["status"], step
            want_headers = {k.lower(): v for k, v in r["response"]["headers"]}
            if got.status == 401:
                assert json.loads(got.data) == r["response"]["body"]["json"], step
                assert got.headers["WWW-Authenticate"] == want_headers["www-authenticate"]
            assert got.headers["Content-Type"] == want_headers["content-type"]
        # cookies without CSRF header: 403; Bearer on an unsafe method: 401
        cookies = "; ".join(c.split(";")[0] for c in login.headers.getlist("Set-Cookie"))
        csrf = http.request("POST", srv.url + "/api/projects", body=b"{}",
                            headers={"Cookie": cookies, "Content-Type": "application/json"})
        assert (csrf.status, json.loads(csrf.data)) == (
            rec["g10"][0]["response"]["status"], rec["g10"][0]["response"]["body"]["json"])
        bearer_post = http.request("POST", srv.url + "/api/projects", body=b"{}",
                                   headers={"Authorization": f"Bearer {key}"})
        assert bearer_post.status == rec["g12"][0]["response"]["status"]
        # logout deletes the key; the next login gets another one
        client = _client(srv)
        client.logout()
        assert get(f"Token {key}").status == rec["g18"][0]["response"]["status"]
        relog = http.request("POST", srv.url + "/api/auth/login",
                             body=json.dumps({"username": "admin", "password": PASSWORD}),
                             headers={"Content-Type": "application/json"})
        assert json.loads(relog.data)["key"] != key


def test_h_defaults_filled_on_read_and_export(tmp_path):
    rec = _records("h-attr-defaults")
    h1 = rec["h1"][0]["request"]["body"]["json"]
    with CvatTestServer(users={"admin": PASSWORD}) as srv:
        client = _client(srv)
        project = client.projects.create({"name": h1["name"], "labels": h1["labels"]})
        labels = {lb.name: lb for lb in project.get_labels()}
        traced = rec["h2"][0]["response"]["body"]["json"]["results"][0]["attributes"]
        assert [(a.name, a.default_value) for a in labels["vehicle"].attributes] == [
            (a["name"], a["default_value"]) for a in traced]
        task = client.tasks.create_from_data({"name": "trace h task", "project_id": project.id},
                                             _images(tmp_path, "h", 4))
        [label] = task.get_labels()
        ids = {a.name: a.id for a in label.attributes}
        traced_ids = {a["name"]: a["id"] for a in traced}
        back = {v: ids[k] for k, v in traced_ids.items()}
        put = rec["h5"][0]["request"]["body"]["json"]["tags"]
        task.set_annotations(models.LabeledDataRequest(tags=[models.LabeledImageRequest(
            label_id=label.id, frame=t["frame"], source=t["source"],
            attributes=[models.AttributeValRequest(spec_id=back[a["spec_id"]], value=a["value"])
                        for a in t["attributes"]]) for t in put]))
        names = {v: k for k, v in ids.items()}
        got = [{names[a.spec_id]: a.value for a in t.attributes}
               for t in task.get_annotations().tags]
        tnames = {v: k for k, v in traced_ids.items()}
        want = [{tnames[a["spec_id"]]: a["value"] for a in t["attributes"]}
                for t in rec["h6"][0]["response"]["body"]["json"]["tags"]]
        assert got == want
        out = tmp_path / "h.zip"
        task.export_dataset("Datumaro 1.0", out, include_images=False)
        with zipfile.ZipFile(out) as zf:
            ours = json.loads(zf.read("annotations/default.json"))
        real = rec["h9"][-1]["response"]["body"]["annotations/default.json"]
        assert [i["annotations"][0]["attributes"] for i in ours["items"]] == \
            [i["annotations"][0]["attributes"] for i in real["items"]]


def test_i_sources_kept_as_sent(tmp_path):
    rec = _records("i-sources")
    with CvatTestServer(users={"admin": PASSWORD}) as srv:
        client = _client(srv)
        project = client.projects.create({"name": "i", "labels": SPEC3})
        task = client.tasks.create_from_data({"name": "trace i task", "project_id": project.id},
                                             _images(tmp_path, "i", 3))
        [label] = task.get_labels()
        [job] = task.get_jobs()
        attr = {a.name: a.id for a in label.attributes}

        def tag(frame, source=None, id=None, **values):
            kw = {"source": source} if source else {}
            if id is not None:
                kw["id"] = id
            return models.LabeledImageRequest(label_id=label.id, frame=frame, attributes=[
                models.AttributeValRequest(spec_id=attr[k], value=v) for k, v in values.items()],
                **kw)
        from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction as A
        seq = _step(srv, lambda: job.update_annotations(models.PatchedLabeledDataRequest(
            tags=[tag(2, "manual", color="white", type="suv", orientation="right")]),
            action=A.CREATE))
        assert seq == _expected(rec["i1"])
        task.update_annotations(models.PatchedLabeledDataRequest(tags=[
            tag(0, "auto", color="red", type="sedan", orientation="front"),
            tag(1, "auto", color="black", type="truck", orientation="back")]), action=A.CREATE)
        tags = {t.frame: t for t in task.get_annotations().tags}
        job.update_annotations(models.PatchedLabeledDataRequest(tags=[
            tag(0, "auto", tags[0].id, color="blue", type="sedan", orientation="front")]),
            action=A.UPDATE)
        job.update_annotations(models.PatchedLabeledDataRequest(tags=[
            tag(1, "semi-auto", tags[1].id, color="gray", type="truck", orientation="back")]),
            action=A.UPDATE)
        after = {t.frame: (t.id, t.source) for t in task.get_annotations().tags}
        want = {t["frame"]: t["source"] for t in rec["i6"][0]["response"]["body"]["json"]["tags"]}
        assert {f: s for f, (_, s) in after.items()} == want
        task.set_annotations(models.LabeledDataRequest(tags=[
            tag(0, None, tags[0].id, color="blue", type="van", orientation="front"),
            tag(1, "semi-auto", tags[1].id, color="gray", type="truck", orientation="back"),
            tag(2, "manual", tags[2].id, color="white", type="suv", orientation="right")]))
        final = {t.frame: (t.id, t.source) for t in task.get_annotations().tags}
        want = {t["frame"]: t["source"] for t in rec["i8"][0]["response"]["body"]["json"]["tags"]}
        assert {f: s for f, (_, s) in final.items()} == want
        assert {f: i for f, (i, _) in final.items()} == {f: i for f, (i, _) in after.items()}


def test_j_export_conflict_and_request_list(tmp_path):
    rec = _records("j-export-conflict")
    with CvatTestServer(users={"admin": PASSWORD}) as srv:
        client = _client(srv)
        project = client.projects.create({"name": "j", "labels": SPEC3})
        task = client.tasks.create_from_data({"name": "trace j task", "project_id": project.id},
                                             _images(tmp_path, "j", 2))
        srv.faults.export_worker_stopped = True
        q = "format=Datumaro+1.0&save_images=False"
        first = _raw(client, "POST", f"/api/tasks/{task.id}/dataset/export?save_images=False&"
                                     "format=Datumaro+1.0")
        rq_id = json.loads(first.data)["rq_id"]
        status, _ = client.api_client.requests_api.retrieve(rq_id)
        assert str(status.status) == "queued"
        with pytest.raises(api_exc.ApiException) as conflict:
            task.export_dataset("Datumaro 1.0", tmp_path / "x.zip", include_images=False)
        r3 = rec["j3"][0]["response"]
        assert conflict.value.status == r3["status"] and json.loads(conflict.value.body) == r3["body"]["json"]
        early = _raw(client, "GET", f"/api/tasks/{task.id}/annotations?{q}&action=download")
        assert (early.status, early.data.decode()) == (
            rec["j4b"][0]["response"]["status"], rec["j4b"][0]["response"]["body"]["text"])
        listed, _ = client.api_client.requests_api.list(action="export", target="task",
                                                        task_id=task.id)
        assert [r.id for r in listed.results] == [rq_id]
        none = _raw(client, "GET", f"/api/requests?task_id={task.id}&action=export&"
                                   "subresource=annotations&format=Datumaro_1%400")
        assert json.loads(none.data)["count"] == 0
        srv.faults.export_worker_stopped = False
        done, _ = client.wait_for_completion(rq_id)
        assert done.result_url.endswith(f"/api/tasks/{task.id}/annotations?save_images=False&"
                                        "format=Datumaro+1.0&action=download")
        from cvat_sdk.core.downloading import Downloader
        Downloader(client).download_file(done.result_url, tmp_path / "j.zip")
        gone = _raw(client, "GET", "/api/requests/" + rq_id.replace(":", "%3A").replace("@", "%40"))
        assert (gone.status, gone.data.decode()) == (
            rec["j15"][0]["response"]["status"], rec["j15"][0]["response"]["body"]["text"])
        again = _raw(client, "GET", done.result_url.split(srv.url)[1])
        assert (again.status, again.data.decode()) == (
            rec["j16"][0]["response"]["status"], rec["j16"][0]["response"]["body"]["text"])


def test_k_deleted_task_and_frames(tmp_path):
    rec = _records("k-deleted")
    with CvatTestServer(users={"admin": PASSWORD}) as srv:
        client = _client(srv)
        project = client.projects.create({"name": "k", "labels": SPEC3})
        a = client.tasks.create_from_data({"name": "trace k task a", "project_id": project.id,
                                           "segment_size": 2}, _images(tmp_path, "k", 4))
        b = client.tasks.create_from_data({"name": "trace k task b", "project_id": project.id},
                                          _images(tmp_path, "kb", 2))
        [job_b] = b.get_jobs()
        [label] = a.get_labels()
        a.set_annotations(models.LabeledDataRequest(tags=[
            models.LabeledImageRequest(label_id=label.id, frame=f, attributes=[])
            for f in range(4)]))
        seq = _step(srv, b.remove)
        seq += _step(srv, lambda: pytest.raises(api_exc.NotFoundException,
                                                client.tasks.retrieve, b.id))
        seq += _step(srv, lambda: _raw(client, "GET", f"/api/tasks/{b.id}/annotations/"))
        seq += _step(srv, lambda: pytest.raises(api_exc.NotFoundException,
                                                client.jobs.retrieve, job_b.id))
        seq += _step(srv, lambda: pytest.raises(api_exc.ApiException,
                                                client.api_client.jobs_api.list, task_id=b.id))
        assert seq == [x for s in ("k1", "k2", "k3", "k4", "k5") for x in _expected(rec[s])]
        a.remove_frames_by_ids([1])
        assert a.get_meta().deleted_frames == [1]
        assert sorted(t.frame for t in a.get_annotations().tags) == [0, 1, 2, 3]
        out = tmp_path / "k.zip"
        a.export_dataset("Datumaro 1.0", out, include_images=False)
        with zipfile.ZipFile(out) as zf:
            ours = json.loads(zf.read("annotations/default.json"))
        real = rec["k12"][-1]["response"]["body"]["annotations/default.json"]
        assert [i["attr"]["frame"] for i in ours["items"]] == [i["attr"]["frame"] for i in real["items"]]


def test_l_html_500_while_the_policy_engine_is_down(tmp_path):
    rec = _records("l-server-error")
    with CvatTestServer(users={"admin": PASSWORD}) as srv:
        client = _client(srv)
        project = client.projects.create({"name": "l", "labels": SPEC3})
        task = client.tasks.create_from_data({"name": "l", "project_id": project.id},
                                             _images(tmp_path, "l", 2))
        srv.faults.policy_engine_down = True
        with pytest.raises(api_exc.ServiceException) as err:
            client.tasks.retrieve(task.id)
        want = rec["l2"][0]["response"]
        body = err.value.body
        body = body.decode() if isinstance(body, bytes) else body
        assert err.value.status == 500 and body == want["body"]["text"]
        assert dict((k.lower(), v) for k, v in err.value.headers.items())["content-type"] == \
            want["body"]["content_type"]
        about = client.api_client.server_api.retrieve_about(_parse_response=False)[1]
        assert about.status == rec["l7"][0]["response"]["status"]
        Client(srv.url, check_server_version=False,
               config=Config(allow_unsupported_server=True)).login(("admin", PASSWORD))
        srv.faults.policy_engine_down = False
        assert client.tasks.retrieve(task.id).id == task.id


def test_m_job_states_stages_and_assignees(tmp_path):
    rec = _records("m-jobs")
    with CvatTestServer(users={"admin": PASSWORD, "annot1": "pw1", "annot2": "pw2"},
                        plain_users={"annot1", "annot2"}) as srv:
        client = _client(srv)
        project = client.projects.create({"name": "m", "labels": SPEC3})
        task = client.tasks.create_from_data({"name": "trace m task", "project_id": project.id,
                                              "segment_size": 2}, _images(tmp_path, "m", 6))
        jobs = sorted(task.get_jobs(), key=lambda j: j.start_frame)
        annot1 = srv.user_ids["annot1"]
        seq = _step(srv, lambda: jobs[0].update({"assignee": annot1}))
        assert seq == _expected(rec["m2"])
        other = Client(srv.url, check_server_version=False,
                       config=Config(allow_unsupported_server=True))
        other.login(("annot1", "pw1"))
        assert [j.id for j in other.jobs.list()] == [jobs[0].id]
        other.jobs.retrieve(jobs[0].id).update({"state": "completed"})
        assert _raw(other, "PATCH", f"/api/jobs/{jobs[1].id}", {"state": "completed"}).status == \
            rec["m6"][0]["response"]["status"]
        with pytest.raises(api_exc.ForbiddenException):
            other.tasks.retrieve(task.id)
        assert task.fetch().jobs.completed == 0            # completed, but still in annotation
        jobs[0].update({"stage": "acceptance", "state": "completed"})
        jobs[1].update({"assignee": srv.user_ids["annot2"], "stage": "validation",
                        "state": "in progress"})
        bad = _raw(client, "PATCH", f"/api/jobs/{jobs[2].id}", {"state": "done"})
        assert (bad.status, json.loads(bad.data)) == (
            rec["m10"][0]["response"]["status"], rec["m10"][0]["response"]["body"]["json"])
        counts = task.fetch().jobs
        traced = rec["m13"][0]["response"]["body"]["json"]["jobs"]
        assert (counts.count, counts.completed, counts.validation) == (
            traced["count"], traced["completed"], traced["validation"])
        done, _ = client.api_client.jobs_api.list(task_id=task.id, state="completed")
        assert [j.id for j in done.results] == [jobs[0].id] and done.results[0].status == "completed"
        mine, _ = client.api_client.jobs_api.list(task_id=task.id, assignee="annot1")
        assert [j.id for j in mine.results] == [jobs[0].id]
        jobs[1].update({"assignee": None})
        assert jobs[1].assignee is None
