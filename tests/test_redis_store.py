"""What only a shared store has: namespaces, several processes, restarts,
crashed server processes, an unreachable Redis, signed pickles, and the
options that choose it. The Store contract itself runs on Redis in
test_store.py and, through ``make_mw``, in every engine and page test."""
from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from importlib import resources
from pathlib import Path

import psutil
import pytest
import requests
import webtest

import redisfuncs
import wsgi_bg
from conftest import TEST_SECRET_KEY
from helpers import wait_for
from redis_server import RedisServer, free_port
from wsgi_bg import BackgroundMiddleware, JobState, ResultUnavailable, allow_all
from wsgi_bg.exceptions import StoreUnavailable
from wsgi_bg.options import Settings
from wsgi_bg.stores import Ending, open_backend
from wsgi_bg.stores.signing import SECRET_KEY_ENV

pytestmark = pytest.mark.redis
TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def redis_mw(redis_server, wsgi_bg_middleware):
    """Middlewares on the session's Redis, all in one namespace of the test's
    own unless told otherwise: each stands for one server process."""
    namespace = f"t-{uuid.uuid4().hex[:12]}"

    def make(app=redisfuncs.site, **options):
        options.setdefault("store", redis_server.url)
        options.setdefault("namespace", namespace)
        options.setdefault("secret_key", TEST_SECRET_KEY)
        options.setdefault("max_workers", 1)
        options.setdefault("cancel_grace", 1.0)
        return wsgi_bg_middleware(app, **options)

    return make


# -- the Lua scripts ----------------------------------------------------------------
def test_every_lua_script_the_store_loads_is_shipped_in_the_wheel():
    """Each script is a file of wsgi_bg/stores/lua/, read with
    importlib.resources: one left out of pyproject.toml's package-data would
    be missing from an installed wheel (an editable install still finds it)."""
    from wsgi_bg.stores import redis as redis_store

    package = Path(wsgi_bg.__file__).parent
    with open(Path(TESTS).parent / "pyproject.toml", "rb") as f:
        globs = tomllib.load(f)["tool"]["setuptools"]["package-data"]["wsgi_bg"]
    shipped = {path for pattern in globs for path in package.glob(pattern)}
    lua = resources.files("wsgi_bg.stores") / "lua"
    loaded = ("lib", *redis_store.SCRIPTS)
    for name in loaded:
        path = lua / f"{name}.lua"
        assert path.is_file(), name
        assert package / "stores" / "lua" / f"{name}.lua" in shipped, name
        assert redis_store.script_source(name).endswith(path.read_text()), name
    # and no file lies there unused
    assert sorted(p.name for p in lua.iterdir()) == sorted(f"{n}.lua" for n in loaded)


# -- choosing the store ----------------------------------------------------------
def test_a_redis_store_without_a_secret_key_refuses_to_start(monkeypatch):
    monkeypatch.delenv(SECRET_KEY_ENV, raising=False)
    with pytest.raises(ValueError, match=r"needs a secret key.*secrets.token_hex"
                       r".*WSGI_BG_SECRET_KEY"):
        BackgroundMiddleware(redisfuncs.site, store="redis://127.0.0.1:1/0")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        BackgroundMiddleware(redisfuncs.site, store="redis://127.0.0.1:1/0",
                             secret_key="short")


def test_the_secret_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(SECRET_KEY_ENV, TEST_SECRET_KEY)
    mw = BackgroundMiddleware(redisfuncs.site, store="redis://127.0.0.1:1/0")
    assert mw.engine.shared_store and not mw.engine.started  # nothing connects


@pytest.mark.parametrize("store", [
    pytest.param("mysql://localhost/jobs", id="other-url"),
    pytest.param(42, id="number"),
    pytest.param("localhost:6379", id="no-scheme"),
])
def test_an_unknown_store_is_refused(store):
    with pytest.raises(ValueError, match="store must be None.*Redis URL"):
        BackgroundMiddleware(redisfuncs.site, store=store)


