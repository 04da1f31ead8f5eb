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
"""

from __future__ import annotations

import contextvars
import os
import pickle
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .middleware import BackgroundMiddleware

#: The middleware serving the current request, for @background and marked apps.
active_middleware: contextvars.ContextVar[BackgroundMiddleware | None] = (
    contextvars.ContextVar("wsgi_bg.middleware", default=None)
)

_HEADER = struct.Struct("!I")


def send_message(fd: int, message: tuple[Any, ...]) -> None:
    """Write one length-prefixed pickled message to a pipe (child to supervisor)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


class _JobContext:
    __slots__ = ("job_id", "msg_fd", "control_fd", "cancelled")

    def __init__(self, job_id: str, msg_fd: int, control_fd: int) -> None:
        self.job_id = job_id
        self.msg_fd = msg_fd
        self.control_fd = control_fd  # non-blocking; a byte arrives on cancel
        self.cancelled = False


_job: _JobContext | None = None


def enter_job(job_id: str, msg_fd: int, control_fd: int) -> None:
    """Make this process the job's process (called once, in the job's child)."""
    global _job
    _job = _JobContext(job_id, msg_fd, control_fd)


def leave_job() -> None:
    """This process's job is over (a job process runs several in turn)."""
    global _job
    _job = None


def in_job() -> bool:
    """Whether this process is running a job."""
    return _job is not None


def _require() -> _JobContext:
    if _job is None:
        raise RuntimeError(
            "current_job is only available inside a running job: call it from a"
            " function run by BackgroundMiddleware.submit or a @background function"
        )
    return _job


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
            try:
                job.cancelled = bool(os.read(job.control_fd, 1))
            except BlockingIOError:
                pass
        return job.cancelled

    def progress(
        self, done: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress: ``done`` units of ``total`` (if known), and a message.

        The status page draws it as a progress bar. Cheap enough to call in a
        loop: reports travel with the output, and only the latest is kept.

        :raises TypeError: if ``done`` or ``total`` is not a number.
        """
        job = _require()
        for label, value in (("done", done), ("total", total)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise TypeError(
                    f"current_job.progress: {label} must be a number, got {value!r}"
                )
        report = {"done": done, "total": total,
                  "message": None if message is None else str(message)}
        send_message(job.msg_fd, ("progress", report))

    def __repr__(self) -> str:
        return f"<current_job {_job.job_id if _job else '(no job)'}>"


#: The running job, inside a job. See :class:`CurrentJob`.
current_job = CurrentJob()
