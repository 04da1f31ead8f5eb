"""A job that shells out: the output of its child processes is the job's too.

A job's file descriptors 1 and 2 are captured, not just ``sys.stdout``, so
whatever a child process writes (``os.system``, ``subprocess`` without
``capture_output``) lands in the job's output in order, between the job's own
prints. The job's children are in its process group: a timeout or a cancel
ends them with it.

Run it::

    python examples/shell_example.py      # then POST to http://127.0.0.1:8080/
"""

from __future__ import annotations

import os
import subprocess
import sys

from werkzeug.wrappers import Request, Response

from wsgi_bg import BackgroundMiddleware, allow_local, background


@background(timeout=120)
def system_report():
    print("== os.system")
    status = os.system("echo hello from a shell; uname -s")
    print("exit status", status)
    print("== subprocess.run")
    subprocess.run(
        [sys.executable, "-c", "import sys; print('hello from a child python');"
         " print('and its stderr', file=sys.stderr)"],
        check=True,
    )
    print("== a failing command")
    done = subprocess.run(["sh", "-c", "echo about to fail >&2; exit 3"])
    print("exit status", done.returncode)
    return done.returncode


def app(environ, start_response):
    request = Request(environ)
    if request.method == "POST":
        job = system_report()
        response = Response(status=303)
        response.headers["Location"] = job.url
        return response(environ, start_response)
    return Response(
        '<form method="post"><button>Run the shell commands</button></form>',
        mimetype="text/html",
    )(environ, start_response)


if __name__ == "__main__":  # required: worker processes import this module
    from werkzeug.serving import run_simple

    with BackgroundMiddleware(app, authorize=allow_local) as mw:
        run_simple("127.0.0.1", int(os.environ.get("PORT", "8080")), mw, threaded=True)
