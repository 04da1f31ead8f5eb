"""Job functions, arguments and marked apps for the trust tests (issue 18)."""
from __future__ import annotations

import time

from wsgi_bg import background, backgrounder


class SlowRepr:
    """An argument whose ``__repr__`` (and ``__lt__``, ``__eq__``) would
    sleep for a minute: describing it must not wait for it."""

    def __repr__(self) -> str:
        time.sleep(60)
        return "slow"

    def __lt__(self, other: object) -> bool:
        time.sleep(60)
        return False

    def __eq__(self, other: object) -> bool:
        time.sleep(60)
        return False

    __hash__ = object.__hash__


class SlowName(str):
    """A keyword's name whose formatting would sleep."""

    def __format__(self, spec: str) -> str:
        time.sleep(60)
        return ""

    def __str__(self) -> str:
        time.sleep(60)
        return ""

    __repr__ = __str__


class FailingRepr:
    def __repr__(self) -> str:
        raise RuntimeError("this __repr__ fails")


def takes(*args, **kwargs):
    return len(args) + len(kwargs)


@backgrounder(show_query=("year", "name"))
def login(environ, start_response):
    # Reads the body as an app does, and answers with a session cookie.
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Set-Cookie", "session=NEWSESSION42; HttpOnly")])
    return [b"logged in\n"]


@backgrounder(show_args=False)
def login_hidden(environ, start_response):
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


@background
def sized(data):
    return len(data)


def start_sized(environ, start_response):
    # A view calling a @background function with a large argument.
    from wsgi_bg import CallTooLarge

    size = int(environ["QUERY_STRING"] or 0)
    try:
        job = sized(b"x" * size)
    except CallTooLarge as exc:
        start_response("413 Content Too Large", [("Content-Type", "text/plain")])
        return [str(exc).encode()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [job.id.encode()]


@backgrounder(timeout=30)
def body_size(environ, start_response):
    size = len(environ["wsgi.input"].read())
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{size}\n".encode()]


@background(timeout=3)
def bar_mark_then_long_line(length):
    # "%|" sends its batch to the bar parser; then one long line with no "|",
    # ":" or line break, and a job that outlives its timeout.
    import sys

    sys.stdout.write("%|\n" + "x" * length)
    sys.stdout.flush()
    time.sleep(60)


def _redirect(environ, start_response):
    # Answers with URLs carrying tokens in every header that holds one.
    environ["wsgi.input"].read()
    start_response("302 Found", [
        ("Location", "/done?token=LOCTOKEN1#frag"),
        ("Content-Location", "https://ann:USERPASS2@example.com/r?sid=CLOC3"),
        ("Refresh", "0; url=/next?session=REFRESH4"),
        ("Link", '</p?page=LINK5>; rel="next", </q#access_token=LINK6>; rel="x"'),
        ("Content-Type", "text/plain; charset=utf-8")])
    return [b"moved\n"]


redirects = backgrounder(_redirect)
redirects_hidden = backgrounder(show_args=False)(_redirect)
redirects_listed = backgrounder(show_query=("year", "token"))(_redirect)


def route_redirects(environ, start_response):
    # One site, three marked apps: /hidden..., /listed..., the rest.
    path = environ["PATH_INFO"]
    app = (redirects_hidden if path.startswith("/hidden") else
           redirects_listed if path.startswith("/listed") else redirects)
    return app(environ, start_response)
