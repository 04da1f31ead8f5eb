"""Bounds on what a job hands over besides its output: error text, progress,
its result's size; and on what a submit hands over: its call's size.

Every store keeps what it is given and pages read it on every poll, so a
20 MB traceback or progress message would be copied with each record, and a
progress number too big to print (``10**5000``: Python refuses to turn an int
of more than 4300 digits into text) would break every page that shows it.
These bounds apply where jobs hand things over (``current_job.progress`` in the
job's process, the supervisor for errors and tqdm bars), before any store, so
they hold for every store::

    from wsgi_bg.limits import cap_text, bounded_progress

    error = cap_text(traceback_text, MAX_ERROR_CHARS)
"""

from __future__ import annotations

import math
import reprlib
import sys
from typing import Any

#: Characters of a job's error text kept (its head and its tail).
MAX_ERROR_CHARS = 65536
#: Pickled bytes a job's result may take (``max_result_bytes``'s default):
#: past it the job fails, in its own process, and no other process keeps it.
MAX_RESULT_BYTES = 10 * 1024 * 1024
#: Pickled bytes a job's call (function and arguments) may take
#: (``max_call_bytes``'s default): every store keeps the call until the job
#: ends, and a Redis store sends it over the network twice.
MAX_CALL_BYTES = 1024 * 1024
#: Characters of a progress message kept.
MAX_MESSAGE_CHARS = 1000
#: Largest magnitude a progress number keeps: past it, the float nearest
#: (within this bound), which prints in 23 characters.
MAX_PROGRESS = sys.float_info.max


def cap_text(text: str, limit: int) -> str:
    """``text`` if at most ``limit`` characters, else its head and its tail
    with a line saying how much was dropped between them, as output is."""
    if len(text) <= limit:
        return text
    half = limit // 2
    dropped = len(text) - 2 * half
    return (f"{text[:half]}\n[… {dropped} characters dropped: the text is longer"
            f" than {limit} characters …]\n{text[len(text) - half:]}")


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending with "…" if cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded_number(value: int | float) -> int | float:
    """A progress number that every page can show: an int of at most 2**63
    in size kept as is; a bigger int, or an infinite float, becomes the float
    nearest to it within :data:`MAX_PROGRESS`.

    :raises ValueError: for NaN, which is no amount of progress.
    """
    if isinstance(value, int):
        if -(2**63) <= value <= 2**63:
            return value
        try:
            value = float(value)
        except OverflowError:
            return MAX_PROGRESS if value > 0 else -MAX_PROGRESS
    if math.isnan(value):
        raise ValueError("a progress number must not be NaN")
    if math.isinf(value):
        return math.copysign(MAX_PROGRESS, value)
    return value


def progress_report(
    done: Any, total: Any = None, message: Any = None
) -> dict[str, Any]:
    """A progress report as stores keep it: ``{"done", "total", "message"}``
    with numbers from :func:`bounded_number` (``total`` may be ``None``) and
    a message of at most :data:`MAX_MESSAGE_CHARS`.

    :raises TypeError: if ``done`` or ``total`` is not a number.
    :raises ValueError: if one is NaN.
    """
    numbers: list[int | float | None] = []
    for label, value in (("done", done), ("total", total)):
        if value is None and label == "total":
            numbers.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{label} must be a number, got {reprlib.repr(value)}")
        try:
            numbers.append(bounded_number(value))
        except ValueError:
            raise ValueError(f"{label} must be a number, not NaN") from None
    if message is not None:
        message = shorten(str(message), MAX_MESSAGE_CHARS)
    return {"done": numbers[0], "total": numbers[1], "message": message}


def bounded_progress(report: Any) -> dict[str, Any] | None:
    """:func:`progress_report` of what a job's process sent as a report
    (it may send anything); ``None`` for anything that is not a report."""
    if not isinstance(report, dict):
        return None
    try:
        return progress_report(report.get("done"), report.get("total"),
                               report.get("message"))
    except (TypeError, ValueError):
        return None
