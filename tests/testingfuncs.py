"""Module-level job targets for test_testing.py (workers import them by name)."""
import os
import sys
import time

from wsgi_bg import background, backgrounder, current_job

#: Read by a job; a test changes it to show what a job process sees.
SETTING = "original"


@background
def count_to(n):
    """Report progress and print; stop early when asked to."""
    for i in range(1, n + 1):
        if current_job.cancel_requested:
            print("stopping at", i)
            return "stopped"
        print("step", i)
        current_job.progress(i, n, f"step {i}")
    print("to stderr", file=sys.stderr)
    return current_job.id


@background(timeout=30, show_args=False)
def secret(token):
    return len(token)


def crash_here(value):
    raise ValueError(f"bad value {value!r}")


@background
def marked_crash(value):
    return crash_here(value)


@background
def calls_marked(n):
    return [count_to(n), "after"]


def read_setting():
    return SETTING


def slow(seconds):
    time.sleep(seconds)
    return seconds


def pid():
    return os.getpid()


def echo_view(environ, start_response):
    """A plain WSGI app whose POST /count/<n> starts count_to(n) and
    redirects to its page, as a view would."""
    path = environ["PATH_INFO"]
    if environ["REQUEST_METHOD"] == "POST" and path.startswith("/count/"):
        job = count_to(int(path.rsplit("/", 1)[1]))
        start_response("303 See Other", [("Location", job.url)])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"not a job"]


@backgrounder(timeout=30)
def report_app(environ, start_response):
    print("report for", environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done\n"]
