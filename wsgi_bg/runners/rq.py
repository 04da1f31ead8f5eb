"""The RQ runner: jobs run on ``rq worker`` processes, on any machine.

Use it when jobs must outlive the web server's deploys and restarts, or run
on machines of their own; it needs the Redis store::

    app = BackgroundMiddleware(app, store="redis://redis:6379/0", runner="rq")

and, on each worker host (the app's code importable, the same
``WSGI_BG_SECRET_KEY``), the stock command with wsgi_bg's worker class, on
the namespace's queue (:func:`queue_name`: ``wsgi_bg`` for the default
namespace, ``wsgi_bg.shop`` for ``namespace="shop"``)::

    rq worker -w wsgi_bg.rq_worker.Worker wsgi_bg --url redis://redis:6379/0

(see :mod:`wsgi_bg.rq_worker`: the worker runs wsgi_bg's jobs in its own
process, a long-lived supervisor as a pool worker is, and forks a work horse
for any other RQ job on other queues.)

Data flow::

    web process                    Redis                       worker host
    ───────────                    ─────                       ───────────
    engine.submit
      store.create(record, call) ─► N:job:{id}, N:call:{id}
                                    (the call signed)
      queue.enqueue(perform,     ─► rq:queue:wsgi_bg… ───────► rq worker
        reference, signed                                      checks the signature
        settings) (JSON)                                       perform(reference, …)
                                      N:call:{id} ◄─────────    store.find_call: checked
                                                                 supervise(...)
                                                                   job process (kept
                                                                   for the next job)
    pages ◄── store.view ◄─────────  output, progress,  ◄─────     relay, kill, reap
                                     result, lease

What RQ holds is JSON (RQ's ``JSONSerializer``, on wsgi_bg's queues only):
nothing of RQ's is ever unpickled by a web process or by wsgi_bg's worker
for these queues, so whoever can write to Redis cannot make them run code.
The RQ job is ``perform(reference, token)``: the reference
(:func:`rq_job_id`, also the RQ job's id) is a hash of the job id, which
identifies the job without opening its page (the job id is a capability);
the token holds the settings that are no secret (the namespace, the store's
limits, the timeout, the grace, ``max_jobs_per_process``, the queue), signed
with the app's secret key with the reference. wsgi_bg's worker runs an RQ
job of wsgi_bg's queues only if it is that call with a valid token naming
the queue it was taken from, and refuses anything else. The web process
never builds an RQ job from Redis (its cancel is a script on plain fields),
and the store starts a job at most once, so a finished job's call put back
on the queue does not run again. The call itself lives in the store,
signed; the worker checks it before anything unpickles it, and a call that
fails the check ends the job ``failed`` without being loaded.

The worker runs the same supervisor as a pool worker
(:func:`~wsgi_bg.runners.supervisor.supervise`): the job gets a process of its
own, so a timeout, a cancel or a crash ends that process, never the worker,
which takes its next job. While the job runs, the supervisor renews its lease
in the store (with every relay), and RQ's heartbeat; if the worker host dies,
the lease runs out and any process using the store ends the job ``crashed``
(within ``LEASE_SECONDS`` + 10 s). A job queued on RQ has no owner in the
store: it waits in RQ, not in the web process, and survives it.

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
import rq
from rq.defaults import RQ_KEY_PREFIX
from rq.serializers import JSONSerializer
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from ..exceptions import StoreUnavailable, WsgiBgError
from ..jobs import JobState
from ..limits import MAX_RESULT_BYTES
from ..stores import Backend, Ending
from ..stores import redis as _store_redis
from ..stores.redis import (
    SWEEP_SECONDS,
    RedisBackend,
    RedisStore,
    connect,
    connection_settings,
)
from ..stores.signing import BadSignature, Signer, resolve_secret_key
from .supervisor import JobCall, supervise

logger = logging.getLogger("wsgi_bg")

#: Seconds RQ's own timeout leaves beyond a job's timeout and grace: the
#: supervisor enforces the job's; RQ's timeout only sizes RQ's heartbeats.
RQ_TIMEOUT_MARGIN = 60
#: What names wsgi_bg's RQ queues begin with: on them, wsgi_bg's worker runs
#: nothing but signed wsgi_bg jobs (see :func:`is_wsgi_bg_queue`).
QUEUE_PREFIX = "wsgi_bg"
#: What RQ's jobs on wsgi_bg's queues are serialised with: JSON cannot run
#: code when loaded, as a pickle can.
SERIALIZER = JSONSerializer
_ADDRESS = ("host", "port", "path")
_PURPOSE = "rq job"


def queue_name(namespace: str) -> str:
    """The RQ queue of ``runner="rq"`` for ``namespace``: the namespace
    itself if it begins with ``wsgi_bg``, else ``wsgi_bg.<namespace>``
    (``wsgi_bg`` for the default namespace, ``wsgi_bg.shop`` for ``shop``).
    Give it to the workers: ``rq worker -w wsgi_bg.rq_worker.Worker
    wsgi_bg.shop``."""
    return namespace if is_wsgi_bg_queue(namespace) else f"{QUEUE_PREFIX}.{namespace}"


def is_wsgi_bg_queue(name: str) -> bool:
    """Whether the RQ queue ``name`` is wsgi_bg's: its name begins with
    ``wsgi_bg``. wsgi_bg's worker runs only signed wsgi_bg jobs there and
    reads them as JSON; on any other queue it is RQ's stock worker."""
    return name.startswith(QUEUE_PREFIX)


