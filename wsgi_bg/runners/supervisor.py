"""The supervisor: forks a job process, relays its output, enforces timeout,
cancel and kill, reaps; shared by every runner that runs jobs in processes
(a pool worker of :mod:`~wsgi_bg.runners.pool`; an RQ worker of
:mod:`wsgi_bg.rq_worker`, for :mod:`~wsgi_bg.runners.rq`).

This module runs in the supervisor's process: a pool worker
(:mod:`~wsgi_bg.runners.pool_worker`), or wsgi_bg's RQ worker itself.
The job process's own code is :mod:`~wsgi_bg.runners.job_process`; the
frames between the two, :mod:`~wsgi_bg.runners.wire`.

Data flow (compare :mod:`concurrent.futures.process`)::

    runner (pool worker,    supervisor (this module)       job process
    wsgi_bg's RQ worker)    ────────────────────────       (job_process)
    supervise(store,      ─► fork (if none is warm) ───►  own process group
      JobCall)
                            store.start(job, pid)
                            job + fds ── socket ──────►  fds 1+2 → the job's pipe
                            relay ◄── output pipe ─────  print, logging, os.system
                            relay ◄── socket ──────────  progress, result/error
                              │ batches → store.relay (renews the job's lease)
                            cancel ── control pipe ───►  current_job.cancel_requested
                            timeout / cancel: killpg(SIGKILL)
                            store.finish(job, ending)

Why a job process apart from the worker: a bare
:class:`~concurrent.futures.ProcessPoolExecutor` breaks as a whole
(``BrokenProcessPool``) when one worker dies and cannot stop one task, and an
RQ worker whose job crashed its own process would take the worker with it. The
supervisor forks the job process from a single-threaded worker, which is safe;
it can kill that process's group for a timeout or a cancel, and sees it crash,
while the worker and every other job go on.

Why it is kept between jobs: a fork, its set-up and its reaping cost several
milliseconds, far more than a short job. A job process runs the next job only
if the last one returned and left nothing running: every fd that job had on
its output pipe is closed (no child process of its still writes), and no
thread or child process of its is alive (the job process is a child
subreaper on Linux, so even orphaned grandchildren count). Otherwise, or after
``jobs_per_process`` jobs, it is killed with its process group and the next
job gets a fresh one.

A pool worker handed several jobs at once runs them with
:func:`supervise_all`: where the next job starts in the process the last one
left warm, the last one's ``store.finish`` and the next one's
``store.start`` are one store call (``Store.finish_and_start``).

The call is unpickled only in the job process: an import that hangs, starts
threads or crashes must meet the timeout, cancel and isolation of a job, not
stall or thread the worker. Results travel pickled; the job process checks
that a value survives a pickle round trip before sending it, and sends
exceptions as traceback text, so neither an unpicklable value nor an
exception that cannot be unpickled can hang or break the worker.
"""

from __future__ import annotations

import importlib
import os
import select
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

from ..capture import Relay
from ..exceptions import StoreUnavailable
from ..jobs import JobState
from ..limits import MAX_ERROR_CHARS, MAX_RESULT_BYTES, cap_text
from ..stores import Ending, Store
from . import job_process, wire
from .processes import describe_exitcode

#: How long to wait for a dead job's stray output to drain.
_DRAIN_SECONDS = 1.0
#: How long a supervisor keeps trying to record a job's start, or its end,
#: while the store cannot be reached (Redis restarting, a network blip).
_START_RETRY_SECONDS = 30.0
_FINISH_RETRY_SECONDS = 300.0

T = TypeVar("T")


