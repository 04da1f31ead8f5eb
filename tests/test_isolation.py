"""Isolation: a crash, a timeout or a cancel of one job touches no other."""
from __future__ import annotations

import functools
import multiprocessing
import os
import re
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import psutil
import pytest
import webtest

import jobfuncs
from helpers import wait_for
from wsgi_bg import JobState

# Also on the RQ runner (see conftest.py): these describe how jobs run.
pytestmark = pytest.mark.runner_contract


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def job_pids(job) -> tuple[int, int]:
    """(job pid, grandchild pid) printed by a pids_then_sleep job."""
    match = wait_for(lambda: re.search(r"pids (\d+) (\d+)", job.output), 20,
                     message="the job to print its pids")
    return int(match[1]), int(match[2])


def running(job, timeout=20.0):
    wait_for(lambda: job.state is JobState.RUNNING, timeout,
             message=f"{job} to run")


# -- crashes -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fn", "args", "error"),
    [
        pytest.param(jobfuncs.exit_hard, (3,), "exited with code 3", id="os._exit"),
        pytest.param(jobfuncs.kill_self, (), "killed by SIGKILL (signal 9)",
                     id="sigkill"),
        pytest.param(jobfuncs.segfault, (), "killed by SIGSEGV (signal 11)",
                     id="segfault"),
    ],
)
def test_crash_touches_no_other_job(make_mw, tmp_path, fn, args, error):
    mw = make_mw(max_workers=2)
    flag = str(tmp_path / "go")
    beside = mw.submit(jobfuncs.print_wait_print, "beside", flag)
    running(beside)
    crash = mw.submit(fn, *args)
    queued = [mw.submit(jobfuncs.add, i, 10) for i in range(3)]
    crash.wait(timeout=20)
    assert crash.state is JobState.CRASHED
    assert error in crash.error
    assert crash.output.startswith("about to ")
    assert beside.state is JobState.RUNNING
    assert [j.wait(timeout=20).result for j in queued] == [10, 11, 12]
    jobfuncs.touch(flag)
    beside.wait(timeout=20)
    assert beside.state is JobState.SUCCEEDED
    assert beside.output == "beside start\nbeside end\n"  # ran once
    assert mw.submit(jobfuncs.add, 1, 1).wait(timeout=20).result == 2


# -- timeouts --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "submit",
    [
        pytest.param(lambda mw: mw.submit(jobfuncs.limited_pids, 30),
                     id="background-timeout"),
        pytest.param(lambda mw: mw.submit(jobfuncs.limited, 30), id="limited"),
    ],
)
def test_timeout_kills_the_job_and_its_children(make_mw, tmp_path, submit):
    mw = make_mw(max_workers=2)
    flag = str(tmp_path / "go")
    beside = mw.submit(jobfuncs.print_wait_print, "beside", flag)
    running(beside)  # asserted running after: its start is not the job's to wait for
    job = submit(mw)
    pids = job_pids(job) if job.name.endswith("limited_pids") else ()
    job.wait(timeout=20)
    assert job.state is JobState.TIMED_OUT
    assert "timeout of 1 s" in job.error
    took = job.ended_at - job.started_at
    assert 1.0 <= took < 2.0, f"killed {took - 1:.2f} s after the deadline"
    for pid in pids:
        wait_for(lambda pid=pid: gone(pid), 5, message=f"process {pid} to end")
    assert beside.state is JobState.RUNNING
    jobfuncs.touch(flag)
    assert beside.wait(timeout=20).state is JobState.SUCCEEDED
    assert beside.output == "beside start\nbeside end\n"


def test_a_job_ending_kills_processes_it_left_behind(mw):
    job = mw.submit(jobfuncs.pids_then_sleep, 0).wait(timeout=20)
    assert job.state is JobState.SUCCEEDED
    job_pid, grandchild = job_pids(job)
    # One killpg reaches both; each dies when it is next scheduled, so the
    # grandchild may be seen dead a moment before the job process.
    wait_for(lambda: gone(grandchild) and gone(job_pid), 5,
             message="the job process and the grandchild it left to end")


