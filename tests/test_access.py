"""Team access: accounts (argon2 hashes), sign-in throttling, roles enforced in the services,
the audit trail, and refusing to serve beyond loopback without accounts."""
from __future__ import annotations

import io
import socket
import subprocess
from pathlib import Path

import pytest

from core import users
from core.access import AccessDenied, Principal
from core.cli import main
from core.commands.app import is_loopback, streamlit_command
from core.cvat_config import save_settings
from core.jobs import get_job, run_job, start_job
from core.labeling import save_label
from core.promotion import promote, rollback
from data import accounts
from data.accounts import SignInRefused
from data.workspace import Workspace

MAINT = Principal("mia", "maintainer")
REVIEWER = Principal("rob", "reviewer")
ANNOT = Principal("ann", "annotator")
PASSWORD = "correct horse battery"


def cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *argv: str,
        stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def team(workspace: Workspace) -> Workspace:
    users.add_user(workspace, "mia", "maintainer", PASSWORD)  # no accounts yet: local maintainer
    users.add_user(workspace, "rob", "reviewer", PASSWORD, principal=MAINT)
    users.add_user(workspace, "ann", "annotator", PASSWORD, principal=MAINT)
    return workspace


def _dump(ws: Workspace) -> str:
    with ws.store() as store:
        return "\n".join(store.conn.iterdump())


