"""Issue 10: whatever a job does to its own process, its return is kept; its
result, error and progress are bounded before any store sees them; a pool
worker killed from outside costs only the job it ran."""
from __future__ import annotations

import os
import re
import signal
import time
from multiprocessing import forkserver, resource_tracker

import psutil
import pytest

import faultfuncs
import hardenfuncs
import jobfuncs
from helpers import wait_for
from wsgi_bg import JobState, ResultUnavailable
from wsgi_bg.limits import MAX_ERROR_CHARS

# Also on the RQ runner (see conftest.py): these describe how jobs run.
pytestmark = pytest.mark.runner_contract


@pytest.mark.parametrize("fn", [
    pytest.param(faultfuncs.close_stdout, id="close-sys.stdout"),
    pytest.param(faultfuncs.close_stderr, id="close-sys.stderr"),
    pytest.param(faultfuncs.close_fds_after_unflushed_print, id="close-fds-1-and-2"),
    pytest.param(faultfuncs.rewrap_stdout_utf8, id="rewrap-sys.stdout.buffer"),
    pytest.param(faultfuncs.reconfigure_stdout, id="reconfigure-sys.stdout"),
    pytest.param(faultfuncs.chdir_into_removed_tmp, id="cwd-removed"),
    pytest.param(faultfuncs.replace_sys_path, id="sys.path-replaced"),
])
def test_what_a_job_does_to_its_process_keeps_its_return(make_mw, fn):
    mw = make_mw(max_workers=1)
    job = mw.submit(fn).wait(timeout=20)
    assert job.state is JobState.SUCCEEDED, (job.error, job.output)
    assert job.result == "kept"
    assert "wsgi_bg" not in job.output and "Traceback" not in job.output
    # The next job, in the same process or a fresh one, is whole.
    after = mw.submit(jobfuncs.print_pid).wait(timeout=20)
    assert after.state is JobState.SUCCEEDED, after.error
    assert after.output == "visible\n"


@pytest.mark.pool_only
def test_jobs_run_after_the_servers_working_directory_is_removed(
        make_mw, tmp_path, monkeypatch):
    release = tmp_path / "release-1"
    release.mkdir()
    monkeypatch.chdir(release)
    mw = make_mw(max_workers=2, max_jobs_per_process=1)
    assert mw.submit(jobfuncs.print_pid).wait(timeout=20).state is JobState.SUCCEEDED
    release.rmdir()  # a deploy prunes the old release the server runs from
    jobs = [mw.submit(jobfuncs.print_pid) for _ in range(3)]  # a new worker too
    for job in jobs:
        job.wait(timeout=20)
        assert job.state is JobState.SUCCEEDED, job.error


# -- results ----------------------------------------------------------------------
def test_a_result_over_max_result_bytes_fails_and_is_not_kept(make_mw):
    mw = make_mw(max_result_bytes=10_000)
    job = mw.submit(faultfuncs.big_result, 20_000).wait(timeout=20)
    assert job.state is JobState.FAILED
    assert "max_result_bytes=10,000" in job.error
    assert "20,0" in job.error  # its pickled size
    assert "file" in job.error  # what to do instead
    assert mw.engine.store.result(job.id) is None
    with pytest.raises(ResultUnavailable):
        _ = job.result
    small = mw.submit(faultfuncs.big_result, 5_000).wait(timeout=20)
    assert small.state is JobState.SUCCEEDED and small.result == b"x" * 5_000


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "1"])
def test_max_result_bytes_must_be_a_positive_integer(make_mw, value):
    with pytest.raises(ValueError, match="max_result_bytes must be an integer >= 1"):
        make_mw(max_result_bytes=value)


# -- errors and progress ------------------------------------------------------------
def test_a_huge_error_is_capped_before_the_store(make_mw):
    job = make_mw().submit(hardenfuncs.huge_error).wait(timeout=60)
    assert job.state is JobState.FAILED
    assert len(job.error) <= MAX_ERROR_CHARS + 200
    assert "characters dropped" in job.error
    assert job.error.startswith("Traceback") and "ValueError: eee" in job.error