# -- cancel ---------------------------------------------------------------------------
def test_cancel_queued_job_never_runs(make_mw, tmp_path):
    mw = make_mw(max_workers=2)
    flag = str(tmp_path / "go")
    blockers = [mw.submit(jobfuncs.print_wait_print, f"b{i}", flag) for i in range(2)]
    for blocker in blockers:
        running(blocker)
    marker = tmp_path / "ran"
    # The first ones queued may already sit in the pool's call queue; cancel
    # every one of them.
    victims = [mw.submit(jobfuncs.touch, str(marker)) for _ in range(4)]
    for victim in victims:
        start = time.monotonic()
        assert victim.cancel() is True
        assert victim.state is JobState.CANCELLED  # at once
        assert time.monotonic() - start < 0.5
        assert victim.started_at is None
        assert "before it started" in victim.error
        assert victim.cancel() is False
    after = mw.submit(jobfuncs.add, 2, 2)
    jobfuncs.touch(flag)
    assert after.wait(timeout=20).result == 4
    for blocker in blockers:
        assert blocker.wait(timeout=20).state is JobState.SUCCEEDED
    assert not marker.exists()
    assert all(v.state is JobState.CANCELLED for v in victims)
    # The pool's workers reap every child they fork, even unstarted ones.
    wait_for(lambda: not zombies(), 5, message="no zombie processes")


def zombies() -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def test_cancel_cooperative_job(make_mw, tmp_path):
    mw = make_mw(max_workers=2, cancel_grace=10)
    flag = str(tmp_path / "go")
    beside = mw.submit(jobfuncs.print_wait_print, "beside", flag)
    running(beside)  # asserted running after: its start is not the job's to wait for
    started = tmp_path / "started"
    job = mw.submit(jobfuncs.cooperative, str(started))
    wait_for(started.exists, 20, message="the job to start")
    assert job.cancel() is True
    job.wait(timeout=30)
    assert job.state is JobState.CANCELLED
    # It stopped by itself, not killed when its 10 s grace ran out (said by
    # the record, not by a duration a loaded machine can stretch).
    assert job.to_dict()["cancelled_how"] == "stopped"
    assert "stopping as asked" in job.output
    assert job.error.startswith("cancelled while running")
    assert job.cancel() is False
    assert beside.state is JobState.RUNNING
    jobfuncs.touch(flag)
    assert beside.wait(timeout=20).state is JobState.SUCCEEDED


def test_cancel_stubborn_job_is_killed_after_grace(make_mw, tmp_path):
    mw = make_mw(max_workers=2, cancel_grace=1.0)
    flag = str(tmp_path / "go")
    beside = mw.submit(jobfuncs.print_wait_print, "beside", flag)
    running(beside)  # asserted running after: its start is not the job's to wait for
    started = tmp_path / "started"
    job = mw.submit(jobfuncs.stubborn, str(started))
    wait_for(started.exists, 20, message="the job to start")
    asked = time.time()
    assert job.cancel() is True
    job.wait(timeout=10)
    assert job.state is JobState.CANCELLED
    took = job.ended_at - asked
    assert 1.0 <= took < 2.5, f"killed {took:.2f} s after the cancel"
    assert "killed" in job.error
    assert beside.state is JobState.RUNNING
    jobfuncs.touch(flag)
    assert beside.wait(timeout=20).state is JobState.SUCCEEDED
    assert mw.submit(jobfuncs.add, 1, 2).wait(timeout=20).result == 3


