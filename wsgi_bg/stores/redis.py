"""The Redis store: jobs shared by every server process, kept across restarts.

Use it when the app runs in several processes (``gunicorn -w 4``) or must keep
its jobs' history across restarts::

    app = BackgroundMiddleware(app, store="redis://localhost:6379/0",
                               namespace="shop")   # + WSGI_BG_SECRET_KEY

Key layout, for namespace ``N`` (every key starts with ``N:``, so apps sharing
one Redis never see each other's jobs)::

    N:job:{id}      hash    the record: each field JSON, but state (plain)
    N:out:{id}      string  the output: all of it, or its tail past the limit
    N:head:{id}     string  the head of the output, once past the limit
    N:result:{id}   string  the pickled result, signed (see signing.py)
    N:call:{id}     string  the pickled call (fn, args, kwargs), signed: what
                            an RQ worker runs (the RQ job holds a signed
                            reference, a hash of the id, never the id)
    N:lease:{id}    string  TTL: the supervisor running the job is alive
    N:owner:{o}     string  TTL: server process o, holding queued jobs, is alive
                            (a job queued on RQ has no owner: it waits in RQ)
    N:jobs          zset    every job, by created_at (the list)
    N:state:{s}     zset    the jobs in state s, by created_at (counts, sweeps)
    N:finished      zset    ended jobs, by ended_at (retention by keep_finished)
    N:suspects      hash    job id -> when its lease or owner was first missed
    N:stats         hash    figures counted as jobs end, never expired (see
                            observe() in lua/lib.lua; the /metrics page)
    N:stats:functions set   the functions counted under their own name
    N:retries       zset    jobs waiting for their next attempt, by when it
                            is due (retry_at); claim.lua takes the due ones
                            for whoever asks first (see claim_retries)
    N:unique:{digest} string  the id of the queued or running job holding a
                            unique key (its digest: the record's ``unique``),
                            set by create, deleted as that job ends or is
                            dropped (see let_go() in lua/lib.lua)

Each state change is one Lua script (``lua/<name>.lua``, run after the
prelude ``lua/lib.lua``), so it is atomic whoever runs it. Ended jobs' keys
expire after ``job_ttl`` (Redis expiry) and the same scripts drop ended jobs
past ``keep_finished``. The scripts compute their keys, so Redis Cluster is
not supported (one Redis, or a primary with replicas, is).

Liveness (nothing says "running" for ever): the supervisor of a running job
renews its lease with every relay (several times a second); each server
process that started the engine renews its owner key every 2 s. Every process
sweeps every 5 s: a running job whose lease is gone, or a queued job whose
owner is gone, is marked a suspect, and ends ``crashed`` if it still is at a
sweep 4 s later. So a job whose process was killed ends within
``LEASE_SECONDS`` + 10 s, and a supervisor that was cut off from Redis for a
while has 4 s after Redis returns to renew its lease.

Unreachable Redis: calls time out after ``socket_timeout`` (2 s by default)
and raise :exc:`~wsgi_bg.exceptions.StoreUnavailable`, a ``503`` with
``Retry-After`` for requests. Supervisors keep a job's output meanwhile
(bounded) and deliver it when Redis is back. A hung Redis runs what it was
sent once it resumes: a create carries a deadline on Redis's clock (when its
client gives up; the clocks' offset is read with ``TIME`` at every beat) and
does nothing past it, so a submit answered 503 leaves no job behind.
"""

from __future__ import annotations

import builtins
import functools
import json
import logging
import pickle
import secrets
import threading
import time
from collections.abc import Callable
from importlib import resources
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.connection import parse_url
from redis.retry import Retry

from ..exceptions import ResultUnavailable, StoreUnavailable, UnreadableRecord
from ..jobs import JobState
from .output import dropped_marker, encode_output, tail_cut
from .protocol import (
    BUCKETS,
    MAX_ERRORS_KEPT,
    MAX_FUNCTION_BYTES,
    MAX_FUNCTIONS,
    SEARCH_SCAN,
    Ending,
    Histogram,
    JobStats,
    Page,
    Record,
    Store,
    check_page,
)
from .signing import BadSignature, Signer, resolve_secret_key

