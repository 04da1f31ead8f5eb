"""The :class:`Job` handle, :class:`JobState` and job ids.

A :class:`Job` holds nothing but an id and the store it lives in: every
attribute reads the store, so a handle kept by a view or a test always shows the
job as it is now, whichever process runs it.
"""

from __future__ import annotations

import enum
import pickle
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from .exceptions import ResultUnavailable

if TYPE_CHECKING:
    from .engine import Engine


class JobState(enum.StrEnum):
    """Where a job is in its life. The last five are terminal: a job reaches
    exactly one of them, exactly once."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    CRASHED = "crashed"

    @property
    def done(self) -> bool:
        """``True`` for the terminal states."""
        return self not in (JobState.QUEUED, JobState.RUNNING)


TERMINAL_STATES = frozenset(s.value for s in JobState if s.done)

#: 32 random bytes in URL-safe base64: 256 bits, 43 characters.
_ID_BYTES = 32


def new_job_id() -> str:
    """A fresh job id: 256 random bits, URL-safe, never derived from a pid.

    A job id is a capability: whoever holds it may read the job's output and
    cancel it, so it must not be guessable.
    """
    return secrets.token_urlsafe(_ID_BYTES)


#: The shape of a job id (what the pages' routes match).
JOB_ID_PATTERN = r"[A-Za-z0-9_-]{43}"


def is_job_id(value: str) -> bool:
    """Whether ``value`` has the shape of a job id (cheap check before a lookup)."""
    return re.fullmatch(JOB_ID_PATTERN, value) is not None


class Job:
    """A live handle on one job.

    Every attribute reads the store, so it always shows the job's current state.
    Get one from :meth:`BackgroundMiddleware.submit`, from calling a
    :func:`~wsgi_bg.background` function in a view, or from
    :meth:`BackgroundMiddleware.get_job`.

    .. code-block:: python

        job = mw.submit(tasks.report, 2026)
        job.wait(timeout=60)
        if job.state is JobState.SUCCEEDED:
            print(job.result)

    .. versionadded:: 0.1
    """

    __slots__ = ("_id", "_engine")

    def __init__(self, engine: Engine, job_id: str) -> None:
        self._engine = engine
        self._id = job_id

    def __repr__(self) -> str:
        record = self._engine.store.get(self._id)
        state = record["state"] if record else "forgotten"
        name = record["name"] if record else "?"
        return f"<Job {self._id[:8]}… {name} {state}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def _record(self) -> dict[str, Any]:
        record = self._engine.store.get(self._id)
        if record is None:
            raise LookupError(
                f"job {self._id!r} is no longer stored: finished jobs are dropped"
                " after job_ttl seconds or past keep_finished"
            )
        return record

    @property
    def id(self) -> str:
        """The job's id: random, URL-safe, never reused."""
        return self._id

    @property
    def name(self) -> str:
        """What runs: ``module.function``, or the marked app's name."""
        return str(self._record()["name"])

    @property
    def state(self) -> JobState:
        """The job's :class:`JobState` now."""
        return JobState(self._record()["state"])

    @property
    def done(self) -> bool:
        """``True`` once the job has reached a terminal state."""
        return self.state.done

    @property
    def output(self) -> str:
        """Everything the job wrote to stdout and stderr so far, in order.

        Output past ``max_output_bytes`` keeps its head and its tail, with a
        marker line saying how much was dropped.
        """
        read = self._engine.store.read_output(self._id, 0)
        if read is None:
            self._record()  # raises LookupError
            return ""
        return read[0]

    def read_output(self, since: int = 0) -> tuple[str, int]:
        """The output after offset ``since`` and the offset to ask from next.

        Offsets count characters ever written, so polling with the returned
        offset fetches only what is new.
        """
        read = self._engine.store.read_output(self._id, since)
        if read is None:
            self._record()
            return "", since
        return read

    def view(self, since: int = 0) -> tuple[dict[str, Any], str, int]:
        """:meth:`to_dict`, the output after ``since`` and the next offset, read
        together: one store call, and the output is all there is once the
        state says done. What the status pages poll.

        :raises LookupError: if the job is no longer stored.
        """
        found = self._engine.store.view(self._id, since)
        if found is None:
            self._record()  # raises LookupError
            raise LookupError(self._id)  # pragma: no cover - stored again?
        record, text, offset = found
        return record_to_dict(record), text, offset

    @property
    def result(self) -> Any:
        """The job's return value.

        :raises ResultUnavailable: if the job has not succeeded, or its value
            cannot be unpickled here.
        """
        record = self._record()
        if record["state"] != JobState.SUCCEEDED:
            raise ResultUnavailable(
                f"job {self._id} has no result: its state is {record['state']}"
            )
        return _load_result(self._engine.store.result(self._id))

    @property
    def error(self) -> str | None:
        """Why the job did not succeed: a traceback, or what ended it; else ``None``."""
        return self._record()["error"]  # type: ignore[no-any-return]

    @property
    def progress(self) -> dict[str, Any] | None:
        """The last :meth:`current_job.progress <wsgi_bg.context.CurrentJob.progress>`
        report, as ``{"done", "total", "message"}``, or ``None``."""
        return self._record()["progress"]  # type: ignore[no-any-return]

    @property
    def created_at(self) -> float:
        """When the job was submitted (seconds since the epoch)."""
        return float(self._record()["created_at"])

    @property
    def started_at(self) -> float | None:
        """When the job started running, or ``None`` while queued."""
        return self._record()["started_at"]  # type: ignore[no-any-return]

    @property
    def ended_at(self) -> float | None:
        """When the job reached a terminal state, or ``None``."""
        return self._record()["ended_at"]  # type: ignore[no-any-return]

    @property
    def url(self) -> str | None:
        """The path of the job's status page, when known."""
        return self._record()["url"]  # type: ignore[no-any-return]

    @property
    def attempt(self) -> int:
        """Which attempt the job is on (or ended on), from 1: see
        :func:`~wsgi_bg.background`'s ``retries``. While a failed attempt
        waits for its next, :attr:`state` is ``queued`` and this is the
        next attempt's number.

        .. versionadded:: 0.2
        """
        return int(self._record().get("attempt") or 1)

    @property
    def cancel_requested(self) -> bool:
        """Whether :meth:`cancel` was called while the job was running."""
        return bool(self._record()["cancel_requested"])

    def wait(self, timeout: float | None = None) -> Job:
        """Block until the job is done; return the job.

        :param timeout: seconds to wait at most; ``None`` waits for ever.
        :raises TimeoutError: if the job is not done within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while not self.done:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"job {self._id} is still {self.state} after {timeout} s"
                    )
                delay = min(delay, left)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self

    def cancel(self) -> bool:
        """Cancel the job.

        A queued job is cancelled at once and never runs. A running job sees
        :attr:`current_job.cancel_requested <wsgi_bg.current_job>`; if it still
        runs ``cancel_grace`` seconds later its process is killed. Either way it
        ends :attr:`JobState.CANCELLED`.

        :return: ``True`` if the job was queued or running, ``False`` if it had
            already ended (or is no longer stored).
        """
        return self._engine.cancel(self._id)

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-serialisable data (without its output).

        Keys: id, name, state, done, created_at, started_at, ended_at, progress,
        error, result (``repr`` of the value, or ``None``), url,
        cancel_requested, output_size, args (a bounded description of the call's
        arguments made without running their own code, for a marked app its
        request line without secrets; ``None`` when hidden by
        ``show_args=False``),
        cancel_requested_at, cancelled_how (``"before_start"``, ``"stopped"``
        by itself within its grace, ``"killed"`` after it, or ``None``),
        rerun_of (the id of the job this one runs again, or ``None``),
        rerun_as (the id of this job's latest run again, or ``None``; see
        :meth:`BackgroundMiddleware.rerun <wsgi_bg.BackgroundMiddleware.rerun>`),
        notice (what the job says while it is queued, e.g. the RQ runner's
        "no RQ worker listens on queue …" with the command that starts one;
        ``None`` once it starts or ends),
        unique (``True`` for a job started with a unique key: while it is
        queued or running, calls with the same key return it; see
        :func:`~wsgi_bg.background`),
        attempt (this attempt, from 1), retries (attempts after the first
        it may make, 0 without ``retries=``), retry_at (while the job waits
        for its next attempt, when it is due; else ``None``), errors (each
        failed attempt's ``{"attempt", "state", "ended_at", "error"}``, the
        latest 20; see :func:`~wsgi_bg.background`'s ``retries``).
        """
        return record_to_dict(self._record())


