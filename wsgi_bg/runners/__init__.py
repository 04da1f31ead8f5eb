"""Where jobs run: the :class:`Runner` protocol and the runners that keep it.

- ``runner="pool"`` (the default):
  :class:`~wsgi_bg.runners.pool.ProcessRunner`, a process pool of the server
  process whose workers supervise the job processes.
- ``runner="rq"``, or an :class:`rq.Queue`:
  :class:`~wsgi_bg.runners.rq.RQRunner`, jobs queued for ``rq worker``
  processes with wsgi_bg's worker class on any machine, which supervise the
  job processes
  (``pip install "wsgi_bg[rq]"``; needs the Redis store).
- ``runner="inline"``: :class:`~wsgi_bg.runners.inline.InlineRunner`, for
  tests: each job runs at once in the thread that starts it.

Every runner that runs jobs in processes hands them to the one supervisor,
:func:`wsgi_bg.runners.supervisor.supervise` (fork, relay, timeout, cancel,
kill, reap). :func:`open_runner` is the one place that tells runners apart;
the engine sees only the protocol.

Which process runs which module::

    server process      __init__ (the protocol, open_runner), pool (the
                        pool's scheduler), inline (jobs in the calling
                        thread), rq (RQRunner: enqueue, cancel)
    pool worker         pool_worker ─► supervisor
    RQ worker           wsgi_bg.rq_worker ─► rq (perform) ─► supervisor
    job process         job_process (forked by the supervisor)
    shared              wire (the frames between supervisor and job process),
                        results (a job's result, where the job runs),
                        processes (process control: prctl, kill, exit codes)
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future
from typing import Protocol

from ..options import Settings
from ..stores import Backend, Ending, Link, Store

__all__ = ["JobLost", "LocalLink", "Runner", "open_runner", "runs_here"]


class JobLost(Exception):  # noqa: N818 - an outcome, as concurrent.futures' are
    """A runner lost the process running a job (a pool worker killed from
    outside, or by shutdown): the exception of the job's future. Its text is
    the job's error.

    ``state`` is how the job ends: ``"crashed"``, or ``"cancelled"`` when
    shutdown killed it (its processes with it). A crashed job whose record
    still says ``queued`` had not started: the engine hands it to the runner
    again. What the job left running (its process group) is the runner's
    to kill before it reports the loss, where it can (the pool runner's
    :class:`~wsgi_bg.runners.pool.WorkerLost`): the engine controls no
    process.
    """

    def __init__(self, message: str, *, state: str = "crashed") -> None:
        super().__init__(message)
        self.state = state


class Runner(Protocol):
    """Runs the jobs the engine submits; built by :func:`open_runner`, started
    on the first job, stopped by :meth:`shutdown`. The store is the single
    source of truth: a runner records each job's start and end there (or the
    supervisor it feeds does)."""

    #: Its name, for messages: ``"pool"``, ``"rq"``.
    kind: str
    #: Whether jobs run in processes of this server that reach the store
    #: through :meth:`~wsgi_bg.stores.Backend.link` (the pool): the engine
    #: then starts the store's backend for them, and the forkserver.
    needs_link: bool
    #: Whether a queued job waits in this server process and is lost with it
    #: (the pool); if not (RQ), it waits elsewhere and outlives the process.
    holds_queued: bool

    def start(self, link: Link | None) -> None:
        """Start what the runner needs (a pool); ``link`` when it
        :attr:`needs_link`, a :class:`LocalLink` when it :func:`runs_here`,
        else ``None``."""

    def submit(
        self, job_id: str, payload: bytes, timeout: float | None, grace: float,
        name: str, created_at: float, attempt: int = 1,
    ) -> Future[str | Ending | None] | None:
        """Run the job whose pickled call is ``payload`` (the store holds its
        record, queued, and the call; ``name`` is the function's, for
        listings such as rq-dashboard's; ``created_at``, the record's;
        ``attempt``, which run of a job that runs again this is).
        Return a future of its final state (or of its
        :class:`~wsgi_bg.stores.Ending`, which the engine records: see
        :attr:`~wsgi_bg.stores.Link.ends_in_answer`), or ``None`` if the
        runner reports nothing back (the store says it all)."""

    def cancel(self, job_id: str) -> None:
        """The store has cancelled this queued job: drop it where it waits,
        if that is simple. It never runs either way (its start fails)."""

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop what :meth:`start` started, waiting for it; what still runs
        ``timeout`` seconds later (``None``: no limit) is killed, where the
        runner can."""


def runs_here(runner: Runner) -> bool:
    """Whether ``runner`` runs jobs in this very process (the inline runner):
    queued jobs wait in this process (:attr:`~Runner.holds_queued`), yet no
    process of its reaches the store (:attr:`~Runner.needs_link`). Its
    :meth:`~Runner.start` then gets a :class:`LocalLink` to the store in use."""
    return runner.holds_queued and not runner.needs_link


class LocalLink:
    """The store in use in this process, as a :class:`~wsgi_bg.stores.Link`:
    for a runner whose jobs run here (:func:`runs_here`)."""

    key = "local"
    ends_in_answer = False

    def __init__(self, store: Store) -> None:
        self.store = store

    def connect(self) -> Store:
        return self.store


def open_runner(settings: Settings, backend: Backend) -> Runner:
    """The runner for the middleware's ``runner=`` option (with the options
    it reads), on ``backend``'s store; nothing starts.

    :raises ValueError: for a ``runner`` that names no known runner, or
        ``"rq"`` without the Redis store.
    :raises ImportError: for ``"rq"`` without the ``rq`` package.
    """
    runner = settings.runner
    max_result_bytes = settings.max_result_bytes
    jobs_per_process = settings.max_jobs_per_process
    if runner is None or (isinstance(runner, str) and runner == "pool"):
        from .pool import ProcessRunner

        return ProcessRunner(
            backend=backend, max_workers=settings.max_workers,
            mp_context=multiprocessing.get_context(settings.start_method),
            executor_factory=settings.executor_factory,
            jobs_per_process=jobs_per_process, max_result_bytes=max_result_bytes,
        )
    is_queue = (type(runner).__module__.startswith("rq.")
                and hasattr(runner, "enqueue_call"))
    if is_queue or (isinstance(runner, str) and runner == "rq"):
        try:
            from .rq import RQRunner
        except ImportError as exc:
            raise ImportError(
                f'runner="rq" needs the rq package: pip install "wsgi_bg[rq]" ({exc})'
            ) from exc
        return RQRunner(runner if is_queue else None, backend=backend,
                        max_result_bytes=max_result_bytes,
                        jobs_per_process=jobs_per_process)
    if isinstance(runner, str) and runner == "inline":
        from .inline import InlineRunner

        return InlineRunner(max_result_bytes)
    raise ValueError(
        "runner must be 'pool' (the default), 'inline', 'rq' or an rq.Queue,"
        f" got {runner!r}"
    )
