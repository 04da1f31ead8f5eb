"""The web.py ``web.background`` example, ported: what ``wsgi-bg demo`` serves.

web.py's documentation showed a ``GET`` marked ``@backgrounder`` that printed
two lines and called a ``@background`` function printing ten timed lines, one
a second; the browser was sent to a page to refresh until all of it was there.
Here ``/`` is a page with a button: pressing it (a ``POST``) calls the
``@background`` function, which runs in a worker process, and sends the
browser to the job's page, where the lines appear as they are printed, with a
progress bar, the call's arguments, its result and a Cancel button. A ``GET``
(a browser, a health check) starts nothing::

    $ wsgi-bg demo            # or: make demo
    open http://127.0.0.1:8080/ and press "Start a job"

``examples/webpy_example.py`` is the same code as a file to copy.

.. versionadded:: 0.1
.. versionchanged:: 0.2
    ``GET /`` is a page with a button; the job starts on its ``POST``.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import TYPE_CHECKING

from markupsafe import escape
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.wrappers import Request, Response

from .context import current_job
from .marks import background

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: Seconds between the ten lines. The environment variable
#: ``WSGI_BG_DEMO_DELAY`` changes the default; ``wsgi-bg demo --delay`` passes
#: its value to :func:`make_app`.
DELAY = float(os.environ.get("WSGI_BG_DEMO_DELAY", "1"))

#: How many timed lines the job prints.
LINES = 10

now = datetime.now

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wsgi_bg demo</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 38rem; margin: 2rem auto;
       padding: 0 1rem; color: #1f2328; }}
button {{ font: inherit; padding: .5rem 1.2rem; border-radius: 6px; cursor: pointer;
         border: 1px solid #1a7f37; background: #1f883d; color: #fff; }}
code {{ background: #f6f8fa; padding: 0 .2em; border-radius: 4px; }}
</style></head><body>
<h1>wsgi_bg demo</h1>
<p>The button calls <code>longrunning(lines={lines}, delay={delay})</code>, a
<code>@background</code> function: it runs in a worker process, and this
server answers at once with its job's page. There its lines appear as they are
printed, one every {delay} s, with a progress bar, its result at the end and a
Cancel button.</p>
<form method="post"><button>Start a job</button></form>
<p>Every job: <a href="{jobs}/">{jobs}/</a> (open to this machine).
The code: <code>wsgi_bg/demo.py</code>, or <code>examples/webpy_example.py</code>
to copy.</p>
</body></html>
"""


@background(timeout=600)
def longrunning(lines: int = LINES, delay: float = DELAY) -> str:
    """web.py's ``longrunning``: ``lines`` timed lines, ``delay`` seconds apart,
    after the two lines web.py's ``index.GET`` printed; each line is a step of
    the job's progress."""
    print(f"Started at {now()}")
    print("hit f5 to refresh!")  # (web.py's words: no need, here)
    for i in range(lines):
        time.sleep(delay)
        print(f"{i}: {now()}")
        current_job.progress(i + 1, lines)
    return f"{lines} lines printed"


def make_app(delay: float | None = None) -> WSGIApplication:
    """The demo site: ``GET /`` a page with a button, ``POST /`` starts
    :func:`longrunning` and answers ``303 See Other`` to its job's page;
    anything else (a browser's ``/favicon.ico``) is 404 and starts nothing.

    :param delay: seconds between the ten lines; default :data:`DELAY`.
    """
    seconds = DELAY if delay is None else float(delay)
    if not seconds >= 0:
        raise ValueError(f"delay must be a number >= 0, got {delay!r}")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        if request.path != "/":
            return NotFound()(environ, start_response)
        if request.method == "POST":
            job = longrunning(lines=LINES, delay=seconds)
            response = Response(f"started {job.url}\n", status=303,
                                headers={"Location": job.url})
        elif request.method in ("GET", "HEAD"):
            jobs = environ.get("SCRIPT_NAME", "") + "/_jobs"
            response = Response(
                PAGE.format(lines=LINES, delay=seconds, jobs=escape(jobs)),
                mimetype="text/html")
        else:
            return MethodNotAllowed(["GET", "HEAD", "POST"])(environ, start_response)
        return response(environ, start_response)

    return app


#: The demo site with the default delay.
app = make_app()
