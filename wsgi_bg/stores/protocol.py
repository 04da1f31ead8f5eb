"""The store seam: what the engine, the runner and the pages need from a store.

A :class:`Store` holds job records, output, results and cancel requests; it is
the single source of truth for what pages show. A :class:`Backend` is how one
kind of store is started in the server process, reached from the processes
that run jobs (:meth:`Backend.link`), and stopped. :func:`wsgi_bg.stores.open_backend`
picks one from the middleware's ``store=`` option; no other module knows which
store is in use.
"""

from __future__ import annotations

import bisect
import builtins
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from typing import Any, Protocol

Record = dict[str, Any]

#: Fields every record has (a store may add its own). ``args`` is a bounded
#: repr of the call, ``cancelled_how`` one of ``"before_start"``, ``"stopped"``
#: (ended by itself within its grace), ``"killed"`` (after its grace), or
#: ``"completed"``: the job succeeded after a cancel was asked without reading
#: it (it did all its work: its state stays ``succeeded``, its result kept).
#: ``notice``: what a queued job says while it waits (the RQ runner's "no RQ
#: worker listens"), or ``None``; its start and its end clear it.
#: ``unique``: the digest of the job's unique key
#: (:func:`wsgi_bg.engine.unique_digest`), or ``None``; never the key.
RECORD_FIELDS = (
    "id", "name", "state", "created_at", "started_at", "ended_at", "result",
    "error", "progress", "timeout", "cancel_requested", "cancel_grace", "url",
    "pid", "output_size", "args", "cancel_requested_at", "cancelled_how",
    "notice", "unique",
)

#: An optional field: ``function``, what the job runs, by which its metrics
#: are labelled (:func:`function_label`): ``module.qualname`` of a function, a marked
#: app's import path ``module:attribute``. A record without it (stored by an
#: earlier version) is labelled by its ``name``.
FUNCTION_FIELD = "function"

#: Optional fields: ``rerun_of``, the id of the job this one runs again (set
#: by whoever creates it), and ``rerun_as``, the id of its latest run again
#: (set by :meth:`Store.create` of that run, in the same call).
RERUN_FIELDS = ("rerun_of", "rerun_as")

#: Optional fields of a job that may run again (``background(retries=...)``;
#: a record without them has none): ``retries`` (attempts after the first,
#: at most), ``retry_delay``, ``retry_delay_max`` (seconds), ``retry_crashed``
#: (bool), ``attempt`` (this attempt, from 1), ``retry_at`` (when a waiting
#: retry is due, else ``None``) and ``errors`` (the error of each attempt
#: that failed, in order). See :meth:`Store.finish`. Offsets a writer gives
#: (:meth:`Store.relay`) count from its attempt's first byte of output.
RETRY_FIELDS = ("retries", "retry_delay", "retry_delay_max", "retry_crashed",
                "attempt", "retry_at", "errors")

#: The largest ``offset`` or ``limit`` :meth:`Store.page` takes.
MAX_PAGE_INDEX = 2**31 - 1
#: How many jobs a search (:meth:`Store.page` with a query) looks through at
#: most, newest first: its cost is bounded whatever ``keep_finished`` is.
SEARCH_SCAN = 1000


def check_page(offset: Any, limit: Any) -> None:
    """Refuse paging values no store can serve (a float, ``10**20``).

    :raises ValueError: saying which value and what is allowed.
    """
    for name, value in (("offset", offset), ("limit", limit)):
        if (isinstance(value, bool) or not isinstance(value, int)
                or not 0 <= value <= MAX_PAGE_INDEX):
            raise ValueError(
                f"{name} must be an integer from 0 to {MAX_PAGE_INDEX}, got"
                f" {value!r}")


#: Attempts' errors a record keeps in ``errors``, the latest.
MAX_ERRORS_KEPT = 20
#: The exponent past which a retry's wait stops doubling (it is capped by
#: ``retry_delay_max`` long before; this only keeps the number finite).
_MAX_DOUBLINGS = 60