def test_a_bad_namespace_is_refused():
    with pytest.raises(ValueError, match="namespace must be"):
        BackgroundMiddleware(redisfuncs.site, store="redis://127.0.0.1:1/0",
                             namespace="a b:c", secret_key=TEST_SECRET_KEY)


def test_without_the_redis_package_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis fails
    monkeypatch.delitem(sys.modules, "wsgi_bg.stores.redis", raising=False)
    with pytest.raises(ImportError, match=r'pip install "wsgi_bg\[redis\]"'):
        open_backend(Settings(store="redis://127.0.0.1:1/0", namespace="n",
                              secret_key=TEST_SECRET_KEY))


def test_a_client_object_selects_the_redis_store(redis_server, wsgi_bg_middleware):
    client = redis_server.client()
    mw = wsgi_bg_middleware(redisfuncs.site, store=client, secret_key=TEST_SECRET_KEY,
                            namespace=f"c-{uuid.uuid4().hex[:8]}", max_workers=1)
    job = mw.submit(redisfuncs.ticker, "/nonexistent", 0.0)  # ends at its deadline
    job.cancel()
    assert job.wait(10).state is JobState.CANCELLED
    assert client.exists(f"{mw.engine._backend.link().namespace}:job:{job.id}")
    client.close()


def test_a_unix_socket_url_selects_the_redis_store(redis_server, wsgi_bg_middleware,
                                                   tmp_path):
    mw = wsgi_bg_middleware(redisfuncs.site, store=redis_server.unix_url,
                            secret_key=TEST_SECRET_KEY, max_workers=1,
                            namespace=f"u-{uuid.uuid4().hex[:8]}")
    job = mw.submit(redisfuncs.ticker, str(tmp_path / "flag"))
    (tmp_path / "flag").touch()
    assert job.wait(10).state is JobState.SUCCEEDED
    assert "unix:" in mw.engine._backend.link().key


def test_a_rediss_url_talks_tls(wsgi_bg_middleware, tmp_path):
    server = RedisServer(tls=True).start()
    try:
        mw = wsgi_bg_middleware(redisfuncs.site, store=server.url,
                                secret_key=TEST_SECRET_KEY, max_workers=1)
        job = mw.submit(redisfuncs.ticker, str(tmp_path / "flag"))
        (tmp_path / "flag").touch()
        assert job.wait(10).state is JobState.SUCCEEDED  # workers connect too
        mw.shutdown()
    finally:
        server.stop()


# -- several processes, one store --------------------------------------------------
def test_namespaces_keep_apps_apart(redis_mw, tmp_path):
    shop, blog = redis_mw(namespace=f"shop-{uuid.uuid4().hex[:8]}"), redis_mw(
        namespace=f"blog-{uuid.uuid4().hex[:8]}")
    job = shop.submit(redisfuncs.ticker, str(tmp_path / "flag"))
    (tmp_path / "flag").touch()
    job.wait(10)
    assert shop.get_job(job.id) is not None
    assert blog.get_job(job.id) is None and blog.jobs() == []
    assert sum(blog.engine.store.counts().values()) == 0


def test_every_process_serves_every_job_and_cancels_it(redis_mw, tmp_path):
    started_here, elsewhere = redis_mw(), redis_mw(authorize=allow_all)
    job = started_here.submit(redisfuncs.ticker, str(tmp_path / "never"))
    client = webtest.TestApp(elsewhere)
    page = wait_for(lambda: (r := client.get(f"/_jobs/api/jobs/{job.id}")).json[
        "output"].count("tick") >= 3 and r, message="live output seen elsewhere")
    assert page.json["state"] == "running"
    assert client.get(f"/_jobs/{job.id}").status_int == 200
    assert job.id in [j["id"] for j in client.get("/_jobs/api/jobs").json["jobs"]]
    asked = time.monotonic()
    client.post(f"/_jobs/api/jobs/{job.id}/cancel")
    job.wait(10)
    # ticker ignores cancel: killed after cancel_grace (1 s), within 1 s more.
    assert time.monotonic() - asked < 1.0 + 1.0 + 0.5
    assert job.state is JobState.CANCELLED
    assert elsewhere.get_job(job.id).to_dict()["cancelled_how"] == "killed"


