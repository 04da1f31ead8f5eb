"""Marking what runs in the background: :func:`background` for functions,
:func:`backgrounder` for whole WSGI apps.

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
import io
import logging
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from werkzeug.exceptions import InternalServerError
from werkzeug.utils import ImportStringError, import_string

from . import context
from .engine import OPTIONS_ATTR, _check_number, callable_name
from .exceptions import AppFailed

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger("wsgi_bg")

#: environ key under which the middleware serving a request can be found.
MIDDLEWARE_KEY = "wsgi_bg.middleware"

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


# -- marked WSGI apps -----------------------------------------------------------

#: environ keys a marked app's request snapshot never carries: objects tied to
#: the server process (streams, the middleware), replaced in the worker.
_NOT_SNAPSHOT = frozenset(
    {"wsgi.input", "wsgi.errors", "wsgi.file_wrapper", "wsgi.input_terminated"}
)
_PLAIN = (str, bytes, int, float, bool, type(None))


def snapshot_environ(environ: WSGIEnvironment) -> dict[str, Any]:
    """The picklable part of a WSGI environ: plain values (and tuples of them)."""
    snapshot = {}
    for key, value in environ.items():
        if key in _NOT_SNAPSHOT:
            continue
        if isinstance(value, _PLAIN) or (
            isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)
        ):
            snapshot[key] = value
    return snapshot


class MarkedApp:
    """A WSGI app whose requests run as background jobs; made by
    :func:`backgrounder`.

    Reached under a :class:`~wsgi_bg.BackgroundMiddleware`, a request's body is
    read, its environ snapshotted, and the app runs in a worker process as a
    job; the client is sent to the job's status page at once.
    """

    def __init__(self, ref: str, target: Any, timeout: float | None) -> None:
        #: where a worker finds this app: ``"module:attribute"``.
        self.ref = ref
        self.target = target
        self.timeout = timeout
        functools.update_wrapper(self, target, updated=())

    def __repr__(self) -> str:
        return f"<backgrounder {self.ref}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Workers import the app by name rather than unpickle it: a Flask app
        # object does not pickle, and need not.
        return (_resolve, (self.ref,))

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        middleware = environ.get(MIDDLEWARE_KEY) or context.active_middleware.get()
        if middleware is None:
            logger.error(
                "%s is marked with backgrounder but no BackgroundMiddleware is"
                " above it: wrap your WSGI app, e.g. app ="
                " BackgroundMiddleware(app), so that its requests run as jobs",
                self.ref,
            )
            return InternalServerError(
                "This page runs as a background job, but the server is not set"
                " up for background jobs."
            )(environ, start_response)
        return middleware.start_app_job(self, environ, start_response)


def _resolve(ref: str) -> MarkedApp:
    """Find a marked app in a worker by its import path."""
    found = import_string(ref)
    if isinstance(found, MarkedApp):
        return found
    return MarkedApp(ref, found, None)


@overload
def backgrounder(target: str | WSGIApplication, /) -> MarkedApp: ...
@overload
def backgrounder(
    *, timeout: float | None = None
) -> Callable[[WSGIApplication], MarkedApp]: ...


def backgrounder(
    target: str | WSGIApplication | None = None, /, *, timeout: float | None = None
) -> Any:
    """Mark a WSGI app whose every request runs as a background job.

    As a decorator on a module-level WSGI callable::

        @backgrounder
        def report(environ, start_response):
            print("Started at", datetime.now())
            ...

    Or by import path, for an app object such as a Flask app (a worker
    imports it by that path)::

        app = DispatcherMiddleware(site, {"/reports": backgrounder("reports:app")})

    A request reaching the marked app under a
    :class:`~wsgi_bg.BackgroundMiddleware` is answered ``303 See Other`` to the
    job's status page (``202`` with JSON ``{"id", "url", "api_url"}`` when the
    client prefers ``application/json``). In the worker, the app's stdout,
    stderr and response body become the job's output, its status line and
    headers the job's result; an exception or a 5xx status fails the job.

    :param target: the WSGI callable, or its import path
        ``"package.module:attr"``.
    :param timeout: seconds each job may run before it is killed.
    :raises ImportError: if an import path cannot be resolved (at marking time).
    :raises TypeError: if the target is not a module-level callable.

    .. versionadded:: 0.1
    """
    _check_number("timeout", timeout, minimum=0, allow_none=True)

    def mark(target: str | WSGIApplication) -> MarkedApp:
        if isinstance(target, str):
            try:
                found = import_string(target)
            except ImportStringError as exc:
                raise ImportError(
                    f"backgrounder({target!r}): cannot import it: {exc.exception!r}."
                    " Give the app's import path as 'package.module:attribute'."
                ) from None
            if not callable(found):
                raise TypeError(
                    f"backgrounder({target!r}) found {found!r}, which is not a"
                    " WSGI app (not callable)"
                )
            return MarkedApp(target, found, timeout)
        _check_module_level(target, "@backgrounder")
        qualname = getattr(target, "__qualname__", None)
        module = getattr(target, "__module__", None)
        if not isinstance(qualname, str) or not module or "." in qualname:
            raise TypeError(
                f"@backgrounder marks a module-level WSGI function; for an app"
                f" object such as {target!r} pass its import path:"
                " backgrounder('package.module:app')"
            )
        return MarkedApp(f"{module}:{qualname}", target, timeout)

    if target is not None:
        return mark(target)
    return mark


def run_app(app: MarkedApp, environ: dict[str, Any], body: bytes) -> dict[str, Any]:
    """Serve one snapshotted request with a marked app, in a job's process.

    The response body goes to the job's output; the status line and headers
    are the result. A 5xx status fails the job.
    """
    environ = dict(environ)
    environ.pop("HTTP_TRANSFER_ENCODING", None)  # the body is whole now
    environ.update({
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "CONTENT_LENGTH": str(len(body)), "wsgi.multithread": False,
        "wsgi.multiprocess": True, "wsgi.run_once": True,
        "wsgi_bg.job_id": context.current_job.id,
    })
    response: dict[str, Any] = {}
    sys.stdout.flush()
    sink = sys.stdout.buffer

    def write(data: bytes) -> None:
        sys.stdout.flush()  # keep prints and body in the order they happened
        sink.write(data)
        sink.flush()

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and response:
            raise exc_info[1].with_traceback(exc_info[2])
        response["status"] = status
        response["headers"] = list(headers)
        return write

    result = app.target(environ, start_response)
    try:
        for chunk in result:
            if chunk:
                write(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status = response.get("status", "")
    if status[:1] == "5":
        raise AppFailed(f"the app answered {status}")
    return response