logger = logging.getLogger("wsgi_bg")

#: Seconds a running job's lease lasts without renewal.
LEASE_SECONDS = 15.0
#: Seconds a server process's owner key lasts, and how often it is renewed.
OWNER_SECONDS, BEAT_SECONDS = 15.0, 2.0
#: Seconds between two sweeps by one process; a suspect must stay one this long.
SWEEP_SECONDS, SUSPECT_SECONDS = 5.0, 4.0
#: Socket timeouts used unless the client given has its own.
SOCKET_TIMEOUT = 2.0
#: Seconds before a client gives up on a create after which Redis refuses it
#: (at most a quarter of the timeout): time for the answer to travel back.
_ANSWER_MARGIN = 0.25
#: A reading of Redis's clock whose round trip took longer is not trusted.
_CLOCK_ROUND_TRIP = 0.05

_CRASHED_RUNNING = (
    "the process running this job stopped (its server process, pool worker or"
    " RQ worker was killed, or the job's supervisor lost the store for longer than"
    f" {LEASE_SECONDS:g} s): nothing renewed its lease, so it ended crashed"
)
_CRASHED_QUEUED = (
    "the server process that queued this job stopped before it started (killed,"
    " restarted or recycled): a queued job waits in the pool of the server"
    " process that submitted it"
)

# -- Lua ------------------------------------------------------------------------------
#: The scripts, each a file of lua/ (its header says its arguments and its
#: answer), run after lua/lib.lua: the prelude they share.
SCRIPTS = ("create", "start", "relay", "finish", "finish_and_start", "cancel",
           "view", "read", "list", "counts", "page", "sweep", "notice", "find_call",
           "claim")


@functools.cache
def _lua(name: str) -> str:
    # Read once per process; redis-py's register_script sends a script only
    # when Redis does not know its SHA yet.
    path = resources.files("wsgi_bg.stores") / "lua" / f"{name}.lua"
    text = path.read_text("utf-8")
    if name == "lib":
        # The bounds of the figures counted as jobs end (observe() in
        # lib.lua), defined once, in protocol.py, for both stores.
        text = (f"local BUCKETS = {{{', '.join(map(repr, BUCKETS))}}}\n"
                f"local MAX_FUNCTIONS = {MAX_FUNCTIONS}\n"
                f"local MAX_FUNCTION_BYTES = {MAX_FUNCTION_BYTES}\n"
                f"local MAX_ERRORS_KEPT = {MAX_ERRORS_KEPT}\n" + text)
    return text


def script_source(name: str) -> str:
    """The Lua source of script ``name`` (one of :data:`SCRIPTS`), as Redis
    runs it: the shared prelude (``_lua("lib")``, which runners/rq.py's
    sweep runs first too), then the script."""
    return _lua("lib") + _lua(name)


_STATES = [s.value for s in JobState]
_RAW_FIELDS = ("state",)
_INTERNAL_FIELDS = ("truncated", "tail_start", "owner", "output_base")

T = TypeVar("T")


