"""What crosses between a supervisor and its job process, and how.

The supervisor (:mod:`~wsgi_bg.runners.supervisor`) and the job process
(:mod:`~wsgi_bg.runners.job_process`) share one socket pair, and a job's two
pipes::

    supervisor                                     job process
    send_job ── socket: frame + (id, call,       ─► recv_job
                max_result_bytes), fds on it
    MessageReader ◄── socket: frames ──────────── send_message
        ("progress", report) … then one final (kind, value, retire,
        cancel_seen, retryable)
    relay ◄──────── output pipe (fds 1 and 2) ───── the job's output
    cancel ──────── control pipe: one byte ──────► current_job.cancel_requested

Every frame is a 4-byte big-endian length, then a pickle: both ends are of
the same program, and only the supervisor unpickles what the job process
sends after checking that its result pickles and unpickles
(:mod:`~wsgi_bg.runners.results`).
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
from typing import Any

#: The length before every frame, both ways.
HEADER = struct.Struct("!I")


def send_job(
    sock: socket.socket, job_id: str, payload: bytes, fds: list[int],
    max_result_bytes: int,
) -> None:
    """In the supervisor: hand the job process a job, with ``fds`` (its
    output pipe's write end and its control pipe's read end)."""
    body = pickle.dumps((job_id, payload, max_result_bytes),
                        protocol=pickle.HIGHEST_PROTOCOL)
    # The fds, the frame and the call in one message where it fits: the
    # job process, waiting in recv, then wakes once per job, not twice.
    data = HEADER.pack(len(body)) + body
    sent = socket.send_fds(sock, [data], fds)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def recv_job(sock: socket.socket) -> tuple[str, bytes, int, list[int]] | None:
    """In the job process: the next job from its supervisor, ``(job_id,
    payload, max_result_bytes, [output fd, control fd])``, or ``None`` once
    the supervisor is gone."""
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
    job_id, payload, max_result_bytes = pickle.loads(body)
    return job_id, payload, max_result_bytes, fds


def send_message(fd: int, message: tuple[Any, ...]) -> None:
    """In the job process: write one message to the supervisor (progress, or
    the job's end)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


class MessageReader:
    """Splits the job process's messages: progress reports, then one final
    ``(kind, value, retire, cancel_seen, retryable)``, kept as :attr:`final`,
    :attr:`retire`, :attr:`cancel_seen` and :attr:`retryable`."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._progress: list[dict[str, Any]] = []
        self.final: tuple[str, Any] | None = None
        self.retire = True
        self.cancel_seen = True  # unless the job says otherwise
        self.retryable = True  # whether a failure may run again (retry_on)

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
            if message[0] == "progress":
                self._progress.append(message[1])
            else:
                self.final = (message[0], message[1])
                self.retire = message[2]
                self.cancel_seen = message[3]
                # (a job process of an older version says nothing: any)
                self.retryable = message[4] if len(message) > 4 else True

    def progress(self) -> list[dict[str, Any]]:
        reports, self._progress = self._progress[-1:], []
        return reports