def test_a_job_that_completes_after_an_unread_cancel_keeps_its_result(
        make_mw, tmp_path):
    """It did all its work: the page and the JSON say so, and the result stays."""
    mw = make_mw(max_workers=1, cancel_grace=10)
    started = tmp_path / "started"
    job = mw.submit(jobfuncs.stubborn, str(started), 1.0)
    wait_for(started.exists, 20, message="the job to start")
    assert job.cancel() is True
    job.wait(timeout=15)  # within its grace: it ended by itself
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result == "finished anyway"
    record = job.to_dict()
    assert record["cancel_requested"] is True
    assert record["cancelled_how"] == "completed"
    client = webtest.TestApp(mw)
    data = client.get(f"{mw.prefix}/api/jobs/{job.id}").json
    assert (data["state"], data["result"], data["cancelled_how"]) == (
        "succeeded", "'finished anyway'", "completed")
    page = client.get(job.url, headers={"Accept": "text/html"}).text
    assert "completed its work within its grace: its result is kept" in page
    assert "stopped by itself" not in page


def test_cancel_finished_job_returns_false(mw):
    job = mw.submit(jobfuncs.add, 1, 1).wait(timeout=20)
    assert job.cancel() is False
    assert job.state is JobState.SUCCEEDED
    assert job.result == 2


@pytest.mark.pool_only
@pytest.mark.timeout(60)
def test_a_dead_pool_worker_costs_only_its_job(make_mw, tmp_path):
    """Each worker is a pool of its own: one that dies (here killed by its
    own job) fails the job it ran, and no other; queued and later jobs run."""
    mw = make_mw(max_workers=2)
    gate = tmp_path / "gate"
    neighbour = mw.submit(jobfuncs.wait_file, str(gate))
    wait_for(lambda: neighbour.state is JobState.RUNNING, message="neighbour running")
    killer = mw.submit(jobfuncs.kill_supervisor)
    queued = mw.submit(jobfuncs.add, 2, 3)
    killer.wait(timeout=30)
    assert killer.state is JobState.CRASHED
    assert "the pool worker running this job" in killer.error
    assert "was killed by SIGKILL (signal 9)" in killer.error
    assert queued.wait(timeout=30).result == 5
    assert neighbour.state is JobState.RUNNING
    gate.touch()
    assert neighbour.wait(timeout=30).state is JobState.SUCCEEDED, neighbour.error
    assert mw.submit(jobfuncs.add, 1, 1).wait(timeout=30).result == 2


@pytest.mark.pool_only
@pytest.mark.timeout(60)
def test_an_executor_factory_pool_breaks_as_a_whole(make_mw, tmp_path):
    """executor_factory's executor is one pool: concurrent.futures stops
    every worker when one dies. Jobs then running say why; queued and later
    jobs run on a fresh one."""
    factory = functools.partial(ProcessPoolExecutor, 2,
                                mp_context=multiprocessing.get_context("forkserver"))
    mw = make_mw(executor_factory=factory)
    gate = tmp_path / "gate"
    neighbour = mw.submit(jobfuncs.wait_file, str(gate))
    wait_for(lambda: neighbour.state is JobState.RUNNING, message="neighbour running")
    killer = mw.submit(jobfuncs.kill_supervisor)
    queued = mw.submit(jobfuncs.add, 2, 3)
    for job in (killer, neighbour):
        job.wait(timeout=30)
        assert job.state is JobState.CRASHED
        assert "a worker process of the pool died" in job.error
    queued.wait(timeout=30)
    assert queued.state is JobState.SUCCEEDED, queued.error
    assert queued.result == 5
    assert mw.submit(jobfuncs.add, 1, 1).wait(timeout=30).result == 2


def busy_with_held(mw, tmp_path):
    """Both of ``mw``'s two workers running a job that waits for its gate
    file, and a short job held next by each: (the two long jobs, their
    gates, the two held jobs)."""
    gates = [tmp_path / "long", tmp_path / "other"]
    long, other = (mw.submit(jobfuncs.wait_file, str(gate), 60) for gate in gates)
    wait_for(lambda: long.state is other.state is JobState.RUNNING, 20,
             message="both workers busy")
    held = [mw.submit(jobfuncs.add, i, 1) for i in range(2)]  # one next to each
    return long, other, gates, held


