"""The default runner: pool worker processes of the server that supervise a
job process each, ``max_workers`` at once.

Jobs run on the server's own machine, in worker processes started on demand
(up to ``max_workers``) from the first job on::

    app = BackgroundMiddleware(app)            # runner="pool", the default

Data flow (compare :mod:`concurrent.futures.process`)::

    engine.submit ─► ProcessRunner.submit ─ a free worker? ─yes─► its pipe
                          │ no (or all busy: as a worker's next job)  │
                          ▼                                           ▼
                     waiting (FIFO;                  worker: run_job ─► supervise
                     a cancel drops it)                               │ answer
                          │                                           ▼
                          └─► the next job to ◄── the collector thread reads every
                              that worker, at once  worker's answers and sees its end;
                                                    then the job's future is done

Why a pipe per worker, not one :class:`~concurrent.futures.ProcessPoolExecutor`:
that pool breaks as a whole (``BrokenProcessPool``) when one of its workers
dies, failing the jobs of every other worker (a worker killed while it holds
a queue's lock leaves the shared queues unusable). Here a worker shares
nothing with another: one killed from outside (an operator, the out-of-memory
killer) fails only the job it ran (:class:`WorkerLost`, which says so), the
job it held next goes back to the front of the queue, a fresh worker takes its
place when one is needed, and every other job goes on. Each worker holds at
most two jobs (the one it runs, and its next, sent ahead so that it starts at
once: what keeps a plain pool's throughput); a job held next by a worker busy
for longer than ``_STUCK_AFTER`` is taken over by a free worker, so that no job
waits behind a long one. Writing to a worker's pipe directly, and one thread
reading them all, costs the server less per job than the executor's manager
and feeder threads did.

``executor_factory`` (the user's own executor) is used as it is: jobs go to it
directly, and when it breaks, the jobs it ran are lost and a fresh one is made
for later jobs.

Each pool worker is a long-lived, single-threaded supervisor: the pool's task
function :func:`run_job` hands the job to :func:`~wsgi_bg.runners.supervisor.supervise`,
which forks (or reuses) the job process. The worker reaches the store
through the backend's picklable :class:`~wsgi_bg.stores.Link`, once per
process.

When the server process is killed outright (SIGKILL), forkserver workers see
it: they let go of the forkserver's "alive" pipe, so the forkserver exits with
the server, and Linux then sends each worker SIGTERM (its parent-death
signal). A worker ending on SIGTERM kills its job process's group first, and
removes the server's multiprocessing temporary directory (``pymp-*``, which
holds the forkserver's socket) once the server is gone.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import shutil
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import (
    Executor,
    Future,
    ThreadPoolExecutor,
)
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import util
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from ..limits import MAX_RESULT_BYTES
from ..stores import Link, Store
from .supervisor import describe_exitcode, die_with_parent, supervise

_store_cache: dict[str, Store] = {}


def _worker_store(link: Link, die_with_parent_: bool = False) -> Store:
    store = _store_cache.get(link.key)
    if store is None:
        # First job in this worker (also the set-up for executors we did not
        # create, which got no initializer).
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the server's to handle
        if die_with_parent_:
            # Only when the parent is the single-threaded forkserver: Linux
            # sends this signal when the parent *thread* ends, and spawn or
            # fork pools start workers from whichever thread submitted (a
            # request's). Other workers are killed by the store's watchdog.
            die_with_parent()
        store = _store_cache[link.key] = link.connect()
    return store


def worker_init(
    link: Link, die_with_parent: bool, server: tuple[int, str] | None = None
) -> None:
    """Pool initializer: set the worker up before it takes its first job.

    ``server``, for forkserver workers: the server process's pid and its
    multiprocessing temporary directory. The worker then ends with the
    forkserver, which now ends with the server (see the module docstring).
    """
    if server is not None:
        _end_with_server(*server)
    _worker_store(link, die_with_parent and server is None)


# -- a forkserver worker ends with the server --------------------------------------
#: The server process (a pidfd, or its pid) and its temporary directory.
_server: tuple[int | None, int, str] | None = None


def _end_with_server(server_pid: int, server_tmp: str) -> None:
    global _server
    # The forkserver exits when every holder of its "alive" pipe has closed
    # it; each process it forks gets one (multiprocessing's own use). Ours is
    # let go of, so that the forkserver ends with the server process.
    try:
        from multiprocessing import forkserver

        state: Any = forkserver._forkserver
        alive = state._forkserver_alive_fd
        if alive is not None:
            os.close(alive)
        state._forkserver_alive_fd = state._forkserver_address = None
        state._forkserver_pid = None
    except (ImportError, AttributeError, OSError):
        pass
    try:
        pidfd: int | None = os.pidfd_open(server_pid)
    except (AttributeError, OSError):
        pidfd = None  # gone already, or not Linux: its pid is checked
    _server = (pidfd, server_pid, server_tmp)
    parent = os.getppid()
    signal.signal(signal.SIGTERM, _on_sigterm)
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # the forkserver ended before the signal was set
        _on_sigterm(signal.SIGTERM, None)


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM in a forkserver worker (its parent, the forkserver, ended; or
    anyone sent it): kill the job processes' groups (what a job started ends
    with it), remove the server's temporary directory if the server is gone,
    then end as SIGTERM would."""
    try:
        for child in _children(os.getpid()):
            _kill_job_process(child)
        if _server is not None and _server_gone(_server[0], _server[1]):
            shutil.rmtree(_server[2], ignore_errors=True)
    finally:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)


