"""The wsgi-bg command: --help, bad import paths, and real servers over HTTP.

Servers run as subprocesses (`python -m wsgi_bg ...`) on a free port; tests poll
the port with a deadline, talk HTTP, then terminate the server and check that
it and every process it started are gone.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from helpers import wait_for

TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def wsgi_bg(*args: str, cwd: Path = TESTS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsgi_bg", *args], cwd=cwd, env=ENV,
        capture_output=True, text=True, timeout=30,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port: int, path: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
        return request(self.port, path, headers)

    def poll_job(self, job_url: str, timeout: float = 30.0) -> dict:
        base, job_id = job_url.rsplit("/", 1)

        def done():
            status, _, body = self.get(f"{base}/api/jobs/{job_id}")
            assert status == 200, body
            data = json.loads(body)
            return data if data["done"] else None

        return wait_for(done, timeout, interval=0.05, message=f"job {job_url}")


def _listening(proc: subprocess.Popen[str], port: int) -> bool:
    if proc.poll() is not None:
        raise AssertionError(
            f"the server exited with {proc.returncode}: {proc.stderr.read()}")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def serve() -> Iterator:
    """Start `python -m wsgi_bg <args> --port <free>`; always stop it, then check
    that the server and all its descendants are gone."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> Server:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "wsgi_bg", *args, "--port", str(port)],
            cwd=TESTS, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        wait_for(lambda: _listening(proc, port), 20, interval=0.05,
                 message="the server to listen")
        return Server(proc, port)

    yield start
    for proc in started:
        try:
            family = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the server did not stop on SIGTERM") from None
        proc.stdout.close()
        proc.stderr.close()
        assert code == 0, f"the server exited with {code} on SIGTERM"
        _, alive = psutil.wait_procs(family, timeout=10)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"left behind: {[(p.pid, p.cmdline()) for p in alive]}"


# -- --help -----------------------------------------------------------------------
def test_help_lists_commands_and_examples():
    done = wsgi_bg("--help")
    assert done.returncode == 0, done.stderr
    for text in ("serve", "demo", "examples:", "wsgi-bg serve myproject.web:app",
                 "docs/deployment.md"):
        assert text in done.stdout


def test_serve_help_lists_options():
    done = wsgi_bg("serve", "--help")
    assert done.returncode == 0, done.stderr
    for option in ("MODULE:APP", "--host", "--port", "--prefix", "--workers",
                   "--authorize", "--reload"):
        assert option in done.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "wsgi-bg"
    done = subprocess.run([str(script), "demo", "--help"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "--delay" in done.stdout


# -- bad import paths: one line, exit status 2, no traceback ----------------------
@pytest.mark.parametrize(
    ("target", "message"),
    [
        pytest.param("no_such_module_xyz:app", "No module named 'no_such_module_xyz'",
                     id="no-module"),
        pytest.param("cli_target:missing", "has no attribute 'missing'",
                     id="no-attribute"),
        pytest.param("cli_target:NOT_CALLABLE", "not a WSGI app", id="not-callable"),
        pytest.param("cli_target", "is a module", id="module-only"),
        pytest.param("cli_target:", "package.module:app", id="empty-attribute"),
    ],
)
def test_bad_import_path_is_one_line(target, message):
    done = wsgi_bg("serve", target, "--port", str(free_port()))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("wsgi-bg: error: ")
    assert message in lines[0]
    assert done.stdout == ""


def test_bad_prefix_is_one_line():
    done = wsgi_bg("serve", "cli_target:app", "--prefix", "jobs")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "wsgi-bg: error: prefix must be a path such as '/_jobs' (starting with '/',"
        " not the root), got 'jobs'"
    ]


# -- real servers -----------------------------------------------------------------
def test_serve_wraps_the_app_and_runs_jobs(serve):
    server = serve("serve", "cli_target:app", "--workers", "1", "--prefix", "/jobs")
    status, _, body = server.get("/")
    assert (status, body) == (200, "hello from cli_target")

    status, headers, _ = server.get("/job")
    assert status == 303
    job_url = headers["Location"]
    assert job_url.startswith("/jobs/")
    data = server.poll_job(job_url)
    assert data["state"] == "succeeded", data["error"]
    assert data["output"] == "hello cli from a job\n"
    assert data["result"] == "'cli'"
    # The default authorize: the job's page is open, the list is not.
    assert server.get(job_url)[0] == 200
    assert server.get("/jobs/")[0] == 403


def test_serve_authorize_all_opens_the_list(serve):
    server = serve("serve", "cli_target:app", "--authorize", "all")
    status, _, body = server.get("/_jobs/api/jobs")
    assert status == 200, body
    assert json.loads(body)["jobs"] == []


def test_demo_serves_the_webpy_example(serve):
    server = serve("demo", "--delay", "0.01")
    status, _, body = server.get("/")
    assert status == 200 and "Start a job" in body, body
    status, _, body = server.get("/_jobs/api/jobs")
    assert (status, json.loads(body)["jobs"]) == (200, []), body  # a GET starts none
    status, headers, body = request(server.port, "/", method="POST")
    assert status == 303, body
    job = {"url": headers["Location"], "id": headers["Location"].rsplit("/", 1)[1]}
    data = server.poll_job(job["url"])
    assert data["state"] == "succeeded", data["error"]
    lines = data["output"].splitlines()
    assert lines[0].startswith("Started at ") and lines[1] == "hit f5 to refresh!"
    assert [line.split(":")[0] for line in lines[2:]] == [str(i) for i in range(10)]
    # authorize=allow_local: the list is open to this machine.
    status, _, body = server.get("/_jobs/api/jobs")
    assert status == 200
    assert [j["id"] for j in json.loads(body)["jobs"]] == [job["id"]]
