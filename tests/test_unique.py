"""One job per key: ``@background(unique=...)``, on every store and runner."""
from __future__ import annotations

import fractions
import json
import os
import re
import threading
import uuid

import pytest
import webtest

import jobfuncs
import uniquefuncs
from helpers import wait_for
from wsgi_bg import JobState, QueueFull, background, backgrounder
from wsgi_bg.marks import args_key
from wsgi_bg.testing import wait_for_job

# Also on the RQ runner (see conftest.py): these describe how jobs run.
pytestmark = [pytest.mark.runner_contract, pytest.mark.timeout(120)]


def flag(tmp_path, name="go"):
    return str(tmp_path / f"{name}-{uuid.uuid4().hex[:8]}")


def started(path):
    wait_for(lambda: os.path.exists(path + ".started"), 30,
             message=f"{os.path.basename(path)} to start")


def release(path):
    with open(path, "w"):
        pass


def test_a_second_call_returns_the_job_queued_or_running(make_mw, tmp_path):
    mw = make_mw()
    go = flag(tmp_path)
    first = mw.submit(uniquefuncs.build, "report", go)
    assert mw.submit(uniquefuncs.build, "report", go) == first  # queued or so
    started(go)
    again = mw.submit(uniquefuncs.build, "report", go)  # running
    assert again.id == first.id
    assert [job.id for job in mw.jobs()] == [first.id]
    assert first.to_dict()["unique"] is True
    release(go)
    assert wait_for_job(first).result == "report"


def test_a_job_without_a_key_says_nothing_of_one(make_mw):
    mw = make_mw()
    job = mw.submit(jobfuncs.add, 1, 2)
    assert "one job per key" not in webtest.TestApp(mw.status_app).get(
        f"/{job.id}").text
    job.wait(timeout=20)


def test_other_arguments_are_another_job(make_mw, tmp_path):
    mw = make_mw()
    go = flag(tmp_path)
    a = mw.submit(uniquefuncs.build, "a", go)
    b = mw.submit(uniquefuncs.build, "b", go)
    assert a != b
    # The same call, written another way: one key (arguments bound, defaults
    # applied); a dict's order does not matter.
    assert mw.submit(uniquefuncs.build, name="a", flag=go, how="succeed") == a
    c = mw.submit(uniquefuncs.build, {"x": 1, "y": 2}, go)
    assert mw.submit(uniquefuncs.build, {"y": 2, "x": 1}, go) == c
    release(go)
    for job in (a, b, c):
        wait_for_job(job)


def test_a_callable_key(make_mw, tmp_path):
    mw = make_mw()
    go = flag(tmp_path)
    ann = mw.submit(uniquefuncs.by_user, "ann", go, note="first")
    assert mw.submit(uniquefuncs.by_user, "ann", go, note="second") == ann
    bob = mw.submit(uniquefuncs.by_user, "bob", go)
    assert bob != ann
    release(go)
    assert wait_for_job(ann).result == "first"
    wait_for_job(bob)


def test_a_job_not_marked_unique_is_never_shared(make_mw, tmp_path):
    mw = make_mw()
    go = flag(tmp_path)
    a = mw.submit(uniquefuncs.blocker, go)
    b = mw.submit(uniquefuncs.blocker, go)
    assert a != b
    assert a.to_dict()["unique"] is False
    release(go)
    wait_for_job(a), wait_for_job(b)


def keys_held(mw) -> int:
    """How many unique keys the store holds: none once their jobs ended,
    so that they cost nothing past their jobs (a bound, read inside)."""
    store = mw.engine.store
    client = getattr(store, "_r", None)
    if client is None:
        return len(store._unique)
    return len(client.keys(f"{store.namespace}:unique:*"))


ENDINGS = [
    pytest.param("succeed", JobState.SUCCEEDED, id="succeeded"),
    pytest.param("fail", JobState.FAILED, id="failed"),
    pytest.param("cancel-queued", JobState.CANCELLED, id="cancelled-queued"),
    pytest.param("cancel-running", JobState.CANCELLED, id="cancelled-running"),
    pytest.param("timeout", JobState.TIMED_OUT, id="timed-out"),
    pytest.param("crash", JobState.CRASHED, id="crashed"),
]


