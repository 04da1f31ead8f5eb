"""What only the RQ runner has: stock ``rq worker`` processes that outlive a
crash, a timeout, a kill and the web process; an RQ job holding only the job
id; the call kept signed in the store; a worker killed mid-job. The rest of
the runner contract (results, output, isolation, cancel, timeouts) runs on RQ
through ``make_mw`` in test_engine.py, test_isolation.py, test_output.py and
test_background.py."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib

import psutil
import pytest

import jobfuncs
from conftest import RQ_TEST_QUEUE, TEST_SECRET_KEY
from helpers import SESSION_PIDS, wait_for
from rq_workers import PYTHONPATH, ROOT, WSGI_BG_WORKER, RQWorkers, rq_command
from wsgi_bg import BackgroundMiddleware, JobState
from wsgi_bg.runners.rq import SERIALIZER, queue_name, rq_job_id
from wsgi_bg.stores.signing import BadSignature, Signer

rq = pytest.importorskip("rq")
redis = pytest.importorskip("redis")

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


def _rq_job(mw, job):
    """The RQ job of ``job``, read as JSON (as wsgi_bg's queues are)."""
    return rq.job.Job.fetch(rq_job_id(job.id), serializer=SERIALIZER,
                            connection=mw.engine._runner.queue.connection)


def _queue(kind):
    """A queue name of wsgi_bg's, of this test's own."""
    return f"wsgi_bg.{kind}-{uuid.uuid4().hex[:8]}"


def _burst(url, queue, timeout=60, log=None, options=()):
    """Run ``rq worker --burst`` with wsgi_bg's worker class: it takes what
    waits, then exits; its output goes to ``log`` (a path) if given."""
    env = dict(os.environ, WSGI_BG_SECRET_KEY=TEST_SECRET_KEY,
               PYTHONPATH=PYTHONPATH)
    with open(log or os.devnull, "ab") as out:
        subprocess.run([rq_command(), "worker", "-w", WSGI_BG_WORKER, "--burst",
                        *queue.split(), "--url", url, *options],
                       env=env, cwd=ROOT, timeout=timeout, check=True,
                       stdout=out, stderr=out)


# -- choosing the runner ----------------------------------------------------------
def test_rq_without_the_redis_store_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"runner='rq' needs the Redis store"):
        BackgroundMiddleware(jobfuncs.hello, runner="rq")
    with pytest.raises(ValueError, match=r"runner must be 'pool'.*'rq'.*rq.Queue"):
        BackgroundMiddleware(jobfuncs.hello, runner="celery")


def test_a_queue_on_another_redis_is_refused(redis_server):
    other = rq.Queue("x", connection=redis.Redis(port=1))
    with pytest.raises(ValueError, match="the RQ queue's Redis must be the store's"):
        BackgroundMiddleware(jobfuncs.hello, store=redis_server.url,
                             secret_key=TEST_SECRET_KEY, runner=other)


def test_runner_rq_queues_on_the_namespace_queue_and_starts_no_pool(
        redis_server, wsgi_bg_middleware):
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    before = {p.pid for p in psutil.Process().children()}
    mw = wsgi_bg_middleware(jobfuncs.hello, store=redis_server.url,
                            secret_key=TEST_SECRET_KEY, runner="rq",
                            namespace=namespace)
    job = mw.submit(jobfuncs.add, 2, 3)
    assert mw.engine._runner.queue.name == f"wsgi_bg.{namespace}"
    assert queue_name(namespace) == f"wsgi_bg.{namespace}"
    assert queue_name("wsgi_bg") == "wsgi_bg"  # the default namespace's
    # Nothing started here: no pool, no Manager, no forkserver.
    assert {p.pid for p in psutil.Process().children()} - before - SESSION_PIDS == set()
    assert job.state is JobState.QUEUED
    _burst(redis_server.url, f"wsgi_bg.{namespace}")
    assert job.wait(timeout=20).result == 5


# -- what RQ holds ----------------------------------------------------------------
def _rq_fields(client):
    """Every value in every ``rq:*`` key (hashes, lists, sets, zsets,
    strings, streams), raw and unzipped."""
    for key in client.keys("rq:*"):
        kind = client.type(key)
        if kind == b"hash":
            values = [*client.hgetall(key), *client.hgetall(key).values()]
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = client.zrange(key, 0, -1)
        elif kind == b"string":
            values = [client.get(key)]
        elif kind == b"stream":
            values = [v for _, entry in client.xrange(key) for kv in entry.items()
                      for v in kv]
        else:
            values = []
        for value in [key, *values]:
            yield value
            yield _maybe_unzip(value)


def test_the_rq_job_holds_a_signed_reference_and_never_the_job_id(
        rq_mw, redis_server, rq_workers):
    """What RQ shows (rq info, rq-dashboard: the call, the RQ id, the
    description) identifies the job without opening its page: the job id, a
    capability, is nowhere in RQ's keys, queued, running or ended."""
    mw = rq_mw(queue=_queue("idle"))  # no worker: it waits
    secret = "s3cret-argument-" + uuid.uuid4().hex
    job = mw.submit(jobfuncs.identity, secret)
    rq_job = _rq_job(mw, job)
    assert rq_job.func_name == "wsgi_bg.runners.rq.perform"
    reference, token = rq_job.args
    assert reference == rq_job.id == rq_job_id(job.id)
    assert rq_job.kwargs == {}
    assert rq_job.description == "wsgi_bg: jobfuncs.identity"  # rq-dashboard's
    client = redis_server.client()
    # Read as JSON, as RQ's JSON serializer wrote it: no pickle anywhere.
    assert zlib.decompress(client.hget(f"rq:job:{reference}", "data")).startswith(b"[")
    # The token: the settings, signed with the reference.
    signer = Signer(TEST_SECRET_KEY.encode())
    from wsgi_bg.runners.rq import open_reference
    assert open_reference(signer, reference, token)["namespace"] == (
        mw.engine._runner._settings["namespace"])
    with pytest.raises(BadSignature):
        open_reference(signer, rq_job_id("another"), token)
    # A job run and ended on the session's workers, and a job cancelled.
    ran = rq_mw().submit(jobfuncs.identity, secret)
    assert ran.wait(timeout=20).state is JobState.SUCCEEDED
    assert mw.submit(jobfuncs.add, 1, 1).cancel()
    for value in _rq_fields(client):
        for capability in (job.id, ran.id):
            assert capability.encode() not in value
        assert secret.encode() not in value
        assert TEST_SECRET_KEY.encode() not in value
    # The call lives in the store, signed.
    stored = client.get(f"{mw.engine._runner._settings['namespace']}:call:{job.id}")
    assert stored.startswith(b"wsgi_bg.2")
    assert pickle.loads(mw.engine.store.call(job.id))[1] == (secret,)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _maybe_unzip(value: bytes) -> bytes:
    try:
        return zlib.decompress(value)
    except zlib.error:
        return b""


def test_cancel_of_a_queued_job_takes_it_off_the_rq_queue(rq_mw, redis_server):
    queue = _queue("idle")
    mw = rq_mw(queue=queue)
    job = mw.submit(jobfuncs.touch, "/nonexistent/never")
    rq_job = _rq_job(mw, job)
    assert rq_job.get_status() == "queued"
    assert job.cancel() is True
    assert job.state is JobState.CANCELLED
    assert rq_job.get_status(refresh=True) == "canceled"
    assert mw.engine._runner.queue.count == 0


@pytest.mark.parametrize("planted", [
    pytest.param("unsigned", id="unsigned"),
    pytest.param("other-key", id="signed-with-another-key"),
])
def test_a_planted_call_is_never_loaded(rq_mw, redis_server, tmp_path, planted):
    queue = _queue("idle")
    mw = rq_mw(queue=queue)
    marker = tmp_path / "ran"
    job = mw.submit(jobfuncs.add, 1, 2)
    evil = pickle.dumps((jobfuncs.touch, (str(marker),), {}))
    if planted == "other-key":
        evil = Signer(b"another-key-0123456789abcdef").sign("call", job.id, evil)
    namespace = mw.engine._runner._settings["namespace"]
    redis_server.client().set(f"{namespace}:call:{job.id}", evil)
    _burst(redis_server.url, queue)
    job.wait(timeout=20)
    assert job.state is JobState.FAILED
    assert f"the stored call of job {job.id}" in job.error
    assert "not loaded" in job.error
    assert not marker.exists()


