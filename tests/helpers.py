"""Polling helpers: tests wait with a deadline, never with a bare sleep.

They are the package's own (:mod:`wsgi_bg.testing`), which users' suites get
too; this module keeps the names the tests import.
"""
from __future__ import annotations

from wsgi_bg import testing
from wsgi_bg.testing import wait_for

__all__ = ["assert_no_children", "live_children", "wait_for", "SESSION_PIDS"]

#: Processes the session keeps for all tests (the redis-server, the RQ
#: workers), not a test's.
SESSION_PIDS: set[int] = set()


def _session(processes: list[testing.ChildProcess]) -> list[testing.ChildProcess]:
    """The session's own among ``processes``: its servers and workers, and the
    job process each RQ worker keeps for its next job (a child of the worker
    with no child of its own: what a job leaves running is a child of its job
    process, and is a test's)."""
    parents = {p.ppid for p in processes}
    return [p for p in processes if p.pid in SESSION_PIDS
            or (p.ppid in SESSION_PIDS and p.pid not in parents)]


def live_children() -> list[testing.ChildProcess]:
    """:func:`wsgi_bg.testing.live_children`, without the session's own."""
    processes = testing.live_children()
    session = _session(processes)
    return [p for p in processes if p not in session]


def assert_no_children(timeout: float = 10.0) -> None:
    """:func:`wsgi_bg.testing.assert_no_children`, without the session's own."""
    __tracebackhide__ = True
    testing.assert_no_children(timeout, ignore=_session(testing.live_children()))