def _retrying(call: Callable[[], T], seconds: float) -> T:
    """``call()``, tried again every second while the store is unreachable,
    for up to ``seconds``; then its StoreUnavailable is raised."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except StoreUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)

class JobCall(NamedTuple):
    """One job as a supervisor runs it: what a pool or RQ worker is given."""

    job_id: str
    #: The pickled call, ``(fn, args, kwargs)``: unpickled in the job process.
    payload: bytes
    #: Seconds it may run, or ``None``.
    timeout: float | None
    #: Seconds a cancelled job may take to stop before it is killed.
    grace: float
    #: Jobs a job process runs before a fresh one takes over.
    jobs_per_process: int = 1
    #: A result's pickled bytes at most: more fails the job in its process.
    max_result_bytes: int = MAX_RESULT_BYTES


def supervise(
    store: Store, call: JobCall, *,
    tick: Callable[[], float | None] | None = None, watch_parent: bool = True,
) -> str | None:
    """Run one job, ``call``, in a job process of this one, to its end, and
    record it in ``store``. A result of more than ``call.max_result_bytes``
    pickled bytes fails the job in its own process: it never reaches this
    one, nor the store.

    ``tick``, for a supervisor inside a long-lived process of another program
    (an RQ worker): called on every turn of the loop while the job runs (at
    least every 0.1 s), for that program's own upkeep (its heartbeat); it
    returns ``None``, or the seconds the job may still run because that
    program is stopping (the job is asked to stop, as by a cancel, and killed
    after that many seconds, at most ``grace``). With ``watch_parent`` (a pool
    worker), the job is killed if this process's parent goes: the process
    it serves.

    Returns the final state, or ``None`` if the job was cancelled before it
    started or had already ended.
    """
    ended = _Supervisor(store, call.job_id, call.timeout, call.grace, tick,
                        watch_parent).run(call.payload, call.jobs_per_process,
                                          call.max_result_bytes)
    return None if ended is None else ended.finish()


def supervise_to_end(store: Store, call: JobCall) -> Ending | None:
    """:func:`supervise` a pool worker's job, whose end is not recorded here
    but returned, for the server to record (see
    :attr:`~wsgi_bg.stores.Link.ends_in_answer`); ``None`` if its start was
    refused."""
    ended = _Supervisor(store, call.job_id, call.timeout, call.grace).run(
        call.payload, call.jobs_per_process, call.max_result_bytes)
    return None if ended is None else ended.ending


def supervise_all(
    jobs: Sequence[tuple[Store, JobCall]], defer_last: bool = False,
) -> list[tuple[str | Ending | None, Exception | None]]:
    """Run ``jobs``, each ``(store, call)``, one after another, as
    :func:`supervise` runs each: what a pool worker given several jobs at
    once does.

    Where a job follows one whose process is kept warm for it, the end of
    the one and the start of the other are recorded in one store call
    (:meth:`~wsgi_bg.stores.Store.finish_and_start`), one round trip per job
    fewer. Nothing waits for it: the next job's start is the next thing its
    supervisor does. Where no warm process is there (a fork would delay the
    end), or the last job is alone, each is recorded on its own as by
    :func:`supervise`.

    Returns each job's ``(final state or None, None)``, or ``(None, the
    exception its supervisor raised)``: one job's failure does not stop the
    others. With ``defer_last``, the last job's end is not recorded but
    returned, as ``(its Ending, None)``, for the caller to record (see
    :attr:`~wsgi_bg.stores.Link.ends_in_answer`).
    """
    outcomes: list[tuple[str | Ending | None, Exception | None]] = [
        (None, None)] * len(jobs)
    held: _Ended | None = None  # the last job's end, to go with the next start
    try:
        for i, (store, call) in enumerate(jobs):
            if held is not None and held.store is not store:
                held.record()  # (another store: no call holds both)
            after = held if held is not None and held.outcome is None else None
            ended: _Ended | None = None
            try:
                ended = _Supervisor(store, call.job_id, call.timeout, call.grace).run(
                    call.payload, call.jobs_per_process, call.max_result_bytes,
                    after=after)
            except Exception as exc:  # noqa: BLE001 - that job's outcome
                outcomes[i] = (None, exc)
            if held is not None:
                if held.outcome is None:
                    held.record()  # (run recorded it, unless it failed first)
                outcomes[i - 1] = held.outcome or (None, None)
                held = None
            if ended is not None:
                if ended.reuse and i + 1 < len(jobs):
                    held = ended  # the next job starts in its process
                elif defer_last and i + 1 == len(jobs):
                    outcomes[i] = (ended.ending, None)
                else:
                    ended.record()
                    outcomes[i] = ended.outcome or (None, None)
    finally:
        if held is not None and held.outcome is None:
            held.record()  # never left unrecorded, whatever stopped the loop
    return outcomes


#: wsgi_bg's own modules that a job's module imports (``from wsgi_bg import
#: background, current_job``): see :func:`preload_api`.
API_MODULES = ("wsgi_bg.marks", "wsgi_bg.context", "wsgi_bg.jobs", "wsgi_bg.exceptions")


def preload_api() -> None:
    """Import :data:`API_MODULES` in this process (a pool worker, an RQ
    worker) before it forks job processes: each has them for free. Else
    every fresh job process (one per ``max_jobs_per_process`` jobs) imported
    them on its first job: 20-50 ms, ~200 µs a job in a burst of trivial
    jobs with the default of 100. Never a job's own module: that is the
    job's to import, under its timeout (or ``WSGI_BG_PRELOAD``'s)."""
    for module in API_MODULES:
        importlib.import_module(module)


def release_warm() -> None:
    """Kill and reap the job process kept warm in this process, if any: for a
    worker about to exit (an RQ worker's teardown), which has no next job
    for it."""
    global _warm
    process, _warm = _warm, None
    if process is not None:
        process.kill()
        process.reap()


class _JobProcess:
    """The supervisor's handle on its job process: forks it (the child runs
    :func:`wsgi_bg.runners.job_process.main`), hands it jobs, kills and reaps
    it."""

    def __init__(self, jobs_per_process: int) -> None:
        self.jobs_per_process = jobs_per_process
        ours, theirs = socket.socketpair()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()  # or the child would print it again
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            ours.close()
            job_process.main(theirs, jobs_per_process, parent)
        theirs.close()
        try:
            os.setpgid(pid, pid)  # also done by the child: no window for killpg
        except OSError:
            pass
        self.pid = pid
        self.sock = ours
        self.pidfd: int | None
        try:
            self.pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.pidfd = None  # not Linux: poll waitpid
        self.status: int | None = None

    def send_job(
        self, job_id: str, payload: bytes, fds: list[int], max_result_bytes: int
    ) -> None:
        wire.send_job(self.sock, wire.Handoff(job_id, payload, max_result_bytes), fds)

    def kill(self) -> None:
        """SIGKILL the process and its group: a job's own children end with it."""
        kills = [os.killpg]
        if self.status is None:  # once reaped, the pid may be another's
            kills.append(os.kill)
        for kill in kills:
            try:
                kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def reap(self, block: bool = True, close: bool = True) -> int | None:
        """The exit status (``None`` while it runs, without ``block``); once
        it has exited, the socket and pidfd are closed unless ``close`` is
        false (the caller still reads what the process said)."""
        if self.status is None:
            try:
                pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: status unknown
                self.close()
                return None
            if pid:
                self.status = status
        if self.status is not None and close:
            self.close()
        return self.status

    def close(self) -> None:
        self.sock.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