# -- nothing planted in Redis runs --------------------------------------------------
class _Touch:
    """Unpickled, it creates ``path``: what a pickle planted in Redis does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (jobfuncs.touch, (self.path,))


def _planted(marker):
    return pickle.dumps(_Touch(str(marker)))


def test_a_pickle_planted_in_the_rq_job_never_loads_in_the_web_process(
        rq_mw, redis_server, tmp_path):
    """Pickles in the ``result`` and ``meta`` of a queued job's RQ hash: the
    web process reads RQ's jobs as JSON, so cancelling the job (from its
    page) loads neither, and it is still cancelled in RQ's books too."""
    mw = rq_mw(queue=_queue("idle"))
    marker = tmp_path / "ran-in-the-web-process"
    job = mw.submit(jobfuncs.add, 1, 2)
    client = redis_server.client()
    key = f"rq:job:{rq_job_id(job.id)}"
    client.hset(key, mapping={"result": _planted(marker), "meta": _planted(marker)})
    from webtest import TestApp

    TestApp(mw).post(f"{mw.prefix}/api/jobs/{job.id}/cancel", status=200)
    assert job.state is JobState.CANCELLED
    assert client.hget(key, "status") == b"canceled"
    assert not marker.exists()


def test_the_worker_runs_nothing_planted_on_wsgi_bgs_queue(
        rq_mw, redis_server, tmp_path, monkeypatch):
    """On wsgi_bg's queue, wsgi_bg's worker runs only wsgi_bg's call with a
    token signed with the app's key: another function (pickled or JSON), a
    pickle in a job's ``data``, a forged token are refused, logged and
    recorded failed in RQ, never loaded; a pickle in ``result`` or ``meta``
    of a genuine job is not loaded either, and the job runs."""
    queue = _queue("planted")
    mw = rq_mw(queue=queue)
    marker = tmp_path / "ran-in-the-worker"
    command = f"touch {marker}"
    client = redis_server.client()
    pickled = rq.Queue(queue, connection=client)  # RQ's default: pickles
    as_json = rq.Queue(queue, connection=client, serializer=SERIALIZER)
    planted = [
        pickled.enqueue(os.system, command).id,
        as_json.enqueue("os.system", command).id,
        as_json.enqueue(jobfuncs.touch, str(marker)).id,
    ]
    # wsgi_bg's call, with a token signed with another key.
    genuine = mw.submit(jobfuncs.add, 1, 2)
    reference = rq_job_id(genuine.id)
    _, token = _rq_job(mw, genuine).args
    from wsgi_bg.runners.rq import open_reference, perform, sign_reference

    settings = open_reference(Signer(TEST_SECRET_KEY.encode()), reference, token)
    forged = as_json.enqueue(perform, "wsgi_bg-forged", sign_reference(
        Signer(b"another-key-0123456789abcdef"), "wsgi_bg-forged", settings),
        job_id="wsgi_bg-forged")
    planted.append(forged.id)
    # wsgi_bg's call with a genuine token, under another RQ job id.
    planted.append(as_json.enqueue(perform, reference, token,
                                   job_id="wsgi_bg-copy").id)
    # A pickled job in the queue's scheduled registry, due: RQ's scheduler
    # would load it (with the worker's serializer) to enqueue it.
    scheduled = as_json.enqueue(jobfuncs.add, 0, 0, job_id="wsgi_bg-scheduled")
    as_json.remove(scheduled.id)
    client.hset(f"rq:job:{scheduled.id}", mapping={
        "status": "scheduled", "result": _planted(marker),
        "data": zlib.compress(_planted(marker))})
    client.zadd(f"rq:scheduled:{queue}", {scheduled.id: 1})
    # A pickle in the data of a wsgi_bg job queued after it.
    victim = mw.submit(jobfuncs.add, 2, 2)
    client.hset(f"rq:job:{rq_job_id(victim.id)}", "data",
                zlib.compress(_planted(marker)))
    planted.append(rq_job_id(victim.id))
    # Pickles in the result and meta of a genuine job, callbacks and a
    # webhook named in its hash, a dependent on a plain queue: never loaded,
    # called nor enqueued.
    plain = f"plain-{uuid.uuid4().hex[:8]}"
    dependent = rq.Queue(plain, connection=client).enqueue(os.system, command)
    rq.Queue(plain, connection=client).remove(dependent.id)
    dependent.set_status("deferred")
    client.sadd(f"rq:job:{reference}:dependents", dependent.id)
    callback = "rqplant.touch_marker"
    client.hset(f"rq:job:{reference}", mapping={
        "result": _planted(marker), "meta": _planted(marker),
        "success_callback_name": callback, "failure_callback_name": callback,
        "stopped_callback_name": callback,
        "webhooks": json.dumps([{"url": "http://127.0.0.1:9/", "events": []}])})
    monkeypatch.setenv("RQPLANT_MARKER", str(marker))
    log = tmp_path / "worker.log"
    _burst(redis_server.url, queue, log=str(log), options=("--with-scheduler",))
    assert not marker.exists()
    assert genuine.wait(timeout=20).result == 3
    assert client.llen(f"rq:queue:{plain}") == 0
    assert client.zcard(f"rq:scheduled:{queue}") == 1  # no scheduler ran
    text = log.read_text()
    failed = rq.registry.FailedJobRegistry(queue=as_json)
    for rq_id in planted:
        assert f"refused job {rq_id}" in text, text
        assert rq_id in failed.get_job_ids()
    assert text.count("refused job") == len(planted)
    assert "not a wsgi_bg job" in text and "did not check out" in text
    assert "not wsgi_bg's (not JSON)" in text
    assert "its reference is not its RQ job id" in text
    # Never run; RQ recorded it failed, and the RQ sweep ends it.
    wait_for(lambda: victim.state is JobState.CRASHED, 30,
             message="the job whose RQ data was replaced to end")
    assert "RQ recorded this job failed before it started" in victim.error


def test_a_failure_callback_planted_on_an_abandoned_job_never_runs(
        rq_mw, redis_server, tmp_path, monkeypatch):
    """RQ's clean-up of its started registry runs an abandoned job's failure
    callback, imported by the name in its hash: on wsgi_bg's queues, wsgi_bg's
    worker runs none (its clean-up, at start, still marks the job failed)."""
    queue = _queue("abandoned")
    mw = rq_mw(queue=queue)
    job = mw.submit(jobfuncs.add, 1, 1)
    reference = rq_job_id(job.id)
    client = redis_server.client()
    client.lrem(f"rq:queue:{queue}", 1, reference)
    client.hset(f"rq:job:{reference}", mapping={
        "status": "started", "failure_callback_name": "rqplant.touch_marker"})
    client.zadd(f"rq:wip:{queue}", {f"{reference}:planted": 1})
    marker = tmp_path / "ran"
    monkeypatch.setenv("RQPLANT_MARKER", str(marker))
    _burst(redis_server.url, queue)
    assert _rq_job(mw, job).get_status(refresh=True) == "failed"
    assert not marker.exists()


def _documented_acl(namespace):
    """The ACL docs/security.md shows, for ``namespace``."""
    with open(os.path.join(ROOT, "docs", "security.md"), encoding="utf-8") as f:
        line = next(raw.strip() for raw in f if "ACL SETUSER wsgi_bg" in raw)
    return line.replace("~wsgi_bg:*", f"~{namespace}:*").split()[3:]


