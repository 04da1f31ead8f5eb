"""``current_job``: what a running job knows about itself.

Inside a job (in its own process) :data:`current_job` gives the job's id, lets
it report progress and tells it whether it was asked to stop::

    from wsgi_bg import background, current_job

    @background
    def rebuild(paths):
        for n, path in enumerate(paths):
            if current_job.cancel_requested:
                return "stopped early"
            current_job.progress(n, len(paths), path)
            build(path)

Outside a job every use raises :exc:`RuntimeError`.

Which process runs it: every process that runs job code or serves requests.
In a job process, the job's context is
:mod:`~wsgi_bg.runners.job_process`'s, which reports over the pipes to the
supervisor (:mod:`~wsgi_bg.runners.wire`); in the inline runner, a context
variable of the calling thread; in a test, :func:`wsgi_bg.testing.job_context`.
In the server, :data:`serving` is the request's middleware, for
``@background`` calls and job links::

    request thread: serving ─► @background, marked apps find their middleware
    job code: current_job ─► the job's JobContext ─► the supervisor (or the
              inline relay, or a test's recorder)
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

from .limits import progress_report

if TYPE_CHECKING:
    from .middleware import BackgroundMiddleware

#: The middleware serving the current request, for @background and marked
#: apps, with the request's ``SCRIPT_NAME`` as it reached the middleware (apps
#: below, such as DispatcherMiddleware, change environ's in place), for job
#: links; ``None`` there: where the middleware was last seen mounted. One
#: variable, not two: each is set and reset on every request.
serving: contextvars.ContextVar[tuple[BackgroundMiddleware, str | None] | None] = (
    contextvars.ContextVar("wsgi_bg.serving", default=None)
)


def active_middleware() -> BackgroundMiddleware | None:
    """The middleware serving the current request, or ``None``."""
    served = serving.get()
    return served[0] if served is not None else None


class JobContext:
    """Where a running job's :data:`current_job` reports to and reads from.

    A job process has one over its pipes to the supervisor; a test gets one
    from :func:`wsgi_bg.testing.job_context`. Subclasses implement
    :meth:`report_progress` and :meth:`poll_cancel`.
    """

    __slots__ = ("job_id", "cancelled")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.cancelled = False

    def report_progress(self, report: dict[str, Any]) -> None:
        """Pass on a checked ``{"done", "total", "message"}`` report."""
        raise NotImplementedError

    def poll_cancel(self) -> bool:
        """Whether a cancel arrived since the last call."""
        raise NotImplementedError


_job: JobContext | None = None


#: The job running inline in this thread (``runner="inline"``): ahead of
#: ``_job``, which is the whole process's (a job process, ``job_context()``).
#: A context variable, so that other threads of the server (other requests)
#: are in no job meanwhile.
_inline_job: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "wsgi_bg.inline_job", default=None
)


def enter_inline(job: JobContext) -> contextvars.Token[JobContext | None]:
    """Run this thread's code (its context) as ``job`` until
    :func:`leave_inline`; other threads are unaffected."""
    return _inline_job.set(job)


def leave_inline(token: contextvars.Token[JobContext | None]) -> None:
    """Put back the job :func:`enter_inline` replaced (the outer inline job)."""
    _inline_job.reset(token)


def _current() -> JobContext | None:
    job = _inline_job.get()
    return job if job is not None else _job


def enter(job: JobContext) -> JobContext | None:
    """Run this process's code as ``job``: :data:`current_job` reads it and
    :func:`~wsgi_bg.background` functions run inline. Returns the context
    it replaces, for :func:`restore`."""
    global _job
    previous, _job = _job, job
    return previous


def restore(previous: JobContext | None) -> None:
    """Put back the context :func:`enter` replaced."""
    global _job
    _job = previous


def leave_job() -> bool:
    """This process's job is over (a job process runs several in turn).
    Returns whether the job saw a cancel (read ``cancel_requested`` as
    ``True``): the store tells a job that stopped for it from one that
    completed its work without looking."""
    global _job
    seen = _job is not None and _job.cancelled
    _job = None
    return seen


def in_job() -> bool:
    """Whether this process (or this thread, for an inline job) is running a job."""
    return _current() is not None


def _require() -> JobContext:
    job = _current()
    if job is None:
        raise RuntimeError(
            "current_job is only available inside a running job: call it from a"
            " function run by BackgroundMiddleware.submit or a @background"
            " function (in a unit test, inside wsgi_bg.testing.job_context())"
        )
    return job


class CurrentJob:
    """The type of :data:`current_job`; use that instance, not this class."""

    __slots__ = ()

    @property
    def id(self) -> str:
        """The running job's id."""
        return _require().job_id

    @property
    def cancel_requested(self) -> bool:
        """``True`` once someone asked this job to stop.

        Check it between units of work and return early: if the job still runs
        ``cancel_grace`` seconds after the request, its process is killed.
        """
        job = _require()
        if not job.cancelled:
            job.cancelled = job.poll_cancel()
        return job.cancelled

    def progress(
        self, done: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress: ``done`` units of ``total`` (if known), and a message.

        The status page draws it as a progress bar. Cheap enough to call in a
        loop: reports travel with the output, and only the latest is kept.

        Numbers too big to show (beyond the float range, such as
        ``10**5000``) are kept as the largest float, and a message is cut to
        1,000 characters.

        :raises TypeError: if ``done`` or ``total`` is not a number.
        :raises ValueError: if one is NaN.
        """
        job = _require()
        try:
            report = progress_report(done, total, message)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"current_job.progress: {exc}") from None
        job.report_progress(report)

    def __repr__(self) -> str:
        job = _current()
        return f"<current_job {job.job_id if job else '(no job)'}>"


#: The running job, inside a job. See :class:`CurrentJob`.
current_job = CurrentJob()
