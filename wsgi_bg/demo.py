"""The web.py ``web.background`` example, ported: what ``wsgi-bg demo`` serves.

web.py's documentation showed a ``GET`` marked ``@backgrounder`` that prints
two lines and calls a ``@background`` function printing ten timed lines, one a
second; the browser was sent to a page to refresh until all of it was there.
Here the same two functions run in a worker process and the job's page shows
the lines as they appear, without anyone hitting F5::

    $ wsgi-bg demo            # or: make demo
    open http://127.0.0.1:8080/

``examples/webpy_example.py`` is the same code as a file to copy.

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import TYPE_CHECKING

from werkzeug.exceptions import NotFound

from .marks import background, backgrounder

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: Seconds between the ten lines. The environment variable
#: ``WSGI_BG_DEMO_DELAY`` changes the default; ``wsgi-bg demo --delay`` passes
#: its value to :func:`make_app`.
DELAY = float(os.environ.get("WSGI_BG_DEMO_DELAY", "1"))

#: environ key carrying the delay to the job: a marked app's request environ
#: travels to the worker process with it.
DELAY_KEY = "wsgi_bg.demo.delay"

now = datetime.now


@backgrounder
def index(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The seed's ``index.GET``: runs as a job, in a worker process."""
    print(f"Started at {now()}")
    print("hit f5 to refresh!")
    longrunning(float(environ.get(DELAY_KEY, DELAY)))
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return []


@background
def longrunning(delay: float = DELAY) -> None:
    """Ten timed lines, ``delay`` seconds apart. Called from :func:`index`, it
    runs inline in that job, so its lines join the same output."""
    for i in range(10):
        time.sleep(delay)
        print(f"{i}: {now()}")


def make_app(delay: float | None = None) -> WSGIApplication:
    """The demo site: ``/`` is :func:`index`; anything else (a browser's
    ``/favicon.ico``) is 404 and starts nothing.

    :param delay: seconds between the ten lines; default :data:`DELAY`.
    """
    seconds = DELAY if delay is None else float(delay)
    if seconds < 0:
        raise ValueError(f"delay must be a number >= 0, got {delay!r}")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") not in ("", "/"):
            return NotFound()(environ, start_response)
        environ[DELAY_KEY] = str(seconds)
        return index(environ, start_response)

    return app


#: The demo site with the default delay.
app = make_app()
