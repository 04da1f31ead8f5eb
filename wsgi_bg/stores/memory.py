"""The default store: nothing to install, jobs kept in memory.

A :class:`MemoryStore` is an object of the server process: the middleware,
its pages and its scheduler call it directly. The pool's workers reach it
through a :mod:`multiprocessing` manager served on a thread of the same
process (:class:`MemoryBackend`), from the first job on::

    server process: MemoryStore ◄── engine, pages (calls)
                        ▲
                        └── manager thread ◄──proxy── pool workers
                                                      (a job's start, its
                                                      output, its end)

Every state change is one store call under one lock, so each transition is
atomic whoever makes it. Nothing lives apart from the server: when it is
killed outright, its workers see it go and end with their jobs
(:mod:`~wsgi_bg.runners.pool_worker`), and its jobs are gone with it.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import itertools
import logging
import multiprocessing
import threading
import time
from multiprocessing.connection import Client
from multiprocessing.context import BaseContext
from multiprocessing.managers import BaseManager
from typing import Any

from ..jobs import TERMINAL_STATES, JobState
from .output import decode, dropped_marker, encode_output, head_cut, tail_cut
from .protocol import (
    MAX_ERRORS_KEPT,
    SEARCH_SCAN,
    Ending,
    JobStats,
    Page,
    Record,
    Store,
    attempt_divider,
    check_page,
    retry_wait,
)

logger = logging.getLogger("wsgi_bg")


class _Output:
    """A job's output as UTF-8, bounded: past ``limit`` bytes it keeps the
    head and the tail (cut at character boundaries) and counts what fell
    between. Offsets count bytes ever written."""

    __slots__ = ("chunks", "head", "tail_start", "total", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []  # untruncated output, or the tail once truncated
        self.head: bytes | None = None  # set once output passed the limit
        self.tail_start = 0  # absolute offset of chunks[0]
        self.total = 0  # bytes ever written

    def append(self, text: str | bytes) -> None:
        data = encode_output(text) if isinstance(text, str) else text
        self.chunks.append(data)
        self.total += len(data)
        kept = self.total - self.tail_start
        if self.head is None:
            if self.total > self.limit:
                full = b"".join(self.chunks)
                self.head = full[: head_cut(full, self.limit // 2)]
                self.chunks = [full]
                self._trim()
        elif kept > self.limit:  # trim the tail in batches, not on every append
            self._trim()

    def _trim(self) -> None:
        joined = b"".join(self.chunks)
        keep = self.limit - len(self.head or b"")
        start = tail_cut(joined, max(0, len(joined) - keep))
        self.tail_start += start
        self.chunks = [joined[start:]]

    def compact(self) -> None:
        """At the job's end: keep only what reads show (``limit`` bytes in
        all), in one value."""
        if self.head is not None:
            self._trim()
        elif len(self.chunks) > 1:
            self.chunks = [b"".join(self.chunks)]

    def read(self, since: int) -> tuple[str, int]:
        if self.head is not None and self.total - self.tail_start > (
            self.limit - len(self.head)
        ):
            # append() lets the tail grow to ``limit`` before trimming (so that
            # it trims in batches); what is shown stays within ``limit``.
            self._trim()
        if len(self.chunks) > 1:
            self.chunks = [b"".join(self.chunks)]
        tail = self.chunks[0] if self.chunks else b""
        since = max(0, since)
        if since >= self.total:
            return "", self.total
        if self.head is None:
            return decode(tail[since:]), self.total
        parts = []
        if since < len(self.head):
            parts.append(decode(self.head[since:]))
        if since < self.tail_start:
            parts.append(dropped_marker(self.tail_start - len(self.head), self.limit))
            parts.append(decode(tail))
        else:
            parts.append(decode(tail[since - self.tail_start :]))
        return "".join(parts), self.total


class MemoryStore:
    """The default :class:`Store`: dicts in one process, behind one lock.

    Bounded: finished jobs past ``keep_finished`` (oldest finished first) or
    older than ``job_ttl`` seconds are dropped; queued and running jobs never
    are.
    """

    def __init__(
        self, *, keep_finished: int = 1000, job_ttl: float = 86400,
        max_output_bytes: int = 1_048_576,
    ) -> None:
        self.keep_finished = keep_finished
        self.job_ttl = job_ttl
        self.max_output_bytes = max_output_bytes
        self._lock = threading.Lock()
        self._records: dict[str, Record] = {}  # creation order
        self._outputs: dict[str, _Output] = {}
        self._results: dict[str, bytes] = {}  # apart: records are read often
        self._calls: dict[str, bytes] = {}  # the pickled calls, as results
        self._finished: dict[str, float] = {}  # finishing order: id -> ended_at
        self._queued = 0
        # Jobs per state, kept with every change: counts() is polled (pages,
        # waiting for jobs) and must not walk every record under the lock.
        self._counts = dict.fromkeys((s.value for s in JobState), 0)
        # Counted with each end, under the same lock (kept past retention).
        self._stats = JobStats()
        self._workers: dict[int, int | None] = {}  # pid -> its start time
        # Unique key's digest -> the queued or running job holding it.
        self._unique: dict[str, str] = {}
        # Jobs waiting for their next attempt -> when it is due.
        self._retries: dict[str, float] = {}

    # -- writes ---------------------------------------------------------------
    def create(
        self, record: Record, max_queued: int, call: bytes | None = None
    ) -> str | None:
        with self._lock:
            self._prune()
            unique = record.get("unique")
            held = self._unique.get(unique) if unique else None
            if held is not None:
                other = self._records.get(held)
                # (a job dropped or ended without letting go holds nothing)
                if other is not None and other["state"] not in TERMINAL_STATES:
                    return held
            if self._queued >= max_queued:
                return None
            if record["id"] in self._records:
                raise ValueError(f"job id {record['id']!r} is already stored")
            record = dict(record, state=JobState.QUEUED.value, output_size=0,
                          cancel_requested_at=None, cancelled_how=None,
                          rerun_as=None, notice=None, unique=unique)
            self._records[record["id"]] = record
            if unique:
                self._unique[unique] = record["id"]
            original = self._records.get(record.get("rerun_of") or "")
            if original is not None:
                original["rerun_as"] = record["id"]
            self._outputs[record["id"]] = _Output(self.max_output_bytes)
            if call is not None:
                self._calls[record["id"]] = call
            self._queued += 1
            self._counts[JobState.QUEUED.value] += 1
            return str(record["id"])

    def start(self, job_id: str, pid: int) -> bool:
        with self._lock:
            return self._start(job_id, pid)

    def _start(self, job_id: str, pid: int) -> bool:
        record = self._records.get(job_id)
        if record is None:
            return False
        if record["state"] == JobState.RUNNING and record["pid"] == pid:
            return True  # a retry of this start, whose answer was lost
        if record["state"] != JobState.QUEUED or record.get("retry_at") is not None:
            return False  # (a retry waiting: it runs once claimed)
        record.update(state=JobState.RUNNING.value, started_at=time.time(), pid=pid)
        self._queued -= 1
        self._moved(JobState.QUEUED.value, JobState.RUNNING.value)
        return True

    def relay(
        self, job_id: str, text: str, progress: dict[str, Any] | None,
        offset: int | None = None,
    ) -> tuple[bool, float | None]:
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                return True, 0.0  # forgotten: nobody can see it, stop it
            self._add(record, text, progress, offset)
            stop = record["cancel_requested"] or record.get("stop_requested", False)
            return stop, record.get("cancel_grace")

    def _add(self, record: Record, text: str, progress: dict[str, Any] | None,
             offset: int | None = None) -> None:
        if text:
            output = self._outputs[record["id"]]
            data = encode_output(text)
            if offset is not None:
                # A writer counts from its attempt's start (see _retry).
                offset += record.get("output_base") or 0
            if offset is not None and output.total > offset:
                data = data[output.total - offset :]  # landed already (a retry)
            output.append(data)
            record["output_size"] = output.total
        if progress is not None:
            record["progress"] = progress

    def finish(self, job_id: str, ending: Ending) -> str | None:
        with self._lock:
            return self._finish(job_id, ending)

    def finish_and_start(
        self, job_id: str, ending: Ending, next_id: str, pid: int
    ) -> tuple[str | None, bool]:
        with self._lock:
            return self._finish(job_id, ending), self._start(next_id, pid)

    def _finish(self, job_id: str, ending: Ending) -> str | None:
        record = self._records.get(job_id)
        if record is None or record["state"] in TERMINAL_STATES:
            return None
        self._add(record, ending.text, ending.progress, ending.offset)
        wait = retry_wait(record, ending.state, ending.retryable)
        if wait is not None:
            return self._retry(record, ending.state, ending.error, wait)
        self._outputs[job_id].compact()
        state, error, how = cancel_outcome(record, ending.state, ending.error,
                                           ending.cancel_seen)
        record["cancelled_how"] = how
        if record["state"] == JobState.QUEUED:
            self._queued -= 1
        self._moved(record["state"], state)
        now = time.time()
        self._stats.observe(record, state, now)
        succeeded = state == JobState.SUCCEEDED
        record.update(state=state, ended_at=now, error=error, pid=None,
                      result=ending.shown if succeeded else None)
        if succeeded and ending.result is not None:
            self._results[job_id] = ending.result
        self._finished[job_id] = now
        self._let_go(record)
        self._prune()
        return state

    def _retry(self, record: Record, state: str, error: str | None,
               wait: float) -> str:
        """Put a job whose attempt ended back to queued, for its next
        attempt in ``wait`` seconds (see :meth:`Store.finish`)."""
        now = time.time()
        attempt = record.get("attempt") or 1
        errors = [*(record.get("errors") or []), {
            "attempt": attempt, "state": state, "ended_at": now,
            "error": error or f"ended {state}"}][-MAX_ERRORS_KEPT:]
        output = self._outputs[record["id"]]
        ends_line = not output.chunks or output.chunks[-1].endswith(b"\n")
        self._add(record, ("" if ends_line else "\n")
                  + attempt_divider(attempt + 1, record["retries"] + 1), None)
        # The next attempt's writer counts its output from 0: from here.
        record["output_base"] = record["output_size"]
        self._stats.observe_retry(record)
        self._moved(record["state"], JobState.QUEUED.value)
        self._queued += 1
        record.update(state=JobState.QUEUED.value, attempt=attempt + 1,
                      retry_at=now + wait, errors=errors, error=None,
                      started_at=None, pid=None, progress=None)
        self._retries[record["id"]] = now + wait
        return JobState.QUEUED.value

    def claim_retries(self, limit: int = 100) -> tuple[list[str], float | None]:
        with self._lock:
            now = time.time()
            due = [i for i, at in self._retries.items() if at <= now][:limit]
            for job_id in due:
                del self._retries[job_id]
                self._records[job_id]["retry_at"] = None
            return due, min(self._retries.values(), default=None)

    def next_retry(self) -> float | None:
        with self._lock:
            return min(self._retries.values(), default=None)

    def request_cancel(
        self, job_id: str, grace: float | None, shutdown: bool = False
    ) -> str:
        with self._lock:
            record = self._records.get(job_id)
            if record is None or record["state"] in TERMINAL_STATES:
                return ""
            if shutdown and job_id in self._retries:
                return ""  # a retry waiting is no process's: it stays
            if record["state"] == JobState.QUEUED:
                now = time.time()
                self._stats.observe(record, JobState.CANCELLED.value, now)
                self._retries.pop(job_id, None)
                retrying = (record.get("attempt") or 1) > 1
                record.update(state=JobState.CANCELLED.value, ended_at=now,
                              error=cancelled_waiting(record) if retrying
                              else "cancelled before it started", retry_at=None,
                              cancel_requested=True, cancel_requested_at=now,
                              cancelled_how="before_start")
                self._queued -= 1
                self._moved(JobState.QUEUED.value, JobState.CANCELLED.value)
                self._finished[job_id] = now
                self._let_go(record)
                return "cancelled"
            if not shutdown and not record["cancel_requested"]:
                record["cancel_requested_at"] = time.time()
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

    def call(self, job_id: str) -> bytes | None:
        with self._lock:
            return self._calls.get(job_id)

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
        if limit is not None:
            check_page(0, limit)
        with self._lock:
            self._prune()
            records = reversed(self._records.values())
            return [dict(r) for r in itertools.islice(records, limit or None)]

    def page(
        self, states: tuple[str, ...] = (), query: str = "", offset: int = 0,
        limit: int = 50,
    ) -> Page:
        check_page(offset, limit)
        folded = query.casefold()
        with self._lock:
            self._prune()
            kept = (r for r in reversed(self._records.values())
                    if not states or r["state"] in states)
            if not query:
                found = list(kept)
                return Page([dict(r) for r in found[offset : offset + limit]],
                            len(found))
            # The newest SEARCH_SCAN only, as on Redis; an id wherever it is.
            scanned = list(itertools.islice(kept, SEARCH_SCAN + 1))
            partial = len(scanned) > SEARCH_SCAN
            found = [r for r in scanned[:SEARCH_SCAN]
                     if folded in str(r["name"]).casefold() and r["id"] != query]
            exact = self._records.get(query)
            if exact is not None and (not states or exact["state"] in states):
                found.append(exact)
                found.sort(key=lambda r: r["created_at"], reverse=True)
            return Page([dict(r) for r in found[offset : offset + limit]],
                        len(found), partial)

    def ids_in_state(self, *states: str) -> builtins.list[str]:
        with self._lock:
            return [i for i, r in self._records.items() if r["state"] in states]

    def counts(self) -> dict[str, int]:
        with self._lock:
            self._prune()  # (cheap when nothing expired), as Redis's counts
            return dict(self._counts)

    def stats(self) -> JobStats:
        with self._lock:
            return copy.deepcopy(self._stats)

    def _moved(self, old: str, new: str) -> None:
        self._counts[old] -= 1
        self._counts[new] += 1

    def _let_go(self, record: Record) -> None:
        """A job ended or dropped: its unique key is free for the next call."""
        unique = record.get("unique")
        if unique and self._unique.get(unique) == record["id"]:
            del self._unique[unique]

    # -- bookkeeping ------------------------------------------------------------
    def _prune(self) -> None:
        cutoff = time.time() - self.job_ttl
        finished = self._finished
        while finished:
            job_id, ended_at = next(iter(finished.items()))
            if len(finished) <= self.keep_finished and ended_at >= cutoff:
                break
            del finished[job_id]
            record = self._records.pop(job_id)
            self._counts[record["state"]] -= 1
            self._let_go(record)
            del self._outputs[job_id]
            self._results.pop(job_id, None)
            self._calls.pop(job_id, None)


def cancelled_waiting(record: Record) -> str:
    """The error of a job cancelled while it waited for its next attempt
    (lua/cancel.lua writes the same)."""
    return (f"cancelled while waiting for attempt {record.get('attempt')} of"
            f" {(record.get('retries') or 0) + 1}")


def cancel_outcome(
    record: Record, state: str, error: str | None, cancel_seen: bool = True
) -> tuple[str, str | None, str | None]:
    """``(state, error, cancelled_how)`` for a job ending in ``state``: a job
    asked to cancel ends cancelled, killed after its grace or stopped by
    itself; one that succeeded without reading the cancel completed its
    work, and its success stands (the Redis store's Lua script mirrors this)."""
    if state == JobState.CANCELLED:
        queued = record["state"] == JobState.QUEUED
        return state, error, "before_start" if queued else "killed"
    if record["cancel_requested"] and state == JobState.SUCCEEDED and not cancel_seen:
        return state, error, "completed"
    if record["cancel_requested"]:
        error = "cancelled while running" + (
            f"; the job then ended {state}:\n{error}" if error else ""
        )
        return JobState.CANCELLED.value, error, "stopped"
    return state, error, None


# -- the store served to the pool's workers ------------------------------------------
class StoreManager(BaseManager):
    """Serves one :class:`MemoryStore` to the pool's workers: their
    ``get_store()`` returns a proxy to it (see :class:`MemoryBackend`)."""


StoreManager.register("get_store")  # a worker's side; the server's has the store


class ManagerLink:
    """Reaches the store of a server process from one of its pool workers,
    through that server's :class:`StoreManager`. A job's end goes back in
    the worker's answer: the server records it without a round trip."""

    ends_in_answer = True

    def __init__(self, address: Any, authkey: bytes) -> None:
        self.address = address
        self.authkey = authkey
        self.key = f"manager:{address!r}"

    def connect(self) -> Store:
        manager = StoreManager(address=self.address, authkey=self.authkey)
        manager.connect()
        return manager.get_store()  # type: ignore[attr-defined,no-any-return]


class MemoryBackend:
    """The default: a :class:`MemoryStore` in this server process, served to
    the pool's workers by a :class:`StoreManager` on a thread of this process.
    Jobs are this process's own (``shared`` is false).

    The server reads and writes the store as any object of its own: nothing
    between them can hang, die or outlive the other. The workers' calls
    (a job's start, its output, its end) reach it through the manager; a
    worker whose server is gone sees it go (its parent-death signal, or a
    thread watching the server's pid), kills its job and ends (see
    :mod:`~wsgi_bg.runners.pool_worker`).
    """

    shared = False

    def __init__(
        self, *, keep_finished: int, job_ttl: float, max_output_bytes: int
    ) -> None:
        self.store = MemoryStore(keep_finished=keep_finished, job_ttl=job_ttl,
                                 max_output_bytes=max_output_bytes)
        self._server: Any = None  # multiprocessing.managers.Server, once linked
        self._thread: threading.Thread | None = None

    def reader(self) -> Store:
        return self.store

    def start(self, ctx: BaseContext, *, holds_queued: bool = True) -> Store:
        return self.store  # served to workers from the first link() on

    def link(self) -> ManagerLink:
        if self._server is None:
            store = self.store
            # A class per store: a manager's registry is its class's.
            manager: type[StoreManager] = type("StoreManager", (StoreManager,), {})
            manager.register("get_store", callable=lambda: store)
            authkey = bytes(multiprocessing.current_process().authkey)
            server = manager(authkey=authkey).get_server()
            # Not serve_forever(): it is a manager process's main loop (it
            # resets sys.stdout and exits the process when it stops).
            server.stop_event = threading.Event()  # type: ignore[attr-defined]
            self._thread = threading.Thread(
                target=_accept, args=(server,), name="wsgi_bg-store-server",
                daemon=True)
            self._thread.start()
            self._server = server
        # Workers start with this process's authkey (multiprocessing's own).
        return ManagerLink(self._server.address,
                           bytes(multiprocessing.current_process().authkey))

    def stop(self) -> Store:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None and thread is not None:
            # Connections still open end at their next call (their workers
            # have stopped by now); the accepting thread at its next accept.
            server.stop_event.set()
            with contextlib.suppress(OSError):
                Client(server.address, authkey=None).close()
            thread.join(5.0)
            server.listener.close()  # (and removes its socket file)
        return self.store


def _accept(server: Any) -> None:
    """Accept the workers' connections, each served on a thread of its own
    (as a manager process does), until stop() says so.

    A failure to accept (no file descriptor left) or to start a connection's
    thread (a thread limit) is the server's, and passes: the connection is
    closed (its worker fails and the pool starts another), the loop waits a
    little longer after each failure in a row (up to a second), and says so
    once per run of failures."""
    failures = 0
    while not server.stop_event.is_set():
        conn = None
        try:
            conn = server.listener.accept()
            if server.stop_event.is_set():
                conn.close()
                return
            threading.Thread(target=server.handle_request, args=(conn,),
                             name="wsgi_bg-store-connection", daemon=True).start()
        except Exception as exc:  # noqa: BLE001 - any: this thread must go on
            if server.stop_event.is_set():
                return
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()
            if not failures:
                logger.warning(
                    "wsgi_bg: the job store could not take a pool worker's"
                    " connection (%s: %s); trying again", type(exc).__name__, exc)
            failures += 1
            server.stop_event.wait(min(0.01 * 2 ** failures, 1.0))
            continue
        if failures:
            logger.warning("wsgi_bg: the job store takes pool workers'"
                           " connections again")
            failures = 0
