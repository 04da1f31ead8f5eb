"""The Server-Sent Events stream of one job, and JSON the pages can trust.

The stream polls the store (it holds no lock and no connection of its own) and
sends::

    retry: 1000                      reconnection delay for EventSource

    event: output                    new output; the id is the offset after it,
    id: 1234                         which the browser sends back as
    data: {"text": "...", "next": 1234}    Last-Event-ID when it reconnects

    event: state                     the job's to_dict(), when it changes; the
    data: {"id": ..., "state": ...}  last one has "done": true, then the stream ends

    : keep-alive                     a comment every ``heartbeat`` seconds

Each payload is JSON with every non-ASCII character escaped, so a ``data:``
line never holds a CR or LF: whatever a job prints cannot end a field or start
an event of its own.

    : window ends                    the stream's window is over (the job
                                     still runs): reconnect with Last-Event-ID

A stream holds the server's thread while it lasts, so it lasts at most one
window (``window`` seconds, :attr:`StatusApp.stream_window
<wsgi_bg.status.app.StatusApp.stream_window>`), never a job's whole life; an
``EventSource`` reconnects by itself after ``retry`` and sends the id of the
last output event it saw as ``Last-Event-ID``, so nothing is lost or repeated.
When the client goes away, the server's next write fails and it closes the
generator (at the latest one heartbeat later); under Werkzeug's server the
stream also peeks at the socket at each poll and stops as soon as the client
has closed it.
"""

from __future__ import annotations

import json
import math
import select
import socket
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from .render import clean_text

if TYPE_CHECKING:
    from ..jobs import Job


def jsonable(value: Any) -> Any:
    """``value`` with text cleaned (:func:`~wsgi_bg.status.render.clean_text`)
    and non-finite floats (not JSON) replaced by ``None``."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def dump_json(value: Any) -> str:
    """Strict, ASCII-only JSON of ``value`` (after :func:`jsonable`)."""
    return json.dumps(jsonable(value), ensure_ascii=True, allow_nan=False)


def format_event(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One Server-Sent Event: ``event``, optional ``id``, ``data`` as JSON.

    :param event: the event name, a fixed word chosen by this module.
    :param data: any JSON-serialisable value; it is sent on a single
        ``data:`` line, since ASCII-only JSON holds no line break.
    :param event_id: the ``id`` field (an output offset).
    """
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {dump_json(data)}")
    return ("\n".join(lines) + "\n\n").encode("ascii")


HEARTBEAT = b": keep-alive\n\n"
WINDOW_ENDS = b": window ends\n\n"


class _Disconnect:
    """Tells whether the client closed a socket, without reading its data."""

    __slots__ = ("sock", "poller")

    def __init__(self, sock: Any) -> None:
        self.sock: socket.socket | None = None
        self.poller: Any = None
        # Only a plain socket can be peeked (not TLS, not a server's wrapper);
        # select.poll has no descriptor limit (select.select does: 1024).
        flags = getattr(socket, "MSG_DONTWAIT", None)
        if (type(sock) is socket.socket and flags is not None
                and hasattr(select, "poll")):
            self.sock = sock
            self.poller = select.poll()
            self.poller.register(sock.fileno(), select.POLLIN)

    def gone(self) -> bool:
        if self.sock is None:
            return False
        try:
            if not self.poller.poll(0):
                return False
            # Readable: either data (a pipelined request: still there) or EOF.
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True


def job_events(
    job: Job, since: int, *, heartbeat: float, poll_interval: float,
    sock: Any = None, sleep: Callable[[float], None] = time.sleep,
    window: float | None = None,
) -> Generator[bytes, None, None]:
    """The event stream of ``job`` from output offset ``since``.

    Ends after the state event that reports the job done, or when the job is
    no longer stored (an ``event: gone``), or when the client has gone, or
    after ``window`` seconds (a ``: window ends`` comment; the client
    reconnects and resumes).

    :param job: the job to follow.
    :param since: output offset to start from.
    :param heartbeat: seconds of silence after which a comment is sent.
    :param poll_interval: seconds between two looks at the store.
    :param sock: the client's socket, when the server exposes it
        (``environ["werkzeug.socket"]``), to notice a disconnect early.
    :param window: seconds the stream lasts at most; ``None``: until the job
        ends.
    """
    disconnect = _Disconnect(sock)
    last_state: dict[str, Any] | None = None
    last_write = time.monotonic()
    ends = None if window is None else last_write + window
    yield b"retry: 1000\n\n"
    while True:
        try:
            # One read of both: once the state says done, all the output is
            # in this read too, so "done" is always the last event.
            state, text, offset = job.view(since)
        except LookupError:
            gone = {"id": job.id, "message": "job no longer stored"}
            yield format_event("gone", gone)
            return
        if text:
            yield format_event("output", {"text": text, "next": offset}, offset)
            last_write = time.monotonic()
        since = offset
        # output_size changes with every write: not a change of state.
        compared = dict(state, output_size=None)
        if compared != last_state:
            last_state = compared
            yield format_event("state", state)
            last_write = time.monotonic()
        if state["done"]:
            return
        if time.monotonic() - last_write >= heartbeat:
            yield HEARTBEAT
            last_write = time.monotonic()
        if disconnect.gone():
            return
        if ends is not None and time.monotonic() >= ends:
            yield WINDOW_ENDS
            return
        sleep(poll_interval)
