"""Retries with backoff: ``@background(retries=...)``, on every store and runner.

One job, one id, one page: a failed attempt goes back to queued in the
store's own atomic step (attempt + 1, its error kept, a divider in the
output), waits its backoff, and runs again wherever a process takes it.
"""
from __future__ import annotations

import os
import pathlib
import re
import signal
import time
import uuid

import pytest
import webtest

import jobfuncs
import retryfuncs
from helpers import wait_for
from wsgi_bg import JobState, allow_all, background, backgrounder
from wsgi_bg.stores import Ending
from wsgi_bg.testing import wait_for_job

# Also on the RQ runner (see conftest.py): these describe how jobs run.
pytestmark = [pytest.mark.runner_contract, pytest.mark.timeout(120)]


def counter(tmp_path):
    return str(tmp_path / f"attempts-{uuid.uuid4().hex[:8]}")


def attempts_made(path):
    try:
        with open(path) as f:
            return len(f.read())
    except FileNotFoundError:
        return 0


def waiting_for(mw, job, attempt):
    """Wait until ``job`` waits for its ``attempt``-th attempt; its record."""
    store = mw.engine.store
    wait_for(lambda: (store.get(job.id) or {}).get("attempt") == attempt
             and store.get(job.id)["state"] == "queued", 30,
             message=f"attempt {attempt} of {job.id} to wait")
    return store.get(job.id)


def test_succeeds_on_the_third_attempt(make_mw, tmp_path):
    mw = make_mw(authorize=allow_all)
    path = counter(tmp_path)
    job = mw.submit(retryfuncs.flaky, path, 2)
    wait_for_job(job)
    assert job.result == "done on attempt 3"
    assert [j.id for j in mw.jobs()] == [job.id]  # one job, one id
    data = webtest.TestApp(mw.status_app).get(f"/api/jobs/{job.id}").json
    assert (data["attempt"], data["retries"], data["retry_at"]) == (3, 3, None)
    assert [e["attempt"] for e in data["errors"]] == [1, 2]
    assert [e["state"] for e in data["errors"]] == ["failed", "failed"]
    for n, e in enumerate(data["errors"], 1):
        assert f"ConnectionError: service down (attempt {n})" in e["error"]
    assert data["error"] is None
    assert job.attempt == 3
    # The list says which attempt it ended on.
    listed = webtest.TestApp(mw.status_app).get("/").text
    assert '<div class="attempt">attempt 3 of 4</div>' in listed
    # Every attempt's output stays, each after a divider.
    assert data["output"] == (
        "attempt 1 starts\n──── attempt 2 of 4 ────\nattempt 2 starts\n"
        "──── attempt 3 of 4 ────\nattempt 3 starts\n")
    assert attempts_made(path) == 3
    metrics = webtest.TestApp(mw.status_app).get("/metrics").text
    assert 'wsgi_bg_job_retries_total{function="retryfuncs.flaky"} 2\n' in metrics
    assert ('wsgi_bg_jobs_finished_total{function="retryfuncs.flaky",'
            'outcome="succeeded"} 1\n') in metrics  # once, at its end


def test_exhausted_retries_end_failed_with_every_error(make_mw, tmp_path):
    mw = make_mw()
    path = counter(tmp_path)
    job = mw.submit(retryfuncs.always_fails, path)
    wait_for_job(job, state="failed")
    data = job.to_dict()
    assert (data["attempt"], data["retries"]) == (3, 2)
    earlier = [e["error"] for e in data["errors"]]
    assert len(earlier) == 2
    for n, error in enumerate([*earlier, data["error"]], 1):
        assert f"ValueError: bad input (attempt {n})" in error
    assert attempts_made(path) == 3
    page = webtest.TestApp(mw.status_app).get(f"/{job.id}").text
    assert "Earlier attempts" in page and "Attempt 2 · failed" in page
    assert "3 of 3" in page


def test_retry_on_limits_which_exceptions_run_again(make_mw, tmp_path):
    mw = make_mw(authorize=allow_all)
    path = counter(tmp_path)
    job = mw.submit(retryfuncs.wrong_kind, path)
    wait_for_job(job, state="failed")
    assert "KeyError" in job.error
    assert job.to_dict()["attempt"] == 1 and job.to_dict()["errors"] == []
    assert job.attempt == 1
    # One attempt: the list's row says nothing of attempts.
    assert 'class="attempt"' not in webtest.TestApp(mw.status_app).get("/").text
    assert attempts_made(path) == 1


