"""Polling helpers: tests wait with a deadline, never with a bare sleep."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import psutil

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0,
             interval: float = 0.01, message: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def live_children() -> list[psutil.Process]:
    """Processes descending from this one that have not exited (zombies
    excluded), but for multiprocessing's resource tracker: it is the whole
    process's, wsgi_bg leaves it alone, and it ends with this process."""
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and not any(
                "multiprocessing.resource_tracker" in part for part in proc.cmdline()
            ):
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def assert_no_children(timeout: float = 10.0) -> None:
    """Every process the test started has exited (within ``timeout``)."""
    try:
        wait_for(lambda: not live_children(), timeout,
                 message="child processes to exit")
    except AssertionError:
        left = [(p.pid, p.name(), " ".join(p.cmdline())[:120]) for p in live_children()]
        raise AssertionError(f"processes left behind: {left}") from None
