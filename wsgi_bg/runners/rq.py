"""The RQ runner: jobs run on stock ``rq worker`` processes, on any machine.

Use it when jobs must outlive the web server's deploys and restarts, or run
on machines of their own; it needs the Redis store::

    app = BackgroundMiddleware(app, store="redis://redis:6379/0", runner="rq")

and, on each worker host (the app's code importable, the same
``WSGI_BG_SECRET_KEY``)::

    rq worker -c wsgi_bg.rq_worker wsgi_bg --url redis://redis:6379/0

(``-c wsgi_bg.rq_worker``: the worker imports wsgi_bg, and the job modules
named in ``WSGI_BG_PRELOAD``, once before it forks, instead of every work
horse importing them for its job; see :mod:`wsgi_bg.rq_worker`.)

Data flow::

    web process                    Redis                       worker host
    ───────────                    ─────                       ───────────
    engine.submit
      store.create(record, call) ─► N:job:{id}, N:call:{id}
                                    (the call signed)
      queue.enqueue(perform, id) ─► rq:queue:N ─────────────► rq worker
                                                               fork: work horse
                                                               perform(id, settings)
                                      N:call:{id} ◄───────────   store.call: checked
                                                                 supervise(...)
                                                                   fork: job process
    pages ◄── store.view ◄─────────  output, progress,  ◄─────     relay, kill, reap
                                     result, lease

The RQ job holds the wsgi_bg job id and settings that are no secret (the
namespace, the store's limits, the timeout and the grace): RQ's own pickles
hold nothing of the user's, and its description (what rq-dashboard shows)
names the function only. The call lives in the store, signed with the app's
secret key; a work horse checks it before anything unpickles it, and a call
that fails the check ends the job ``failed`` without being loaded.

The work horse runs the same supervisor as a pool worker
(:func:`~wsgi_bg.runners.supervisor.supervise`): the job gets a process of its
own, so a timeout, a cancel or a crash ends that process, never the work
horse, and the RQ worker takes its next job. While the job runs, the
supervisor renews its lease in the store (with every relay); if the worker
host dies, the lease runs out and any process using the store ends the job
``crashed`` (within ``LEASE_SECONDS`` + 10 s). A job queued on RQ has no owner
in the store: it waits in RQ, not in the web process, and survives it.

.. versionadded:: 0.2
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import redis
import rq

from ..exceptions import StoreUnavailable
from ..jobs import JobState
from ..limits import MAX_RESULT_BYTES
from ..stores import Backend
from ..stores.redis import RedisBackend, RedisStore, connect, connection_settings
from ..stores.signing import BadSignature, Signer, resolve_secret_key
from .supervisor import release_warm, supervise

logger = logging.getLogger("wsgi_bg")

#: Seconds RQ's own timeout leaves beyond a job's timeout and grace: the
#: supervisor enforces the job's; RQ's would kill the supervisor itself.
RQ_TIMEOUT_MARGIN = 60
_ADDRESS = ("host", "port", "path")


def rq_job_id(job_id: str) -> str:
    """The RQ job id of a wsgi_bg job: derived, not the same (a wsgi_bg job id
    is a capability, and RQ ids show in rq-dashboard's addresses)."""
    return "wsgi_bg-" + hashlib.sha256(job_id.encode()).hexdigest()[:32]


def _address(settings: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(settings.get(name) for name in _ADDRESS)


_stores: dict[tuple[Any, ...], RedisStore] = {}
try:  # redis-py >= 7: driver_info=None (lib_name and lib_version deprecated)
    import redis.driver_info  # noqa: F401

    _NO_SETINFO: dict[str, Any] = {"driver_info": None}
except ImportError:  # redis-py 5 and 6
    _NO_SETINFO = {"lib_name": None, "lib_version": None}


def _worker_store(settings: dict[str, Any], connection: redis.Redis | None,
                  signer: Signer) -> RedisStore:
    """The store, reached from a work horse through its RQ worker's Redis
    (with the store's database): the RQ job carries no password."""
    if connection is None:
        raise RuntimeError("wsgi_bg.runners.rq.perform runs only as an RQ job")
    found = connection_settings(connection)
    found["db"] = settings["db"]
    # No CLIENT SETINFO: its two round trips, and the version lookup in the
    # package metadata behind it, cost milliseconds in a fresh work horse.
    found.update(_NO_SETINFO)
    key = (*_address(found), found["db"], settings["namespace"], id(signer))
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = RedisStore(
            connect(found), namespace=settings["namespace"], signer=signer,
            where=f"{_address(found)} db {found['db']}", **settings["limits"])
    return store


_signer: Signer | None = None


def prepare_worker() -> None:
    """What a work horse would otherwise do for every job, done once in its
    RQ worker before the forks (see :mod:`wsgi_bg.rq_worker`): read the
    secret key. A missing key is left for :func:`perform` to report, per job."""
    global _signer
    try:
        _signer = Signer(resolve_secret_key(None))
    except ValueError:
        pass


def perform(job_id: str, settings: dict[str, Any]) -> str | None:
    """The RQ job's function: run wsgi_bg job ``job_id`` to its end, in a job
    process of this work horse, and record it in the store.

    Returns the final state (RQ's result), or ``None`` if the job was
    cancelled before it started, had already ended, or was dropped.
    """
    global _signer
    current = rq.get_current_job()
    try:
        if _signer is None:
            _signer = Signer(resolve_secret_key(None))
        signer = _signer
        missing_key = None
    except ValueError as exc:  # no WSGI_BG_SECRET_KEY on this worker host
        signer, missing_key = Signer(b""), str(exc)
    store = _worker_store(settings, current.connection if current else None, signer)
    if missing_key is not None:
        store.finish(job_id, JobState.FAILED.value, None,
                     f"the RQ worker could not check this job's call: {missing_key}")
        raise RuntimeError(missing_key)
    try:
        payload = store.call(job_id)
    except BadSignature as exc:
        store.finish(job_id, JobState.FAILED.value, None, str(exc))
        return JobState.FAILED.value
    if payload is None:
        if store.get(job_id) is None:
            return None  # dropped (expired) while it waited
        return store.finish(job_id, JobState.FAILED.value, None,
                            "the job's call is not in the store")
    try:
        return supervise(store, job_id, payload, settings["timeout"],
                         settings["grace"], 1,
                         settings.get("max_result_bytes", MAX_RESULT_BYTES))
    finally:
        release_warm()  # a work horse runs one job: nothing to keep warm for


class RQRunner:
    """Queues each job on an :class:`rq.Queue` for stock ``rq worker``
    processes; the :class:`~wsgi_bg.runners.Runner` for ``runner="rq"`` or
    ``runner=rq.Queue(...)``. See the module docstring."""

    kind = "rq"
    needs_link = False
    holds_queued = False

    def __init__(
        self, queue: rq.Queue | None, *, backend: Backend,
        max_result_bytes: int = MAX_RESULT_BYTES,
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
            if _address(theirs) != _address(link.settings):
                raise ValueError(
                    "the RQ queue's Redis must be the store's (same host and"
                    f" port, or socket), got queue at {_address(theirs)} and"
                    f" store at {_address(link.settings)}"
                )
        self._given = queue
        self.queue = queue
        self._settings: dict[str, Any] = {
            "namespace": link.namespace, "limits": dict(link.limits),
            "db": link.settings.get("db", 0), "max_result_bytes": max_result_bytes,
        }

    def start(self, link: Any) -> None:
        if self.queue is None:
            self.queue = rq.Queue(self._settings["namespace"],
                                  connection=connect(self._store_settings))

    def _queue(self) -> rq.Queue:
        if self.queue is None:
            raise RuntimeError("the RQ runner is not started")
        return self.queue

    def submit(
        self, job_id: str, payload: bytes, timeout: float | None, grace: float,
        name: str,
    ) -> None:
        if name.startswith("__main__."):
            # As rq refuses them: a worker imports the function by name.
            raise TypeError(
                f"cannot run {name} on RQ workers: they import a job's function"
                " by its module's name, and __main__ is not one. Move it to a"
                " module, or serve the app from the module imported by name."
            )
        settings = dict(self._settings, timeout=timeout, grace=grace)
        limit = -1 if timeout is None else int(timeout + grace) + RQ_TIMEOUT_MARGIN
        try:
            self._queue().enqueue_call(
                perform, args=(job_id, settings), timeout=limit,
                description=f"wsgi_bg: {name}", job_id=rq_job_id(job_id),
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(
                f"the RQ queue's Redis cannot be reached: {exc}. Try again shortly."
            ) from exc

    def cancel(self, job_id: str) -> None:
        # The store says cancelled already: a work horse that takes the job
        # finds it so and runs nothing. Taking it off RQ's queue is tidiness.
        try:
            rq.job.Job.fetch(rq_job_id(job_id), connection=self._queue().connection
                             ).cancel()
        except Exception as exc:  # taken meanwhile, gone, Redis away: harmless
            logger.debug("wsgi_bg: could not cancel RQ job of %s: %r", job_id, exc)

    def restart(self) -> None:
        pass  # nothing here can break: RQ's workers are their own processes

    def shutdown(self) -> None:
        # Jobs queued or running on RQ are the workers': they outlive this
        # web process (that is the point), so nothing is cancelled here.
        if self.queue is not None and self._given is None:
            self.queue.connection.connection_pool.disconnect()

