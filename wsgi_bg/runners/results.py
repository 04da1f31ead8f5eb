"""A job's return value, as every runner checks and shows it: pickled,
checked to unpickle and to fit ``max_result_bytes`` (:func:`dump_result`),
and its bounded ``repr`` for pages (:func:`shown`).

Runs where the job runs: in the job process (:mod:`~wsgi_bg.runners.job_process`),
so that a result that cannot travel fails the job there and never reaches
the supervisor or the store; or in the calling thread, for the inline runner
(:mod:`~wsgi_bg.runners.inline`).
"""

from __future__ import annotations

import pickle
import reprlib
from typing import Any

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 2000
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 100


def shown(value: Any) -> str:
    """The result as pages show it: a bounded ``repr`` (a result may be huge,
    and pages read it on every poll)."""
    try:
        return _repr.repr(value)
    except Exception as exc:  # a __repr__ that raises must not fail the job
        return f"<{type(value).__qualname__}: repr() failed: {exc!r}>"


class Unpicklable(Exception):
    """A job's result that cannot be kept: its text is the job's error."""


def dump_result(value: Any, max_result_bytes: int | None = None) -> bytes:
    """``value`` pickled, checked to unpickle and to fit ``max_result_bytes``.

    :raises Unpicklable: with the message the job's error shows.
    """
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise _unpicklable(value, exc) from None
    if max_result_bytes is not None and len(data) > max_result_bytes:
        size = len(data)
        del data
        raise Unpicklable(
            f"the job's result is too big: {size:,} bytes pickled, more than"
            f" max_result_bytes={max_result_bytes:,}. Write a large result to a"
            " file (or a database) and return its path, or raise"
            " max_result_bytes; the result was not kept."
        )
    try:
        pickle.loads(data)
    except Exception as exc:
        raise _unpicklable(value, exc) from None
    return data


def _unpicklable(value: Any, exc: Exception) -> Unpicklable:
    return Unpicklable(
        f"the job returned a {type(value).__module__}.{type(value).__qualname__}"
        f" that cannot be pickled and unpickled: {exc!r}. Return plain data"
        " (str, numbers, lists, dicts) or an object whose class is importable"
        " at module level."
    )
