"""Polling helpers: tests wait with a deadline, never with a bare sleep.

They are the package's own (:mod:`wsgi_bg.testing`), which users' suites get
too; this module keeps the names the tests import.
"""
from __future__ import annotations

from wsgi_bg import testing
from wsgi_bg.testing import wait_for

__all__ = ["assert_no_children", "live_children", "wait_for", "SESSION_PIDS"]

#: Processes the session keeps for all tests (the redis-server), not a test's.
SESSION_PIDS: set[int] = set()


def live_children() -> list[testing.ChildProcess]:
    """:func:`wsgi_bg.testing.live_children`, without the session's servers."""
    return [p for p in testing.live_children() if p.pid not in SESSION_PIDS]


def assert_no_children(timeout: float = 10.0) -> None:
    """:func:`wsgi_bg.testing.assert_no_children`, without the session's servers."""
    __tracebackhide__ = True
    session = [p for p in testing.live_children() if p.pid in SESSION_PIDS]
    testing.assert_no_children(timeout, ignore=session)