_Selector = getattr(selectors, "PollSelector", selectors.DefaultSelector)

#: This worker's job process, kept between jobs.
_warm: _JobProcess | None = None
_ORPHANED = "orphaned"


class _Ended:
    """A job's end as its supervisor saw it, not yet in the store."""

    __slots__ = ("store", "job_id", "ending", "reuse", "outcome")

    def __init__(self, store: Store, job_id: str, ending: Ending, reuse: bool) -> None:
        self.store = store
        self.job_id = job_id
        self.ending = ending
        self.reuse = reuse  # its process is kept warm for the next job
        #: Once recorded: what recording it gave, as supervise_all returns it.
        self.outcome: tuple[str | None, Exception | None] | None = None

    def finish(self) -> str | None:
        """Record it alone: the state stored, or ``None`` (it had ended);
        retried while the store cannot be reached."""
        return _retrying(lambda: self.store.finish(self.job_id, self.ending),
                         _FINISH_RETRY_SECONDS)

    def record(self) -> None:
        """:meth:`finish`, its outcome (or its exception) kept as :attr:`outcome`."""
        try:
            self.outcome = (self.finish(), None)
        except Exception as exc:  # noqa: BLE001 - this job's outcome
            self.outcome = (None, exc)

    def finish_and_start(self, next_id: str, pid: int) -> bool:
        """Record it with the start of ``next_id`` in process group ``pid``,
        in one store call; whether ``next_id`` started.

        If that call fails, each is done on its own, as for a lone job, with
        its own retries: a call that timed out may have landed, and then this
        end is not recorded twice (``finish`` answers ``None``, as a retried
        lone finish would), and the start is accepted again (``start`` is
        idempotent for the same process)."""
        try:
            state, started = self.store.finish_and_start(
                self.job_id, self.ending, next_id, pid)
        except Exception:  # noqa: BLE001 - unreachable, or an error: one by one
            self.record()
            return _retrying(lambda: self.store.start(next_id, pid),
                             _START_RETRY_SECONDS)
        self.outcome = (state, None)
        return started


