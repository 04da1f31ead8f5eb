"""The RQ worker for wsgi_bg jobs: a stock ``rq worker`` with wsgi_bg's
worker class (``-w``, RQ's option for worker classes)::

    WSGI_BG_PRELOAD=myapp.jobs rq worker -w wsgi_bg.rq_worker.Worker wsgi_bg --url redis://...

:class:`Worker` runs each wsgi_bg job in the worker process itself, which
then stays a long-lived supervisor, as a pool worker is: it forks the job's
process (a timeout, a cancel or a crash ends that process, never the
worker), keeps it for the next job (``max_jobs_per_process``), and keeps its
store connection. Every other RQ job on the same worker gets a work horse
forked for it, as on a stock worker. A stock ``rq worker`` forks a work horse
for every job, and the horse forks the job's process and connects to the
store afresh: twice the forks and about twice the CPU of a plain RQ job (see
docs/performance.md).

What a stock forking worker does while its horse runs, this one does from
the supervisor's loop, with no thread: it renews RQ's heartbeats every
``--job-monitoring-interval`` seconds, so RQ never takes a long job, or the
worker, for dead. A warm shutdown (SIGTERM, or Ctrl+C) asks the running job
to stop, as a cancel does, kills its process ``cancel_grace`` seconds later,
records it, then exits; a second signal (a cold shutdown), or RQ's
``stop-job`` command, kills the job's process at once. RQ's own timeout
stays 60 s beyond the job's timeout and grace, which the supervisor
enforces first. A worker killed outright takes the job's process with it
(Linux), and the job ends ``crashed`` once its lease runs out.

Importing this module (``-w``, or ``-c wsgi_bg.rq_worker`` with the stock
worker class) also imports wsgi_bg's RQ runner, then each module named in
``WSGI_BG_PRELOAD`` (comma-separated: the app's job modules), and reads the
secret key, once, before the worker forks anything: neither its work horses
nor its job processes import them again (100-150 ms per job on a 2-CPU
machine otherwise). Preload only modules that are safe to fork: a module
that starts threads or opens connections when imported would hand them,
half-usable, to every child (the same rule as ``gunicorn --preload``). As a
``-c`` settings module it sets no setting. Already have an RQ settings
module? Add ``import wsgi_bg.rq_worker`` to it.

.. versionadded:: 0.2
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import time
import typing
from types import FrameType

import redis
import rq
from rq import worker as _rq_worker

from .runners import rq as _rq
from .runners.supervisor import release_warm

# No UPPERCASE names here (typing.TYPE_CHECKING, not TYPE_CHECKING): a -c
# settings module's are RQ's settings.
if typing.TYPE_CHECKING:
    from rq.executions import Execution
    from rq.job import Job

for _name in os.environ.get("WSGI_BG_PRELOAD", "").split(","):
    if _name.strip():
        importlib.import_module(_name.strip())

_rq.prepare_worker()

_perform_name = f"{_rq.perform.__module__}.{_rq.perform.__qualname__}"


class _Running:
    """A wsgi_bg job this worker runs in its own process: the supervisor's
    tick renews RQ's heartbeats and says whether the worker is stopping."""

    def __init__(self, worker: Worker, job: Job, execution: Execution) -> None:
        self.worker = worker
        self.job = job
        self.execution = execution
        self.next_beat = time.monotonic() + worker.job_monitoring_interval
        #: Seconds the job may still run: set when the worker is stopping.
        self.stop_in: float | None = None

    def tick(self) -> float | None:
        now = time.monotonic()
        if now >= self.next_beat:
            self.next_beat = now + self.worker.job_monitoring_interval
            try:
                # What a forking worker does while it waits for its horse.
                self.worker.maintain_heartbeats(self.job, self.execution)
            except redis.RedisError as exc:  # the job goes on; next tick retries
                self.worker.log.warning("Worker %s: heartbeat failed: %r",
                                        self.worker.name, exc)
        return self.stop_in


class Worker(rq.Worker):
    """An :class:`rq.Worker` that runs wsgi_bg's jobs in its own process
    (their supervisor forks each job's process) and forks a work horse, as
    stock, for every other job. Use it with the stock command::

        rq worker -w wsgi_bg.rq_worker.Worker wsgi_bg --url redis://redis:6379/0

    See the module docstring.

    .. versionadded:: 0.2
    """

    _running: _Running | None = None

    def execute_job(self, job: Job, queue: rq.Queue) -> None:
        if job.func_name != _perform_name:
            super().execute_job(job, queue)  # a work horse, as stock
            return
        # As rq.SimpleWorker does, but for wsgi_bg's jobs only: the
        # supervisor that perform() runs here forks the job's process.
        execution = self.prepare_execution(job)
        running = self._running = _Running(self, job, execution)
        try:
            with _rq.running_in_worker(running.tick):
                self.perform_job(job, queue, execution)
        finally:
            self._running = None
        self.set_state(_rq_worker.WorkerStatus.IDLE)

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