def test_a_queued_job_cancelled_elsewhere_never_runs(redis_mw, tmp_path):
    started_here, elsewhere = redis_mw(), redis_mw()
    first = started_here.submit(redisfuncs.ticker, str(tmp_path / "flag"))
    queued = started_here.submit(redisfuncs.ticker, str(tmp_path / "flag"))
    wait_for(lambda: first.state is JobState.RUNNING)
    assert elsewhere.get_job(queued.id).cancel()
    (tmp_path / "flag").touch()
    first.wait(10)
    assert queued.state is JobState.CANCELLED and queued.started_at is None


def test_shutdown_of_one_process_leaves_the_others_jobs_alone(redis_mw, tmp_path):
    one, other = redis_mw(), redis_mw()
    job = other.submit(redisfuncs.ticker, str(tmp_path / "flag"))
    wait_for(lambda: job.state is JobState.RUNNING)
    one.submit(redisfuncs.ticker, str(tmp_path / "flag"))  # starts one's engine
    one.shutdown()
    assert job.state is JobState.RUNNING and not job.cancel_requested
    (tmp_path / "flag").touch()
    assert job.wait(10).state is JobState.SUCCEEDED


# -- trust: nothing planted in Redis runs ------------------------------------------
@pytest.mark.parametrize("planted", ["unsigned", "other-key"])
def test_a_planted_result_is_never_loaded(redis_mw, redis_server, tmp_path, planted):
    mw = redis_mw()
    job = mw.submit(redisfuncs.ticker, str(tmp_path / "flag"))
    (tmp_path / "flag").touch()
    job.wait(10)
    assert isinstance(job.result, int)
    evidence = tmp_path / "code-ran"
    payload = pickle.dumps(redisfuncs.Planted(str(evidence)))
    namespace = mw.engine._backend.link().namespace
    if planted == "other-key":
        from wsgi_bg.stores.signing import Signer

        payload = Signer(b"someone else's key!!").sign("result", job.id, payload,
                                                       namespace=namespace)
    client = redis_server.client()
    client.set(f"{namespace}:result:{job.id}", payload)
    client.close()
    with pytest.raises(ResultUnavailable,
                       match=r"(signature check|not signed).*not loaded"):
        job.result  # noqa: B018
    assert not evidence.exists()
    assert job.error is None  # the read wrote nothing (see below)


def test_reading_a_result_with_another_key_writes_nothing(redis_mw, redis_server,
                                                           tmp_path):
    mw = redis_mw()
    job = mw.submit(redisfuncs.ticker, str(tmp_path / "flag"))
    (tmp_path / "flag").touch()
    assert job.wait(10).state is JobState.SUCCEEDED
    client = redis_server.client()
    namespace = mw.engine._backend.link().namespace
    stored = {key: client.dump(key) for key in client.keys(f"{namespace}:*")}
    misconfigured = redis_mw(secret_key="another-secret-key-0123456789")
    with pytest.raises(ResultUnavailable, match="signature check"):
        misconfigured.get_job(job.id).result  # noqa: B018
    assert {key: client.dump(key) for key in client.keys(f"{namespace}:*")} == stored
    assert job.error is None and isinstance(job.result, int)  # as it was