@pytest.mark.parametrize(("how", "state"), ENDINGS)
def test_once_it_ended_the_next_call_starts_a_new_job(make_mw, tmp_path, how, state):
    mw = make_mw()
    go = flag(tmp_path)
    fn = uniquefuncs.build_limited if how == "timeout" else uniquefuncs.build
    args = (("x", go) if how in ("timeout", "cancel-queued")
            else ("x", go, "cooperate") if how == "cancel-running"
            else ("x", go, how))
    busy = flag(tmp_path, "busy")
    if how == "cancel-queued":
        # Every worker busy (two: the pool's max_workers, or the session's
        # RQ workers): the unique job waits.
        for _ in range(2):
            mw.submit(uniquefuncs.blocker, busy)
    first = mw.submit(fn, *args)
    if how == "cancel-queued":
        assert first.state is JobState.QUEUED
        assert first.cancel()
    else:
        started(go)
        if how == "cancel-running":
            assert first.cancel()
        elif how in ("succeed", "fail"):
            release(go)
    wait_for_job(first, state=state)
    assert keys_held(mw) == 0  # its end let go of the key
    second = mw.submit(fn, *args)
    assert second != first
    # Each ends by itself (a job killed at the test's end may still be
    # exiting when the test checks that nothing is left).
    release(busy)
    if how == "cancel-running":
        started(go)
        second.cancel()
    release(go)
    wait_for_job(second, state=None)


def test_a_call_answered_by_a_job_takes_no_queue_slot(make_mw, tmp_path):
    mw = make_mw(max_queued=1)
    go = flag(tmp_path)
    busy = []
    for _ in range(2):  # both workers busy, no job waiting
        busy.append(mw.submit(uniquefuncs.blocker, go))
        wait_for(lambda: busy[-1].state is JobState.RUNNING, 30,
                 message="the blocker to run")
    waiting = mw.submit(uniquefuncs.build, "w", go)  # the one slot
    assert mw.submit(uniquefuncs.build, "w", go) == waiting
    with pytest.raises(QueueFull):
        mw.submit(uniquefuncs.build, "other", go)
    release(go)
    for job in (*busy, waiting):
        wait_for_job(job)


def test_a_run_again_returns_the_job_holding_the_key(make_mw, tmp_path):
    mw = make_mw()
    go = flag(tmp_path)
    first = mw.submit(uniquefuncs.build, "r", go, "fail")
    started(go)
    release(go)
    wait_for_job(first, state="failed")
    os.remove(go)
    second = mw.rerun(first.id)  # nothing holds the key: a new job
    assert second != first
    assert mw.rerun(first.id) == second  # the second holds it
    assert mw.submit(uniquefuncs.build, "r", go, "fail") == second
    release(go)
    wait_for_job(second, state="failed")


def raw_namespace(store) -> bytes:
    """Every key name and value of a Redis store's namespace, raw (strings,
    hashes, lists, sets, sorted sets and streams), as one blob to search."""
    client = store._r
    found = []
    for name in client.scan_iter(match=f"{store.namespace}:*", count=1000):
        kind = client.type(name)
        if kind == b"none":
            continue  # deleted since the scan saw it (a queue emptied)
        value = (client.get(name) if kind == b"string"
                 else client.hgetall(name) if kind == b"hash"
                 else client.lrange(name, 0, -1) if kind == b"list"
                 else client.smembers(name) if kind == b"set"
                 else client.zrange(name, 0, -1, withscores=True) if kind == b"zset"
                 else client.xrange(name) if kind == b"stream" else None)
        assert value is not None, f"{name!r} is a {kind!r}: read it here too"
        found.append(name + b" " + repr(value).encode())
    assert found, "no key in the namespace: this looked in the wrong place"
    return b"\n".join(found)


def test_the_key_stays_off_the_pages(make_mw, tmp_path):
    # The target shows its arguments; its key ("secret-key-" and the token
    # reversed) holds what they do not, and must be kept as a digest alone.
    mw = make_mw()
    go = flag(tmp_path)
    key_parts = ("secret-key", "321kot")
    job = mw.submit(uniquefuncs.keyed_by_secret, "tok123", go)
    assert mw.submit(uniquefuncs.keyed_by_secret, "tok123", go) == job
    pages = webtest.TestApp(mw.status_app)
    api = pages.get(f"/api/jobs/{job.id}").json
    page = pages.get(f"/{job.id}").text
    assert api["unique"] is True
    assert "one job per key" in page  # said, the key not shown
    assert "tok123" in page  # the arguments show: the key could have too
    for shown in (json.dumps(api), page, repr(job), str(job.to_dict())):
        for part in key_parts:
            assert part not in shown
    stored = mw.engine.store.get(job.id)["unique"]
    assert re.fullmatch(r"[0-9a-f]{64}", stored), stored
    if hasattr(mw.engine.store, "_r"):  # Redis: nowhere in the namespace
        raw = raw_namespace(mw.engine.store)
        assert stored.encode() in raw  # (the digest is: this read it all)
        for part in key_parts:
            assert part.encode() not in raw
    release(go)
    wait_for_job(job, state=None)