@pytest.mark.pool_only
@pytest.mark.timeout(60)
def test_no_job_waits_behind_a_long_one_while_a_worker_is_free(make_mw, tmp_path):
    """A worker holds its next job in its executor's queue (what keeps a
    plain pool's throughput); one held behind a long job is taken over by a
    free worker."""
    mw = make_mw(max_workers=2)
    gates = [tmp_path / "long", tmp_path / "other"]
    long, other = (mw.submit(jobfuncs.wait_file, str(gate), 60) for gate in gates)
    wait_for(lambda: long.state is other.state is JobState.RUNNING, 20,
             message="both workers busy")
    shorts = [mw.submit(jobfuncs.add, i, 1) for i in range(4)]  # two held next
    gates[1].touch()  # one worker free: every short job runs there
    for job in shorts:
        assert job.wait(timeout=20).state is JobState.SUCCEEDED, job.error
    assert long.state is JobState.RUNNING
    gates[0].touch()
    assert long.wait(timeout=20).state is JobState.SUCCEEDED


@pytest.mark.pool_only
@pytest.mark.timeout(60)
def test_no_job_waits_behind_a_long_one_in_a_burst(make_mw, tmp_path):
    """Jobs that waited go to a worker several at once; those behind a long
    one among them are taken over by a worker that becomes free."""
    mw = make_mw(max_workers=2)
    gates = [tmp_path / "long", tmp_path / "other", tmp_path / "late"]
    long, other = (mw.submit(jobfuncs.wait_file, str(gate), 60) for gate in gates[:2])
    wait_for(lambda: long.state is other.state is JobState.RUNNING, 20,
             message="both workers busy")
    shorts = [mw.submit(jobfuncs.add, i, 1) for i in range(2)]  # one next to each
    late = mw.submit(jobfuncs.wait_file, str(gates[2]), 60)  # first of those waiting
    shorts += [mw.submit(jobfuncs.add, i, 1) for i in range(2, 12)]
    gates[1].touch()  # `late` and what follows it go to that worker
    running(late)
    gates[0].touch()  # the other worker runs what it holds, then takes them over
    for i, job in enumerate(shorts):
        assert job.wait(timeout=20).result == i + 1, job.error
    assert late.state is JobState.RUNNING
    gates[2].touch()
    assert late.wait(timeout=20).state is JobState.SUCCEEDED
    assert long.wait(timeout=20).state is JobState.SUCCEEDED


@pytest.mark.pool_only
@pytest.mark.timeout(60)
def test_a_dead_pool_worker_costs_only_its_job_in_a_burst(make_mw, tmp_path):
    """Jobs that waited go to a worker several at once. When that worker dies
    on one of them, those it ran before keep their outcome, the one it ran
    ends crashed, and those after it run on a fresh worker."""
    mw = make_mw(max_workers=1)
    gate = tmp_path / "gate"
    first = mw.submit(jobfuncs.wait_file, str(gate))
    running(first)
    before = [mw.submit(jobfuncs.add, i, 1) for i in range(3)]
    killer = mw.submit(jobfuncs.kill_supervisor)
    after = [mw.submit(jobfuncs.add, i, 10) for i in range(3)]
    gate.touch()
    assert killer.wait(timeout=30).state is JobState.CRASHED
    assert "was killed by SIGKILL (signal 9)" in killer.error
    for i, job in enumerate(before):
        assert job.wait(timeout=30).result == i + 1, job.error
    for i, job in enumerate(after):
        assert job.wait(timeout=30).result == i + 10, job.error
    assert first.state is JobState.SUCCEEDED


