"""The test server answers like the real CVAT 2.23.1 in ../shared/cvat-trace.

Replays the traced cvat-sdk 2.80 calls (flows a-e, f) against the test server with the real
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