# -- marked apps -----------------------------------------------------------------
def job_of(mw, response):
    return mw.get_job(response.headers["Location"].rsplit("/", 1)[1])


def test_a_form_posted_twice_to_a_marked_app_is_one_job(make_mw, tmp_path):
    mw = make_mw(uniquefuncs.report_app)
    app = webtest.TestApp(mw, lint=True)
    go = flag(tmp_path)
    first = app.post(f"/build?flag={go}", {"year": "2026"}, status=303)
    again = app.post(f"/build?flag={go}", {"year": "2026"}, status=303)
    assert again.headers["Location"] == first.headers["Location"]
    as_json = app.post(f"/build?flag={go}", {"year": "2026"}, status=202,
                       headers={"Accept": "application/json"}).json
    assert as_json["url"] == first.headers["Location"]
    other = app.post(f"/build?flag={go}", {"year": "2025"}, status=303)
    elsewhere = app.post(f"/other?flag={go}", {"year": "2026"}, status=303)
    jobs = {job_of(mw, r) for r in (first, other, elsewhere)}
    assert len(jobs) == 3
    assert job_of(mw, first).to_dict()["unique"] is True
    release(go)
    for job in jobs:
        wait_for_job(job)
    # Ended: the same form starts a new job.
    assert job_of(mw, app.post(f"/build?flag={go}", {"year": "2026"},
                               status=303)) not in jobs
    wait_for(lambda: all(job.done for job in mw.jobs()), 30,
             message="the last job to end")


def test_two_users_never_share_a_marked_apps_job(make_mw, tmp_path):
    # The same URL at once from alice and bob (other session cookies): each
    # gets a job of their own and reads their own report, never the other's.
    mw = make_mw(uniquefuncs.whose_report)
    app = webtest.TestApp(mw, lint=True)
    go = flag(tmp_path)
    url = f"/my/report?flag={go}"
    alice = app.get(url, headers={"Cookie": "session=alice"}, status=303)
    bob = app.get(url, headers={"Cookie": "session=bob"}, status=303)
    assert bob.headers["Location"] != alice.headers["Location"]
    # The same asker twice (a double click): one job.
    again = app.get(url, headers={"Cookie": "session=alice"}, status=303)
    assert again.headers["Location"] == alice.headers["Location"]
    # The same Authorization: one job; another one, or none: another job.
    basic = {"Authorization": "Basic YWxpY2U6cHc="}
    token = app.get(url, headers=basic, status=303)
    assert app.get(url, headers=basic, status=303).headers["Location"] \
        == token.headers["Location"]
    other = app.get(url, headers={"Authorization": "Basic Ym9iOnB3"}, status=303)
    anonymous = app.get(url, status=303)
    # REMOTE_USER (a server's or proxy's login) counts too.
    carol = app.get(url, extra_environ={"REMOTE_USER": "carol"}, status=303)
    dave = app.get(url, extra_environ={"REMOTE_USER": "dave"}, status=303)
    responses = (alice, bob, token, other, anonymous, carol, dave)
    jobs = [job_of(mw, r) for r in responses]
    assert len({job.id for job in jobs}) == len(responses)
    release(go)
    for job in jobs:
        wait_for_job(job)
    assert "session=alice" in jobs[0].output and "bob" not in jobs[0].output
    assert "session=bob" in jobs[1].output and "alice" not in jobs[1].output
    assert "carol" in jobs[5].output and "dave" not in jobs[5].output


def test_a_marked_app_keyed_by_a_form_field(make_mw, tmp_path):
    mw = make_mw(uniquefuncs.report_by_form)
    app = webtest.TestApp(mw, lint=True)
    go = flag(tmp_path)
    first = app.post(f"/a?flag={go}", {"report": "r1", "note": "x"}, status=303)
    # Another path, another note: the app's key is the field alone.
    again = app.post(f"/b?flag={go}", {"report": "r1", "note": "y"}, status=303)
    other = app.post(f"/a?flag={go}", {"report": "r2"}, status=303)
    assert again.headers["Location"] == first.headers["Location"]
    assert other.headers["Location"] != first.headers["Location"]
    release(go)
    wait_for_job(job_of(mw, first)), wait_for_job(job_of(mw, other))