def test_a_timeout_runs_again(make_mw, tmp_path):
    mw = make_mw()
    path = counter(tmp_path)
    job = mw.submit(retryfuncs.slow_first, path)
    wait_for_job(job)
    assert job.result == "quick the second time"
    (first,) = job.to_dict()["errors"]
    assert first["state"] == "timed_out" and "timed out" in first["error"]


def test_a_crash_runs_again_only_when_asked(make_mw, tmp_path):
    mw = make_mw()
    plain, asked = counter(tmp_path), counter(tmp_path)
    crashed = mw.submit(retryfuncs.crashes, plain)
    retried = mw.submit(retryfuncs.crashes_retried, asked)
    wait_for_job(crashed, state="crashed")
    assert attempts_made(plain) == 1 and crashed.to_dict()["attempt"] == 1
    wait_for_job(retried)
    assert retried.result == "survived"
    (first,) = retried.to_dict()["errors"]
    assert first["state"] == "crashed"
    assert attempts_made(asked) == 2


@pytest.mark.pool_only
@pytest.mark.timeout(90)
def test_a_dead_worker_costs_no_later_attempt_on_another(make_mw, tmp_path):
    """A worker answers for the jobs it was given together at once: when it
    dies, an earlier job of that hand-off that failed and runs again, now
    as attempt 2 on the other worker, is not lost with it (it was killed,
    with its process group, and ended crashed: the review's repro)."""
    import psutil

    mw = make_mw(max_workers=2)
    path, gate = counter(tmp_path), str(tmp_path / "gate")
    busy = [mw.submit(retryfuncs.blocks, 1.5) for _ in range(2)]
    held = [mw.submit(jobfuncs.add, i, 1) for i in range(2)]  # one held next to each
    # Waiting, then handed out two by two: [job, long] to one worker.
    job = mw.submit(retryfuncs.fails_then_waits, path, gate)
    long = mw.submit(retryfuncs.prints_pid_and_waits, 60)
    rest = [mw.submit(jobfuncs.add, i, 2) for i in range(2)]
    wait_for(lambda: "attempt 2 pid " in job.output and "pid " in long.output, 30,
             message="attempt 2 and the long job to run")
    second = int(job.output.split("attempt 2 pid ")[1].split()[0])
    long_pid = int(long.output.split("pid ")[1].split()[0])
    doomed = psutil.Process(long_pid).ppid()
    assert psutil.Process(second).ppid() != doomed, (
        "attempt 2 runs on the long job's worker: the hand-offs changed, the"
        " test must arrange them anew")
    os.kill(doomed, signal.SIGKILL)
    assert long.wait(timeout=30).state is JobState.CRASHED
    assert psutil.pid_exists(second) and job.state is JobState.RUNNING
    pathlib.Path(gate).touch()
    assert job.wait(timeout=30).result == "attempt 2 done"
    assert job.attempt == 2
    for other in (*busy, *held, *rest):
        assert other.wait(timeout=30).state is JobState.SUCCEEDED


def test_cancel_stops_a_job_between_attempts(make_mw, tmp_path):
    mw = make_mw(authorize=allow_all)
    path = counter(tmp_path)
    job = mw.submit(retryfuncs.waits_long, path)
    record = waiting_for(mw, job, 2)
    assert record["retry_at"] > time.time() + 20  # retry_delay=30
    assert (job.state, job.attempt) == ("queued", 2)
    pages = webtest.TestApp(mw.status_app)
    page = pages.get(f"/{job.id}").text
    assert re.search(r'<span id="attempt">2 of 4</span><span id="next-attempt"'
                     r' data-at="[0-9.]+"> · next attempt in (29|30) s</span>', page)
    assert re.search(r'<div class="attempt">attempt 2 of 4 · next attempt in'
                     r' (29|30) s</div>', pages.get("/").text)
    assert pages.get(f"/api/jobs/{job.id}").json["retry_at"] == record["retry_at"]
    assert job.cancel()
    wait_for_job(job, state="cancelled")
    assert job.error == "cancelled while waiting for attempt 2 of 4"
    assert "ConnectionError: down" in job.to_dict()["errors"][0]["error"]
    assert attempts_made(path) == 1


