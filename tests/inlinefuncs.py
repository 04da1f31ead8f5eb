"""Module-level job targets for test_inline.py (runner="inline").

Inline jobs run in the test's own process: module globals here are the
test's, so a test reaches a running job through them (events, a middleware).
"""
import logging
import os
import sys
import threading

from wsgi_bg import background, backgrounder, current_job

#: A job reads it; a test monkeypatches it.
SETTING = "original"

#: Set before any job runs, bound to the stream of the time (as an app's
#: logging configured at import is).
early_logger = logging.getLogger("inlinefuncs.early")
early_logger.addHandler(logging.StreamHandler(sys.stderr))
early_logger.setLevel(logging.INFO)
early_logger.propagate = False

#: Hand-shakes with a test thread while a job runs.
STARTED = threading.Event()
GO = threading.Event()

#: The middleware a job submits a nested job to (set by a test).
MW = None


def fetch(step):
    """What a job calls for each step; tests replace it."""
    return step


@background
def steps(n):
    """Report progress, stop when asked to."""
    total = 0
    for i in range(1, n + 1):
        if current_job.cancel_requested:
            print("stopping at", i)
            return "stopped"
        total += fetch(i)
        print("step", i)
        current_job.progress(i, n, f"step {i}")
    return total


@background
def read_setting():
    print("setting is", SETTING)
    return SETTING


def outputs():
    print("1 print")
    print("2 stderr", file=sys.stderr)
    early_logger.info("3 logging")
    sys.stdout.write("4 write\n")
    os.system("echo '5 os.system'")
    return current_job.id


def wait_for_test():
    print("job line")
    STARTED.set()
    GO.wait(10)
    print("job end")
    return "done"


@background
def inner_marked(x):
    print("inner", x)
    return x * 2


@background
def outer_marked(x):
    print("outer", x)
    return [inner_marked(x), current_job.id]


def submits_nested(x):
    print("outer before")
    nested = MW.submit(inner_marked, x)
    print("outer after")
    return [nested.id, nested.state.value, nested.result, current_job.id]


def crash_here(value):
    raise ValueError(f"bad value {value!r}")


@background
def marked_crash(value):
    return crash_here(value)


def job_view(environ, start_response):
    """POST /steps/<n> starts steps(n) and redirects to its page."""
    path = environ["PATH_INFO"]
    if environ["REQUEST_METHOD"] == "POST" and path.startswith("/steps/"):
        job = steps(int(path.rsplit("/", 1)[1]))
        assert job.done  # inline: over by the time the call returns
        start_response("303 See Other", [("Location", job.url)])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"not a job"]


@backgrounder
def report_app(environ, start_response):
    print("report for", environ["PATH_INFO"], SETTING)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"body line\n"]
