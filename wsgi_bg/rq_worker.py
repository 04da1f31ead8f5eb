"""The RQ worker for wsgi_bg jobs: a stock ``rq worker`` with wsgi_bg's
worker class (``-w``, RQ's option for worker classes), on the namespace's
queue (:func:`wsgi_bg.runners.rq.queue_name`)::

    WSGI_BG_PRELOAD=myapp.jobs rq worker -w wsgi_bg.rq_worker.Worker wsgi_bg --url redis://...

:class:`Worker` runs each wsgi_bg job in the worker process itself, which
then stays a long-lived supervisor, as a pool worker is: it forks the job's
process (a timeout, a cancel or a crash ends that process, never the
worker), keeps it for the next job (``max_jobs_per_process``), and keeps its
store connection. Every RQ job on other queues gets a work horse forked for
it, as on a stock worker.

**What it runs.** wsgi_bg's queues are those whose names begin with
``wsgi_bg`` (:func:`~wsgi_bg.runners.rq.is_wsgi_bg_queue`). Their jobs are
read with RQ's JSON serializer, never unpickled, and an RQ job there runs
only if it is wsgi_bg's call (``perform``) with a reference whose signature
checks out with ``WSGI_BG_SECRET_KEY`` and names the queue it was taken
from: anything else (another function, a pickle, a forged or foreign token,
a job moved from another queue) is refused, logged and recorded failed in
RQ's failed registry, without being loaded. A job hash RQ cannot parse, or
with a field larger than ``max_field_bytes`` raw or decompressed, is refused
too, before it is read or decompressed, and stops no worker. Callbacks, webhooks and
dependents of jobs on these queues are never run, and RQ's scheduler is not
run for them. On other queues it is RQ's stock worker, trusting Redis as RQ
does. Without a secret key it refuses to start if it listens on one of
wsgi_bg's queues.

**RQ's books.** A wsgi_bg job that succeeds is RQ's finished; one that fails,
times out or crashes is RQ's failed (failed registry, the worker's failed
count); one cancelled from its page is RQ's canceled; one stopped by RQ's
``stop-job`` command is RQ's stopped (and wsgi_bg's cancelled).

What a stock forking worker does while its horse runs, this one does from
the supervisor's loop, with no thread: it renews RQ's heartbeats every
``--job-monitoring-interval`` seconds, so RQ never takes a long job, or the
worker, for dead. A warm shutdown (SIGTERM, or Ctrl+C) asks the running job
to stop, as a cancel does, kills its process ``cancel_grace`` seconds later,
records it, then exits; a second signal (a cold shutdown), or RQ's
``stop-job`` command, kills the job's process at once. A worker killed
outright takes the job's process with it (Linux), and the job ends
``crashed`` once its lease runs out.

Importing this module (``-w``) also imports wsgi_bg's RQ runner and what a
job's module imports of wsgi_bg (``background``, ``current_job``), then each
module named in ``WSGI_BG_PRELOAD`` (comma-separated: the app's job
modules), before the worker forks anything: its job processes do not import
them again (100-150 ms per job on a 2-CPU machine otherwise). Preload only
modules that are safe to fork: a module that starts threads or opens
connections when imported would hand them, half-usable, to every child (the
same rule as ``gunicorn --preload``). It sets no RQ setting (no UPPERCASE
names), so ``import wsgi_bg.rq_worker`` in an RQ settings module of yours
preloads too.

.. versionadded:: 0.2
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import signal
import sys
import time
import typing
import zlib
from types import FrameType

import redis
import rq
from rq import defaults as _rq_defaults
from rq import worker as _rq_worker
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import JobStatus
from rq.job_lifecycle import format_exc_info
from rq.utils import now

from .runners import rq as _rq
from .runners.supervisor import preload_api, release_warm
from .stores.signing import BadSignature

# No UPPERCASE names here (typing.TYPE_CHECKING, not TYPE_CHECKING): a -c
# settings module's are RQ's settings.
if typing.TYPE_CHECKING:
    from rq.executions import Execution

#: Seconds the pub/sub thread (RQ's commands) waits for a message at a time:
#: how long stopping it may take.
_pubsub_wait = 0.5

_perform_name = f"{_rq.perform.__module__}.{_rq.perform.__qualname__}"

if not hasattr(rq.Queue, "_fetch_dequeued_job"):  # what _Queues overrides
    raise ImportError(
        f"wsgi_bg.rq_worker needs rq 3 (rq >= 3.0, < 4), got rq {rq.__version__}:"
        ' pip install "wsgi_bg[rq]"')


#: The most bytes a field of an RQ job hash on wsgi_bg's queues may hold,
#: raw and decompressed (a wsgi_bg job's are a few KiB): past it, the job is
#: refused unread, so a planted zlib bomb cannot fill the worker's memory.
max_field_bytes = 1 << 20
_compressed = (b"data", b"exc_info")  # what RQ's restore zlib-decompresses
_log = logging.getLogger("rq.worker")  # where RQ's worker logs


class UnreadableJob(NoSuchJobError):
    """An RQ job hash of wsgi_bg's queues that RQ cannot read (or may not:
    too large): to RQ's worker, its queues and registries, no job at all."""


