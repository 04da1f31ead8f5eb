"""GET {prefix}/metrics: the store's figures in Prometheus' text format, on
every store and runner; refused by default; the same from every server
process on one Redis; ``wsgi_bg_store_up 0`` when the store is down."""
from __future__ import annotations

import dataclasses
import hmac
import html
import os
import re
import time
import uuid

import pytest
import webtest
from prometheus_client.parser import text_string_to_metric_families

import jobfuncs
import statusfuncs
from conftest import TEST_SECRET_KEY, hello_app
from helpers import wait_for
from redis_server import RedisServer
from wsgi_bg import JobState, allow_all, allow_local, backgrounder
from wsgi_bg.auth import default_authorize
from wsgi_bg.status.metrics import CONTENT_TYPE, exposition, label_value
from wsgi_bg.stores import Ending
from wsgi_bg.stores.memory import MemoryStore
from wsgi_bg.stores.protocol import BUCKETS, MAX_FUNCTIONS

pytestmark = pytest.mark.runner_contract


def allow_metrics(environ, action, job):
    return action == "metrics"


def scrape(mw, status=200):
    """The metrics page, parsed strictly: ``{(name, labels): value}`` of every
    sample, and the raw answer."""
    answer = webtest.TestApp(mw).get("/_jobs/metrics", status=status)
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"{key} twice"
            samples[key] = sample.value
    return samples, answer


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def histogram(samples, name, function):
    """``(cumulative bucket counts by le, sum, count)`` of one function."""
    buckets = {dict(labels)["le"]: v for (n, labels), v in samples.items()
               if n == name + "_bucket" and dict(labels)["function"] == function}
    return (buckets, value(samples, name + "_sum", function=function),
            value(samples, name + "_count", function=function))


def running(job, timeout=20.0):
    wait_for(lambda: job.state is JobState.RUNNING, timeout, message=f"{job} to run")


def known_jobs(mw, tmp_path):
    """2 succeeded, 1 failed, 1 cancelled while queued; every one ended."""
    flag = str(tmp_path / "go")
    # Two blockers hold both workers (the pool's two, or the session's two
    # RQ workers), so that the victim stays queued until it is cancelled.
    blockers = [mw.submit(jobfuncs.print_wait_print, f"b{i}", flag) for i in range(2)]
    for blocker in blockers:
        running(blocker)
    victim = mw.submit(jobfuncs.touch, str(tmp_path / "ran"))
    assert victim.cancel() is True
    assert victim.state is JobState.CANCELLED
    jobfuncs.touch(flag)
    failed = mw.submit(jobfuncs.boom)
    for job in (*blockers, failed):
        job.wait(timeout=20)
    assert [b.state for b in blockers] == [JobState.SUCCEEDED] * 2
    assert failed.state is JobState.FAILED


# -- the figures ------------------------------------------------------------------
def test_metrics_count_known_jobs_exactly(make_mw, tmp_path):
    mw = make_mw(authorize=allow_all, max_workers=2)
    known_jobs(mw, tmp_path)
    samples, answer = scrape(mw)
    assert answer.headers["Content-Type"] == CONTENT_TYPE
    assert value(samples, "wsgi_bg_store_up") == 1
    assert {s.value: value(samples, "wsgi_bg_jobs", state=s.value)
            for s in JobState} == {
        "queued": 0, "running": 0, "succeeded": 2, "failed": 1, "cancelled": 1,
        "timed_out": 0, "crashed": 0}
    finished = {dict(labels)["function"] + " " + dict(labels)["outcome"]: v
                for (name, labels), v in samples.items()
                if name == "wsgi_bg_jobs_finished_total"}
    assert finished == {"jobfuncs.print_wait_print succeeded": 2,
                        "jobfuncs.boom failed": 1, "jobfuncs.touch cancelled": 1}
    for name in ("wsgi_bg_job_duration_seconds", "wsgi_bg_job_queue_wait_seconds"):
        for function, count in (("jobfuncs.print_wait_print", 2),
                                ("jobfuncs.boom", 1)):
            buckets, total, counted = histogram(samples, name, function)
            assert counted == count and buckets["+Inf"] == count
            assert list(buckets) == [repr(float(b)) for b in BUCKETS] + ["+Inf"]
            assert list(buckets.values()) == sorted(buckets.values())  # cumulative
            assert 0 <= total < 60
        # Never started: no duration, no wait.
        assert histogram(samples, name, "jobfuncs.touch") == ({}, None, None)


