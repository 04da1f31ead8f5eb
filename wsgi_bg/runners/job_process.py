"""The job process: forked by a supervisor (:mod:`~wsgi_bg.runners.supervisor`),
it runs that supervisor's jobs one at a time, each with fds 1 and 2 on the
job's own pipe, until it is told or chooses to stop (:func:`main`).

Data flow (the supervisor's side is in its module; the frames in
:mod:`~wsgi_bg.runners.wire`)::

    supervisor                      job process (this module)
    fork ─────────────────────────► main: own process group, dies with the
                                      supervisor, keeps its orphans
    send_job ── socket ───────────► recv_job ─► fds 1+2 → the job's pipe
                                      current_job (context) reports over ↓
    MessageReader ◄── socket ─────── send_progress(report)
    relay ◄── output pipe ────────── print, logging, os.system
    cancel ── control pipe ─────────► current_job.cancel_requested
                                      _run: unpickle the call, call it,
                                      check the result (runners.results)
    MessageReader ◄── socket ─────── JobEnd(result, shown, error,
                                      retryable, cancel_seen, retire)
    kill the group, if it retires   ◄ put back cwd, environ, sys.path

The call is unpickled only here: an import that hangs, starts threads or
crashes meets the timeout, cancel and isolation of a job, not the worker.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import socket
import sys
import threading
import traceback
from typing import Any

from .. import context
from ..limits import MAX_RESULT_BYTES
from . import wire
from .processes import become_subreaper, die_with_parent
from .results import Unpicklable, dump_result, shown


def main(sock: socket.socket, jobs_per_process: int, parent: int) -> None:
    """The job process: runs the jobs its supervisor sends, one at a time, with
    fds 1 and 2 on each job's own pipe. Never returns.

    It stops after ``jobs_per_process`` jobs, or after a job that left threads
    or processes running (they would write into the next job's output, and
    must end with their job), or whose streams could not be flushed, so the
    next job gets a fresh process and the supervisor kills the process group.
    Between jobs it puts back the working directory, the environment and
    ``sys.path``. Whatever a job did to its own process (closed or re-wrapped
    its streams, closed fds 1 and 2, removed its working directory) cannot
    turn its return into a crash: at worst the process is not reused.
    """
    code = 0
    try:
        home = _Home(sock, parent)
        for done in range(1, jobs_per_process + 1):
            received = wire.recv_job(sock)
            if received is None:
                break
            end, flushed = home.run_job(*received)
            retire = done == jobs_per_process or not flushed or not home.clean()
            if retire:  # before saying so: the supervisor then kills the group
                _let_go_of_multiprocessing()
            wire.send_end(home.msg_fd, end._replace(retire=retire))
            if retire:
                break
    except BaseException:
        code = 70
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
    finally:
        _let_go_of_multiprocessing()
        os._exit(code)


class _Home:
    """The job process between jobs: set up once (:meth:`__init__`), each
    job run on its own pipe (:meth:`run_job`), then checked and put back for
    the next (:meth:`clean`)."""

    def __init__(self, sock: socket.socket, parent: int) -> None:
        os.setpgid(0, 0)  # own process group: killpg reaches the job's children too
        die_with_parent()
        # ``parent`` is the supervisor's pid as it knew it before forking: read
        # here, getppid() would already name init if the supervisor died before
        # this process first ran (a job sent to it would then run orphaned).
        if os.getppid() != parent:
            os._exit(1)
        become_subreaper()  # orphans a job leaves stay ours
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # Handlers its worker's Python code set (an RQ worker's SIGTERM for
        # its warm shutdown, SIGALRM for RQ's timeout) mean nothing in a job:
        # it starts with the defaults, as in a pool worker.
        for sig in _SIGNALS:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        self.null_w = os.open(os.devnull, os.O_WRONLY)
        _let_go_of_inherited(keep=(sock.fileno(), self.null_w))
        _redirect_stdio(os.dup(self.null_w))
        self.idle = sys.stdout, sys.stderr  # between jobs: /dev/null
        self.cwd = _getcwd()  # None: the server's own directory was removed
        self.environ, self.path = dict(os.environ), list(sys.path)
        self.environ_raw = dict(_environ_raw())
        self.stdin = sys.stdin
        self.handlers = _signal_handlers()
        self.msg_fd = sock.fileno()
        # Streams a job replaced, or that failed to flush: never collected
        # here, where closing them could close fd 1 or 2 of a later job, or
        # flush what they hold into its output.
        self.kept: list[Any] = []

    def run_job(self, job: wire.Handoff, fds: list[int]) -> tuple[wire.JobEnd, bool]:
        """Run one job with fds 1 and 2 on its pipe: how it ended (not yet
        whether this process retires), and whether its streams flushed."""
        out_w, ctl_r = fds
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.close(out_w)
        # Fresh streams for each job, made on its pipe: a job may close or
        # re-wrap them (``io.TextIOWrapper(sys.stdout.buffer)``).
        streams = sys.stdout, sys.stderr = _job_stream(1), _job_stream(2)
        os.set_blocking(ctl_r, False)
        context.enter(_PipeContext(job.job_id, self.msg_fd, ctl_r))
        end = _run(job.payload, job.max_result_bytes)
        flushed = _let_go_of_streams(streams, self.kept)
        sys.stdin = self.stdin
        sys.stdout, sys.stderr = self.idle
        os.dup2(self.null_w, 1)  # let go of the job's pipe: its end for the supervisor
        os.dup2(self.null_w, 2)
        os.close(ctl_r)
        return end._replace(cancel_seen=context.leave_job()), flushed

    def clean(self) -> bool:
        """Whether the last job left nothing running (no thread, no process,
        no signal handler) and what it changed could be put back; then this
        process may run the next job."""
        if (threading.active_count() > 1 or _children_left()
                or _signal_handlers() != self.handlers):
            return False
        return _put_back(self.cwd, self.environ, self.environ_raw, self.path)


class _PipeContext(context.JobContext):
    """The context of a job in its own process: reports go to the supervisor
    over ``msg_fd``; a byte on ``control_fd`` means cancel."""

    __slots__ = ("msg_fd", "control_fd")

    def __init__(self, job_id: str, msg_fd: int, control_fd: int) -> None:
        super().__init__(job_id)
        self.msg_fd = msg_fd
        self.control_fd = control_fd  # non-blocking; a byte arrives on cancel

    def report_progress(self, report: dict[str, Any]) -> None:
        wire.send_progress(self.msg_fd, report)

    def poll_cancel(self) -> bool:
        try:
            return bool(os.read(self.control_fd, 1))
        except BlockingIOError:
            return False


def _children_left() -> bool:
    """Reap this process's exited children; ``True`` if any still runs.

    A job process is a child subreaper (Linux): what a job starts and leaves
    behind, even orphaned grandchildren, stays its child, and shows here.
    """
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False  # no children at all
        if pid == 0:
            return True


def _let_go_of_multiprocessing() -> None:
    """Release the multiprocessing objects this process made, as a normal
    exit would (os._exit does not), before a retiring process says it is
    done (the supervisor then kills its group) and at its exit.

    A lock a job keeps for the life of the process (tqdm's) has a named
    semaphore, tracked by a resource tracker the job started with the job's
    output as its stderr. Unreleased, it stayed in /dev/shm when the
    supervisor killed the tracker with the group, or, when the tracker saw
    this process end first, its "leaked semaphore" warning ended the job's
    output. Finalizers made in other processes (the worker's, inherited) are
    skipped by multiprocessing."""
    try:
        from multiprocessing import util

        util._run_finalizers(0)  # type: ignore[attr-defined]
    except BaseException:
        pass


def _job_stream(fd: int) -> io.TextIOWrapper:
    """A line-buffered text stream on ``fd``, built as Python builds
    ``sys.stdout`` (a buffer below the text layer), so that a job can re-wrap
    ``sys.stdout.buffer`` as it would anywhere."""
    return io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(fd, "w", closefd=False)),
        encoding="utf-8", errors="backslashreplace", line_buffering=True,
    )


def _let_go_of_streams(streams: tuple[Any, ...], kept: list[Any]) -> bool:
    """Flush the job's streams (those it was given, and any it put in their
    place); ``False`` if one still holds what it could not write (the job
    closed fds 1 and 2 after an unflushed print): then the process must not
    run another job. A stream closed by the job holds nothing."""
    flushed = True
    for stream in dict.fromkeys((*streams, sys.stdout, sys.stderr)):
        if stream is None:
            continue
        if stream not in streams:
            kept.append(stream)  # the job's own: collecting it might close fd 1
        try:
            stream.flush()
        except ValueError:
            pass  # closed: nothing left in it
        except Exception:
            flushed = False
            kept.append(stream)
    return flushed


def _getcwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # removed (a deploy pruned the release it ran from)
        return None


def _environ_raw() -> Any:
    """``os.environ`` as it keeps its variables (encoded, in a plain dict),
    to tell cheaply whether a job changed any: comparing ``os.environ``
    itself decodes every variable, ~27 µs a job with 36 of them, once per
    job on the way to its end. ``os.environ`` where it keeps no such dict."""
    return getattr(os.environ, "_data", os.environ)


def _put_back(cwd: str | None, environ: dict[str, str], environ_raw: Any,
              path: list[str]) -> bool:
    """Put back what a job may have changed for the next one (``environ``,
    and ``environ_raw`` as :func:`_environ_raw` gave it then); ``False`` if
    the working directory cannot be put back (the next job then gets a fresh
    process)."""
    if _getcwd() != cwd:
        if cwd is None:
            return False  # the job left the removed directory it started in
        try:
            os.chdir(cwd)
        except OSError:
            return False
    if _environ_raw() != environ_raw:
        os.environ.clear()
        os.environ.update(environ)
    sys.path[:] = path
    return True


def _let_go_of_inherited(keep: tuple[int, ...]) -> None:
    """Let go of every fd this process inherited from its pool worker (or RQ
    work horse) but ``keep`` and 0-2: multiprocessing's forkserver pipe and
    resource tracker, the pool's queues, the store's connection.

    A process a job leaves behind (a ``setsid`` daemon) would hold them for
    its whole life, and the forkserver only exits once every holder of its
    pipe has closed it, which held ``shutdown()`` and the server's exit. Each
    fd is pointed at /dev/null, not closed: Python objects of the worker still
    name them, and a closed number could be reused by the job's own files.
    The forkserver and resource tracker are forgotten, so that a job using
    multiprocessing starts its own.
    """
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return  # not Linux
    null = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        if fd > 2 and fd != null and fd not in keep:
            try:
                os.fstat(fd)
            except OSError:
                continue  # listdir's own, closed since
            os.dup2(null, fd, inheritable=False)
    os.close(null)
    try:
        from multiprocessing import forkserver, resource_tracker

        server: Any = forkserver._forkserver
        server._forkserver_alive_fd = server._forkserver_address = None
        server._forkserver_pid = None
        tracker: Any = resource_tracker._resource_tracker
        tracker._fd = tracker._pid = None
    except (ImportError, AttributeError):
        pass


def _signal_handlers() -> list[Any]:
    return [_getsignal(sig) for sig in _SIGNALS]


# The handlers as the interpreter keeps them (what signal.getsignal wraps):
# the same changes show, without an enum made for each, ~10 µs for the
# eight, once per job on the way to its end.
_getsignal: Any = getattr(signal, "_signal", signal).getsignal


# The handlers a job may set and a next job would inherit: every signal's
# (62 on Linux, ~1.5 µs to read with the interpreter's own getsignal).
_SIGNALS = tuple(sorted(signal.valid_signals()))


def _run(payload: bytes, max_result_bytes: int = MAX_RESULT_BYTES) -> wire.JobEnd:
    """Run one job's call: its pickled value and repr, or the error and
    whether the job's retry_on lets it run again."""
    retry_on: tuple[type[BaseException], ...] | None = None
    try:
        fn, args, kwargs, *rest = pickle.loads(payload)
        retry_on = rest[0] if rest else None
        value = fn(*args, **kwargs)
    except BaseException as exc:
        # The traceback from the job's own frames on: ours is noise to users.
        error = "".join(traceback.format_exception(
            type(exc), exc, exc.__traceback__ and exc.__traceback__.tb_next))
        return wire.JobEnd(None, None, error,
                           retryable=retry_on is None or isinstance(exc, retry_on))
    try:
        return wire.JobEnd(dump_result(value, max_result_bytes), shown(value), None,
                           retryable=True)
    except Unpicklable as exc:
        # (the same value again: no retry makes it picklable)
        return wire.JobEnd(None, None, str(exc), retryable=False)


def _redirect_stdio(out_fd: int) -> None:
    """Point fds 1 and 2 at ``out_fd``, stdin at /dev/null, and rebuild
    ``sys.stdout``/``sys.stderr`` line-buffered on them."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.close(out_fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = _line_stream(1)
    sys.stderr = _line_stream(2)


def _line_stream(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
