"""Where job records and output live: the :class:`Store` seam and its default.

The store is the single source of truth: the runner writes into it, the status
pages and :class:`~wsgi_bg.Job` handles read only from it. Every state change
is one store call, so a store that serves several processes (the default) or
several machines (a Redis store) keeps each transition atomic.

Default: a :class:`MemoryStore` served by a :mod:`multiprocessing` manager
process that the middleware starts on its first submit. Nothing to install::

    server process ──proxy──┐
    pool workers ───proxy───┼──► manager process: MemoryStore (+ a watchdog)
                            ┘

The watchdog exists because a manager, like the pool's workers, outlives a
server process that is killed outright (SIGKILL): it watches the server's pid
and, when it dies, kills every job process group and worker it knows of, then
exits.
"""

from __future__ import annotations

import builtins
import itertools
import os
import select
import signal
import threading
import time
from multiprocessing.context import BaseContext
from multiprocessing.managers import BaseManager
from typing import Any, Protocol

from .jobs import TERMINAL_STATES, JobState

Record = dict[str, Any]


class Store(Protocol):
    """What the engine, the runner and the pages need from a store.

    Records are plain dicts with the keys id, name, state, created_at,
    started_at, ended_at, result (pickled bytes), error, progress, timeout,
    cancel_requested, url, pid, output_size. Implementations must make each
    method atomic with respect to the others.
    """

    def create(self, record: Record, max_queued: int) -> bool:
        """Add a queued record; ``False`` (and nothing added) if ``max_queued``
        jobs are already waiting."""

    def start(self, job_id: str, pid: int) -> bool:
        """Move a queued job to running in process group ``pid``; ``False`` if
        it is no longer queued (cancelled, or unknown)."""

    def relay(
        self, job_id: str, text: str, progress: dict[str, Any] | None
    ) -> tuple[bool, float | None]:
        """Append output, record progress; return ``(cancel_requested, grace)``."""

    def finish(
        self, job_id: str, state: str, result: bytes | None, error: str | None,
        text: str = "", progress: dict[str, Any] | None = None,
        shown: str | None = None,
    ) -> str | None:
        """End a job, once, with its last output and progress (as
        :meth:`relay` would add them), its pickled ``result`` (kept apart
        from the record: see :meth:`result`) and ``shown``, the result's
        ``repr`` for pages; a job whose cancel was requested ends cancelled.
        Return the state stored, or ``None`` if the job had already ended."""

    def result(self, job_id: str) -> bytes | None:
        """The pickled result of a job that succeeded, else ``None``."""

    def request_cancel(
        self, job_id: str, grace: float | None, shutdown: bool = False
    ) -> str:
        """Cancel a queued job at once ("cancelled"), ask a running one to stop
        ("requested"; ``grace`` shortens its grace), or "" if it has ended.
        With ``shutdown``, a running job is asked to stop but not cancelled:
        if it ends within its grace, its outcome stands."""

    def get(self, job_id: str) -> Record | None:
        """The record without its output, or ``None``."""

    def read_output(self, job_id: str, since: int) -> tuple[str, int] | None:
        """Output after offset ``since`` and the next offset, or ``None``."""

    def view(self, job_id: str, since: int) -> tuple[Record, str, int] | None:
        """:meth:`get` and :meth:`read_output` at once (one round trip, one
        consistent state: what pages poll), or ``None``."""

    def list(self, limit: int | None = None) -> list[Record]:
        """Records, newest first."""

    def ids_in_state(self, *states: str) -> builtins.list[str]:
        """Ids of the jobs in any of ``states``, oldest first."""

    def counts(self) -> dict[str, int]:
        """How many jobs are stored in each state."""


