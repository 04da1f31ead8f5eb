"""Shutdown: everything started stops, in time, whichever way the server ends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import faultfuncs
import jobfuncs
from helpers import assert_no_children, wait_for
from wsgi_bg import JobState

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def running(job):
    wait_for(lambda: job.state is JobState.RUNNING, 20, message=f"{job} to run")


@pytest.mark.timeout(30)
def test_shutdown_stops_everything(make_mw, tmp_path):
    mw = make_mw(max_workers=2, cancel_grace=1.0)
    long = [mw.submit(jobfuncs.stubborn, str(tmp_path / f"s{i}"), 60)
            for i in range(2)]
    for job in long:
        running(job)
    queued = [mw.submit(jobfuncs.touch, str(tmp_path / f"q{i}")) for i in range(3)]
    start = time.monotonic()
    mw.shutdown()
    took = time.monotonic() - start
    assert took < 1.0 + 2.0, f"shutdown took {took:.1f} s"
    assert_no_children(timeout=0.5)
    for job in long:  # handles stay readable
        assert job.state is JobState.CANCELLED
        assert "killed" in job.error
    for job in queued:
        assert job.state is JobState.CANCELLED
        assert job.started_at is None
    assert not any((tmp_path / f"q{i}").exists() for i in range(3))
    assert len(mw.jobs()) == 5
    assert mw.get_job(long[0].id) == long[0]
    with pytest.raises(RuntimeError, match="shut down"):
        mw.submit(jobfuncs.add, 1, 1)
    mw.shutdown()  # idempotent


@pytest.mark.timeout(30)
def test_shutdown_gives_running_jobs_their_grace(make_mw):
    mw = make_mw(max_workers=1, cancel_grace=10)
    job = mw.submit(jobfuncs.short_work, 0.5)
    wait_for(lambda: "work start" in job.output, 20, message="the job to start")
    start = time.monotonic()
    mw.shutdown()
    took = time.monotonic() - start
    # It ran to its end inside its grace, and shutdown did not wait the rest.
    assert took < 5, f"shutdown waited {took:.1f} s for a job that needed 0.5 s"
    assert job.output == "work start\nwork end\n"
    # Shutdown asks a running job to stop but does not cancel it: a job that
    # finishes within its grace keeps its outcome (issue 2: "running ones get
    # cancel_grace to finish").
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.error is None and job.result == 0.5
    assert_no_children(timeout=0.5)


def test_shutdown_without_wait_kills_at_once(make_mw, tmp_path):
    mw = make_mw(max_workers=1, cancel_grace=30)
    job = mw.submit(jobfuncs.stubborn, str(tmp_path / "s"), 60)
    running(job)
    start = time.monotonic()
    mw.shutdown(wait=False)
    assert time.monotonic() - start < 3
    assert job.state is JobState.CANCELLED
    assert_no_children(timeout=0.5)


@pytest.mark.timeout(60)
@pytest.mark.memory_store_only
def test_first_job_from_a_thread_that_blocks_signals(make_mw):
    # uWSGI's request threads block nearly every signal, and a process
    # inherits the mask of the thread that starts it: a forkserver started
    # from one never saw SIGCHLD, never reaped a pool worker, and shutdown
    # waited for ever. Every process is started with no signal blocked.
    mw = make_mw(max_workers=1)
    found = {}

    def first_job() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        found["job"] = mw.submit(faultfuncs.blocked_signals)

    thread = threading.Thread(target=first_job)
    thread.start()
    thread.join(30)
    job = found["job"].wait(timeout=20)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result == []
    start = time.monotonic()
    mw.shutdown()
    assert time.monotonic() - start < 5
    assert_no_children(timeout=5)


def test_shutdown_before_any_submit(make_mw):
    mw = make_mw()
    mw.shutdown()
    assert mw.jobs() == []
    with pytest.raises(RuntimeError, match="shut down"):
        mw.submit(jobfuncs.add, 1, 1)


def test_context_manager(make_mw):
    with make_mw() as mw:
        job = mw.submit(jobfuncs.add, 2, 2)
        job.wait(timeout=20)
    assert_no_children(timeout=0.5)
    assert job.result == 4
    assert job.output == ""


def test_shutting_down_one_middleware_spares_another(make_mw, tmp_path):
    first = make_mw(max_workers=1)
    second = make_mw(max_workers=1)
    flag = str(tmp_path / "go")
    assert first.submit(jobfuncs.add, 1, 1).wait(timeout=20).result == 2
    job = second.submit(jobfuncs.print_wait_print, "second", flag)
    wait_for(lambda: "second start" in job.output, 20, message="the job to start")
    first.shutdown()
    jobfuncs.touch(flag)
    assert job.wait(timeout=20).state is JobState.SUCCEEDED
    assert second.submit(jobfuncs.add, 2, 2).wait(timeout=20).result == 4


# -- the server process ends --------------------------------------------------------
# A server process: it must guard its start with ``if __name__ == "__main__"``,
# as any program using the forkserver or spawn start methods must.
SERVER = textwrap.dedent(
    """
    import json, os, re, sys, time
    sys.path[:0] = [{tests!r}, {root!r}]
    import psutil
    import jobfuncs
    from wsgi_bg import BackgroundMiddleware

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    def main():
        mw = BackgroundMiddleware(app, max_workers=2, cancel_grace={grace},
                                  **{options!r})
        job = mw.submit(jobfuncs.pids_then_sleep, 120, 120)
        deadline = time.monotonic() + 30
        while not (match := re.search(r"pids (\\d+) (\\d+)", job.output)):
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.01)
        pids = {{"server": os.getpid(), "job": int(match[1]),
                 "grandchild": int(match[2]),
                 "children": [p.pid for p in
                              psutil.Process().children(recursive=True)]}}
        print(json.dumps(pids), flush=True)
        if {mode!r} == "exit":
            sys.exit(0)
        time.sleep(600)

    if __name__ == "__main__":
        main()
    """
)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def start_server(tmp_path, mode: str, grace: float = 1.0, options=None):
    """Run SERVER; its TMPDIR (where multiprocessing puts its pymp-* temporary
    directories) is ``tmp_path / "tmp"``."""
    script = tmp_path / "server.py"
    script.write_text(SERVER.format(tests=TESTS, root=ROOT, grace=grace, mode=mode,
                                    options=options or {}))
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            text=True, env=env)
    line = proc.stdout.readline()  # bounded by the test's timeout
    if not line:
        proc.stdout.close()
        raise AssertionError(f"the server script failed (code {proc.wait(10)})")
    pids = json.loads(line)
    everything = {pids["server"], pids["job"], pids["grandchild"], *pids["children"]}
    # tracker, a worker, job, grandchild (and the forkserver, if it is one)
    assert len(pids["children"]) >= 4
    assert pids["job"] in pids["children"] and pids["grandchild"] in pids["children"]
    return proc, everything, pids


def finish(proc, everything) -> list[int]:
    """Reap the server, kill (and report) whatever it left alive."""
    proc.wait(10)
    proc.stdout.close()
    left = [pid for pid in everything if not gone(pid)]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def temporary_dirs(tmp_path) -> list[str]:
    """The server's multiprocessing temporary directories (pymp-*) left."""
    return sorted(path.name for path in (tmp_path / "tmp").glob("pymp-*"))


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def server_store(request):
    """The store options of a SERVER: the default store, then Redis."""
    if request.param == "memory":
        return {}
    from conftest import TEST_SECRET_KEY

    return {"store": request.getfixturevalue("redis_server").url,
            "secret_key": TEST_SECRET_KEY, "namespace": "test-server-killed"}


