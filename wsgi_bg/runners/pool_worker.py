"""The pool worker: a process of the server's pool
(:mod:`~wsgi_bg.runners.pool`), long-lived and single-threaded, that
supervises the jobs the server hands it.

The server's scheduler submits :func:`run_jobs` (several jobs in one call)
or :func:`run_job` (a user's ``executor_factory``) to the worker's
executor; :func:`worker_init` sets the worker up first::

    server (runners.pool)          pool worker (this module)       job process
    ─────────────────────          ─────────────────────────       ───────────
    ProcessPoolExecutor(1,         worker_init: ^C ignored, dies
      initializer=worker_init) ─►    with the forkserver, store link,
                                     wsgi_bg's API imported (for
                                     every job process it forks)
    submit(run_jobs, calls) ─────► run_jobs ─► supervise_all ────► (runners.
                                     each job's store: the link,      supervisor,
                                     connected once per process       job_process)
    future done ◄── outcomes ───── [(state, None) | (None, error)]
                                     (an error the server cannot
                                     unpickle travels as text)

When the server process is killed outright (SIGKILL), a forkserver worker
gets SIGTERM (its parent-death signal, once the forkserver ends with the
server): :func:`_on_sigterm` kills its job processes' groups and removes the
server's multiprocessing temporary directory, then the worker ends.
"""

from __future__ import annotations

import os
import pickle
import select
import shutil
import signal
import threading
import traceback
from typing import Any

from ..stores import Ending, Link, Store
from .processes import children, die_with_parent, kill_group, wait_for_exit
from .supervisor import (
    JobCall,
    preload_api,
    supervise,
    supervise_all,
    supervise_to_end,
)

_store_cache: dict[str, Store] = {}


def _worker_store(link: Link, server: tuple[int, str] | None = None) -> Store:
    store = _store_cache.get(link.key)
    if store is None:
        # First job in this worker (also the set-up for executors we did not
        # create, which got no initializer).
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the server's to handle
        if server is not None and _server is None:
            _end_with_server(*server, via_forkserver=False)
        preload_api()
        store = _store_cache[link.key] = link.connect()
    return store


def worker_init(link: Link, server: tuple[int, str], via_forkserver: bool) -> None:
    """Pool initializer: set the worker up before it takes its first job.

    ``server``: the server process's pid and its multiprocessing temporary
    directory; the worker ends with the server (see the module docstring).
    ``via_forkserver``: whether the worker's parent is the forkserver.
    """
    _end_with_server(*server, via_forkserver=via_forkserver)
    _worker_store(link)


# -- a worker ends with the server -------------------------------------------------
#: The server process (a pidfd, or its pid) and its temporary directory.
_server: tuple[int | None, int, str] | None = None


def _end_with_server(server_pid: int, server_tmp: str, *,
                     via_forkserver: bool) -> None:
    """Have this worker end, killing its job's processes, when the server
    process does: a forkserver worker by its parent-death signal once the
    forkserver ends with the server; any other (spawn or fork pools, a user's
    executor) by a thread that waits for the server to exit. Not the
    parent-death signal there: Linux sends it when the parent *thread* ends,
    and such pools start workers from whichever thread submitted (a
    request's)."""
    global _server
    try:
        pidfd: int | None = os.pidfd_open(server_pid)
    except (AttributeError, OSError):
        pidfd = None  # gone already, or not Linux: its pid is checked
    _server = (pidfd, server_pid, server_tmp)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if not via_forkserver:
        # It only waits (no lock held) while the worker forks job processes.
        threading.Thread(target=_term_when_gone, args=(server_pid,),
                         name="wsgi_bg-watch-server", daemon=True).start()
        return
    # The forkserver exits when every holder of its "alive" pipe has closed
    # it; each process it forks gets one (multiprocessing's own use). Ours is
    # let go of, so that the forkserver ends with the server process.
    try:
        from multiprocessing import forkserver

        state: Any = forkserver._forkserver
        alive = state._forkserver_alive_fd
        if alive is not None:
            os.close(alive)
        state._forkserver_alive_fd = state._forkserver_address = None
        state._forkserver_pid = None
    except (ImportError, AttributeError, OSError):
        pass
    parent = os.getppid()
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # the forkserver ended before the signal was set
        _on_sigterm(signal.SIGTERM, None)


def _term_when_gone(server_pid: int) -> None:
    wait_for_exit(server_pid)
    os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM in a worker (the server ended, see :func:`_end_with_server`;
    or anyone sent it): kill the job processes' groups (what a job started ends
    with it), remove the server's temporary directory if the server is gone,
    then end as SIGTERM would."""
    try:
        for child in children(os.getpid()):
            _kill_job_process(child)
        if _server is not None and _server_gone(_server[0], _server[1]):
            shutil.rmtree(_server[2], ignore_errors=True)
    finally:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)


def _server_gone(pidfd: int | None, pid: int) -> bool:
    if pidfd is not None:
        try:
            return bool(select.select([pidfd], [], [], 0)[0])
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def _kill_job_process(pid: int) -> None:
    """SIGKILL a child of this process (a job process) and its group."""
    kill_group(pid)
    try:
        os.kill(pid, signal.SIGKILL)  # not yet reaped: still ours
    except (ProcessLookupError, PermissionError):
        pass


def run_job(
    link: Link, call: JobCall, server: tuple[int, str] | None = None,
) -> str | Ending | None:
    """Run one job to its end and record it; the task function given to an
    ``executor_factory``'s executor, whose workers got no initializer of
    ours: ``server`` (as :func:`worker_init`'s) sets the first job's worker
    up to end with the server.

    Returns the final state, or ``None`` if the job was cancelled before it
    started or had already ended; the job's :class:`~wsgi_bg.stores.Ending`
    instead of its state where the server records it
    (:attr:`~wsgi_bg.stores.Link.ends_in_answer`).
    """
    store = _worker_store(link, server)
    if link.ends_in_answer:
        return supervise_to_end(store, call)
    return supervise(store, call)


def run_jobs(
    calls: list[tuple[Link, JobCall]],
) -> list[tuple[Any, BaseException | None]]:
    """Run several jobs one after another, each ``(link, call)`` as
    :func:`run_job` runs it; the pool's task function when jobs
    wait, so that one hand-off to a worker serves several (as the
    ``chunksize`` of :meth:`concurrent.futures.Executor.map` does).

    Returns each job's ``(final state, None)`` or ``(None, the exception
    run_job raised)``: one job's failure does not stop the others.

    Run by :func:`~wsgi_bg.runners.supervisor.supervise_all`: a job's end is
    recorded with the next one's start, in one store call; a lone job
    makes the store calls :func:`run_job` makes.
    """
    jobs = []
    defer = all(link.ends_in_answer for link, _ in calls)
    for link, call in calls:
        try:
            store = _worker_store(link)
        except Exception:  # noqa: BLE001 - each job's own failure, as run_job's
            break
        jobs.append((store, call))
    else:
        return [(state, None if error is None else _sendable(error))
                for state, error in supervise_all(jobs, defer_last=defer)]
    outcomes: list[tuple[Any, BaseException | None]] = []
    for link, call in calls:
        try:
            outcomes.append((run_job(link, call), None))
        except Exception as exc:  # noqa: BLE001 - that job's future's
            outcomes.append((None, _sendable(exc)))
    return outcomes


def _sendable(exc: BaseException) -> BaseException:
    """``exc``, or its text, whichever can be pickled back to the server
    (one that cannot would fail the outcomes of every job of its call)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any pickling failure
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return RuntimeError(f"the pool worker failed:\n{text}")
    exc.__traceback__ = None
    return exc
