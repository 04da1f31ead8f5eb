"""Execution, results and errors, ids, bad input and the queue limit."""
from __future__ import annotations

import functools
import json
import multiprocessing
import os
import pickle
import re
import threading
from concurrent.futures import ProcessPoolExecutor

import psutil
import pytest

import jobfuncs
from helpers import live_children, wait_for
from wsgi_bg import Job, JobState, QueueFull
from wsgi_bg.exceptions import StoreUnavailable

# Also on the RQ runner (see conftest.py): these describe how jobs run.
pytestmark = pytest.mark.runner_contract


def _job_pids(job):
    """(job pid, grandchild pid) from a pids_then_sleep job's output."""
    match = wait_for(lambda: re.search(r"pids (\d+) (\d+)", job.output),
                     message="the job to print its pids")
    return int(match[1]), int(match[2])


# -- execution ------------------------------------------------------------------
def test_nothing_starts_before_first_submit(make_mw):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    mw = make_mw()
    assert mw.jobs() == []
    assert mw.get_job("x" * 43) is None
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after == before


@pytest.mark.pool_only
def test_default_is_a_process_pool_on_forkserver(mw):
    assert mw.settings.start_method == "forkserver"
    job = mw.submit(jobfuncs.pids_then_sleep, 0)
    job_pid, _ = _job_pids(job)
    job.wait(timeout=20)
    assert job.state is JobState.SUCCEEDED
    # The pool's own workers, each with a pipe of its own: a worker's death
    # is its job's alone.
    runner = mw.engine._runner
    assert runner.executor is None
    assert len(runner.worker_pids()) == 1  # started on demand
    # The job ran in a process forked by a pool worker, itself started by the
    # forkserver: not a child of the server process.
    names = {p.pid for p in psutil.Process().children()}
    assert job_pid not in names


@pytest.mark.pool_only
@pytest.mark.timeout(60)
def test_spawn_start_method(make_mw):
    mw = make_mw(start_method="spawn", max_workers=1)
    job = mw.submit(jobfuncs.add, 2, 3).wait(timeout=40)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result == 5
    runner = mw.engine._runner
    assert runner.mp_context.get_start_method() == "spawn"
    [worker] = runner.worker_pids()
    assert psutil.Process(worker).ppid() == os.getpid()  # spawned by the server


def test_bad_start_method(make_mw):
    with pytest.raises(ValueError, match="start_method must be one of"):
        make_mw(start_method="telepathy")


@pytest.mark.pool_only
@pytest.mark.timeout(60)
def test_executor_factory(make_mw):
    factory = functools.partial(
        ProcessPoolExecutor, 1, mp_context=multiprocessing.get_context("spawn")
    )
    mw = make_mw(executor_factory=factory)
    assert mw.submit(jobfuncs.add, 0, 0).wait(timeout=40).result == 0
    executor = mw.engine._runner.executor
    assert executor._mp_context.get_start_method() == "spawn"
    assert executor._max_workers == 1
    jobs = [mw.submit(jobfuncs.add, i, i) for i in range(3)]
    for i, job in enumerate(jobs):
        job.wait(timeout=40)
        assert job.state is JobState.SUCCEEDED, job.error
        assert job.result == 2 * i
    crash = mw.submit(jobfuncs.exit_hard, 3).wait(timeout=20)
    assert crash.state is JobState.CRASHED
    assert mw.submit(jobfuncs.add, 1, 1).wait(timeout=20).result == 2


# -- results and errors -----------------------------------------------------------
@pytest.fixture(params=["configured", "inline"])
def any_runner(request, make_mw, store_options):
    """A middleware with the runner the store options give (the pool, or RQ),
    then with runner="inline": results and errors are the same either way."""
    if request.param == "configured":
        return make_mw()
    if "runner" in store_options:
        pytest.skip("runner='inline' runs with the plain stores' options")
    return make_mw(runner="inline")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="none"),
        pytest.param(42, id="int"),
        pytest.param("é ✓", id="str"),
        pytest.param({"a": [1, 2.5, None], "b": (1, "x")}, id="nested"),
        pytest.param(b"\x00" * 300_000, id="large-bytes"),
        pytest.param(ValueError("as a value"), id="exception-value"),
    ],
)
def test_return_value_is_the_result(any_runner, value):
    job = any_runner.submit(jobfuncs.identity, value).wait(timeout=20)
    assert job.state is JobState.SUCCEEDED, job.error
    result = job.result
    if isinstance(value, Exception):
        assert type(result) is ValueError and result.args == value.args
    else:
        assert result == value
    assert job.error is None
    assert job.started_at <= job.ended_at
    assert job.created_at <= job.started_at


def test_exception_fails_with_traceback(any_runner):
    job = any_runner.submit(jobfuncs.boom).wait(timeout=20)
    assert job.state is JobState.FAILED
    assert job.error.startswith("Traceback (most recent call last):")
    assert 'raise ValueError("boom")' in job.error
    assert job.error.rstrip().endswith("ValueError: boom")
    assert "wsgi_bg/runners/" not in job.error  # only the job's own frames
    with pytest.raises(Exception, match="has no result"):
        _ = job.result