# -- accounts ---------------------------------------------------------------------------------
def test_users_cli_add_list_disable_passwd_and_hash_only(workspace: Workspace, capsys,
                                                         monkeypatch) -> None:
    ws = str(workspace.root)
    code, out, _ = cli(capsys, monkeypatch, "-w", ws, "users", "add", "mia", "--role",
                       "maintainer", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0 and "added mia (maintainer)" in out
    code, out, _ = cli(capsys, monkeypatch, "-w", ws, "users", "add", "ann", "--password-stdin",
                       stdin=PASSWORD + "\n")
    assert code == 0 and "annotator" in out
    code, out, _ = cli(capsys, monkeypatch, "-w", ws, "users", "list")
    assert "mia" in out and "maintainer" in out and "ann" in out and "active" in out
    dump = _dump(workspace)
    assert PASSWORD not in dump and "$argon2id$" in dump
    # No terminal and no --password-stdin: a readable refusal, never a password in argv.
    code, _, err = cli(capsys, monkeypatch, "-w", ws, "users", "add", "bob")
    assert code == 2 and "--password-stdin" in err
    code, _, err = cli(capsys, monkeypatch, "-w", ws, "users", "add", "bob", "--password-stdin",
                       stdin="short\n")
    assert code == 2 and "at least 8 characters" in err
    code, _, _ = cli(capsys, monkeypatch, "-w", ws, "users", "passwd", "ann", "--password-stdin",
                     stdin="a new long password\n")
    assert code == 0
    users.sign_in(workspace, "ann", "a new long password")
    with pytest.raises(SignInRefused):
        users.sign_in(workspace, "ann", PASSWORD)
    code, out, _ = cli(capsys, monkeypatch, "-w", ws, "users", "disable", "ann")
    assert code == 0
    with pytest.raises(SignInRefused, match="disabled"):
        users.sign_in(workspace, "ann", "a new long password")


def test_wrong_password_is_refused_and_repeated_failures_are_slowed(team: Workspace) -> None:
    t0 = 1_000_000.0
    session = users.sign_in(team, "ann", PASSWORD, now=t0)
    assert session.principal == ANNOT and not session.expired(t0 + 60)
    assert session.expired(t0 + 60 * users.session_minutes(team) + 1)
    delays = []
    for k in range(6):
        now = t0 + 1000 * (k + 1)   # far apart: each try is past the previous lock
        with pytest.raises(SignInRefused, match="wrong user name or password") as exc:
            users.sign_in(team, "ann", "guess-%d-xxxx" % k, now=now)
        delays.append(exc.value.retry_after_s)
    assert delays[:3] == [0, 0, 0]
    assert delays[3] > 0 and delays[4] == 2 * delays[3] and delays[5] == 2 * delays[4]
    # While locked even the right password is refused, with the wait in the sentence.
    locked_at = t0 + 6000
    with pytest.raises(SignInRefused, match="too many failed sign-ins"):
        users.sign_in(team, "ann", PASSWORD, now=locked_at + 1)
    with team.store() as store:
        count, until = accounts.failures(store, "ann")
    assert count == 6 and until == pytest.approx(locked_at + delays[5])
    # After the lock a right password works and resets the count; other names were never slowed.
    users.sign_in(team, "ann", PASSWORD, now=until + 1)
    with team.store() as store:
        assert accounts.failures(store, "ann") == (0, 0.0)
    users.sign_in(team, "rob", PASSWORD, now=locked_at + 1)


def test_session_minutes_come_from_config(team: Workspace) -> None:
    import json
    data = json.loads(team.config_path.read_text())
    data["session_minutes"] = 5
    team.config_path.write_text(json.dumps(data))
    s = users.sign_in(team, "mia", PASSWORD, now=0.0)
    assert s.expires_at == 300.0


# -- roles enforced in the services --------------------------------------------------------------
def test_annotator_cannot_train_promote_or_configure_cvat(team: Workspace) -> None:
    with pytest.raises(AccessDenied, match="ann \\(annotator\\) may not train"):
        start_job(team, "train", {"epochs": 1}, spawn=False, principal=ANNOT)
    with pytest.raises(AccessDenied, match="may not promote"):
        promote(team, 1, principal=ANNOT)
    with pytest.raises(AccessDenied, match="may not rollback"):
        rollback(team, principal=REVIEWER)
    with pytest.raises(AccessDenied, match="may not configure cvat"):
        save_settings(team, host="http://cvat.example", access_token="t0ken-xyz", principal=ANNOT)
    for kind in ("queue", "export", "ingest", "cvat_push", "cvat_pull"):
        with pytest.raises(AccessDenied):
            start_job(team, kind, {}, spawn=False, principal=REVIEWER)
    with pytest.raises(AccessDenied):
        users.add_user(team, "eve", "maintainer", PASSWORD, principal=ANNOT)
    assert not (team.root / "cvat.json").exists()
    with team.store() as store:
        assert store.jobs() == []
    # An AccessDenied is a readable UserError and a PermissionError.
    assert issubclass(AccessDenied, PermissionError)


def test_with_accounts_an_anonymous_request_is_refused(team: Workspace) -> None:
    """No principal while accounts exist: the service refuses (no silent local maintainer)."""
    with pytest.raises(AccessDenied, match="sign in first"):
        start_job(team, "selftest", {}, spawn=False)
    with pytest.raises(AccessDenied, match="sign in first"):
        promote(team, 1)


def test_maintainer_may_and_single_user_mode_is_a_local_maintainer(workspace: Workspace) -> None:
    job_id = start_job(workspace, "selftest", {"steps": 1}, spawn=False)  # no accounts: local
    assert run_job(workspace, job_id) == "succeeded"
    with workspace.store() as store:
        entries = accounts.audit_entries(store, job_id=job_id)
    assert {e["details"]["event"] for e in entries} == {"started", "succeeded"}
    assert {e["user"] for e in entries} == {"local"}


def test_promote_and_rollback_by_maintainer_are_audited(team: Workspace) -> None:
    with team.store() as store:
        first = store.add_model("m1.pt")
        second = store.add_model("m2.pt", parent_id=first)
    assert promote(team, first, principal=MAINT) == second
    with team.store() as store:
        assert store.current_model()["id"] == first
    assert rollback(team, principal=MAINT) == second
    with team.store() as store:
        assert store.current_model()["id"] == second
        trail = accounts.audit_entries(store, user="mia")
    assert [e["action"] for e in trail[:2]] == ["rollback", "promote"]
    assert trail[1]["details"] == {"model_id": first, "previous": second}


def test_maintainer_saves_cvat_settings_0600_without_secret_in_audit(team: Workspace) -> None:
    secret = "S3cret-token-planted"
    path = save_settings(team, host="http://cvat.example", username="bot", access_token=secret,
                         principal=MAINT)
    assert path.stat().st_mode & 0o777 == 0o600
    from core.cvat_config import summary
    s = summary(team)
    assert (s.host, s.username, s.secret_set) == ("http://cvat.example", "bot", True)
    assert secret not in repr(s) and secret not in _dump(team)


# -- the audit trail ------------------------------------------------------------------------------
def test_audit_records_who_labelled_and_who_started_jobs(team: Workspace, capsys,
                                                        monkeypatch) -> None:
    from data.demo import create_demo_pool
    create_demo_pool(team, 6, seed=0, size=32)
    with team.store() as store:
        img = store.images()[0].id
        attr, classes = next(iter(team.schema.classes.items()))
        version = save_label(store, team.schema, img, {attr: classes[0]}, principal=ANNOT,
                             annotator="typed-name-ignored")
        assert store.current_label(img).annotator == "ann"
    job_id = start_job(team, "selftest", {"steps": 1}, spawn=False, principal=MAINT)
    run_job(team, job_id)
    with team.store() as store:
        ann = accounts.audit_entries(store, user="ann")
        mia = accounts.audit_entries(store, user="mia")
    assert [(e["action"], e["details"]["image_id"], e["details"]["version"]) for e in ann] == \
        [("label", img, version)]
    assert [e["details"]["event"] for e in mia if e["job_id"] == job_id] == ["succeeded", "started"]
    code, out, _ = cli(capsys, monkeypatch, "-w", str(team.root), "audit", "--user", "ann")
    assert code == 0 and "ann" in out and "label" in out and "mia" not in out


# -- serving beyond loopback -----------------------------------------------------------------
def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("myhost.example")


def test_app_refuses_non_loopback_without_accounts(workspace: Workspace, capsys,
                                                   monkeypatch) -> None:
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or None)
    code, _, err = cli(capsys, monkeypatch, "-w", str(workspace.root), "app", "--address",
                       "0.0.0.0")
    assert code == 2 and not started
    assert "refusing to serve on 0.0.0.0 without sign-in" in err and "users add" in err
    assert len(err.strip().splitlines()) == 1


