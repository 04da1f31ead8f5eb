"""The default runner: a process pool whose workers supervise a job process.

Jobs run on the server's own machine, in a
:class:`~concurrent.futures.ProcessPoolExecutor` (or any executor
``executor_factory`` returns) started on the first job::

    app = BackgroundMiddleware(app)            # runner="pool", the default

Each pool worker is a long-lived, single-threaded supervisor: the pool's task
function :func:`run_job` hands the job to :func:`~wsgi_bg.runners.supervisor.supervise`,
which forks (or reuses) the job process. The worker reaches the store
through the backend's picklable :class:`~wsgi_bg.stores.Link`, once per
process.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from concurrent.futures import (
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
)
from multiprocessing.context import BaseContext

from ..limits import MAX_RESULT_BYTES
from ..stores import Link, Store
from .supervisor import die_with_parent, supervise

_store_cache: dict[str, Store] = {}


def _worker_store(link: Link, die_with_parent_: bool = False) -> Store:
    store = _store_cache.get(link.key)
    if store is None:
        # First job in this worker (also the set-up for executors we did not
        # create, which got no initializer).
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the server's to handle
        if die_with_parent_:
            # Only when the parent is the single-threaded forkserver: Linux
            # sends this signal when the parent *thread* ends, and spawn or
            # fork pools start workers from whichever thread submitted (a
            # request's). Other workers are killed by the store's watchdog.
            die_with_parent()
        store = _store_cache[link.key] = link.connect()
    return store


def worker_init(link: Link, die_with_parent: bool) -> None:
    """Pool initializer: set the worker up before it takes its first job."""
    _worker_store(link, die_with_parent)


def run_job(
    link: Link, job_id: str, payload: bytes,
    timeout: float | None, grace: float, jobs_per_process: int = 1,
    max_result_bytes: int = MAX_RESULT_BYTES,
) -> str | None:
    """Run one job to its end and record it; the pool's task function.

    Returns the final state, or ``None`` if the job was cancelled before it
    started or had already ended.
    """
    store = _worker_store(link)
    return supervise(store, job_id, payload, timeout, grace, jobs_per_process,
                     max_result_bytes)


class ProcessRunner:
    """Runs jobs in a :class:`~concurrent.futures.ProcessPoolExecutor` (or any
    executor ``executor_factory`` returns) through :func:`run_job`; the
    :class:`~wsgi_bg.runners.Runner` for ``runner="pool"``."""

    kind = "pool"
    needs_link = True
    holds_queued = True

    def __init__(
        self, *, max_workers: int | None, mp_context: BaseContext,
        executor_factory: Callable[[], Executor] | None,
        jobs_per_process: int = 1, max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        self.jobs_per_process = jobs_per_process
        self.max_result_bytes = max_result_bytes
        self.max_workers = max_workers
        self.mp_context = mp_context
        self.executor_factory = executor_factory
        self.link: Link | None = None
        self.executor: Executor | None = None

    def start(self, link: Link | None) -> None:
        if link is None:
            raise ValueError("the pool runner needs the store's link")
        self.link = link
        self.executor = self._new_executor()

    def _new_executor(self) -> Executor:
        link = self._link()
        if self.executor_factory is not None:
            executor = self.executor_factory()
            if isinstance(executor, ThreadPoolExecutor) or not isinstance(
                executor, Executor
            ):
                raise TypeError(
                    "executor_factory must return a concurrent.futures executor"
                    " whose workers are processes (a ProcessPoolExecutor, or"
                    f" another process pool), got {executor!r}: job processes"
                    " are forked from a worker, and forking a threaded server"
                    " can deadlock"
                )
            return executor
        return ProcessPoolExecutor(
            self.max_workers, mp_context=self.mp_context,
            initializer=worker_init,
            initargs=(link,
                      self.mp_context.get_start_method() == "forkserver"),
        )

    def _link(self) -> Link:
        if self.link is None:
            raise RuntimeError("the pool runner is not started")
        return self.link

    def _executor(self) -> Executor:
        if self.executor is None:
            raise RuntimeError("the pool runner is not started")
        return self.executor

    def submit(
        self, job_id: str, payload: bytes, timeout: float | None, grace: float,
        name: str,
    ) -> Future[str | None]:
        return self._executor().submit(
            run_job, self._link(), job_id, payload, timeout, grace,
            self.jobs_per_process, self.max_result_bytes,
        )

    def cancel(self, job_id: str) -> None:
        pass  # the engine cancels the job's future; a worker sees the store's word

    def restart(self) -> None:
        """Start a fresh executor after the old one broke (a worker died)."""
        old, self.executor = self._executor(), self._new_executor()
        old.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