def test_a_signed_value_does_not_run_in_another_namespace(redis_mw, redis_server,
                                                          tmp_path):
    from wsgi_bg.stores.signing import BadSignature

    shop, blog = redis_mw(namespace=f"shop-{uuid.uuid4().hex[:8]}"), redis_mw(
        namespace=f"blog-{uuid.uuid4().hex[:8]}")
    job = shop.submit(redisfuncs.ticker, str(tmp_path / "flag"))
    (tmp_path / "flag").touch()
    assert job.wait(10).state is JobState.SUCCEEDED
    client = redis_server.client()
    here, there = (mw.engine._backend.link().namespace for mw in (shop, blog))
    for kind in ("job", "call", "result"):  # the whole job copied over, same key
        client.restore(f"{there}:{kind}:{job.id}", 0,
                       client.dump(f"{here}:{kind}:{job.id}"))
    copied = blog.get_job(job.id)
    assert copied is not None and copied.state is JobState.SUCCEEDED
    with pytest.raises(BadSignature, match=f"stored call of job {job.id}.*not loaded"):
        blog.rerun(job.id)
    with pytest.raises(ResultUnavailable, match="signature check"):
        copied.result  # noqa: B018
    assert blog.engine.store.counts()["queued"] == 0  # nothing ran again there


def test_a_value_signed_in_the_first_format_is_refused_with_a_message(
        redis_mw, redis_server, tmp_path):
    import hashlib
    import hmac

    mw = redis_mw()
    job = mw.submit(redisfuncs.ticker, str(tmp_path / "flag"))
    (tmp_path / "flag").touch()
    assert job.wait(10).state is JobState.SUCCEEDED
    evidence = tmp_path / "code-ran"
    data = pickle.dumps(redisfuncs.Planted(str(evidence)))
    mac = hmac.new(TEST_SECRET_KEY.encode(), digestmod=hashlib.sha256)
    for part in (b"result", job.id.encode(), data):  # the first format's MAC
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    client = redis_server.client()
    namespace = mw.engine._backend.link().namespace
    client.set(f"{namespace}:result:{job.id}", b"wsgi_bg.1" + mac.digest() + data)
    with pytest.raises(ResultUnavailable, match="first format.*not loaded"):
        job.result  # noqa: B018
    assert not evidence.exists() and job.error is None


# -- memory ------------------------------------------------------------------------
@pytest.mark.parametrize(("written", "chunk"), [
    pytest.param(200 * 1024, 100, id="under-the-limit-in-small-writes"),
    pytest.param(512 * 1024, 4096, id="twice-the-limit"),
    pytest.param(512 * 1024, 100_000, id="twice-the-limit-in-big-writes"),
    pytest.param(2 * 1024 * 1024, 8192, id="eight-times-the-limit"),
])
def test_a_finished_job_holds_about_max_output_bytes(redis_server, written, chunk):
    from wsgi_bg.stores.redis import RedisStore, connect, connection_settings
    from wsgi_bg.stores.signing import Signer

    limit = 256 * 1024
    client = connect(connection_settings(redis_server.url))
    namespace = f"mem-{uuid.uuid4().hex[:8]}"
    store = RedisStore(client, namespace=namespace, keep_finished=10, job_ttl=3600,
                       signer=Signer(TEST_SECRET_KEY.encode()),
                       max_output_bytes=limit)
    store.create({"id": "j", "name": "n", "created_at": time.time(), "timeout": None,
                  "started_at": None, "ended_at": None, "result": None,
                  "error": None, "progress": None, "cancel_requested": False,
                  "cancel_grace": None, "url": None, "pid": None}, 10)
    assert store.start("j", 1)

    def used() -> int:  # what Redis holds for the job: record, output, head
        return sum(client.memory_usage(f"{namespace}:{kind}:j") or 0
                   for kind in ("job", "out", "head"))

    peak, sent = 0, 0
    while sent < written:
        store.relay("j", "x" * chunk, None)
        sent += chunk
        peak = max(peak, used())
    store.finish("j", Ending("succeeded"))
    try:
        # Redis's allocator rounds each value up to a size class (at most 25 %).
        assert used() <= 1.25 * limit + 4096, used() / limit
        assert peak <= 2.6 * limit + 4096, peak / limit  # while it runs
        text, offset = store.read_output("j", 0)
        assert offset == sent and len(text.encode()) <= limit + 200  # (+ marker)
    finally:
        client.connection_pool.disconnect()


