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

Here ``/`` is a page with a button. Pressing it (a ``POST``) calls
``longrunning``, marked ``@background``: it runs in a worker process, and the
browser is sent at once to the job's page, where the lines appear as they are
printed (no F5), with a progress bar, the call's arguments and its result. A
``GET`` (a browser, a health check) starts nothing.

Run it, from the repository's root::

    python examples/webpy_example.py          # then open http://127.0.0.1:8080/

(``PORT=8081 python examples/webpy_example.py`` serves another port.)
``wsgi-bg demo`` serves the same code from the installed package
(:mod:`wsgi_bg.demo`).
"""

from __future__ import annotations

import os
import time
from datetime import datetime

from markupsafe import escape
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.wrappers import Request, Response

from wsgi_bg import BackgroundMiddleware, allow_local, background, current_job

#: Seconds between the ten lines (the environment variable
#: WSGI_BG_DEMO_DELAY changes it; the tests use make_app(delay=...)).
DELAY = float(os.environ.get("WSGI_BG_DEMO_DELAY", "1"))
LINES = 10

now = datetime.now

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>web.py's background example</title></head><body>
<h1>web.py's background example</h1>
<p>The button calls <code>longrunning(lines={lines}, delay={delay})</code> in a
worker process and sends you to its job's page.</p>
<form method="post"><button>Start a job</button></form>
<p>Every job: <a href="{jobs}/">{jobs}/</a></p>
</body></html>
"""


@background(timeout=600)
def longrunning(lines=LINES, delay=DELAY):
    print(f"Started at {now()}")
    print("hit f5 to refresh!")  # (web.py's words: no need, here)
    for i in range(lines):
        time.sleep(delay)
        print(f"{i}: {now()}")
        current_job.progress(i + 1, lines)
    return f"{lines} lines printed"


def make_app(delay=None):
    """The site: ``GET /`` the page, ``POST /`` starts :func:`longrunning`
    and answers 303 to its job's page; anything else is 404 (so a browser's
    /favicon.ico starts no job)."""
    seconds = DELAY if delay is None else float(delay)

    def app(environ, start_response):
        request = Request(environ)
        if request.path != "/":
            return NotFound()(environ, start_response)
        if request.method == "POST":
            job = longrunning(lines=LINES, delay=seconds)
            response = Response(status=303, headers={"Location": job.url})
        elif request.method in ("GET", "HEAD"):
            jobs = environ.get("SCRIPT_NAME", "") + "/_jobs"
            response = Response(PAGE.format(lines=LINES, delay=seconds,
                                            jobs=escape(jobs)), mimetype="text/html")
        else:
            return MethodNotAllowed(["GET", "HEAD", "POST"])(environ, start_response)
        return response(environ, start_response)

    return app


app = make_app()


if __name__ == "__main__":  # required: worker processes import this module
    from werkzeug.serving import run_simple

    # allow_local: the job list at /_jobs/ is open to this machine only.
    with BackgroundMiddleware(app, authorize=allow_local) as mw:
        run_simple("127.0.0.1", int(os.environ.get("PORT", "8080")), mw, threaded=True)