def test_a_job_ending_after_a_scrape_counts_at_the_next(make_mw, tmp_path):
    mw = make_mw(authorize=allow_all)
    before, _ = scrape(mw)
    assert value(before, "wsgi_bg_jobs_finished_total", function="jobfuncs.add",
                 outcome="succeeded") is None
    for _ in range(3):
        mw.submit(jobfuncs.add, 1, 2).wait(timeout=20)
    after, _ = scrape(mw)
    assert value(after, "wsgi_bg_jobs_finished_total", function="jobfuncs.add",
                 outcome="succeeded") == 3


# -- who may read them ------------------------------------------------------------
def test_metrics_are_refused_by_default_as_the_list_is(make_mw):
    mw = make_mw()
    client = webtest.TestApp(mw)
    refused = html.unescape(client.get("/_jobs/metrics", status=403).text)
    assert "metrics are not enabled" in refused
    assert 'allows the action "metrics"' in refused  # how to allow them
    client.get("/_jobs/", status=403)


def test_an_authorize_that_allows_metrics_only_opens_them_alone(make_mw):
    mw = make_mw(authorize=allow_metrics)
    job = mw.submit(jobfuncs.add, 1, 2).wait(timeout=20)
    samples, _ = scrape(mw)
    assert value(samples, "wsgi_bg_jobs_finished_total", function="jobfuncs.add",
                 outcome="succeeded") == 1
    client = webtest.TestApp(mw)
    client.get("/_jobs/", status=403)
    client.get("/_jobs/api/jobs", status=403)
    client.get(f"/_jobs/{job.id}", status=403)


def test_authorize_is_asked_metrics_with_no_job(make_mw):
    asked = []

    def authorize(environ, action, job):
        asked.append((action, job))
        return True

    mw = make_mw(authorize=authorize)
    scrape(mw)
    assert asked == [("metrics", None)]


def test_metrics_reveal_no_id_argument_output_result_or_error(make_mw):
    """docs/security.md: names and figures only."""
    mw = make_mw(authorize=allow_all)
    said = mw.submit(statusfuncs.say, "output-s3cret", "result-s3cret")
    failed = mw.submit(statusfuncs.fail_with, "error-s3cret")
    for job in (said, failed):
        job.wait(timeout=20)
    assert "output-s3cret" in said.output and "error-s3cret" in failed.error
    _, answer = scrape(mw)
    assert "statusfuncs.say" in answer.text and "statusfuncs.fail_with" in answer.text
    for secret in ("s3cret", said.id, failed.id, said.id[:8]):
        assert secret not in answer.text


SECURITY_DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "docs", "security.md")


def documented_authorize():
    """docs/security.md's own ``authorize`` (the block ``# myauth.py``), as
    written there: the text a reader copies, not a copy of it here."""
    with open(SECURITY_DOC, encoding="utf-8") as doc:
        text = doc.read()
    block = re.search(r"^```python\n(# myauth\.py\n.*?)^```$", text, re.S | re.M)
    assert block, "docs/security.md has no ```python block beginning # myauth.py"
    namespace: dict[str, object] = {}
    exec(compile(block[1], SECURITY_DOC, "exec"), namespace)
    return namespace["authorize"]


@dataclasses.dataclass
class User:
    is_admin: bool


def test_the_documented_authorize_denies_what_it_does_not_name(make_mw):
    authorize = documented_authorize()
    mw = make_mw(authorize=authorize)
    job = mw.submit(jobfuncs.add, 1, 2).wait(timeout=20)
    user = webtest.TestApp(mw, extra_environ={"myapp.user": User(is_admin=False)})
    user.get("/_jobs/metrics", status=403)
    user.get("/_jobs/", status=403)
    user.get("/_jobs/api/jobs", status=403)
    page = user.get(f"/_jobs/{job.id}").text  # the id is the capability
    assert 'id="rerun"' in page  # "rerun" and its old name "retry" both allowed
    admin = webtest.TestApp(mw, extra_environ={"myapp.user": User(is_admin=True)})
    assert "jobfuncs.add" in admin.get("/_jobs/metrics").text
    admin.get("/_jobs/")
    nobody = webtest.TestApp(mw)
    for path in ("/_jobs/metrics", "/_jobs/", f"/_jobs/{job.id}"):
        nobody.get(path, status=403)
    # An action a later version adds stays refused until named.
    environ = {"myapp.user": User(is_admin=True)}
    assert authorize(environ, "some-new-action", None) is False


