"""CVAT secrets never reach a page, a job log or record, the audit trail, or the store.

A secret is planted as the CVAT password (and as a token), a CVAT job is run that fails, the CVAT
and Overview pages are rendered, and then every place the app writes is searched for it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.cvat_config import save_settings
from core.jobs import get_job, run_job, start_job
from data.workspace import ENV_WORKSPACE, Workspace

from app_fixtures import build_pool
from cvat_helpers import CvatTestServer

APP = Path(__file__).resolve().parents[1] / "app"
SECRET = "Pl4nted-s3cret-9f2c"


@pytest.fixture
def pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    for var in ("CVAT_HOST", "CVAT_USERNAME", "CVAT_PASSWORD", "CVAT_ACCESS_TOKEN",
                "CVAT_SECRETS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.config/cargroup/cvat.json
    return build_pool(tmp_path / "ws", n=12, first_batch=4)


def _page_text(at: AppTest) -> str:
    parts = [repr(at._tree)]
    for kind in ("markdown", "caption", "info", "error", "warning", "success", "text_input",
                 "code", "exception"):
        for el in at.get(kind):
            parts.append(repr(getattr(el, "value", el)))
    return "\n".join(parts)


def _everything_written(ws: Workspace, captured: str) -> str:
    with ws.store() as store:
        dump = "\n".join(store.conn.iterdump())
    logs = "\n".join(p.read_text(errors="replace") for p in ws.jobs_dir.glob("*"))
    return "\n".join([dump, logs, captured])


@pytest.mark.parametrize("kind", ["password", "access_token"])
def test_failing_cvat_jobs_and_pages_never_show_the_secret(pool: Workspace, monkeypatch,
                                                           capfd, kind: str) -> None:
    with CvatTestServer() as server:
        creds = {"username": "admin", "password": SECRET} if kind == "password" \
            else {"access_token": SECRET}
        path = save_settings(pool, host=server.url, **creds)
        assert path.stat().st_mode & 0o777 == 0o600
        assert SECRET in path.read_text()         # it is kept where it belongs, and only there
        for job_kind, params in (("cvat_push", {"round_number": 0}), ("cvat_pull", {})):
            job_id = start_job(pool, job_kind, params, spawn=False)
            status = run_job(pool, job_id)
            job = get_job(pool, job_id)
            if job_kind == "cvat_push":           # wrong credentials: the push must fail
                assert status == "failed", job["message"]
            assert SECRET not in json.dumps(job)
        # A server whose error page quotes the credential back: still scrubbed.
        monkeypatch.setattr("cvat_bridge.service.push",
                            lambda *a, **k: (_ for _ in ()).throw(
                                RuntimeError(f"401 for credentials admin:{SECRET}")))
        job_id = start_job(pool, "cvat_push", {"round_number": 0, "force": True}, spawn=False)
        assert run_job(pool, job_id) == "failed"
        assert "[secret hidden]" in get_job(pool, job_id)["message"]

        monkeypatch.setenv(ENV_WORKSPACE, str(pool.root))
        at = AppTest.from_file(str(APP / "views" / "3_CVAT.py"), default_timeout=60).run()
        assert not at.exception
        cvat_text = _page_text(at)
        assert server.url in cvat_text and ("set" in cvat_text)
        if kind == "password":
            assert "admin" in cvat_text
        at = AppTest.from_file(str(APP / "views" / "0_Overview.py"), default_timeout=60).run()
        assert not at.exception
        overview_text = _page_text(at)
    out, err = capfd.readouterr()
    written = _everything_written(pool, out + err)
    for where, text in (("CVAT page", cvat_text), ("Overview page", overview_text),
                        ("store, job logs, worker output", written)):
        assert SECRET not in text, f"the planted secret appears in the {where}"
