"""wsgi_bg: run a WSGI app's long work in background processes, with live status pages.

.. code-block:: python

    from wsgi_bg import BackgroundMiddleware, background

    @background
    def longrunning():
        for i in range(10):
            print(i)

    app = BackgroundMiddleware(app)
"""

from __future__ import annotations

from .auth import allow_all, allow_local
from .context import current_job
from .exceptions import (
    AppFailed,
    QueueFull,
    ResultUnavailable,
    StoreUnavailable,
    WsgiBgError,
)
from .jobs import Job, JobState
from .marks import background, backgrounder
from .middleware import BackgroundMiddleware

__version__ = "0.1.0"

__all__ = [
    "AppFailed",
    "BackgroundMiddleware",
    "Job",
    "JobState",
    "QueueFull",
    "ResultUnavailable",
    "StoreUnavailable",
    "WsgiBgError",
    "allow_all",
    "allow_local",
    "background",
    "backgrounder",
    "current_job",
]