@pytest.mark.parametrize(
    ("fn", "type_name"),
    [
        pytest.param(jobfuncs.return_lock, "_thread.lock", id="lock"),
        pytest.param(jobfuncs.return_generator, "builtins.generator", id="generator"),
    ],
)
def test_unpicklable_result_fails_that_job_alone(mw, fn, type_name):
    neighbour = mw.submit(jobfuncs.sleeper, 0.5)
    job = mw.submit(fn).wait(timeout=20)
    assert job.state is JobState.FAILED
    assert f"returned a {type_name} that cannot be pickled" in job.error
    assert "Return plain data" in job.error
    assert neighbour.wait(timeout=20).state is JobState.SUCCEEDED
    assert mw.submit(jobfuncs.add, 1, 2).wait(timeout=20).result == 3


def test_exception_that_cannot_be_unpickled(mw):
    job = mw.submit(jobfuncs.raise_two_arg).wait(timeout=20)
    assert job.state is JobState.FAILED
    assert "TwoArgError: first: second" in job.error
    assert "raise TwoArgError" in job.error
    later = [mw.submit(jobfuncs.add, i, 1) for i in range(4)]
    assert [j.wait(timeout=20).result for j in later] == [1, 2, 3, 4]


def test_job_handle(any_runner):
    mw = any_runner
    job = mw.submit(jobfuncs.hello)
    assert isinstance(job, Job)
    assert job.name == "jobfuncs.hello"
    assert job.url == f"/_jobs/{job.id}"
    job.wait(timeout=20)
    data = job.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["state"] == "succeeded" and data["done"] is True
    assert data["result"] == "42"
    assert data["id"] == job.id
    assert mw.get_job(job.id) == job
    assert mw.jobs()[0] == job
    assert job.cancel() is False  # finished


def test_wait_times_out(mw, tmp_path):
    job = mw.submit(jobfuncs.print_then_wait, str(tmp_path / "go"))
    with pytest.raises(TimeoutError, match="still"):
        job.wait(timeout=0.2)
    jobfuncs.touch(tmp_path / "go")
    assert job.wait(timeout=20).result is True


def test_jobs_newest_first(mw):
    jobs = [mw.submit(jobfuncs.add, i, 0) for i in range(5)]
    assert mw.jobs() == jobs[::-1]
    for job in jobs:
        job.wait(timeout=20)


# -- ids ----------------------------------------------------------------------------
@pytest.mark.pool_only
@pytest.mark.timeout(60)
def test_ids_random_long_url_safe_never_reused(make_mw):
    mw = make_mw(max_queued=2000, max_workers=1)
    jobs = [mw.submit(jobfuncs.add, 1, 1) for _ in range(1000)]
    ids = [job.id for job in jobs]
    assert len(set(ids)) == len(ids)
    for job_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", job_id)  # 256 bits, base64url
    # Every position carries entropy: a counter, a pid or a time in the id
    # would make some positions (nearly) constant over 1000 ids.
    for position in range(42):
        assert len({i[position] for i in ids}) > 40, position
    assert len({i[:8] for i in ids}) == len(ids)
    assert all(mw.get_job(i) is not None for i in ids[:10])


# -- bad input ------------------------------------------------------------------------
def _nested():
    def nested_fn():
        return 1

    return nested_fn


@pytest.mark.parametrize(
    ("make_call", "match"),
    [
        pytest.param(lambda: ((lambda: 1), (), {}),
                     r"cannot run the lambda .*<lambda>.*Define it with def at"
                     r" module level", id="lambda"),
        pytest.param(lambda: (_nested(), (), {}),
                     r"nested function .*_nested.<locals>.nested_fn.*Move it to"
                     r" module level", id="nested"),
        pytest.param(lambda: (jobfuncs.identity, (threading.Lock(),), {}),
                     r"argument 0 of jobfuncs.identity \(lock\) cannot be pickled"
                     r".*Pass plain data", id="lock-arg"),
        pytest.param(lambda: (jobfuncs.add, (1,), {"b": open(__file__)}),  # noqa: SIM115
                     r"keyword argument 'b' of jobfuncs.add \(TextIOWrapper\)"
                     r" cannot be pickled.*open files", id="file-kwarg"),
    ],
)
def test_bad_input_raises_type_error_and_queues_nothing(mw, make_call, match):
    done = mw.submit(jobfuncs.add, 1, 1).wait(timeout=20)
    fn, args, kwargs = make_call()
    try:
        with pytest.raises(TypeError, match=match):
            mw.submit(fn, *args, **kwargs)
    finally:
        for value in kwargs.values():
            if hasattr(value, "close"):
                value.close()
    assert mw.jobs() == [done]


def test_bad_input_before_first_submit_starts_nothing(mw):
    with pytest.raises(TypeError, match="lambda"):
        mw.submit(lambda: 1)
    assert not mw.engine.started
    assert live_children() == []


def test_settings_are_checked_once_and_frozen(make_mw):
    import dataclasses

    mw = make_mw(max_queued=7)
    assert mw.settings is mw.engine.settings
    assert (mw.settings.max_queued, mw.settings.start_method) == (7, "forkserver")
    with pytest.raises(dataclasses.FrozenInstanceError):
        mw.settings.max_queued = 8  # type: ignore[misc]
    with pytest.raises(ValueError, match="max_queued must be an integer >= 1"):
        make_mw(max_queued=0)