class _Job(rq.job.Job):
    """An RQ job of wsgi_bg's queues: read as JSON, and whatever its hash
    names, it has no callback to import and run and no webhook to call.

    A hash that does not parse, or whose fields are larger than
    ``max_field_bytes`` raw or decompressed, is refused: logged, marked
    failed with plain writes, and :class:`UnreadableJob` raised, which every
    path of RQ's that fetches jobs (dequeue, the intermediate queue's and
    the registries' clean-ups) takes for a job that is gone: a planted hash
    stops no worker."""

    success_callback = None
    failure_callback = None
    stopped_callback = None

    def send_webhooks(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        pass

    @classmethod
    def fetch(cls, id: str, connection: redis.Redis | None = None,
              serializer: typing.Any = None) -> _Job:
        try:
            job = super().fetch(id, connection=connection, serializer=serializer)
        except (NoSuchJobError, redis.RedisError):
            raise
        except Exception as exc:  # what RQ's restore (or id check) raised
            raise _unreadable(connection, id, f"{type(exc).__name__}: {exc}") from None
        return typing.cast(_Job, job)

    @classmethod
    def fetch_many(cls, job_ids: typing.Iterable[str], connection: redis.Redis,
                   serializer: typing.Any = None) -> list[rq.job.Job | None]:
        # One by one, each checked (RQ's pipelines HGETALLs, then restores).
        found: list[rq.job.Job | None] = []
        for job_id in job_ids:
            try:
                found.append(cls.fetch(job_id, connection=connection,
                                       serializer=serializer))
            except NoSuchJobError:
                found.append(None)
        return found

    def refresh(self) -> None:
        # RQ's (HGETALL, then restore), but its fields' sizes are checked
        # first, in the same script: HGETALL would load a field of any size.
        global _fetch
        if _fetch is None:
            _fetch = self.connection.register_script(_fetch_source)
        readable, found = _fetch(keys=[self.key], args=[max_field_bytes],
                                 client=self.connection)
        if not readable:
            raise _unreadable(self.connection, self.id,
                              f"a field of {found:,} bytes (at most"
                              f" {max_field_bytes:,})")
        if not found:
            raise NoSuchJobError(f"No such job: {self.key}")
        self.restore(dict(zip(found[::2], found[1::2], strict=True)))

    def restore(self, raw_data: typing.Any) -> typing.Any:
        for field in _compressed:
            raw = raw_data.get(field)
            if raw and len(_bounded_unzip(raw)) > max_field_bytes:
                raise ValueError(f"its {field.decode()} decompresses to more than"
                                 f" {max_field_bytes:,} bytes")
        done = super().restore(raw_data)
        if self.description is not None and not self.description.isprintable():
            # Logged by RQ's worker: a newline in it would forge log lines.
            self.description = repr(self.description)
        return done


# An RQ job's hash in one round trip, unless a field is larger than ARGV[1]
# bytes: {1, its fields and values} or {0, the largest field's size}.
_fetch_source = """
local largest = 0
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  largest = math.max(largest, redis.call('HSTRLEN', KEYS[1], field))
end
if largest > tonumber(ARGV[1]) then return {0, largest} end
return {1, redis.call('HGETALL', KEYS[1])}
"""
_fetch: redis.commands.core.Script | None = None  # (run on any client given)


def _bounded_unzip(raw: bytes) -> bytes:
    """``raw`` decompressed as RQ's restore does, but at most one byte past
    ``max_field_bytes`` (``raw`` itself if it is no zlib stream, as RQ)."""
    try:
        return zlib.decompressobj().decompress(raw, max_field_bytes + 1)
    except zlib.error:
        return raw


def _unreadable(connection: redis.Redis | None, job_id: str, why: str) -> UnreadableJob:
    """Log an unreadable RQ job of wsgi_bg's queues, mark its hash failed
    (plain writes: nothing of it is read), and say so."""
    _log.error("wsgi_bg's worker: refused job %r: its RQ hash is not readable"
               " (%s); it was not run", job_id, why)
    if connection is not None:
        key = rq.job.Job.redis_job_namespace_prefix + job_id
        if connection.exists(key):
            connection.hset(key, "status", JobStatus.FAILED.value)
    return UnreadableJob(f"RQ job {job_id!r} is not readable: {why}")


class _Queues(rq.Queue):
    """RQ's queue class, but a queue of wsgi_bg's (see
    :func:`~wsgi_bg.runners.rq.is_wsgi_bg_queue`) reads its jobs as JSON
    with :class:`_Job`, whatever the worker was given, and has no
    dependents to enqueue: what RQ's worker, its registries' clean-up and
    its intermediate queue's fetch through it never unpickle."""

    def __init__(self, name: str = "default", *args: typing.Any,
                 **kwargs: typing.Any) -> None:
        if _rq.is_wsgi_bg_queue(name):
            kwargs["serializer"] = _rq.SERIALIZER
            kwargs["job_class"] = _Job
        super().__init__(name, *args, **kwargs)

    @classmethod
    def _fetch_dequeued_job(
        cls, connection: redis.Redis, queue_key: str, job_id: str,
        job_class: typing.Any = None, serializer: typing.Any = None,
        death_penalty_class: typing.Any = None,
    ) -> typing.Any:
        # The job just taken off a queue: fetched as its queue reads it.
        name = queue_key[len(cls.redis_queue_namespace_prefix):]
        if not _rq.is_wsgi_bg_queue(name):
            return super()._fetch_dequeued_job(
                connection, queue_key, job_id, job_class=job_class,
                serializer=serializer, death_penalty_class=death_penalty_class)
        queue = cls(name, connection=connection,
                    death_penalty_class=death_penalty_class)
        try:
            return _Job.fetch(job_id, connection=connection,
                              serializer=_rq.SERIALIZER), queue
        except UnreadableJob:
            # Refused (logged): out of the intermediate queue, in the
            # failed registry; the worker takes the next job.
            queue.intermediate_queue.remove(job_id)
            connection.zadd(queue.failed_job_registry.key,
                            {job_id: time.time() + _rq_defaults.DEFAULT_FAILURE_TTL})
            return None
        except NoSuchJobError:
            return None

    def move_dependents_to_ready(self, job: typing.Any, *args: typing.Any,
                                 **kwargs: typing.Any) -> dict[str, list[str]]:
        if _rq.is_wsgi_bg_queue(self.name):
            return {}  # a wsgi_bg job has none: any there were planted
        return super().move_dependents_to_ready(job, *args, **kwargs)

    def enqueue_dependents(self, job: typing.Any, *args: typing.Any,
                           **kwargs: typing.Any) -> dict[str, list[str]]:
        if _rq.is_wsgi_bg_queue(self.name):
            return {}
        return super().enqueue_dependents(job, *args, **kwargs)


def _queue_class(given: type[rq.Queue]) -> type[rq.Queue]:
    """``given`` (RQ's, or ``--queue-class``) with :class:`_Queues`'s rules."""
    if issubclass(given, _Queues):
        return given
    if given is rq.Queue:
        return _Queues
    return type(f"WsgiBg{given.__name__}", (_Queues, given), {})


class Refused(Exception):
    """Why an RQ job of wsgi_bg's queues must not run (see :func:`admit`)."""


def admit(job: rq.job.Job, queue: rq.Queue) -> dict[str, typing.Any]:
    """The settings of an RQ job taken from ``queue``, one of wsgi_bg's,
    that may run: it must be ``perform(reference, token)``, its reference
    its RQ id, its token signed with this worker's secret key and naming
    ``queue`` (a job moved from another namespace's queue does not run
    here). Nothing is imported, unpickled nor run to tell.

    :raises Refused: saying why it must not run.
    """
    try:
        func, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except DeserializationError:
        raise Refused("its data is not wsgi_bg's (not JSON)") from None
    if (func != _perform_name or instance is not None or kwargs
            or not isinstance(args, (list, tuple)) or len(args) != 2
            or not all(isinstance(a, str) for a in args)):
        raise Refused(f"it is not a wsgi_bg job (it calls {str(func)[:100]!r})")
    if args[0] != job.id:
        raise Refused("its reference is not its RQ job id")
    try:
        settings = _rq.open_reference(_rq.prepare_worker(), args[0], args[1])
    except (BadSignature, ValueError) as exc:
        raise Refused(f"its token did not check out ({exc})") from None
    if settings.get("queue") != queue.name:
        raise Refused(f"its token is for queue {str(settings.get('queue'))[:100]!r},"
                      f" not {queue.name!r}")
    return settings


class _Running:
    """A wsgi_bg job this worker runs in its own process: the supervisor's
    tick renews RQ's heartbeats and says whether the worker is stopping."""

    def __init__(self, worker: Worker, job: rq.job.Job, execution: Execution) -> None:
        self.worker = worker
        self.job = job
        self.execution = execution
        self.next_beat = time.monotonic() + worker.job_monitoring_interval
        #: Seconds the job may still run: set when the worker is stopping.
        self.stop_in: float | None = None

    def tick(self) -> float | None:
        now_ = time.monotonic()
        if now_ >= self.next_beat:
            self.next_beat = now_ + self.worker.job_monitoring_interval
            try:
                # What a forking worker does while it waits for its horse.
                self.worker.maintain_heartbeats(self.job, self.execution)
            except redis.RedisError as exc:  # the job goes on; next tick retries
                self.worker.log.warning("Worker %s: heartbeat failed: %r",
                                        self.worker.name, exc)
        return self.stop_in


class Worker(rq.Worker):
    """An :class:`rq.Worker` that runs wsgi_bg's jobs in its own process
    (their supervisor forks each job's process), only signed ones, and on
    other queues is RQ's stock worker. Use it with the stock command::

        rq worker -w wsgi_bg.rq_worker.Worker wsgi_bg --url redis://redis:6379/0

    See the module docstring.

    :raises ValueError: if it listens on one of wsgi_bg's queues without a
        secret key (``WSGI_BG_SECRET_KEY``); the message says how to make one.

    .. versionadded:: 0.2
    """

    _running: _Running | None = None

    def __init__(self, queues: typing.Any, *args: typing.Any,
                 **kwargs: typing.Any) -> None:
        super().__init__(queues, *args, **kwargs)
        self.queue_class = _queue_class(self.queue_class)
        # rq's command line hands in queues of its own class: rebuilt.
        self.queues = [
            q if isinstance(q, _Queues) or not _rq.is_wsgi_bg_queue(q.name)
            else self.queue_class(q.name, connection=q.connection,
                                  death_penalty_class=self.death_penalty_class)
            for q in self.queues]
        self._ordered_queues = self.queues[:]
        ours = [q.name for q in self.queues if _rq.is_wsgi_bg_queue(q.name)]
        if ours:
            # (wsgi_bg's queues read their jobs with _Job: RQ's job prefix)
            _rq.check_key_prefixes(self.queue_class, _Job)
            try:
                _rq.prepare_worker()
            except ValueError as exc:
                raise ValueError(
                    f"wsgi_bg's RQ worker cannot take jobs from {', '.join(ours)}"
                    f" without the app's secret key: {exc}") from None

    def execute_job(self, job: rq.job.Job, queue: rq.Queue) -> None:
        if not _rq.is_wsgi_bg_queue(queue.name):
            super().execute_job(job, queue)  # a work horse, as stock
            return
        try:
            settings = admit(job, queue)
        except Refused as refusal:
            self._refuse(job, queue, str(refusal))
            return
        # As rq.SimpleWorker does, but for wsgi_bg's jobs only: the
        # supervisor that perform() runs here forks the job's process.
        execution = self.prepare_execution(job)
        running = self._running = _Running(self, job, execution)
        try:
            with _rq.running_in_worker(running.tick, self.connection):
                self._perform(job, queue, execution, settings)
        finally:
            self._running = None
        self.set_state(_rq_worker.WorkerStatus.IDLE)

    def _perform(self, job: rq.job.Job, queue: rq.Queue, execution: Execution,
                 settings: dict[str, typing.Any]) -> None:
        """RQ's perform_job for an admitted wsgi_bg job (``settings``: its
        token's): perform() called here (nothing imported by name, no alarm
        in the supervisor; its token not opened twice), its end recorded in
        RQ's books as what happened."""
        self.prepare_job_execution(
            job, remove_from_intermediate_queue=len(self.queues) == 1)
        job.started_at = now()
        try:
            job._result = _rq.perform_admitted(job.id, settings)
        except BaseException as exc:
            self.handle_execution_ended(job, queue, job.failure_callback_timeout)
            if (isinstance(exc, _rq.JobEnded) and exc.state == "cancelled"
                    and self._stopped_job_id != job.id):
                self._record_cancelled(job, execution)
            else:
                exc_info = sys.exc_info()
                job._status = JobStatus.FAILED
                self.handle_exception(job, *exc_info)
                self.handle_job_failure(
                    job=job, queue=queue, exc_string=format_exc_info(exc_info),
                    started_job_registry=queue.started_job_registry,
                    execution=execution)
            if not isinstance(exc, Exception):
                raise
            return
        self.handle_execution_ended(job, queue, job.success_callback_timeout)
        job._status = JobStatus.FINISHED
        self.handle_job_success(job=job, queue=queue,
                                started_job_registry=queue.started_job_registry,
                                execution=execution)
        self.log.info("Worker %s: %s: Job OK (%s)", self.name, queue.name, job.id)

    def _record_cancelled(self, job: rq.job.Job, execution: Execution) -> None:
        """RQ's books for a wsgi_bg job cancelled (from its page): canceled."""
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            pipeline.execute()
        try:
            job.cancel()
        except InvalidJobOperation:
            pass  # canceled in RQ already: by the web process, as it was taken
        self.log.info("Worker %s: %s: job cancelled (%s)", self.name, job.origin,
                      job.id)

    def _refuse(self, job: rq.job.Job, queue: rq.Queue, why: str) -> None:
        """Log, and record in RQ's failed registry, an RQ job of wsgi_bg's
        queues that is not a signed wsgi_bg job: it is never run."""
        self.log.error("Worker %s: %s: refused job %s: %s; it was not run",
                       self.name, queue.name, job.id, why)
        # Its hash's word is not taken for where it goes or what follows.
        job.origin = queue.name
        job.retries_left = None
        job.rate_limit_key = None
        queue.intermediate_queue.remove(job.id)
        self.handle_job_failure(
            job, queue, exc_string=f"refused by wsgi_bg's worker: {why}; not run")

    def get_current_job(self) -> rq.job.Job | None:
        running = self._running
        if running is not None:
            return running.job  # (RQ's would fetch it with the worker's serializer)
        return super().get_current_job()

    def _start_scheduler(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        # RQ's scheduler reads its queues' jobs with the worker's serializer:
        # wsgi_bg's queues have no scheduled jobs, so it is not run for them.
        queues = self.queues
        self.queues = [q for q in queues if not _rq.is_wsgi_bg_queue(q.name)]
        try:
            if self.queues:
                super()._start_scheduler(*args, **kwargs)
        finally:
            self.queues = queues

    def subscribe(self) -> None:
        # RQ's, but its pub/sub thread waits for a message at most
        # _pubsub_wait s, not 60: redis-py 8's PubSubWorkerThread.stop()
        # joins the thread, so RQ 3's teardown waited up to 60 s for it.
        self.log.info("Worker %s: subscribing to channel %s", self.name,
                      self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=_pubsub_wait, daemon=True,
            exception_handler=self._pubsub_exception_handler)

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()  # type: ignore[no-untyped-call]
        running = self._running
        if running is not None and running.stop_in is None:
            running.stop_in = math.inf  # the job's cancel_grace, then killed

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        try:
            super().request_force_stop(signum, frame)
        except SystemExit:
            running = self._running
            if running is None:
                raise
            # Cold shutdown: its supervisor kills the job now and records
            # it; the worker then exits (its warm shutdown was requested).
            running.stop_in = 0.0

    def kill_horse(self, sig: signal.Signals = _rq_worker.SHUTDOWN_SIGNAL) -> None:
        running = self._running
        if self.horse_pid == 0:
            # No horse: a wsgi_bg job runs here (RQ's stop-job command).
            # RQ's killpg(getpgid(0)) would kill this worker's process group.
            if running is not None:
                running.stop_in = 0.0
            return
        super().kill_horse(sig)

    def teardown(self) -> None:
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        finally:
            release_warm()  # the job process kept for a next job


preload_api()  # what a job module imports of wsgi_bg, as a pool worker does
# Last: a preloaded module may import this one, whole.
for _name in os.environ.get("WSGI_BG_PRELOAD", "").split(","):
    if _name.strip():
        importlib.import_module(_name.strip())
