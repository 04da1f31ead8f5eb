"""An app served by real servers (uWSGI, waitress, gunicorn) in the tests of
tests/test_servers.py. ``WSGI_BG_TEST_DIR``: where jobs leave their marks."""
from __future__ import annotations

import os
import time
from pathlib import Path

from wsgi_bg import (
    BackgroundMiddleware,
    allow_all,
    background,
    backgrounder,
    current_job,
)

MARKS = Path(os.environ.get("WSGI_BG_TEST_DIR", "."))


def mark(name: str, text: str) -> None:
    """Leave a mark for the test, whole: it may read it at any moment."""
    partial = MARKS / f".{name}.partial"
    partial.write_text(text)
    os.replace(partial, MARKS / name)


@background
def double(x):
    return 2 * x


@background
def cooperative():
    """Stops when asked, a little after: it must get its grace."""
    mark(f"cooperative-{os.getpid()}.pid", str(os.getpid()))
    while not current_job.cancel_requested:
        time.sleep(0.05)
    time.sleep(0.3)
    mark("cooperative-stopped", "stopped within its grace")
    return "stopped"


@background
def stubborn():
    """Ignores every cancel: must be killed after its grace."""
    mark(f"stubborn-{os.getpid()}.pid", str(os.getpid()))
    while True:
        time.sleep(0.05)


@backgrounder
def upload(environ, start_response):
    size = len(environ["wsgi.input"].read())
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{size} bytes".encode()]


JOBS = {"/double": lambda: double(21), "/cooperative": cooperative,
        "/stubborn": stubborn}


def site(environ, start_response):
    if environ["PATH_INFO"] == "/upload":
        return upload(environ, start_response)
    start = JOBS.get(environ["PATH_INFO"])
    if start is not None:
        job = start()
        start_response("303 See Other", [("Location", job.url)])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"site"]


app = BackgroundMiddleware(
    site, max_workers=2, authorize=allow_all,
    cancel_grace=float(os.environ.get("WSGI_BG_TEST_GRACE", "2")))
