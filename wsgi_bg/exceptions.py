"""Exceptions raised by wsgi_bg.

Bad input to the public API raises the matching built-in exception
(:exc:`TypeError`, :exc:`ValueError`); the conditions below have no built-in
counterpart and get classes of their own.
"""

from __future__ import annotations


class WsgiBgError(Exception):
    """Base class of the exceptions wsgi_bg defines."""


class QueueFull(WsgiBgError):
    """More jobs are waiting than ``max_queued`` allows; nothing was queued.

    The status pages answer this with ``503 Service Unavailable`` and a
    ``Retry-After`` header. Raise ``max_queued`` or ``max_workers`` if it happens
    under normal load.
    """


class ResultUnavailable(WsgiBgError):
    """A job's result was asked for but cannot be given.

    Raised by :attr:`wsgi_bg.Job.result` when the job has not succeeded, or when
    its pickled return value cannot be loaded in this process.
    """


class AppFailed(WsgiBgError):
    """A marked app, run as a job, answered with a 5xx status: the job failed."""
