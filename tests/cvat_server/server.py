"""A threaded HTTP server on 127.0.0.1 that answers the CVAT REST subset cvat-sdk uses for us.

Built to answer as the real CVAT 2.23.1 in ../shared/cvat-trace did (bodies, status codes,
trailing slashes, ``rq_id`` polling at ``/api/requests/<rq_id>``, ``result_url`` downloads, the
Datumaro 1.0 zip layout, unvalidated select values, 400 on unknown label/spec ids), so the real
cvat-sdk client can be driven against it. Tests annotate through :meth:`CvatTestServer.set_tags`
(what an annotator would do in the UI) and inject faults through :class:`Faults`.
"""
from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json
import re
import secrets
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from typing import Any, Callable
from urllib.parse import parse_qs, quote, unquote, urlsplit

from PIL import Image

DESCRIPTION = ("CVAT is completely re-designed and re-implemented version of Video Annotation Tool "
               "from Irvine, California tool.")
JSON_TYPE = "application/vnd.cvat+json"
HTML_TYPE = "text/html; charset=utf-8"
NO_CACHE = [("Cache-Control", "max-age=0, no-cache, no-store, must-revalidate, private")]
# What CVAT 2.23.1 (Django) answers on a 500, e.g. while its policy engine is down (trace l).
SERVER_ERROR_HTML = ("\n<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Server Error (500)"
                     "</title>\n</head>\n<body>\n  <h1>Server Error (500)</h1><p></p>\n</body>\n"
                     "</html>\n")
NOT_FOUND_HTML = ("\n<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>\n"
                  "</head>\n<body>\n  <h1>Not Found</h1><p>The requested resource was not found "
                  "on this server.</p>\n</body>\n</html>\n")
JOB_STATES = ("new", "in progress", "rejected", "completed")
JOB_STAGES = ("annotation", "validation", "acceptance")
# ``Allow`` headers as traced, by route.
ALLOW = [
    (r"/api/server/about", "GET, HEAD, OPTIONS"),
    (r"/api/auth/login", "POST, OPTIONS"),
    (r"/api/auth/logout", "GET, POST, HEAD, OPTIONS"),
    (r"/api/users(/self)?", "GET, HEAD, OPTIONS"),
    (r"/api/(projects|tasks)", "GET, POST, HEAD, OPTIONS"),
    (r"/api/jobs", "GET, POST, HEAD, OPTIONS"),
    (r"/api/(projects|tasks|jobs)/\d+", "GET, PATCH, DELETE, HEAD, OPTIONS"),
    (r"/api/labels", "GET, HEAD, OPTIONS"),
    (r"/api/(tasks|jobs)/\d+/data/meta", "GET, PATCH, HEAD, OPTIONS"),
    (r"/api/tasks/\d+/data/", "GET, POST, HEAD, OPTIONS"),
    (r"/api/(tasks|jobs)/\d+/annotations/?", "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
    (r"/api/tasks/\d+/dataset", "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
    (r"/api/tasks/\d+/dataset/export", "POST, OPTIONS"),
    (r"/api/requests(/[^/]+)?", "GET, HEAD, OPTIONS"),
    (r"/api/requests/[^/]+/cancel", "POST, OPTIONS"),
]
LABEL_COLORS = ("#10a0c0", "#c06060", "#33ddff", "#fa3253")


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


class HttpError(Exception):
    def __init__(self, status: int, body: Any, *, content_type: str | None = None,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or []


def _html(status: int, text: str) -> HttpError:
    """A plain-text/HTML answer (``text/html; charset=utf-8``) as CVAT sends for some errors."""
    return HttpError(status, text.encode(), content_type=HTML_TYPE)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


@dataclass
class _Rule:
    pattern: re.Pattern[str]
    method: str | None
    times: int | None   # None: forever
    status: int = 500
    delay_s: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        return (self.method is None or self.method == method) and bool(self.pattern.search(path))


@dataclass
class Faults:
    """Fault injection: failures, slow answers, an export that never finishes."""

    rules: list[_Rule] = field(default_factory=list)
    export_never_finishes: bool = False
    create_fails_with: str | None = None
    # Trace j: with the export worker stopped, export requests stay "queued".
    export_worker_stopped: bool = False
    # Trace l: with the policy engine down, every permission-checked call answers an HTML 500.
    policy_engine_down: bool = False

    def fail(self, pattern: str, *, times: int | None = 1, status: int = 500,
             method: str | None = None) -> None:
        """The next ``times`` requests matching ``pattern`` get ``status`` (None: all)."""
        self.rules.append(_Rule(re.compile(pattern), method, times, status=status))

    def slow(self, pattern: str, seconds: float, *, times: int | None = None,
             method: str | None = None) -> None:
        """Answer matching requests only after ``seconds``."""
        self.rules.append(_Rule(re.compile(pattern), method, times, status=0, delay_s=seconds))

    def clear(self) -> None:
        self.rules.clear()
        self.export_never_finishes = False
        self.create_fails_with = None
        self.export_worker_stopped = False
        self.policy_engine_down = False

    def take(self, method: str, path: str) -> _Rule | None:
        for rule in self.rules:
            if rule.matches(method, path):
                if rule.times is not None:
                    rule.times -= 1
                return rule
        return None


@dataclass
class _Rq:
    id: str
    op_type: str
    task_id: int
    project_id: int | None
    fmt: str | None
    owner: dict
    created: float
    on_finish: Callable[[], str | None] | None = None
    polls: int = 0
    status: str = "queued"
    message: str = ""
    started: float | None = None
    finished: float | None = None
    result_url: str | None = None
    never_finishes: bool = False
    fail_message: str | None = None
    subresource: str | None = None
    queued_while: Callable[[], bool] | None = None     # stays "queued" while this is true


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.ids: dict[str, int] = {}
        self.projects: dict[int, dict] = {}
        self.labels: dict[int, dict] = {}          # label id -> label (with owner project/task)
        self.tasks: dict[int, dict] = {}
        self.jobs: dict[int, dict] = {}
        self.requests: dict[str, _Rq] = {}
        self.exports: dict[tuple[int, str, bool], bytes] = {}

    def next_id(self, kind: str) -> int:
        self.ids[kind] = self.ids.get(kind, 0) + 1
        return self.ids[kind]


class CvatTestServer:
    """Start with ``with CvatTestServer() as srv: srv.url``; annotate with :meth:`set_tags`."""

    def __init__(self, *, version: str = "2.23.1", modern_about: bool = False,
                 users: dict[str, str] | None = None, tokens: dict[str, str] | None = None,
                 readonly_users: set[str] | None = None, frames_per_poll: int = 1,
                 plain_users: set[str] | None = None) -> None:
        self.version = version
        self.modern_about = modern_about
        self.users = dict(users or {"admin": "admin-password"})
        self.user_ids = {name: i + 1 for i, name in enumerate(self.users)}
        # CVAT 2.2x knows no personal access tokens: it answers ``Authorization: Bearer`` with
        # 401 (trace g). Its "token" is the login key, sent as ``Authorization: Token <key>``.
        self.bearer_tokens = _version_tuple(version) >= (2, 30)
        self.tokens = dict(tokens or {})                 # personal access tokens -> username
        self.readonly_users = set(readonly_users or ())
        # Plain users (CVAT group "user") may only see and change the jobs assigned to them.
        self.plain_users = set(plain_users or ())
        self.sessions: dict[str, tuple[str, str]] = {}   # sessionid -> (username, csrftoken)
        self.login_keys: dict[str, str] = {}             # "Token <key>" auth (sdk 2.23 style)
        if not self.bearer_tokens:
            self.login_keys.update(self.tokens)           # on 2.2x a token is a login key
        self.polls_before_finish = frames_per_poll
        self.faults = Faults()
        self.state = _State()
        self.log: list[tuple[str, str, int]] = []
        self.org_headers: list[str | None] = []           # X-Organization of each request
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "CvatTestServer":
        handler = _make_handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "CvatTestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- helpers for tests (what annotators and admins do in the UI) -------------------------
    def expire_sessions(self) -> None:
        """Every session/token becomes invalid (server restarted with a new secret)."""
        with self.state.lock:
            self.sessions.clear()
            self.login_keys.clear()
            self.tokens.clear()

    def task_labels(self, task_id: int) -> list[dict]:
        with self.state.lock:
            task = self.state.tasks[task_id]
            return self._labels_of(task)

    def frame_names(self, task_id: int) -> list[str]:
        with self.state.lock:
            return [f["name"] for f in self.state.tasks[task_id]["frames"]]

    def set_tags(self, task_id: int, tags: dict[str, dict[str, str] | None],
                 label: str = "vehicle", source: str = "manual") -> None:
        """Annotate: ``{frame name or stem: {attribute: value}}``; None removes the tag.

        Values are stored unvalidated, as CVAT 2.23 does for select attributes.
        """
        with self.state.lock:
            task = self.state.tasks[task_id]
            lab = next(lb for lb in self._labels_of(task) if lb["name"] == label)
            by_name = {a["name"]: a["id"] for a in lab["attributes"]}
            index = {}
            for i, f in enumerate(task["frames"]):
                index[f["name"]] = i
                index[PurePosixPath(f["name"]).stem] = i
            for key, values in tags.items():
                frame = index[key]
                task["tags"] = [t for t in task["tags"] if t["frame"] != frame]
                if values is None:
                    continue
                task["tags"].append({
                    "id": self.state.next_id("tag"), "frame": frame, "label_id": lab["id"],
                    "group": None, "source": source,
                    "attributes": [{"spec_id": by_name[a], "value": v} for a, v in values.items()],
                })
            task["tags"].sort(key=lambda t: t["frame"])
            task["annotations_version"] += 1

    def tags(self, task_id: int) -> dict[int, dict[str, str]]:
        with self.state.lock:
            task = self.state.tasks[task_id]
            names = {a["id"]: a["name"] for lb in self._labels_of(task) for a in lb["attributes"]}
            return {t["frame"]: {names[a["spec_id"]]: a["value"] for a in t["attributes"]}
                    for t in task["tags"]}

    def set_job_state(self, job_id: int, state: str, stage: str | None = None,
                      assignee: str | None = None) -> None:
        """What a person does in the UI: finish a job, move its stage, assign it."""
        with self.state.lock:
            job = self.state.jobs[job_id]
            job["state"] = state
            if stage:
                job["stage"] = stage
            if assignee:
                job["assignee"], job["assignee_updated"] = assignee, time.time()

    def jobs_of(self, task_id: int) -> list[int]:
        """Job ids of a task in frame order."""
        with self.state.lock:
            return [j["id"] for j in sorted(self.state.jobs.values(), key=lambda j: j["start"])
                    if j["task_id"] == task_id]

    def delete_frames(self, task_id: int, frames: list[int]) -> None:
        """What "delete frame" in the CVAT UI does: data/meta ``deleted_frames`` (trace k)."""
        with self.state.lock:
            self.state.tasks[task_id]["deleted_frames"] = sorted(set(frames))

    def auto_tags(self, task_id: int, tags: dict[str, dict[str, str]],
                  label: str = "vehicle") -> None:
        """Tags as auto-annotation stores them: ``source: auto``, left-out attributes absent."""
        self.set_tags(task_id, tags, label=label, source="auto")

    def edit_tag(self, task_id: int, key: str, values: dict[str, str],
                 source: str = "semi-auto") -> None:
        """A person edits a tag in the UI: same id, new values, source ``semi-auto``."""
        with self.state.lock:
            task = self.state.tasks[task_id]
            frame = self._frame_index(task)[key]
            tag = next(t for t in task["tags"] if t["frame"] == frame)
            lab = self.state.labels[tag["label_id"]]
            by_name = {a["name"]: a["id"] for a in lab["attributes"]}
            vals = {a["spec_id"]: a["value"] for a in tag["attributes"]}
            vals.update({by_name[a]: v for a, v in values.items()})
            tag["attributes"] = [{"spec_id": k, "value": v} for k, v in vals.items()]
            tag["source"] = source

    def _frame_index(self, task: dict) -> dict[str, int]:
        index = {}
        for i, f in enumerate(task["frames"]):
            index[f["name"]] = i
            index[PurePosixPath(f["name"]).stem] = i
        return index

    def add_project(self, name: str, labels: list[dict]) -> int:
        """Create a project directly (e.g. one whose spec differs from ours)."""
        with self.state.lock:
            return self._create_project({"name": name, "labels": labels}, "http://x", "admin")["id"]

    # -- model ------------------------------------------------------------------------------
    def _owner(self, username: str, base: str) -> dict:
        uid = self.user_ids.get(username, 1)
        return {"url": f"{base}/api/users/{uid}", "id": uid, "username": username,
                "first_name": "", "last_name": ""}

    def _make_labels(self, specs: list[dict], *, project_id: int | None,
                     task_id: int | None) -> list[int]:
        ids = []
        for i, spec in enumerate(specs):
            lid = self.state.next_id("label")
            attrs = []
            for a in spec.get("attributes", []):
                attrs.append({
                    "id": self.state.next_id("attribute"), "name": a["name"],
                    "mutable": bool(a.get("mutable", False)),
                    "input_type": a.get("input_type", "select"),
                    # Left out, it is stored as "" (not the first value; trace h).
                    "default_value": str(a.get("default_value") or ""),
                    "values": list(a.get("values", [])),
                })
            label = {"id": lid, "name": spec["name"], "color": spec.get("color") or
                     LABEL_COLORS[i % len(LABEL_COLORS)], "attributes": attrs,
                     "type": spec.get("type", "any"), "sublabels": [], "parent_id": None,
                     "has_parent": False}
            if project_id is not None:
                label["project_id"] = project_id
            else:
                label["task_id"] = task_id
            self.state.labels[lid] = label
            ids.append(lid)
        return ids

    def _labels_of(self, obj: dict) -> list[dict]:
        if obj.get("project_id") is not None and "label_ids" not in obj:
            obj = self.state.projects[obj["project_id"]]
        return [self.state.labels[i] for i in obj["label_ids"]]

    def _label_json(self, label: dict) -> dict:
        out = dict(label)
        out["attributes"] = sorted((dict(a) for a in label["attributes"]), key=lambda a: a["name"])
        return out

    def _create_project(self, body: dict, base: str, user: str) -> dict:
        if not body.get("name"):
            raise HttpError(400, {"name": ["This field is required."]})
        pid = self.state.next_id("project")
        now = time.time()
        project = {"id": pid, "name": body["name"], "owner": user, "created": now,
                   "updated": now, "label_ids": []}
        self.state.projects[pid] = project
        project["label_ids"] = self._make_labels(body.get("labels", []), project_id=pid,
                                                 task_id=None)
        return project

    def _project_json(self, p: dict, base: str) -> dict:
        ntasks = sum(1 for t in self.state.tasks.values() if t.get("project_id") == p["id"])
        return {
            "url": f"{base}/api/projects/{p['id']}", "id": p["id"], "name": p["name"],
            "owner": self._owner(p["owner"], base), "assignee": None, "guide_id": None,
            "bug_tracker": "", "created_date": _iso(p["created"]),
            "updated_date": _iso(p["updated"]), "status": "annotation", "dimension": None,
            "organization": None, "target_storage": None, "source_storage": None,
            "tasks": {"count": ntasks, "url": f"{base}/api/tasks?project_id={p['id']}"},
            "labels": {"url": f"{base}/api/labels?project_id={p['id']}"},
            "assignee_updated_date": None, "task_subsets": [],
        }

    def _task_json(self, t: dict, base: str) -> dict:
        jobs = [j for j in self.state.jobs.values() if j["task_id"] == t["id"]]
        out = {
            "url": f"{base}/api/tasks/{t['id']}", "id": t["id"], "name": t["name"],
            "project_id": t.get("project_id"), "mode": t["mode"],
            "owner": self._owner(t["owner"], base), "assignee": None, "bug_tracker": "",
            "created_date": _iso(t["created"]), "updated_date": _iso(t["updated"]),
            "overlap": t["overlap"], "segment_size": t["segment_size"], "status": "annotation",
        }
        if t["frames"]:
            out.update({"data_chunk_size": t["chunk_size"],
                        "data_compressed_chunk_type": "imageset", "guide_id": None,
                        "data_original_chunk_type": "imageset", "size": len(t["frames"]),
                        "image_quality": t["image_quality"], "data": t["id"]})
        else:
            out["guide_id"] = None
        out.update({
            "dimension": "2d", "subset": "", "organization": None, "target_storage": None,
            "source_storage": None,
            "jobs": {"count": len(jobs),
                     # only jobs accepted and completed count (trace m)
                     "completed": sum(1 for j in jobs if j["state"] == "completed"
                                      and j["stage"] == "acceptance"),
                     "validation": sum(1 for j in jobs if j["stage"] == "validation"),
                     "url": f"{base}/api/jobs?task_id={t['id']}"},
            "labels": {"url": f"{base}/api/labels?task_id={t['id']}"},
            "assignee_updated_date": None, "validation_mode": None,
        })
        return out

    def _job_json(self, j: dict, base: str) -> dict:
        task = self.state.tasks[j["task_id"]]
        return {
            "url": f"{base}/api/jobs/{j['id']}", "id": j["id"], "task_id": j["task_id"],
            "project_id": task.get("project_id"),
            "assignee": self._owner(j["assignee"], base) if j.get("assignee") else None,
            "guide_id": None, "dimension": "2d", "bug_tracker": "",
            # the old `status` follows the stage; "completed" only once accepted (trace m)
            "status": "completed" if (j["stage"], j["state"]) == ("acceptance", "completed")
            else j["stage"], "stage": j["stage"],
            "state": j["state"], "mode": "annotation",
            "frame_count": j["stop"] - j["start"] + 1, "start_frame": j["start"],
            "stop_frame": j["stop"], "data_chunk_size": task["chunk_size"],
            "data_compressed_chunk_type": "imageset", "data_original_chunk_type": "imageset",
            "created_date": _iso(j["created"]), "updated_date": _iso(j["created"]),
            "issues": {"url": f"{base}/api/issues?job_id={j['id']}", "count": 0},
            "labels": {"url": f"{base}/api/labels?job_id={j['id']}"}, "type": "annotation",
            "organization": None, "target_storage": None, "source_storage": None,
            "assignee_updated_date": _iso(j["assignee_updated"]) if j.get("assignee_updated")
            else None,
        }

    def _meta_json(self, t: dict, start: int, stop: int) -> dict:
        frames = [{"width": f["width"], "height": f["height"], "name": f["name"],
                   "related_files": 0, "has_related_context": False}
                  for f in t["frames"][start:stop + 1]]
        return {"chunks_updated_date": _iso(t["updated"]), "chunk_size": t["chunk_size"],
                "size": len(frames), "image_quality": t["image_quality"], "start_frame": start,
                "stop_frame": stop, "frame_filter": "", "frames": frames,
                "deleted_frames": sorted(f for f in t.get("deleted_frames", ())
                                         if start <= f <= stop),
                "included_frames": None}

    def _rq_json(self, rq: _Rq) -> dict:
        return {
            "status": rq.status, "message": rq.message, "id": rq.id,
            "operation": {"type": rq.op_type, "target": "task", "project_id": rq.project_id,
                          "task_id": rq.task_id, "job_id": None, "format": rq.fmt,
                          "function_id": None},
            "progress": 0.0, "created_date": _iso(rq.created), "started_date": _iso(rq.started),
            "finished_date": _iso(rq.finished),
            "expiry_date": _iso(rq.finished + (500 if rq.op_type == "create:task" else 86400))
            if rq.finished else None,
            "owner": {"id": rq.owner["id"], "username": rq.owner["username"]},
            "result_url": rq.result_url, "result_id": None,
        }

    def _requests_list(self, q: dict[str, str], user: str) -> list[dict]:
        """``GET /api/requests``: filters action/target/task_id/status/subresource/format
        (``target_id`` is no filter in 2.23.1); newest first (trace j)."""
        rows = []
        for rq in self.state.requests.values():
            if q.get("action") and not rq.op_type.startswith(q["action"] + ":"):
                continue
            if q.get("target") and q["target"] != "task":
                continue
            if q.get("task_id") and str(rq.task_id) != q["task_id"]:
                continue
            if q.get("status") and rq.status != q["status"]:
                continue
            if q.get("subresource") and rq.subresource != q["subresource"]:
                continue
            if q.get("format") and rq.fmt != q["format"]:
                continue
            rows.append(rq)
        rows.sort(key=lambda r: -r.created)
        return [self._rq_json(r) for r in rows]

    def _advance(self, rq: _Rq) -> None:
        """Each poll moves the request on: queued -> started -> finished (as traced)."""
        rq.polls += 1
        if rq.status in ("finished", "failed"):
            return
        if rq.queued_while is not None and rq.queued_while():
            rq.status = "queued"            # no worker picks it up (trace j)
            rq.polls = 0
            return
        if rq.started is None:
            rq.started = time.time()
        if rq.never_finishes or rq.polls <= self.polls_before_finish:
            rq.status = "started"
            rq.message = ("Media files are being extracted..." if rq.op_type == "create:task"
                          else "")
            return
        if rq.fail_message:
            rq.status, rq.message, rq.finished = "failed", rq.fail_message, time.time()
            return
        rq.result_url = rq.on_finish() if rq.on_finish else None
        rq.status, rq.message, rq.finished = "finished", "", time.time()

    # -- task data ------------------------------------------------------------------------
    def _finish_upload(self, task: dict, params: dict) -> str | None:
        files = task.pop("pending_files", [])
        frames = []
        errors = []
        for name, data in files:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    w, h = im.size
            except Exception as exc:  # noqa: BLE001 - reported like CVAT does
                errors.append(f"{name}: {exc}")
                continue
            frames.append({"name": name, "width": w, "height": h, "data": data})
        if errors:
            return "; ".join(errors)
        if not frames:
            return "No media data found"
        names = [f["name"] for f in frames]
        if len(set(names)) != len(names):
            return "Duplicate file names in the uploaded data"
        method = params.get("sorting_method", "lexicographical")
        if method == "natural":
            frames.sort(key=lambda f: _natural_key(f["name"]))
        elif method == "predefined" and params.get("upload_file_order"):
            order = {n: i for i, n in enumerate(params["upload_file_order"])}
            frames.sort(key=lambda f: order.get(f["name"], len(order)))
        elif method == "lexicographical":
            frames.sort(key=lambda f: f["name"])
        task["frames"] = frames
        task["image_quality"] = int(params.get("image_quality", 70))
        task["chunk_size"] = int(params.get("chunk_size") or 72)
        task["mode"] = "annotation"
        task["overlap"] = 0
        seg = task["segment_size"] or len(frames)
        task["segment_size"] = seg
        now = time.time()
        for start in range(0, len(frames), seg):
            jid = self.state.next_id("job")
            self.state.jobs[jid] = {"id": jid, "task_id": task["id"], "start": start,
                                    "stop": min(start + seg, len(frames)) - 1,
                                    "state": "new", "stage": "annotation", "created": now,
                                    "assignee": None, "assignee_updated": None}
        task["updated"] = now
        return None

    # -- annotations -----------------------------------------------------------------------
    def _validate_tags(self, task: dict, tags: list[dict], lo: int, hi: int) -> list[dict]:
        labels = {lb["id"]: lb for lb in self._labels_of(task)}
        out = []
        for tag in tags:
            lid = tag.get("label_id")
            if lid not in labels:
                raise HttpError(400, [f"label_id `{lid}` is invalid"])
            specs = {a["id"] for a in labels[lid]["attributes"]}
            for a in tag.get("attributes", []):
                if a.get("spec_id") not in specs:
                    raise HttpError(400, [f"spec_id `{a.get('spec_id')}` is invalid"])
            frame = int(tag.get("frame", 0))
            if not lo <= frame <= hi:
                raise HttpError(400, [f"frame {frame} is out of the range"])
            # PUT and PATCH keep the ids sent; a tag sent without source becomes "manual"
            # and a source sent is stored as is ("auto" stays "auto"; trace i).
            out.append({"id": tag.get("id") or self.state.next_id("tag"), "frame": frame,
                        "label_id": lid,
                        "group": tag.get("group"), "source": tag.get("source") or "manual",
                        "attributes": [{"spec_id": a["spec_id"], "value": str(a.get("value", ""))}
                                       for a in tag.get("attributes", [])]})
        return out

    def _filled(self, tag: dict) -> list[dict]:
        """The tag's attributes plus every one it left out, with the spec's default_value.

        CVAT does this whenever it reads annotations (API and export), so an attribute that
        was never set comes back as its default (trace h); the stored tag keeps only what was
        sent (the PUT/PATCH answer echoes that).
        """
        label = self.state.labels[tag["label_id"]]
        out = [dict(a) for a in tag["attributes"]]
        have = {a["spec_id"] for a in out}
        for spec in sorted(label["attributes"], key=lambda a: a["name"]):
            if spec["id"] not in have:
                out.append({"spec_id": spec["id"], "value": spec["default_value"]})
        return out

    def _annotations(self, task: dict, lo: int, hi: int) -> dict:
        tags = [{"id": t["id"], "label_id": t["label_id"], "frame": t["frame"],
                 "group": t["group"], "source": t["source"],
                 "attributes": self._filled(t)}
                for t in task["tags"] if lo <= t["frame"] <= hi]
        return {"version": task["annotations_version"], "tags": tags, "shapes": [], "tracks": []}

    # -- export ----------------------------------------------------------------------------
    def _datumaro_zip(self, task: dict, save_images: bool) -> bytes:
        labels = self._labels_of(task)
        index = {lb["id"]: i for i, lb in enumerate(labels)}
        attr_names = {a["id"]: a["name"] for lb in labels for a in lb["attributes"]}
        all_attrs = sorted({a["name"] for lb in labels for a in lb["attributes"]} | {"occluded"})
        items = []
        deleted = set(task.get("deleted_frames", ()))
        for n, f in enumerate(task["frames"]):
            if n in deleted:            # left out entirely, item and image (trace k)
                continue
            anns = []
            for k, t in enumerate(t for t in task["tags"] if t["frame"] == n):
                anns.append({"id": k, "type": "label",
                             "attributes": dict(sorted((attr_names[a["spec_id"]], a["value"])
                                                       for a in self._filled(t))),
                             "group": 0, "label_id": index[t["label_id"]]})
            items.append({"id": PurePosixPath(f["name"]).stem, "annotations": anns,
                          "attr": {"frame": n},
                          "image": {"path": f["name"], "size": [f["height"], f["width"]]}})
        doc = {"info": {}, "categories": {
            "label": {"labels": [{"name": lb["name"], "parent": "", "attributes": []}
                                 for lb in labels], "attributes": all_attrs},
            "points": {"items": []}}, "items": items}
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            if save_images:
                for n, f in enumerate(task["frames"]):
                    if n in deleted:
                        continue
                    zf.writestr(f"images/default/{f['name']}", f["data"])
            zf.writestr("annotations/default.json", json.dumps(doc))
        return buf.getvalue()


def _make_handler(srv: CvatTestServer) -> type[BaseHTTPRequestHandler]:
    st = srv.state

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True     # headers and body go out as separate writes
        server_version = "uvicorn"
        sys_version = ""

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet
            return

        # -- plumbing --------------------------------------------------------------------
        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, status: int, body: Any = None, *, content_type: str | None = None,
                  headers: list[tuple[str, str]] | None = None) -> None:
            if body is None:
                data = b""
            elif isinstance(body, (bytes, bytearray)):
                data = bytes(body)
            else:
                data = json.dumps(body).encode()
                content_type = content_type or JSON_TYPE
            srv.log.append((self.command, self.path, status))   # before the client can go on
            self.send_response(status)
            if data or content_type:
                self.send_header("Content-Type", content_type or JSON_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Request-Id", str(uuid.uuid4()))
            path = urlsplit(self.path).path
            allow = next((a for pat, a in reversed(ALLOW) if re.fullmatch(pat, path)), None)
            if allow and status != 500:
                self.send_header("Allow", allow)
            for k, v in headers or []:
                self.send_header(k, v)
            self.end_headers()
            if data and self.command != "HEAD":
                self.wfile.write(data)

        @property
        def base(self) -> str:
            return f"http://{self.headers.get('Host', f'127.0.0.1:{srv.port}')}"

        def _unauthorized(self, detail: str) -> HttpError:
            return HttpError(401, {"detail": detail}, headers=[("WWW-Authenticate", "Token")])

        def _user(self) -> str:
            """Token, then Basic, then session (DRF's order in CVAT 2.23; trace g)."""
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                if not srv.bearer_tokens:       # 2.2x: no such scheme, valid key or not
                    raise self._unauthorized("Authentication credentials were not provided.")
                user = srv.tokens.get(auth[7:].strip())
                if user is None:
                    raise self._unauthorized("Invalid token.")
                return user
            if auth.startswith("Token "):
                user = srv.login_keys.get(auth[6:].strip())
                if user is None:
                    raise self._unauthorized("Invalid token.")
                return user
            if auth.startswith("Basic "):
                try:
                    name, _, pw = base64.b64decode(auth[6:].strip()).decode().partition(":")
                except ValueError:
                    name, pw = "", None
                if srv.users.get(name) != pw:
                    raise self._unauthorized("Invalid username/password.")
                return name
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
            sid = cookie.get("sessionid")
            if sid is None or sid.value not in srv.sessions:
                raise self._unauthorized("Authentication credentials were not provided.")
            user, csrf = srv.sessions[sid.value]
            if self.command not in ("GET", "HEAD", "OPTIONS"):
                sent = self.headers.get("X-CSRFToken")
                if not sent:
                    raise HttpError(403, {"detail": "CSRF Failed: CSRF token missing."})
                if sent != csrf:
                    raise HttpError(403, {"detail": "CSRF Failed: CSRF token incorrect."})
            return user

        def _write_allowed(self, user: str) -> None:
            if user in srv.readonly_users:
                raise HttpError(403, {"detail": "You do not have permission to perform this action."})

        def _dispatch(self) -> None:
            parts = urlsplit(self.path)
            path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query,
                                                                        keep_blank_values=True).items()}
            srv.org_headers.append(self.headers.get("X-Organization"))
            rule = srv.faults.take(self.command, self.path)
            body = self._body()
            if rule is not None and rule.delay_s:
                time.sleep(rule.delay_s)
            if rule is not None and rule.status:
                if rule.status >= 500:        # Django's own error page, as CVAT sends it
                    self._send(rule.status, SERVER_ERROR_HTML.encode(), content_type=HTML_TYPE)
                else:
                    self._send(rule.status, {"detail": f"injected fault {rule.status}"})
                return
            if srv.faults.policy_engine_down and path not in ("/api/server/about",
                                                              "/api/auth/login"):
                self._send(500, SERVER_ERROR_HTML.encode(), content_type=HTML_TYPE)
                return
            try:
                with st.lock:
                    result = self._route(path, query, body)
            except HttpError as exc:
                self._send(exc.status, exc.body, content_type=exc.content_type,
                           headers=exc.headers)
                return
            self._send(*result[:2], **(result[2] if len(result) > 2 else {}))

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch()

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch()

        def do_PUT(self) -> None:  # noqa: N802
            self._dispatch()

        def do_PATCH(self) -> None:  # noqa: N802
            self._dispatch()

        def do_DELETE(self) -> None:  # noqa: N802
            self._dispatch()

        def _json(self, body: bytes) -> Any:
            if not body:
                return {}
            try:
                return json.loads(body)
            except ValueError:
                raise HttpError(400, {"detail": "JSON parse error"}) from None

        # -- routes ---------------------------------------------------------------------
        def _route(self, path: str, q: dict[str, str], body: bytes) -> tuple:
            m = self.command
            if path == "/api/server/about" and m == "GET":
                about = {"name": "Computer Vision Annotation Tool", "description": DESCRIPTION,
                         "version": srv.version}
                if srv.modern_about:
                    about.update({"logo_url": f"{self.base}/static/logo.svg", "subtitle": ""})
                return 200, about
            if path == "/api/auth/login" and m == "POST":
                data = self._json(body)
                user, pw = data.get("username"), data.get("password")
                if user not in srv.users or srv.users[user] != pw:
                    raise HttpError(400, {"non_field_errors": [
                        "Unable to log in with provided credentials."]})
                sid, csrf = secrets.token_hex(16), secrets.token_hex(16)
                # One key per user (DRF's Token.get_or_create); logout deletes it (trace g).
                key = next((k for k, u in srv.login_keys.items() if u == user), None) \
                    or secrets.token_hex(20)
                srv.sessions[sid] = (user, csrf)
                srv.login_keys[key] = user
                cookies = [("Set-Cookie", f"csrftoken={csrf}; Max-Age=31449600; Path=/; SameSite=Lax"),
                           ("Set-Cookie", "sessionfresh=1; HttpOnly; Max-Age=86400; Path=/; SameSite=Lax"),
                           ("Set-Cookie", f"sessionid={sid}; HttpOnly; Max-Age=1209600; Path=/; SameSite=Lax")]
                return 200, {"key": key}, {"headers": cookies}
            if path == "/api/auth/logout" and m == "POST":
                try:
                    user = self._user()
                except HttpError:
                    user = None
                sid = SimpleCookie(self.headers.get("Cookie", "")).get("sessionid")
                if sid is not None:
                    srv.sessions.pop(sid.value, None)
                for k in [k for k, u in srv.login_keys.items() if u == user]:
                    del srv.login_keys[k]           # the user's key dies with any logout
                return 200, {"detail": "Successfully logged out."}, {"headers": [
                    ("Set-Cookie", 'sessionid=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; '
                                   "Max-Age=0; Path=/; SameSite=Lax"),
                    ("Set-Cookie", 'sessionfresh=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; '
                                   "Max-Age=0; Path=/; SameSite=Lax")]}

            user = self._user()
            if path == "/api/users/self" and m == "GET":
                return 200, self._user_json(user)
            if path == "/api/projects":
                if m == "POST":
                    self._write_allowed(user)
                    p = srv._create_project(self._json(body), self.base, user)
                    return 201, srv._project_json(p, self.base), {"headers": [
                        ("Location", f"{self.base}/api/projects/{p['id']}")]}
                rows = [p for p in st.projects.values()
                        if not q.get("name") or p["name"] == q["name"]]
                return 200, self._page([srv._project_json(p, self.base) for p in rows], q)
            if (mm := re.fullmatch(r"/api/projects/(\d+)", path)) and m == "GET":
                p = st.projects.get(int(mm.group(1)))
                if p is None:
                    raise HttpError(404, {"detail": "No Project matches the given query."})
                return 200, srv._project_json(p, self.base)
            if path == "/api/labels" and m == "GET":
                return 200, self._page(self._labels_for(q), q)
            if path == "/api/tasks":
                if m == "POST":
                    self._write_allowed(user)
                    return self._create_task(self._json(body), user)
                rows = [t for t in st.tasks.values()
                        if not q.get("project_id") or str(t.get("project_id")) == q["project_id"]]
                return 200, self._page([srv._task_json(t, self.base) for t in rows], q)
            if path == "/api/users" and m == "GET":
                rows = [self._user_json(n) for n in srv.users
                        if not q.get("search") or q["search"] in n]
                return 200, self._page(sorted(rows, key=lambda r: -r["id"]), q)
            if mm := re.fullmatch(r"/api/tasks/(\d+)", path):
                task = self._task(int(mm.group(1)))
                if user in srv.plain_users:
                    raise HttpError(403, {"detail": "You do not have permission to perform this action."})
                if m == "GET":
                    return 200, srv._task_json(task, self.base)
                if m == "DELETE":
                    self._write_allowed(user)
                    del st.tasks[task["id"]]
                    for jid in [j for j, job in st.jobs.items() if job["task_id"] == task["id"]]:
                        del st.jobs[jid]
                    return 204, None
            if mm := re.fullmatch(r"/api/tasks/(\d+)/data/", path):
                task = self._task(int(mm.group(1)))
                if m == "POST":
                    self._write_allowed(user)
                    return self._upload(task, body, user)
                if m == "GET" and q.get("type") == "frame":
                    frame = task["frames"][int(q.get("number", 0))]
                    return 200, frame["data"], {"content_type": "image/jpeg"}
                if m == "GET" and q.get("type") == "chunk":
                    return self._chunk(task, int(q.get("number", 0)))
            if mm := re.fullmatch(r"/api/(tasks|jobs)/(\d+)/data/meta", path):
                if mm.group(1) == "tasks":
                    task = self._task(int(mm.group(2)))
                    if m == "PATCH":
                        self._write_allowed(user)
                        data = self._json(body)
                        if "deleted_frames" in data:
                            task["deleted_frames"] = sorted(set(map(int, data["deleted_frames"])))
                    return 200, srv._meta_json(task, 0, len(task["frames"]) - 1)
                job = self._job(int(mm.group(2)))
                return 200, srv._meta_json(st.tasks[job["task_id"]], job["start"], job["stop"])
            if path == "/api/jobs" and m == "GET":
                if q.get("task_id") and int(q["task_id"]) not in st.tasks:
                    raise HttpError(400, {"task_id": [
                        "Select a valid choice. That choice is not one of the available choices."]})
                rows = [j for j in st.jobs.values()
                        if (not q.get("task_id") or str(j["task_id"]) == q["task_id"])
                        and (not q.get("project_id") or str(st.tasks[j["task_id"]].get(
                            "project_id")) == q["project_id"])
                        and (not q.get("state") or j["state"] == q["state"])
                        and (not q.get("stage") or j["stage"] == q["stage"])
                        and (not q.get("assignee") or j.get("assignee") == q["assignee"])
                        and (user not in srv.plain_users or j.get("assignee") == user)]
                rows.sort(key=lambda j: -j["id"])      # newest first, as traced
                return 200, self._page([srv._job_json(j, self.base) for j in rows], q)
            if mm := re.fullmatch(r"/api/jobs/(\d+)", path):
                job = self._job(int(mm.group(1)))
                if user in srv.plain_users and job.get("assignee") != user:
                    raise HttpError(403, {"detail": "You do not have permission to perform this action."})
                if m == "PATCH":
                    self._write_allowed(user)
                    data = self._json(body)
                    errors = {}
                    for key, allowed in (("state", JOB_STATES), ("stage", JOB_STAGES)):
                        if key in data and data[key] not in allowed:
                            errors[key] = [f'"{data[key]}" is not a valid choice.']
                    if errors:
                        raise HttpError(400, errors)
                    for key in ("state", "stage"):
                        if key in data:
                            job[key] = data[key]
                    if "assignee" in data:
                        by_id = {i: n for n, i in srv.user_ids.items()}
                        job["assignee"] = by_id.get(data["assignee"])
                        job["assignee_updated"] = time.time()
                return 200, srv._job_json(job, self.base)
            if mm := re.fullmatch(r"/api/(tasks|jobs)/(\d+)/annotations/", path):
                if mm.group(1) == "tasks":
                    task = self._task(int(mm.group(2)))
                    lo, hi = 0, max(len(task["frames"]) - 1, 0)
                else:
                    job = self._job(int(mm.group(2)))
                    task, lo, hi = st.tasks[job["task_id"]], job["start"], job["stop"]
                return self._annotations_route(task, lo, hi, q, body, user)
            if (mm := re.fullmatch(r"/api/tasks/(\d+)/dataset/export", path)) and m == "POST":
                return self._start_export(self._task(int(mm.group(1))), q, user)
            if (mm := re.fullmatch(r"/api/tasks/(\d+)/(annotations|dataset)", path)) \
                    and m == "GET" and q.get("action") == "download":
                return self._download(self._task(int(mm.group(1))), q)
            if path == "/api/requests" and m == "GET":
                return 200, self._page(srv._requests_list(q, user), q), {"headers": NO_CACHE}
            if (mm := re.fullmatch(r"/api/requests/(.+)/cancel", path)) and m == "POST":
                rq = st.requests.get(unquote(mm.group(1)))
                if rq is None:
                    raise _html(404, "There is no request with specified id")
                if rq.status not in ("queued",):
                    raise _html(400, "Only requests that have not yet been started can be cancelled")
                del st.requests[rq.id]
                return 200, None, {"headers": NO_CACHE}
            if (mm := re.fullmatch(r"/api/requests/(.+)", path)) and m == "GET":
                rq = st.requests.get(unquote(mm.group(1)))
                if rq is None:
                    raise _html(404, "There is no request with specified id")
                srv._advance(rq)
                return 200, srv._rq_json(rq), {"headers": NO_CACHE}
            raise HttpError(404 if m in ("GET", "DELETE") else 405,
                            {"detail": f"{m} {path} is not served by the CVAT test server"})

        def _user_json(self, user: str) -> dict:
            uid = srv.user_ids.get(user, 1)
            admin = user not in srv.plain_users
            return {"url": f"{self.base}/api/users/{uid}", "id": uid, "username": user,
                    "first_name": "", "last_name": "", "email": f"{user}@example.com",
                    "groups": ["admin"] if admin else ["user"], "is_staff": admin,
                    "is_superuser": admin, "is_active": True, "last_login": _iso(time.time()),
                    "date_joined": _iso(time.time() - 3600), "has_analytics_access": admin}

        def _page(self, rows: list, q: dict[str, str]) -> dict:
            size = int(q.get("page_size") or 10)
            page = int(q.get("page") or 1)
            chunk = rows[(page - 1) * size: page * size]
            nxt = None
            if page * size < len(rows):
                nxt = f"{self.base}{urlsplit(self.path).path}?page={page + 1}"
            return {"count": len(rows), "next": nxt,
                    "previous": None if page == 1 else f"{self.base}?page={page - 1}",
                    "results": chunk}

        def _labels_for(self, q: dict[str, str]) -> list[dict]:
            if q.get("project_id"):
                p = st.projects.get(int(q["project_id"]))
                labels = [st.labels[i] for i in p["label_ids"]] if p else []
            elif q.get("task_id"):
                labels = srv._labels_of(self._task(int(q["task_id"])))
            elif q.get("job_id"):
                labels = srv._labels_of(st.tasks[self._job(int(q["job_id"]))["task_id"]])
            else:
                labels = list(st.labels.values())
            return [srv._label_json(lb) for lb in labels]

        def _task(self, tid: int) -> dict:
            t = st.tasks.get(tid)
            if t is None:
                raise HttpError(404, {"detail": "No Task matches the given query."})
            return t

        def _job(self, jid: int) -> dict:
            j = st.jobs.get(jid)
            if j is None:
                raise HttpError(404, {"detail": "No Job matches the given query."})
            return j

        def _create_task(self, data: dict, user: str) -> tuple:
            if not data.get("name"):
                raise HttpError(400, {"name": ["This field is required."]})
            pid = data.get("project_id")
            if pid is not None and pid not in st.projects:
                raise HttpError(400, {"project_id": [f"Invalid pk \"{pid}\" - object does not exist."]})
            if pid is not None and data.get("labels"):
                raise HttpError(400, {"labels": ["Tasks inside a project use its labels"]})
            if pid is None and not data.get("labels"):
                raise HttpError(400, {"label_set": ["Label set must not be empty"]})
            tid = st.next_id("task")
            now = time.time()
            task = {"id": tid, "name": data["name"], "project_id": pid, "owner": user,
                    "created": now, "updated": now, "mode": "", "overlap": None,
                    "segment_size": int(data.get("segment_size") or 0), "frames": [],
                    "tags": [], "annotations_version": 0, "chunk_size": 72,
                    "image_quality": 70}
            st.tasks[tid] = task
            if pid is None:
                task["label_ids"] = srv._make_labels(data["labels"], project_id=None, task_id=tid)
            return 201, srv._task_json(task, self.base), {"headers": [
                ("Location", f"{self.base}/api/tasks/{tid}")]}

        def _upload(self, task: dict, body: bytes, user: str) -> tuple:
            if "Upload-Start" in self.headers:
                task["pending_files"] = []
                return 202, None
            if "Upload-Multiple" in self.headers:
                ctype = self.headers.get("Content-Type", "")
                msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {ctype}\r\n\r\n".encode() + body)
                for part in msg.iter_parts():
                    filename = part.get_filename()
                    if filename:
                        name = PurePosixPath(filename.replace("\\", "/")).name
                        task.setdefault("pending_files", []).append(
                            (name, part.get_payload(decode=True)))
                return 200, None
            if "Upload-Finish" in self.headers:
                params = self._json(body)
                rq_id = f"create:task-{task['id']}"
                owner = srv._owner(user, self.base)

                def finish() -> None:
                    return None
                error = srv._finish_upload(task, params)
                rq = _Rq(id=rq_id, op_type="create:task", task_id=task["id"],
                         project_id=task.get("project_id"), fmt=None, owner=owner,
                         created=time.time(), on_finish=finish,
                         fail_message=error or srv.faults.create_fails_with)
                st.requests[rq_id] = rq
                return 202, {"rq_id": rq_id}
            raise HttpError(400, {"detail": "TUS uploads are not served by the test server"})

        def _chunk(self, task: dict, number: int) -> tuple:
            size = task["chunk_size"]
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                for i, f in enumerate(task["frames"][number * size:(number + 1) * size]):
                    zf.writestr(f"{number * size + i:06d}{PurePosixPath(f['name']).suffix}", f["data"])
            return 200, buf.getvalue(), {"content_type": "application/zip"}

        def _annotations_route(self, task: dict, lo: int, hi: int, q: dict[str, str],
                               body: bytes, user: str) -> tuple:
            m = self.command
            if m == "GET":
                return 200, srv._annotations(task, lo, hi)
            self._write_allowed(user)
            data = self._json(body)
            if data.get("shapes") or data.get("tracks"):
                raise HttpError(400, ["only tags are served by the test server"])
            new = srv._validate_tags(task, data.get("tags", []), lo, hi)
            if m == "PUT":
                task["tags"] = [t for t in task["tags"] if not lo <= t["frame"] <= hi] + new
            elif m == "PATCH" and q.get("action") == "create":
                task["tags"] += new
            elif m == "PATCH" and q.get("action") == "update":
                ids = {t["id"] for t in new}
                task["tags"] = [t for t in task["tags"] if t["id"] not in ids] + new
            elif m == "PATCH" and q.get("action") == "delete":
                ids = {t.get("id") for t in data.get("tags", [])}
                task["tags"] = [t for t in task["tags"] if t["id"] not in ids]
                new = []
            elif m == "DELETE":
                task["tags"] = [t for t in task["tags"] if not lo <= t["frame"] <= hi]
                return 204, None
            else:
                raise HttpError(400, {"detail": f"unsupported action {q.get('action')!r}"})
            task["tags"].sort(key=lambda t: t["frame"])
            return 200, {"version": task["annotations_version"],
                         "tags": [{k: t[k] for k in ("id", "frame", "label_id", "group",
                                                     "source", "attributes")} for t in new],
                         "shapes": [], "tracks": []}

        def _start_export(self, task: dict, q: dict[str, str], user: str) -> tuple:
            fmt = q.get("format", "")
            if fmt != "Datumaro 1.0":
                raise HttpError(400, {"detail": f"Unknown format specified for the request: {fmt}"})
            save = q.get("save_images", "False").lower() == "true"
            kind = "dataset" if save else "annotations"
            uid = srv.user_ids.get(user, 1)
            rq_id = f"export:task-{task['id']}-{kind}-in-Datumaro_1@0-format-by-{uid}"
            base = self.base
            running = st.requests.get(rq_id)
            if running is not None and running.status in ("queued", "started"):
                # the same export (user, task, format, save_images) again: 409 (trace j)
                raise HttpError(409, "Export request is being processed")
            query = "&".join(f"{k}={quote(v, safe='').replace('%20', '+')}"
                             for k, v in q.items())

            def finish() -> str:
                st.exports[(task["id"], kind, save)] = srv._datumaro_zip(task, save)
                # the POST's query in its order, plus action=download (trace j)
                return f"{base}/api/tasks/{task['id']}/{kind}?{query}&action=download"
            st.requests[rq_id] = _Rq(id=rq_id, op_type=f"export:{kind}", task_id=task["id"],
                                     project_id=task.get("project_id"), fmt=fmt,
                                     owner=srv._owner(user, base), created=time.time(),
                                     on_finish=finish, subresource=kind,
                                     never_finishes=srv.faults.export_never_finishes,
                                     queued_while=lambda: srv.faults.export_worker_stopped)
            return 202, {"rq_id": rq_id}

        def _download(self, task: dict, q: dict[str, str]) -> tuple:
            save = q.get("save_images", "False").lower() == "true"
            kind = "dataset" if save else "annotations"
            rq = next((r for r in st.requests.values() if r.task_id == task["id"]
                       and r.op_type == f"export:{kind}"), None)
            if rq is None:
                raise _html(400, "Unknown export request id. Please request export first by "
                                 "sending a request without the action=download parameter.")
            if rq.status != "finished":
                raise _html(400, "Dataset export has not been finished yet")
            data = st.exports.pop((task["id"], kind, save))
            del st.requests[rq.id]          # a successful download ends the request (trace j)
            stamp = datetime.now(timezone.utc).strftime("%Y_%m_%d_%H_%M_%S")
            fname = f"task_{task['name']}_{kind}_{stamp}_datumaro 1.0.zip"
            return 200, data, {"content_type": "application/zip", "headers": [
                ("Content-Disposition", f'attachment; filename="{quote(fname, safe=" ()_.")}"')]}

    return Handler
