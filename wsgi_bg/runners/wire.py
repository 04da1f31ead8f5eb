"""What crosses between a supervisor and its job process, and how.

The supervisor (:mod:`~wsgi_bg.runners.supervisor`) and the job process
(:mod:`~wsgi_bg.runners.job_process`) share one socket pair, and a job's two
pipes::

    supervisor                                     job process
    send_job ── socket: frame + Handoff,         ─► recv_job
                fds on it
    MessageReader ◄── socket: frames ──────────── send_progress … then
                                                  one send_end (JobEnd)
    relay ◄──────── output pipe (fds 1 and 2) ───── the job's output
    cancel ──────── control pipe: one byte ──────► current_job.cancel_requested

Every frame is a 4-byte big-endian length, then a pickle of one of the
small typed messages below: both ends are of the same program (the job
process is forked from the supervisor, this module loaded), and only the
supervisor unpickles what the job process sends after checking that its
result pickles and unpickles (:mod:`~wsgi_bg.runners.results`).
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
from typing import Any, NamedTuple

#: The length before every frame, both ways.
HEADER = struct.Struct("!I")

# The values are NamedTuples, but frames carry their plain tuples: pickled by
# their class's name, they cost each job 10-15 µs more on its way through a
# warm job process (measured: supervise() of 3,000 trivial jobs, p50).


class Handoff(NamedTuple):
    """A job, from the supervisor to its job process (its two fds go with
    it, in the same message)."""

    job_id: str
    #: The pickled call: unpickled only in the job process.
    payload: bytes
    #: A result's pickled bytes at most (more fails the job).
    max_result_bytes: int


class JobEnd(NamedTuple):
    """The job process's last message about a job: how it returned, and
    whether the process runs another."""

    #: The pickled value, if it returned one that pickles (within the bound).
    result: bytes | None
    #: The value's repr, for pages.
    shown: str | None
    #: The traceback (or why its value could not be kept); ``None``: it
    #: succeeded.
    error: str | None
    #: Whether a failure may run again (the job's ``retry_on`` said so).
    retryable: bool
    #: Whether the job read its cancel.
    cancel_seen: bool = True
    #: Whether this process stops after it (its supervisor kills its group).
    retire: bool = False


def send_job(sock: socket.socket, job: Handoff, fds: list[int]) -> None:
    """In the supervisor: hand the job process ``job``, with ``fds`` (its
    output pipe's write end and its control pipe's read end)."""
    body = pickle.dumps(tuple(job), protocol=pickle.HIGHEST_PROTOCOL)
    # The fds, the frame and the call in one message where it fits: the
    # job process, waiting in recv, then wakes once per job, not twice.
    data = HEADER.pack(len(body)) + body
    sent = socket.send_fds(sock, [data], fds)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def recv_job(sock: socket.socket) -> tuple[Handoff, list[int]] | None:
    """In the job process: the next job from its supervisor and its fds
    (``[output fd, control fd]``), or ``None`` once the supervisor is gone."""
    header, fds, _, _ = socket.recv_fds(sock, HEADER.size, 2)
    if not header:
        return None  # the supervisor is gone
    while len(header) < HEADER.size:
        header += sock.recv(HEADER.size - len(header))
    (size,) = HEADER.unpack(header)
    body = bytearray()
    while len(body) < size:
        chunk = sock.recv(min(size - len(body), 1 << 20))
        if not chunk:
            return None
        body += chunk
    return Handoff._make(pickle.loads(body)), fds


def send_progress(fd: int, report: dict[str, Any]) -> None:
    """In the job process: send the job's progress (the supervisor relays
    the latest); its frame is the report."""
    _send(fd, report)


def send_end(fd: int, end: JobEnd) -> None:
    """In the job process: send how the job ended; its frame is a tuple."""
    _send(fd, tuple(end))


def _send(fd: int, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


class MessageReader:
    """Splits the job process's messages: progress reports, then one
    :class:`JobEnd`, kept as :attr:`final`."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._progress: list[dict[str, Any]] = []
        self.final: JobEnd | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data
        header = HEADER
        while len(self._buffer) >= header.size:
            (size,) = header.unpack_from(self._buffer)
            end = header.size + size
            if len(self._buffer) < end:
                return
            message = pickle.loads(self._buffer[header.size : end])
            del self._buffer[:end]
            if isinstance(message, dict):
                self._progress.append(message)
            else:
                self.final = JobEnd._make(message)

    def progress(self) -> list[dict[str, Any]]:
        reports, self._progress = self._progress[-1:], []
        return reports
