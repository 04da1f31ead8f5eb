"""Jobs on RQ workers: the web process queues, ``rq worker`` runs.

The web process keeps no pool: each job is queued on the RQ queue of its
namespace (``wsgi_bg`` for the default namespace, ``wsgi_bg.<namespace>``
for another: ``NAMESPACE=shop`` queues on ``wsgi_bg.shop``, and the app
prints the worker command to run) and run by an ``rq worker`` on any machine
that reaches the same Redis, can import this module and has the same
``WSGI_BG_SECRET_KEY``. A job waiting where no worker listens says so on its
page, with that command. Its page shows the output live, as with the pool;
stop and restart the web process meanwhile, and the job goes on.

Run it, from the repository's root, in three terminals::

    redis-server                                            # 1. Redis
    export WSGI_BG_SECRET_KEY=change-me-to-32-random-bytes  # in 2. and 3.
    # 2. (-w: wsgi_bg's worker class runs wsgi_bg's jobs without a work horse)
    rq worker -w wsgi_bg.rq_worker.Worker wsgi_bg -u redis://localhost:6379 -P examples
    python examples/rq_example.py      # 3. then open http://127.0.0.1:8080/

(``pip install "wsgi_bg[rq]"`` first, for rq and redis.)
"""

from __future__ import annotations

import os
import time
from typing import Any

from werkzeug.wrappers import Request, Response

from wsgi_bg import BackgroundMiddleware, allow_local, background, current_job
from wsgi_bg.runners.rq import queue_name

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
NAMESPACE = os.environ.get("NAMESPACE", "wsgi_bg")


@background(timeout=600)
def build_report(months: int = 12, delay: float = 0.5) -> dict[str, Any]:
    """Runs on an RQ worker: prints, reports progress, returns a result."""
    for month in range(1, months + 1):
        time.sleep(delay)
        print(f"month {month:02d} done on host {os.uname().nodename},"
              f" pid {os.getpid()}")
        current_job.progress(month, months, f"month {month}")
    return {"months": months}


def site(environ: Any, start_response: Any) -> Any:
    request = Request(environ)
    if request.method == "POST":
        job = build_report(months=int(request.form.get("months", 12)))
        response = Response(status=303)
        response.headers["Location"] = job.url
        return response(environ, start_response)
    return Response(
        '<form method="post"><input name="months" value="12">'
        "<button>Build the report on an RQ worker</button></form>",
        mimetype="text/html",
    )(environ, start_response)


def worker_command(namespace: str = NAMESPACE) -> str:
    """The command that starts a worker for this app's jobs: on its
    namespace's queue."""
    return (f"rq worker -w wsgi_bg.rq_worker.Worker {queue_name(namespace)}"
            f" -u {REDIS_URL} -P examples")


def make_app(**options: Any) -> BackgroundMiddleware:
    options.setdefault("store", REDIS_URL)
    options.setdefault("namespace", NAMESPACE)
    options.setdefault("runner", "rq")
    options.setdefault("authorize", allow_local)
    return BackgroundMiddleware(site, **options)


if __name__ == "__main__":
    from werkzeug.serving import run_simple

    # The app from the module imported by its name, not from __main__: jobs
    # are pickled as rq_example.build_report, which the workers can import.
    import rq_example

    port = int(os.environ.get("PORT", "8080"))
    print("Start workers with:", worker_command())
    run_simple("127.0.0.1", port, rq_example.make_app(), threaded=True)
