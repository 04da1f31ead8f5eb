"""Checks of the options a user gives: :class:`~wsgi_bg.BackgroundMiddleware`,
the engine it builds, and ``@background``'s per-function options.

Runs in the server process, at construction or decoration, before anything
starts: a wrong option fails there, with a message that names it and says
what it must be, never later in a worker.
"""

from __future__ import annotations

from typing import Any


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