def test_queue_full(make_mw, store_options, request, tmp_path):
    mw = make_mw(max_workers=1, max_queued=3)
    flag = str(tmp_path / "go")
    # Every worker busy, or an idle one takes a waiting job meanwhile: the
    # pool's one, or each of the session's RQ workers.
    workers = (len(request.getfixturevalue("rq_workers").processes)
               if "runner" in store_options else 1)
    running = [mw.submit(jobfuncs.print_wait_print, f"running {i}", flag)
               for i in range(workers)]
    wait_for(lambda: all(j.state is JobState.RUNNING for j in running), 20,
             message="running")
    queued = [mw.submit(jobfuncs.add, i, 0) for i in range(3)]
    with pytest.raises(QueueFull, match="3 jobs are already waiting"):
        mw.submit(jobfuncs.add, 9, 9)
    assert len(mw.jobs()) == workers + 3  # the refused job was not stored
    jobfuncs.touch(flag)
    assert [j.wait(timeout=20).result for j in queued] == [0, 1, 2]
    assert mw.submit(jobfuncs.add, 9, 9).wait(timeout=20).result == 18


@pytest.mark.timeout(60)
def test_a_create_whose_answer_was_lost_ends_and_frees_its_slot(make_mw, monkeypatch):
    """The create landed, its answer did not (a dropped connection after
    Redis ran it, a manager that answered too late): the submit says 503,
    and the job, which nothing will run, ends within seconds saying so."""
    mw = make_mw(max_queued=1)
    assert mw.submit(jobfuncs.add, 1, 2).wait(timeout=20).result == 3
    store = mw.engine.store
    landed = store.create

    def answer_lost(*args, **kwargs):
        landed(*args, **kwargs)
        raise StoreUnavailable("the answer was lost on its way back")

    monkeypatch.setattr(store, "create", answer_lost)
    with pytest.raises(StoreUnavailable, match="lost on its way back"):
        mw.submit(jobfuncs.add, 3, 4)
    monkeypatch.undo()
    wait_for(lambda: not store.ids_in_state("queued"), timeout=30,
             message="the job nothing runs to end")
    [lost] = [job for job in mw.jobs() if job.state is not JobState.SUCCEEDED]
    assert lost.state is JobState.CANCELLED and lost.started_at is None
    assert "never started" in lost.error and "503" in lost.error
    assert mw.submit(jobfuncs.add, 5, 6).wait(timeout=20).result == 11  # a free slot



@pytest.mark.pool_only
def test_executor_factory_must_give_a_process_pool(make_mw):
    from concurrent.futures import ThreadPoolExecutor

    mw = make_mw(executor_factory=lambda: ThreadPoolExecutor(2))
    with pytest.raises(TypeError, match="workers are processes"):
        mw.submit(jobfuncs.add, 1, 2)
    assert mw.jobs() == []  # nothing queued, and (fixture) no process left


def test_result_shown_on_pages_is_bounded_and_safe(mw):
    big = mw.submit(jobfuncs.return_big, 1_000_000).wait(timeout=20)
    assert big.result == "x" * 1_000_000  # the value itself is whole
    shown = big.to_dict()["result"]
    assert len(shown) < 3000 and shown.startswith("'xxx")
    loud = mw.submit(jobfuncs.return_loud_repr).wait(timeout=20)
    assert loud.state is JobState.SUCCEEDED
    assert "LoudRepr" in loud.to_dict()["result"]  # a failing __repr__ is shown
    assert len(mw.engine.store.get(big.id)["result"]) < 3000  # records stay small


def test_the_call_is_kept_in_the_store_until_the_job_is_dropped(make_mw):
    mw = make_mw(keep_finished=1)
    job = mw.submit(jobfuncs.add, 1, 2).wait(timeout=20)
    assert pickle.loads(mw.engine.store.call(job.id)) == (jobfuncs.add, (1, 2), {})
    mw.submit(jobfuncs.add, 2, 2).wait(timeout=20)  # keep_finished=1: drops the first
    wait_for(lambda: mw.engine.store.get(job.id) is None
             and mw.engine.store.call(job.id) is None, 10,
             message="the first job and its call to be dropped")


@pytest.mark.parametrize("size", [pytest.param(300_000, id="300k"),
                                  pytest.param(3_000_000, id="3M")])
def test_a_large_result_from_a_process_that_then_exits_is_kept(make_mw, size):
    # A fresh process per job: it sends its result and exits at once, and
    # the end of the message may still be in the socket when it is reaped.
    # (The value goes in as an argument too: past max_call_bytes' default.)
    mw = make_mw(max_jobs_per_process=1, max_call_bytes=4 * 1024 * 1024)
    value = b"\x01" * size
    jobs = [mw.submit(jobfuncs.identity, value) for _ in range(6)]
    for job in jobs:
        assert job.wait(30).state is JobState.SUCCEEDED, job.error
        assert job.result == value
