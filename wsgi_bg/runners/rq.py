"""The RQ runner: jobs run on ``rq worker`` processes, on any machine.

Use it when jobs must outlive the web server's deploys and restarts, or run
on machines of their own; it needs the Redis store::

    app = BackgroundMiddleware(app, store="redis://redis:6379/0", runner="rq")

and, on each worker host (the app's code importable, the same
``WSGI_BG_SECRET_KEY``), the stock command with wsgi_bg's worker class::

    rq worker -w wsgi_bg.rq_worker.Worker wsgi_bg --url redis://redis:6379/0

(see :mod:`wsgi_bg.rq_worker`: the worker runs wsgi_bg's jobs in its own
process, a long-lived supervisor as a pool worker is, and forks a work horse
for any other RQ job. RQ's stock worker class works too, slower:
``rq worker -c wsgi_bg.rq_worker wsgi_bg ...`` forks a work horse per job, and
the horse runs the supervisor.)

Data flow::

    web process                    Redis                       worker host
    ───────────                    ─────                       ───────────
    engine.submit
      store.create(record, call) ─► N:job:{id}, N:call:{id}
                                    (the call signed)
      queue.enqueue(perform, id) ─► rq:queue:N ─────────────► rq worker
                                                               perform(id, settings)
                                      N:call:{id} ◄───────────   store.call: checked
                                                                 supervise(...)
                                                                   job process (kept
                                                                   for the next job)
    pages ◄── store.view ◄─────────  output, progress,  ◄─────     relay, kill, reap
                                     result, lease

The RQ job holds the wsgi_bg job id and settings that are no secret (the
namespace, the store's limits, the timeout, the grace and
``max_jobs_per_process``): RQ's own pickles hold nothing of the user's, and
its description (what rq-dashboard shows) names the function only. The call
lives in the store, signed with the app's secret key; the worker checks it
before anything unpickles it, and a call that fails the check ends the job
``failed`` without being loaded.

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
import hashlib
import logging
from collections.abc import Callable, Iterator
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
    max_result_bytes = settings.get("max_result_bytes", MAX_RESULT_BYTES)
    tick = _in_worker
    if tick is not None:
        # In the RQ worker itself (wsgi_bg.rq_worker.Worker): a long-lived
        # supervisor, as a pool worker is, whose job process stays warm.
        return supervise(store, job_id, payload, settings["timeout"],
                         settings["grace"], settings.get("jobs_per_process", 1),
                         max_result_bytes, tick=tick, watch_parent=False)
    try:
        return supervise(store, job_id, payload, settings["timeout"],
                         settings["grace"], 1, max_result_bytes)
    finally:
        release_warm()  # a work horse runs one job: nothing to keep warm for


#: While :class:`wsgi_bg.rq_worker.Worker` runs a job in its own process (not
#: a work horse): the supervisor's ``tick`` (RQ's heartbeat, and whether the
#: worker is stopping; see :func:`~wsgi_bg.runners.supervisor.supervise`).
_in_worker: Callable[[], float | None] | None = None


@contextlib.contextmanager
def running_in_worker(tick: Callable[[], float | None]) -> Iterator[None]:
    """Within it, :func:`perform` supervises its job here, in the RQ worker's
    own long-lived process, calling ``tick`` on every turn of the
    supervisor's loop; the job process is kept for the next job."""
    global _in_worker
    _in_worker = tick
    try:
        yield
    finally:
        _in_worker = None


class RQRunner:
    """Queues each job on an :class:`rq.Queue` for stock ``rq worker``
    processes; the :class:`~wsgi_bg.runners.Runner` for ``runner="rq"`` or
    ``runner=rq.Queue(...)``. See the module docstring."""

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
            "jobs_per_process": jobs_per_process,
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

    def shutdown(self, timeout: float | None = None) -> None:
        # Jobs queued or running on RQ are the workers': they outlive this
        # web process (that is the point), so nothing is cancelled here.
        if self.queue is not None and self._given is None:
            self.queue.connection.connection_pool.disconnect()