class _Supervisor:
    def __init__(
        self, store: Store, job_id: str, timeout: float | None, grace: float,
        tick: Callable[[], float | None] | None = None, watch_parent: bool = True,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.timeout = timeout
        self.grace = grace
        self.tick = tick
        # This worker's parent: the server process, or the forkserver that
        # lives as long as it. If it changes, that process is gone.
        self.parent = os.getppid() if watch_parent else None

    def run(
        self, payload: bytes, jobs_per_process: int, max_result_bytes: int,
        after: _Ended | None = None,
    ) -> _Ended | None:
        """Run the job to its end; its end, not yet recorded, or ``None`` if
        its start was refused. ``after``: the last job's end, recorded with
        this job's start (see :func:`supervise_all`)."""
        global _warm
        if _warm is not None and _warm.reap(block=False) is not None:
            _warm = None  # killed while it waited (an RQ worker's waits long)
        if _warm is not None and _warm.jobs_per_process != jobs_per_process:
            release_warm()  # kept for jobs of another app (an RQ worker's)
        if after is not None and _warm is None:
            after.record()  # a fork first would delay the end pages wait for
            after = None
        process = _warm if _warm is not None else _JobProcess(jobs_per_process)
        _warm = None  # given back below only if it ends the job cleanly
        out_r, out_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        try:
            if after is not None:
                started = after.finish_and_start(self.job_id, process.pid)
            else:
                started = _retrying(
                    lambda: self.store.start(self.job_id, process.pid),
                    _START_RETRY_SECONDS)
            if not started:
                _warm = process  # cancelled while queued: never sent, still warm
                return None
            process.send_job(self.job_id, payload, [out_w, ctl_r], max_result_bytes)
            os.close(out_w)
            os.close(ctl_r)
            out_w = ctl_r = -1
            ending, reuse = _Watch(self, process, out_r, ctl_w).run()
        except BaseException:
            process.kill()
            process.reap()
            if after is not None and after.outcome is None:
                after.record()  # the last job's end first: it ended first
            self.store.finish(self.job_id, Ending(
                JobState.CRASHED.value, error=cap_text(
                    "the job's supervisor failed:\n" + traceback.format_exc(),
                    MAX_ERROR_CHARS)))
            raise
        finally:
            for fd in (out_r, out_w, ctl_r, ctl_w):
                if fd >= 0:
                    os.close(fd)
        if reuse:
            _warm = process
        return _Ended(self.store, self.job_id, ending, reuse)


class _Watch:
    """The supervisor's loop for one job, from its send to its end, in named
    steps (as :mod:`concurrent.futures.process`'s manager thread)::

        run: until the job said how it ended, or its process ended:
            wait_and_read    the output pipe, the socket, the pidfd, for
                             next_wait() seconds at most
            relay_progress   the job's progress reports, to the relay
            reap_unwatched   no pidfd (not Linux): did the process exit?
            ask_host         the process around us (an RQ worker) stopping?
            enforce_limits   orphaned, timed out, cancel_grace over: kill
            send_batch       output to the store; its answer may be a cancel
        settle_process       kept warm for the next job, or killed
        outcome              the job's :class:`~wsgi_bg.stores.Ending`
                             (why_ended: if it said nothing), and reuse
    """

    def __init__(
        self, supervisor: _Supervisor, process: _JobProcess, out_r: int, ctl_w: int,
    ) -> None:
        self.process = process
        self.out_r = out_r
        self.ctl_w = ctl_w  # one byte on it asks the job to stop
        self.timeout = supervisor.timeout
        self.grace = supervisor.grace
        self.tick = supervisor.tick
        self.parent = supervisor.parent
        self.relay = Relay(supervisor.store, supervisor.job_id)
        self.messages = wire.MessageReader()
        # poll(2), not epoll: no kernel object to make, fill and close for
        # three fds, four system calls per job fewer.
        self.sel = _Selector()
        self.sel.register(out_r, selectors.EVENT_READ, self.relay.feed)
        self.sel.register(process.sock.fileno(), selectors.EVENT_READ,
                          self.messages.feed)
        if process.pidfd is not None:
            self.sel.register(process.pidfd, selectors.EVENT_READ, None)
        now = time.monotonic()
        self.deadline = None if self.timeout is None else now + self.timeout
        self.kill_at: float | None = None  # cancel_grace after a cancel
        self.stop_at: float | None = None  # when the process around us must stop
        self.asked_at: float | None = None  # when the job was asked to stop
        self.ended_by: str | None = None  # why it was killed
        self.status: int | None = None  # its process's exit status, once reaped

    def run(self) -> tuple[Ending, bool]:
        """Watch to the end; how the job ended, and whether its process runs
        the next job."""
        try:
            while not self.over():
                self.wait_and_read()
                self.relay_progress()
                self.reap_unwatched()
                now = time.monotonic()
                self.ask_host(now)
                self.enforce_limits(now)
                self.send_batch(now)
            reuse = self.settle_process()
            self.relay_progress()
        finally:
            self.sel.close()
        return self.outcome(reuse)

    def over(self) -> bool:
        """Whether the job said how it ended, or its process ended."""
        return self.status is not None or self.messages.final is not None

    def next_wait(self) -> float:
        """Seconds to wait for the fds: until the next batch, deadline or
        kill is due (without a pidfd, 0.05 at most: the exit is polled)."""
        wait = self.relay.due_in()
        for limit in (self.deadline, self.kill_at, self.stop_at):
            if limit is not None:
                wait = min(wait, limit - time.monotonic())
        if self.process.pidfd is None:
            wait = min(wait, 0.05)
        return max(wait, 0.0)

    def wait_and_read(self) -> None:
        """Wait for the fds, then feed what they hold to the relay and the
        message reader; reap the process if its pidfd says it exited."""
        for key, _ in self.sel.select(self.next_wait()):
            if key.data is None:
                # What it said before it exited (a large result may
                # still be in the socket): read before reaping closes it.
                _drain(self.process.sock.fileno(), self.messages.feed)
                self.process.kill()  # its strays, while the zombie keeps the pgid
                self.status = self.process.reap()
                continue
            data = os.read(key.fd, 65536)
            if data:
                key.data(data)
            else:
                self.sel.unregister(key.fd)

    def relay_progress(self) -> None:
        """The job's latest progress report, to the relay."""
        for report in self.messages.progress():
            self.relay.progress(report)

    def reap_unwatched(self) -> None:
        """Without a pidfd (not Linux): reap the process if it exited, after
        reading what it said."""
        if self.status is None and self.process.pidfd is None:
            if self.process.reap(block=False, close=False) is not None:
                _drain(self.process.sock.fileno(), self.messages.feed)
                self.status = self.process.reap()

    def ask_to_stop(self, now: float) -> float:
        """Ask the job to stop, as a cancel does, unless it was asked
        already; when it was first asked."""
        if self.asked_at is None:
            self.asked_at = now
            try:
                os.write(self.ctl_w, b"c")
            except OSError:
                pass
        return self.asked_at

    def ask_host(self, now: float) -> None:
        """Ask the program the supervisor runs in (its ``tick``) whether it
        is stopping; then the job is asked to stop, and killed after the
        seconds it has left (at most ``grace``)."""
        if self.tick is None or self.over():
            return
        stop_in = self.tick()
        if stop_in is not None:
            self.ask_to_stop(now)
            until = now + max(0.0, min(stop_in, self.grace))
            self.stop_at = until if self.stop_at is None else min(self.stop_at, until)

    def enforce_limits(self, now: float) -> None:
        """Kill the job's process (and its group) if the process it serves
        is gone, its timeout passed, or the grace after a cancel or a stop."""
        if self.over():
            return
        if self.parent is not None and os.getppid() != self.parent:
            self.ended_by = _ORPHANED
        elif self.deadline is not None and now >= self.deadline:
            self.ended_by = JobState.TIMED_OUT.value
        elif any(at is not None and now >= at for at in (self.kill_at, self.stop_at)):
            self.ended_by = JobState.CANCELLED.value
        if self.ended_by is not None:
            self.process.kill()
            self.status = self.process.reap()

    def send_batch(self, now: float) -> None:
        """Send the relay's batch when due; a cancel in the store's answer
        asks the job to stop, and sets when it is killed."""
        if self.relay.due_in() != 0.0 or self.messages.final is not None:
            return
        cancel, grace = self.relay.send()
        if cancel:
            asked_at = self.ask_to_stop(now)
            allowed = self.grace if grace is None else min(grace, self.grace)
            self.kill_at = asked_at + allowed

    def settle_process(self) -> bool:
        """After the end: whether the process runs the next job (it returned,
        said it may, and nothing it started holds its output pipe); if not,
        kill its group and read the output left in the pipe."""
        reuse = False
        if self.messages.final is not None and self.status is None:
            # The job returned and its process let go of the output pipe
            # before saying so: what it wrote is in the pipe now, and the
            # pipe is at its end unless something the job started still
            # holds it. Then, and only then, the process may run another job.
            reuse = (_drain(self.out_r, self.relay.feed)
                     and not self.messages.final.retire)
        if not reuse:
            self.process.kill()  # the job's strays, if any: its processes end with it
            self.process.reap()
            if self.sel.get_map().get(self.out_r) is not None:
                _drain(self.out_r, self.relay.feed,
                       until=time.monotonic() + _DRAIN_SECONDS)
        return reuse

    def outcome(self, reuse: bool) -> tuple[Ending, bool]:
        """How the job ended (what it said, else why it was killed, else how
        its process ended), with the output and progress not yet relayed;
        and whether its process runs the next job."""
        # The output and progress not yet relayed go with the end.
        text, progress, offset = self.relay.take(final=True)
        final = self.messages.final
        if final is None:
            state, why = self.why_ended()
            return Ending(state, None, why, text, progress, offset), False
        # Bounded here, for every store and runner: pages read it with
        # every record (a job may raise with a 20 MB message).
        error = None if final.error is None else cap_text(final.error, MAX_ERROR_CHARS)
        return Ending(
            JobState.SUCCEEDED.value if error is None else JobState.FAILED.value,
            final.result, error, text, progress, offset, shown=final.shown,
            cancel_seen=final.cancel_seen, retryable=final.retryable), reuse

    def why_ended(self) -> tuple[str, str]:
        """The state and error of a job that said nothing of its end: why it
        was killed, else how its process ended."""
        if self.ended_by == JobState.TIMED_OUT.value:
            return self.ended_by, (
                f"timed out: still running after its timeout of {self.timeout} s;"
                " its process was killed")
        if self.ended_by == _ORPHANED:
            return JobState.CRASHED.value, (
                "the process its supervisor serves (the server process, or the"
                " RQ worker) stopped (killed or exited) while the job ran; the"
                " job's process was killed with it")
        if self.ended_by == JobState.CANCELLED.value:
            return self.ended_by, (
                "stopped: still running cancel_grace seconds after it was asked"
                " to stop (a cancel, or the server or RQ worker shutting down);"
                " its process was killed")
        return JobState.CRASHED.value, (
            f"the job's process {_describe(self.status)} before the job returned")


def _drain(fd: int, feed: Callable[[bytes], None], until: float | None = None) -> bool:
    """Read ``fd`` into ``feed``; ``True`` once at its end. Without ``until``,
    only what is there now; with it, wait for more until that time."""
    while True:
        timeout = 0.0 if until is None else max(0.0, until - time.monotonic())
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return False
        data = os.read(fd, 65536)
        if not data:
            return True
        feed(data)


def _describe(status: int | None) -> str:
    if status is None:
        return "vanished"
    return describe_exitcode(os.waitstatus_to_exitcode(status))
