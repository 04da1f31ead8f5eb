"""The default runner: ``max_workers`` pool worker processes of the server,
each supervising a job process. This module runs in the server process: it
is the scheduler that hands jobs to the workers; what runs in a worker is
:mod:`~wsgi_bg.runners.pool_worker`.

Jobs run on the server's own machine, in
executors of one worker each (:class:`~concurrent.futures.ProcessPoolExecutor`),
started on demand (up to ``max_workers``) from the first job on::

    app = BackgroundMiddleware(app)            # runner="pool", the default

Data flow::

    engine.submit ─► ProcessRunner.submit ─ a free worker? ─yes─► its executor
                          │ no (or all busy: as a worker's next call) │
                          ▼                                           ▼
                     waiting (FIFO;           worker: run_jobs ─► supervise_all
                     a cancel drops it)                      each job │ outcomes
                          │                                           ▼
                          └─► the next jobs to ◄── the executor's thread calls
                              that worker, at once  back with the outcomes; then
                                                    the jobs' futures are done

Why one executor of one worker per worker, not one executor of
``max_workers``: a :class:`~concurrent.futures.ProcessPoolExecutor` breaks as
a whole (``BrokenProcessPool``) when one of its workers dies, failing the jobs
of every other worker. With one worker each, a worker killed from outside (an
operator, the out-of-memory killer) fails only the job it ran
(:class:`WorkerLost`, which says so, told once what that job started is
killed: its process group), the job it held next goes back to the
front of the queue, a fresh executor takes the slot when a job needs one, and
every other job goes on. Each worker holds at most two calls (the one it
runs, and its next, already in its executor's call queue so that it starts at
once: what keeps a plain pool's throughput). A call is one job, or, when jobs
wait, several (:func:`~.pool_worker.run_jobs`, an even share of those waiting, as
``Executor.map``'s ``chunksize``): one hand-off, one answer, for many short
jobs. Jobs held behind a job that has run for longer than ``_STUCK_AFTER``
are taken over by a free worker, so that no job waits behind a long one.

``executor_factory`` (the user's own executor) is used as it is: jobs go to it
directly, and when it breaks, the jobs it ran are lost and a fresh one is made
for later jobs.

Each pool worker is a long-lived, single-threaded supervisor: the pool's task
function :func:`~wsgi_bg.runners.pool_worker.run_jobs` hands its jobs to
:func:`~wsgi_bg.runners.supervisor.supervise_all` (one job:
:func:`~wsgi_bg.runners.supervisor.supervise`), which forks (or reuses) the
job process, and records a job's end with the next job's start. The worker
reaches the store through the backend's picklable
:class:`~wsgi_bg.stores.Link`, once per process.

When the server process is killed outright (SIGKILL), forkserver workers see
it: they let go of the forkserver's "alive" pipe, so the forkserver exits with
the server, and Linux then sends each worker SIGTERM (its parent-death
signal). A worker ending on SIGTERM kills its job process's group first, and
removes the server's multiprocessing temporary directory (``pymp-*``, which
holds the forkserver's socket) once the server is gone (see
:mod:`~wsgi_bg.runners.pool_worker`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import (
    Executor,
    Future,
    InvalidStateError,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
)
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import util
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from ..jobs import JobState
from ..limits import MAX_RESULT_BYTES
from ..stores import Backend, Ending, Link
from . import JobLost
from .pool_worker import run_job, run_jobs, worker_init
from .processes import children, describe_exitcode, kill_group
from .supervisor import JobCall

logger = logging.getLogger("wsgi_bg")

# -- the runner ----------------------------------------------------------------------
class WorkerLost(JobLost, BrokenProcessPool):
    """The pool worker running a job died: the outcome of that job's future
    (a :class:`~wsgi_bg.runners.JobLost`). Its text is the job's error."""

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
        JobLost.__init__(self, text,
                         state="cancelled" if shutting_down else "crashed")


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "died"
    return describe_exitcode(exitcode)


