"""The inline runner, for tests: a job runs at once, in the thread that starts it.

Use it where a test needs its mocks and monkeypatches to apply inside the job,
as Celery's ``task_always_eager`` or RQ's ``is_async=False`` do::

    def test_report(monkeypatch):
        monkeypatch.setattr(myapp.reports, "fetch_sales", lambda year: [1, 2])
        mw = BackgroundMiddleware(myapp.app, runner="inline")
        res = TestApp(mw).post("/reports/2026", status=303)   # the job ran
        job = mw.get_job(res.location.rsplit("/", 1)[1])
        assert job.result == {"year": 2026, "total": 3}

The view still gets its :class:`~wsgi_bg.Job` (done by the time the call
returns) and a marked app still answers ``303``. The job goes through the same
states, in the configured store, as a real one (``queued``, ``running``, then
``succeeded``, ``failed`` or ``cancelled``), so the status pages show it;
``current_job`` (id, progress, ``cancel_requested``), the result (checked to
pickle, as a real job's must), the error (a traceback from the job's own
code) and the output work as in a real job. The call and its arguments go
through a pickle round trip first, as they would to a worker: what a job
changes in its arguments is not seen by the caller, and a call that could
not run in a worker fails here too. With the default store nothing starts:
no manager, no pool; a job's output and progress reach the store
through one short-lived thread per job (the same batching as a real job's,
which also renews a Redis store's lease of the job and brings cancel
requests). With a Redis store, jobs are written there.

What it does not do, being no process of its own: no fd-level capture (what
child processes or ``os.system`` write, or anything written to file
descriptors 1 and 2 directly, goes where the caller's output goes); no
``timeout``; no kill after ``cancel_grace`` (a cancel only sets
``current_job.cancel_requested``); no crash isolation (an ``os._exit`` or a
segfault takes the caller down, and module-level state a job changes stays
changed); no parallelism (a job blocks its caller until it ends). A job
started from inside an inline job (``mw.submit``) runs inline in it, as a job
of its own; a ``@background`` function called there runs as plain code of
the outer job, as inside any job. It is for tests, not for serving.

Output and threads. A real job owns its process's file descriptors; an inline
job shares the process with the server's other threads. While inline jobs
run, ``sys.stdout`` and ``sys.stderr`` are proxies that send a write to the
job of the *writing thread's context* (a :mod:`contextvars` variable), and
anything else to the stream they replaced; logging ``StreamHandler`` objects
writing to those streams get the same proxies meanwhile. So a job captures
its own ``print``, ``sys.stderr`` and logging, and never another thread's
(another request's log line does not land in a job's page, nor a job's line
in the test's output). The alternatives were worse: swapping ``sys.stdout``
for a job's own buffer (``contextlib.redirect_stdout``) steals every
thread's output for the job's duration, and capturing nothing would break
the promise that output works as in a real job. The price: a thread that the
job code starts begins with a fresh context, so its output goes to the
caller's streams and ``current_job`` is unavailable in it (the same holds of
any contextvar), unless the job runs it with
:func:`contextvars.copy_context`. The proxies are put back when the last
inline job ends, unless something replaced them meanwhile.
"""

from __future__ import annotations

import contextvars
import logging
import pickle
import sys
import threading
import traceback
from typing import Any

from .. import context
from ..capture import Relay
from ..jobs import JobState
from ..limits import MAX_RESULT_BYTES
from ..stores import Ending, Link, Store
from . import results

logger = logging.getLogger("wsgi_bg")

__all__ = ["InlineRunner"]


