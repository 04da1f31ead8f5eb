from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # job modules importable by workers

from helpers import assert_no_children  # noqa: E402
from wsgi_bg import BackgroundMiddleware  # noqa: E402


def hello_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from the app"]


@pytest.fixture
def make_mw():
    """Build middlewares that are always shut down, then check nothing is left."""
    made: list[BackgroundMiddleware] = []

    def make(app=hello_app, **options) -> BackgroundMiddleware:
        options.setdefault("max_workers", 2)
        options.setdefault("cancel_grace", 1.0)
        mw = BackgroundMiddleware(app, **options)
        made.append(mw)
        return mw

    yield make
    for mw in made:
        mw.shutdown(wait=False)
    assert_no_children()


@pytest.fixture
def mw(make_mw) -> BackgroundMiddleware:
    return make_mw()