@pytest.mark.timeout(60)
def test_a_full_redis_answers_503(wsgi_bg_middleware, own_redis, tmp_path):
    mw = wsgi_bg_middleware(redisfuncs.site, store=own_redis.url,
                            secret_key=TEST_SECRET_KEY, max_workers=1)
    client = webtest.TestApp(mw)
    done = tmp_path / "done"
    done.touch()
    first = mw.submit(redisfuncs.ticker, str(done))
    assert first.wait(10).state is JobState.SUCCEEDED
    admin = own_redis.client()
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")  # full: every write is refused
    try:
        answer = client.get(f"/start?flag={done}", status=503)
        assert answer.headers["Retry-After"] and "is full" in answer.text
        assert client.get(f"/_jobs/api/jobs/{first.id}").json["state"] == "succeeded"
    finally:
        admin.config_set("maxmemory", "0")
    assert mw.submit(redisfuncs.ticker, str(done)).wait(10).state is JobState.SUCCEEDED


# -- records changed outside wsgi_bg ---------------------------------------------------
@pytest.mark.parametrize(("field", "value", "says"), [
    pytest.param("output_size", "abc", "output_size is not a number", id="output_size"),
    pytest.param("created_at", '"yesterday"', "created_at is 'yesterday', not a number",
                 id="created_at"),
    pytest.param("pid", "not json", "pid is b'not json'", id="not-json"),
    pytest.param("result", None, "result is", id="a-pickle"),
])
def test_a_corrupt_record_is_unreadable_and_harms_no_other(
        redis_mw, redis_server, tmp_path, field, value, says):
    mw = redis_mw(authorize=allow_all, max_workers=2)
    (tmp_path / "flag").touch()
    bad, good = (mw.submit(redisfuncs.ticker, str(tmp_path / "flag")) for _ in "ab")
    assert bad.wait(10).state is good.wait(10).state is JobState.SUCCEEDED
    evidence = tmp_path / "code-ran"
    if value is None:  # a pickle where JSON belongs: never loaded
        value = pickle.dumps(redisfuncs.Planted(str(evidence)))
    client = redis_server.client()
    client.hset(f"{mw.engine._backend.link().namespace}:job:{bad.id}", field, value)
    pages = webtest.TestApp(mw)
    for url in (f"/_jobs/{bad.id}", f"/_jobs/api/jobs/{bad.id}"):
        answer = pages.get(url, status=500)
        assert f"the record of job {bad.id} in the store is unreadable" in answer.text
        assert says in answer.text.replace("&#39;", "'")
    assert pages.get(f"/_jobs/api/jobs/{good.id}").json["state"] == "succeeded"
    assert pages.get(f"/_jobs/{good.id}").status_int == 200
    listed = {j["id"]: j for j in pages.get("/_jobs/api/jobs").json["jobs"]}
    assert listed[good.id]["state"] == "succeeded"
    assert "unreadable" in listed[bad.id]["error"]
    assert pages.get("/_jobs/").status_int == 200
    assert pages.get("/_jobs/?q=redisfuncs").status_int == 200
    assert not evidence.exists()


# -- an unreachable Redis ----------------------------------------------------------
@pytest.fixture
def own_redis():
    """A redis-server of this test's own, persisting what it holds (so that a
    restart keeps it, as a production Redis would)."""
    server = RedisServer(persist=True).start()
    yield server
    server.stop()