def _server_gone(pidfd: int | None, pid: int) -> bool:
    if pidfd is not None:
        try:
            return bool(select.select([pidfd], [], [], 0)[0])
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def _children(pid: int) -> list[int]:
    """The pids of process ``pid``'s children (a pool worker's: its job
    processes, each the leader of its own group); Linux only, else none."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as file:
            return [int(child) for child in file.read().split()]
    except (OSError, ValueError):
        return []


def kill_group(pgid: int) -> None:
    """SIGKILL process group ``pgid`` (a job's: its process and what it
    started); gone already: nothing."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_job_process(pid: int) -> None:
    """SIGKILL a child of this process (a job process) and its group."""
    kill_group(pid)
    try:
        os.kill(pid, signal.SIGKILL)  # not yet reaped: still ours
    except (ProcessLookupError, PermissionError):
        pass


def run_job(
    link: Link, job_id: str, payload: bytes,
    timeout: float | None, grace: float, jobs_per_process: int = 1,
    max_result_bytes: int = MAX_RESULT_BYTES,
) -> str | None:
    """Run one job to its end and record it; the pool's task function.

    Returns the final state, or ``None`` if the job was cancelled before it
    started or had already ended.
    """
    store = _worker_store(link)
    return supervise(store, job_id, payload, timeout, grace, jobs_per_process,
                     max_result_bytes)


# -- the runner ----------------------------------------------------------------------
class WorkerLost(BrokenProcessPool):
    """The pool worker running a job died: the outcome of that job's future.
    Its text is the job's error."""

    def __init__(self, pid: int | None, exitcode: int | None, *,
                 shutting_down: bool = False) -> None:
        self.pid = pid
        self.exitcode = exitcode
        #: Killed by shutdown (a job asked to stop, whose worker hung), not
        #: from outside.
        self.shutting_down = shutting_down
        worker = "the pool worker running this job" + (
            f" (pid {pid})" if pid is not None else "")
        if shutting_down:
            text = (
                f"stopped: {worker} was still busy cancel_grace seconds after"
                " the server began to shut down (its job store did not answer?)"
                " and was killed, with the job's processes"
            )
        else:
            text = (
                f"{worker} {_describe_exit(exitcode)} while the job ran (killed"
                " from outside, or by the out-of-memory killer); the job's"
                " process was killed with it. No other job was touched: a fresh"
                " worker takes its place"
            )
        super().__init__(text)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "died"
    return describe_exitcode(exitcode)


# -- a pool worker's own loop ----------------------------------------------------------
_STOP = None  # the message that ends a worker


def _worker_main(conn: Connection, initargs: tuple[Any, ...]) -> None:
    """A pool worker: set up, say so, then run the jobs the server sends on
    ``conn`` one after another, answering each with its outcome, until told
    to stop or the server is gone."""
    worker_init(*initargs)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            args = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the server process is gone
        if args is _STOP:
            return
        try:
            reply: tuple[Any, ...] = ("done", run_job(*args), None)
        except BaseException as exc:  # noqa: BLE001 - the job's future's
            reply = ("done", None, _sendable(exc))
        try:
            conn.send(reply)
        except OSError:
            return