# -- the pool ------------------------------------------------------------------
#: Calls a worker holds at once: the one it runs and the next, already in its
#: executor's call queue so that it starts as soon as the first ends (a plain
#: ProcessPoolExecutor's call queue holds one call more than it has workers).
_DEPTH = 2
#: Jobs at most in one call when jobs wait (spread evenly over the workers),
#: and their payloads' bytes at most, beyond the first job's. (48, not 16:
#: in a burst of trivial jobs the executors' threads in the server spend
#: ~7 µs a job instead of ~13.)
_CHUNK = 48
_CHUNK_BYTES = 262144
#: Jobs at most a free worker takes over at once from behind a long one.
#: Fewer than _CHUNK: a job taken over is not taken over again, so those
#: behind a second long job among them wait for it (with 48, all 45 short
#: jobs behind two long ones in the review's test waited > 4 s; with 16, 14).
_TAKE_OVER = 16
#: Seconds a job may wait behind another worker's job while a worker is free
#: before that one takes it over (see ProcessRunner._take_over).
_STUCK_AFTER = 0.05


class _Job:
    """A job handed to the pool: its future (the engine's), the arguments of
    :func:`~.pool_worker.run_job`, and its copies.

    A job waiting behind another worker's long job is taken over by a free
    worker: a second copy is submitted to it. Whichever copy's supervisor
    starts the job in the store first runs it (the store's ``start`` is
    atomic); the other answers ``None`` at once. The future gets the first
    outcome of a copy that ran it; a copy that failed (its worker died, or it
    raised) decides only when no other copy is left to answer: until then
    that one may be the copy that runs it.
    """

    __slots__ = ("future", "args", "attempt", "size", "copies", "failed", "done",
                 "refused")

    def __init__(self, future: Future[str | Ending | None],
                 args: tuple[Link, JobCall], size: int, attempt: int = 1) -> None:
        self.future = future
        self.args = args
        self.attempt = attempt  # which attempt of the job this is
        self.size = size  # its payload's bytes
        self.copies = 0  # calls holding a copy, not yet answered
        # A copy failed (its worker died, or it raised) while another was
        # held: the outcome if no other copy runs the job.
        self.failed: BaseException | None = None
        self.done = False  # the future has (or is being given) its outcome
        # A copy's start was refused (cancelled, or started by the other
        # copy): it never becomes startable again, so it is not taken over.
        self.refused = False


_Call = list[_Job]  # the jobs of one call of run_jobs, in the order it runs them


class _Slot:
    """One worker's place: a :class:`~concurrent.futures.ProcessPoolExecutor`
    of one worker (``None``: not started yet, or its worker died), that
    worker's process, the calls it holds (the one it runs first) and those of
    them not yet submitted to it. Changed only under the runner's lock;
    submitted to under ``sending``."""

    __slots__ = ("executor", "process", "calls", "outbox", "since", "sending")

    def __init__(self) -> None:
        self.executor: ProcessPoolExecutor | None = None
        self.process: BaseProcess | None = None
        self.calls: list[_Call] = []
        self.outbox: deque[_Call] = deque()
        self.since = 0.0  # when its first call became first
        # Reentrant: a call that is done by the time its callback is added
        # runs the callback, which may submit, in the submitting thread.
        self.sending = threading.RLock()


_Outcome = tuple[Any, BaseException | None]