def test_the_documented_acl_works_with_runner_rq_and_nothing_planted_runs(
        redis_server, wsgi_bg_middleware, tmp_path):
    """The web processes with the ACL user docs/security.md shows: submit,
    cancel and the pages work on runner="rq"; what that user can plant on
    wsgi_bg's queue (a call, a pickle in a job's result) never runs."""
    namespace = f"acl-{uuid.uuid4().hex[:8]}"
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "wsgi_bg", "reset",
                          *_documented_acl(namespace))
    workers = None
    try:
        url = redis_server.url.replace("redis://", "redis://wsgi_bg:long-password@")
        mw = wsgi_bg_middleware(jobfuncs.hello, store=url, runner="rq",
                                namespace=namespace, secret_key=TEST_SECRET_KEY)
        marker = tmp_path / "ran"
        job = mw.submit(jobfuncs.add, 2, 3)
        cancelled = mw.submit(jobfuncs.add, 1, 1)
        as_web = redis.Redis.from_url(url)
        queue = f"wsgi_bg.{namespace}"
        rq.Queue(queue, connection=as_web).enqueue(
            os.system, f"touch {marker}", job_id="wsgi_bg-planted")
        as_web.hset(f"rq:job:{rq_job_id(cancelled.id)}", "result", _planted(marker))
        assert cancelled.cancel() is True
        as_web.close()
        log = tmp_path / "worker.log"
        workers = RQWorkers(redis_server.url, queue, TEST_SECRET_KEY, count=1,
                            log=str(log)).start()
        assert job.wait(timeout=20).result == 5
        wait_for(lambda: "refused job wsgi_bg-planted" in log.read_text(), 20,
                 message="the worker to refuse the planted job")
        assert not marker.exists()
        assert cancelled.state is JobState.CANCELLED
        mw.engine._runner._sweep.sweep()  # the RQ sweep, as this user
        # The user could do all of it: nothing was refused by Redis.
        assert not [e for e in admin.execute_command("ACL", "LOG")
                    if e[b"username"] == b"wsgi_bg" and e[b"object"] != b"info"]
    finally:
        if workers is not None:
            workers.stop()
        admin.execute_command("ACL", "DELUSER", "wsgi_bg")
        admin.execute_command("ACL", "LOG", "RESET")


# -- the worker lives on ----------------------------------------------------------
@pytest.mark.parametrize(("fn", "args", "state"), [
    pytest.param(jobfuncs.exit_hard, (3,), JobState.CRASHED, id="os._exit"),
    pytest.param(jobfuncs.segfault, (), JobState.CRASHED, id="segfault"),
    pytest.param(jobfuncs.limited, (30,), JobState.TIMED_OUT, id="timeout"),
    pytest.param(jobfuncs.stubborn, None, JobState.CANCELLED, id="cancel-killed"),
])
def test_the_rq_worker_lives_on_and_takes_the_next_job(
        rq_mw, rq_workers, tmp_path, fn, args, state):
    mw = rq_mw()
    before = set(rq_workers.registered())
    started = str(tmp_path / "started")
    job = mw.submit(fn, *(args if args is not None else (started,)))
    if state is JobState.CANCELLED:
        wait_for(lambda: os.path.exists(started), 20, message="the job to start")
        job.cancel()
    job.wait(timeout=30)
    assert job.state is state, job.error
    assert all(p.poll() is None for p in rq_workers.processes)
    assert set(rq_workers.registered()) == before
    nexts = [mw.submit(jobfuncs.add, i, 1) for i in range(4)]
    assert [j.wait(timeout=20).result for j in nexts] == [1, 2, 3, 4]


def test_the_job_outlives_the_web_process(rq_mw, rq_workers, tmp_path):
    mw = rq_mw()
    flag = str(tmp_path / "go")
    job = mw.submit(jobfuncs.print_wait_print, "outlives", flag)
    wait_for(lambda: job.state is JobState.RUNNING, 20, message="the job to run")
    mw.shutdown()  # a deploy: the web process goes, the job goes on
    later = rq_mw()  # the next web process, same namespace
    jobfuncs.touch(flag)
    again = later.get_job(job.id)
    assert again.wait(timeout=20).state is JobState.SUCCEEDED
    assert again.output == "outlives start\noutlives end\n"


# -- wsgi_bg's worker class ---------------------------------------------------------
def test_a_job_process_has_wsgi_bgs_api_imported_already(rq_mw, rq_workers):
    """As a pool worker does, wsgi_bg's worker imports what a job's module
    imports of wsgi_bg (``background``, ``current_job``) before it forks:
    no fresh job process imports it again (20-50 ms each), even with no
    WSGI_BG_PRELOAD (the session's workers have none)."""
    seen = ("sorted(m for m in ('wsgi_bg.marks', 'wsgi_bg.engine')"
            " if m in __import__('sys').modules)")
    job = rq_mw().submit(eval, seen).wait(timeout=20)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result == ["wsgi_bg.engine", "wsgi_bg.marks"]


def _plain_rq_result(queue, fn, *args):
    """Run ``fn(*args)`` as a plain RQ job on ``queue``; its return value."""
    rq_job = queue.enqueue(fn, *args)
    wait_for(lambda: rq_job.get_status(refresh=True) in ("finished", "failed"), 20,
             message="the plain RQ job to end")
    assert rq_job.get_status() == "finished", rq_job.latest_result()
    return rq_job.return_value()


def test_wsgi_bg_jobs_run_in_the_worker_and_plain_rq_jobs_in_a_work_horse(
        rq_mw, redis_server):
    queue = _queue("mixed")
    plain = f"plain-{uuid.uuid4().hex[:8]}"
    workers = RQWorkers(redis_server.url, f"{queue} {plain}", TEST_SECRET_KEY,
                        count=1).start()
    try:
        mw = rq_mw(queue=queue)
        worker = workers.pids[0]
        ran = [mw.submit(jobfuncs.pid_and_parent).wait(timeout=20).result
               for _ in range(3)]
        # A job process of the worker itself (no work horse), kept for the next.
        assert {parent for _, parent in ran} == {worker}
        assert len({pid for pid, _ in ran}) == 1
        warm = ran[0][0]
        # A plain RQ job on the same worker (on a queue not wsgi_bg's) gets
        # a work horse, as on a stock one.
        with redis_server.client() as client:
            horse, parent = _plain_rq_result(rq.Queue(plain, connection=client),
                                             jobfuncs.pid_and_parent)
        assert parent == worker
        assert horse not in (worker, warm)
        wait_for(lambda: _gone(horse), 10, message="the work horse to end")
        # The job process kept warm, killed while it waits: the next job gets
        # a fresh one.
        os.kill(warm, signal.SIGKILL)
        wait_for(lambda: _gone(warm), 10, message="the killed job process to end")
        again = mw.submit(jobfuncs.pid_and_parent).wait(timeout=20)
        assert again.state is JobState.SUCCEEDED, again.error
        fresh, parent = again.result
        assert parent == worker
        assert fresh != warm
        # It ends with the worker (here, its warm shutdown while idle).
        workers.processes[0].terminate()
        workers.processes[0].wait(20)
        wait_for(lambda: _gone(fresh), 10,
                 message="the job process kept warm to end with its worker")
    finally:
        workers.stop()


@pytest.mark.parametrize(("fn", "signals", "grace", "state"), [
    pytest.param(jobfuncs.cooperative, 1, 1.0, JobState.SUCCEEDED,
                 id="the-job-stops-as-asked"),
    pytest.param(jobfuncs.stubborn, 1, 1.0, JobState.CANCELLED,
                 id="killed-after-cancel_grace"),
    pytest.param(jobfuncs.stubborn, 2, 60.0, JobState.CANCELLED,
                 id="a-second-signal-kills-it-at-once"),
])
def test_a_worker_stopped_mid_job_stops_its_job_then_exits(
        rq_mw, redis_server, tmp_path, fn, signals, grace, state):
    queue = _queue("stop")
    workers = RQWorkers(redis_server.url, queue, TEST_SECRET_KEY, count=1).start()
    try:
        mw = rq_mw(queue=queue, cancel_grace=grace)
        started = str(tmp_path / "started")
        job = mw.submit(fn, started)
        wait_for(lambda: os.path.exists(started), 20, message="the job to start")
        job_pid = mw.engine.store.get(job.id)["pid"]
        worker = workers.processes[0]
        asked = time.monotonic()
        worker.terminate()  # RQ's warm shutdown
        if signals == 2:
            # Not a synchronisation: RQ ignores a second signal that comes
            # within 1 s of the first (rq worker-pool sends duplicates).
            time.sleep(1.5)
            worker.terminate()  # RQ's cold shutdown
        worker.wait(30)  # the worker exits by itself once its job is recorded
        assert job.state is state, job.error
        if state is JobState.SUCCEEDED:
            assert job.result == "stopped"
            assert "stopping as asked" in job.output
        else:
            assert "its process was killed" in job.error
        if signals == 2:
            assert time.monotonic() - asked < grace / 2
        wait_for(lambda: _gone(job_pid), 10, message="the job's process to end")
    finally:
        workers.stop()