def _sendable(exc: BaseException) -> BaseException:
    """``exc``, or its text, whichever can be pickled to the server."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"the pool worker failed:\n{text}")
    exc.__traceback__ = None
    return exc


# -- the pool ------------------------------------------------------------------
#: Jobs a worker holds at once: the one it runs and the next, already in its
#: pipe so that it starts it as soon as the first ends (as a plain
#: ProcessPoolExecutor's workers do).
_DEPTH = 2
#: A next job held by a busy worker is sent ahead only up to this size: a
#: bigger one would fill the pipe and block the sender until the job before
#: it ends. It is sent when the worker is free instead.
_AHEAD_BYTES = 32768
#: Seconds a job may wait behind another worker's job while a worker is free
#: before that one takes it over (see ProcessRunner._take_over).
_STUCK_AFTER = 0.05

# What a slot's worker is doing.
_COLD = "cold"  # none runs: never started, or it died
_STARTING = "starting"  # being started and set up
_READY = "ready"  # takes jobs


class _Job:
    """A job handed to the pool: its future (the engine's), the message for a
    worker (the pickled arguments of :func:`run_job`), and its copies.

    A job waiting behind another worker's long job is taken over by a free
    worker: a second copy is sent to it. Whichever copy's supervisor starts
    the job in the store first runs it (the store's ``start`` is atomic); the
    other answers ``None`` at once. The future gets the first outcome of a
    copy that ran it. A copy whose worker died decides, unless another copy is
    another worker's first job (then either may have run it, and the last
    answer decides); a copy left behind another job answers later, unheard.
    """

    __slots__ = ("future", "message", "copies", "lost", "done", "refused")

    def __init__(self, future: Future[str | None], message: bytes) -> None:
        self.future = future
        self.message = message
        self.copies = 0  # copies held by workers, not yet answered
        self.lost: WorkerLost | None = None  # a copy's worker died
        self.done = False  # the future has (or is being given) its outcome
        # A copy's start was refused (cancelled, or started by the other
        # copy): it never becomes startable again, so it is not taken over.
        self.refused = False


class _Slot:
    """One worker's place: its process and pipe, its state, the jobs it holds
    (the one it runs first) and the messages not yet written to its pipe.
    Changed only under the runner's lock; written to under ``sending``."""

    __slots__ = ("process", "conn", "state", "jobs", "outbox", "since", "sending")

    def __init__(self) -> None:
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.state = _COLD
        self.jobs: list[_Job] = []
        self.outbox: deque[bytes] = deque()
        self.since = 0.0  # when its first job became first
        self.sending = threading.Lock()


_Outcome = tuple[Any, BaseException | None]


class ProcessRunner:
    """Runs jobs through :func:`run_job` in ``max_workers`` worker processes,
    each with a pipe of its own (or in the executor ``executor_factory``
    returns); the :class:`~wsgi_bg.runners.Runner` for ``runner="pool"``.

    A job goes to a free worker; else, when every worker runs and none is
    starting, to a worker's pipe as its next job; else it waits here, first
    in, first out, and starts a worker (up to ``max_workers``): the first
    worker ready takes the first job waiting. A job held as a busy worker's
    next job is taken over by a free one after ``_STUCK_AFTER`` seconds, so
    that no job waits behind a long one. One thread of the runner reads every
    worker's answers and sees every worker's end.
    """

    kind = "pool"
    needs_link = True
    holds_queued = True

    def __init__(
        self, *, max_workers: int | None, mp_context: BaseContext,
        executor_factory: Callable[[], Executor] | None,
        jobs_per_process: int = 1, max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        self.jobs_per_process = jobs_per_process
        self.max_result_bytes = max_result_bytes
        self.max_workers = max_workers
        self.mp_context = mp_context
        self.executor_factory = executor_factory
        self.link: Link | None = None
        #: executor_factory's executor (``None``: the runner's own workers).
        self.executor: Executor | None = None
        self._slots: list[_Slot] = []
        self._initargs: tuple[Any, ...] = ()
        self._waiting: deque[_Job] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._wake_r, self._wake_w = -1, -1  # tells the collector of new workers
        self._collector: threading.Thread | None = None
        # Taking over stuck jobs when no answer would (see _take_over).
        self._balance = threading.Condition(self._lock)
        self._balance_at: float | None = None
        self._balancer: threading.Thread | None = None

    def start(self, link: Link | None) -> None:
        if link is None:
            raise ValueError("the pool runner needs the store's link")
        self.link = link
        if self.executor_factory is not None:
            self.executor = self._user_executor()
            return
        forkserver = self.mp_context.get_start_method() == "forkserver"
        # The server's temporary directory (the forkserver's socket is in it),
        # for workers to remove should the server be killed outright.
        server = (os.getpid(), util.get_temp_dir()) if forkserver else None
        self._initargs = (link, forkserver, server)
        self._slots = [_Slot() for _ in range(self.max_workers or os.cpu_count() or 1)]
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._collector = threading.Thread(
            target=self._collect, name="wsgi_bg-pool", daemon=True)
        self._collector.start()

    def _user_executor(self) -> Executor:
        assert self.executor_factory is not None
        executor = self.executor_factory()
        if isinstance(executor, ThreadPoolExecutor) or not isinstance(
            executor, Executor
        ):
            raise TypeError(
                "executor_factory must return a concurrent.futures executor"
                " whose workers are processes (a ProcessPoolExecutor, or"
                f" another process pool), got {executor!r}: job processes"
                " are forked from a worker, and forking a threaded server"
                " can deadlock"
            )
        return executor

    def _link(self) -> Link:
        if self.link is None:
            raise RuntimeError("the pool runner is not started")
        return self.link

    def worker_pids(self) -> list[int]:
        """The pids of the pool's worker processes now."""
        if self.executor is not None:
            return list(getattr(self.executor, "_processes", None) or ())
        with self._lock:
            return [s.process.pid for s in self._slots
                    if s.process is not None and s.process.pid is not None]

    # -- submit ------------------------------------------------------------------------
    def submit(
        self, job_id: str, payload: bytes, timeout: float | None, grace: float,
        name: str,
    ) -> Future[str | None]:
        args = (self._link(), job_id, payload, timeout, grace,
                self.jobs_per_process, self.max_result_bytes)
        if self.executor is not None:
            return self.executor.submit(run_job, *args)
        if not self._slots:
            raise RuntimeError("the pool runner is not started")
        job = _Job(Future(), pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL))
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool runner was shut down")
            slot = self._place(job)
            cold = None if slot is not None else self._to_start()
        if slot is not None:
            self._send(slot)
        else:
            self._start(cold)
        return job.future

    def _place(self, job: _Job) -> _Slot | None:
        """Under the lock: the slot that takes ``job`` now (a free worker,
        else, when every worker runs and none starts, a busy one as its next
        job), or ``None``: it waits."""
        slot = next((s for s in self._slots if s.state == _READY and not s.jobs),
                    None)
        if (slot is None and len(job.message) <= _AHEAD_BYTES
                and all(s.state == _READY for s in self._slots)):
            slot = next((s for s in self._slots if len(s.jobs) < _DEPTH), None)
        if slot is None:
            self._waiting.append(job)
            return None
        job.future.set_running_or_notify_cancel()
        self._add(slot, job)
        return slot

    def _add(self, slot: _Slot, job: _Job) -> None:
        """Under the lock: ``job`` is ``slot``'s, its message to be sent."""
        if not slot.jobs:
            slot.since = time.monotonic()
        slot.jobs.append(job)
        slot.outbox.append(job.message)
        job.copies += 1

    def _send(self, slot: _Slot) -> None:
        """Write ``slot``'s pending messages to its worker, in order (one
        thread at a time). A worker that died is seen by the collector."""
        with slot.sending:
            while True:
                with self._lock:
                    if not slot.outbox or slot.conn is None:
                        return
                    message, conn = slot.outbox.popleft(), slot.conn
                try:
                    conn.send_bytes(message)
                except (OSError, ValueError):
                    return

    def _to_start(self) -> _Slot | None:
        """Under the lock: a cold slot to start (now marked starting) if
        fewer are starting than jobs wait, here or held next by a busy worker
        (the new one may take it over: after a worker died, say)."""
        if self._closed:
            return None
        starting = sum(s.state == _STARTING for s in self._slots)
        if starting >= len(self._waiting) and starting >= sum(
                len(s.jobs) > 1 for s in self._slots):
            return None
        slot = next((s for s in self._slots if s.state == _COLD), None)
        if slot is not None:
            slot.state = _STARTING
        return slot

    def _pop_waiting(self) -> _Job | None:
        """Under the lock: the first waiting job not cancelled (its future
        now running), or ``None``."""
        while self._waiting and not self._closed:
            job = self._waiting.popleft()
            if job.done:
                continue
            if job.future.running() or job.future.set_running_or_notify_cancel():
                return job
        return None

    def _refill(self, slot: _Slot) -> None:
        """Under the lock: jobs for ``slot``, whose worker is ready: one taken
        over from behind a long job, else the first waiting, and its next."""
        if not slot.jobs:
            job = self._take_over(time.monotonic(), idle=not self._waiting)
            if job is not None:
                self._add(slot, job)
        while len(slot.jobs) < _DEPTH:
            if slot.jobs and (not self._waiting
                              or len(self._waiting[0].message) > _AHEAD_BYTES
                              or any(s.state == _STARTING for s in self._slots)):
                break  # (a worker starting takes the next job)
            job = self._pop_waiting()
            if job is None:
                break
            self._add(slot, job)

    def _take_over(self, now: float, idle: bool) -> _Job | None:
        """Under the lock: a job held as a busy worker's next job that a free
        worker should run instead: one whose worker's job has run for
        ``_STUCK_AFTER`` seconds. If there is none but the free worker would
        be ``idle``, the check is made again once the first such job has
        waited that long."""
        soonest = None
        for slot in self._slots:
            if slot.state != _READY or len(slot.jobs) < 2:
                continue
            job = slot.jobs[-1]
            if job.done or job.copies > 1 or job.refused:
                continue  # ended, taken over already, or cannot start
            if now - slot.since >= _STUCK_AFTER:
                return job
            if soonest is None or slot.since < soonest:
                soonest = slot.since
        if idle and soonest is not None:
            self._check_at(soonest + _STUCK_AFTER)
        return None

    def _check_at(self, when: float) -> None:
        """Under the lock: look for stuck jobs again at ``when``."""
        if self._balance_at is not None and self._balance_at <= when:
            return
        self._balance_at = when
        if self._balancer is None:
            self._balancer = threading.Thread(
                target=self._balance_loop, name="wsgi_bg-pool-balance", daemon=True)
            self._balancer.start()
        else:
            self._balance.notify()

    def _balance_loop(self) -> None:
        """Give a job stuck behind another worker's long job to a free worker
        once it has waited ``_STUCK_AFTER`` seconds, when no answer did."""
        while True:
            with self._lock:
                while not self._closed:
                    at = self._balance_at
                    delay = None if at is None else at - time.monotonic()
                    if delay is not None and delay <= 0:
                        break
                    self._balance.wait(delay)
                if self._closed:
                    return
                self._balance_at = None
                given = []
                for slot in self._slots:
                    if slot.state == _READY and not slot.jobs:
                        job = self._take_over(time.monotonic(), idle=True)
                        if job is None:
                            break
                        self._add(slot, job)
                        given.append(slot)
            for slot in given:
                self._send(slot)

    # -- the collector: answers and ends of workers --------------------------------
    def _collect(self) -> None:
        """Read every worker's answers and see every worker's end, until the
        pool is shut down and no worker is left."""
        while True:
            with self._lock:
                running = [(s, s.process, s.conn) for s in self._slots
                           if s.process is not None]
                if self._closed and not running:
                    break
            ready: dict[Any, tuple[_Slot, BaseProcess, Connection, bool]] = {}
            for slot, process, conn in running:
                assert conn is not None
                ready[conn] = (slot, process, conn, False)
                ready[process.sentinel] = (slot, process, conn, True)
            seen = wait([self._wake_r, *ready])
            if self._wake_r in seen:
                os.read(self._wake_r, 4096)
            # Answers first: a worker's last ones arrive before its end.
            for ended in (False, True):
                for obj in seen:
                    entry = ready.get(obj)
                    if entry is None or entry[3] is not ended:
                        continue
                    slot, process, conn, _ = entry
                    if slot.process is not process:
                        continue  # its end was seen already
                    if ended or not self._answer(slot, conn):
                        self._died(slot, process, conn)
        with self._lock:  # (under the lock: _wake never writes to a reused fd)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def _wake(self) -> None:
        with self._lock:
            if self._wake_w < 0:
                return  # the collector is gone
            try:
                os.write(self._wake_w, b"w")
            except BlockingIOError:
                pass  # awake already

    def _answer(self, slot: _Slot, conn: Connection) -> bool:
        """Read what ``slot``'s worker said; ``False`` if it is gone."""
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return False
        except Exception as exc:  # noqa: BLE001 - an answer that cannot be read
            message = ("done", None, RuntimeError(
                f"the answer of a pool worker could not be read: {exc!r}"))
        outcome = None
        with self._lock:
            if message[0] == "ready":
                slot.state = _READY
            elif slot.jobs:
                job = slot.jobs.pop(0)
                slot.since = time.monotonic()  # its next job's start
                job.copies -= 1
                outcome = self._settle(job, message[1], message[2])
            if not self._closed:
                self._refill(slot)
        self._send(slot)  # its worker waits: the next job first
        if outcome is not None:
            _resolve(job, outcome)
        return True

    def _died(self, slot: _Slot, process: BaseProcess, conn: Connection) -> None:
        """``slot``'s worker ended: read its last answers; the job it ran (if
        any) gets the loss, those it held next go back to the front of the
        queue (they never started there), and the slot is cold."""
        try:
            while conn.poll(0):
                if not self._answer(slot, conn):
                    break
        except (EOFError, OSError):
            pass
        process.join(0.5)  # its exit status, for the job's error
        lost = WorkerLost(process.pid, process.exitcode, shutting_down=self._closed)
        outcomes = []
        with self._lock:
            jobs, starting = slot.jobs, slot.state == _STARTING
            slot.jobs, slot.state = [], _COLD
            slot.process = slot.conn = None
            slot.outbox.clear()
            for job in jobs:
                job.copies -= 1
            if jobs:
                outcome = self._settle(jobs[0], None, lost)
                if outcome is not None:
                    outcomes.append((jobs[0], outcome))
            for job in reversed(jobs[1:]):
                if not job.done and job.copies == 0:
                    self._waiting.appendleft(job)
            if starting and not self._closed:
                # It died setting up: the first job waiting fails, saying so
                # (it never started: the engine may queue it again).
                head = self._pop_waiting()
                outcome = None if head is None else self._settle(head, None, lost)
                if head is not None and outcome is not None:
                    outcomes.append((head, outcome))
            cold = self._to_start()
        with slot.sending:  # not while a message is being written to it
            conn.close()
        with contextlib.suppress(ValueError):  # still running: not ours to close
            process.close()
        self._start(cold)
        for job, outcome in outcomes:
            _resolve(job, outcome)

    def _settle(self, job: _Job, result: str | None,
                error: BaseException | None) -> _Outcome | None:
        """Under the lock: the outcome ``job``'s future gets now from one of
        its copies, or ``None`` (it has one, or another copy decides)."""
        if job.done:
            return None  # a copy that lost the race, or the future has it
        if isinstance(error, WorkerLost):
            if any(s.jobs and s.jobs[0] is job for s in self._slots):
                # Another worker's first job too: it may be the one that ran
                # it (a copy held next, behind another job, cannot be).
                job.lost = error
                return None
        elif error is None and result is None:
            if job.copies:
                job.refused = True
                return None  # this copy did not run it: another may
            error = job.lost  # none did, unless the one whose worker died
        job.done = True
        return result, error

    # -- starting workers --------------------------------------------------------
    def _start(self, slot: _Slot | None) -> None:
        """Start the worker of ``slot`` (marked starting); once it is set up,
        it takes jobs."""
        while slot is not None:
            ours, theirs = self.mp_context.Pipe()
            try:
                process = self.mp_context.Process(  # type: ignore[attr-defined]
                    target=_worker_main, args=(theirs, self._initargs),
                    name="wsgi_bg-pool-worker")
                with self._lock:
                    if self._closed:
                        raise RuntimeError("the pool runner was shut down")
                process.start()
            except BaseException as exc:  # noqa: BLE001 - a job fails with it
                ours.close()
                slot = self._start_failed(slot, exc)
                continue
            finally:
                theirs.close()
            with self._lock:
                slot.process, slot.conn = process, ours
                if self._closed:  # shut down meanwhile: it stops at once
                    slot.outbox.append(pickle.dumps(_STOP))
            self._wake()
            self._send(slot)
            return

    def _start_failed(self, slot: _Slot, error: BaseException) -> _Slot | None:
        """A worker could not be started: the slot is cold again, and the
        first waiting job fails with ``error``. Returns the next slot to
        start, if any."""
        with self._lock:
            slot.state = _COLD
            head = self._pop_waiting()
            outcome = None if head is None else self._settle(head, None, error)
            cold = self._to_start()
        if head is not None and outcome is not None:
            _resolve(head, outcome)
        return cold

    # -- the rest of the Runner protocol -------------------------------------------
    def cancel(self, job_id: str) -> None:
        pass  # the engine cancels the job's future; a worker sees the store's word

    def restart(self) -> None:
        """Start a fresh executor after executor_factory's broke (a worker
        died); the runner's own workers are replaced one by one."""
        if self.executor is not None:
            old, self.executor = self.executor, self._user_executor()
            old.shutdown(wait=False, cancel_futures=True)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the pool: waiting jobs are cancelled, workers end after the
        jobs they hold. Workers still busy ``timeout`` seconds later (their
        job store hung) are killed, with their job processes' groups;
        ``None``: wait for them."""
        if self.executor is not None:
            _shut_down([self.executor], timeout)
            return
        with self._lock:
            if self._collector is None:
                return  # never started
            self._closed = True
            self._balance.notify()
            waiting, self._waiting = list(self._waiting), deque()
            for job in waiting:
                job.done = True
            stopping = [s for s in self._slots if s.process is not None]
            for slot in stopping:
                slot.outbox.append(pickle.dumps(_STOP))
        for job in waiting:
            if not job.future.cancel():  # taken back from a dead worker: running
                job.future.set_exception(RuntimeError(
                    "the worker pool was shut down before it started"))
        for slot in stopping:
            self._send(slot)
        self._wake()
        self._collector.join(timeout)
        if self._collector.is_alive():
            with self._lock:
                late = [s.process for s in self._slots if s.process is not None]
            for process in late:
                # The collector may close a worker that ends meanwhile: then
                # pid and is_alive() raise ValueError, and it is not ours.
                with contextlib.suppress(ValueError):
                    if process.pid is not None and process.is_alive():
                        # (a process that ended may have left its pid to another)
                        for child in _children(process.pid):
                            kill_group(child)  # the job's processes
                        process.kill()
            self._collector.join(5.0)  # killed workers: seen at once


def _resolve(job: _Job, outcome: _Outcome) -> None:
    result, error = outcome
    if error is None:
        job.future.set_result(result)
    else:
        job.future.set_exception(error)


def _shut_down(executors: list[Executor], timeout: float | None) -> None:
    """Shut ``executors`` down together; kill the workers of those not done
    within ``timeout`` seconds."""
    workers = {id(executor): list((getattr(executor, "_processes", None) or {})
                                  .values()) for executor in executors}
    threads = [
        threading.Thread(target=executor.shutdown,
                         kwargs={"wait": True, "cancel_futures": True},
                         name="wsgi_bg-pool-shutdown", daemon=True)
        for executor in executors]
    for thread in threads:
        thread.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    for thread in threads:
        thread.join(None if deadline is None
                    else max(0.0, deadline - time.monotonic()))
    late = [executor for executor, thread in zip(executors, threads, strict=True)
            if thread.is_alive()]
    for executor in late:
        for process in workers[id(executor)]:
            if process.is_alive():  # else its pid may be another's by now
                for child in _children(process.pid):
                    kill_group(child)  # the job's processes
                process.kill()
    for thread in threads:
        thread.join(5.0)  # killed workers: their executor ends at once
