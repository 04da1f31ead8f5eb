"""The default runner: a process pool whose workers supervise one child per job.

Data flow (compare :mod:`concurrent.futures.process`)::

    server process          pool worker (supervisor)       job child
    ──────────────          ────────────────────────       ─────────
    engine.submit ─pool──►  run_job: unpickle the call
                            fork ─────────────────────►  setsid, fds 1+2 → pipe
                            store.start(job, child pid)  waits for "go"
                            "go" ─── control pipe ────►  runs fn(*args, **kwargs)
                            relay ◄── output pipe ─────  print, logging, os.system
                            relay ◄── message pipe ────  progress, result/error
                              │ batches → store.relay
                            timeout / cancel: killpg(SIGKILL)
                            store.finish(job, state)

Why a child per job: a bare :class:`~concurrent.futures.ProcessPoolExecutor`
breaks as a whole (``BrokenProcessPool``) when one worker dies and cannot stop
one task. The supervisor forks a child for each job, from a single-threaded
process, which is safe and cheap; it can kill that child's process group for a
timeout or a cancel, and sees it crash, while the pool and every other job go
on. The supervisor loads the job's function before forking, so the modules it
imports stay loaded in the worker for later jobs.

Results travel pickled; the child checks that a value survives a pickle round
trip before sending it, and sends exceptions as traceback text, so neither an
unpicklable value nor an exception that cannot be unpickled can hang or break
the pool.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from multiprocessing.context import BaseContext
from typing import Any

from . import context
from .capture import Relay, redirect_stdio
from .jobs import JobState
from .store import Store, connect

#: How long to wait for a dead job's stray output to drain.
_DRAIN_SECONDS = 1.0

_PR_SET_PDEATHSIG = 1
_libc: Any = None
_store_cache: dict[Any, Store] = {}


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _worker_store(address: Any, authkey: bytes) -> Store:
    store = _store_cache.get(address)
    if store is None:
        # First job in this worker (also the set-up for executors we did not
        # create, which got no initializer).
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the server's to handle
        _die_with_parent()
        store = _store_cache[address] = connect(address, authkey)
        store.register_worker(os.getpid())  # type: ignore[attr-defined]
    return store


def worker_init(address: Any, authkey: bytes) -> None:
    """Pool initializer: set the worker up before it takes its first job."""
    _worker_store(address, authkey)


def run_job(
    address: Any, authkey: bytes, job_id: str, payload: bytes,
    timeout: float | None, grace: float,
) -> str | None:
    """Run one job to its end and record it; the pool's task function.

    Returns the final state, or ``None`` if the job was cancelled before it
    started or had already ended.
    """
    store = _worker_store(address, authkey)
    try:
        fn, args, kwargs = pickle.loads(payload)
    except BaseException:
        if not store.start(job_id, 0):
            return None
        return store.finish(
            job_id, JobState.FAILED.value, None,
            "the job's function could not be loaded in the worker process:\n"
            + traceback.format_exc(),
        )
    return _Supervisor(store, job_id, timeout, grace).run(fn, args, kwargs)


class _Supervisor:
    def __init__(
        self, store: Store, job_id: str, timeout: float | None, grace: float
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.timeout = timeout
        self.grace = grace

    def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str | None:
        out_r, out_w = os.pipe()
        msg_r, msg_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()  # or the child would print it again
        pid = os.fork()
        if pid == 0:
            _child(self.job_id, fn, args, kwargs, out_w, msg_w, ctl_r,
                   close=(out_r, msg_r, ctl_w))
        for fd in (out_w, msg_w, ctl_r):
            os.close(fd)
        try:
            os.setpgid(pid, pid)  # also done by the child: no window for killpg
        except OSError:
            pass
        self.pid = pid
        self.reaped = False
        try:
            if not self.store.start(self.job_id, pid):
                return None  # cancelled while queued: the child never runs
            os.write(ctl_w, b"g")
            state, result, error = self._watch(out_r, msg_r, ctl_w)
        except BaseException:
            self._kill()
            self._reap_quietly()
            self.store.finish(self.job_id, JobState.CRASHED.value, None,
                              "the job's supervisor failed:\n" + traceback.format_exc())
            raise
        finally:
            self._kill()  # the child's strays, if any: a job's processes end with it
            # Reap the child on every path (a job cancelled while queued is
            # forked, then killed unstarted): each unreaped child would stay a
            # zombie in this long-lived worker.
            self._reap_quietly()
            for fd in (out_r, msg_r, ctl_w):
                os.close(fd)
        return self.store.finish(self.job_id, state, result, error)

    def _reap_quietly(self) -> None:
        if not self.reaped:
            try:
                self._reap()
            except ChildProcessError:
                self.reaped = True

    def _kill(self) -> None:
        for kill in (os.killpg, os.kill):
            try:
                kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _watch(
        self, out_r: int, msg_r: int, ctl_w: int
    ) -> tuple[str, bytes | None, str | None]:
        relay = Relay(self.store, self.job_id)
        messages = _MessageReader()
        sel = selectors.DefaultSelector()
        sel.register(out_r, selectors.EVENT_READ, relay.feed)
        sel.register(msg_r, selectors.EVENT_READ, messages.feed)
        pidfd: int | None
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            pidfd = None  # not Linux: poll waitpid
        else:
            sel.register(pidfd, selectors.EVENT_READ, None)
        now = time.monotonic()
        deadline = None if self.timeout is None else now + self.timeout
        kill_at: float | None = None
        cancel_seen: float | None = None
        ended_by: str | None = None
        status: int | None = None
        try:
            while status is None:
                wait = relay.due_in()
                for limit in (deadline, kill_at):
                    if limit is not None:
                        wait = min(wait, limit - time.monotonic())
                if pidfd is None:
                    wait = min(wait, 0.05)
                for key, _ in sel.select(max(wait, 0.0)):
                    if key.data is None:
                        status = self._reap()
                        continue
                    data = os.read(key.fd, 65536)
                    if data:
                        key.data(data)
                    else:
                        sel.unregister(key.fd)
                for report in messages.progress():
                    relay.progress(report)
                if status is None and pidfd is None:
                    status = self._reap(block=False)
                now = time.monotonic()
                if status is None:
                    if deadline is not None and now >= deadline:
                        ended_by = JobState.TIMED_OUT.value
                    elif kill_at is not None and now >= kill_at:
                        ended_by = JobState.CANCELLED.value
                    if ended_by is not None:
                        self._kill()
                        status = self._reap()
                if relay.due_in() == 0.0:
                    cancel, grace = relay.send()
                    if cancel:
                        if cancel_seen is None:
                            cancel_seen = now
                            try:
                                os.write(ctl_w, b"c")
                            except OSError:
                                pass
                        allowed = (
                            self.grace if grace is None else min(grace, self.grace)
                        )
                        kill_at = cancel_seen + allowed
            # The child is gone: kill what it left behind, then drain the pipes.
            self._kill()
            if pidfd is not None:
                sel.unregister(pidfd)
            drain_until = time.monotonic() + _DRAIN_SECONDS
            while sel.get_map():
                events = sel.select(max(0.0, drain_until - time.monotonic()))
                if not events:
                    break
                for key, _ in events:
                    data = os.read(key.fd, 65536)
                    if data:
                        key.data(data)
                    else:
                        sel.unregister(key.fd)
            for report in messages.progress():
                relay.progress(report)
            relay.send(final=True)
        finally:
            sel.close()
            if pidfd is not None:
                os.close(pidfd)
        final = messages.final
        if final is not None:
            kind, value = final
            if kind == "result":
                return JobState.SUCCEEDED.value, value, None
            return JobState.FAILED.value, None, value
        if ended_by == JobState.TIMED_OUT.value:
            return ended_by, None, (
                f"timed out: still running after its timeout of {self.timeout} s;"
                " its process was killed"
            )
        if ended_by == JobState.CANCELLED.value:
            return ended_by, None, (
                "cancelled: still running cancel_grace seconds after the cancel"
                " request; its process was killed"
            )
        return JobState.CRASHED.value, None, (
            f"the job's process {_describe(status)} before the job returned"
        )

    def _reap(self, block: bool = True) -> int | None:
        pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        if pid:
            self.reaped = True
            return status
        return None


def _describe(status: int | None) -> str:
    if status is None:
        return "vanished"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (signal {-code})"
    return f"exited with code {code}"


class _MessageReader:
    """Splits the message pipe's bytes into (kind, value) messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._progress: list[dict[str, Any]] = []
        self.final: tuple[str, Any] | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data
        header = context._HEADER
        while len(self._buffer) >= header.size:
            (size,) = header.unpack_from(self._buffer)
            end = header.size + size
            if len(self._buffer) < end:
                return
            kind, value = pickle.loads(self._buffer[header.size : end])
            del self._buffer[:end]
            if kind == "progress":
                self._progress.append(value)
            else:
                self.final = (kind, value)

    def progress(self) -> list[dict[str, Any]]:
        reports, self._progress = self._progress[-1:], []
        return reports