def test_allow_local_allows_metrics_to_this_machine_alone(make_mw):
    mw = make_mw(authorize=allow_local)
    local = webtest.TestApp(mw, extra_environ={"REMOTE_ADDR": "127.0.0.1",
                                               "HTTP_HOST": "localhost"})
    assert local.get("/_jobs/metrics").content_type == "text/plain"
    remote = webtest.TestApp(mw, extra_environ={"REMOTE_ADDR": "203.0.113.9"})
    remote.get("/_jobs/metrics", status=403)


METRICS_TOKEN = "a-token-for-the-tests-only"


def bearer_authorize(environ, action, job):
    """docs/deployment.md's example, as written there."""
    if action == "metrics":
        sent = environ.get("HTTP_AUTHORIZATION", "")
        return hmac.compare_digest(sent.encode(), f"Bearer {METRICS_TOKEN}".encode())
    return default_authorize(environ, action, job)


def test_the_documented_bearer_authorize_opens_metrics_to_the_token_alone(make_mw):
    mw = make_mw(authorize=bearer_authorize)
    job = mw.submit(jobfuncs.add, 1, 2).wait(timeout=20)
    client = webtest.TestApp(mw)
    client.get("/_jobs/metrics", status=403)
    for wrong in ("Bearer nope", f"Basic {METRICS_TOKEN}", f"Bearer {METRICS_TOKEN}x",
                  f"bearer {METRICS_TOKEN}"):
        client.get("/_jobs/metrics", headers={"Authorization": wrong}, status=403)
    answer = client.get("/_jobs/metrics",
                        headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert 'function="jobfuncs.add",outcome="succeeded"} 1' in answer.text
    # Everything else as by default: the job's page open, the list refused.
    client.get(f"/_jobs/{job.id}")
    client.get("/_jobs/", headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
               status=403)


# -- labels -----------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    pytest.param('a "quoted" name', id="quote"),
    pytest.param("back\\slash\\", id="backslash"),
    pytest.param("two\nlines", id="newline"),
    pytest.param('all \\" of\n them \\n', id="all"),
    pytest.param("ünïcödé ✓", id="unicode"),
])
def test_label_values_are_escaped_and_parse_back(name):
    store = MemoryStore()
    store.create({"id": "j", "name": name, "created_at": time.time(),
                  "started_at": None, "ended_at": None, "result": None,
                  "error": None, "progress": None, "timeout": None,
                  "cancel_requested": False, "cancel_grace": None, "url": None,
                  "pid": None}, 10)
    assert store.start("j", 1)
    store.finish("j", Ending("succeeded"))
    families = list(text_string_to_metric_families(exposition(store)))
    finished = [s for f in families for s in f.samples
                if s.name == "wsgi_bg_jobs_finished_total"]
    assert [s.labels for s in finished] == [{"function": name, "outcome": "succeeded"}]
    assert "\n" not in label_value(name)


@backgrounder
def echo_path(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode()]


def test_a_marked_app_counts_under_its_import_path_whatever_the_path(make_mw):
    """A marked app's jobs are named by method and path (what a client sends:
    ids, quotes, line feeds), but counted under the app: one series per app,
    not one per request."""
    mw = make_mw(echo_path, authorize=allow_all)
    client = webtest.TestApp(mw)
    for path in ("/reports/1", "/reports/2", "/a%22b%5Cc%0Ad"):
        started = client.get(path, status=303)
        job = mw.get_job(started.headers["Location"].rsplit("/", 1)[1])
        assert job.wait(timeout=20).state is JobState.SUCCEEDED
    assert mw.rerun(job.id).wait(timeout=20).state is JobState.SUCCEEDED
    samples, answer = scrape(mw)
    assert "/reports/" not in answer.text  # security.md: no path requested
    finished = {labels: v for (name, labels), v in samples.items()
                if name == "wsgi_bg_jobs_finished_total"}
    assert finished == {
        (("function", "test_metrics:echo_path"), ("outcome", "succeeded")): 4}


