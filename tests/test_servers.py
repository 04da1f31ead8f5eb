"""Real servers on 127.0.0.1 (uWSGI, waitress, gunicorn sync and gthread)
serving tests/serverfuncs.py: jobs run, and SIGTERM gives running jobs
cancel_grace, then stops them, with nothing left behind (processes,
semaphores, pymp-* temporary directories)."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers import wait_for

TESTS = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
UWSGI = shutil.which("uwsgi", path=BIN) or shutil.which("uwsgi")
GRACE = 2.0

pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(server: str, port: int) -> list[str]:
    listen = f"127.0.0.1:{port}"
    if server == "uwsgi":
        return [UWSGI or "uwsgi", "--master", "--processes", "1", "--threads", "8",
                "--http-socket", listen, "--module", "serverfuncs:app",
                "--pythonpath", TESTS, "--need-app",
                # SIGTERM: a graceful shutdown (see docs/deployment.md)
                "--hook-master-start", "unix_signal:15 gracefully_kill_them_all",
                "--disable-logging"]
    if server == "waitress":
        return [sys.executable, "-m", "waitress", "--threads=8",
                f"--listen={listen}", "serverfuncs:app"]
    worker = {"gunicorn-sync": ["-w", "1"],
              "gunicorn-gthread": ["-w", "1", "--threads", "8"]}[server]
    return [sys.executable, "-m", "gunicorn", *worker, "-b", listen,
            "--graceful-timeout", "30", "serverfuncs:app"]


class Server:
    """One server process tree; :meth:`close` leaves none of it alive."""

    def __init__(self, server: str, tmp_path: Path) -> None:
        self.port = free_port()
        self.marks = tmp_path / "marks"
        self.marks.mkdir()
        self.tmp = tmp_path / "tmp"  # the server's TMPDIR: its pymp-* go here
        self.tmp.mkdir()
        self.log = tmp_path / "server.log"
        env = dict(os.environ, WSGI_BG_TEST_DIR=str(self.marks), TMPDIR=str(self.tmp),
                   WSGI_BG_TEST_GRACE=str(GRACE),
                   # this checkout's wsgi_bg too, when the run was given it
                   PYTHONPATH=os.pathsep.join(
                       filter(None, [TESTS, os.environ.get("PYTHONPATH")])))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command(server, self.port), env=env, cwd=TESTS, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.seen: dict[int, psutil.Process] = {}
        try:
            wait_for(self._ready, timeout=30, interval=0.05,
                     message=f"{server} to serve")
        except BaseException:
            self.close()
            raise

    def _ready(self) -> bool:
        assert self.process.poll() is None, self.output()
        try:
            return self.request("GET", "/")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            chunked = body is not None and not isinstance(body, bytes)
            conn.request(method, path, body=body, headers=headers or {},
                         encode_chunked=chunked)
            response = conn.getresponse()
            return response.status, response.getheader("Location"), response.read()
        finally:
            conn.close()

    def start(self, path: str) -> str:
        status, location, _ = self.request("GET", path)
        assert status == 303, status
        self.remember()
        return location.rsplit("/", 1)[1]

    def job(self, job_id: str) -> dict:
        status, _, body = self.request("GET", f"/_jobs/api/jobs/{job_id}")
        assert status == 200, body
        return json.loads(body)

    def wait_done(self, job_id: str) -> dict:
        found: dict = {}

        def done() -> bool:
            found.update(self.job(job_id))
            return bool(found["done"])

        wait_for(done, timeout=30, message=f"job {job_id} to end")
        return found

    def job_pids(self, kind: str) -> list[int]:
        return [int(p.read_text()) for p in self.marks.glob(f"{kind}-*.pid")]

    def remember(self) -> None:
        """Note every process of the tree, to check later that all ended."""
        try:
            root = psutil.Process(self.process.pid)
            for proc in [root, *root.children(recursive=True)]:
                self.seen.setdefault(proc.pid, proc)
        except psutil.NoSuchProcess:
            pass

    def alive(self) -> list[psutil.Process]:
        out = []
        for proc in self.seen.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
            except psutil.NoSuchProcess:
                pass
        return out

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        self.remember()
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)
        for proc in self.alive():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


SERVERS = ["uwsgi", "waitress", "gunicorn-sync", "gunicorn-gthread"]


@pytest.fixture(params=SERVERS)
def server(request, tmp_path):
    if request.param == "uwsgi" and UWSGI is None:
        pytest.skip("uwsgi is not installed (pip install uwsgi: it compiles)")
    started = Server(request.param, tmp_path)
    yield started
    started.close()


def test_jobs_run(server):
    job = server.wait_done(server.start("/double"))
    assert job["state"] == "succeeded", job["error"]
    assert job["result"] == "42"


def test_sigterm_gives_running_jobs_their_grace_then_stops_them(server):
    cooperative = server.start("/cooperative")
    stubborn = server.start("/stubborn")
    wait_for(lambda: server.job_pids("cooperative") and server.job_pids("stubborn"),
             timeout=30, message="both jobs to run")
    for job_id in (cooperative, stubborn):
        assert server.job(job_id)["state"] == "running"
    server.remember()
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(GRACE + 20)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still serving: {server.output()}") from None
    took = time.monotonic() - started
    # The cooperative job stopped by itself within its grace; the stubborn one
    # was killed at its end; the server was not held past grace + 2 s.
    assert (server.marks / "cooperative-stopped").exists(), server.output()
    assert took < GRACE + 2 + 1.5, f"the server took {took:.1f} s to exit"
    wait_for(lambda: not server.alive(), timeout=5,
             message="every process of the server to end")
    output = server.output()
    assert "leaked semaphore" not in output, output
    assert "Traceback" not in output, output
    assert not list(server.tmp.glob("pymp-*")), os.listdir(server.tmp)


def test_chunked_body_over_the_limit_is_413(server):
    if server.process.args[0] == UWSGI:
        pytest.skip("uWSGI passes no chunked body to WSGI apps by default")
    # serverfuncs' marked app allows max_body_bytes=1 MiB
    status, _, body = server.request(
        "POST", "/upload", body=iter([b"x" * 600_000, b"y" * 600_000]))
    assert status == 413, body
