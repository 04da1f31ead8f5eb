"""The Huey side of ``python -m bench huey``: the instance its consumer loads.

Huey's fastest configuration the issue names: ``SqliteHuey`` with fsync off,
a process consumer with as many workers as wsgi_bg's pool. The database file
is the bench's to choose (``WSGI_BG_BENCH_HUEY_DB``), so that runs never
share a queue.
"""

from __future__ import annotations

import os

from huey import SqliteHuey

huey = SqliteHuey(
    "wsgi_bg_bench",
    filename=os.environ.get("WSGI_BG_BENCH_HUEY_DB", "/tmp/wsgi_bg_bench_huey.db"),
    fsync=False,
)


@huey.task()
def noop(i: int = 0) -> int:
    """The same trivial job as :func:`bench.jobfuncs.noop` (a stored result)."""
    return i