def test_a_partial_or_callable_is_named_after_its_code_never_its_arguments(make_mw):
    """security.md: metrics (and pages with show_args=False) reveal no
    argument. A functools.partial's repr holds its arguments, and a
    callable object's its own: neither names the job."""
    import functools

    mw = make_mw(authorize=allow_all)
    jobs = [mw.submit(functools.partial(jobfuncs.add, "s3cret-arg"), "!"),
            mw.submit(jobfuncs.Adder("s3cret-state"), 1)]
    for job in jobs:
        assert job.wait(timeout=20).state is JobState.SUCCEEDED, job.error
    assert [job.name for job in jobs] == ["jobfuncs.add", "jobfuncs.Adder"]
    samples, answer = scrape(mw)
    assert "s3cret" not in answer.text
    assert value(samples, "wsgi_bg_jobs_finished_total", function="jobfuncs.add",
                 outcome="succeeded") == 1
    assert value(samples, "wsgi_bg_jobs_finished_total",
                 function="jobfuncs.Adder", outcome="succeeded") == 1


# -- bounds -------------------------------------------------------------------------
@pytest.fixture
def redis_store(redis_server):
    """A bare Redis store, in a namespace of the test's own."""
    from wsgi_bg.stores.redis import RedisStore, connect, connection_settings
    from wsgi_bg.stores.signing import Signer

    client = connect(connection_settings(redis_server.url))
    yield RedisStore(client, namespace=f"m-{uuid.uuid4().hex[:12]}",
                     signer=Signer(TEST_SECRET_KEY.encode()), keep_finished=1000,
                     job_ttl=86400, max_output_bytes=1_048_576)
    client.connection_pool.disconnect()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request):
    """A bare store of each kind."""
    if request.param == "memory":
        return MemoryStore()
    return request.getfixturevalue("redis_store")


def record(job_id, name, created_at=None):
    return {"id": job_id, "name": name, "created_at": created_at or time.time(),
            "started_at": None, "ended_at": None, "result": None, "error": None,
            "progress": None, "timeout": None, "cancel_requested": False,
            "cancel_grace": None, "url": None, "pid": None}


def test_functions_past_the_bound_count_as_other(store):
    """A marked app whose paths hold ids names each job differently: past
    MAX_FUNCTIONS names, the rest count under "other"."""
    for n in range(MAX_FUNCTIONS + 5):
        assert store.create(record(f"j{n}", f"GET /reports/{n}"), 10)
        assert store.request_cancel(f"j{n}", None) == "cancelled"
    # A function seen before the bound keeps its name.
    assert store.create(record("again", "GET /reports/0"), 10)
    assert store.request_cancel("again", None) == "cancelled"
    finished = store.stats().finished
    assert len(finished) == MAX_FUNCTIONS + 1
    assert finished[("other", "cancelled")] == 5
    assert finished[("GET /reports/0", "cancelled")] == 2


def test_a_jobs_function_labels_it_else_its_name(store):
    """A record's ``function`` is its label; one stored without it (by an
    earlier version) is labelled by its name."""
    for n in range(3):
        assert store.create(dict(record(f"j{n}", f"GET /r/{n}"),
                                 function="reports:app"), 10)
        assert store.request_cancel(f"j{n}", None) == "cancelled"
    assert store.create(record("old", "GET /r/9"), 10)
    assert store.request_cancel("old", None) == "cancelled"
    assert store.stats().finished == {("reports:app", "cancelled"): 3,
                                      ("GET /r/9", "cancelled"): 1}


def test_long_names_are_cut_at_a_character_boundary(store):
    name = "é" * 150  # 300 bytes: cut within the 200 bytes, between characters
    assert store.create(record("j", name), 10)
    assert store.request_cancel("j", None) == "cancelled"
    assert list(store.stats().finished) == [("é" * 100, "cancelled")]


def test_histograms_put_each_wait_in_its_bucket(store):
    """Buckets are ``le``: a wait of 50 s is in 60 and above, not in 30."""
    assert store.create(record("j", "f", created_at=time.time() - 50), 10)
    assert store.start("j", 123)
    assert store.finish("j", Ending("failed", error="err")) == "failed"
    stats = store.stats()
    wait, duration = stats.queue_wait["f"], stats.duration["f"]
    assert wait.buckets == [0] * BUCKETS.index(60.0) + [1] + [0] * (
        len(BUCKETS) - BUCKETS.index(60.0))
    assert 50 <= wait.sum < 55
    assert duration.buckets[0] == 1 and duration.count == 1
    assert stats.finished == {("f", "failed"): 1}