def test_app_serves_non_loopback_with_accounts_and_xsrf_on(team: Workspace, capsys,
                                                           monkeypatch) -> None:
    class FakeProc:
        pid = -1                                        # core.serve signals the group; none

        def wait(self, timeout: float | None = None) -> int:
            return 0

        def poll(self) -> int:
            return 0
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **k: started.append(cmd) or FakeProc())
    with socket.socket() as s:                          # a free port (8501 may be in use here)
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    code, _, _ = cli(capsys, monkeypatch, "-w", str(team.root), "app", "--address", "0.0.0.0",
                     "--port", port)
    assert code == 0 and len(started) == 1
    cmd = started[0]
    assert cmd[cmd.index("--server.enableXsrfProtection") + 1] == "true"
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"
    assert streamlit_command(team, port=1, address="127.0.0.1") == \
        streamlit_command(team, port=1, address="127.0.0.1")


def test_cli_commands_that_change_the_project_are_audited(workspace: Workspace, capsys,
                                                          monkeypatch) -> None:
    from data.demo import create_demo_pool
    create_demo_pool(workspace, 6, seed=0, size=32)
    code, _, _ = cli(capsys, monkeypatch, "-w", str(workspace.root), "sample", "--n", "3")
    assert code == 0
    with workspace.store() as store:
        [entry] = accounts.audit_entries(store, action="sample")
    assert entry["user"].startswith("cli:") and entry["role"] == "maintainer"
    assert entry["details"]["n"] == 3