def _reaching(method: Callable[..., T]) -> Callable[..., T]:
    """Turn the errors of an unreachable (or full) Redis into
    StoreUnavailable, and a script's error for a record changed outside
    wsgi_bg into UnreadableRecord."""

    @functools.wraps(method)
    def call(self: RedisStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(
                f"the Redis store ({self.where}) cannot be reached: {exc}."
                " Try again shortly."
            ) from exc
        except redis.exceptions.OutOfMemoryError as exc:
            # maxmemory reached with noeviction: writes are refused, reads
            # still work; finished jobs expire or are dropped past
            # keep_finished.
            raise StoreUnavailable(
                f"the Redis store ({self.where}) is full ({exc}): raise its"
                " maxmemory, or lower keep_finished or max_output_bytes. Try"
                " again later."
            ) from exc
        except redis.ResponseError as exc:
            # A script's own error for a record changed outside wsgi_bg
            # (see num() in lua/lib.lua): "UNREADABLE <id> <field> script: ...".
            words = str(exc).split()
            if len(words) < 3 or words[0] != "UNREADABLE":
                raise
            raise UnreadableRecord(
                words[1], f"its {words[2]} is not a number") from None

    return call


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _dump_progress(progress: dict[str, Any] | None) -> str:
    if progress is None:
        return ""
    try:
        return _dump(progress)
    except (TypeError, ValueError) as exc:  # e.g. an int too long for JSON
        return _dump({"done": None, "total": None,
                      "message": f"progress could not be stored: {exc}"})


_NUMBER, _INT, _TEXT = (int, float), (int,), (str,)
#: What each field must hold (types, whether null is allowed), for a record
#: changed outside wsgi_bg to be told apart, not taken for a job.
_FIELD_KINDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "id": (_TEXT, False), "name": (_TEXT, False), "created_at": (_NUMBER, False),
    "started_at": (_NUMBER, True), "ended_at": (_NUMBER, True),
    "timeout": (_NUMBER, True), "cancel_grace": (_NUMBER, True),
    "cancel_requested_at": (_NUMBER, True), "output_size": (_INT, False),
    "pid": (_INT, True), "cancel_requested": ((bool,), False),
    "stop_requested": ((bool,), False), "progress": ((dict,), True),
    "error": (_TEXT, True), "result": (_TEXT, True), "url": (_TEXT, True),
    "args": (_TEXT, True), "cancelled_how": (_TEXT, True),
    "rerun_of": (_TEXT, True), "rerun_as": (_TEXT, True), "notice": (_TEXT, True),
    "unique": (_TEXT, True), "function": (_TEXT, True),
    "retries": (_INT, False), "attempt": (_INT, False),
    "retry_delay": (_NUMBER, False), "retry_delay_max": (_NUMBER, False),
    "retry_crashed": ((bool,), False), "retry_at": (_NUMBER, True),
    "errors": ((list,), False),
}
#: Fields every record has had since the first version.
_REQUIRED = ("id", "name", "state", "created_at", "started_at", "ended_at",
             "result", "error", "progress", "timeout", "cancel_requested",
             "cancel_grace", "url", "pid", "output_size")
#: What stands for a field found unreadable in a record listed anyway.
_STAND_INS: dict[str, Any] = {"name": "(unreadable record)", "created_at": 0.0,
                              "output_size": 0, "cancel_requested": False,
                              "state": JobState.CRASHED.value}


def _field_problem(name: str, value: Any) -> str | None:
    if name == "state":
        return None if value in _STATES else f"its state {value!r:.40} is no state"
    kind = _FIELD_KINDS.get(name)
    if kind is None:
        return None
    types, nullable = kind
    if value is None and nullable:
        return None
    if isinstance(value, types) and (bool in types or not isinstance(value, bool)):
        return None
    what = ("a number" if types is _NUMBER else "an integer" if types is _INT
            else "text" if types is _TEXT else types[0].__name__)
    return f"its {name} is {value!r:.40}, not {what}"


def _decode_record(fields: list[bytes], job_id: str | None = None, *,
                   listed: bool = False) -> Record:
    """A record from its hash's fields.

    :param listed: for a list: a record found unreadable is kept, its bad
        fields replaced (see _STAND_INS) and its error saying what is wrong,
        so that one record changed outside wsgi_bg leaves the list readable.
    :raises UnreadableRecord: for a field that holds what wsgi_bg never
        writes there (not ``listed``).
    """
    record: Record = {}
    problems: list[str] = []
    for i in range(0, len(fields), 2):
        name = fields[i].decode("utf-8", "replace")
        if name in _INTERNAL_FIELDS:
            continue
        try:
            raw = fields[i + 1].decode()
            value = raw if name in _RAW_FIELDS else json.loads(raw)
        except ValueError:  # (not UTF-8, not JSON)
            problems.append(f"its {name} is {fields[i + 1]!r:.40}, not JSON")
            continue
        problem = _field_problem(name, value)
        if problem is None:
            record[name] = value
        else:
            problems.append(problem)
    problems += [f"it has no {name}" for name in _REQUIRED if name not in record
                 and not any(p.startswith(f"its {name} ") for p in problems)]
    if not problems:
        return record
    job_id = job_id or record.get("id")
    error = UnreadableRecord(job_id or "?", "; ".join(problems))
    if not listed or not job_id:
        raise error
    return {**dict.fromkeys(_REQUIRED), **_STAND_INS, **record, "id": job_id,
            "error": str(error)}


