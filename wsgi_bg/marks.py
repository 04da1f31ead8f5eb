"""Marking what runs in the background: :func:`background` for functions.

A function marked with :func:`background` starts a job when a view calls it
while :class:`~wsgi_bg.BackgroundMiddleware` serves the request, and runs
inline when called inside a job (its output joins that job's output, as in
web.py, where the backgrounder's and the background function's prints land on
one page)::

    from wsgi_bg import background

    @background(timeout=600)
    def rebuild_index(site_id):
        ...

    @app.post("/rebuild/<int:site_id>")
    def rebuild(site_id):
        job = rebuild_index(site_id)   # a Job, returned at once
        return redirect(job.url)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

from . import context
from .engine import OPTIONS_ATTR, _check_number, callable_name

P = ParamSpec("P")
R = TypeVar("R")


def _check_module_level(fn: Any, decorator: str) -> None:
    if not callable(fn):
        raise TypeError(f"{decorator} marks a function, got {fn!r}")
    qualname = getattr(fn, "__qualname__", "")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise TypeError(
            f"{decorator} needs a function defined at module level, got"
            f" {callable_name(fn)}: a worker process imports jobs by name"
        )


@overload
def background(fn: Callable[P, R], /) -> Callable[P, Any]: ...
@overload
def background(
    *, timeout: float | None = None
) -> Callable[[Callable[P, R]], Callable[P, Any]]: ...


def background(
    fn: Callable[P, R] | None = None, /, *, timeout: float | None = None
) -> Any:
    """Mark a module-level function as background work.

    Calling the marked function:

    - while a :class:`~wsgi_bg.BackgroundMiddleware` serves a request (a view
      calls it): submits it to that middleware and returns a
      :class:`~wsgi_bg.Job` at once;
    - inside a running job: runs it inline, in that job;
    - anywhere else: raises :exc:`RuntimeError`; use
      :meth:`BackgroundMiddleware.submit` there.

    The plain function stays reachable as ``fn.__wrapped__``.

    :param timeout: seconds the job may run before it is killed and ends
        ``timed_out``; ``None`` for no limit.

    .. versionadded:: 0.1
    """
    _check_number("timeout", timeout, minimum=0, allow_none=True)

    def decorate(fn: Callable[P, R]) -> Callable[P, Any]:
        _check_module_level(fn, "@background")
        name = callable_name(fn)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            if context.in_job():
                return fn(*args, **kwargs)
            middleware = context.active_middleware.get()
            if middleware is None:
                raise RuntimeError(
                    f"{name} is a @background function: calling it starts a job"
                    " only while a BackgroundMiddleware serves a request (or runs"
                    " it inline inside a job). Elsewhere call"
                    f" mw.submit({fn.__name__}, ...) on your middleware."
                )
            return middleware.submit(wrapper, *args, **kwargs)

        setattr(wrapper, OPTIONS_ATTR, {"timeout": timeout})
        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate
