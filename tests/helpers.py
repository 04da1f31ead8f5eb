"""Polling helpers: tests wait with a deadline, never with a bare sleep.

They are the package's own (:mod:`wsgi_bg.testing`), which users' suites get
too; this module keeps the names the tests import.
"""
from __future__ import annotations

import time

from wsgi_bg import testing
from wsgi_bg.testing import wait_for

__all__ = ["assert_no_children", "live_children", "max_batches", "wait_for",
           "SESSION_PIDS"]

#: Processes the session keeps for all tests (the redis-server, the RQ
#: workers), not a test's. Under pytest-xdist a session is one xdist worker,
#: and the checks below walk its own descendants alone: another xdist
#: worker's servers and jobs are never seen, nor counted.
SESSION_PIDS: set[int] = set()

#: Output reaches the store in batches at most every BATCH_SECONDS, or sooner
#: once BATCH_CHARS are waiting (docs/guide.md, wsgi_bg.capture.Relay).
BATCH_SECONDS = 0.05
BATCH_CHARS = 65536


def max_batches(job, written: int) -> int:
    """The most batches the output of ``job`` (done) can have been sent in,
    ``written`` characters in all: one per BATCH_SECONDS of its run, one per
    BATCH_CHARS, and the last at its end. A bound that follows the job's own
    run time, so that it holds however loaded the machine is: an assertion
    about what a batch keeps, not about how many batches there were."""
    run = job.ended_at - job.started_at
    return 2 + int(run / BATCH_SECONDS) + written // BATCH_CHARS


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
    """:func:`wsgi_bg.testing.assert_no_children`, without the session's own,
    told apart at each look: an RQ worker's kept job process still holding
    a dying job's child at the first look is the session's a moment later."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    while left := live_children():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(left)} process(es) left behind, still alive {timeout} s"
                f" later: {'; '.join(str(p) for p in left)}")
        time.sleep(0.01)