def _decode_output(parts: list[Any], limit: int) -> tuple[str, int]:
    head, dropped, tail, total = parts
    if dropped < 0:
        return (head + tail).decode("utf-8", "replace"), int(total)
    # The tail was cut at a byte offset: start it at a character boundary.
    start = tail_cut(tail, 0)
    text = (head.decode("utf-8", "replace")
            + dropped_marker(int(dropped) + start, limit)
            + tail[start:].decode("utf-8", "replace"))
    return text, int(total)


def _decode_stats(fields: dict[bytes, bytes]) -> JobStats:
    """:class:`JobStats` from the ``N:stats`` hash (see ``observe()`` in
    lua/lib.lua); a field changed outside wsgi_bg is left out."""
    stats = JobStats()
    histograms = {"d": stats.duration, "w": stats.queue_wait}
    for raw, value in fields.items():
        try:
            kind, label, *rest = json.loads(raw)
            if kind == "f":
                (state,) = rest
                stats.finished[(str(label), str(state))] = int(value)
            elif kind == "r":
                if rest:
                    raise ValueError(rest)
                stats.retries[str(label)] = int(value)
            elif kind in ("ds", "ws"):
                histogram = histograms[kind[0]].setdefault(str(label), Histogram())
                histogram.sum = float(value)
            else:
                (index,) = rest
                histogram = histograms[kind].setdefault(str(label), Histogram())
                if not 1 <= index <= len(histogram.buckets):
                    raise IndexError(index)
                histogram.buckets[index - 1] = int(value)
        except (ValueError, TypeError, KeyError, IndexError):
            continue
    return stats