def test_progress_past_current_jobs_checks_is_bounded_by_the_supervisor(make_mw):
    job = make_mw().submit(faultfuncs.raw_progress).wait(timeout=20)
    assert job.state is JobState.SUCCEEDED, job.error
    progress = job.progress
    assert progress is not None
    assert len(str(progress["done"])) < 30 and len(str(progress["total"])) < 30
    assert len(progress["message"]) <= 1000


# -- what a job leaves behind ------------------------------------------------------
@pytest.mark.pool_only
def test_a_daemon_left_by_a_job_holds_nothing_of_wsgi_bg(make_mw):
    mw = make_mw(max_workers=1, cancel_grace=1.0)
    job = mw.submit(faultfuncs.leave_daemon, 30).wait(timeout=20)
    assert job.state is JobState.SUCCEEDED, job.error
    daemon = psutil.Process(job.result)
    try:
        # It kept no pipe of multiprocessing's forkserver (whose exit, and so
        # shutdown, waits for every holder) or resource tracker.
        helpers = [forkserver._forkserver._forkserver_pid,
                   resource_tracker._resource_tracker._pid]
        shared = (open_files(daemon.pid) & set().union(*map(open_files, helpers))
                  ) - {"/dev/null"}
        assert not shared, shared
        started = time.monotonic()
        mw.shutdown()
        assert time.monotonic() - started < 5.0
    finally:
        daemon.kill()
        wait_for(lambda: not daemon.is_running() or
                 daemon.status() == psutil.STATUS_ZOMBIE, 10,
                 message="the daemon to end")


def open_files(pid: int) -> set[str]:
    """What process ``pid``'s fds point at (``pipe:[inode]`` for a pipe)."""
    folder = f"/proc/{pid}/fd"
    found = set()
    for fd in os.listdir(folder):
        try:
            found.add(os.readlink(f"{folder}/{fd}"))
        except FileNotFoundError:
            pass
    return found


# -- a pool worker killed from outside ------------------------------------------------
@pytest.mark.pool_only
@pytest.mark.timeout(90)
def test_a_worker_killed_from_outside_costs_only_its_own_job(make_mw, tmp_path):
    mw = make_mw(max_workers=2)
    flag = str(tmp_path / "go")
    beside = mw.submit(jobfuncs.print_wait_print, "beside", flag)
    victim = mw.submit(jobfuncs.pids_then_sleep, 60, 60)
    wait_for(lambda: "beside start" in beside.output and "pids" in victim.output,
             20, message="both jobs to run")
    queued = mw.submit(jobfuncs.add, 2, 3)  # held by one of the two workers
    assert queued.state is JobState.QUEUED
    job_pid, grandchild = map(int, re.search(r"pids (\d+) (\d+)", victim.output)
                              .groups())
    worker = psutil.Process(job_pid).ppid()  # the job process's parent
    assert worker in mw.engine._runner.worker_pids()
    os.kill(worker, signal.SIGKILL)
    victim.wait(timeout=20)
    assert victim.state is JobState.CRASHED
    assert (f"the pool worker running this job (pid {worker}) was killed by"
            " SIGKILL (signal 9)") in victim.error
    assert "No other job was touched" in victim.error
    # The job queued behind it runs on a fresh worker, while the other job
    # still runs in its own.
    assert queued.wait(timeout=20).state is JobState.SUCCEEDED, queued.error
    assert queued.result == 5
    assert beside.state is JobState.RUNNING
    jobfuncs.touch(flag)
    assert beside.wait(timeout=20).state is JobState.SUCCEEDED, beside.error
    assert beside.output == "beside start\nbeside end\n"
    # What the killed job started went with it.
    wait_for(lambda: gone(job_pid) and gone(grandchild), 10,
             message="the killed job's processes to end")
    for job in [mw.submit(jobfuncs.add, i, i) for i in range(4)]:
        assert job.wait(timeout=20).state is JobState.SUCCEEDED, job.error
    assert worker not in mw.engine._runner.worker_pids()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