class ProcessRunner:
    """Runs jobs through :func:`~.pool_worker.run_jobs` in ``max_workers``
    :class:`~concurrent.futures.ProcessPoolExecutor` instances of one worker
    each (or through :func:`~.pool_worker.run_job` in the executor ``executor_factory``
    returns); the :class:`~wsgi_bg.runners.Runner` for ``runner="pool"``.

    A job goes to a free worker (a started one first, else a new one is
    started); else, when every worker has a job, to a worker as its next
    call; else it waits here, first in, first out, until a worker answers,
    which then takes the jobs waiting at its turn as one call (up to
    ``_CHUNK``, an even share of them). Jobs held behind a busy worker's
    first one are taken over by a free worker after ``_STUCK_AFTER``
    seconds, up to ``_TAKE_OVER`` at a time, so that no job waits behind a
    long one while a worker is free; a job taken over once is not taken over
    again (its two copies race for its start), so one held behind a second
    long job among those taken over waits for it.
    """

    kind = "pool"
    needs_link = True
    holds_queued = True

    def __init__(
        self, *, backend: Backend, max_workers: int | None, mp_context: BaseContext,
        executor_factory: Callable[[], Executor] | None,
        jobs_per_process: int = 1, max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        self.backend = backend  # to read a lost job's process group
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
        self._server: tuple[int, str] | None = None
        self._waiting: deque[_Job] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._killed: set[int] = set()  # workers shutdown killed, late
        # Taking over stuck jobs when no answer would (see _take_over).
        self._balance = threading.Condition(self._lock)
        self._balance_at: float | None = None
        self._balancer: threading.Thread | None = None

    def start(self, link: Link | None) -> None:
        if link is None:
            raise ValueError("the pool runner needs the store's link")
        self.link = link
        # The server's pid, for workers to end with it, and its temporary
        # directory (the forkserver's socket, the store's are in it), for them
        # to remove should the server be killed outright.
        self._server = (os.getpid(), util.get_temp_dir())
        if self.executor_factory is not None:
            self.executor = self._user_executor()
            return
        forkserver = self.mp_context.get_start_method() == "forkserver"
        self._initargs = (link, self._server, forkserver)
        self._slots = [_Slot() for _ in range(self.max_workers or os.cpu_count() or 1)]

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
        name: str, created_at: float, attempt: int = 1,
    ) -> Future[str | Ending | None]:
        args = (self._link(), JobCall(job_id, payload, timeout, grace,
                                      self.jobs_per_process, self.max_result_bytes))
        if self.executor is not None:
            return self._submit_to_user_executor(args)
        if not self._slots:
            raise RuntimeError("the pool runner is not started")
        job = _Job(Future(), args, len(payload), attempt)
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool runner was shut down")
            slot = self._place(job)
        if slot is not None:
            self._send(slot)
        return job.future

    def _place(self, job: _Job) -> _Slot | None:
        """Under the lock: the slot that takes ``job`` now (a free worker, a
        started one first; else a busy one as its next call), or ``None``: it
        waits."""
        free = [s for s in self._slots if not s.calls]
        slot = next((s for s in free if s.executor is not None),
                    free[0] if free else None)
        if slot is None:
            slot = next((s for s in self._slots if len(s.calls) < _DEPTH), None)
        if slot is None:
            self._waiting.append(job)
            return None
        job.future.set_running_or_notify_cancel()
        self._add(slot, [job])
        return slot

    def _add(self, slot: _Slot, call: _Call) -> None:
        """Under the lock: ``call`` is ``slot``'s, to be submitted to it."""
        if not slot.calls:
            slot.since = time.monotonic()
        slot.calls.append(call)
        slot.outbox.append(call)
        for job in call:
            job.copies += 1

    def _drop(self, slot: _Slot, call: _Call) -> bool:
        """Under the lock: ``slot`` no longer holds ``call`` (it answered);
        ``False`` if it did not hold it (the slot's worker died meanwhile)."""
        if not any(held is call for held in slot.calls):
            return False
        slot.calls = [held for held in slot.calls if held is not call]
        slot.outbox = deque(held for held in slot.outbox if held is not call)
        for job in call:
            job.copies -= 1
        slot.since = time.monotonic()  # its next call's start
        return True

    def _send(self, slot: _Slot) -> None:
        """Submit ``slot``'s pending calls to its executor, in order (one
        thread at a time), starting its worker if it has none."""
        with slot.sending:
            while True:
                with self._lock:
                    if not slot.outbox:
                        return
                    call = slot.outbox.popleft()
                    executor = slot.executor
                    if executor is None and not self._closed:
                        executor = slot.executor = ProcessPoolExecutor(
                            1, mp_context=self.mp_context,
                            initializer=worker_init, initargs=self._initargs)
                if executor is None:  # shut down before it started
                    self._not_sent(slot, None, call, RuntimeError(
                        "the worker pool was shut down before this job started"))
                    continue
                try:
                    inner = executor.submit(run_jobs, [job.args for job in call])
                except BaseException as exc:  # noqa: BLE001 - the jobs', or the pool's
                    self._not_sent(slot, executor, call, exc)
                    continue
                with self._lock:
                    if slot.executor is executor and slot.process is None:
                        # concurrent.futures starts the worker in submit().
                        processes = getattr(executor, "_processes", None) or {}
                        slot.process = next(iter(processes.values()), None)
                inner.add_done_callback(
                    functools.partial(self._answered, slot, executor, call))

    def _not_sent(self, slot: _Slot, executor: Executor | None, call: _Call,
                  error: BaseException) -> None:
        """``call`` could not be submitted to ``slot``'s ``executor``."""
        if isinstance(error, BrokenProcessPool) and executor is not None:
            # Its worker died while it held no call (no callback says so):
            # the jobs go elsewhere with the others the slot held.
            self._broke(slot, executor)
            return
        with self._lock:
            if not self._drop(slot, call):
                return
            discard = (executor is not None and slot.executor is executor
                       and slot.process is None)
            if discard:  # (its worker could not be started: try a fresh one)
                slot.executor = slot.process = None
            outcomes = self._settle_all(call, [(None, error)] * len(call))
        if discard and executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self._resolve_all(outcomes)

    # -- answers -----------------------------------------------------------------------
    def _answered(self, slot: _Slot, executor: ProcessPoolExecutor, call: _Call,
                  inner: Future[list[_Outcome]]) -> None:
        """A done callback (in the executor's own thread): a copy of each job
        of ``call`` ended on ``slot``'s worker; give the worker its next
        call."""
        answers: list[_Outcome]
        if inner.cancelled():  # the executor was shut down before it ran it
            answers = [(None, RuntimeError(
                "the worker pool was shut down before this job started"))] * len(call)
        else:
            error = inner.exception()
            if isinstance(error, BrokenProcessPool):
                # Not in this thread: on Python 3.12+ concurrent.futures calls
                # back under the executor's lock, which a request thread
                # submitting to it waits for while holding ours.
                threading.Thread(target=self._broke, args=(slot, executor),
                                 name="wsgi_bg-pool-broke", daemon=True).start()
                return
            answers = inner.result() if error is None else [(None, error)] * len(call)
        outcomes: list[tuple[_Job, _Outcome]] = []
        with self._lock:
            if self._drop(slot, call):
                outcomes = self._settle_all(call, answers)
            if not self._closed:
                self._refill(slot)
        self._send(slot)
        self._resolve_all(outcomes)

    def _broke(self, slot: _Slot, executor: Executor) -> None:
        """``slot``'s worker died: each job of the call it ran (if it began)
        gets the loss (the engine runs again one that had not started), the
        jobs of the call it held next go back to the front of the queue, and
        the slot is free for a fresh worker."""
        with self._lock:
            if slot.executor is not executor:
                return  # seen already (a callback for each call it held)
            process, calls = slot.process, slot.calls
            unsent = [call for call in slot.outbox]
            slot.executor = slot.process = None
            slot.calls, slot.outbox = [], deque()
            for call in calls:
                for job in call:
                    job.copies -= 1
        if process is not None:
            # Its exit status, for the job's error, read once concurrent.futures
            # has reaped it: two threads reading a forkserver child's status
            # race, and the loser reads 255.
            manager = getattr(executor, "_executor_manager_thread", None)
            if manager is not None and manager is not threading.current_thread():
                manager.join(5.0)
            else:
                process.join(0.5)
        pid = None if process is None else process.pid
        lost = WorkerLost(pid, None if process is None else process.exitcode,
                          shutting_down=pid is not None and pid in self._killed)
        outcomes: list[tuple[_Job, _Outcome]] = []
        with self._lock:
            if calls and not any(calls[0] is call for call in unsent):
                ran, calls = calls[0], calls[1:]  # the call it ran, if it began
                outcomes = self._settle_all(ran, [(None, lost)] * len(ran))
            for job in reversed([job for call in calls for job in call]):
                if job.done or job.copies:
                    continue  # another copy answers
                if self._closed:
                    job.done = True
                    outcomes.append((job, (None, RuntimeError(
                        "the worker pool was shut down before this job started"))))
                else:
                    self._waiting.appendleft(job)
            send = [] if self._closed else self._fill_free()
        # (Not executor.shutdown(): concurrent.futures shut it down as it broke,
        # and on Python 3.13 this runs under the lock shutdown() takes.)
        for other in send:
            self._send(other)
        self._resolve_all(outcomes)

    def _settle_all(self, call: _Call,
                    answers: list[_Outcome]) -> list[tuple[_Job, _Outcome]]:
        """Under the lock: the outcomes the futures of ``call``'s jobs get
        now from their copies' ``answers``."""
        outcomes = []
        for job, (result, error) in zip(call, answers, strict=True):
            outcome = self._settle(job, result, error)
            if outcome is not None:
                outcomes.append((job, outcome))
        return outcomes

    def _settle(self, job: _Job, result: str | Ending | None,
                error: BaseException | None) -> _Outcome | None:
        """Under the lock: the outcome ``job``'s future gets now from one of
        its copies, or ``None`` (it has one, or another copy decides)."""
        if job.done:
            return None  # a copy that lost the race, or the future has it
        if error is not None:
            if job.copies:
                # Another worker holds a copy: if this one never started the
                # job, that one runs it; if it did, that one's start is
                # refused and this failure decides then. (A job that ran on a
                # worker that died stays running until then: its record says
                # so, and a cancel kills its processes.)
                job.failed = error
                return None
        elif result is None:
            if job.copies:
                job.refused = True
                return None  # this copy did not run it: another may
            error = job.failed  # none did, unless the one that failed
        job.done = True
        return result, error

    def _resolve_all(self, outcomes: list[tuple[_Job, _Outcome]]) -> None:
        """Give the jobs' futures their outcomes (outside the lock): a job
        whose worker died gets the :class:`WorkerLost` once what it left is
        killed, unless its attempt had ended (see :meth:`_lost`)."""
        for job, (result, error) in outcomes:
            if (isinstance(error, WorkerLost) and not error.shutting_down
                    and not self._lost(job)):
                error = None  # its attempt ended before: it answers "ended"
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)

    def _lost(self, job: _Job) -> bool:
        """Whether ``job``, whose worker died before answering for it, was
        lost with it: not if its record shows that this attempt had ended (a
        worker answers for a whole call at once, so a job that ended early
        in the call, and may since run again as a later attempt, on another
        worker or in another server process, is in the call's loss too).
        If it was running, kill its process group: its job process died
        with the worker (its parent-death signal), but what the job started
        there did not; the group's id is the job process's pid, which only
        the job's record holds. (Shutdown kills the groups of the workers it
        kills itself: see :func:`_shut_down`.)"""
        job_id = job.args[1].job_id
        try:
            record = self.backend.reader().get(job_id)
        except Exception:  # noqa: BLE001 - the loss is told all the same
            logger.exception("wsgi_bg: could not read job %s to kill what it"
                             " left", job_id)
            return True
        if record is None or (record.get("attempt") or 1) != job.attempt:
            return False  # dropped, or at a later attempt: this one ended
        if record["state"] == JobState.RUNNING and record["pid"]:
            kill_group(record["pid"])
        return record["state"] in (JobState.QUEUED, JobState.RUNNING)

    # -- giving workers jobs -----------------------------------------------------------
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

    def _chunk(self) -> _Call:
        """Under the lock: the next call's jobs from those waiting: an even
        share of them, at most ``_CHUNK`` jobs and ``_CHUNK_BYTES`` beyond
        the first's payload."""
        share = min(_CHUNK, max(1, len(self._waiting) // len(self._slots)))
        call: _Call = []
        size = 0
        while len(call) < share and self._waiting:
            if call and size + self._waiting[0].size > _CHUNK_BYTES:
                break
            job = self._pop_waiting()
            if job is None:
                break
            call.append(job)
            size += job.size
        return call

    def _refill(self, slot: _Slot) -> None:
        """Under the lock: calls for ``slot``, whose worker answered: jobs
        taken over from behind a long one, else those first waiting, and its
        next."""
        if not slot.calls:
            call = self._take_over(time.monotonic(), idle=not self._waiting)
            if call:
                self._add(slot, call)
        while len(slot.calls) < _DEPTH:
            call = self._chunk()
            if not call:
                break
            self._add(slot, call)

    def _fill_free(self) -> list[_Slot]:
        """Under the lock: jobs for free slots (started ones first), waiting
        or stuck behind a long job (after a worker died, say); the slots
        given some."""
        given = []
        for slot in self._free():
            self._refill(slot)
            if not slot.calls:
                break
            given.append(slot)
        return given

    def _free(self) -> list[_Slot]:
        """Under the lock: the slots that hold no call, started ones first."""
        return sorted((s for s in self._slots if not s.calls),
                      key=lambda s: s.executor is None)

    def _take_over(self, now: float, idle: bool) -> _Call:
        """Under the lock: jobs held behind a busy worker's first job that a
        free worker should run instead: those of the worker whose current
        call has run for ``_STUCK_AFTER`` seconds, the longest. If there are
        none but the free worker would be ``idle``, the check is made again
        once the first such job has waited that long."""
        soonest = None
        for slot in sorted(self._slots, key=lambda s: s.since):
            held = [job for call in slot.calls for job in call][1:]
            held = [job for job in held
                    if not (job.done or job.copies > 1 or job.refused)]
            if not held:
                continue  # ended, taken over already, or cannot start
            if now - slot.since >= _STUCK_AFTER:
                return held[:_TAKE_OVER]
            if soonest is None:
                soonest = slot.since
        if idle and soonest is not None:
            self._check_at(soonest + _STUCK_AFTER)
        return []

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
        """Give jobs stuck behind another worker's long job to a free worker
        once they have waited ``_STUCK_AFTER`` seconds, when no answer did."""
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
                for slot in self._free():
                    call = self._take_over(time.monotonic(), idle=True)
                    if not call:
                        break
                    self._add(slot, call)
                    given.append(slot)
            for slot in given:
                self._send(slot)

    def _submit_to_user_executor(
        self, args: tuple[Link, JobCall]
    ) -> Future[str | Ending | None]:
        """``executor_factory``'s executor runs the job: a fresh one if it
        broke (a worker died), and its loss told as a
        :class:`~wsgi_bg.runners.JobLost`."""
        assert self.executor is not None
        call = functools.partial(run_job, *args, server=self._server)
        try:
            inner = self.executor.submit(call)
        except BrokenProcessPool:
            self._restart()
            inner = self.executor.submit(call)
        outer: Future[str | Ending | None] = Future()
        outer.add_done_callback(lambda f: f.cancelled() and inner.cancel())
        inner.add_done_callback(functools.partial(_relay_user_outcome, outer))
        return outer

    # -- the rest of the Runner protocol -------------------------------------------
    def cancel(self, job_id: str) -> None:
        pass  # the engine cancels the job's future; a worker sees the store's word

    def _restart(self) -> None:
        """Start a fresh executor after executor_factory's broke (a worker
        died); the runner's own workers are replaced one by one."""
        if self.executor is not None:
            old, self.executor = self.executor, self._user_executor()
            old.shutdown(wait=False, cancel_futures=True)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the pool: waiting jobs are cancelled, workers end after the
        calls they hold. Workers still busy ``timeout`` seconds later (their
        job store hung) are killed, with their job processes' groups;
        ``None``: wait for them."""
        if self.executor is not None:
            _shut_down([self.executor], timeout)
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._balance.notify()
            waiting, self._waiting = list(self._waiting), deque()
            for job in waiting:
                job.done = True
            executors: list[Executor] = [
                s.executor for s in self._slots if s.executor is not None]
        for job in waiting:
            if not job.future.cancel():  # taken back from a dead worker: running
                job.future.set_exception(RuntimeError(
                    "the worker pool was shut down before this job started"))
        _shut_down(executors, timeout, self._killed)


def _relay_user_outcome(outer: Future[Any], inner: Future[Any]) -> None:
    """``inner`` (the user's executor's future) is done: ``outer`` (the
    engine's) gets its outcome, a broken pool's as a JobLost."""
    if outer.done():
        return  # cancelled by the engine meanwhile
    if inner.cancelled():
        outer.cancel()
        return
    error = inner.exception()
    if isinstance(error, BrokenProcessPool):
        # concurrent.futures stops every worker of a pool when one dies.
        error = JobLost(
            "a worker process of the pool died (killed from outside, or out of"
            " memory) and the pool stopped every worker, this job's too; the"
            f" pool was restarted for later jobs ({error!r})")
    with contextlib.suppress(InvalidStateError):  # (cancelled just now)
        if error is None:
            outer.set_result(inner.result())
        else:
            outer.set_exception(error)


def _shut_down(executors: list[Executor], timeout: float | None,
               killed: set[int] | None = None) -> None:
    """Shut ``executors`` down together; kill the workers of those not done
    within ``timeout`` seconds, with their job processes' groups (their pids
    added to ``killed`` first)."""
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
            # (a process that ended may have left its pid to another)
            with contextlib.suppress(ValueError):  # closed by its executor
                if process.pid is not None and process.is_alive():
                    for child in children(process.pid):
                        kill_group(child)  # the job's processes
                    if killed is not None:
                        killed.add(process.pid)
                    process.kill()
    for thread in threads:
        thread.join(5.0)  # killed workers: their executor ends at once
