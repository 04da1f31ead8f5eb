"""The default store's manager process killed or stopped from outside: bounded
waits, 503 with Retry-After, one log line, recovery (a killed store is
replaced by a fresh store and pool), a shutdown that never raises. Each test
kills or stops the manager by its pid and always lets a stopped one go on."""
from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import threading
import time
import warnings
from multiprocessing import connection, managers

import psutil
import pytest
import webtest

import jobfuncs
from helpers import live_children, wait_for
from wsgi_bg import JobState
from wsgi_bg.exceptions import StoreUnavailable
from wsgi_bg.stores.guard import GuardedStore

pytestmark = pytest.mark.timeout(60)


def site(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"site"]


def manager_pid(mw) -> int:
    return mw.engine._backend._manager._process.pid


def stop(pid: int) -> None:
    """SIGSTOP the process and wait until every thread of it has stopped: a
    process stops thread by thread, and one thread may still answer a call
    after kill() has returned."""
    os.kill(pid, signal.SIGSTOP)

    def stopped() -> bool:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                    state = stat.read().rpartition(")")[2].split()[0]
            except FileNotFoundError:
                continue  # a thread that ended
            if state not in ("T", "t"):
                return False
        return True

    wait_for(stopped, 10, interval=0.001, message="every thread of it to stop")


def started_mw(wsgi_bg_middleware, **options):
    options.setdefault("max_workers", 1)
    options.setdefault("cancel_grace", 1.0)
    mw = wsgi_bg_middleware(site, **options)
    job = mw.submit(jobfuncs.add, 1, 2).wait(timeout=20)
    assert job.state is JobState.SUCCEEDED
    return mw, job


def store_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "wsgi_bg" and r.levelno >= logging.ERROR
            and "job store" in r.getMessage()]


def test_dead_store_is_503_with_retry_after_and_logged_once(wsgi_bg_middleware,
                                                             caplog):
    mw, job = started_mw(wsgi_bg_middleware)
    client = webtest.TestApp(mw)
    pid = manager_pid(mw)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not mw.engine._backend._manager._process.is_alive(), 10,
             message="the manager to die")
    with caplog.at_level(logging.ERROR, logger="wsgi_bg"):
        start = time.monotonic()
        page = client.get(f"/_jobs/api/jobs/{job.id}", status=(404, 503))
        assert time.monotonic() - start < 5
        # the first request sees the store gone; later ones are 503 until a
        # fresh store runs, then the old job is unknown (404), never a crash
        if page.status_int == 503:
            assert page.headers["Retry-After"]
            assert "store" in page.json["message"]
        client.get("/", status=200)  # the app's other routes are untouched
        for _ in range(3):
            client.get(f"/_jobs/{job.id}", status=(404, 503))
    assert len([m for m in store_errors(caplog) if "gone" in m]) == 1


def test_hung_store_costs_a_bounded_wait(wsgi_bg_middleware, caplog):
    mw, job = started_mw(wsgi_bg_middleware)
    client = webtest.TestApp(mw)
    pid = manager_pid(mw)
    stop(pid)
    try:
        with caplog.at_level(logging.ERROR, logger="wsgi_bg"):
            start = time.monotonic()
            page = client.get(f"/_jobs/api/jobs/{job.id}", status=503)
            assert time.monotonic() - start < 5
            assert page.headers["Retry-After"]
            start = time.monotonic()
            client.get(f"/_jobs/{job.id}", status=503)
            assert time.monotonic() - start < 1  # known hung: at once
        assert len(store_errors(caplog)) == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: client.get(f"/_jobs/api/jobs/{job.id}",
                                status=(200, 503)).status_int == 200,
             10, message="the store to answer again")


