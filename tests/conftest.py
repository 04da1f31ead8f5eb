from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # job modules importable by workers
# bench/ (not installed) for the tests that share its helpers
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helpers import SESSION_PIDS, assert_no_children  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from rq_workers import RQWorkers  # noqa: E402
from wsgi_bg import BackgroundMiddleware  # noqa: E402
from wsgi_bg.testing import MiddlewareFactory  # noqa: E402

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
    config.addinivalue_line(
        "markers", "runner_contract: a module whose make_mw tests describe how jobs"
        " run, so they also run on the RQ runner (stock rq workers)")
    config.addinivalue_line(
        "markers", "pool_only: a behaviour of the default pool runner alone (in a"
        " runner_contract module); not run on the RQ runner")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    # Under pytest-xdist a test's tmp_path is one level deeper
    # (/tmp/pytest-of-root/pytest-123/popen-gw3/test_name0/), and the
    # servers some tests start with TMPDIR there put multiprocessing's
    # forkserver socket (pymp-*/listener-*) past the 107 bytes an AF_UNIX
    # path may take. A short base of the run's own keeps them under.
    if (getattr(config.option, "numprocesses", None) and config.option.basetemp is None
            and not hasattr(config, "workerinput")):
        config.option.basetemp = tempfile.mkdtemp(prefix="wsgi_bg-tests-")
        config._wsgi_bg_basetemp = config.option.basetemp


def pytest_sessionfinish(session, exitstatus):
    # The base made above goes once the run passed (kept to look into else).
    basetemp = getattr(session.config, "_wsgi_bg_basetemp", None)
    if basetemp and exitstatus == 0:
        shutil.rmtree(basetemp, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    # One contract, every store: tests using make_mw run once per store, but
    # those about the Manager store's own machinery.
    # The RQ runner: only the tests describing how jobs run.
    def wanted(item):
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("store_options") if callspec else None
        if param in ("redis", "redis+rq") and item.get_closest_marker(
                "memory_store_only"):
            return False
        if param == "redis+rq":
            return bool(item.get_closest_marker("runner_contract")
                        and not item.get_closest_marker("pool_only"))
        return True

    kept = [item for item in items if wanted(item)]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
    # The modules whose tests mostly wait (RQ workers' timeouts and sweeps,
    # servers, a browser) first, so that their waits overlap the rest
    # rather than make the run's tail (sorted alike in every xdist worker).
    items[:] = sorted(kept, key=lambda item: item.path.name not in _WAITING_FIRST)


_WAITING_FIRST = ("test_rq_runner.py", "test_examples.py", "test_browser.py")


@pytest.fixture(scope="session")
def redis_server():
    """A redis-server of the test session's own (skips where none is installed).

    Under pytest-xdist a session is one xdist worker: each has its own server,
    RQ workers and queue, and its process checks (helpers.py) see only its own
    descendants, so no xdist worker sees another's jobs or processes."""
    server = RedisServer().start()
    SESSION_PIDS.add(server.process.pid)
    yield server
    server.stop()


#: The RQ queue the session's rq workers take jobs from (each test's jobs
#: still live in a namespace of the test's own); named after the xdist worker
#: too, though each has a Redis of its own.
RQ_TEST_QUEUE = f"wsgi_bg-tests-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


@pytest.fixture(scope="session")
def rq_workers(redis_server):
    """Two stock ``rq worker`` processes of the test session's own."""
    workers = RQWorkers(redis_server.url, RQ_TEST_QUEUE, TEST_SECRET_KEY).start()
    SESSION_PIDS.update(workers.pids)
    yield workers
    workers.stop()


@pytest.fixture(params=[
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("redis+rq", marks=pytest.mark.redis),
])
def store_options(request):
    """The options selecting a store and runner: the default, then Redis, then
    Redis with jobs run by the session's RQ workers (each test gets a namespace
    of its own, as apps sharing one Redis do)."""
    if request.param == "memory":
        yield {}
        return
    server = request.getfixturevalue("redis_server")
    options = {"store": server.url, "namespace": f"test-{uuid.uuid4().hex[:12]}",
               "secret_key": TEST_SECRET_KEY}
    if request.param == "redis+rq":
        import redis
        import rq

        workers = request.getfixturevalue("rq_workers")
        with redis.Redis.from_url(server.url) as connection:
            options["runner"] = rq.Queue(workers.queue, connection=connection)
            yield options  # (its sockets closed after the test's middleware)
        return
    yield options


@pytest.fixture
def session_middleware():
    """The package plugin's ``wsgi_bg_middleware``, for tests whose jobs run
    on the session's RQ workers: its check that nothing is left leaves out
    the session's own processes, such as the job process each RQ worker
    keeps for its next job (see helpers.py)."""
    factory = MiddlewareFactory(check_processes=False)
    try:
        yield factory
    finally:
        factory.close()
        assert_no_children()


@pytest.fixture
def make_mw(store_options, request):
    """Build middlewares that are always shut down, then check nothing is left
    (the ``wsgi_bg_middleware`` fixture of the package's pytest plugin, or
    ``session_middleware`` on RQ); with each store and runner in turn."""
    wsgi_bg_middleware = request.getfixturevalue(
        "session_middleware" if "runner" in store_options else "wsgi_bg_middleware")
    made = []

    def make(app=hello_app, **options) -> BackgroundMiddleware:
        options.setdefault("max_workers", 2)
        options.setdefault("cancel_grace", 1.0)
        for key, value in store_options.items():
            options.setdefault(key, value)
        mw = wsgi_bg_middleware(app, **options)
        made.append(mw)
        return mw

    yield make
    if "runner" in store_options:
        # Jobs on RQ outlive the web process (its shutdown leaves them be):
        # end this test's, so that the shared workers are free for the next.
        for mw in made:
            stop_rq_jobs(mw, store_options["runner"])


def stop_rq_jobs(mw: BackgroundMiddleware, queue, timeout: float = 20.0) -> None:
    from helpers import wait_for

    store = mw.engine.store
    for job_id in store.ids_in_state("queued", "running"):
        store.request_cancel(job_id, 0.0)
    queue.empty()  # a session runs one test at a time: what waits there is this test's
    wait_for(lambda: not store.ids_in_state("queued", "running"), timeout,
             message="this test's RQ jobs to end")


@pytest.fixture
def rq_mw(redis_server, session_middleware):
    """Middlewares on the Redis store and the RQ runner, queueing on
    ``queue`` (the session workers' by default), each test in a namespace of
    its own; this test's jobs end with it."""
    import redis
    import rq

    namespace = f"t-{uuid.uuid4().hex[:12]}"
    made = []

    def make(queue=RQ_TEST_QUEUE, **options) -> BackgroundMiddleware:
        connection = redis.Redis.from_url(redis_server.url)
        options.setdefault("store", redis_server.url)
        options.setdefault("namespace", namespace)
        options.setdefault("secret_key", TEST_SECRET_KEY)
        options.setdefault("cancel_grace", 1.0)
        options.setdefault("runner", rq.Queue(queue, connection=connection))
        mw = session_middleware(hello_app, **options)
        made.append(mw)
        return mw

    yield make
    for mw in made:
        stop_rq_jobs(mw, mw.engine._runner.queue if mw.engine.started else
                     rq.Queue("unused", connection=redis_server.client()))


@pytest.fixture
def mw(make_mw) -> BackgroundMiddleware:
    return make_mw()