class RedisStore:
    """The :class:`~wsgi_bg.stores.Store` protocol on Redis; see the module
    docstring for the key layout. Built by :class:`RedisBackend`."""

    def __init__(
        self, client: redis.Redis, *, namespace: str, signer: Signer,
        keep_finished: int, job_ttl: float, max_output_bytes: int,
        owner: str | None = None, where: str = "redis",
    ) -> None:
        self._r = client
        self.namespace = namespace
        self._prefix = namespace + ":"
        self._signer = signer
        self.keep_finished = keep_finished
        self.job_ttl = job_ttl
        self.max_output_bytes = max_output_bytes
        self.owner = owner
        self.where = where
        self._next_sweep = 0.0
        #: Redis's clock minus this host's, in seconds (None: not read yet).
        self._clock_offset: float | None = None
        #: Registered once per store: each call sends EVALSHA, and the source
        #: only if Redis does not know it (redis-py's Script).
        self._scripts: dict[str, Script] = {
            name: client.register_script(script_source(name)) for name in SCRIPTS}

    def _args(self, *extra: Any) -> list[Any]:
        return [self._prefix, repr(time.time()), self.max_output_bytes,
                self.keep_finished, int(self.job_ttl * 1000),
                int(LEASE_SECONDS * 1000), *extra]

    # -- writes ---------------------------------------------------------------
    @_reaching
    def create(
        self, record: Record, max_queued: int, call: bytes | None = None
    ) -> str | None:
        unique = record.get("unique") or ""
        fields: list[str] = []
        for name, value in dict(record, unique=unique or None).items():
            if name not in ("state", "output_size"):
                fields += [name, _dump(value)]
        fields += ["owner", _dump(self.owner), "cancel_requested_at", "null",
                   "cancelled_how", "null", "rerun_as", "null", "notice", "null"]
        signed = b"" if call is None else self._signer.sign(
            "call", record["id"], call, namespace=self.namespace)
        deadline = self._deadline()
        created = self._scripts["create"](args=self._args(
            record["id"], max_queued, repr(float(record["created_at"])), signed,
            record.get("rerun_of") or "", "" if deadline is None else repr(deadline),
            unique, *fields))
        if isinstance(created, bytes):  # the job holding the unique key
            return created.decode()
        if created == -1:
            raise ValueError(f"job id {record['id']!r} is already stored")
        if created == -2:
            raise StoreUnavailable(
                f"the Redis store ({self.where}) answered too late (hung or"
                " overloaded): the job was not created. Try again shortly.")
        return str(record["id"]) if created else None

    def _deadline(self) -> float | None:
        """When, on Redis's clock, a call made now is given up by this client
        (its socket timeout), less a margin for the answer's way back; a
        create run later does nothing (see lua/create.lua). ``None`` without a
        socket timeout."""
        timeout = float(self._r.connection_pool.connection_kwargs.get(
            "socket_timeout") or 0)
        if not timeout:
            return None
        offset = self._clock_offset
        if offset is None:
            offset = self._measure_clock()
        margin = min(_ANSWER_MARGIN, timeout / 4)
        return time.time() + offset + timeout - margin

    def _measure_clock(self) -> float:
        """Read Redis's clock (``TIME``); return how far it is ahead of this
        host's."""
        sent = time.time()
        self._set_clock(self._r.time(), sent)
        return self._clock_offset or 0.0

    def _set_clock(self, now: tuple[int, int], sent: float) -> None:
        """Keep Redis's clock minus this host's, from ``TIME``'s answer to a
        call sent at ``sent``, so that deadlines hold whatever the hosts'
        clocks say. Its error is half the round trip: one that took long
        (Redis busy) is kept only if there is none yet."""
        received = time.time()
        if received - sent > _CLOCK_ROUND_TRIP and self._clock_offset is not None:
            return
        seconds, micros = now
        self._clock_offset = int(seconds) + int(micros) / 1e6 - (sent + received) / 2

    @_reaching
    def start(self, job_id: str, pid: int) -> bool:
        return bool(self._scripts["start"](args=self._args(job_id, _dump(pid),
                                                 repr(time.time()))))

    @_reaching
    def relay(
        self, job_id: str, text: str, progress: dict[str, Any] | None,
        offset: int | None = None,
    ) -> tuple[bool, float | None]:
        stop, grace = self._scripts["relay"](args=self._args(
            job_id, encode_output(text), _dump_progress(progress),
            "" if offset is None else offset))
        return bool(stop), json.loads(grace)

    @_reaching
    def finish(self, job_id: str, ending: Ending) -> str | None:
        stored = self._scripts["finish"](args=self._args(
            *self._finish_args(job_id, ending)))
        return None if stored is None else stored.decode()

    @_reaching
    def finish_and_start(
        self, job_id: str, ending: Ending, next_id: str, pid: int
    ) -> tuple[str | None, bool]:
        stored, started = self._scripts["finish_and_start"](args=self._args(
            *self._finish_args(job_id, ending),
            next_id, _dump(pid), repr(time.time())))
        return (stored.decode() or None), bool(started)

    def _finish_args(self, job_id: str, ending: Ending) -> list[Any]:
        """The arguments of the finish script's ``finish(a)``."""
        state, error, result = ending.state, ending.error, ending.result
        if_cancelled = "cancelled while running" + (
            f"; the job then ended {state}:\n{error}" if error else "")
        signed = b"" if result is None else self._signer.sign(
            "result", job_id, result, namespace=self.namespace)
        return [job_id, state, _dump(error), _dump(if_cancelled),
                encode_output(ending.text), _dump_progress(ending.progress),
                _dump(ending.shown), signed, "1" if result is not None else "0",
                repr(time.time()), "" if ending.offset is None else ending.offset,
                "1" if ending.cancel_seen else "0",
                "1" if ending.retryable else "0"]

    @_reaching
    def claim_retries(
        self, limit: int = 100
    ) -> tuple[builtins.list[str], float | None]:
        taken, first = self._scripts["claim"](args=self._args(limit,
                                                             _dump(self.owner)))
        return [raw.decode() for raw in taken], float(first) if first else None

    @_reaching
    def next_retry(self) -> float | None:
        first: list[tuple[bytes, float]] = self._r.zrange(  # type: ignore[assignment]
            self._prefix + "retries", 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    @_reaching
    def set_notice(self, job_ids: builtins.list[str], notice: str | None) -> int:
        """Have each of ``job_ids`` still queued say ``notice`` while it
        waits (``None``: nothing), as its record's ``notice``: what the RQ
        runner's sweep says of jobs no worker listens for. A job's start and
        its end clear it. Return how many records changed."""
        if not job_ids:
            return 0
        return int(self._scripts["notice"](args=self._args(_dump(notice), *job_ids)))

    @_reaching
    def request_cancel(
        self, job_id: str, grace: float | None, shutdown: bool = False
    ) -> str:
        answer = self._scripts["cancel"](args=self._args(
            job_id, "" if grace is None else repr(float(grace)),
            "1" if shutdown else "0", repr(time.time())))
        return answer.decode() if isinstance(answer, bytes) else str(answer or "")

    # -- reads ----------------------------------------------------------------
    @_reaching
    def get(self, job_id: str) -> Record | None:
        self._maybe_sweep()
        fields: dict[bytes, bytes] = self._r.hgetall(  # type: ignore[assignment]
            self._prefix + "job:" + job_id)
        if not fields:
            return None
        flat = [part for item in fields.items() for part in item]
        return _decode_record(flat, job_id)

    @_reaching
    def result(self, job_id: str) -> bytes | None:
        blob: bytes | None = self._r.get(  # type: ignore[assignment]
            self._prefix + "result:" + job_id)
        if blob is None:
            return None
        try:
            return self._signer.unsign("result", job_id, blob,
                                       namespace=self.namespace)
        except BadSignature as exc:
            # Never loaded, and nothing written: a reader with another key
            # (a misconfigured process) must not change what others see.
            raise ResultUnavailable(str(exc)) from None

    @_reaching
    def call(self, job_id: str) -> bytes | None:
        blob: bytes | None = self._r.get(  # type: ignore[assignment]
            self._prefix + "call:" + job_id)
        return self.check_call(job_id, blob)

    def check_call(self, job_id: str, blob: bytes | None) -> bytes | None:
        """The pickled call in ``blob``, the signed call stored with job
        ``job_id`` (``None``: none stored), once its signature checks out.

        :raises ~wsgi_bg.stores.signing.BadSignature: if it does not (it is
            never returned, so never unpickled).
        """
        if blob is None:
            return None
        return self._signer.unsign("call", job_id, blob, namespace=self.namespace)

    @_reaching
    def find_call(
        self, created_at: float, digest: str
    ) -> tuple[str, bytes | None] | None:
        """The id of the job created at ``created_at`` whose id's SHA-1
        (hex) is ``digest``, and its signed call, unchecked (see
        :meth:`check_call`), in one round trip: how an RQ worker finds the
        job an RQ job names without naming its id. ``None`` if no such job
        is stored."""
        found = self._scripts["find_call"](args=self._args(
            repr(float(created_at)), digest))
        if found is None:
            return None
        job_id, blob = found
        return job_id.decode(), blob

    @_reaching
    def read_output(self, job_id: str, since: int) -> tuple[str, int] | None:
        parts = self._scripts["read"](args=self._args(job_id, max(0, since)))
        return None if parts is None else _decode_output(parts, self.max_output_bytes)

    @_reaching
    def view(self, job_id: str, since: int) -> tuple[Record, str, int] | None:
        self._maybe_sweep()
        found = self._scripts["view"](args=self._args(job_id, max(0, since)))
        if found is None:
            return None
        fields, parts = found
        text, offset = _decode_output(parts, self.max_output_bytes)
        return _decode_record(fields, job_id), text, offset

    @_reaching
    def list(self, limit: int | None = None) -> builtins.list[Record]:
        if limit is not None:
            check_page(0, limit)
        self._maybe_sweep()
        return [_decode_record(f, listed=True)
                for f in self._scripts["list"](args=self._args(limit or 0))]

    @_reaching
    def page(
        self, states: tuple[str, ...] = (), query: str = "", offset: int = 0,
        limit: int = 50,
    ) -> Page:
        check_page(offset, limit)  # (Lua would get 1e+20 for 10**20)
        for state in states:
            if state not in _STATES:
                raise ValueError(f"states must be job states, got {state!r}")
        self._maybe_sweep()
        # Names are stored as JSON: the query is matched as JSON too.
        stored = _dump(query)[1:-1].lower() if query else ""
        total, found, partial = self._scripts["page"](args=self._args(
            stored, query, offset, limit, SEARCH_SCAN, *states))
        return Page([_decode_record(f, listed=True) for f in found], int(total),
                    bool(partial))

    @_reaching
    def ids_in_state(self, *states: str) -> builtins.list[str]:
        found: builtins.list[tuple[float, str]] = []
        for state in states:
            members: list[tuple[bytes, float]] = self._r.zrange(  # type: ignore[assignment]
                self._prefix + "state:" + state, 0, -1, withscores=True)
            for job_id, score in members:
                found.append((score, job_id.decode()))
        return [job_id for _, job_id in sorted(found)]

    @_reaching
    def counts(self) -> dict[str, int]:
        self._maybe_sweep()
        counts = self._scripts["counts"](args=self._args())
        return dict(zip(_STATES, counts, strict=True))

    @_reaching
    def stats(self) -> JobStats:
        fields: dict[bytes, bytes] = self._r.hgetall(  # type: ignore[assignment]
            self._prefix + "stats")
        return _decode_stats(fields)

    # -- liveness ---------------------------------------------------------------
    @_reaching
    def sweep(self) -> int:
        """End ``crashed`` the jobs whose supervisor or owner is gone (see the
        module docstring); return how many."""
        self._next_sweep = time.monotonic() + SWEEP_SECONDS
        return int(self._scripts["sweep"](args=self._args(
            _dump(_CRASHED_RUNNING), _dump(_CRASHED_QUEUED), SUSPECT_SECONDS)))

    def _maybe_sweep(self) -> None:
        if time.monotonic() >= self._next_sweep:
            self.sweep()

    @_reaching
    def beat(self) -> None:
        """Say that this store's owner (a server process) is alive, and read
        Redis's clock again (see :meth:`_deadline`), in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        if self.owner is not None:
            pipe.set(self._prefix + "owner:" + self.owner, b"1",
                     px=int(OWNER_SECONDS * 1000))
        pipe.time()
        sent = time.time()
        replies = pipe.execute()
        self._set_clock(replies[-1], sent)

    @_reaching
    def release(self) -> None:
        """This owner stops: its queued jobs are cancelled already."""
        if self.owner is not None:
            self._r.delete(self._prefix + "owner:" + self.owner)


# -- connections ------------------------------------------------------------------
#: Connection settings kept from a client given as an object (the rest of its
#: settings are its library's internals, and need not pickle).
_CLIENT_SETTINGS = (
    "host", "port", "db", "path", "username", "password", "socket_timeout",
    "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options",
    "client_name", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs",
    "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_check_hostname",
    "ssl_password", "ssl_min_version", "ssl_ciphers",
)


def connection_settings(store: str | redis.Redis) -> dict[str, Any]:
    """Picklable settings for :func:`connect` from a URL or a client.

    :raises ValueError: for a URL redis-py cannot parse.
    """
    if isinstance(store, str):
        try:
            settings: dict[str, Any] = parse_url(store)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ValueError(
                f"store is not a valid Redis URL ({exc}): {store!r}") from None
    else:
        pool = store.connection_pool
        kwargs = pool.connection_kwargs
        settings = {k: kwargs[k] for k in _CLIENT_SETTINGS if k in kwargs}
        settings["connection_class"] = pool.connection_class
    for name in ("socket_timeout", "socket_connect_timeout"):
        if settings.get(name) is None:
            settings[name] = SOCKET_TIMEOUT
    try:
        pickle.dumps(settings)
    except Exception as exc:
        raise TypeError(
            "the redis client's connection settings cannot be sent to worker"
            f" processes ({exc}): pass a redis:// URL as store= instead"
        ) from None
    return settings


def connect(settings: dict[str, Any]) -> redis.Redis:
    """A client of ours: bytes replies, socket timeouts, and one immediate
    retry on a dropped connection (Redis restarted) but none on a timeout (a
    hung Redis must answer 503 quickly, not after several timeouts)."""
    settings = dict(settings)
    cls = settings.pop("connection_class", redis.Connection)
    pool = redis.ConnectionPool(
        connection_class=cls, decode_responses=False,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        **settings,
    )
    return redis.Redis(connection_pool=pool)


def _where(settings: dict[str, Any]) -> str:
    if settings.get("path"):
        return f"unix:{settings['path']} db {settings.get('db', 0)}"
    return f"{settings.get('host', 'localhost')}:{settings.get('port', 6379)}" \
           f" db {settings.get('db', 0)}"


class RedisLink:
    """How pool workers reach the Redis store: settings, not a connection."""

    ends_in_answer = False  # a worker's own call is as short as the server's

    def __init__(self, settings: dict[str, Any], namespace: str, key: bytes,
                 limits: dict[str, Any]) -> None:
        self.settings = settings
        self.namespace = namespace
        self.secret = key
        self.limits = limits
        self.key = f"redis:{_where(settings)}:{namespace}:{secrets.token_hex(4)}"

    def connect(self) -> Store:
        return RedisStore(connect(self.settings), namespace=self.namespace,
                          signer=Signer(self.secret), where=_where(self.settings),
                          **self.limits)


class RedisBackend:
    """Jobs in Redis: every server process sees them (``shared``)."""

    shared = True

    def __init__(
        self, store: str | redis.Redis, *, namespace: str,
        secret_key: str | bytes | None, keep_finished: int, job_ttl: float,
        max_output_bytes: int,
    ) -> None:
        key = resolve_secret_key(secret_key)
        settings = connection_settings(store)
        self._limits: dict[str, Any] = {
            "keep_finished": keep_finished, "job_ttl": job_ttl,
            "max_output_bytes": max_output_bytes}
        self._link = RedisLink(settings, namespace, key, self._limits)
        self._client = connect(settings)  # connects on its first command
        self._reader = self._store_for(owner=None)
        self._store: RedisStore | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _store_for(self, owner: str | None) -> RedisStore:
        link = self._link
        return RedisStore(self._client, namespace=link.namespace,
                          signer=Signer(link.secret), owner=owner,
                          where=_where(link.settings), **self._limits)

    def reader(self) -> Store:
        return self._reader

    def start(self, ctx: BaseContext, *, holds_queued: bool = True) -> Store:
        # Without an owner, queued jobs are never swept as "owner gone".
        store = self._store_for(owner=secrets.token_hex(8) if holds_queued else None)
        store.beat()  # before any job names this owner; unreachable: 503
        self._store = store
        self._thread = threading.Thread(target=self._heartbeat, args=(store,),
                                        name="wsgi_bg-heartbeat", daemon=True)
        self._thread.start()
        return store

    def _heartbeat(self, store: RedisStore) -> None:
        failing = False
        while not self._stop.wait(BEAT_SECONDS):
            try:
                store.beat()
                store._maybe_sweep()
            except StoreUnavailable as exc:
                if not failing:
                    logger.warning("wsgi_bg: %s", exc)
                failing = True
            except Exception:  # keep beating whatever one sweep met
                logger.exception("wsgi_bg: heartbeat failed")
            else:
                if failing:
                    logger.warning("wsgi_bg: the Redis store is reachable again")
                failing = False

    def link(self) -> RedisLink:
        return self._link

    def stop(self) -> Store:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._store is not None:
            try:
                self._store.release()
            except StoreUnavailable:
                pass  # the key expires by itself
        # Handles stay readable: a later read opens a connection again.
        self._client.connection_pool.disconnect()
        return self._reader