def retry_wait(record: Record, state: str, retryable: bool = True) -> float | None:
    """Seconds until the next attempt of the running job ``record`` whose
    attempt ended in ``state``, or ``None`` if the job ends here (see
    :meth:`Store.finish`); the Redis store's ``retry()`` in ``lua/lib.lua``
    mirrors it."""
    retries, attempt = record.get("retries") or 0, record.get("attempt") or 1
    if (record["state"] != "running" or attempt > retries
            or record.get("cancel_requested")):
        return None
    if state == "failed":
        if not retryable:
            return None
    elif state == "crashed":
        if not record.get("retry_crashed"):
            return None
    elif state != "timed_out":
        return None
    delay = float(record.get("retry_delay") or 0.0)
    wait: float = min(delay * 2 ** min(attempt - 1, _MAX_DOUBLINGS),
                      float(record.get("retry_delay_max") or 0.0))
    return wait


def attempt_divider(attempt: int, attempts: int) -> str:
    """The line a job's output gets before attempt ``attempt`` of
    ``attempts`` (``lua/lib.lua`` writes the same)."""
    return f"──── attempt {attempt} of {attempts} ────\n"


class Page(tuple[list[Record], int]):
    """What :meth:`Store.page` returns: ``(records, total)`` (it unpacks as
    that pair), and :attr:`partial`: whether a search stopped before the
    oldest jobs (see :data:`SEARCH_SCAN`), so that ``total`` counts only the
    matches among the newest.

    .. versionadded:: 0.2
    """

    partial: bool

    def __new__(cls, records: list[Record], total: int, partial: bool = False) -> Page:
        page = super().__new__(cls, (records, total))
        page.partial = partial
        return page

    def __reduce__(self) -> tuple[Any, ...]:  # (to and from pool workers)
        return (Page, (self[0], self[1], self.partial))

    @property
    def records(self) -> list[Record]:
        return self[0]

    @property
    def total(self) -> int:
        return self[1]


#: Upper bounds, in seconds, of the buckets of the job duration and queue
#: wait histograms (:class:`JobStats`), past which one more counts the rest
#: (``+Inf``): from a tenth of a second to an hour, for background work.
BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0)
#: Functions a store keeps figures for, each under its own name; jobs of
#: any other count under :data:`OTHER_FUNCTION`. A marked app's jobs are
#: named by method and path, and paths that hold ids would otherwise make
#: a new set of figures per id.
MAX_FUNCTIONS = 200
#: Bytes of a name kept in a figure's label (cut at a character boundary).
MAX_FUNCTION_BYTES = 200
#: What jobs of functions past :data:`MAX_FUNCTIONS` count under. No job's
#: name is this: a function's is ``module.qualname``, a marked app's
#: ``METHOD /path``.
OTHER_FUNCTION = "other"


def function_label(record: Record) -> str:
    """The label the job ``record`` is counted under: its
    :data:`FUNCTION_FIELD`, else its name, cut to :data:`MAX_FUNCTION_BYTES`
    bytes (a store checks the :data:`MAX_FUNCTIONS` bound itself);
    :data:`OTHER_FUNCTION` for one that is no text (a record changed outside
    wsgi_bg). The Redis store's ``label_of`` in ``lua/lib.lua`` mirrors it."""
    name = record.get(FUNCTION_FIELD)
    if name is None:
        name = record.get("name")
    if not isinstance(name, str):
        return OTHER_FUNCTION
    data = name.encode("utf-8", "replace")[:MAX_FUNCTION_BYTES]
    return data.decode("utf-8", "ignore")


@dataclass
class Histogram:
    """Observations of one function, per bucket of :data:`BUCKETS`.

    .. versionadded:: 0.2
    """

    #: How many fell in each bucket (not cumulative): ``len(BUCKETS) + 1``
    #: counts, the last for those past every bound (``+Inf``).
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    #: The sum of the observations, in seconds.
    sum: float = 0.0

    @property
    def count(self) -> int:
        """How many observations."""
        return sum(self.buckets)

    def observe(self, seconds: float) -> None:
        # The first bucket whose bound is at least ``seconds`` (le: <=).
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


