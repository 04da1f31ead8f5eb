"""web.py's ``web.background`` example, ported to wsgi_bg.

The original (web.py's cookbook, 2008)::

    class index:
        @backgrounder
        def GET(self):
            print "Started at %s" % now()
            print "hit f5 to refresh!"
            longrunning()

    @background
    def longrunning():
        for i in range(10):
            sleep(1)
            print "%s: %s" % (i, now())

Here ``index`` is a WSGI function marked with :func:`~wsgi_bg.backgrounder`:
each request to it runs as a job in a worker process, and the browser is sent
at once to the job's page, where the lines appear as they are printed (no F5).
``longrunning``, called inside that job, runs inline and its lines join the
same output.

Run it::

    python examples/webpy_example.py          # then open http://127.0.0.1:8080/

``wsgi-bg demo`` serves the same code from the installed package
(:mod:`wsgi_bg.demo`).
"""

from __future__ import annotations

import os
import time
from datetime import datetime

from werkzeug.exceptions import NotFound

from wsgi_bg import BackgroundMiddleware, allow_local, background, backgrounder

#: Seconds between the ten lines (the environment variable
#: WSGI_BG_DEMO_DELAY changes it; the tests use make_app(delay=...)).
DELAY = float(os.environ.get("WSGI_BG_DEMO_DELAY", "1"))
DELAY_KEY = "webpy_example.delay"  # travels to the job in the request's environ

now = datetime.now


@backgrounder
def index(environ, start_response):
    print(f"Started at {now()}")
    print("hit f5 to refresh!")
    longrunning(float(environ.get(DELAY_KEY, DELAY)))
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return []


@background
def longrunning(delay=DELAY):
    for i in range(10):
        time.sleep(delay)
        print(f"{i}: {now()}")


def make_app(delay=None):
    """The site: ``/`` runs :func:`index` as a job; anything else is 404
    (so a browser's /favicon.ico starts no job)."""
    seconds = DELAY if delay is None else float(delay)

    def app(environ, start_response):
        if environ.get("PATH_INFO", "") not in ("", "/"):
            return NotFound()(environ, start_response)
        environ[DELAY_KEY] = str(seconds)
        return index(environ, start_response)

    return app


app = make_app()


if __name__ == "__main__":  # required: worker processes import this module
    from werkzeug.serving import run_simple

    # allow_local: the job list at /_jobs/ is open to this machine only.
    with BackgroundMiddleware(app, authorize=allow_local) as mw:
        run_simple("127.0.0.1", 8080, mw, threaded=True)
