"""CVAT settings (env, secrets file, hidden secrets) and the `cvat` CLI against the test server."""
from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from cvat_helpers import PASSWORD, CvatTestServer, add_pool
from core.cli import main
from cvat_bridge.settings import SettingsError, load_settings, write_secrets_file

logging.getLogger("cvat_bridge").setLevel(logging.ERROR)


def test_settings_from_environment_hide_secrets():
    env = {"CVAT_HOST": "https://cvat.example", "CVAT_USERNAME": "ann",
           "CVAT_PASSWORD": "s3cret-pw", "CVAT_ORG": "team"}
    s = load_settings(None, env=env)
    assert (s.host, s.username, s.organization, s.source) == (
        "https://cvat.example", "ann", "team", "environment")
    assert "s3cret-pw" not in repr(s) and "s3cret-pw" not in str(s)
    token = load_settings(None, env={"CVAT_HOST": "h", "CVAT_ACCESS_TOKEN": "tok-123"})
    assert token.auth_kind == "access token" and "tok-123" not in repr(token)


def test_settings_from_secrets_file_and_permission_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write_secrets_file(tmp_path / "cvat.json", {"host": "http://h", "access_token": "t"})
    assert (path.stat().st_mode & 0o777) == 0o600
    s = load_settings(tmp_path, env={})
    assert s.host == "http://h" and s.source == str(path)
    path.chmod(0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        load_settings(tmp_path, env={})


def test_missing_settings_say_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(SettingsError, match="CVAT_HOST"):
        load_settings(tmp_path, env={})
    with pytest.raises(SettingsError, match="credentials"):
        load_settings(None, env={"CVAT_HOST": "http://h"})


def _run(ws, *args: str) -> int:
    if args[0] == "cvat":
        args = ("cvat", "--poll", "0.05", *args[1:])
    return main(["--workspace", str(ws.root), *args])


def test_cli_push_status_pull_and_secrets_stay_out_of_the_db(workspace, monkeypatch, capsys,
                                                             tmp_path):
    ids = add_pool(workspace, 5)
    with workspace.store() as store:
        store.create_round(ids, kind="seed")
    with CvatTestServer() as srv:
        monkeypatch.setenv("CVAT_HOST", srv.url)
        monkeypatch.setenv("CVAT_USERNAME", "admin")
        monkeypatch.setenv("CVAT_PASSWORD", PASSWORD)
        assert _run(workspace, "cvat", "--timeout", "2", "check") == 0
        out = capsys.readouterr().out
        assert "CVAT 2.23.1" in out and "logged in as admin" in out and "relaxed" in out

        assert _run(workspace, "cvat", "push", "--round", "0", "--segment-size", "2") == 0
        out = capsys.readouterr().out
        assert "task #1" in out and "3 job(s)" in out
        assert _run(workspace, "cvat", "push", "--round", "0") == 2
        assert "already pushed" in capsys.readouterr().err

        names = srv.frame_names(1)
        srv.set_tags(1, {Path(names[0]).stem: {"color": "red", "type": "van",
                                                "orientation": "left"}})
        srv.set_job_state(max(srv.state.jobs), "completed")
        assert _run(workspace, "cvat", "status") == 0
        out = capsys.readouterr().out
        assert "1/5 tagged" in out and "completed" in out and "1/3 jobs completed" in out

        assert _run(workspace, "cvat", "pull", "--json") == 0
        [report] = json.loads(capsys.readouterr().out)
        assert report["counts"]["imported"] == 1 and report["counts"]["unlabelled"] == 4

        assert _run(workspace, "cvat", "check") == 0
        assert "label spec matches" in capsys.readouterr().out

        assert _run(workspace, "cvat", "export-round", "--round", "0",
                    "--out", str(tmp_path / "r.zip")) == 0
        assert (tmp_path / "r.zip").is_file()
        out = capsys.readouterr().out      # the pulled image is labelled now: left out, as push
        assert "wrote 4 images" in out and "(1 already labelled images left out)" in out

    dump = "\n".join(sqlite3.connect(workspace.db_path).iterdump())
    assert PASSWORD not in dump


def test_cli_errors_are_one_line(workspace, monkeypatch, capsys):
    monkeypatch.setenv("CVAT_HOST", "http://127.0.0.1:9")
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", "tok")
    assert _run(workspace, "cvat", "--timeout", "0.5", "--retries", "1", "check") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "cannot reach CVAT" in err and "\n" not in err
    assert "tok" not in err.replace("token", "")