@dataclass
class JobStats:
    """What a store counts as jobs end (:meth:`Store.stats`), with each end,
    atomically: every process reading the store reads the same figures.
    Functions are labelled by :func:`function_label`, at most
    :data:`MAX_FUNCTIONS` of them.

    .. versionadded:: 0.2
    """

    #: Jobs ended per ``(function, state it ended in)``.
    finished: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Seconds from start to end, per function, of jobs that started.
    duration: dict[str, Histogram] = field(default_factory=dict)
    #: Seconds from creation to start, per function, of jobs that started
    #: (observed when they end).
    queue_wait: dict[str, Histogram] = field(default_factory=dict)
    #: Attempts that ended and run again, per function.
    retries: dict[str, int] = field(default_factory=dict)

    #: The functions counted under their own name (the memory store's
    #: bound; the Redis store keeps its own, in Redis).
    functions: set[str] = field(default_factory=set, repr=False, compare=False)

    def _label(self, record: Record) -> str:
        label = function_label(record)
        if label != OTHER_FUNCTION and label not in self.functions:
            if len(self.functions) < MAX_FUNCTIONS:
                self.functions.add(label)
            else:
                label = OTHER_FUNCTION
        return label

    def observe_retry(self, record: Record) -> None:
        """Count an attempt of the job ``record`` that will run again (the
        Redis store's way is in ``retry()`` in ``lua/lib.lua``)."""
        label = self._label(record)
        self.retries[label] = self.retries.get(label, 0) + 1

    def observe(self, record: Record, state: str, ended_at: float) -> None:
        """Count the end of the job ``record`` (as it was before it ended) in
        ``state`` at ``ended_at``; the memory store's way (the Redis store's
        is ``observe()`` in ``lua/lib.lua``)."""
        label = self._label(record)
        key = (label, state)
        self.finished[key] = self.finished.get(key, 0) + 1
        started, created = record.get("started_at"), record.get("created_at")
        if isinstance(started, int | float) and isinstance(created, int | float):
            self.duration.setdefault(label, Histogram()).observe(
                max(0.0, ended_at - started))
            self.queue_wait.setdefault(label, Histogram()).observe(
                max(0.0, started - created))


@dataclass(frozen=True, slots=True)
class Ending:
    """How a job's attempt ended, as whoever ran it saw it: what
    :meth:`Store.finish` records. ``state``, the pickled ``result`` (of a
    job that succeeded) and ``error`` (the traceback, or why it ended);
    ``text``, ``progress`` and ``offset``, the output and progress not yet
    relayed (``offset``: where ``text`` starts in the attempt's output);
    ``shown``, the result's repr; ``cancel_seen``, whether the job read its
    cancel; ``retryable``, whether a failure may run again. An end decided
    without the job (a sweep, a cancel, a lost worker) is
    ``Ending(state, error=why)``.

    Picklable (it crosses to and from pool workers).

    .. versionadded:: 0.2
    """

    state: str
    result: bytes | None = None
    error: str | None = None
    text: str = ""
    progress: dict[str, Any] | None = None
    offset: int | None = None
    shown: str | None = None
    cancel_seen: bool = True
    retryable: bool = True


