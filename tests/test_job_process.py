"""Job processes are reused between jobs only when a job leaves nothing behind."""
from __future__ import annotations

import importlib
import os

import psutil
import pytest

import jobfuncs
from helpers import wait_for
from wsgi_bg import JobState


def _run(mw, fn, *args):
    job = mw.submit(fn, *args).wait(timeout=20)
    assert job.state is JobState.SUCCEEDED, job.error
    return job.result


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_clean_jobs_share_a_process_with_cwd_and_env_put_back(make_mw, tmp_path):
    mw = make_mw(max_workers=1)
    pid, cwd, var = _run(mw, jobfuncs.pid_cwd_env)
    assert var is None
    assert _run(mw, jobfuncs.change_cwd_env, str(tmp_path)) == pid
    assert _run(mw, jobfuncs.pid_cwd_env) == (pid, cwd, None)


def test_a_job_changing_or_removing_a_variable_leaves_the_next_its_own(make_mw):
    """What a job does to variables it inherited is undone for the next job
    in the same process, as for one it added."""
    mw = make_mw(max_workers=1)
    pid, before = _run(mw, jobfuncs.env_of, "PATH", "HOME")
    assert None not in before
    assert _run(mw, jobfuncs.change_env, {"PATH": None, "HOME": "/nowhere"}) == pid
    assert _run(mw, jobfuncs.env_of, "PATH", "HOME") == (pid, before)


def test_a_fresh_job_process_has_wsgi_bgs_api_imported_already(make_mw):
    """A job's module imports wsgi_bg's API (``background``, ``current_job``):
    the pool worker imports it once, so that no fresh job process (one per
    max_jobs_per_process jobs) imports it again (~20 ms each); the job's own
    module it does not import (that is the job's, under its timeout)."""
    mw = make_mw(max_workers=1, max_jobs_per_process=1)
    seen = ("sorted(m for m in ('wsgi_bg.marks', 'wsgi_bg.engine')"
            " if m in __import__('sys').modules)")
    for _ in range(2):
        assert _run(mw, eval, seen) == ["wsgi_bg.engine", "wsgi_bg.marks"]


def test_one_job_per_process_gives_fresh_processes(make_mw):
    mw = make_mw(max_workers=1, max_jobs_per_process=1)
    first = _run(mw, jobfuncs.pid_cwd_env)[0]
    second = _run(mw, jobfuncs.pid_cwd_env)[0]
    assert first != second
    wait_for(lambda: _gone(first), message="the first job process to end")


def test_process_is_replaced_after_max_jobs_per_process(make_mw):
    mw = make_mw(max_workers=1, max_jobs_per_process=2)
    pids = [_run(mw, jobfuncs.pid_cwd_env)[0] for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]


def test_job_leaving_a_thread_retires_its_process(make_mw, tmp_path):
    mw = make_mw(max_workers=1)
    pid = _run(mw, jobfuncs.leave_thread, str(tmp_path / "never"))
    wait_for(lambda: _gone(pid), message="the job process with a thread to end")
    assert _run(mw, jobfuncs.pid_cwd_env)[0] != pid


@pytest.mark.parametrize(
    "leave",
    [
        pytest.param(jobfuncs.leave_process, id="holding-the-output"),
        pytest.param(jobfuncs.leave_quiet_process, id="output-elsewhere"),
        pytest.param(jobfuncs.leave_orphan, id="orphaned-grandchild"),
    ],
)
def test_job_leaving_a_process_has_its_group_killed(make_mw, leave):
    mw = make_mw(max_workers=1)
    pid, straggler = _run(mw, leave)
    wait_for(lambda: _gone(straggler), message="the straggler to be killed")
    wait_for(lambda: _gone(pid), message="its job process to end")
    assert _run(mw, jobfuncs.pid_cwd_env)[0] != pid


@pytest.mark.parametrize("value", [0, -1, 1.5, True, None])
def test_max_jobs_per_process_must_be_a_positive_integer(make_mw, value):
    with pytest.raises(ValueError, match="max_jobs_per_process must be an integer"):
        make_mw(max_jobs_per_process=value)


def test_a_job_replacing_stdout_does_not_silence_the_next(make_mw):
    mw = make_mw(max_workers=1)
    pid = _run(mw, jobfuncs.replace_stdout)
    job = mw.submit(jobfuncs.print_pid).wait(timeout=20)
    assert job.result == pid  # same process, and yet:
    assert job.output == "visible\n"


@pytest.mark.parametrize("handler", ["function", "SIG_IGN"])
@pytest.mark.parametrize("signum", ["SIGUSR1", "SIGWINCH", "SIGRTMIN"])
def test_a_job_setting_a_signal_handler_retires_its_process(make_mw, handler,
                                                             signum):
    """Any signal's: a handler the next job would inherit (the guide's
    "something running")."""
    mw = make_mw(max_workers=1)
    pid = _run(mw, jobfuncs.set_handler, handler, signum)
    assert _run(mw, jobfuncs.print_pid) != pid


def test_slow_import_meets_the_job_timeout(make_mw):
    """Loading a job's call imports its module in the job's process, under
    the job's timeout: a slow (or hanging) import cannot stall a worker."""
    mw = make_mw(max_workers=1)
    job = mw.engine.submit(_SlowWork(), (), {}, timeout=1).wait(timeout=20)
    assert job.state is JobState.TIMED_OUT  # work() itself returns at once
    # Killed before the import's 3 s were up, counted from the job's start:
    # the pool's own start, before it, is the machine's load, not the job's.
    assert job.ended_at - job.started_at < 2.5


class _SlowWork:
    """Pickles as ``slowimport.work``, a module that sleeps 3 s at import,
    without importing it here."""

    def __call__(self):  # pragma: no cover - the worker calls slowimport.work
        raise AssertionError("not called in the test process")

    def __reduce__(self):
        return (getattr, (_Import("slowimport"), "work"))


class _Import:
    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return (importlib.import_module, (self.name,))


@pytest.mark.timeout(60)
def test_a_burst_on_one_worker_each_job_its_outcome_a_cancelled_one_never_runs(
        make_mw, tmp_path):
    """Jobs that waited go to the worker as one call, run in one kept process,
    each job's end recorded with the next one's start: each gets its own
    result and output, and one cancelled while its call is held is refused
    its start (it never runs) while the end of the job before it lands."""
    mw = make_mw(max_workers=1)
    gates = [tmp_path / "first", tmp_path / "head"]
    first = mw.submit(jobfuncs.wait_file, str(gates[0]))
    wait_for(lambda: first.state is JobState.RUNNING, 20, message="first to run")
    alone = mw.submit(jobfuncs.add, 0, 1)  # held next: a call of its own
    head = mw.submit(jobfuncs.wait_file, str(gates[1]))  # first of the call
    before = [mw.submit(jobfuncs.add, i, 1) for i in range(1, 4)]
    printed = mw.submit(jobfuncs.print_pid)  # just before the cancelled one
    never = mw.submit(jobfuncs.touch, str(tmp_path / "ran"))
    after = [mw.submit(jobfuncs.add, i, 1) for i in range(4, 8)]
    gates[0].touch()
    # Running: its call, with every job behind it, is the worker's now.
    wait_for(lambda: head.state is JobState.RUNNING, 20, message="head to run")
    assert never.cancel()
    gates[1].touch()
    for job in (first, alone, head):
        assert job.wait(timeout=20).state is JobState.SUCCEEDED, job.error
    assert alone.result == 1
    for i, job in enumerate([*before, *after]):
        assert job.wait(timeout=20).result == i + 2, job.error
        assert job.started_at >= head.ended_at
    assert printed.wait(timeout=20).output == "visible\n"
    assert printed.ended_at <= after[0].started_at
    assert never.wait(timeout=20).state is JobState.CANCELLED
    assert never.started_at is None and not (tmp_path / "ran").exists()
    # One kept process ran the whole call (the job before and after the
    # refused one included).
    assert printed.result == mw.submit(jobfuncs.print_pid).wait(timeout=20).result


def test_a_multiprocessing_lock_a_job_keeps_is_not_leaked(make_mw):
    # tqdm keeps a multiprocessing lock for the life of the process. Outside
    # the fork start method its semaphore is named, in /dev/shm, and tracked
    # by a resource tracker that the job's process starts with the job's
    # output as its stderr. It was left in /dev/shm when the supervisor
    # killed the tracker with the job's process group, or, when the tracker
    # saw that process end first, its "leaked semaphore" warning ended the
    # job's output.
    mw = make_mw(max_workers=1)
    job = mw.submit(jobfuncs.named_lock).wait(timeout=20)
    assert job.state is JobState.SUCCEEDED, job.error
    if job.result is not None:
        path = "/dev/shm/sem." + job.result.lstrip("/")
        wait_for(lambda: not os.path.exists(path), 10,
                 message=f"{path} to be unlinked")
    assert "resource_tracker" not in job.output and "leaked" not in job.output
    assert _run(mw, jobfuncs.add, 1, 1) == 2


# P, a supervisor that forks its job process J, hands it a long job and dies
# before J has run a line of its own (J waits for that, as a loaded machine
# may make it): J must see that its supervisor is gone, and not run the job.
_SUPERVISOR_DIES_FIRST = """
import os, pickle, sys, time
from wsgi_bg.runners import job_process, supervisor

me = os.getpid()
real = job_process._Home.__init__

def late(self, *args):
    while os.getppid() == me:
        time.sleep(0.005)
    real(self, *args)

job_process._Home.__init__ = late
process = supervisor._JobProcess(1)
out_r, out_w = os.pipe()
ctl_r, ctl_w = os.pipe()
process.send_job("j", pickle.dumps((time.sleep, (300,), {})), [out_w, ctl_r], 1024)
print(process.pid, flush=True)
os._exit(0)
"""


@pytest.mark.timeout(60)
def test_a_job_process_whose_supervisor_died_before_it_ran_runs_nothing():
    import subprocess
    import sys

    parent = subprocess.run([sys.executable, "-c", _SUPERVISOR_DIES_FIRST],
                            capture_output=True, text=True, timeout=30)
    assert parent.returncode == 0, parent.stderr
    pid = int(parent.stdout)
    try:
        wait_for(lambda: _gone(pid), 10,
                 message="the job process of a dead supervisor to exit")
    finally:
        if not _gone(pid):
            os.kill(pid, 9)