@pytest.mark.timeout(90)
def test_unreachable_redis_answers_503_and_recovers(wsgi_bg_middleware, own_redis,
                                                    tmp_path):
    # (own_redis after the middleware fixture: it is stopped first, and its
    # restarted process is not taken for one the middleware left behind.)
    mw = wsgi_bg_middleware(redisfuncs.site, store=own_redis.url,
                            secret_key=TEST_SECRET_KEY, max_workers=1)
    client = webtest.TestApp(mw)
    job = mw.submit(redisfuncs.ticker, str(tmp_path / "flag"))
    wait_for(lambda: "tick 3" in job.output)

    own_redis.pause()  # hung: connections open, no answer
    try:
        asked = time.monotonic()
        answer = client.get(f"/_jobs/api/jobs/{job.id}", status=503)
        assert time.monotonic() - asked < 5.0
        assert answer.headers["Retry-After"] and "cannot be reached" in answer.text
        assert client.get(f"/_jobs/{job.id}", status=503).headers["Retry-After"]
        assert client.get("/").text == "plain page"  # other routes untouched
        time.sleep(1.5)  # a stretch of output written while Redis hangs
    finally:
        own_redis.resume()
    wait_for(lambda: client.get(f"/_jobs/api/jobs/{job.id}", expect_errors=True)
             .status_int == 200, timeout=10, message="recovery after a hang")

    own_redis.restart()  # down, then back with its data (append-only file)
    wait_for(lambda: client.get(f"/_jobs/api/jobs/{job.id}", expect_errors=True)
             .status_int == 200, timeout=10, message="recovery after a restart")
    (tmp_path / "flag").touch()
    assert job.wait(20).state is JobState.SUCCEEDED
    ticks = [line for line in job.output.splitlines() if line.startswith("tick")]
    assert ticks == [f"tick {n}" for n in range(len(ticks))]  # nothing lost
    assert len(ticks) == job.result
    later = mw.submit(redisfuncs.ticker, str(tmp_path / "flag"))  # no restart needed
    assert later.wait(10).state is JobState.SUCCEEDED


# -- a create whose answer was lost ---------------------------------------------------
def _ended_or_running(mw) -> bool:
    """Whether every record is terminal or really running (nothing queued
    that nothing will run) and no ``max_queued`` slot is held."""
    return not mw.engine.store.ids_in_state("queued")


@pytest.mark.timeout(90)
def test_a_create_answered_too_late_leaves_no_job(wsgi_bg_middleware, own_redis,
                                                   tmp_path):
    mw = wsgi_bg_middleware(redisfuncs.site, store=own_redis.url,
                            secret_key=TEST_SECRET_KEY, max_workers=1, max_queued=1)
    client = webtest.TestApp(mw)
    done = tmp_path / "done"
    done.touch()  # ticker returns at once
    assert mw.submit(redisfuncs.ticker, str(done)).wait(10).state is JobState.SUCCEEDED

    own_redis.pause()  # the create reaches Redis, which answers when resumed
    try:
        paused = time.monotonic()
        answer = client.get(f"/start?flag={done}", status=503)
        assert time.monotonic() - paused < 5.0  # the 2 s socket timeout, not more
        assert "cannot be reached" in answer.text
        time.sleep(max(0.0, paused + 3.0 - time.monotonic()))  # a 3 s hiccup
    finally:
        own_redis.resume()
    resumed = time.monotonic()
    # The create ran when Redis resumed, past the client's deadline: refused.
    wait_for(lambda: _ended_or_running(mw), timeout=30, interval=0.2,
             message="no job left queued that nothing runs")
    assert time.monotonic() - resumed < 30
    later = mw.submit(redisfuncs.ticker, str(done))  # max_queued=1: a slot is free
    assert later.wait(10).state is JobState.SUCCEEDED
    states = {job.state for job in mw.jobs()}
    assert states <= {JobState.SUCCEEDED, JobState.CANCELLED}, states


