"""The default store's manager process killed or stopped from outside: bounded
waits, 503 with Retry-After, one log line, recovery, a shutdown that never
raises. Each test kills or stops the manager by its pid and always lets a
stopped one go on."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest
import webtest

import jobfuncs
from helpers import wait_for
from wsgi_bg import JobState
from wsgi_bg.exceptions import StoreUnavailable

pytestmark = pytest.mark.timeout(60)


def site(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"site"]


def manager_pid(mw) -> int:
    return mw.engine._backend._manager._process.pid


def started_mw(wsgi_bg_middleware, **options):
    options.setdefault("max_workers", 1)
    options.setdefault("cancel_grace", 1.0)
    mw = wsgi_bg_middleware(site, **options)
    job = mw.submit(jobfuncs.add, 1, 2).wait(timeout=20)
    assert job.state is JobState.SUCCEEDED
    return mw, job


def store_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "wsgi_bg" and r.levelno >= logging.ERROR
            and "job store" in r.getMessage()]


def test_dead_store_is_503_with_retry_after_and_logged_once(wsgi_bg_middleware,
                                                             caplog):
    mw, job = started_mw(wsgi_bg_middleware)
    client = webtest.TestApp(mw)
    pid = manager_pid(mw)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not mw.engine._backend._manager._process.is_alive(), 10,
             message="the manager to die")
    with caplog.at_level(logging.ERROR, logger="wsgi_bg"):
        start = time.monotonic()
        page = client.get(f"/_jobs/api/jobs/{job.id}", status=(404, 503))
        assert time.monotonic() - start < 5
        # the first request sees the store gone; later ones are 503 until a
        # fresh store runs, then the old job is unknown (404), never a crash
        if page.status_int == 503:
            assert page.headers["Retry-After"]
            assert "store" in page.json["message"]
        client.get("/", status=200)  # the app's other routes are untouched
        for _ in range(3):
            client.get(f"/_jobs/{job.id}", status=(404, 503))
    assert len([m for m in store_errors(caplog) if "gone" in m]) == 1


def test_hung_store_costs_a_bounded_wait(wsgi_bg_middleware, caplog):
    mw, job = started_mw(wsgi_bg_middleware)
    client = webtest.TestApp(mw)
    pid = manager_pid(mw)
    os.kill(pid, signal.SIGSTOP)
    try:
        with caplog.at_level(logging.ERROR, logger="wsgi_bg"):
            start = time.monotonic()
            page = client.get(f"/_jobs/api/jobs/{job.id}", status=503)
            assert time.monotonic() - start < 5
            assert page.headers["Retry-After"]
            start = time.monotonic()
            client.get(f"/_jobs/{job.id}", status=503)
            assert time.monotonic() - start < 1  # known hung: at once
        assert len(store_errors(caplog)) == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: client.get(f"/_jobs/api/jobs/{job.id}",
                                status=(200, 503)).status_int == 200,
             10, message="the store to answer again")


def test_submit_with_a_hung_store_fails_fast_and_blocks_no_other(
        wsgi_bg_middleware):
    mw, _ = started_mw(wsgi_bg_middleware)
    pid = manager_pid(mw)
    outcomes: list[tuple[type[BaseException] | None, float]] = []

    def submit() -> None:
        start = time.monotonic()
        try:
            mw.submit(jobfuncs.add, 1, 1)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assert
            outcomes.append((type(exc), time.monotonic() - start))
        else:
            outcomes.append((None, time.monotonic() - start))

    os.kill(pid, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=submit) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert len(outcomes) == 3
    for kind, took in outcomes:
        assert kind is StoreUnavailable
        assert took < 5, f"a submit waited {took:.1f} s"
    # A create given up on is not left queued for ever once the store answers.
    def none_queued() -> bool:
        try:
            return not mw.engine.store.ids_in_state(JobState.QUEUED.value)
        except StoreUnavailable:
            return False

    wait_for(none_queued, 15, message="no job left queued")


@pytest.mark.parametrize("fault", [signal.SIGKILL], ids=["dead"])
def test_shutdown_never_raises_for_a_bad_store(wsgi_bg_middleware, fault):
    mw, _ = started_mw(wsgi_bg_middleware, cancel_grace=0.5)
    running = mw.submit(jobfuncs.sleeper, 30)
    wait_for(lambda: running.state is JobState.RUNNING, 20)
    pid = manager_pid(mw)
    os.kill(pid, fault)
    try:
        start = time.monotonic()
        mw.shutdown()
        assert time.monotonic() - start < 10
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