class Store(Protocol):
    """Records are plain dicts with at least :data:`RECORD_FIELDS`. Each method
    is atomic with respect to the others, across every process using the
    store.

    Output offsets count UTF-8 bytes ever written: ``since`` is an offset a
    previous read returned (0 for everything), and past ``max_output_bytes``
    the head and the tail are kept with a marker saying how much was dropped.
    """

    def create(
        self, record: Record, max_queued: int, call: bytes | None = None
    ) -> str | None:
        """Add a queued record, and ``call``, the job's pickled call (kept, as
        the record, until the job is dropped: see :meth:`call`); return its
        id, or ``None`` (and nothing added) if ``max_queued`` jobs are
        already waiting.

        A record whose ``unique`` (a key's digest) is held by a queued or
        running job adds nothing, and the answer is that job's id, whatever
        ``max_queued``; else the new job holds it until it ends (every way
        a job ends lets go, and so does its record's removal). A key held by
        a job that is gone or ended holds nothing. In the same atomic step:
        of all the creates with one key, in any process, one creates.

        A record whose ``rerun_of`` names a stored job is a run again of it:
        the same call sets that job's ``rerun_as`` to the new id, so each
        page links to the other and no reader sees one link without the
        other.

        A create run after its caller gave up on it (a timeout: the caller
        answered 503) must leave no queued job that nothing runs: the store
        refuses it or undoes it."""

    def call(self, job_id: str) -> bytes | None:
        """The pickled call kept with the job, or ``None`` (none kept, or the
        job was dropped). A store others can write to checks it first.

        :raises ~wsgi_bg.stores.signing.BadSignature: if the stored call fails
            its check (it is never returned, so never unpickled).
        """

    def start(self, job_id: str, pid: int) -> bool:
        """Move a queued job to running in process group ``pid``; ``False`` if
        it is no longer queued (cancelled, started by another process, or
        unknown). ``True`` again for the same ``pid`` while the job runs: a
        retry of a start whose answer was lost (a timeout) must not leave the
        job running with nothing running it."""

    def relay(
        self, job_id: str, text: str, progress: dict[str, Any] | None,
        offset: int | None = None,
    ) -> tuple[bool, float | None]:
        """Append output, record progress, renew the job's lease; return
        ``(stop, grace)``: whether the job was asked to stop (or can no longer
        be recorded) and the grace it was given.

        ``offset`` is the output size the writer expects before ``text``:
        if the store has more, a try that timed out had landed after all,
        and that much of ``text`` is not added again."""

    def finish(self, job_id: str, ending: Ending) -> str | None:
        """End a job, once, as ``ending`` says: in its ``state``, with its
        last output and progress (as :meth:`relay` would add them), its
        pickled ``result`` (kept apart from the record: see :meth:`result`)
        and ``shown``, the result's ``repr`` for pages. A job whose cancel
        was requested ends cancelled (``cancelled_how`` ``"stopped"``),
        except one that succeeded with ``cancel_seen`` false (its code never
        read the cancel: it completed its work), which stays succeeded with
        its result, ``cancelled_how`` ``"completed"``. Return the state
        stored, or ``None`` if the job had already ended.

        An attempt that may run again does not end the job: one that ended
        ``failed`` (and ``retryable``: its exception is one of the job's
        ``retry_on``), ``timed_out``, or ``crashed`` (with the record's
        ``retry_crashed``), of a job whose record has attempts left
        (``attempt`` <= ``retries``) and no cancel requested, goes back to
        ``queued`` in the same atomic step: ``attempt`` + 1, its error
        appended to ``errors``, ``retry_at`` set ``retry_delay`` *
        2**(attempt-1) seconds on (at most ``retry_delay_max``), a divider
        line added to the output, ``started_at``, ``pid``, ``error`` and
        ``progress`` cleared, and no owner (any process may run it: see
        :meth:`claim_retries`). The answer is then ``"queued"``; the finished
        figures of :meth:`stats` count only a job's final end, its retries
        apart.

        .. versionchanged:: 0.2
            The end is one :class:`Ending`, not nine arguments.
        """

    def finish_and_start(
        self, job_id: str, ending: Ending, next_id: str, pid: int
    ) -> tuple[str | None, bool]:
        """:meth:`finish` of ``job_id`` as ``ending`` says, then
        :meth:`start` of ``next_id`` in process group ``pid``, as one atomic
        change: one round trip where a worker runs jobs back to back, and no
        reader sees the next job running while the last one still runs.
        The end is recorded whatever the start's answer (``next_id``
        cancelled while queued, or started elsewhere).

        Return what :meth:`finish` and :meth:`start` would: ``(the state
        stored or None, whether next_id started)``.

        .. versionadded:: 0.2
        """

    def result(self, job_id: str) -> bytes | None:
        """The pickled result of a job that succeeded, else ``None``."""

    def claim_retries(
        self, limit: int = 100
    ) -> tuple[builtins.list[str], float | None]:
        """Take the jobs whose next attempt is due (``retry_at`` past), at
        most ``limit``: each is taken once, by one caller, whichever process
        asks (its ``retry_at`` cleared, its owner this store's, as a create
        makes it), for the caller to run. Return their ids, and when the
        next waiting one is due (``None``: none waits).

        .. versionadded:: 0.2
        """

    def next_retry(self) -> float | None:
        """When the first waiting retry is due, or ``None``; takes nothing.

        .. versionadded:: 0.2
        """

    def request_cancel(
        self, job_id: str, grace: float | None, shutdown: bool = False
    ) -> str:
        """Cancel a queued job at once ("cancelled"), ask a running one to stop
        ("requested"; ``grace`` shortens its grace), or "" if it has ended.
        With ``shutdown``, a running job is asked to stop but not cancelled:
        if it ends within its grace, its outcome stands; and a retry waiting
        for its time (no process's: see :meth:`claim_retries`) is left be
        (answer "")."""

    def get(self, job_id: str) -> Record | None:
        """The record without its output, or ``None``."""

    def read_output(self, job_id: str, since: int) -> tuple[str, int] | None:
        """Output after offset ``since`` and the next offset, or ``None``."""

    def view(self, job_id: str, since: int) -> tuple[Record, str, int] | None:
        """:meth:`get` and :meth:`read_output` at once (one round trip, one
        consistent state: what pages poll), or ``None``."""

    def list(self, limit: int | None = None) -> builtins.list[Record]:
        """Records, newest first (``limit`` of them; all if ``None`` or 0).

        :raises ValueError: for a ``limit`` that is not ``None`` or an
            integer from 0 to :data:`MAX_PAGE_INDEX`."""

    def page(
        self, states: tuple[str, ...] = (), query: str = "", offset: int = 0,
        limit: int = 50,
    ) -> Page:
        """One page of the list, newest first, and how many records match:
        those in any of ``states`` (all when empty) whose name contains
        ``query`` (ignoring case; on Redis, only ASCII letters' case) or
        whose id is ``query``; ``limit`` records from the ``offset``-th. What
        the list pages read: one call, whatever the number of jobs kept.

        A name is searched among the :data:`SEARCH_SCAN` newest jobs (in
        ``states``) only, so that a search costs the same whatever the
        number of jobs kept; the page's :attr:`Page.partial` says when older
        ones were left out. An id is found wherever it is.

        :raises ValueError: for an ``offset`` or ``limit`` that is not an
            integer from 0 to :data:`MAX_PAGE_INDEX` (see :func:`check_page`).

        .. versionadded:: 0.2
        """

    def ids_in_state(self, *states: str) -> builtins.list[str]:
        """Ids of the jobs in any of ``states``, oldest first."""

    def counts(self) -> dict[str, int]:
        """How many jobs are stored in each state."""

    def stats(self) -> JobStats:
        """What the store counted as jobs ended (see :class:`JobStats`),
        since it was created (the memory store: since the server process
        started its engine; Redis: kept across restarts, per namespace),
        whatever jobs were dropped since.

        .. versionadded:: 0.2
        """


