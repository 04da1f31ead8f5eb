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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import allow_all, allow_local
    from .context import current_job
    from .exceptions import (
        AppFailed,
        CallTooLarge,
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
    "CallTooLarge",
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

# Each public name is imported when first used (PEP 562): importing a
# submodule alone, as pytest does with the plugin (wsgi_bg.testing) in every
# run of every project that installs wsgi_bg, does not import the engine,
# the stores, the status pages and Werkzeug.
_MODULES = {
    "allow_all": "auth", "allow_local": "auth", "current_job": "context",
    "AppFailed": "exceptions", "CallTooLarge": "exceptions",
    "QueueFull": "exceptions",
    "ResultUnavailable": "exceptions", "StoreUnavailable": "exceptions",
    "WsgiBgError": "exceptions", "Job": "jobs", "JobState": "jobs",
    "background": "marks", "backgrounder": "marks",
    "BackgroundMiddleware": "middleware",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