@pytest.mark.pool_only
@pytest.mark.timeout(60)
def test_a_worker_dying_as_a_job_is_handed_to_it_blocks_no_one(
        make_mw, tmp_path, monkeypatch):
    """Python 3.12+ reports a dead worker to its executor's futures under
    that executor's lock, which a request handing a job to the same executor
    at that moment waits for, holding the pool's locks: the pool must not
    wait for those in return (it did, and every later request hung)."""
    mw = make_mw(max_workers=1)
    first = mw.submit(jobfuncs.wait_file, str(tmp_path / "never"), 60)
    running(first)
    [slot] = mw.engine._runner._slots
    executor = slot.executor
    in_submit, go = threading.Event(), threading.Event()
    real = ProcessPoolExecutor.submit

    def submit(self, fn, /, *args, **kwargs):
        if threading.current_thread().name == "request":
            in_submit.set()
            go.wait(30)
        return real(self, fn, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", submit)
    jobs = []
    request = threading.Thread(
        target=lambda: jobs.append(mw.submit(jobfuncs.add, 1, 1)),
        name="request", daemon=True)
    request.start()
    assert in_submit.wait(20)
    os.kill(slot.process.pid, signal.SIGKILL)
    # concurrent.futures has begun to fail the dead worker's futures:
    wait_for(lambda: executor._broken, 20, message="the executor to see the death")
    go.set()
    request.join(20)
    assert not request.is_alive(), "the request hung"
    assert jobs[0].wait(timeout=30).result == 2
    assert first.wait(timeout=30).state is JobState.CRASHED


@pytest.mark.pool_only
@pytest.mark.timeout(60)
def test_a_copy_that_fails_to_start_does_not_decide_a_taken_over_job(
        make_mw, tmp_path, monkeypatch):
    """A job held behind a long one is taken over by a free worker; if that
    copy fails before it runs the job (here its hand-off raises, as a fork
    failing for lack of memory would), the copy still held runs it: it used
    to end the job crashed at once, and the held copy's start was refused."""
    long, other, gates, held = busy_with_held(make_mw(max_workers=2), tmp_path)
    handed = {job.id: 1 for job in held}  # (each handed to a worker already)
    real = ProcessPoolExecutor.submit

    def submit(self, fn, /, *args, **kwargs):
        for _link, call in args[0]:
            handed[call.job_id] = handed.get(call.job_id, 0) + 1
            if handed[call.job_id] > 1:  # a second copy
                raise BlockingIOError(11, "Resource temporarily unavailable")
        return real(self, fn, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", submit)
    gates[1].touch()  # one worker free: it takes over the job behind `long`
    wait_for(lambda: 2 in handed.values(), 20, message="a job taken over")
    assert held[1].wait(timeout=20).result == 2
    assert not any(job.done for job in (long, held[0]))
    gates[0].touch()
    assert held[0].wait(timeout=20).result == 1, held[0].error
    assert long.wait(timeout=20).state is JobState.SUCCEEDED


def _cpu_seconds() -> float:
    """CPU time of this process and every process under it, so far."""
    total = 0.0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


@pytest.mark.pool_only
@pytest.mark.timeout(60)
def test_a_cancelled_job_held_behind_a_long_one_is_not_taken_over_again(
        make_mw, tmp_path):
    """A job held next behind a long job, then cancelled: a free worker takes
    it over once, its start is refused, and that is the end of it (it used to
    be taken over again and again, every process busy, until the long job
    ended)."""
    long, other, gates, held = busy_with_held(make_mw(max_workers=2), tmp_path)
    for job in held:
        assert job.cancel() is True
    gates[1].touch()  # one worker free: it may take over the one behind `long`
    assert other.wait(timeout=20).state is JobState.SUCCEEDED
    before, start = _cpu_seconds(), time.monotonic()
    time.sleep(1.0)  # not synchronisation: the window whose CPU time is read
    used = _cpu_seconds() - before
    elapsed = time.monotonic() - start
    # Idle, every process together uses a few ms a second; the loop kept
    # both CPUs busy.
    assert used < 0.3 * elapsed, f"{used:.2f} s of CPU in {elapsed:.2f} s while idle"
    assert all(job.state is JobState.CANCELLED for job in held)
    gates[0].touch()
    assert long.wait(timeout=20).state is JobState.SUCCEEDED