def test_a_job_on_the_rq_worker_starts_with_default_signal_handlers(rq_mw, rq_workers):
    """Not the worker's (RQ's warm shutdown on SIGTERM, its timeout on
    SIGALRM): the job's process was forked from the worker itself."""
    mw = rq_mw()
    job = mw.submit(jobfuncs.signal_handlers).wait(timeout=20)
    assert job.result == {"SIGTERM": "default", "SIGALRM": "default",
                          "SIGINT": "default", "SIGHUP": "default",
                          "SIGUSR1": "default"}, job.error


def test_rqs_stop_job_command_kills_the_job_and_the_worker_lives_on(
        rq_mw, rq_workers, tmp_path):
    mw = rq_mw(cancel_grace=60.0)
    started = str(tmp_path / "started")
    job = mw.submit(jobfuncs.stubborn, started)
    wait_for(lambda: os.path.exists(started), 20, message="the job to start")
    rq_job = _rq_job(mw, job)
    rq.command.send_stop_job_command(rq_job.connection, rq_job.id,
                                     serializer=SERIALIZER)
    assert job.wait(timeout=20).state is JobState.CANCELLED, job.error
    # RQ's books: stopped, as for a stock job stopped by stop-job.
    wait_for(lambda: rq_job.get_status(refresh=True) == "stopped", 10,
             message="RQ to record its job stopped")
    assert all(p.poll() is None for p in rq_workers.processes)
    nexts = [mw.submit(jobfuncs.add, i, 1) for i in range(4)]
    assert [j.wait(timeout=20).result for j in nexts] == [1, 2, 3, 4]


def test_rq_heartbeats_go_on_while_a_job_runs_in_the_worker(
        rq_mw, redis_server, tmp_path):
    """RQ takes a worker, and the job it runs, for dead once their heartbeat
    runs out (``--job-monitoring-interval`` + 60 s after the last): a forking
    worker renews it while it waits for its horse, wsgi_bg's from the
    supervisor's loop."""
    queue = _queue("beat")
    workers = RQWorkers(redis_server.url, queue, TEST_SECRET_KEY, count=1,
                        options=("--job-monitoring-interval", "1")).start()
    try:
        mw = rq_mw(queue=queue)
        flag = str(tmp_path / "go")
        job = mw.submit(jobfuncs.print_wait_print, "long", flag)
        wait_for(lambda: job.state is JobState.RUNNING, 20, message="the job to run")
        rq_job = _rq_job(mw, job)
        started = rq_job.started_at.timestamp()
        connection = mw.engine._runner.queue.connection
        worker = rq.Worker.find_by_key(
            rq.Worker.redis_worker_namespace_prefix + workers.names[0],
            connection=connection)
        wait_for(lambda: (worker.refresh() or worker.last_heartbeat.timestamp())
                 > started + 2, 10, message="the worker's heartbeats during the job")
        # RQ's own clean-up, as of the end of the job's first heartbeat window
        # (61 s after it started): without heartbeats since, the job would be
        # abandoned there, and failed.
        registry = rq.registry.StartedJobRegistry(queue=rq.Queue(
            queue, connection=connection))
        registry.cleanup(timestamp=started + 61.5)
        assert rq_job.get_status(refresh=True) == "started"
        assert job.state is JobState.RUNNING
        jobfuncs.touch(flag)
        assert job.wait(timeout=20).state is JobState.SUCCEEDED, job.error
        wait_for(lambda: rq_job.get_status(refresh=True) == "finished", 10,
                 message="RQ to record its job finished")
    finally:
        workers.stop()


# -- RQ's books ----------------------------------------------------------------------
def test_rqs_registries_and_the_workers_counters_say_what_happened(
        rq_mw, redis_server, tmp_path):
    """rq-dashboard and RQ's exporters read RQ's registries and the worker's
    counters: a failed, timed-out or crashed wsgi_bg job is RQ's failed, a
    cancelled one RQ's canceled, a succeeded one RQ's finished; the worker
    counts one success and three failures, not five successes."""
    queue = _queue("books")
    workers = RQWorkers(redis_server.url, queue, TEST_SECRET_KEY, count=1).start()
    try:
        mw = rq_mw(queue=queue)
        started = str(tmp_path / "started")
        ran = [(mw.submit(jobfuncs.add, 1, 2), JobState.SUCCEEDED, "finished"),
               (mw.submit(jobfuncs.boom), JobState.FAILED, "failed"),
               (mw.submit(jobfuncs.limited, 30), JobState.TIMED_OUT, "failed"),
               (mw.submit(jobfuncs.exit_hard, 3), JobState.CRASHED, "failed")]
        for job, state, _ in ran:
            assert job.wait(timeout=30).state is state, job.error
        cancelled = mw.submit(jobfuncs.stubborn, started)
        wait_for(lambda: os.path.exists(started), 20, message="the job to start")
        cancelled.cancel()
        assert cancelled.wait(timeout=30).state is JobState.CANCELLED
        ran.append((cancelled, JobState.CANCELLED, "canceled"))
        connection = mw.engine._runner.queue.connection
        books = rq.Queue(queue, connection=connection, serializer=SERIALIZER)
        registries = {
            "finished": rq.registry.FinishedJobRegistry(queue=books),
            "failed": rq.registry.FailedJobRegistry(queue=books),
            "canceled": rq.registry.CanceledJobRegistry(queue=books),
        }
        for job, _, status in ran:
            rq_job = _rq_job(mw, job)
            wait_for(lambda rq_job=rq_job, status=status:
                     rq_job.get_status(refresh=True) == status, 10,
                     message=f"RQ to record {job.name} {status}")
            assert rq_job.id in registries[status].get_job_ids()
        assert rq.registry.StartedJobRegistry(queue=books).get_job_ids() == []
        worker = connection.hgetall(f"rq:worker:{workers.names[0]}")
        assert int(worker[b"successful_job_count"]) == 1
        assert int(worker[b"failed_job_count"]) == 3
        # What RQ shows of a failure: its reference and state, not its error.
        failed = _rq_job(mw, ran[1][0]).latest_result().exc_string
        assert f"wsgi_bg job {rq_job_id(ran[1][0].id)} ended failed" in failed
        assert ran[1][0].id not in failed
    finally:
        workers.stop()


def test_a_worker_killed_mid_job_is_busy_in_rq_no_longer_than_a_stock_one(
        rq_mw, redis_server):
    """RQ shows a worker killed with -9 as busy until its key expires: no
    longer for wsgi_bg's worker running a wsgi_bg job than for RQ's stock
    worker running a plain RQ job."""
    ttls = {}
    for kind in ("wsgi_bg", "stock"):
        queue = _queue("busy") if kind == "wsgi_bg" else f"plain-{uuid.uuid4().hex[:8]}"
        workers = RQWorkers(redis_server.url, queue, TEST_SECRET_KEY, count=1,
                            worker_class=WSGI_BG_WORKER if kind == "wsgi_bg"
                            else None).start()
        try:
            client = redis_server.client()
            key = f"rq:worker:{workers.names[0]}"
            if kind == "wsgi_bg":
                job = rq_mw(queue=queue).submit(jobfuncs.sleeper, 300)
                wait_for(lambda job=job: job.state is JobState.RUNNING, 20,
                         message="the job to run")
            else:
                rq.Queue(queue, connection=client).enqueue(time.sleep, 300)
            wait_for(lambda key=key, client=client: client.hget(key, "state")
                     == b"busy", 20, message="the worker to be busy")
            workers.kill(0)
            ttls[kind] = client.ttl(key)
            if kind == "wsgi_bg":  # (its lease runs out)
                wait_for(lambda job=job: job.state is JobState.CRASHED, 60,
                         message="the job of the killed worker to end")
        finally:
            workers.stop()
    assert 0 < ttls["wsgi_bg"] <= ttls["stock"] + 1, ttls


