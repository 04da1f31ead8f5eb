"""The supervisor's loop, step by step: each step of a job's watch is a
method a test can reach, without forking (wsgi_bg.runners.supervisor)."""
from __future__ import annotations

import os
import pickle
import signal
import socket

import pytest

from helpers import wait_for
from wsgi_bg import JobState
from wsgi_bg.runners import wire
from wsgi_bg.runners.supervisor import _Supervisor, _Watch
from wsgi_bg.stores import Ending
from wsgi_bg.stores.memory import MemoryStore


class StandIn:
    """A job process never forked: the watch reads its socket, and it
    records the kills; reaped after a kill, it says SIGKILL."""

    def __init__(self) -> None:
        self.sock, self.other_end = socket.socketpair()
        self.pidfd = None
        self.kills = 0
        self.status: int | None = None

    def kill(self) -> None:
        self.kills += 1

    def reap(self, block: bool = True, close: bool = True) -> int | None:
        if self.kills:
            self.status = signal.SIGKILL  # the wait status of a SIGKILL
        return self.status


@pytest.fixture
def watched():
    """A running job in a store, a stand-in process, its two pipes; closed
    after the test."""
    store = MemoryStore()
    record = {"id": "j", "name": "t", "created_at": 0.0, "started_at": None,
              "ended_at": None, "result": None, "error": None, "progress": None,
              "timeout": None, "cancel_requested": False, "cancel_grace": None,
              "url": None, "pid": None}
    assert store.create(record, 10)
    assert store.start("j", 1)
    process = StandIn()
    out_r, out_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    os.set_blocking(ctl_r, False)
    yield store, process, (out_r, out_w), (ctl_r, ctl_w)
    for fd in (out_r, out_w, ctl_r, ctl_w):
        try:
            os.close(fd)
        except OSError:
            pass  # closed by the test
    process.sock.close()
    process.other_end.close()


def _watch(store, process, out_r, ctl_w, **options):
    supervisor = _Supervisor(store, "j", options.get("timeout"),
                             options.get("grace", 5.0), watch_parent=False)
    return _Watch(supervisor, process, out_r, ctl_w)


def test_the_jobs_end_message_ends_the_watch_and_keeps_its_process(watched):
    store, process, (out_r, out_w), (_, ctl_w) = watched
    watch = _watch(store, process, out_r, ctl_w)
    os.write(out_w, b"hello\n")
    os.close(out_w)  # the job process let go of the pipe before saying so
    value = pickle.dumps({"n": 1})
    wire.send_end(process.other_end.fileno(), wire.JobEnd(
        value, "{'n': 1}", None, retryable=True, cancel_seen=False, retire=False))
    while not watch.over():
        watch.wait_and_read()
    assert watch.settle_process() is True  # returned cleanly: kept warm
    assert process.kills == 0
    watch.sel.close()
    assert watch.outcome(True) == (Ending(
        JobState.SUCCEEDED.value, value, None, "hello\n", None, 0,
        shown="{'n': 1}", cancel_seen=False), True)


def test_a_retiring_job_process_is_not_kept(watched):
    store, process, (out_r, out_w), (_, ctl_w) = watched
    watch = _watch(store, process, out_r, ctl_w)
    os.close(out_w)
    wire.send_end(process.other_end.fileno(), wire.JobEnd(
        None, None, "Traceback: boom", retryable=False, retire=True))
    while not watch.over():
        watch.wait_and_read()
    assert watch.settle_process() is False  # it said it retires: killed
    assert process.kills == 1
    watch.sel.close()
    ending, reuse = watch.outcome(False)
    assert (ending.state, ending.error, ending.retryable, reuse) == (
        JobState.FAILED.value, "Traceback: boom", False, False)


def test_progress_reports_reach_the_relay_latest_only(watched):
    store, process, (out_r, _), (_, ctl_w) = watched
    watch = _watch(store, process, out_r, ctl_w)
    for done in (1, 2):
        wire.send_progress(process.other_end.fileno(),
                           {"done": done, "total": 2, "message": None})
    watch.wait_and_read()  # both frames are in the socket already: one read
    assert watch.messages.progress() == [{"done": 2, "total": 2, "message": None}]
    watch.sel.close()


def test_a_cancel_in_the_stores_answer_asks_the_job_then_kills_after_grace(watched):
    store, process, (out_r, _), (ctl_r, ctl_w) = watched
    watch = _watch(store, process, out_r, ctl_w, grace=5.0)
    store.request_cancel("j", 2.0)
    wait_for(lambda: watch.relay.due_in() == 0.0, 5, interval=0.005,
             message="a batch to fall due")
    watch.send_batch(100.0)
    assert os.read(ctl_r, 10) == b"c"  # asked once
    assert watch.kill_at == 102.0  # the cancel's grace, under the supervisor's
    watch.enforce_limits(101.0)
    assert process.kills == 0 and not watch.over()
    watch.enforce_limits(102.0)
    assert process.kills == 1 and watch.over()
    watch.sel.close()
    ending, reuse = watch.outcome(False)
    assert (ending.state, ending.result, reuse) == (
        JobState.CANCELLED.value, None, False)
    assert ending.error.startswith("stopped: still running cancel_grace seconds")


def test_a_passed_timeout_kills_the_job(watched):
    store, process, (out_r, _), (_, ctl_w) = watched
    watch = _watch(store, process, out_r, ctl_w, timeout=0.5)
    assert watch.deadline is not None
    watch.enforce_limits(watch.deadline - 0.1)
    assert process.kills == 0
    watch.enforce_limits(watch.deadline)
    assert process.kills == 1
    watch.sel.close()
    ending, _ = watch.outcome(False)
    assert ending.state == JobState.TIMED_OUT.value
    assert ending.error == ("timed out: still running after its timeout of 0.5 s;"
                            " its process was killed")


def test_a_stopping_host_asks_the_job_and_bounds_its_time(watched):
    store, process, (out_r, _), (ctl_r, ctl_w) = watched
    watch = _watch(store, process, out_r, ctl_w, grace=3.0)
    watch.tick = lambda: 10.0  # the RQ worker stops in 10 s: grace bounds it
    watch.ask_host(50.0)
    assert os.read(ctl_r, 10) == b"c"
    assert watch.stop_at == 53.0
    watch.sel.close()


def test_a_process_that_died_without_a_word_crashed_the_job(watched):
    store, process, (out_r, _), (_, ctl_w) = watched
    watch = _watch(store, process, out_r, ctl_w)
    process.status = 11 << 8  # exited with code 11
    watch.reap_unwatched()
    assert watch.over()
    watch.sel.close()
    ending, reuse = watch.outcome(False)
    assert (ending.state, ending.result, reuse) == (JobState.CRASHED.value, None, False)
    assert ending.error == (
        "the job's process exited with code 11 before the job returned")