def _child(
    job_id: str, fn: Callable[..., Any], args: tuple[Any, ...],
    kwargs: dict[str, Any], out_w: int, msg_w: int, ctl_r: int,
    close: tuple[int, ...],
) -> None:
    """The job's process: never returns."""
    code = 0
    try:
        parent = os.getppid()
        for fd in close:
            os.close(fd)
        os.setpgid(0, 0)  # own process group: killpg reaches the job's children too
        _die_with_parent()
        if os.getppid() != parent:
            os._exit(1)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        redirect_stdio(out_w)
        if os.read(ctl_r, 1) != b"g":
            os._exit(0)
        os.set_blocking(ctl_r, False)
        context.enter_job(job_id, msg_w, ctl_r)
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            # The traceback from the job's own frames on: ours is noise to users.
            text = "".join(traceback.format_exception(
                type(exc), exc, exc.__traceback__ and exc.__traceback__.tb_next))
            message: tuple[str, Any] = ("error", text)
        else:
            try:
                message = ("result", _dump_result(value))
            except _Unpicklable as exc:
                message = ("error", str(exc))
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        context.send_message(msg_w, message)
    except BaseException:
        code = 70
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
    finally:
        os._exit(code)


class _Unpicklable(Exception):
    pass


def _dump_result(value: Any) -> bytes:
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)
    except Exception as exc:
        raise _Unpicklable(
            f"the job returned a {type(value).__module__}.{type(value).__qualname__}"
            f" that cannot be pickled and unpickled: {exc!r}. Return plain data"
            " (str, numbers, lists, dicts) or an object whose class is importable"
            " at module level."
        ) from None
    return data


class ProcessRunner:
    """Runs jobs in a :class:`~concurrent.futures.ProcessPoolExecutor` (or any
    executor ``executor_factory`` returns) through :func:`run_job`."""

    def __init__(
        self, *, address: Any, authkey: bytes, max_workers: int | None,
        mp_context: BaseContext, executor_factory: Callable[[], Executor] | None,
    ) -> None:
        self.address = address
        self.authkey = authkey
        self.max_workers = max_workers
        self.mp_context = mp_context
        self.executor_factory = executor_factory
        self.executor = self._new_executor()

    def _new_executor(self) -> Executor:
        if self.executor_factory is not None:
            return self.executor_factory()
        return ProcessPoolExecutor(
            self.max_workers, mp_context=self.mp_context,
            initializer=worker_init, initargs=(self.address, self.authkey),
        )

    def submit(
        self, job_id: str, payload: bytes, timeout: float | None, grace: float
    ) -> Future[str | None]:
        return self.executor.submit(
            run_job, self.address, self.authkey, job_id, payload, timeout, grace
        )

    def replace_broken(self) -> None:
        """Start a fresh executor after the old one broke (a worker died)."""
        old, self.executor = self.executor, self._new_executor()
        old.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