def test_figures_outlive_the_jobs_they_count(store):
    """Retention drops jobs; the counters keep counting them."""
    store.keep_finished = 1
    for n in range(3):
        assert store.create(record(f"j{n}", "f"), 10)
        assert store.request_cancel(f"j{n}", None) == "cancelled"
    assert store.counts()["cancelled"] < 3  # (pruned as the next job comes)
    assert store.stats().finished == {("f", "cancelled"): 3}


@pytest.mark.parametrize("state", ["succeeded", "failed", "timed_out", "crashed",
                                   "cancelled"])
def test_every_way_a_running_job_ends_is_counted(store, state):
    assert store.create(record("j", "f"), 10)
    assert store.start("j", 123)
    assert store.finish("j", Ending(state)) == state
    assert store.finish("j", Ending("failed")) is None  # once only
    stats = store.stats()
    assert stats.finished == {("f", state): 1}
    assert stats.duration["f"].count == stats.queue_wait["f"].count == 1


@pytest.mark.redis
def test_a_job_the_redis_sweep_ends_crashed_is_counted(redis_store, monkeypatch):
    from wsgi_bg.stores import redis

    monkeypatch.setattr(redis, "SUSPECT_SECONDS", 0.0)
    store = redis_store
    assert store.create(record("j", "f"), 10)
    assert store.start("j", 123)
    store._r.delete(f"{store.namespace}:lease:j")  # its supervisor is gone
    store.sweep()  # a suspect
    assert store.sweep() == 1  # crashed
    stats = store.stats()
    assert stats.finished == {("f", "crashed"): 1}
    assert stats.duration["f"].count == 1


@pytest.mark.redis
def test_a_name_changed_outside_wsgi_bg_counts_as_other_and_the_job_ends(redis_store):
    store = redis_store
    assert store.create(record("j", "f"), 10)
    store._r.hset(f"{store.namespace}:job:j", "name", b"\xff not JSON")
    assert store.request_cancel("j", None) == "cancelled"
    assert store.stats().finished == {("other", "cancelled"): 1}


# -- shared by every server process -------------------------------------------------
@pytest.mark.redis
def test_two_server_processes_on_one_redis_report_the_same(
        redis_server, wsgi_bg_middleware, tmp_path):
    namespace = f"t-{uuid.uuid4().hex[:12]}"

    def server_process():
        return wsgi_bg_middleware(
            hello_app,
            store=redis_server.url, namespace=namespace,
            secret_key=TEST_SECRET_KEY, max_workers=2, cancel_grace=1.0,
            authorize=allow_all)

    first, second = server_process(), server_process()
    known_jobs(first, tmp_path)
    one, _ = scrape(first)
    two, _ = scrape(second)
    assert one == two
    assert value(two, "wsgi_bg_jobs_finished_total",
                 function="jobfuncs.print_wait_print", outcome="succeeded") == 2
    # A process started later (a restart) reads them too.
    first.shutdown()
    third, _ = scrape(server_process())
    assert third == one


# -- a store that is down -------------------------------------------------------------
@pytest.fixture
def own_redis():
    """A redis-server of this test's own, persisting what it holds."""
    server = RedisServer(persist=True).start()
    yield server
    server.stop()


@pytest.mark.redis
@pytest.mark.timeout(90)
def test_a_redis_that_is_down_gives_store_up_0_and_200(wsgi_bg_middleware, own_redis):
    # (own_redis after the middleware fixture: it is stopped first.)
    mw = wsgi_bg_middleware(hello_app, store=own_redis.url, secret_key=TEST_SECRET_KEY,
                            max_workers=1, authorize=allow_all)
    assert mw.submit(jobfuncs.add, 1, 2).wait(timeout=20).result == 3
    own_redis.kill()
    samples, answer = scrape(mw)
    assert value(samples, "wsgi_bg_store_up") == 0
    assert answer.headers["Content-Type"] == CONTENT_TYPE
    assert value(samples, "wsgi_bg_jobs", state="succeeded") is None
    own_redis.restart()  # back, with what it held
    wait_for(lambda: value(scrape(mw)[0], "wsgi_bg_store_up") == 1, timeout=10,
             message="the store up again")
    samples, _ = scrape(mw)
    assert value(samples, "wsgi_bg_jobs_finished_total", function="jobfuncs.add",
                 outcome="succeeded") == 1