def create(store, name="tests.backoff", **retry):
    """A job record with ``retry``'s fields, created in ``store``; its id."""
    job_id = uuid.uuid4().hex
    store.create({
        "id": job_id, "name": name, "created_at": time.time(),
        "started_at": None, "ended_at": None, "result": None, "error": None,
        "progress": None, "timeout": None, "cancel_requested": False,
        "cancel_grace": None, "url": None, "pid": None, "args": None,
        "unique": None, "retry_crashed": False, "attempt": 1, "retry_at": None,
        "errors": [], **retry}, 10)
    return job_id


@pytest.mark.pool_only  # (the store's arithmetic: no runner involved)
def test_backoff_doubles_up_to_its_cap(make_mw):
    store = make_mw().engine.store
    job_id = create(store, retries=4, retry_delay=0.05, retry_delay_max=0.15)
    waits = []
    for attempt in range(1, 5):
        if attempt > 1:
            wait_for(lambda: job_id in store.claim_retries()[0], 10,
                     message=f"attempt {attempt} to be due")
        assert store.start(job_id, 4242)
        failed = Ending("failed", error=f"boom {attempt}")
        assert store.finish(job_id, failed) == "queued"
        record = store.get(job_id)
        assert not store.start(job_id, 4242)  # waiting: only a claim frees it
        waits.append(record["retry_at"] - record["errors"][-1]["ended_at"])
    assert waits == pytest.approx([0.05, 0.1, 0.15, 0.15], abs=1e-3)
    wait_for(lambda: job_id in store.claim_retries()[0], 10, message="attempt 5")
    assert store.start(job_id, 4242)
    assert store.finish(job_id, Ending("failed", error="boom 5")) == "failed"
    stats = store.stats()
    assert stats.retries == {"tests.backoff": 4}
    assert stats.finished == {("tests.backoff", "failed"): 1}  # the end alone
    assert [e["error"] for e in store.get(job_id)["errors"]] == [
        f"boom {n}" for n in range(1, 5)]


@pytest.mark.pool_only  # (the store's sweep: no runner involved)
def test_a_job_whose_supervisor_vanished_runs_again_only_when_asked(
        make_mw, store_options, redis_server):
    """Redis: the sweep that ends a running job whose lease ran out (its
    worker host gone) runs it again with retry_crashed, as a crash seen by
    its supervisor does."""
    if "store" not in store_options:
        pytest.skip("the lease and its sweep are the Redis store's")
    store = make_mw().engine.store
    options = {"retries": 1, "retry_delay": 0.0, "retry_delay_max": 0.0}
    asked = create(store, retry_crashed=True, **options)
    plain = create(store, **options)
    client = redis_server.client()
    for job_id in (asked, plain):
        assert store.start(job_id, 4242)
        client.delete(f"{store_options['namespace']}:lease:{job_id}")
    wait_for(lambda: store.sweep() is not None
             and store.get(plain)["state"] == "crashed", 20,
             message="the sweep to end the jobs")
    record = store.get(asked)
    assert (record["state"], record["attempt"]) == ("queued", 2)
    (first,) = record["errors"]
    assert first["state"] == "crashed" and "nothing renewed its lease" in \
        first["error"]
    assert store.claim_retries()[0] == [asked]


def test_a_waiting_retry_outlives_the_process_that_started_it(
        make_mw, store_options, tmp_path):
    if "store" not in store_options:
        pytest.skip("the memory store is one process's: its jobs end with it")
    first = make_mw()
    path = counter(tmp_path)
    job = first.submit(retryfuncs.waits_a_little, path, 1)
    waiting_for(first, job, 2)
    first.shutdown()
    assert first.engine.store.get(job.id)["state"] == "queued"  # not cancelled
    second = make_mw()
    webtest.TestApp(second).get("/")  # its first request: it takes retries
    again = second.get_job(job.id)
    wait_for_job(again)
    assert again.result == "ok" and again.to_dict()["attempt"] == 2
    assert "attempt 2" in second.engine.store.read_output(job.id, 0)[0]