@pytest.mark.timeout(40)
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM],
                         ids=["SIGKILL", "SIGTERM"])
def test_server_killed_outright_leaves_nothing(tmp_path, sig, server_store,
                                               start_method):
    """Workers started by the forkserver end with it (their parent-death
    signal), others (spawn) by watching the server's pid; each kills its
    job's processes first."""
    options = dict(server_store, start_method=start_method)
    proc, everything, _ = start_server(tmp_path, "block", options=options)
    try:
        os.kill(proc.pid, sig)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while not all(gone(pid) for pid in everything):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        left = finish(proc, everything)
    assert not left, f"still alive 5 s after {sig.name}: {left}"
    # Nor a temporary directory (the forkserver's socket, the store's):
    # the server never removed them itself after a SIGKILL.
    assert not temporary_dirs(tmp_path)


@pytest.mark.timeout(40)
def test_server_exiting_normally_stops_a_long_job(tmp_path):
    grace = 1.0
    proc, everything, _ = start_server(tmp_path, "exit", grace)
    start = time.monotonic()
    try:
        proc.wait(grace + 5)
        took = time.monotonic() - start
        wait_for(lambda: all(gone(pid) for pid in everything), 2,
                 message="every process to end")
    finally:
        left = finish(proc, everything)
    assert not left
    assert proc.returncode == 0
    assert took < grace + 3, f"the server took {took:.1f} s to exit"
    assert not temporary_dirs(tmp_path)
