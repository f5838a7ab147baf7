"""CLI and process hygiene (issue 13, part 8): no tracebacks for a workspace that is a file, a
port out of range or a busy port (found before "open http://..." is printed); warnings instead of
silent results; ``job-run`` hidden; and ``kill PID`` of ``python -m core app`` stops Streamlit."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from core.cli import build_parser, main
from data.workspace import Workspace

from conftest import REPO


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0] and "Traceback" not in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- no tracebacks -------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["status"], ["init"], ["app"], ["ingest", "."], ["jobs"],
                                     ["demo-pool", "--n", "5"]])
def test_workspace_that_is_a_file(tmp_path: Path, capsys, command: list[str]) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    code, out, err = run(capsys, "--workspace", str(path), *command)
    assert code == 2
    one_error_line(err, f"the workspace {path} is a file, not a folder")
    assert path.read_text() == "hello"


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_app_port_out_of_range(tmp_path: Path, capsys, port: str) -> None:
    code, out, err = run(capsys, "--workspace", str(tmp_path / "W"), "app", "--port", port)
    assert code == 2 and "open http" not in out
    one_error_line(err, f"--port {port} is not a TCP port (use 1 to 65535")


def test_app_busy_port_is_found_before_open_is_printed(tmp_path: Path, capsys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run(capsys, "--workspace", str(tmp_path / "W"), "app", "--port", str(port))
    assert code == 2 and "open http" not in out
    one_error_line(err, f"port {port} on 127.0.0.1 is already in use")
    assert "--port" in err     # says what to do


def test_app_address_not_on_this_machine(tmp_path: Path, capsys) -> None:
    code, out, err = run(capsys, "--workspace", str(tmp_path / "W"), "app",
                         "--address", "192.0.2.1", "--port", str(free_port()))
    assert code == 2 and "open http" not in out
    # refused for having no accounts, or for the address; one sentence either way
    one_error_line(err, "192.0.2.1")


# -- warnings instead of silent results ----------------------------------------------------------
def test_ingest_of_an_empty_folder_warns(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, "--workspace", str(tmp_path / "W"), "ingest",
                         str(tmp_path / "empty"), "--quiet")
    assert code == 0
    assert f"warning: no files found in {tmp_path / 'empty'}; nothing was ingested" in err


def test_ingest_job_of_an_empty_folder_fails_with_a_reason(workspace: Workspace,
                                                           tmp_path: Path) -> None:
    from core.jobs import get_job, run_job, start_job

    (tmp_path / "empty").mkdir()
    job_id = start_job(workspace, "ingest", {"path": str(tmp_path / "empty")}, spawn=False)
    assert run_job(workspace, job_id) == "failed"
    assert get_job(workspace, job_id)["message"] == (
        f"no files found in {tmp_path / 'empty'}; nothing was ingested")


def test_sample_more_than_the_pool_warns_and_samples_what_there_is(tmp_path: Path,
                                                                   capsys) -> None:
    ws = str(tmp_path / "W")
    assert run(capsys, "--workspace", ws, "demo-pool", "--n", "20", "--size", "32",
               "--quiet")[0] == 0
    code, out, err = run(capsys, "--workspace", ws, "sample", "--n", "500",
                         "--eval-per-class", "0")
    with Workspace(ws).store() as store:
        size = len(store.round_items(0))
    assert code == 0 and 0 < size < 500 and f"round 0: sampled {size} images" in out
    assert (f"warning: asked for 500 images but only {size} unlabelled images were left to "
            f"sample; sampled all {size}") in err


# -- help ----------------------------------------------------------------------------------------
def test_job_run_is_hidden_from_help_but_still_runs(capsys) -> None:
    parser = build_parser()
    text = parser.format_help()
    assert "job-run" not in text and "SUPPRESS" not in text
    with pytest.raises(SystemExit):
        parser.parse_args(["no-such-command"])
    err = capsys.readouterr().err
    assert "invalid choice" in err and "job-run" not in err and "'status'" in err
    assert parser.parse_args(["job-run", "3"]).job_id == 3


# -- stopping ------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"      # a zombie has stopped


def _serving(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_kill_of_the_app_command_stops_streamlit(tmp_path: Path) -> None:
    """``kill PID`` of ``python -m core app``: the Streamlit child stops too (today it kept
    serving on the port after its parent was gone)."""
    signum = signal.SIGTERM
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-m", "core", "--workspace", str(tmp_path / "W"),
                               "app", "--port", str(port)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while not _serving(port):
            assert parent.poll() is None, parent.stdout.read().decode()
            assert time.monotonic() < deadline, "the app did not come up"
            time.sleep(0.3)
        children = _children(parent.pid)
        assert children, "no Streamlit child process"
        parent.send_signal(signum)
        code = parent.wait(timeout=15)
        deadline = time.monotonic() + 5
        while (any(_alive(c) for c in children) or _serving(port)) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(c) for c in children), "Streamlit outlived its parent"
        assert not _serving(port)
        assert code == 128 + signum             # the shell's convention for "ended by signal"
    finally:
        for pid in [parent.pid, *children]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        parent.wait(timeout=10)
        parent.stdout.close()


# The supervisor itself, on a plain child (fast): every stop signal, and a child that ignores
# SIGTERM is killed after the grace period.
SUPERVISOR = """
import sys
from core.serve import run_child
child = [sys.executable, "-c", sys.argv[1]]
sys.exit(run_child(child, cwd=".", grace_s=float(sys.argv[2])))
"""
SLEEPER = "import time; print('up', flush=True); time.sleep(120)"
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(120)")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("signum,child,grace", [(signal.SIGINT, SLEEPER, 10.0),
                                                (signal.SIGHUP, SLEEPER, 10.0),
                                                (signal.SIGTERM, STUBBORN, 0.5)])
def test_run_child_stops_its_child_on_every_stop_signal(signum: int, child: str,
                                                        grace: float) -> None:
    parent = subprocess.Popen([sys.executable, "-c", SUPERVISOR, child, str(grace)], cwd=REPO,
                              stdout=subprocess.PIPE)
    children: list[int] = []
    try:
        assert parent.stdout.readline().strip() == b"up"
        children = _children(parent.pid)
        assert len(children) == 1
        parent.send_signal(signum)
        assert parent.wait(timeout=10) == 128 + signum
        deadline = time.monotonic() + 3
        while _alive(children[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(children[0])
    finally:
        for pid in [parent.pid, *children]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        parent.wait(timeout=10)
        parent.stdout.close()