# -- bad options -----------------------------------------------------------------
@pytest.mark.parametrize(("options", "error", "message"), [
    pytest.param({"retries": -1}, ValueError, r"retries must be an integer >= 0,"
                 r" got -1", id="negative"),
    pytest.param({"retries": "3"}, ValueError, r"retries must be an integer",
                 id="text"),
    pytest.param({"retries": 2, "retry_delay": -1}, ValueError,
                 r"retry_delay must be a number >= 0, got -1", id="delay"),
    pytest.param({"retries": 2, "retry_delay": 10, "retry_delay_max": 5},
                 ValueError, r"retry_delay_max must be at least retry_delay \(10\),"
                 r" got 5", id="cap"),
    pytest.param({"retries": 2, "retry_on": "ConnectionError"}, TypeError,
                 r"retry_on must be an exception class or a tuple of them, e\.g\."
                 r" retry_on=\(ConnectionError, TimeoutError\), got"
                 r" 'ConnectionError'", id="retry_on-text"),
    pytest.param({"retries": 2, "retry_on": (ValueError, 3)}, TypeError,
                 r"retry_on must be an exception class", id="retry_on-mixed"),
    pytest.param({"retries": 2, "retry_on": ()}, TypeError,
                 r"retry_on must be an exception class", id="retry_on-empty"),
    pytest.param({"retries": 2, "retry_crashed": "yes"}, TypeError,
                 r"retry_crashed must be True or False, got 'yes'", id="crashed"),
    pytest.param({"retry_on": ValueError}, TypeError,
                 r"retry_on and retry_crashed say which failures run again: give"
                 r" retries too", id="without-retries"),
])
@pytest.mark.parametrize("mark", [background, backgrounder], ids=["background",
                                                                  "backgrounder"])
def test_bad_retry_options_say_what_is_accepted(mark, options, error, message):
    with pytest.raises(error, match=message):
        mark(**options)


def test_retry_on_must_be_importable():
    class Nested(Exception):
        pass

    with pytest.raises(TypeError, match=r"retry_on: .*Nested cannot be sent to a"
                       r" worker process .* define it at module level"):
        background(retries=1, retry_on=Nested)


def test_an_earlier_attempts_rq_job_put_back_starts_nothing(
        make_mw, store_options, redis_server, tmp_path):
    """docs/security.md: a Redis writer puts attempt 1's RQ job back on the
    queue while attempt 2 waits for its time: the worker takes it and the
    store refuses its start (only a claim frees a waiting attempt)."""
    if "runner" not in store_options:
        pytest.skip("RQ's own jobs: the RQ runner alone")
    from wsgi_bg.runners.rq import rq_job_id

    mw = make_mw()
    path = counter(tmp_path)
    job = mw.submit(retryfuncs.waits_long, path)
    waiting_for(mw, job, 2)
    client = redis_server.client()
    key = f"rq:job:{rq_job_id(job.id)}"
    wait_for(lambda: client.hget(key, "status") == b"finished", 10,
             message="RQ to record attempt 1 finished")
    queue = store_options["runner"].name
    client.hset(key, "status", "queued")
    client.rpush(f"rq:queue:{queue}", rq_job_id(job.id))
    wait_for(lambda: client.hget(key, "status") in (b"failed", b"finished")
             and not client.lrange(f"rq:queue:{queue}", 0, -1), 20,
             message="a worker to take the RQ job put back")
    record = mw.engine.store.get(job.id)
    assert (record["state"], record["attempt"], record["started_at"]) == (
        "queued", 2, None)
    assert record["retry_at"] is not None
    assert attempts_made(path) == 1


def test_a_marked_apps_request_is_served_again(make_mw, tmp_path):
    mw = make_mw(app=retryfuncs.flaky_app)
    path = counter(tmp_path)
    answer = webtest.TestApp(mw).get("/", {"path": path}, status=303)
    job = mw.get_job(answer.headers["Location"].rsplit("/", 1)[1])
    wait_for_job(job)
    assert job.result["status"] == "200 OK"
    (first,) = job.to_dict()["errors"]
    assert "the app answered 503" in first["error"]
    assert mw.engine.store.read_output(job.id, 0)[0].endswith(
        "──── attempt 2 of 2 ────\nserved on attempt 2\n")


@pytest.mark.parametrize(("app", "attempts", "state"), [
    ("flaky_app_retry_on_5xx", 2, "succeeded"),
    ("flaky_app_retry_on_other", 1, "failed"),
])
def test_retry_on_app_failed_retries_a_5xx_answer(make_mw, tmp_path, app,
                                                   attempts, state):
    """backgrounder's docstring: a 5xx answer is an AppFailed, which
    retry_on may name."""
    mw = make_mw(app=getattr(retryfuncs, app))
    path = counter(tmp_path)
    answer = webtest.TestApp(mw).get("/", {"path": path}, status=303)
    job = mw.get_job(answer.headers["Location"].rsplit("/", 1)[1])
    wait_for_job(job, state=state)
    assert attempts_made(path) == attempts