def rq_job_id(job_id: str, attempt: int = 1) -> str:
    """The RQ job id of a wsgi_bg job, which its RQ job also carries as its
    reference: derived, not the same (a wsgi_bg job id is a capability, and
    RQ ids show in rq-dashboard and ``rq info``). SHA-1, as Redis's scripts
    compute it too (``redis.sha1hex``); a job id is 256 random bits, so the
    hash neither reveals it nor meets another's. Each attempt of a job that
    runs again (``background(retries=...)``) is an RQ job of its own,
    ``-2``, ``-3``... after it: RQ keeps an ended RQ job for a while, and
    its old key must not become the next attempt's."""
    reference = _REFERENCE + hashlib.sha1(job_id.encode()).hexdigest()
    return reference if attempt == 1 else f"{reference}-{attempt}"


_REFERENCE = "wsgi_bg-"  # what a reference is before the job id's hash


class JobEnded(WsgiBgError):
    """What :func:`perform` raises when its job did not succeed, so that RQ
    records it as failed (or, for ``cancelled``, wsgi_bg's worker as
    cancelled): the message names the job's reference and its final state,
    never its id nor its error (both are on its page)."""

    def __init__(self, reference: str, state: str | None, why: str = "") -> None:
        self.state = state
        super().__init__(f"wsgi_bg job {reference} ended {state or 'unknown'}"
                         f"{': ' + why if why else ''} (its page says more)")


def _canonical(settings: dict[str, Any]) -> bytes:
    return json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()


def sign_reference(signer: Signer, reference: str, settings: dict[str, Any]) -> str:
    """The token of an RQ job: ``settings``, signed with ``reference``."""
    return signer.sign(_PURPOSE, reference, _canonical(settings)).hex()


def open_reference(signer: Signer, reference: str, token: str) -> dict[str, Any]:
    """The settings in ``token``, once its signature, made with
    ``reference``, checks out.

    :raises BadSignature: if it does not (or ``token`` is no token).
    """
    try:
        blob = bytes.fromhex(token)
    except ValueError:
        blob = b""
    data = signer.unsign(_PURPOSE, reference, blob)
    settings: dict[str, Any] = json.loads(data)
    return settings


def describe(name: str) -> str:
    """What RQ shows as the description of a wsgi_bg job named ``name``
    (rq-dashboard, ``rq info``): its function's name; for a marked app's
    request (named ``METHOD /path``), the method alone, since a path may
    carry a token."""
    method, _, path = name.partition(" ")
    return f"wsgi_bg: {method} request to a marked app" if path else f"wsgi_bg: {name}"


# RQ's cancel of a queued job (rq.job.Job.cancel of a job with no
# dependents: wsgi_bg's are never deferred nor scheduled), on plain fields.
# KEYS[1] the RQ job's hash, [2] the queue's list, [3] its canceled
# registry (see RQKeys); ARGV[1] the RQ job id, [2] the queue's name, [3] now.
_RQ_CANCEL = """
local found = redis.call('HMGET', KEYS[1], 'status', 'origin')
if found[1] ~= 'queued' or found[2] ~= ARGV[2] then return 0 end
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'canceled')
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
"""


