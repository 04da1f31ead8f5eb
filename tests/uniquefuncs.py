"""Module-level @background(unique=...) jobs for test_unique.py (workers
import them by name). Each waits on a file the test creates, bounded, never
for a fixed time."""
import os
import signal
import time

from jobfuncs import touch, wait_file
from wsgi_bg import background, backgrounder, current_job


@background(unique=True)
def build(name, flag, how="succeed"):
    """Wait for ``flag``, then end as ``how`` says."""
    touch(flag + ".started")
    if how == "cooperate":  # until asked to stop
        deadline = time.monotonic() + 30
        while not current_job.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.01)
        return "stopped"
    if how == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    wait_file(flag)
    if how == "fail":
        raise ValueError("failed as asked")
    return name


@background(unique=True, timeout=1)
def build_limited(name, flag):
    touch(flag + ".started")
    wait_file(flag)
    return name


@background(unique=lambda user, flag, note="": f"user:{user}")
def by_user(user, flag, note=""):
    wait_file(flag)
    return note


@background(unique=lambda token, flag: f"secret-key-{token[::-1]}")
def keyed_by_secret(token, flag):
    """Its arguments show on its pages (show_args=True); its key, which
    holds what they do not (the token reversed), must show nowhere."""
    wait_file(flag)


@background(unique=lambda flag: 42)
def bad_key(flag):
    pass


def blocker(flag):
    """A plain job that keeps a worker busy until ``flag`` exists."""
    touch(flag + ".started")
    wait_file(flag)


def _wait_for_query_flag(environ, start_response):
    from urllib.parse import parse_qs

    wait_file(parse_qs(environ["QUERY_STRING"])["flag"][0])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"built\n"]


@backgrounder(unique=True)
def report_app(environ, start_response):
    """A marked app: one job per method, path, query and body."""
    return _wait_for_query_flag(environ, start_response)


@backgrounder(unique=lambda request: request.form["report"])
def report_by_form(environ, start_response):
    """A marked app: one job per form field ``report``."""
    return _wait_for_query_flag(environ, start_response)


@backgrounder(unique=True)
def whose_report(environ, start_response):
    """A marked app whose output depends on who asks (its session cookie,
    its Authorization, its REMOTE_USER): one job per request and asker."""
    from urllib.parse import parse_qs

    wait_file(parse_qs(environ["QUERY_STRING"])["flag"][0])
    asker = [environ.get(key, "") for key in
             ("HTTP_COOKIE", "HTTP_AUTHORIZATION", "REMOTE_USER")]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"report of {asker}\n".encode()]