# -- a worker killed mid-job ------------------------------------------------------
@pytest.mark.parametrize(("worker_class", "how"), [
    # wsgi_bg's worker: the job's process is the worker's child, and dies
    # with it; the job's lease runs out.
    pytest.param(WSGI_BG_WORKER, "worker", id="wsgi_bg-worker"),
    # A host gone: the worker and the job's process killed at once.
    pytest.param(WSGI_BG_WORKER, "host", id="wsgi_bg-worker-and-job"),
])
def test_a_worker_killed_mid_job_ends_its_job_crashed_within_60s(
        rq_mw, redis_server, tmp_path, worker_class, how):
    queue = _queue("kill")
    workers = RQWorkers(redis_server.url, queue, TEST_SECRET_KEY, count=2,
                        worker_class=worker_class).start()
    try:
        mw = rq_mw(queue=queue)
        job = mw.submit(jobfuncs.sleeper, 300)
        wait_for(lambda: job.state is JobState.RUNNING, 20, message="the job to run")
        job_pid = mw.engine.store.get(job.id)["pid"]
        ancestors = [p.pid for p in psutil.Process(job_pid).parents()]
        # The job's process is the worker's child, or its work horse's.
        assert ancestors.index(next(p for p in ancestors if p in workers.pids)) == (
            0 if worker_class else 1)
        index = workers.pids.index(next(p for p in ancestors if p in workers.pids))
        killed_at = time.monotonic()
        if how == "worker":
            workers.kill(index)
        else:
            workers.kill_all_of(index)
        if worker_class:
            wait_for(lambda: _gone(job_pid), 10,
                     message="the job's process to die with its worker")
        wait_for(lambda: job.state not in (JobState.QUEUED, JobState.RUNNING), 60,
                 message="the job to end")
        took = time.monotonic() - killed_at
        assert job.state is JobState.CRASHED, job.error
        assert took < 60
        assert "RQ worker was killed" in job.error
        wait_for(lambda: _gone(job_pid), 10, message="the job's process to end")
        # The other worker takes the next job.
        assert mw.submit(jobfuncs.add, 2, 2).wait(timeout=20).result == 4
    finally:
        workers.stop()


# -- no job waits for a worker that died, nor for a queue nobody reads ---------------
@pytest.mark.parametrize(("at", "queues"), [
    pytest.param("taken", 1, id="taken-one-queue"),  # (in RQ's intermediate list)
    pytest.param("taken", 2, id="taken-two-queues"),  # (in no list at all)
    pytest.param("started", 1, id="started-in-rq"),
])
def test_a_worker_killed_after_taking_a_job_before_it_started_ends_it_crashed(
        rq_mw, redis_server, monkeypatch, at, queues):
    """SIGKILL between RQ's dequeue and the job's start: the job is in no
    queue and nothing will run it; it ends crashed within 60 s, saying an
    RQ worker took it (by name once RQ knows which)."""
    queue = _queue("taken")
    names = queue if queues == 1 else f"{queue} plain-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("RQKILL_AT", at)
    workers = RQWorkers(redis_server.url, names, TEST_SECRET_KEY, count=1,
                        preload="rqkill").start()
    try:
        mw = rq_mw(queue=queue)
        job = mw.submit(jobfuncs.add, 1, 1)
        taken_at = time.monotonic()
        workers.processes[0].wait(20)  # it took the job, and died
        wait_for(lambda: job.state is not JobState.QUEUED, 60,
                 message="the job taken by a dead worker to end")
        assert time.monotonic() - taken_at < 60
        assert job.state is JobState.CRASHED
        assert "RQ worker" in job.error
        assert "stopped before it started it" in job.error
        if at == "started":
            assert workers.names[0] in job.error
    finally:
        workers.stop()


def test_a_job_whose_rq_job_never_reached_the_queue_ends_within_30s(rq_mw):
    """Its record was created and queueing it on RQ failed (Redis lost the
    answer, the process died): nothing would ever run it; it ends crashed
    within 30 s, saying so, and holds no max_queued slot after."""
    mw = rq_mw(queue=_queue("lost"), max_queued=1)
    mw.submit(jobfuncs.add, 1, 1).cancel()  # the runner started
    runner = mw.engine._runner
    real = runner.submit
    runner.submit = lambda *args, **kwargs: None  # the RQ job never queued
    job = mw.submit(jobfuncs.add, 1, 2)
    created = time.monotonic()
    wait_for(lambda: job.state is not JobState.QUEUED, 30,
             message="the job never queued on RQ to end")
    assert time.monotonic() - created < 30
    assert job.state is JobState.CRASHED
    assert "never reached RQ's queue" in job.error
    runner.submit = real
    assert mw.submit(jobfuncs.add, 1, 1).cancel()  # the slot is free


