"""Output capture: file descriptors 1 and 2 of a job onto one pipe, relayed in batches.

In the job's process (:mod:`~wsgi_bg.runners.job_process`), fds 1 and 2 both
become the write end of the job's pipe, so everything lands there in the
order it was written: ``print``, ``sys.stderr``, logging handlers, and the
output of child processes (``os.system``, ``subprocess`` without capture),
which inherit the fds. ``sys.stdout`` and ``sys.stderr`` are made
line-buffered, as on a terminal, so a printed line reaches the pipe at once
even without ``flush``.

This module runs in the supervisor (:mod:`~wsgi_bg.runners.supervisor`: a
pool worker or an RQ worker), or, for the inline runner, in a thread of the
process that runs the job::

    job's pipe ─► Relay.feed ─► batch ─► Relay.send ─► store.relay
                                         ◄── (cancel requested, grace)
    job's end:   Relay.take ─► the supervisor's store.finish

In the supervisor (:class:`Relay`), what the pipe delivers is decoded
incrementally and sent to the store in batches: at most every
``interval`` seconds or ``max_batch`` characters, so a job printing 100,000
lines costs a few hundred store calls, not 100,000. A silent job still costs
one call every ``poll`` seconds: its answer carries cancel requests. Within a
batch, progress bar redraws (``\r``) collapse to the line's latest state, and a tqdm bar
becomes the job's progress unless the job reports its own.
"""

from __future__ import annotations

import codecs
import time
from typing import Any

from .exceptions import StoreUnavailable
from .limits import bounded_progress
from .stores import Store
from .stores.output import encode_output
from .terminal import RedrawCollapser, parse_progress

#: Output held at most while the store cannot be reached, in characters.
HOLD_LIMIT = 1 << 20
#: Seconds between two tries to reach a store that could not be reached.
RETRY_SECONDS = 1.0


class Relay:
    """Batches a job's output and progress on their way to the store."""

    def __init__(
        self, store: Store, job_id: str, *, interval: float = 0.05,
        max_batch: int = 65536, poll: float = 0.1,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.interval = interval
        self.poll = poll
        self.max_batch = max_batch
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []
        self._size = 0
        self._progress: dict[str, Any] | None = None
        self._first_pending = 0.0  # when the oldest unsent data arrived
        self._redraws = RedrawCollapser()
        self._explicit_progress = False
        self.last_sent = time.monotonic()
        self._held = ""  # output the store could not take yet (unreachable)
        self._lost = 0  # characters dropped from it past HOLD_LIMIT
        self._retry_at = 0.0
        self.sent = 0  # bytes of output the store has taken from this relay

    def feed(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            if not self._pending:
                self._first_pending = time.monotonic()
            self._pending.append(text)
            self._size += len(text)

    def progress(self, report: dict[str, Any]) -> None:
        # Bounded here too: a job's process may send anything.
        bounded = bounded_progress(report)
        if bounded is None:
            return
        report = bounded
        self._explicit_progress = True  # the job reports its own: ignore bars
        if self._progress is None and not self._pending:
            self._first_pending = time.monotonic()
        self._progress = report

    def due_in(self) -> float:
        """Seconds until the next batch is due (0 if due now).

        With nothing pending a batch still falls due every ``poll`` seconds:
        an empty :meth:`send` is how the supervisor learns of a cancel
        request, and a job that prints nothing must be cancellable too.
        """
        now = time.monotonic()
        if now < self._retry_at:
            return self._retry_at - now
        if not self._pending and self._progress is None and not self._held:
            return max(0.0, self.last_sent + self.poll - time.monotonic())
        if self._size >= self.max_batch:
            return 0.0
        return max(0.0, self._first_pending + self.interval - time.monotonic())

    def send(self) -> tuple[bool, float | None]:
        """Send what is pending (even nothing: the answer says whether the job
        was asked to stop). Returns ``(cancel_requested, grace)``.

        While the store cannot be reached the output is held (its last
        ``HOLD_LIMIT`` characters, with a note of what was dropped) and sent
        with the next batch that gets through; one try every
        ``RETRY_SECONDS``. The job runs on meanwhile.
        """
        text, progress = self._collect(False)
        body = self._held + text
        payload = self._marked(body)
        try:
            # With the offset: a try that timed out may have landed after all.
            answer = self.store.relay(self.job_id, payload, progress, self.sent)
        except StoreUnavailable:
            if len(body) > HOLD_LIMIT:
                self._lost += len(body) - HOLD_LIMIT
                body = body[-HOLD_LIMIT:]
            self._held = body
            if progress is not None and self._progress is None:
                self._progress = progress
            self._retry_at = time.monotonic() + RETRY_SECONDS
            return False, None
        self._held, self._lost, self._retry_at = "", 0, 0.0
        self.sent += len(encode_output(payload))
        return answer

    def _marked(self, text: str) -> str:
        if not self._lost:
            return text
        return (f"\n[… {self._lost} characters of output lost: the job store could"
                " not be reached …]\n" + text)

    def take(
        self, *, final: bool = False
    ) -> tuple[str, dict[str, Any] | None, int]:
        """What is pending, as ``(text, progress, offset)``, for the store's
        ``finish`` at the job's end (``final``)."""
        text, progress = self._collect(final)
        text = self._marked(self._held + text)
        self._held, self._lost = "", 0
        offset = self.sent
        self.sent += len(encode_output(text))
        return text, progress, offset

    def _collect(self, final: bool) -> tuple[str, dict[str, Any] | None]:
        if final:
            tail = self._decoder.decode(b"", final=True)
            if tail:
                self._pending.append(tail)
        text = self._redraws.feed("".join(self._pending), final=final)
        self._pending.clear()
        self._size = 0
        progress, self._progress = self._progress, None
        if progress is None and not self._explicit_progress and "%|" in text:
            # A tqdm bar, as the page's progress (its numbers may be absurd).
            progress = bounded_progress(parse_progress(text))
        self.last_sent = time.monotonic()
        return text, progress