# -- bad input -------------------------------------------------------------------
@pytest.mark.parametrize("value", ["yes", 1, None, ("a",)])
@pytest.mark.parametrize("mark", [
    pytest.param(background, id="background"),
    pytest.param(backgrounder, id="backgrounder"),
])
def test_unique_must_be_a_bool_or_a_callable(value, mark):
    with pytest.raises(TypeError, match=r"unique must be True \(.*\), False, or a"
                       r" callable returning a str key, e.g\. unique=lambda .*;"
                       r" got " + re.escape(repr(value))):
        mark(unique=value)


def test_a_callable_must_return_a_str(make_mw, tmp_path):
    mw = make_mw()
    with pytest.raises(TypeError, match=r"unique= callable of"
                       r" uniquefuncs.bad_key must return a str key, got 42"):
        mw.submit(uniquefuncs.bad_key, flag(tmp_path))
    assert mw.jobs() == []


def test_unique_true_needs_plain_arguments(make_mw, tmp_path):
    mw = make_mw()
    with pytest.raises(TypeError, match=r"argument 'name' of uniquefuncs.build"
                       r" holds a Fraction.*: give unique= a callable"):
        mw.submit(uniquefuncs.build, fractions.Fraction(1, 3), flag(tmp_path))
    with pytest.raises(TypeError, match=r"cannot be called with these arguments"):
        mw.submit(uniquefuncs.build, "a", flag(tmp_path), "b", "too many")
    assert mw.jobs() == []


def test_the_arguments_key_is_exact_and_runs_no_argument_code():
    def f(a, b=2, *rest, **kw):
        pass

    assert args_key(f, 1) == args_key(f, 1, 2) == args_key(f, a=1, b=2)
    assert args_key(f, 1) != args_key(f, 1.0) != args_key(f, True)
    assert args_key(f, "1") != args_key(f, 1) != args_key(f, b"1")
    assert args_key(f, {1, 2}) == args_key(f, {2, 1})
    assert args_key(f, [1, 2]) != args_key(f, (1, 2))
    assert args_key(f, 1, 2, 3, x=1, y=2) == args_key(f, 1, 2, 3, y=2, x=1)
    # Unbounded: two lists differing past what describe_args shows.
    assert args_key(f, list(range(100))) != args_key(f, [*range(99), 0])

    class Loud(str):
        def __repr__(self):
            raise AssertionError("ran the argument's code")

    with pytest.raises(TypeError, match="holds a .*Loud"):
        args_key(f, Loud("x"))
    nested: list[object] = []
    nested.append(nested)
    with pytest.raises(TypeError, match="nests deeper than"):
        args_key(f, nested)


# -- one Redis, several server processes ------------------------------------------
@pytest.mark.redis
@pytest.mark.parametrize("store_options", ["redis"], indirect=True)
def test_two_middlewares_on_one_redis_start_one_job(make_mw, tmp_path, store_options):
    # Two middlewares on one namespace: two server processes' engines.
    ours, theirs = make_mw(), make_mw()
    go = flag(tmp_path)
    for mw in (ours, theirs):
        mw.engine._start()  # both running before the race
    barrier = threading.Barrier(8)
    found: list[str] = []

    def call(n):
        barrier.wait(10)
        found.append((ours if n % 2 else theirs).submit(
            uniquefuncs.build, "race", go).id)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(found) == 8
    assert len(set(found)) == 1
    assert [job.id for job in ours.jobs()] == found[:1]
    release(go)
    wait_for_job(ours.get_job(found[0]))


@pytest.mark.redis
@pytest.mark.parametrize("store_options", ["redis"], indirect=True)
@pytest.mark.parametrize("how", ["dropped", "ended-elsewhere"])
def test_a_key_whose_job_is_gone_holds_nothing(make_mw, tmp_path, store_options, how,
                                                redis_server):
    mw = make_mw()
    go = flag(tmp_path)
    first = mw.submit(uniquefuncs.build, "gone", go, "cooperate")
    started(go)
    client = redis_server.client()
    key = f"{store_options['namespace']}:job:{first.id}"
    if how == "dropped":  # evicted, or deleted by hand
        client.delete(key)
    else:  # ended by what does not let go (an older wsgi_bg, a hand)
        client.hset(key, "state", "failed")
    second = mw.submit(uniquefuncs.build, "gone", go, "cooperate")
    assert second != first
    second.cancel()
    wait_for_job(second, state="cancelled")