class InlineRunner:
    """Runs each job at once in the calling thread; the
    :class:`~wsgi_bg.runners.Runner` for ``runner="inline"``. See the module
    docstring.

    .. versionadded:: 0.2
    """

    kind = "inline"
    #: No process of ours reaches the store: jobs run here, in the caller.
    needs_link = False
    #: A job "waits" in this process (for no time at all).
    holds_queued = True

    def __init__(self, max_result_bytes: int = MAX_RESULT_BYTES) -> None:
        self.store: Store | None = None
        self.max_result_bytes = max_result_bytes

    def start(self, link: Link | None) -> None:
        if link is None:
            raise ValueError("the inline runner needs the store of this process")
        self.store = link.connect()

    def submit(
        self, job_id: str, payload: bytes, timeout: float | None, grace: float,
        name: str = "", created_at: float = 0.0, attempt: int = 1,
    ) -> None:
        """Run the job now, to its end, and record it; the store says it all.
        ``timeout`` and ``grace`` are not enforced (nothing can be killed)."""
        if self.store is None:
            raise RuntimeError("the inline runner is not started")
        run_inline(self.store, job_id, payload, self.max_result_bytes)

    def cancel(self, job_id: str) -> None:
        pass  # a queued inline job is already over: nothing waits anywhere

    def shutdown(self, timeout: float | None = None) -> None:
        pass  # nothing was started; a job in progress ends by itself


# -- one job --------------------------------------------------------------------
class _InlineJob(context.JobContext):
    """What ``current_job`` and the output proxies reach during an inline job:
    a :class:`~wsgi_bg.capture.Relay` to the store, fed by the job's thread
    and sent by a relay thread (as the supervisor does for a real job)."""

    __slots__ = ("relay", "lock", "done", "thread")

    def __init__(self, store: Store, job_id: str) -> None:
        super().__init__(job_id)
        self.relay = Relay(store, job_id)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(
            target=self._relay_loop, name=f"wsgi_bg-inline-{job_id[:8]}", daemon=True)

    # What the job's thread calls.
    def write(self, data: bytes) -> None:
        with self.lock:
            self.relay.feed(data)

    def report_progress(self, report: dict[str, Any]) -> None:
        with self.lock:
            self.relay.progress(report)

    def poll_cancel(self) -> bool:
        # Asked now, not at the next batch: a test that cancels a job from
        # inside it (a mock) sees cancel_requested at once.
        return self._send()

    # The relay thread.
    def _relay_loop(self) -> None:
        while True:
            with self.lock:
                wait = self.relay.due_in()
            if self.done.wait(wait):
                return
            with self.lock:
                due = self.relay.due_in() == 0.0
            if due:
                self.cancelled = self._send() or self.cancelled

    def _send(self) -> bool:
        try:
            with self.lock:
                cancel, _grace = self.relay.send()  # holds output if unreachable
        except Exception:  # keep the job running whatever the store did
            logger.exception("wsgi_bg: could not relay inline job %s", self.job_id)
            return False
        return cancel


def run_inline(
    store: Store, job_id: str, payload: bytes,
    max_result_bytes: int = MAX_RESULT_BYTES,
) -> str | None:
    """Run one job's pickled call in this thread and record it in ``store``.

    Returns the final state, or ``None`` if the job was no longer queued.
    """
    # pid 0: there is no process of the job's own, and the caller's process
    # group must never be taken for one.
    if not store.start(job_id, 0):
        return None
    job = _InlineJob(store, job_id)
    job.thread.start()
    token = context.enter_inline(job)
    capture_token = _capture.set(job)
    _install()
    result: bytes | None = None
    shown = error = None
    escaping: BaseException | None = None
    retry_on: tuple[type[BaseException], ...] | None = None
    retryable = True
    try:
        fn, args, kwargs, *rest = pickle.loads(payload)
        retry_on = rest[0] if rest else None
        value = fn(*args, **kwargs)
    except BaseException as exc:
        # The traceback from the job's own frames on, as from a job process.
        error = "".join(traceback.format_exception(
            type(exc), exc, exc.__traceback__ and exc.__traceback__.tb_next))
        retryable = retry_on is None or isinstance(exc, retry_on)
        if not isinstance(exc, (Exception, SystemExit)):
            escaping = exc  # ^C and the like: recorded, then the caller's
    else:
        try:
            result = results.dump_result(value, max_result_bytes)
            shown = results.shown(value)
        except results.Unpicklable as exc:
            error = str(exc)
            retryable = False
    finally:
        _uninstall()
        _capture.reset(capture_token)
        cancel_seen = job.cancelled
        context.leave_inline(token)
        job.done.set()
        job.thread.join()
    state = JobState.FAILED.value if error is not None else JobState.SUCCEEDED.value
    text, progress, offset = job.relay.take(final=True)
    ended = store.finish(job_id, Ending(
        state, result, error, text, progress, offset, shown=shown,
        cancel_seen=cancel_seen, retryable=retryable))
    if escaping is not None:
        raise escaping
    return ended