@pytest.mark.parametrize("payload", [
    pytest.param(0, id="small"),
    # Far bigger than a socket's buffer: the stopped manager never takes all
    # of it, so sending it must be bounded too.
    pytest.param(8_000_000, id="8MB-payload"),
])
def test_submit_with_a_hung_store_fails_fast_and_blocks_no_other(
        wsgi_bg_middleware, payload):
    mw, _ = started_mw(wsgi_bg_middleware, max_call_bytes=16_000_000)
    pid = manager_pid(mw)
    outcomes: list[tuple[type[BaseException] | None, float]] = []
    call = (jobfuncs.identity, b"x" * payload) if payload else (jobfuncs.add, 1, 1)

    def submit() -> None:
        start = time.monotonic()
        try:
            mw.submit(*call)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assert
            outcomes.append((type(exc), time.monotonic() - start))
        else:
            outcomes.append((None, time.monotonic() - start))

    stop(pid)
    try:
        threads = [threading.Thread(target=submit) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert len(outcomes) == 3
    for kind, took in outcomes:
        assert kind is StoreUnavailable
        assert took < 5, f"a submit waited {took:.1f} s"
    # A create given up on is not left queued for ever once the store answers.
    def none_queued() -> bool:
        try:
            return not mw.engine.store.ids_in_state(JobState.QUEUED.value)
        except StoreUnavailable:
            return False

    wait_for(none_queued, 15, message="no job left queued")


def test_an_answer_cut_short_costs_a_bounded_wait():
    # A manager stopped in the middle of a large answer (here a stand-in that
    # speaks multiprocessing's protocol and stalls after its answer's first
    # megabyte): the call gives up at its deadline, as for no answer at all.
    authkey = os.urandom(32)
    listener = connection.Listener(family="AF_UNIX", authkey=authkey)
    stalled, release = threading.Event(), threading.Event()

    def serve() -> None:
        with listener.accept() as conn:
            conn.recv()  # accept_connection
            conn.send(("#RETURN", None))
            conn.recv()  # the call
            answer = pickle.dumps(("#RETURN", b"x" * 4_000_000))
            os.write(conn.fileno(),
                     struct.pack("!i", len(answer)) + answer[:1_000_000])
            stalled.set()
            release.wait(30)

    server = threading.Thread(target=serve)
    server.start()
    before = set(threading.enumerate())
    proxy = managers.BaseProxy(managers.Token("Store", listener.address, "1"),
                               "pickle", authkey=authkey, incref=False,
                               manager_owned=True)
    store = GuardedStore(proxy, alive=lambda: True, timeout=1.0)
    outcome: list[tuple[object, float]] = []

    def call() -> None:
        start = time.monotonic()
        try:
            outcome.append((store.result("job"), time.monotonic() - start))
        except BaseException as exc:  # noqa: BLE001 - recorded for the assert
            outcome.append((exc, time.monotonic() - start))

    caller = threading.Thread(target=call)
    try:
        caller.start()
        caller.join(10)
        assert stalled.is_set()
        assert outcome, "the call still waits for the rest of its answer"
        error, took = outcome[0]
        assert isinstance(error, StoreUnavailable), error
        assert took < 3, f"the call waited {took:.1f} s"
    finally:
        store.close()
        release.set()
        listener.close()  # ends the probe's attempt to connect
        caller.join(10)
        server.join(10)
    # The threads the store started (the late reader, the probe) end.
    wait_for(lambda: not [t for t in threading.enumerate()
                          if t not in before and t.is_alive()], 10,
             message="the store's threads to end")


def test_a_call_in_flight_when_the_store_is_closed_is_no_loss(
        wsgi_bg_middleware, caplog):
    # Shutdown closes the store, then stops its manager (a hung one is
    # killed) under calls still waiting for it: they fail, but the store
    # was stopped, not lost.
    mw, job = started_mw(wsgi_bg_middleware)
    manager = mw.engine._backend._manager
    pid = manager._process.pid
    killed = threading.Event()  # set before the kill: no check can race it
    lost: list[int] = []
    store = GuardedStore(manager.get_store(), alive=lambda: not killed.is_set(),
                         on_lost=lambda: lost.append(1), timeout=30.0)
    store.get(job.id)  # a pooled connection
    failed: list[StoreUnavailable] = []

    def call() -> None:
        try:
            store.get(job.id)
        except StoreUnavailable as exc:
            failed.append(exc)

    thread = threading.Thread(target=call)
    stop(pid)
    try:
        with caplog.at_level(logging.ERROR, logger="wsgi_bg"):
            thread.start()
            # Sent: it took the pooled connection (the manager is stopped).
            wait_for(lambda: not store._idle, 10,
                     message="the call to take the connection")
            store.close()
            killed.set()
            os.kill(pid, signal.SIGKILL)
            thread.join(10)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert not thread.is_alive()
    assert len(failed) == 1
    assert "stopped" in str(failed[0].description)
    assert not lost
    assert not store_errors(caplog)


def test_a_connection_returned_after_close_is_closed(wsgi_bg_middleware):
    mw, _ = started_mw(wsgi_bg_middleware)
    store = mw.engine.store
    returned = []

    class ClosedMeanwhile(list):
        """The pool, with close() landing just as a call returns its
        connection to it."""

        def append(self, conn):
            store.close()
            returned.append(conn)
            super().append(conn)

    store._idle = ClosedMeanwhile(store._idle)
    store.counts()
    assert returned
    assert not store._idle  # nothing left in the pool of a closed store
    assert all(conn.closed for conn in returned)


def test_calls_waiting_for_a_connection_when_the_store_is_closed(
        wsgi_bg_middleware):
    # Connections are opened by helper threads; an opening still queued
    # when close() stops them is cancelled: its call is a 503, not a 500.
    mw, _ = started_mw(wsgi_bg_middleware)
    manager = mw.engine._backend._manager
    pid = manager._process.pid
    store = GuardedStore(manager.get_store(), alive=lambda: True, timeout=2.0)
    outcomes: list[object] = []

    def call() -> None:
        try:
            outcomes.append(store.counts())
        except BaseException as exc:  # noqa: BLE001 - recorded for the assert
            outcomes.append(exc)

    stop(pid)
    threads = []
    try:
        # Every helper thread opens a connection the stopped manager never
        # accepts; meanwhile more calls wait for a slot, then queue their
        # openings behind those.
        for _ in range(8):
            threads.append(threading.Thread(target=call))
            threads[-1].start()
        wait_for(lambda: store._slots._value == 0, 10,
                 message="every slot to be taken")
        store.timeout = 4.0
        for _ in range(8):
            threads.append(threading.Thread(target=call))
            threads[-1].start()
        wait_for(lambda: store._executor._work_queue.qsize() > 0, 10,
                 message="an opening to be queued")
        store.close()
    finally:
        os.kill(pid, signal.SIGCONT)
        for thread in threads:
            thread.join(10)
    assert len(outcomes) == 16
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(e, StoreUnavailable) for e in errors), errors
    assert any("stopped" in str(e.description) for e in errors), errors