def test_two_queues_of_one_namespace_leave_each_others_jobs_be(
        rq_mw, monkeypatch):
    """Two apps (or a deploy that renamed the queue) on one namespace, each
    on a queue of its own: an RQ sweep judges the jobs of its own queue, and
    one waiting on the other is neither lost (its app's web processes may
    be gone while its workers go on) nor given this one's notice."""
    from wsgi_bg.runners import rq as rq_runner

    monkeypatch.setattr(rq_runner, "QUEUE_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(rq_runner, "TAKEN_SECONDS", 0.0)  # a suspect ends at once
    queues = [_queue("one"), _queue("two")]
    made = [rq_mw(queue=queue) for queue in queues]
    ours, theirs = [mw.submit(jobfuncs.add, 1, i) for i, mw in enumerate(made)]
    made[1].engine._runner._sweep.stop()  # its web process gone
    for _ in range(2):
        made[0].engine._runner._sweep.sweep()
    assert (ours.state, theirs.state) == (JobState.QUEUED, JobState.QUEUED), (
        theirs.error)
    assert f"listens on queue {queues[0]}." in ours.to_dict()["notice"]
    assert theirs.to_dict()["notice"] is None


def test_a_job_queued_where_no_worker_listens_says_so_until_one_does(
        rq_mw, redis_server):
    """Its page and JSON say so while it waits, with the command that starts
    a worker (its notice, not its progress); once cancelled, or started by a
    worker, they say it no more."""
    from webtest import TestApp

    queue = _queue("nobody")
    mw = rq_mw(queue=queue)
    pages = TestApp(mw)

    def shown(job):
        data = pages.get(f"{mw.prefix}/api/jobs/{job.id}").json
        return data["notice"], pages.get(f"{mw.prefix}/{job.id}").text

    job, cancelled = mw.submit(jobfuncs.add, 2, 2), mw.submit(jobfuncs.add, 1, 1)
    wait_for(lambda: shown(job)[0] and shown(cancelled)[0], 20,
             message="the jobs' pages to say no worker listens")
    for waiting in (job, cancelled):
        notice, page = shown(waiting)
        assert f"no RQ worker listens on queue {queue}" in notice
        assert f"rq worker -w wsgi_bg.rq_worker.Worker {queue}" in notice
        assert f"no RQ worker listens on queue {queue}" in page
        assert waiting.state is JobState.QUEUED
        assert waiting.progress is None
    assert cancelled.cancel() is True
    notice, page = shown(cancelled)
    assert notice is None
    assert "no RQ worker listens" not in page
    assert "cancelled before it started" in page
    workers = RQWorkers(redis_server.url, queue, TEST_SECRET_KEY, count=1).start()
    try:
        assert job.wait(timeout=20).result == 4
        notice, page = shown(job)
        assert notice is None
        assert "no RQ worker listens" not in page
        assert job.progress is None
    finally:
        workers.stop()


# -- what a job costs Redis ----------------------------------------------------------
def _commands_of(redis_server, run):
    """The commands clients sent Redis while ``run()`` ran (MONITOR: not
    those a script ran), each ``(client, command words as text)``."""
    seen, ready, stop = [], threading.Event(), threading.Event()

    def watch():
        with redis_server.client().monitor() as monitor:
            ready.set()
            for command in monitor.listen():
                if stop.is_set():
                    return
                seen.append(command)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(10)
    redis_server.client().ping()  # (MONITOR is on once it shows)
    wait_for(lambda: seen, 10, message="MONITOR to start")
    start = len(seen)
    run()
    stop.set()
    redis_server.client().ping()  # (its next command ends the watch)
    watcher.join(10)
    return [(f"{c['client_address']}:{c['client_port']}", c["command"])
            for c in seen[start:] if c["client_type"] != "lua"]


def test_a_job_on_rq_makes_no_round_trip_it_can_do_without(rq_mw, redis_server):
    """The worker reads the RQ job's hash (its fields' sizes checked first)
    in one script, and finds the job and its call in another; the web
    process queues the RQ job in one transaction."""
    queue = _queue("trips")
    workers = RQWorkers(redis_server.url, queue, TEST_SECRET_KEY, count=1).start()
    try:
        mw = rq_mw(queue=queue)
        assert mw.submit(jobfuncs.add, 1, 1).wait(timeout=20).result == 2  # warm
        job = None

        def run():
            nonlocal job
            job = mw.submit(jobfuncs.add, 2, 3)
            assert job.wait(timeout=20).result == 5

        commands = _commands_of(redis_server, run)
    finally:
        workers.stop()
    namespace = mw.engine._runner._settings["namespace"]
    rq_key = f"rq:job:{rq_job_id(job.id)}"
    words = [command.split() for _, command in commands]
    assert not [w for w in words
                if w[0] in ("HKEYS", "HSTRLEN", "ZRANGEBYSCORE", "ZSCORE")]
    assert ["GET", f"{namespace}:call:{job.id}"] not in words
    # RQ's job hash: read by one script, never by HGETALL.
    reads = [w for w in words if rq_key in w and w[0] in ("EVALSHA", "HGETALL")]
    assert [(w[0], *w[2:4]) for w in reads] == [("EVALSHA", "1", rq_key)], reads
    # The enqueue: one MULTI, RQ's set of queues in it.
    queued = next(client for client, command in commands
                  if command.startswith(f"RPUSH rq:queue:{queue} "))
    sent = [command.split()[0] for client, command in commands if client == queued]
    assert sent == ["MULTI", "SADD", "HSET", "HSET", "RPUSH", "EXEC"], sent


# -- deployment that cannot go quietly wrong ------------------------------------------
def test_a_worker_without_the_secret_key_refuses_to_start_on_wsgi_bgs_queue(
        redis_server, tmp_path):
    """It would take jobs and fail each one: it exits at once, saying why; on
    a plain queue it is RQ's stock worker and needs no key."""
    log = tmp_path / "worker.log"
    workers = RQWorkers(redis_server.url, _queue("nokey"), None, count=1,
                        log=str(log))
    with pytest.raises(RuntimeError, match="exited with 1 at start"):
        workers.start()
    text = log.read_text()
    assert "wsgi_bg's RQ worker cannot take jobs from wsgi_bg.nokey-" in text
    assert "WSGI_BG_SECRET_KEY" in text and "secrets.token_hex(32)" in text
    plain = RQWorkers(redis_server.url, f"plain-{uuid.uuid4().hex[:8]}", None,
                      count=1).start()
    plain.stop()


def test_rq_key_prefix_moves_every_rq_key_the_runner_reads_and_writes(
        redis_server, tmp_path):
    """RQ_KEY_PREFIX (rq 3), set for a web process and its workers as a
    deployment does, the web process the ACL user docs/security.md shows
    with the prefix written for ``rq``: jobs run; a job waiting behind a
    running one is known to have a worker listening; one where none
    listens says so, and the RQ sweep does not take it for lost; a cancel
    takes a queued one off RQ's queue into RQ's canceled registry; nothing
    lands under RQ's default prefix, and Redis refused the user nothing."""
    prefix = "myapp:rq"
    busy, idle = _queue("prefixed"), _queue("prefixed-idle")
    namespace = f"t-{uuid.uuid4().hex[:12]}"
    admin = redis_server.client()
    acl = [rule.replace("rq:", f"{prefix}:") for rule in
           _documented_acl(f"{namespace}-*")]
    admin.execute_command("ACL", "SETUSER", "wsgi_bg_prefixed", "reset", *acl)
    workers = RQWorkers(redis_server.url, busy, TEST_SECRET_KEY, count=1,
                        key_prefix=prefix).start()
    try:
        env = dict(os.environ, PYTHONPATH=PYTHONPATH, RQ_KEY_PREFIX=prefix,
                   WSGI_BG_SECRET_KEY=TEST_SECRET_KEY)
        out = subprocess.run(
            [sys.executable, os.path.join(ROOT, "tests", "rq_prefix_web.py"),
             redis_server.url.replace(
                 "redis://", "redis://wsgi_bg_prefixed:long-password@"),
             redis_server.url, namespace, busy, idle, str(tmp_path / "go")],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
        refused = [entry for entry in admin.execute_command("ACL", "LOG")
                   if entry[b"username"] == b"wsgi_bg_prefixed"
                   and entry[b"object"] != b"info"]
    finally:
        workers.stop()
        admin.execute_command("ACL", "DELUSER", "wsgi_bg_prefixed")
        admin.execute_command("ACL", "LOG", "RESET")
    assert out.returncode == 0, out.stderr
    assert refused == []
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["result"] == 5
    assert (seen["waited"], seen["ran"]) == (2, "succeeded")
    assert seen["waiting"]["state"] == "queued"
    assert seen["waiting"]["notice"] is None  # a worker listens there
    lost = seen["lost"]
    assert lost["state"] == "queued", lost["error"]
    assert f"no RQ worker listens on queue {idle}" in lost["notice"]
    assert f"RQ_KEY_PREFIX={prefix} rq worker -w" in lost["notice"]
    assert seen["cancelled"] is True
    references = seen["references"]
    assert seen["canceled_registry"] == [references["cancelled"]]
    assert seen["idle_queue"] == [references["lost"]]
    keys = seen["keys"]
    assert f"{prefix}:job:{references['lost']}" in keys
    assert [key for key in keys if key.startswith("rq:") and any(
        name in key for name in (busy, idle, *references.values()))] == []


def test_a_queue_or_job_class_with_a_key_prefix_of_its_own_is_refused(
        redis_server):
    """RQ names its workers' and registries' keys from RQ_KEY_PREFIX alone:
    a class's own prefix is refused at start, saying to set RQ_KEY_PREFIX."""
    from wsgi_bg.rq_worker import Worker

    class PrefixedQueue(rq.Queue):
        redis_queue_namespace_prefix = "other:queue:"

    class PrefixedJob(rq.job.Job):
        redis_job_namespace_prefix = "other:job:"

    client = redis_server.client()
    with pytest.raises(ValueError, match=(
            r"RQ's own job key prefix 'rq:job:' \(from RQ_KEY_PREFIX\), got"
            r" 'other:job:' from PrefixedJob: .* set the environment variable"
            " RQ_KEY_PREFIX")):
        BackgroundMiddleware(jobfuncs.hello, store=redis_server.url,
                             secret_key=TEST_SECRET_KEY, runner=rq.Queue(
                                 "wsgi_bg.x", connection=client,
                                 job_class=PrefixedJob))
    # (a Queue subclass is no runner: it is refused as one)
    with pytest.raises(ValueError, match=(
            r"RQ's own queue key prefix 'rq:queue:' .* got 'other:queue:' from"
            r" WsgiBgPrefixedQueue: .* RQ_KEY_PREFIX")):
        Worker(["wsgi_bg.x"], connection=client, queue_class=PrefixedQueue)


def test_a_warm_shutdown_takes_no_more_than_cancel_grace_and_a_second_or_two(
        rq_mw, redis_server, tmp_path):
    """rq 3 with redis-py 8 could wait 60 s for its pub/sub thread at exit:
    idle workers exit within 2.5 s of SIGTERM, and one running a job that
    ignores the request within cancel_grace + 2.5 s."""
    queue = _queue("warm")
    workers = RQWorkers(redis_server.url, queue, TEST_SECRET_KEY, count=3).start()
    try:
        idle = workers.processes[1:]
        mw = rq_mw(queue=queue, cancel_grace=1.0)
        started = str(tmp_path / "started")
        job = mw.submit(jobfuncs.stubborn, started)
        wait_for(lambda: os.path.exists(started), 20, message="the job to start")
        busy = next(p for p in workers.processes
                    if p.pid == psutil.Process(mw.engine.store.get(job.id)["pid"]
                                               ).ppid())
        asked = time.monotonic()
        for process in workers.processes:
            process.terminate()
        for process in [p for p in workers.processes if p is not busy]:
            process.wait(30)
            assert time.monotonic() - asked < 2.5
        busy.wait(30)
        assert time.monotonic() - asked < 1.0 + 2.5
        assert job.state is JobState.CANCELLED
        assert idle
    finally:
        workers.stop()


# -- the example ------------------------------------------------------------------
def test_the_rq_example_runs_its_report_on_the_workers(
        redis_server, rq_workers, session_middleware, monkeypatch):
    import sys

    from webtest import TestApp

    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    import rq_example

    namespace = f"t-{uuid.uuid4().hex[:12]}"
    mw = session_middleware(
        rq_example.site, store=redis_server.url, namespace=namespace,
        secret_key=TEST_SECRET_KEY,
        runner=rq.Queue(RQ_TEST_QUEUE, connection=redis_server.client()))
    assert "rq_example" in sys.modules
    client = TestApp(mw)
    res = client.post("/", {"months": "3"}, status=303)
    job = mw.get_job(res.headers["Location"].rsplit("/", 1)[1])
    assert job.wait(timeout=30).state is JobState.SUCCEEDED, job.error
    assert job.result == {"months": 3}
    assert job.output.count("done on host") == 3
    assert job.progress["done"] == 3
    # The three commands its docstring gives.
    doc = rq_example.__doc__
    assert "redis-server" in doc
    assert ("rq worker -w wsgi_bg.rq_worker.Worker wsgi_bg -u"
            " redis://localhost:6379 -P examples") in doc
    # The worker command it prints: on its namespace's queue.
    assert rq_example.worker_command("wsgi_bg").startswith(
        "rq worker -w wsgi_bg.rq_worker.Worker wsgi_bg -u ")
    assert rq_example.worker_command("shop").startswith(
        "rq worker -w wsgi_bg.rq_worker.Worker wsgi_bg.shop -u ")
    assert "python examples/rq_example.py" in doc


def test_the_worker_settings_module_preloads_and_sets_nothing():
    """``rq worker -c wsgi_bg.rq_worker``: the worker imports wsgi_bg's RQ
    runner and the WSGI_BG_PRELOAD modules itself, before its forks; RQ reads
    no setting from it (no UPPERCASE names)."""
    code = ("import sys, wsgi_bg.rq_worker as m; print(sorted(k for k in vars(m)"
            " if k.upper() == k), 'jobfuncs' in sys.modules,"
            " 'wsgi_bg.runners.rq' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, WSGI_BG_PRELOAD=" jobfuncs ,",
               WSGI_BG_SECRET_KEY=TEST_SECRET_KEY)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["[]", "True", "True"]


# -- what a Redis writer still cannot do ----------------------------------------
def _log_has(log, text):
    return log.exists() and text in log.read_text()


def test_a_job_moved_to_another_namespaces_queue_never_runs_there(
        rq_mw, redis_server, tmp_path):
    """Staging and prod share a Redis and a key, in namespaces (queues) of
    their own: a staging job's RQ job moved onto prod's queue is refused by
    prod's worker (its token names staging's queue), never run there; prod's
    own jobs still run."""
    staging, prod = _queue("staging"), _queue("prod")
    marker = tmp_path / "ran-on-prod"
    job = rq_mw(queue=staging).submit(jobfuncs.touch, str(marker))
    reference = rq_job_id(job.id)
    client = redis_server.client()
    client.lrem(f"rq:queue:{staging}", 0, reference)
    client.hset(f"rq:job:{reference}", "origin", prod)
    client.rpush(f"rq:queue:{prod}", reference)
    log = tmp_path / "prod.log"
    workers = RQWorkers(redis_server.url, prod, TEST_SECRET_KEY, count=1,
                        log=str(log)).start()
    try:
        wait_for(lambda: _log_has(log, f"refused job {reference}"), 20,
                 message="prod's worker to refuse staging's job")
        assert f"its token is for queue '{staging}', not '{prod}'" in log.read_text()
        ours = rq_mw(queue=prod, namespace=f"t-{uuid.uuid4().hex[:12]}")
        assert ours.submit(jobfuncs.add, 1, 2).wait(timeout=20).result == 3
        assert not marker.exists()
    finally:
        workers.stop()


def test_a_finished_jobs_call_is_never_replayed(rq_mw, redis_server, tmp_path):
    """A Redis writer sets a finished job's record back to queued and puts its
    RQ job (its signed call, as read earlier) back on the queue: the job
    starts at most once, so the call never runs again."""
    queue = _queue("replay")
    mw = rq_mw(queue=queue)
    marker = tmp_path / "paid"
    log = tmp_path / "worker.log"
    workers = RQWorkers(redis_server.url, queue, TEST_SECRET_KEY, count=1,
                        log=str(log)).start()
    try:
        job = mw.submit(jobfuncs.touch, str(marker))
        assert job.wait(timeout=20).state is JobState.SUCCEEDED, job.error
        assert job.started_at is not None
        client = redis_server.client()
        reference = rq_job_id(job.id)
        key = f"rq:job:{reference}"
        wait_for(lambda: client.hget(key, "status") == b"finished", 10,
                 message="RQ to record the job finished")
        data = client.hget(key, "data")
        marker.unlink()
        namespace = mw.engine._runner._settings["namespace"]
        client.hset(f"{namespace}:job:{job.id}", "state", "queued")
        client.zrem(f"{namespace}:state:succeeded", job.id)
        client.zadd(f"{namespace}:state:queued", {job.id: time.time()})
        client.hset(key, mapping={"data": data, "status": "queued", "origin": queue})
        client.rpush(f"rq:queue:{queue}", reference)
        wait_for(lambda: client.hget(key, "status") in (b"failed", b"finished"), 20,
                 message="the worker to take the replayed job")
        assert client.hget(key, "status") == b"failed"
        assert not marker.exists()
        # The worker takes its next job.
        assert mw.submit(jobfuncs.add, 2, 2).wait(timeout=20).result == 4
    finally:
        workers.stop()


def test_an_unreadable_rq_job_stops_no_worker_nor_a_later_one(
        rq_mw, redis_server, tmp_path):
    """RQ job hashes planted on wsgi_bg's queue that RQ cannot parse (a bogus
    status, an exc_info that is no UTF-8, an id RQ refuses), in the queue and
    in its intermediate list (as a worker killed after taking one leaves
    it): each worker refuses and logs them, takes genuine jobs, and exits
    only when asked; a worker started after does too."""
    queue = _queue("unreadable")
    mw = rq_mw(queue=queue)
    client = redis_server.client()
    data = zlib.compress(json.dumps(["os.system", None, ["id"], {}]).encode())
    planted = {
        "planted-status": {"status": "bogus"},
        "planted-exc": {"exc_info": zlib.compress(b"\xff\xfe not UTF-8")},
        "planted id": {},  # not a valid RQ job id
    }
    for rq_id, fields in planted.items():
        client.hset(f"rq:job:{rq_id}", mapping={
            "data": data, "origin": queue, "status": "queued",
            "created_at": "2026-01-01T00:00:00.000000Z", **fields})
        client.rpush(f"rq:queue:{queue}", rq_id)
        client.rpush(f"rq:queue:{queue}:intermediate", rq_id)
    log = tmp_path / "worker.log"
    for _ in range(2):  # a first worker, and a later one
        job = mw.submit(jobfuncs.add, 1, 2)
        _burst(redis_server.url, queue, log=str(log))  # exits 0, not "quitting"
        assert job.wait(timeout=20).result == 3
    text = log.read_text()
    assert "unhandled exception" not in text
    for rq_id in planted:
        assert f"refused job {rq_id!r}" in text, text
    assert client.llen(f"rq:queue:{queue}") == 0
    assert client.lrange(f"rq:queue:{queue}:intermediate", 0, -1) == []


def test_a_planted_description_forges_no_log_line(rq_mw, redis_server, tmp_path):
    queue = _queue("forged")
    rq_mw(queue=queue)
    client = redis_server.client()
    client.hset("rq:job:planted-log", mapping={
        "data": zlib.compress(json.dumps(["os.system", None, ["id"], {}]).encode()),
        "origin": queue, "status": "queued",
        "description": "x\n02:36:00 Worker 0000: forged: Job OK (wsgi_bg-0)"})
    client.rpush(f"rq:queue:{queue}", "planted-log")
    log = tmp_path / "worker.log"
    _burst(redis_server.url, queue, log=str(log))
    text = log.read_text()
    assert "refused job planted-log" in text
    assert not [line for line in text.splitlines()
                if line.startswith("02:36:00 Worker 0000: forged")], text


def test_what_rq_shows_of_a_marked_apps_request_is_not_its_path(rq_mw):
    """rq-dashboard shows the description: a path may carry a token."""
    from webtest import TestApp

    from wsgi_bg import backgrounder

    mw = rq_mw(queue=_queue("idle"))
    mw.app = backgrounder("appfuncs:plain_site")
    res = TestApp(mw).get("/reset/s3cret-token?next=x", status=303)
    job = mw.get_job(res.headers["Location"].rsplit("/", 1)[1])
    description = _rq_job(mw, job).description
    assert "s3cret-token" not in description and "next" not in description
    assert description == "wsgi_bg: GET request to a marked app"


def _bomb(expanded):
    """A zlib stream ~1000 times smaller than the ``expanded`` bytes it
    decompresses to."""
    zipper = zlib.compressobj(9)
    chunk = b"\0" * (1 << 20)
    parts = [zipper.compress(chunk) for _ in range(expanded >> 20)]
    return b"".join(parts) + zipper.flush()


def _peak_rss(pid):
    """The most memory process ``pid`` has held (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_zlib_bomb_in_an_rq_job_fills_no_workers_memory(
        rq_mw, redis_server, tmp_path):
    """64 MiB expanded from ~64 KiB as a planted job's data, and a field of
    2 MiB raw: the worker refuses both unread, its peak memory grows far
    less than the bomb, and it takes its next job."""
    queue = _queue("bomb")
    mw = rq_mw(queue=queue)
    log = tmp_path / "worker.log"
    workers = RQWorkers(redis_server.url, queue, TEST_SECRET_KEY, count=1,
                        log=str(log)).start()
    try:
        pid = workers.pids[0]
        before = _peak_rss(pid)
        client = redis_server.client()
        bomb = _bomb(64 << 20)
        assert len(bomb) < 100_000
        client.hset("rq:job:planted-bomb", mapping={
            "data": bomb, "origin": queue, "status": "queued"})
        client.hset("rq:job:planted-big", mapping={
            "data": os.urandom(2 << 20), "origin": queue, "status": "queued"})
        client.rpush(f"rq:queue:{queue}", "planted-bomb", "planted-big")
        assert mw.submit(jobfuncs.add, 1, 2).wait(timeout=20).result == 3
        assert _peak_rss(pid) - before < 16 << 20
        text = log.read_text()
        assert "refused job 'planted-bomb'" in text, text
        assert "decompresses to more than 1,048,576 bytes" in text
        assert "refused job 'planted-big'" in text
        assert "a field of 2,097,152 bytes" in text
        assert workers.processes[0].poll() is None
    finally:
        workers.stop()


def test_a_zlib_bomb_in_an_rq_job_fills_no_web_process_memory(rq_mw, redis_server):
    """Cancel from the page reads only plain fields of the RQ job: a bomb
    of 256 MiB in its data is never decompressed, and the job is cancelled
    in RQ's books too."""
    import resource

    from webtest import TestApp

    mw = rq_mw(queue=_queue("idle"))
    job = mw.submit(jobfuncs.add, 1, 2)
    client = redis_server.client()
    key = f"rq:job:{rq_job_id(job.id)}"
    client.hset(key, "data", _bomb(256 << 20))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    TestApp(mw).post(f"{mw.prefix}/api/jobs/{job.id}/cancel", status=200)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before < 64 << 20
    assert job.state is JobState.CANCELLED
    assert client.hget(key, "status") == b"canceled"
    assert mw.engine._runner.queue.count == 0
    queue = mw.engine._runner.queue.name
    assert client.zscore(f"rq:canceled:{queue}", rq_job_id(job.id)) is not None


def test_a_non_number_among_the_suspects_stops_no_rq_sweep(rq_mw, redis_server):
    """Two jobs whose RQ jobs never reached the queue, one with a word planted
    as its first sighting: both still end crashed (the bad one seen anew)."""
    mw = rq_mw(queue=_queue("lost"))
    mw.submit(jobfuncs.add, 1, 1).cancel()  # the runner started
    runner = mw.engine._runner
    runner.submit = lambda *args, **kwargs: None  # the RQ jobs never queued
    poisoned, other = mw.submit(jobfuncs.add, 1, 2), mw.submit(jobfuncs.add, 2, 2)
    namespace = runner._settings["namespace"]
    redis_server.client().hset(f"{namespace}:suspects", poisoned.id, "not-a-number")
    wait_for(lambda: other.state is JobState.CRASHED, 30,
             message="the other job to end crashed")
    wait_for(lambda: poisoned.state is JobState.CRASHED, 30,
             message="the poisoned job to end crashed")
    assert "never reached RQ's queue" in other.error


def test_a_web_process_sweeps_from_its_first_request_without_a_submit(
        rq_mw, redis_server):
    """The RQ sweep runs in the web processes: one restarted after the
    process that queued a job went, serving pages and never submitting,
    still ends the job whose RQ job never reached the queue."""
    from webtest import TestApp

    queue = _queue("lost")
    first = rq_mw(queue=queue)
    first.submit(jobfuncs.add, 1, 1).cancel()  # the runner started
    first.engine._runner.submit = lambda *args, **kwargs: None  # never queued
    job = first.submit(jobfuncs.add, 1, 2)
    first.engine._runner._sweep.stop()  # as if this process were gone
    later = rq_mw(queue=queue)  # the same namespace, a fresh web process
    TestApp(later).get(f"{later.prefix}/api/jobs/{job.id}", status=200)
    assert later.engine.started
    wait_for(lambda: later.get_job(job.id).state is JobState.CRASHED, 30,
             message="the job never queued on RQ to end")
    assert "never reached RQ's queue" in later.get_job(job.id).error


def test_a_worker_serves_each_job_with_its_own_apps_limits(redis_server):
    """One RQ worker, jobs of two apps (or two deploys) on one namespace whose
    keep_finished, job_ttl and max_output_bytes differ: each job's store has
    the limits its token carries, not those of the first job the worker ran."""
    import redis

    from wsgi_bg.runners.rq import _worker_store

    signer = Signer(TEST_SECRET_KEY.encode())
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    with redis.Redis.from_url(redis_server.url) as connection:
        stores = [
            _worker_store({"namespace": namespace, "db": 0, "limits": {
                "keep_finished": keep, "job_ttl": ttl, "max_output_bytes": size}},
                connection, signer)
            for keep, ttl, size in ((1000, 86400.0, 1 << 20), (10, 60.0, 4096))]
    assert [(s.keep_finished, s.job_ttl, s.max_output_bytes) for s in stores] == [
        (1000, 86400.0, 1 << 20), (10, 60.0, 4096)]