def _load_result(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise ResultUnavailable(
            f"the job's result cannot be unpickled in this process: {exc!r}"
        ) from exc


def record_to_dict(record: dict[str, Any]) -> dict[str, Any]:
    """The public, JSON-serialisable view of a stored record."""
    return {
        "id": record["id"],
        "name": record["name"],
        "state": record["state"],
        "done": record["state"] in TERMINAL_STATES,
        "created_at": record["created_at"],
        "started_at": record["started_at"],
        "ended_at": record["ended_at"],
        "progress": record["progress"],
        "error": record["error"],
        "result": record["result"],  # the value's repr, made where it was
        "url": record["url"],
        "cancel_requested": record["cancel_requested"],
        "output_size": record.get("output_size", 0),
        "args": record.get("args"),
        "cancel_requested_at": record.get("cancel_requested_at"),
        "cancelled_how": record.get("cancelled_how"),
        "rerun_of": record.get("rerun_of"),
        "rerun_as": record.get("rerun_as"),
        "notice": record.get("notice"),
        "unique": bool(record.get("unique")),  # never the key, nor its digest
        "attempt": record.get("attempt") or 1,
        "retries": record.get("retries") or 0,
        "retry_at": record.get("retry_at"),
        "errors": record.get("errors") or [],
    }