def test_a_forked_child_never_uses_the_parents_connections(wsgi_bg_middleware):
    # A child forked from the server (the fork start method, a job process)
    # that called the store on the parent's pooled connection would leave
    # its answer there for the parent to read as its own.
    mw, job = started_mw(wsgi_bg_middleware)
    store = mw.engine.store
    assert store._idle  # the job's wait left connections in the pool
    pid = manager_pid(mw)
    stop(pid)  # the child's call goes unanswered while it lives
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns of forking a process with threads; the
            # child only calls the store and exits.
            warnings.simplefilter("ignore", DeprecationWarning)
            child = os.fork()
        if child == 0:
            code = 1
            try:
                store.timeout = 0.5
                try:
                    store.list()
                except StoreUnavailable:
                    code = 0
            finally:
                os._exit(code)
        exited: list[int] = []

        def reaped() -> bool:
            done, status = os.waitpid(child, os.WNOHANG)
            if done:
                exited.append(os.waitstatus_to_exitcode(status))
            return bool(done)

        wait_for(reaped, 10, message="the child to exit")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert exited == [0]  # the child's call was bounded and said why (503)
    # The parent's connections are in step: each answer is its own call's.
    counts = store.counts()
    assert isinstance(counts, dict), counts
    assert counts[JobState.SUCCEEDED.value] == 1
    assert store.get(job.id)["id"] == job.id


@pytest.mark.parametrize(("fault", "bound", "busy"), [
    pytest.param(signal.SIGKILL, 10.0, True, id="dead"),
    # Stopped while a job runs: its worker hangs in a store call; shutdown
    # kills it rather than wait, within cancel_grace + 2 s.
    pytest.param(signal.SIGSTOP, 0.5 + 2.0, True, id="hung"),
    # Stopped with no job running or queued: shutdown's first store call is
    # the snapshot that handles read afterwards, bounded like any (1 s),
    # after the pool's own wait for its workers (cancel_grace + 0.5 s).
    pytest.param(signal.SIGSTOP, 0.5 + 0.5 + 1.0 + 1.0, False, id="hung-idle"),
])
def test_shutdown_never_raises_for_a_bad_store(wsgi_bg_middleware, fault, bound,
                                               busy):
    mw, _ = started_mw(wsgi_bg_middleware, cancel_grace=0.5)
    if busy:
        running = mw.submit(jobfuncs.sleeper, 30)
        wait_for(lambda: running.state is JobState.RUNNING, 20)
    pid = manager_pid(mw)
    if fault == signal.SIGSTOP:
        stop(pid)
    else:
        os.kill(pid, fault)
    try:
        start = time.monotonic()
        mw.shutdown()
        took = time.monotonic() - start
        assert took < bound, f"shutdown took {took:.1f} s"
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def submit_once_recovered(mw, fn, *args, timeout: float = 20.0):
    """Submit, trying again while the store is being replaced (503s)."""
    made = []

    def attempt() -> bool:
        try:
            made.append(mw.submit(fn, *args))
        except StoreUnavailable:
            return False
        return True

    wait_for(attempt, timeout, interval=0.05, message="a submit on a fresh store")
    return made[0]