@dataclasses.dataclass(frozen=True)
class RQKeys:
    """The keys of RQ's that the web process's scripts read and write for
    one queue, each from RQ's own classes, so that they follow RQ's
    ``RQ_KEY_PREFIX`` (set in the environment of the web processes and the
    workers alike, before rq is imported): no script names one of RQ's keys
    itself."""

    #: The queue's list of RQ job ids.
    queue: str
    #: What an RQ job's hash is named: this, then the RQ job's id.
    job_prefix: str
    #: The queue's canceled registry (a zset).
    canceled: str
    #: The set of the keys of the workers that listen on the queue.
    workers: str

    @classmethod
    def of(cls, queue: rq.Queue) -> RQKeys:
        return cls(queue=queue.key, job_prefix=queue.job_class.key_for(""),
                   canceled=queue.canceled_job_registry.key,
                   workers=WORKERS_BY_QUEUE_KEY % queue.name)

    def job(self, reference: str) -> str:
        """The hash of the RQ job whose id is ``reference``."""
        return self.job_prefix + reference


def check_key_prefixes(
    queue_class: type[rq.Queue], job_class: type[rq.job.Job]
) -> None:
    """Refuse a queue or job class whose key prefix is not RQ's: RQ names
    its other keys (workers, registries) from ``RQ_KEY_PREFIX`` alone, so a
    class's own prefix would leave wsgi_bg's scripts, or its workers,
    reading keys nothing writes.

    :raises ValueError: saying which prefix, and to set ``RQ_KEY_PREFIX``.
    """
    for what, given, rqs in (
            ("queue", queue_class.redis_queue_namespace_prefix,
             rq.Queue.redis_queue_namespace_prefix),
            ("job", job_class.redis_job_namespace_prefix,
             rq.job.Job.redis_job_namespace_prefix)):
        if given != rqs:
            raise ValueError(
                f"wsgi_bg's RQ queues need RQ's own {what} key prefix {rqs!r}"
                f" (from RQ_KEY_PREFIX), got {given!r} from"
                f" {queue_class.__name__ if what == 'queue' else job_class.__name__}:"
                " to move RQ's keys, set the environment variable RQ_KEY_PREFIX,"
                " the same for the web processes and the workers, instead")


