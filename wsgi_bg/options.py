"""The options a user gives, checked once: :class:`Settings`, the frozen
options of one :class:`~wsgi_bg.BackgroundMiddleware` that its engine,
store and runner read; :class:`RetryPolicy`, ``@background``'s retry
options; and :func:`check_number`, also used for ``@background``'s other
per-function options.

Runs in the server process, at construction or decoration, before anything
starts: a wrong option fails there, with a message that names it and says
what it must be, never later in a worker.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
import sys
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from .limits import MAX_CALL_BYTES, MAX_RESULT_BYTES

#: Finished jobs kept (``keep_finished``'s default).
KEEP_FINISHED = 1000


def check_number(name: str, value: Any, *, minimum: float, allow_none: bool = False,
                 integer: bool = False) -> None:
    """Raise :exc:`ValueError` unless option ``name``'s ``value`` is a number
    (``integer``: an int) of at least ``minimum`` (``allow_none``: or None)."""
    if value is None and allow_none:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        what = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {what} >= {minimum}, got {value!r}")


def default_start_method() -> str:
    """forkserver on Linux (a threaded server must not fork), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    if sys.platform.startswith("linux") and "forkserver" in methods:
        return "forkserver"
    return "spawn"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The options of one :class:`~wsgi_bg.BackgroundMiddleware` that its
    engine, store and runner read (``mw.settings``), each documented there;
    checked when built (:exc:`ValueError` or :exc:`TypeError` naming the
    option), never changed after. ``store``, ``namespace``, ``secret_key`` and
    ``runner`` are checked by the store and runner they select.

    .. versionadded:: 0.2
    """

    max_workers: int | None = None
    keep_finished: int = KEEP_FINISHED
    job_ttl: float = 86400
    max_output_bytes: int = 1_048_576
    max_queued: int = 1000
    cancel_grace: float = 5.0
    start_method: str = dataclasses.field(default_factory=default_start_method)
    executor_factory: Callable[[], Executor] | None = None
    max_jobs_per_process: int = 100
    store: Any = None
    namespace: str = "wsgi_bg"
    secret_key: str | bytes | None = None
    runner: Any = "pool"
    max_result_bytes: int = MAX_RESULT_BYTES
    max_call_bytes: int = MAX_CALL_BYTES

    def __post_init__(self) -> None:
        check_number("max_jobs_per_process", self.max_jobs_per_process, minimum=1,
                     integer=True)
        check_number("max_workers", self.max_workers, minimum=1, allow_none=True,
                     integer=True)
        check_number("keep_finished", self.keep_finished, minimum=1, integer=True)
        check_number("job_ttl", self.job_ttl, minimum=0)
        check_number("max_output_bytes", self.max_output_bytes, minimum=256,
                     integer=True)
        check_number("max_queued", self.max_queued, minimum=1, integer=True)
        check_number("max_result_bytes", self.max_result_bytes, minimum=1,
                     integer=True)
        check_number("max_call_bytes", self.max_call_bytes, minimum=1, integer=True)
        check_number("cancel_grace", self.cancel_grace, minimum=0)
        methods = multiprocessing.get_all_start_methods()
        if self.start_method not in methods:
            raise ValueError(
                f"start_method must be one of {methods}, got {self.start_method!r}")
        if self.executor_factory is not None and not callable(self.executor_factory):
            raise TypeError(
                "executor_factory must be a callable returning a"
                f" concurrent.futures.Executor, got {self.executor_factory!r}")


#: The longest wait between two attempts unless ``retry_delay_max`` says
#: otherwise: an hour (a retry waits in the store, holding its slot).
RETRY_DELAY_MAX = 3600.0


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a job runs again after a failed attempt: what
    :func:`~wsgi_bg.background`'s ``retries``, ``retry_delay``,
    ``retry_delay_max``, ``retry_on`` and ``retry_crashed`` make, checked
    once (see :func:`retry_policy`). The record keeps all but ``on``, which
    travels with the pickled call to the job process: only there is the
    exception object, to test against it.

    .. versionadded:: 0.2
    """

    #: Attempts after the first, at most.
    retries: int = 0
    #: Seconds before the second attempt; each next wait is twice the last.
    delay: float = 1.0
    #: The longest wait, in seconds.
    delay_max: float = RETRY_DELAY_MAX
    #: The exceptions that make a failed attempt run again (``None``: any).
    on: tuple[type[BaseException], ...] | None = None
    #: Whether an attempt whose process died (killed, out of memory) runs again.
    crashed: bool = False

    def record_fields(self) -> dict[str, Any]:
        """What a job's record keeps of it (the store decides from them)."""
        return {"retries": self.retries, "retry_delay": self.delay,
                "retry_delay_max": self.delay_max, "retry_crashed": self.crashed}


def retry_policy(
    retries: Any = 0, retry_delay: Any = 1.0, retry_delay_max: Any = RETRY_DELAY_MAX,
    retry_on: Any = None, retry_crashed: Any = False,
) -> RetryPolicy | None:
    """Check the retry options (``None``: no retries).

    :raises ValueError: for a count or a delay that is not a number in range.
    :raises TypeError: for a ``retry_on`` that is not an exception class or
        a tuple of them, a ``retry_crashed`` that is not a bool, or retry
        options given with ``retries=0``.
    """
    check_number("retries", retries, minimum=0, integer=True)
    check_number("retry_delay", retry_delay, minimum=0)
    check_number("retry_delay_max", retry_delay_max, minimum=0)
    if retry_delay_max < retry_delay:
        raise ValueError(
            f"retry_delay_max must be at least retry_delay ({retry_delay!r}),"
            f" got {retry_delay_max!r}")
    on: tuple[type[BaseException], ...] | None = None
    if retry_on is not None:
        classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        if not classes or not all(isinstance(c, type) and issubclass(c, BaseException)
                                  for c in classes):
            raise TypeError(
                "retry_on must be an exception class or a tuple of them, e.g."
                f" retry_on=(ConnectionError, TimeoutError), got {retry_on!r}")
        for cls in classes:
            try:
                pickle.dumps(cls)
            except Exception:
                raise TypeError(
                    f"retry_on: {cls.__qualname__} cannot be sent to a worker"
                    " process (it is not importable by name): define it at"
                    " module level") from None
        on = classes
    if not isinstance(retry_crashed, bool):
        raise TypeError(f"retry_crashed must be True or False, got {retry_crashed!r}")
    if retries == 0:
        if on is not None or retry_crashed:
            raise TypeError(
                "retry_on and retry_crashed say which failures run again: give"
                " retries too, e.g. retries=3")
        return None
    return RetryPolicy(retries, float(retry_delay), float(retry_delay_max), on,
                       retry_crashed)