class Link(Protocol):
    """How a process that runs jobs reaches the store: picklable, sent to
    pool workers. Links with equal :attr:`key` reach the same store."""

    key: str
    #: Whether a pool worker hands a job's end back in its answer, as an
    #: :class:`Ending` for the server to record, rather than recording it
    #: itself: where the store is the server's own, one round trip fewer.
    ends_in_answer: bool

    def connect(self) -> Store:
        """A store usable in this process (called once per process and key)."""


class Backend(Protocol):
    """One kind of store, as the engine starts, shares and stops it."""

    #: Whether every server process sees the same jobs (else: one process's).
    shared: bool

    def reader(self) -> Store:
        """A store for reads, usable before :meth:`start` (nothing started
        yet) and after it (a runner reading a record): it owns no jobs, so
        it must not create or start any."""

    def start(self, ctx: BaseContext, *, holds_queued: bool = True) -> Store:
        """Start what the store needs (processes, threads); the store to use
        in this process from now on. ``holds_queued``: whether the jobs this
        process queues wait in it (a pool of its own), so that they end
        ``crashed`` if it dies before they start; false when they wait
        elsewhere (RQ's queue) and outlive it."""

    def link(self) -> Link:
        """How processes that run jobs reach the store (after :meth:`start`)."""

    def stop(self) -> Store:
        """Stop what :meth:`start` started; a store that stays readable."""
