"""A Flask app whose views start background jobs and send the user to them.

``send_report`` and ``rebuild_index`` are ``@background`` functions: called in
a view they return a :class:`~wsgi_bg.Job` at once, and the view redirects to
``job.url``, the job's live status page. Nothing about Flask changes: wrap the
finished app once, where you serve it.

Run it::

    wsgi-bg serve flask_example:app --authorize local     # from examples/
    # or: python examples/flask_example.py

then ``curl -X POST -L http://127.0.0.1:8080/reports/2026`` or open
http://127.0.0.1:8080/ in a browser.
"""

from __future__ import annotations

import os
import time

from flask import Flask, redirect

from wsgi_bg import BackgroundMiddleware, allow_local, background, current_job

app = Flask(__name__)
#: Seconds each step of a job takes. Configuration lives in the server
#: process: views pass it to the job as an argument (the tests set it to 0).
app.config["JOB_STEP"] = 0.5


@background(timeout=600)
def send_report(year, step=0.5):
    """Pretend to build and mail a yearly report; report progress as it goes."""
    months = 12
    for month in range(1, months + 1):
        if current_job.cancel_requested:
            print("cancelled: stopping before", month)
            return None
        time.sleep(step)
        print(f"{year}-{month:02d}: rendered")
        current_job.progress(month, months, f"month {month} of {months}")
    return {"year": year, "pages": months * 4}


@background
def rebuild_index(step=0.5):
    print("rebuilding the search index…")
    time.sleep(step)
    print("done")
    return 1234


@app.get("/")
def home():
    return (
        "<h1>Flask + wsgi_bg</h1>"
        '<form method="post" action="/reports/2026"><button>Build the 2026'
        " report</button></form>"
        '<form method="post" action="/reindex"><button>Rebuild the index'
        "</button></form>"
    )


@app.post("/reports/<int:year>")
def report(year):
    # A Job, at once; the work runs in a worker process. Arguments must pickle.
    job = send_report(year, step=app.config["JOB_STEP"])
    return redirect(job.url, code=303)


@app.post("/reindex")
def reindex():
    job = rebuild_index(step=app.config["JOB_STEP"])
    return redirect(job.url, code=303)


if __name__ == "__main__":  # required: worker processes import this module
    from werkzeug.serving import run_simple

    with BackgroundMiddleware(app, authorize=allow_local) as mw:
        run_simple("127.0.0.1", int(os.environ.get("PORT", "8080")), mw, threaded=True)
