from __future__ import annotations

import os
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # job modules importable by workers

from helpers import SESSION_PIDS  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from wsgi_bg import BackgroundMiddleware  # noqa: E402

#: The key the Redis store signs with in tests (any 16+ bytes do).
TEST_SECRET_KEY = "test-secret-key-0123456789abcdef"


def hello_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from the app"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "memory_store_only: a behaviour of the default (Manager) store"
        " alone; not run against the Redis store")
    config.addinivalue_line(
        "markers", "redis: runs against a real redis-server (skipped where none is"
        " installed)")


def pytest_collection_modifyitems(config, items):
    # One contract, every store: tests using make_mw run once per store, but
    # those about the Manager store's own machinery.
    kept = [item for item in items
            if not (item.get_closest_marker("memory_store_only")
                    and getattr(item, "callspec", None) is not None
                    and item.callspec.params.get("store_options") == "redis")]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


@pytest.fixture(scope="session")
def redis_server():
    """A redis-server of the test session's own (skips where none is installed)."""
    server = RedisServer().start()
    SESSION_PIDS.add(server.process.pid)
    yield server
    server.stop()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store_options(request):
    """The options selecting a store: the default, then Redis (each test gets a
    namespace of its own, as apps sharing one Redis do)."""
    if request.param == "memory":
        return {}
    server = request.getfixturevalue("redis_server")
    return {"store": server.url, "namespace": f"test-{uuid.uuid4().hex[:12]}",
            "secret_key": TEST_SECRET_KEY}


@pytest.fixture
def make_mw(store_options, wsgi_bg_middleware):
    """Build middlewares that are always shut down, then check nothing is left
    (the ``wsgi_bg_middleware`` fixture of the package's pytest plugin); with
    each store in turn."""

    def make(app=hello_app, **options) -> BackgroundMiddleware:
        options.setdefault("max_workers", 2)
        options.setdefault("cancel_grace", 1.0)
        for key, value in store_options.items():
            options.setdefault(key, value)
        return wsgi_bg_middleware(app, **options)

    return make


@pytest.fixture
def mw(make_mw) -> BackgroundMiddleware:
    return make_mw()
