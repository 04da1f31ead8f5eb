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

from .context import current_job
from .exceptions import QueueFull, ResultUnavailable, WsgiBgError
from .jobs import Job, JobState
from .marks import background
from .middleware import BackgroundMiddleware

__all__ = [
    "BackgroundMiddleware",
    "Job",
    "JobState",
    "QueueFull",
    "ResultUnavailable",
    "WsgiBgError",
    "background",
    "current_job",
]
