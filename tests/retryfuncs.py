"""Jobs for tests/test_retries.py: each counts its attempts in a file, so
that an attempt knows which it is whatever process runs it."""
from __future__ import annotations

import os
import signal
import time

from wsgi_bg import background, backgrounder
from wsgi_bg.exceptions import AppFailed


def _attempt(path: str) -> int:
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        return len(f.read())


@background(retries=3, retry_delay=0.2, retry_on=(ConnectionError,))
def flaky(path: str, failures: int) -> str:
    """Fails with ConnectionError its first ``failures`` attempts."""
    n = _attempt(path)
    print(f"attempt {n} starts")
    if n <= failures:
        raise ConnectionError(f"service down (attempt {n})")
    return f"done on attempt {n}"


@background(retries=2, retry_delay=0.2)
def always_fails(path: str) -> None:
    n = _attempt(path)
    print(f"attempt {n} fails")
    raise ValueError(f"bad input (attempt {n})")


@background(retries=3, retry_delay=0.2, retry_on=ConnectionError)
def wrong_kind(path: str) -> None:
    _attempt(path)
    raise KeyError("not a connection error")


@background(timeout=1.0, retries=1, retry_delay=0.2)
def slow_first(path: str) -> str:
    if _attempt(path) == 1:
        time.sleep(60)
    return "quick the second time"


def _crash_first(path: str) -> str:
    if _attempt(path) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


crashes_retried = background(retries=1, retry_delay=0.2, retry_crashed=True)(
    _crash_first)


@background(retries=1, retry_delay=0.2)
def crashes(path: str) -> str:
    return _crash_first(path)


@background(retries=3, retry_delay=30)
def waits_long(path: str) -> None:
    _attempt(path)
    raise ConnectionError("down")


@background(retries=5, retry_delay=0.2, retry_delay_max=0.5)
def backoff(path: str) -> None:
    _attempt(path)
    raise ConnectionError("down")


@background(retries=3, retry_delay=1.5)
def waits_a_little(path: str, failures: int) -> str:
    n = _attempt(path)
    print(f"attempt {n}")
    if n <= failures:
        raise ConnectionError(f"down (attempt {n})")
    return "ok"


@backgrounder(retries=1, retry_delay=0.2)
def flaky_app(environ, start_response):
    """A marked app whose first request per counter answers 503."""
    from urllib.parse import parse_qs

    n = _attempt(parse_qs(environ["QUERY_STRING"])["path"][0])
    status = "503 Service Unavailable" if n == 1 else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [f"served on attempt {n}\n".encode()]


def _answers_503_once(environ, start_response):
    from urllib.parse import parse_qs

    n = _attempt(parse_qs(environ["QUERY_STRING"])["path"][0])
    start_response("503 Service Unavailable" if n == 1 else "200 OK",
                   [("Content-Type", "text/plain")])
    return [f"served on attempt {n}\n".encode()]


#: A 5xx answer is an AppFailed: named in retry_on, it runs again ...
flaky_app_retry_on_5xx = backgrounder(
    retries=1, retry_delay=0.2, retry_on=AppFailed)(_answers_503_once)
#: ... and with retry_on naming other exceptions only, it does not.
flaky_app_retry_on_other = backgrounder(
    retries=1, retry_delay=0.2, retry_on=ConnectionError)(_answers_503_once)


@background(retries=1, retry_delay=0.3)
def fails_then_waits(path: str, gate: str) -> str:
    """Fails its first attempt; the second prints its pid and waits for
    ``gate``."""
    n = _attempt(path)
    print(f"attempt {n} pid {os.getpid()}", flush=True)
    if n == 1:
        raise ConnectionError("down")
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return f"attempt {n} done"


def blocks(seconds: float) -> None:
    time.sleep(seconds)


def prints_pid_and_waits(seconds: float) -> None:
    print(f"pid {os.getpid()}", flush=True)
    time.sleep(seconds)
