"""Exceptions raised by wsgi_bg.

Bad input to the public API raises the matching built-in exception
(:exc:`TypeError`, :exc:`ValueError`); the conditions below have no built-in
counterpart and get classes of their own.
"""

from __future__ import annotations

from werkzeug.exceptions import InternalServerError, ServiceUnavailable


class WsgiBgError(Exception):
    """Base class of the exceptions wsgi_bg defines."""


class _Unavailable(WsgiBgError, ServiceUnavailable):
    """A ``503`` with ``Retry-After`` whose ``str()`` is its description
    alone (Werkzeug's also names the status)."""

    def __init__(self, description: str | None = None, retry_after: int = 5) -> None:
        ServiceUnavailable.__init__(self, description, retry_after=retry_after)

    def __str__(self) -> str:
        return str(self.description)


class QueueFull(_Unavailable):
    """More jobs are waiting than ``max_queued`` allows; nothing was queued.

    It is also Werkzeug's :exc:`~werkzeug.exceptions.ServiceUnavailable`: raised
    in a view (by a :func:`~wsgi_bg.background` call) and not caught, Flask, any
    Werkzeug app and the middleware itself answer ``503`` with a
    ``Retry-After`` header. Raise ``max_queued`` or ``max_workers`` if it
    happens under normal load.
    """


class CallTooLarge(WsgiBgError, ValueError):
    """A call's arguments pickle to more than ``max_call_bytes``; nothing was
    queued. Pass a reference to the data (a file's path, a database key, a
    URL) and load it inside the job instead.

    .. versionadded:: 0.2
    """


class ResultUnavailable(WsgiBgError):
    """A job's result was asked for but cannot be given.

    Raised by :attr:`wsgi_bg.Job.result` when the job has not succeeded, or when
    its pickled return value cannot be loaded in this process.
    """


class AppFailed(WsgiBgError):
    """A marked app, run as a job, answered with a 5xx status: the job failed."""


class StoreUnavailable(_Unavailable):
    """The job store cannot be reached: Redis is down, hung or unreachable
    (calls time out after a few seconds). The default store, in the server
    process itself, never raises it.

    Like :exc:`QueueFull` it is Werkzeug's
    :exc:`~werkzeug.exceptions.ServiceUnavailable`: requests that need the
    store are answered ``503`` with ``Retry-After``. A Redis store recovers by
    itself once Redis answers again.
    """


class UnreadableRecord(WsgiBgError, InternalServerError):
    """A job's record in the store cannot be read: a field holds what no
    version of wsgi_bg writes there (a word where a number belongs), so it
    was changed outside wsgi_bg (by hand, or by a damaged store). Nothing in
    it was loaded (records hold no pickles). Other jobs are unaffected.

    It is Werkzeug's :exc:`~werkzeug.exceptions.InternalServerError`: the
    pages answer ``500`` saying which job and which field. Delete the job's
    keys, or fix the field, to clear it.

    .. versionadded:: 0.2
    """

    def __init__(self, job_id: str, problem: str) -> None:
        self.job_id = job_id
        InternalServerError.__init__(
            self, f"the record of job {job_id} in the store is unreadable:"
            f" {problem}. It was changed outside wsgi_bg; nothing in it was"
            " loaded, and other jobs are unaffected.")

    def __str__(self) -> str:
        return str(self.description)