@pytest.mark.timeout(90)
def test_a_job_not_handed_to_the_pool_ends_when_redis_answers(
        wsgi_bg_middleware, own_redis, tmp_path, monkeypatch):
    mw = wsgi_bg_middleware(redisfuncs.site, store=own_redis.url,
                            secret_key=TEST_SECRET_KEY, max_workers=1, max_queued=1)
    done = tmp_path / "done"
    done.touch()
    assert mw.submit(redisfuncs.ticker, str(done)).wait(10).state is JobState.SUCCEEDED
    runner = mw.engine._runner

    def hand_off_fails(*args, **kwargs):
        own_redis.kill()  # ... and Redis is down when the engine ends the job
        raise RuntimeError("hand-off failed")

    monkeypatch.setattr(runner, "submit", hand_off_fails)
    try:
        with pytest.raises((RuntimeError, StoreUnavailable)):
            mw.submit(redisfuncs.ticker, str(done))
    finally:
        monkeypatch.undo()
        if own_redis.process is None:
            own_redis.start()  # back with its data (append-only file)
    wait_for(lambda: _ended_or_running(mw), timeout=30, interval=0.2,
             message="the job nothing runs to end")
    [crashed] = [job for job in mw.jobs() if job.state is JobState.CRASHED]
    assert "could not be handed to the pool runner" in crashed.error
    assert "hand-off failed" in crashed.error
    later = mw.submit(redisfuncs.ticker, str(done))
    assert later.wait(10).state is JobState.SUCCEEDED


def test_a_create_retried_after_it_landed_is_created_once(redis_server):
    """redis-py sends a command again once on a dropped connection: a create
    that had run answers created, not 'already stored', and counts once."""
    from wsgi_bg.stores.redis import RedisStore, connect, connection_settings
    from wsgi_bg.stores.signing import Signer

    client = connect(connection_settings(redis_server.url))
    store = RedisStore(client, namespace=f"twice-{uuid.uuid4().hex[:8]}",
                       signer=Signer(TEST_SECRET_KEY.encode()), keep_finished=10,
                       job_ttl=60, max_output_bytes=1000)
    record = {"id": "j", "name": "n", "created_at": time.time(), "timeout": None,
              "started_at": None, "ended_at": None, "result": None, "error": None,
              "progress": None, "cancel_requested": False, "cancel_grace": None,
              "url": None, "pid": None}
    try:
        assert store.create(record, 1) and store.create(record, 1)  # max_queued=1
        assert store.counts()["queued"] == 1
        with pytest.raises(ValueError, match="already stored"):
            store.create(dict(record, created_at=record["created_at"] + 1), 10)
    finally:
        client.connection_pool.disconnect()


def test_submit_with_redis_down_is_a_503(wsgi_bg_middleware):
    mw = wsgi_bg_middleware(redisfuncs.site, store=f"redis://127.0.0.1:{free_port()}/0",
                            secret_key=TEST_SECRET_KEY, max_workers=1)
    client = webtest.TestApp(mw)
    answer = client.get("/start?flag=x", status=503)
    assert answer.headers["Retry-After"]
    assert client.get("/_jobs/api/jobs/" + "a" * 43, status=503)
    assert client.get("/").text == "plain page"


# -- the default store stays honest ----------------------------------------------------
def test_the_default_store_under_several_processes_warns_once(wsgi_bg_middleware,
                                                               caplog):
    mw = wsgi_bg_middleware(redisfuncs.site)
    client = webtest.TestApp(mw, extra_environ={"wsgi.multiprocess": True})
    with caplog.at_level(logging.WARNING, logger="wsgi_bg"):
        client.get("/")
        client.get("/")
    warnings = [r for r in caplog.records if "several processes" in r.message]
    assert len(warnings) == 1 and "redis://" in warnings[0].message


def test_a_shared_store_does_not_warn(redis_mw, caplog):
    mw = redis_mw()
    client = webtest.TestApp(mw, extra_environ={"wsgi.multiprocess": True})
    with caplog.at_level(logging.WARNING, logger="wsgi_bg"):
        client.get("/")
    assert not [r for r in caplog.records if "several processes" in r.message]