# -- output: sys.stdout and sys.stderr, per job ------------------------------------
#: The inline job whose output this context's writes are.
_capture: contextvars.ContextVar[_InlineJob | None] = contextvars.ContextVar(
    "wsgi_bg.inline_capture", default=None
)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")  # as a job process's streams


class _BinaryProxy:
    """``sys.stdout.buffer`` of a proxy (marked apps write their body there)."""

    def __init__(self, stream: _StreamProxy) -> None:
        self._stream = stream

    def write(self, data: bytes) -> int:
        job = _capture.get()
        if job is None:
            return self._stream._target().buffer.write(data)  # type: ignore[no-any-return]
        job.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        if _capture.get() is None:
            self._stream._target().buffer.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream._target().buffer, name)


class _StreamProxy:
    """Stands for ``sys.stdout`` or ``sys.stderr`` while inline jobs run: a
    write from a thread in an inline job is that job's output; any other goes
    to the stream it replaced."""

    def __init__(self, original: Any) -> None:
        self._original = original
        self.buffer = _BinaryProxy(self)

    def _target(self) -> Any:
        return self._original

    def write(self, text: str) -> int:
        job = _capture.get()
        if job is None:
            if self._original is None:  # no console (pythonw)
                return len(text)
            return self._original.write(text)  # type: ignore[no-any-return]
        job.write(_encode(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _capture.get() is None and self._original is not None:
            self._original.flush()

    def isatty(self) -> bool:
        if _capture.get() is not None:
            return False  # as a job's pipe
        return bool(self._original is not None and self._original.isatty())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


_install_lock = threading.Lock()
_installed = 0
_proxies: tuple[_StreamProxy, _StreamProxy] | None = None
_swapped: list[tuple[logging.StreamHandler[Any], Any]] = []


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    loggers: list[Any] = [logging.getLogger()]
    loggers += logging.Logger.manager.loggerDict.values()
    return [handler for each in loggers for handler in getattr(each, "handlers", ())
            if isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler)]


def _proxy_for(
    stream: Any, out: _StreamProxy, err: _StreamProxy
) -> _StreamProxy | None:
    """The proxy for a handler writing to ``stream``, if it writes where
    a job's output would go in a job process: the current or the original
    ``sys.stdout``/``sys.stderr``, or file descriptor 1 or 2."""
    if stream is None or isinstance(stream, _StreamProxy):
        return None
    if stream is out._original or stream is sys.__stdout__:
        return out
    if stream is err._original or stream is sys.__stderr__:
        return err
    try:
        fd = stream.fileno()
    except Exception:  # StringIO, closed streams: not an fd
        return None
    return out if fd == 1 else err if fd == 2 else None


def _install() -> None:
    """Put the proxies in place (the first of the inline jobs running)."""
    global _installed, _proxies
    with _install_lock:
        _installed += 1
        if _installed > 1:
            return
        out, err = _StreamProxy(sys.stdout), _StreamProxy(sys.stderr)
        _proxies = out, err
        sys.stdout, sys.stderr = out, err
        for handler in _stream_handlers():
            proxy = _proxy_for(handler.stream, out, err)
            if proxy is not None:
                _swapped.append((handler, handler.stream))
                handler.stream = proxy


def _uninstall() -> None:
    """Put the streams back (the last of the inline jobs running), unless
    something replaced the proxies meanwhile (then it owns the streams)."""
    global _installed, _proxies
    with _install_lock:
        _installed -= 1
        if _installed or _proxies is None:
            return
        out, err = _proxies
        _proxies = None
        if sys.stdout is out:
            sys.stdout = out._original
        if sys.stderr is err:
            sys.stderr = err._original
        for handler, stream in _swapped:
            if handler.stream in (out, err):
                handler.stream = stream
        _swapped.clear()

