"""wsgi_bg composed with Werkzeug's ``DispatcherMiddleware``, jobs under /admin.

A public site at ``/`` and an admin app at ``/admin`` whose report runs as a
background job. Two ways to wire it, both keeping jobs and their pages under
``/admin``:

1. :func:`marked_under_admin`: the middleware wraps the whole site; the admin
   app is *marked* with ``backgrounder`` and mounted at ``/admin``; the status
   pages are put at ``/admin/jobs`` with ``prefix``.
2. :func:`middleware_under_admin`: the middleware itself is mounted at
   ``/admin``; the public site never sees it. It learns its mount point from
   ``SCRIPT_NAME``, so every link it makes carries ``/admin``
   (``/admin/_jobs/<id>``).

Run it::

    python examples/dispatcher_example.py      # way 2; open http://127.0.0.1:8080/admin/
"""

from __future__ import annotations

import os
import time

from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Request, Response

from wsgi_bg import BackgroundMiddleware, allow_local, background, backgrounder

#: Seconds each export batch takes.
STEP = 0.2


def site(environ, start_response):
    """The public site: knows nothing about jobs."""
    if environ.get("PATH_INFO", "") not in ("", "/"):
        return NotFound()(environ, start_response)
    return Response("public site\n")(environ, start_response)


@background
def export_users(fmt="csv", step=STEP):
    for n in range(3):
        time.sleep(step)
        print(f"exported batch {n} as {fmt}")
    return f"users.{fmt}"


@backgrounder
def admin_report(environ, start_response):
    """An admin page whose every request is a job (way 1)."""
    request = Request(environ)
    print("report for", request.script_root + request.path)
    # Inside a job a @background function runs inline: its lines join this job.
    print("wrote", export_users(request.args.get("format", "csv")))
    return Response("report done\n")(environ, start_response)


def admin(environ, start_response):
    """A plain admin app whose view starts a @background job (way 2)."""
    request = Request(environ)
    if request.method == "POST" and request.path == "/export":
        job = export_users(request.args.get("format", "csv"))
        response = Response(status=303)
        response.headers["Location"] = job.url
        return response(environ, start_response)
    return Response(
        '<form method="post" action="export"><button>Export users</button></form>',
        mimetype="text/html",
    )(environ, start_response)


def marked_under_admin(**options):
    """Way 1. Returns ``(app, middleware)``; status pages at ``/admin/jobs``."""
    composed = DispatcherMiddleware(site, {"/admin/report": admin_report})
    mw = BackgroundMiddleware(composed, prefix="/admin/jobs", **options)
    return mw, mw


def middleware_under_admin(**options):
    """Way 2. Returns ``(app, middleware)``; status pages at ``/admin/_jobs``."""
    mw = BackgroundMiddleware(admin, **options)
    return DispatcherMiddleware(site, {"/admin": mw}), mw


if __name__ == "__main__":  # required: worker processes import this module
    from werkzeug.serving import run_simple

    application, mw = middleware_under_admin(authorize=allow_local)
    with mw:
        port = int(os.environ.get("PORT", "8080"))
        run_simple("127.0.0.1", port, application, threaded=True)