# -- real server processes: gunicorn -w 2 ----------------------------------------
class Gunicorn:
    def __init__(self, redis_url: str, namespace: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, WSGI_BG_TEST_STORE=redis_url,
                   WSGI_BG_TEST_NAMESPACE=namespace, WSGI_BG_SECRET_KEY=TEST_SECRET_KEY,
                   PYTHONPATH=TESTS)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "2", "-b",
             f"127.0.0.1:{self.port}", "--graceful-timeout", "5", "redisfuncs:app"],
            env=env, cwd=TESTS, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        try:
            wait_for(self._ready, timeout=20, interval=0.05,
                     message="gunicorn to serve")
        except BaseException:
            self.kill_all()  # nothing left behind when it never served
            raise

    def _ready(self) -> bool:
        try:
            return requests.get(self.url + "/", timeout=2).ok
        except requests.RequestException:  # not up yet, or slow to answer
            return False

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)

    def kill_all(self) -> list[psutil.Process]:
        """SIGKILL the master and its workers at once (an OOM kill, a host
        losing power); return every process it had, to check they end."""
        tree = self.tree()
        for proc in tree:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait(10)
        return tree


@pytest.fixture
def gunicorn(redis_server):
    namespace = f"g-{uuid.uuid4().hex[:12]}"
    started: list[Gunicorn] = []

    def start() -> Gunicorn:
        server = Gunicorn(redis_server.url, namespace)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.mark.timeout(120)
def test_gunicorn_workers_all_serve_every_job_and_it_outlives_them(gunicorn, tmp_path):
    server = gunicorn()
    flag = tmp_path / "flag"
    started = requests.get(f"{server.url}/start", params={"flag": str(flag)},
                           allow_redirects=False, timeout=10)
    assert started.status_code == 303
    job_id = started.headers["X-Job-Id"]
    api = f"{server.url}/_jobs/api/jobs/{job_id}"
    wait_for(lambda: requests.get(api, timeout=5).json()["state"] == "running",
             timeout=20, message="the job to start")

    pids, sizes = set(), []
    session = requests.Session()
    deadline = time.monotonic() + 30
    # Until both workers answered and the output grew while it ran (live
    # output, whichever worker answers): how many polls that takes depends
    # on the machine's load, so none is counted.
    while len(pids) < 2 or len(sizes) < 2 or sizes[-1] <= sizes[0]:
        assert time.monotonic() < deadline, f"only {pids} answered, sizes {sizes}"
        for url in (api, f"{server.url}/_jobs/{job_id}"):
            answer = requests.get(url, timeout=5)  # a new connection each time
            assert answer.status_code == 200, answer.text
            pids.add(answer.headers["X-Pid"])
        data = session.get(api, timeout=5).json()
        assert data["state"] == "running"
        sizes.append(data["output_size"])
    flag.touch()
    wait_for(lambda: requests.get(api, timeout=5).json()["state"] == "succeeded",
             timeout=15)
    before = requests.get(api, timeout=5).json()

    server.stop()  # a deploy: every server process restarts
    server = gunicorn()
    after = requests.get(f"{server.url}/_jobs/api/jobs/{job_id}", timeout=5).json()
    assert (after["state"], after["output"], after["result"]) == (
        "succeeded", before["output"], before["result"])


@pytest.mark.timeout(120)
def test_a_job_whose_server_processes_were_killed_ends_crashed(gunicorn, tmp_path):
    server = gunicorn()
    started = requests.get(f"{server.url}/start",
                           params={"flag": str(tmp_path / "never")},
                           allow_redirects=False, timeout=10)
    job_id = started.headers["X-Job-Id"]
    path = f"/_jobs/api/jobs/{job_id}"
    wait_for(lambda: "tick 2" in requests.get(server.url + path, timeout=5).json()[
        "output"], message="the job to run")
    killed_at = time.monotonic()
    tree = server.kill_all()
    # The forkserver, pool worker and job process die with their server.
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                             for p in tree), timeout=10, message="the tree to end")

    server = gunicorn()  # what a supervisor (systemd) does next
    data = wait_for(lambda: (d := requests.get(server.url + path, timeout=5).json())[
        "state"] != "running" and d, timeout=40, interval=0.5,
        message="the job to end")
    assert time.monotonic() - killed_at < 30
    assert data["state"] == "crashed"
    assert "stopped" in data["error"] and "lease" in data["error"]
    assert "tick 2" in data["output"]  # what it wrote before stays readable