class _Output:
    """A job's output, bounded: past ``limit`` characters it keeps the head and
    the tail and counts what fell between."""

    __slots__ = ("chunks", "head", "tail_start", "total", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[str] = []  # untruncated text, or the tail once truncated
        self.head: str | None = None  # set once output passed the limit
        self.tail_start = 0  # absolute offset of chunks[0]
        self.total = 0  # characters ever written

    def append(self, text: str) -> None:
        self.chunks.append(text)
        self.total += len(text)
        kept = self.total - self.tail_start
        if self.head is None:
            if self.total > self.limit:
                full = "".join(self.chunks)
                self.head = full[: self.limit // 2]
                self.chunks = [full]
                self._trim()
        elif kept > self.limit:  # trim the tail in batches, not on every append
            self._trim()

    def _trim(self) -> None:
        keep = self.limit - len(self.head or "")
        tail = "".join(self.chunks)[-keep:] if keep else ""
        self.tail_start = self.total - len(tail)
        self.chunks = [tail]

    def read(self, since: int) -> tuple[str, int]:
        if self.head is not None and self.total - self.tail_start > (
            self.limit - len(self.head)
        ):
            # append() lets the tail grow to ``limit`` before trimming (so that
            # it trims in batches); what is shown stays within ``limit``.
            self._trim()
        if len(self.chunks) > 1:
            self.chunks = ["".join(self.chunks)]
        tail = self.chunks[0] if self.chunks else ""
        since = max(0, since)
        if since >= self.total:
            return "", self.total
        if self.head is None:
            return tail[since:], self.total
        parts = []
        if since < len(self.head):
            parts.append(self.head[since:])
        if since < self.tail_start:
            dropped = self.tail_start - len(self.head)
            parts.append(
                f"\n[… {dropped} characters of output dropped: the job wrote more"
                f" than max_output_bytes={self.limit} …]\n"
            )
            parts.append(tail)
        else:
            parts.append(tail[since - self.tail_start :])
        return "".join(parts), self.total


class MemoryStore:
    """The default :class:`Store`: dicts in one process, behind one lock.

    Bounded: finished jobs past ``max_jobs`` (oldest finished first) or older
    than ``job_ttl`` seconds are dropped; queued and running jobs never are.
    """

    def __init__(
        self, *, max_jobs: int = 1000, job_ttl: float = 86400,
        max_output_bytes: int = 1_048_576,
    ) -> None:
        self.max_jobs = max_jobs
        self.job_ttl = job_ttl
        self.max_output_bytes = max_output_bytes
        self._lock = threading.Lock()
        self._records: dict[str, Record] = {}  # creation order
        self._outputs: dict[str, _Output] = {}
        self._results: dict[str, bytes] = {}  # apart: records are read often
        self._finished: dict[str, float] = {}  # finishing order: id -> ended_at
        self._queued = 0
        self._workers: set[int] = set()

    # -- writes ---------------------------------------------------------------
    def create(self, record: Record, max_queued: int) -> bool:
        with self._lock:
            self._prune()
            if self._queued >= max_queued:
                return False
            if record["id"] in self._records:
                raise ValueError(f"job id {record['id']!r} is already stored")
            record = dict(record, state=JobState.QUEUED.value, output_size=0)
            self._records[record["id"]] = record
            self._outputs[record["id"]] = _Output(self.max_output_bytes)
            self._queued += 1
            return True

    def start(self, job_id: str, pid: int) -> bool:
        with self._lock:
            record = self._records.get(job_id)
            if record is None or record["state"] != JobState.QUEUED:
                return False
            record.update(state=JobState.RUNNING.value, started_at=time.time(), pid=pid)
            self._queued -= 1
            return True

    def relay(
        self, job_id: str, text: str, progress: dict[str, Any] | None
    ) -> tuple[bool, float | None]:
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                return True, 0.0  # forgotten: nobody can see it, stop it
            self._add(record, text, progress)
            stop = record["cancel_requested"] or record.get("stop_requested", False)
            return stop, record.get("cancel_grace")

    def _add(self, record: Record, text: str, progress: dict[str, Any] | None) -> None:
        if text:
            output = self._outputs[record["id"]]
            output.append(text)
            record["output_size"] = output.total
        if progress is not None:
            record["progress"] = progress

    def finish(
        self, job_id: str, state: str, result: bytes | None, error: str | None,
        text: str = "", progress: dict[str, Any] | None = None,
        shown: str | None = None,
    ) -> str | None:
        with self._lock:
            record = self._records.get(job_id)
            if record is None or record["state"] in TERMINAL_STATES:
                return None
            self._add(record, text, progress)
            if record["cancel_requested"] and state != JobState.CANCELLED:
                error = "cancelled while running" + (
                    f"; the job then ended {state}:\n{error}" if error else ""
                )
                state = JobState.CANCELLED.value
            if record["state"] == JobState.QUEUED:
                self._queued -= 1
            now = time.time()
            succeeded = state == JobState.SUCCEEDED
            record.update(state=state, ended_at=now, error=error, pid=None,
                          result=shown if succeeded else None)
            if succeeded and result is not None:
                self._results[job_id] = result
            self._finished[job_id] = now
            self._prune()
            return state

    def request_cancel(
        self, job_id: str, grace: float | None, shutdown: bool = False
    ) -> str:
        with self._lock:
            record = self._records.get(job_id)
            if record is None or record["state"] in TERMINAL_STATES:
                return ""
            if record["state"] == JobState.QUEUED:
                now = time.time()
                record.update(state=JobState.CANCELLED.value, ended_at=now,
                              error="cancelled before it started",
                              cancel_requested=True)
                self._queued -= 1
                self._finished[job_id] = now
                return "cancelled"
            record["stop_requested" if shutdown else "cancel_requested"] = True
            if grace is not None:
                old = record.get("cancel_grace")
                record["cancel_grace"] = grace if old is None else min(old, grace)
            return "requested"

    # -- reads ----------------------------------------------------------------
    def get(self, job_id: str) -> Record | None:
        with self._lock:
            # Drop what expired (cheap when nothing did): a job past job_ttl
            # must not stay readable just because no job was created since.
            self._prune()
            record = self._records.get(job_id)
            return dict(record) if record is not None else None

    def result(self, job_id: str) -> bytes | None:
        with self._lock:
            return self._results.get(job_id)

    def read_output(self, job_id: str, since: int) -> tuple[str, int] | None:
        with self._lock:
            output = self._outputs.get(job_id)
            return output.read(since) if output is not None else None

    def view(self, job_id: str, since: int) -> tuple[Record, str, int] | None:
        with self._lock:
            self._prune()
            record = self._records.get(job_id)
            if record is None:
                return None
            text, offset = self._outputs[job_id].read(since)
            return dict(record), text, offset

    def list(self, limit: int | None = None) -> list[Record]:
        with self._lock:
            self._prune()
            records = reversed(self._records.values())
            return [dict(r) for r in itertools.islice(records, limit or None)]

    def ids_in_state(self, *states: str) -> builtins.list[str]:
        with self._lock:
            return [i for i, r in self._records.items() if r["state"] in states]

    def counts(self) -> dict[str, int]:
        with self._lock:
            counts = dict.fromkeys((s.value for s in JobState), 0)
            for record in self._records.values():
                counts[record["state"]] += 1
            return counts

    # -- bookkeeping ------------------------------------------------------------
    def _prune(self) -> None:
        cutoff = time.time() - self.job_ttl
        finished = self._finished
        while finished:
            job_id, ended_at = next(iter(finished.items()))
            if len(finished) <= self.max_jobs and ended_at >= cutoff:
                break
            del finished[job_id]
            del self._records[job_id]
            del self._outputs[job_id]
            self._results.pop(job_id, None)

    def register_worker(self, pid: int) -> None:
        """Remember a pool worker's pid, for the watchdog."""
        with self._lock:
            self._workers.add(pid)

    def kill_all(self) -> None:
        """SIGKILL every running job's process group and every known worker."""
        with self._lock:
            groups = [r["pid"] for r in self._records.values() if r.get("pid")]
            workers = list(self._workers)
        for pgid in groups:
            _kill(os.killpg, pgid)
        for pid in workers:
            _kill(os.kill, pid)

    def snapshot(self) -> MemoryStore:
        """This store, to be copied to the caller through the manager: lets
        handles keep reading after the manager has stopped."""
        return self

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            state = self.__dict__.copy()
        del state["_lock"]
        state["_workers"] = set()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _kill(kill: Any, pid: int) -> None:
    try:
        kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- the manager-served default ----------------------------------------------------
_served: MemoryStore | None = None


def _get_store() -> MemoryStore:
    assert _served is not None  # set by _serve before the manager accepts calls
    return _served


class StoreManager(BaseManager):
    """Serves one :class:`MemoryStore`; ``get_store()`` returns a proxy to it."""


StoreManager.register("get_store", callable=_get_store)


def _serve(server_pid: int, options: dict[str, Any]) -> None:
    """Manager process initializer: create the store, start the watchdog."""
    global _served
    _served = MemoryStore(**options)
    threading.Thread(
        target=_watch, args=(server_pid, _served), name="wsgi_bg-watchdog", daemon=True
    ).start()


def wait_for_exit(pid: int, poll: float = 0.5) -> None:
    """Block until process ``pid`` has exited (it need not be our child)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        return
    while True:  # no pidfd (not Linux): poll
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(poll)


def _watch(server_pid: int, store: MemoryStore) -> None:
    wait_for_exit(server_pid)
    store.kill_all()
    os._exit(0)


def start_manager(
    ctx: BaseContext, *, max_jobs: int, job_ttl: float, max_output_bytes: int
) -> StoreManager:
    """Start the manager process serving a fresh :class:`MemoryStore`."""
    manager = StoreManager(ctx=ctx)
    options = {"max_jobs": max_jobs, "job_ttl": job_ttl,
               "max_output_bytes": max_output_bytes}
    manager.start(initializer=_serve, initargs=(os.getpid(), options))
    return manager


def connect(address: Any, authkey: bytes) -> Store:
    """A proxy to the store served at ``address`` (used by pool workers)."""
    manager = StoreManager(address=address, authkey=authkey)
    manager.connect()
    return manager.get_store()  # type: ignore[attr-defined,no-any-return]
