"""Progress: report it with ``current_job.progress``, or let a tqdm bar do it.

- :func:`count_up` calls ``current_job.progress(done, total, message)``; the
  status page draws a progress bar from it, and ``job.progress`` returns the
  last report.
- :func:`crunch` uses tqdm, writing its bar to stderr as usual. The bar's
  carriage-return redraws are collapsed (the page shows the line's latest
  state, not thousands of copies) and the bar is read as the job's progress.

Run it::

    python examples/progress_example.py   # then open http://127.0.0.1:8080/
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm
from werkzeug.wrappers import Request, Response

from wsgi_bg import BackgroundMiddleware, allow_local, background, current_job


@background
def count_up(total=20, delay=0.25):
    for done in range(1, total + 1):
        if current_job.cancel_requested:
            return done - 1
        time.sleep(delay)
        current_job.progress(done, total, f"step {done} of {total}")
    print(f"counted to {total}")
    return total


@background
def crunch(total=200, delay=0.02, mininterval=0.1):
    """A tqdm loop, unchanged from what you would run in a terminal."""
    for _ in tqdm(range(total), desc="crunching", file=sys.stderr,
                  mininterval=mininterval):
        time.sleep(delay)
    print("crunched", total)


def app(environ, start_response):
    request = Request(environ)
    if request.method == "POST":
        job = crunch() if request.path == "/tqdm" else count_up()
        response = Response(status=303)
        response.headers["Location"] = job.url
        return response(environ, start_response)
    return Response(
        '<form method="post" action="/count"><button>current_job.progress'
        '</button></form><form method="post" action="/tqdm"><button>tqdm'
        "</button></form>",
        mimetype="text/html",
    )(environ, start_response)


if __name__ == "__main__":  # required: worker processes import this module
    from werkzeug.serving import run_simple

    with BackgroundMiddleware(app, authorize=allow_local) as mw:
        run_simple("127.0.0.1", int(os.environ.get("PORT", "8080")), mw, threaded=True)