def _address(settings: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(settings.get(name) for name in _ADDRESS)


_stores: dict[tuple[Any, ...], RedisStore] = {}
try:  # redis-py >= 7: driver_info=None (lib_name and lib_version deprecated)
    import redis.driver_info  # noqa: F401

    _NO_SETINFO: dict[str, Any] = {"driver_info": None}
except ImportError:  # redis-py 5 and 6
    _NO_SETINFO = {"lib_name": None, "lib_version": None}


def _worker_store(settings: dict[str, Any], connection: redis.Redis,
                  signer: Signer) -> RedisStore:
    """The store, reached through the RQ worker's Redis (with the store's
    database): the RQ job carries no password."""
    found = connection_settings(connection)
    found["db"] = settings["db"]
    # No CLIENT SETINFO: two round trips, and a package metadata lookup.
    found.update(_NO_SETINFO)
    # The limits too: a worker serves jobs of apps (or deploys) whose
    # keep_finished, job_ttl and max_output_bytes differ.
    key = (*_address(found), found["db"], settings["namespace"], id(signer),
           tuple(sorted(settings["limits"].items())))
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = RedisStore(
            connect(found), namespace=settings["namespace"], signer=signer,
            where=f"{_address(found)} db {found['db']}", **settings["limits"])
    return store


#: The secret key's signer in a worker process (see :func:`prepare_worker`).
_signer: Signer | None = None


def prepare_worker() -> Signer:
    """Read the secret key, once, in the RQ worker before it forks anything
    (see :mod:`wsgi_bg.rq_worker`), and return its signer.

    :raises ValueError: without ``WSGI_BG_SECRET_KEY`` (or too short); the
        message says how to make one.
    """
    global _signer
    if _signer is None:
        _signer = Signer(resolve_secret_key(None))
    return _signer


def perform(reference: str, token: str) -> str:
    """The RQ job's function: run the wsgi_bg job whose reference is
    ``reference`` to its end, in a job process of this RQ worker (wsgi_bg's
    worker class only), and record it in the store.

    Returns ``"succeeded"``, RQ's result, or ``"queued"`` for an attempt
    that runs again (``background(retries=...)``: the next attempt is an RQ
    job of its own).

    :raises JobEnded: if the job ended otherwise (failed, timed out, crashed,
        cancelled, or already ended), after it is recorded in the store.
    :raises BadSignature: for a token not signed with this worker's key.
    :raises RuntimeError: outside :class:`wsgi_bg.rq_worker.Worker`.
    """
    _running()
    return perform_admitted(reference, open_reference(prepare_worker(), reference,
                                                      token))


def _running() -> tuple[Callable[[], float | None], redis.Redis]:
    running = _in_worker
    if running is None:
        raise RuntimeError(
            "wsgi_bg's RQ jobs run only on wsgi_bg's worker class: rq worker -w"
            " wsgi_bg.rq_worker.Worker <queue> (it checks each job's signature"
            " before it runs it)")
    return running


def perform_admitted(reference: str, settings: dict[str, Any]) -> str:
    """:func:`perform`, for the worker that opened the token already
    (:func:`wsgi_bg.rq_worker.admit`): ``settings`` are what it holds,
    checked. The same answers and errors."""
    tick, connection = _running()
    store = _worker_store(settings, connection, prepare_worker())
    # The job, among those created at the instant the token says, whose id
    # hashes to the reference, and its call: one round trip.
    attempt = settings.get("attempt", 1)
    digest = reference.removeprefix(_REFERENCE)
    if attempt > 1:
        digest = digest.removesuffix(f"-{attempt}")  # (see rq_job_id)
    found = store.find_call(settings["created"], digest)
    if found is None:
        raise JobEnded(reference, None, "its record is no longer in the store")
    job_id, signed = found
    try:
        payload = store.check_call(job_id, signed)
    except BadSignature as exc:
        raise JobEnded(reference, store.finish(
            job_id, Ending(JobState.FAILED.value, error=str(exc)))) from None
    if payload is None:
        raise JobEnded(reference, store.finish(job_id, Ending(
            JobState.FAILED.value, error="the job's call is not in the store")))
    state = supervise(store, JobCall(
        job_id, payload, settings["timeout"], settings["grace"],
        settings.get("jobs_per_process", 1),
        settings.get("max_result_bytes", MAX_RESULT_BYTES)),
        tick=tick, watch_parent=False)
    if state in (JobState.SUCCEEDED.value, JobState.QUEUED.value):
        return state
    if state is None:  # cancelled before it started, or ended meanwhile
        record = store.get(job_id)
        state = None if record is None else record["state"]
    raise JobEnded(reference, state)


#: While :class:`wsgi_bg.rq_worker.Worker` runs a job in its own process (not
#: a work horse): the supervisor's ``tick`` (RQ's heartbeat, and whether the
#: worker is stopping; see :func:`~wsgi_bg.runners.supervisor.supervise`),
#: and the worker's Redis.
_in_worker: tuple[Callable[[], float | None], redis.Redis] | None = None


@contextlib.contextmanager
def running_in_worker(
    tick: Callable[[], float | None], connection: redis.Redis
) -> Iterator[None]:
    """Within it, :func:`perform` supervises its job here, in the RQ worker's
    own long-lived process, calling ``tick`` on every turn of the
    supervisor's loop, and reaches the store through ``connection`` (the
    worker's Redis); the job process is kept for the next job."""
    global _in_worker
    _in_worker = (tick, connection)
    try:
        yield
    finally:
        _in_worker = None


#: Seconds a job may wait after its record was created before its RQ job
#: must be in Redis (the submit that creates one queues the other next).
QUEUE_GRACE_SECONDS = 5.0
#: Seconds a job must stay taken by an RQ worker and not started (or never
#: queued) before it ends crashed: a live worker starts it within
#: milliseconds of taking it.
TAKEN_SECONDS = 8.0

# What the RQ runner's sweep does, in one script on the store's and RQ's keys
# (see RQSweep). ARGV[1..6]: the store's (see stores/redis.py); [7] what an
# RQ job's hash is named before its id (RQKeys.job_prefix), [8] grace,
# [9] seconds a suspect waits, [10] the queue's name, [11] the RQ queue's
# list, [12] the set of the workers listening on it. (ARGV, as the store's
# scripts: Redis asks write access to a script's KEYS, and the documented ACL
# lets the web processes only read the workers' set.)
# Returns {how many jobs it ended, 1 if a live worker listens else 0, the
# ids of the jobs waiting on the queue}.
_RQ_SWEEP = """
local rq_job, qname = ARGV[7], ARGV[10]
local grace, wait = tonumber(ARGV[8]), tonumber(ARGV[9])
local listed = {}
for _, ref in ipairs(redis.call('LRANGE', ARGV[11], 0, -1)) do listed[ref] = true end
local listening = 0
for _, worker in ipairs(redis.call('SMEMBERS', ARGV[12])) do
  if redis.call('EXISTS', worker) == 1 then listening = 1 break end
end
local ended_n, waiting = 0, {}
local function taken(id, why)
  -- (not a number: changed outside wsgi_bg; taken as new, as sweep.lua does)
  local first = tonumber(redis.call('HGET', P .. 'suspects', id))
  if not first then
    redis.call('HSET', P .. 'suspects', id, ARGV[2])
  elseif NOW - first >= wait then
    redis.call('HSET', k('job', id), 'state', 'crashed', 'ended_at', ARGV[2],
               'error', cjson.encode(why), 'pid', 'null')
    ended(id, 'queued', 'crashed', ARGV[2])
    ended_n = ended_n + 1
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'state:queued', '-inf',
                               NOW - grace)) do
  local key = k('job', id)
  -- owner null: it waits in RQ (a pool's queued job has an owner)
  -- (a retry waiting for its time is in no queue yet: see claim.lua)
  if redis.call('HGET', key, 'owner') == 'null'
      and not redis.call('ZSCORE', P .. 'retries', id) then
    local ref = 'wsgi_bg-' .. redis.sha1hex(id)
    local attempt = tonumber(redis.call('HGET', key, 'attempt'))
    if attempt and attempt > 1 then ref = ref .. '-' .. attempt end  -- rq_job_id()
    local rq = redis.call('HMGET', rq_job .. ref, 'status', 'worker_name', 'origin')
    local status, worker, origin = rq[1], rq[2], rq[3] or qname
    if not status then
      taken(id, "this job never reached RQ's queue " .. qname .. ' (its RQ job'
        .. ' is not in Redis: queueing it failed after its record was created,'
        .. ' or it was deleted from RQ), so nothing would run it: it ended crashed')
    elseif status == 'queued' and listed[ref] then
      redis.call('HDEL', P .. 'suspects', id)
      waiting[#waiting + 1] = id
    elseif status == 'queued' and origin ~= qname then
      -- It waits on another queue of the namespace (another app's runner,
      -- or a deploy that renamed it): that queue's sweep judges it.
    elseif status == 'queued' or status == 'started' then
      local who = 'an RQ worker'
      if status == 'started' and worker and worker ~= '' then
        who = 'the RQ worker ' .. worker
      end
      taken(id, who .. " took this job off RQ's queue " .. origin
        .. ' and stopped before it started it (killed, or its host gone): it'
        .. ' ended crashed')
    elseif status ~= 'scheduled' and status ~= 'deferred' then
      taken(id, 'RQ recorded this job ' .. status .. ' before it started, on'
        .. ' queue ' .. origin .. " (taken by a worker that is not wsgi_bg's"
        .. " class, or ended with RQ's own commands): it ended crashed")
    end
  end
end
return {ended_n, listening, waiting}
"""


def _store_lib() -> str:
    """The store's Lua prelude, lua/lib.lua (``k``, ``ended``,
    ``N:suspects``): the sweep changes states as the store's scripts do."""
    return _store_redis._lua("lib")


def waiting_notice(queue: str) -> str:
    """What a job waiting on ``queue`` with no RQ worker listening says (its
    record's ``notice``) until one listens, or the job starts or ends."""
    # A worker with another RQ_KEY_PREFIX than this process is not seen.
    prefix = "" if RQ_KEY_PREFIX == "rq" else f"RQ_KEY_PREFIX={RQ_KEY_PREFIX} "
    return (f"Waiting: no RQ worker listens on queue {queue}. Start one with:"
            f" {prefix}rq worker -w wsgi_bg.rq_worker.Worker {queue} --url <the"
            " store's Redis>")


class RQSweep:
    """The RQ runner's sweep, run by each web process from its first
    request or submit (the runner starts then), every ``SWEEP_SECONDS``, in
    one Lua script (bounded by the jobs queued in the namespace and the
    length of the RQ queue; nothing of RQ's is unpickled, only plain fields
    read). For each job queued on RQ:

    - its RQ job is not in Redis (queueing it failed after its record was
      created): it ends ``crashed`` saying so;
    - an RQ worker took it off the queue and did not start it (killed
      between the two): it ends ``crashed``, naming the worker;
    - RQ ended it before it started (a stock worker, RQ's commands): it
      ends ``crashed`` saying so;
    - it waits on the queue and no live RQ worker listens there: its
      ``notice`` says so, with the command that starts one, until one
      does (:meth:`RedisStore.set_notice
      <wsgi_bg.stores.redis.RedisStore.set_notice>`; its start or its end
      clears it too).

    Each of the first three must hold at two sweeps ``TAKEN_SECONDS``
    apart (the store's ``N:suspects``), and only for jobs created more than
    ``QUEUE_GRACE_SECONDS`` ago: a live worker starts what it takes in
    milliseconds, and a submit queues what it creates at once.
    """

    def __init__(self, store: RedisStore, queue: rq.Queue) -> None:
        self._store = store
        self._queue = queue
        self._keys = RQKeys.of(queue)
        # The store's Lua library: its state changes (ended) and arguments.
        self._script = store._r.register_script(_store_lib() + _RQ_SWEEP)
        self._notice = waiting_notice(queue.name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> int:
        """One sweep; how many jobs it ended."""
        keys = self._keys
        ended, listening, waiting = self._script(args=self._store._args(
            keys.job_prefix, QUEUE_GRACE_SECONDS, TAKEN_SECONDS, self._queue.name,
            keys.queue, keys.workers))
        self._store.set_notice([raw.decode() for raw in waiting],
                               None if listening else self._notice)
        return int(ended)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wsgi_bg-rq-sweep",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(SWEEP_SECONDS):
            try:
                self.sweep()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not failing:
                    logger.warning("wsgi_bg: the RQ sweep cannot reach Redis: %s", exc)
                failing = True
            except Exception:  # keep sweeping whatever one sweep met
                logger.exception("wsgi_bg: the RQ sweep failed")
            else:
                failing = False

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class RQRunner:
    """Queues each job on an :class:`rq.Queue` for ``rq worker`` processes
    with wsgi_bg's worker class; the :class:`~wsgi_bg.runners.Runner` for
    ``runner="rq"`` or ``runner=rq.Queue(...)``. See the module docstring."""

    kind = "rq"
    needs_link = False
    holds_queued = False

    def __init__(
        self, queue: rq.Queue | None, *, backend: Backend,
        max_result_bytes: int = MAX_RESULT_BYTES, jobs_per_process: int = 1,
    ) -> None:
        if not isinstance(backend, RedisBackend):
            raise ValueError(
                "runner='rq' needs the Redis store: pass store='redis://…' too"
                " (the RQ workers read each job's call from it and write its"
                " output there), got the default in-memory store"
            )
        link = backend.link()
        self._store_settings = link.settings
        if queue is not None:
            theirs = connection_settings(queue.connection)
            if (_address(theirs), theirs.get("db", 0)) != (
                    _address(link.settings), link.settings.get("db", 0)):
                raise ValueError(
                    "the RQ queue's Redis must be the store's (same host and"
                    " port, or socket, and database: one script reads both),"
                    f" got queue at {_address(theirs)} db {theirs.get('db', 0)}"
                    f" and store at {_address(link.settings)} db"
                    f" {link.settings.get('db', 0)}"
                )
            if not is_wsgi_bg_queue(queue.name):
                raise ValueError(
                    f"the RQ queue's name must begin with {QUEUE_PREFIX!r}"
                    " (wsgi_bg's worker class runs only signed wsgi_bg jobs on"
                    " such queues, and plain RQ jobs on any other), got"
                    f" {queue.name!r}: name it e.g. {queue_name(queue.name)!r}"
                )
            check_key_prefixes(type(queue), queue.job_class)
        self._given = queue
        self.queue: rq.Queue | None = None
        self._client: redis.Redis | None = None  # the store's keys
        self._backend = backend
        self._sweep: RQSweep | None = None
        self._cancel: Any = None  # _RQ_CANCEL, registered on the queue's Redis
        self._keys: RQKeys | None = None
        self._signer = Signer(link.secret)
        self._settings: dict[str, Any] = {
            "namespace": link.namespace, "limits": dict(link.limits),
            "db": link.settings.get("db", 0), "max_result_bytes": max_result_bytes,
            "jobs_per_process": jobs_per_process,
        }

    def start(self, link: Any) -> None:
        if self.queue is None:
            given = self._given
            self._client = connect(self._store_settings)
            # Our own Queue on the given one's connection: JSON, whatever
            # serializer it was made with.
            self.queue = rq.Queue(
                given.name if given is not None else queue_name(
                    self._settings["namespace"]),
                connection=self._client if given is None else given.connection,
                serializer=SERIALIZER)
            self._cancel = self.queue.connection.register_script(_RQ_CANCEL)
            self._keys = RQKeys.of(self.queue)
            reader = self._backend.reader()
            if isinstance(reader, RedisStore):
                self._sweep = RQSweep(reader, self.queue)
                self._sweep.start()

    def _queue(self) -> rq.Queue:
        if self.queue is None:
            raise RuntimeError("the RQ runner is not started")
        return self.queue

    def _rq_keys(self) -> RQKeys:
        if self._keys is None:
            raise RuntimeError("the RQ runner is not started")
        return self._keys

    def submit(
        self, job_id: str, payload: bytes, timeout: float | None, grace: float,
        name: str, created_at: float, attempt: int = 1,
    ) -> None:
        if name.startswith("__main__."):
            # As rq refuses them: a worker imports the function by name.
            raise TypeError(
                f"cannot run {name} on RQ workers: they import a job's function"
                " by its module's name, and __main__ is not one. Move it to a"
                " module, or serve the app from the module imported by name."
            )
        queue = self._queue()
        limit = -1 if timeout is None else int(timeout + grace) + RQ_TIMEOUT_MARGIN
        reference = rq_job_id(job_id, attempt)
        # The job's instant in the list (its score there, as the store wrote
        # it): how the worker finds the job from its reference (see
        # RedisStore.find_call).
        created = float(created_at)
        try:
            # The queue signed in: a worker runs it from this queue only
            # (not from another namespace's, where someone moved it).
            settings = dict(self._settings, timeout=timeout, grace=grace,
                            created=created, queue=queue.name)
            if attempt > 1:
                settings["attempt"] = attempt
            # One round trip: RQ's enqueue without a pipeline makes two.
            with queue.connection.pipeline() as pipe:
                queue.enqueue_call(
                    perform, args=(reference, sign_reference(
                        self._signer, reference, settings)),
                    timeout=limit, description=describe(name), job_id=reference,
                    pipeline=pipe)
                pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(
                f"the RQ queue's Redis cannot be reached: {exc}. Try again shortly."
            ) from exc

    def _attempt(self, job_id: str) -> int:
        """The job's attempt (1 unless it runs again), from its record."""
        if self._client is None:
            raise RuntimeError("the RQ runner is not started")
        raw = self._client.hget(f"{self._settings['namespace']}:job:{job_id}",
                                "attempt")
        try:
            number = int(json.loads(raw)) if raw else 1
        except (ValueError, TypeError):
            number = 1
        return max(number, 1)

    def cancel(self, job_id: str) -> None:
        # The store says cancelled already: a worker that takes the job finds
        # it so and runs nothing. Taking it off RQ's queue is tidiness.
        # Plain fields, in one script: the web process never builds an RQ
        # Job from Redis (its restore decompresses what anyone planted).
        queue, keys = self._queue(), self._rq_keys()
        try:
            reference = rq_job_id(job_id, self._attempt(job_id))
        except redis.RedisError as exc:  # Redis away: harmless
            logger.debug("wsgi_bg: could not cancel RQ job of %s: %r",
                         rq_job_id(job_id), exc)
            return
        try:
            self._cancel(
                keys=[keys.job(reference), keys.queue, keys.canceled],
                args=[reference, queue.name, repr(time.time())])
        except redis.RedisError as exc:  # Redis away: harmless
            logger.debug("wsgi_bg: could not cancel RQ job of %s: %r",
                         rq_job_id(job_id), exc)

    def shutdown(self, timeout: float | None = None) -> None:
        # Jobs queued or running on RQ are the workers': they outlive this
        # web process (that is the point), so nothing is cancelled here.
        if self._sweep is not None:
            self._sweep.stop()
        if self._client is not None:
            self._client.connection_pool.disconnect()