def ours_but_the_forkserver() -> list[psutil.Process]:
    """The store's manager, the pool's workers and their job processes: the
    forkserver's descendants (it is the whole process's and stays)."""
    found = []
    for child in live_children():
        if child.ppid == os.getpid():  # the forkserver
            continue
        try:
            found.append(psutil.Process(child.pid))
        except psutil.NoSuchProcess:
            pass
    return found


def still_alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.memory_store_only
def test_a_killed_store_is_replaced_by_a_fresh_store_and_pool(wsgi_bg_middleware,
                                                              caplog):
    mw, _ = started_mw(wsgi_bg_middleware, max_workers=2)
    client = webtest.TestApp(mw)
    with caplog.at_level(logging.WARNING, logger="wsgi_bg"):
        for loss in (1, 2):  # and a second loss recovers again
            running = mw.submit(jobfuncs.sleeper, 60)
            wait_for(lambda: running.state is JobState.RUNNING, 20,  # noqa: B023
                     message="the job to run")
            old = ours_but_the_forkserver()
            assert len(old) >= 3  # the manager, a worker, the job's process
            os.kill(manager_pid(mw), signal.SIGKILL)
            job = submit_once_recovered(mw, jobfuncs.add, loss, 1)
            assert job.wait(timeout=20).state is JobState.SUCCEEDED
            assert job.result == loss + 1
            # The lost job's pages say why it is gone.
            page = client.get(f"/_jobs/api/jobs/{running.id}", status=404)
            assert "job store was restarted at" in page.json["message"]
            assert "jobs from before then are gone" in page.json["message"]
            html = client.get(f"/_jobs/{running.id}", status=404)
            assert "job store was restarted at" in html.text
            with pytest.raises(LookupError, match="job store was restarted"):
                running.state  # noqa: B018
            # The lost store's manager, the old pool's workers and the job
            # process they ran all end.
            wait_for(lambda: not still_alive(old), 15,  # noqa: B023
                     message="the lost store's processes to end")
    errors = [r.getMessage() for r in caplog.records
              if r.name == "wsgi_bg" and r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors  # one per loss
    assert all("job store's process is gone" in m for m in errors), errors
    start = time.monotonic()
    mw.shutdown()  # never raises; the fixture checks nothing is left
    assert time.monotonic() - start < 10


@pytest.mark.memory_store_only
def test_shutdown_while_a_fresh_store_starts(wsgi_bg_middleware):
    mw, _ = started_mw(wsgi_bg_middleware)
    running = mw.submit(jobfuncs.sleeper, 60)
    wait_for(lambda: running.state is JobState.RUNNING, 20, message="the job to run")
    pid = manager_pid(mw)
    manager = psutil.Process(pid)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not still_alive([manager]), 10, message="the manager to die")

    def lost() -> bool:  # a store call notices: a fresh store starts
        try:
            mw.engine.store.counts()
        except StoreUnavailable:
            return mw.engine.store_lost_at is not None
        return False

    wait_for(lost, 10, message="the loss to be noticed")
    start = time.monotonic()
    mw.shutdown()  # never raises; the fixture checks nothing is left
    assert time.monotonic() - start < 10
    with pytest.raises(RuntimeError, match="shut down"):
        mw.submit(jobfuncs.add, 1, 1)


@pytest.mark.timeout(60)
def test_a_create_whose_answer_was_lost_ends_and_frees_its_slot(make_mw, monkeypatch):
    """The create landed, its answer did not (a dropped connection after
    Redis ran it, a manager that answered too late): the submit says 503,
    and the job, which nothing will run, ends within seconds saying so."""
    mw = make_mw(max_queued=1)
    assert mw.submit(jobfuncs.add, 1, 2).wait(timeout=20).result == 3
    store = mw.engine.store
    landed = store.create

    def answer_lost(*args, **kwargs):
        landed(*args, **kwargs)
        raise StoreUnavailable("the answer was lost on its way back")

    monkeypatch.setattr(store, "create", answer_lost)
    with pytest.raises(StoreUnavailable, match="lost on its way back"):
        mw.submit(jobfuncs.add, 3, 4)
    monkeypatch.undo()
    wait_for(lambda: not store.ids_in_state("queued"), timeout=30,
             message="the job nothing runs to end")
    [lost] = [job for job in mw.jobs() if job.state is not JobState.SUCCEEDED]
    assert lost.state is JobState.CANCELLED and lost.started_at is None
    assert "never started" in lost.error and "503" in lost.error
    assert mw.submit(jobfuncs.add, 5, 6).wait(timeout=20).result == 11  # a free slot
