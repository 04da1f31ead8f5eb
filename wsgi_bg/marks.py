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

import datetime
import decimal
import functools
import hashlib
import importlib
import inspect
import io
import logging
import pathlib
import pickle
import re
import sys
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from werkzeug.exceptions import InternalServerError
from werkzeug.utils import ImportStringError, import_string
from werkzeug.wrappers import Request

from . import context
from .engine import OPTIONS_ATTR, callable_name, unique_digest
from .exceptions import AppFailed
from .limits import shorten
from .options import RETRY_DELAY_MAX, RetryPolicy, check_number, retry_policy

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


def _query_names(show_query: Any) -> tuple[str, ...]:
    names = None
    if not isinstance(show_query, (str, bytes)):
        try:
            names = tuple(show_query)
        except TypeError:
            pass
    if names is None or not all(isinstance(name, str) for name in names):
        raise TypeError(
            f"show_query must be a collection of query names, got {show_query!r}:"
            " e.g. show_query=('year', 'page')")
    return names


def _check_options(timeout: Any, show_args: Any, unique: Any, example: str) -> None:
    """The checks :func:`background` and :func:`backgrounder` share."""
    check_number("timeout", timeout, minimum=0, allow_none=True)
    if not isinstance(show_args, bool):
        raise TypeError(
            f"show_args must be True or False, got {show_args!r}: pass"
            " show_args=False to keep a job's arguments off its status pages"
        )
    if not isinstance(unique, bool) and not callable(unique):
        raise TypeError(
            "unique must be True (one job per key made of the call), False, or"
            f" a callable returning a str key, e.g. {example}; got {unique!r}")


def _unique_option(
    unique: bool | Callable[..., str], fn: Callable[..., Any] | None = None
) -> Callable[..., str] | None:
    """``unique=`` as it is used: ``None`` (not unique) or a callable
    returning the key; ``True`` keys on a function's arguments
    (:func:`args_key`), or on a marked app's request (:func:`request_key`)."""
    if unique is False:
        return None
    if unique is True:
        return functools.partial(args_key, fn) if fn is not None else request_key
    return unique


#: Types whose values ``unique=True`` keys on, by their ``repr`` (exact
#: types: a subclass's ``repr`` or ``__eq__`` is the app's own code).
_KEY_SCALARS = frozenset({
    str, bytes, int, float, complex, bool, type(None), decimal.Decimal,
    uuid.UUID, datetime.date, datetime.timedelta, pathlib.PurePosixPath,
    pathlib.PureWindowsPath, pathlib.PosixPath, pathlib.WindowsPath,
})
#: Containers deeper than this are refused (and cycles with them).
_KEY_DEPTH = 50


def args_key(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
    """The key of a call of ``fn`` for ``unique=True``: its arguments bound
    to ``fn``'s parameters (defaults applied, so ``f(1)``, ``f(1, 2)`` and
    ``f(1, b=2)`` are one key when ``b`` defaults to 2), each written out
    exactly, in a form that is the same in every process: dicts and sets in
    the sorted order of their items' forms, not their hash order. Values
    compare by their ``repr``, so ``1``, ``1.0`` and ``True`` are three
    keys. It never calls the arguments' own code.

    :raises TypeError: if the arguments do not fit ``fn``'s signature, or one
        is not plain data: ``str``, ``bytes``, numbers, ``bool``, ``None``,
        :class:`~decimal.Decimal`, :class:`~uuid.UUID`, dates, times without
        their own ``tzinfo`` class, paths, and tuples, lists, dicts, sets and
        frozensets of them. For anything else give ``unique=`` a callable
        that returns the key.

    .. versionadded:: 0.2
    """
    name = callable_name(fn)
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{name} cannot be called with these arguments: {exc}") \
            from None
    bound.apply_defaults()
    return ", ".join(f"{param}={_key_form(value, name, param, 0)}"
                     for param, value in bound.arguments.items())


def _key_form(value: Any, name: str, param: str, depth: int) -> str:
    kind = type(value)
    if depth > _KEY_DEPTH:
        raise TypeError(
            f"unique=True: argument {param!r} of {name} nests deeper than"
            f" {_KEY_DEPTH} levels (or holds itself): give unique= a callable"
            " that returns the job's key")
    if kind in _KEY_SCALARS or (
            kind in (datetime.datetime, datetime.time)
            and type(value.tzinfo) in (type(None), datetime.timezone)):
        return repr(value)
    if kind in (tuple, list):
        inner = ", ".join(_key_form(v, name, param, depth + 1) for v in value)
        return f"({inner},)" if kind is tuple else f"[{inner}]"
    if kind in (set, frozenset):
        items = sorted(_key_form(v, name, param, depth + 1) for v in value)
        return f"{kind.__name__}({{{', '.join(items)}}})"
    if kind is dict:
        pairs = sorted(f"{_key_form(k, name, param, depth + 1)}:"
                       f" {_key_form(v, name, param, depth + 1)}"
                       for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    raise TypeError(
        f"unique=True keys a job on its arguments, which must be plain data"
        f" (str, bytes, numbers, bool, None, Decimal, UUID, dates, paths, and"
        f" tuples, lists, dicts and sets of them); argument {param!r} of"
        f" {name} holds a {kind.__qualname__}: give unique= a callable that"
        " returns the job's key from the arguments, e.g. unique=lambda order,"
        " **kw: str(order.id)")


def request_key(request: Request) -> str:
    """The key of a request to a marked app for ``unique=True``: its method,
    path, query (its pairs in sorted order), a SHA-256 of its body and a
    SHA-256 of the credentials it carries (:func:`request_credentials`:
    ``REMOTE_USER``, ``Cookie``, ``Authorization`` and the other headers
    whose names look secret). A form posted twice by one user is one key;
    another query, body or user is another: two users never share a job.

    .. versionadded:: 0.2
    """
    query = sorted(request.args.items(multi=True))
    body = hashlib.sha256(request.get_data(cache=True)).hexdigest()
    asker = hashlib.sha256(
        repr(request_credentials(request.environ)).encode(
            "utf-8", "surrogatepass")).hexdigest()
    return (f"{request.method} {request.script_root}{request.path} {query!r}"
            f" {body} {asker}")


class BackgroundFunction(Generic[P, R]):
    """A function marked with :func:`background`; calling it starts a job.

    It pickles as the plain function it wraps: a worker process imports it by
    name and runs the function itself, so a failed job's traceback starts at
    the job's own code, not here.
    """

    def __init__(self, fn: Callable[P, R], options: dict[str, Any]) -> None:
        functools.update_wrapper(self, fn)
        self.__wrapped__: Callable[P, R] = fn
        setattr(self, OPTIONS_ATTR, options)
        self._name = callable_name(fn)

    def __repr__(self) -> str:
        return f"<background function {self._name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        if context.in_job():
            return self.__wrapped__(*args, **kwargs)
        middleware = context.active_middleware()
        if middleware is None:
            raise RuntimeError(
                f"{self._name} is a @background function: calling it starts a"
                " job only while a BackgroundMiddleware serves a request (or"
                " runs it inline inside a job). Elsewhere call"
                f" mw.submit({self.__wrapped__.__name__}, ...) on your"
                " middleware; in a unit test, run it in"
                " wsgi_bg.testing.job_context()."
            )
        return middleware.submit(self, *args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        module = getattr(self, "__module__", None)
        qualname = getattr(self, "__qualname__", None)
        if not isinstance(module, str) or not isinstance(qualname, str):
            raise pickle.PicklingError(f"{self._name} has no module or name")
        found = _lookup(module, qualname)
        if found is not self and found is not self.__wrapped__:
            raise pickle.PicklingError(
                f"{module}.{qualname} is not this @background function: mark it"
                " where it is defined, under its own name"
            )
        return (_lookup_plain, (module, qualname))


def _lookup(module: str, qualname: str) -> Any:
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _lookup_plain(module: str, qualname: str) -> Any:
    """Find a marked function's plain function in a worker (its unpickler)."""
    found = _lookup(module, qualname)
    if isinstance(found, BackgroundFunction):
        return found.__wrapped__
    return found


@overload
def background(fn: Callable[P, R], /) -> BackgroundFunction[P, R]: ...
@overload
def background(
    *, timeout: float | None = None, show_args: bool = True,
    unique: bool | Callable[..., str] = False, retries: int = 0,
    retry_delay: float = 1.0, retry_delay_max: float = RETRY_DELAY_MAX,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    retry_crashed: bool = False,
) -> Callable[[Callable[P, R]], BackgroundFunction[P, R]]: ...


def background(
    fn: Callable[P, R] | None = None, /, *, timeout: float | None = None,
    show_args: bool = True, unique: bool | Callable[..., str] = False,
    retries: int = 0, retry_delay: float = 1.0,
    retry_delay_max: float = RETRY_DELAY_MAX,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    retry_crashed: bool = False,
) -> Any:
    """Mark a module-level function as background work.

    Calling the marked function:

    - while a :class:`~wsgi_bg.BackgroundMiddleware` serves a request (a view
      calls it): submits it to that middleware and returns a
      :class:`~wsgi_bg.Job` at once;
    - inside a running job (or a :func:`wsgi_bg.testing.job_context`): runs
      it inline, in that job;
    - anywhere else: raises :exc:`RuntimeError`; use
      :meth:`BackgroundMiddleware.submit` there.

    The plain function stays reachable as ``fn.__wrapped__``; a worker runs
    it directly, so a failed job's traceback starts at its own code.

    .. code-block:: python

        @background(timeout=600, show_args=False)
        def send_invoice(customer_id, card_token):
            ...

    :param timeout: seconds the job may run before it is killed and ends
        ``timed_out``; ``None`` for no limit.
    :param show_args: ``False`` keeps the call's arguments off the status
        pages (tokens, personal data); the job still receives them.
    :param unique: one job per key: while a job of this function with the
        same key is queued or running, calling it again returns that job (the
        same id) and starts nothing; once it ended, the next call starts a
        new one. ``True`` keys on the call's arguments (:func:`args_key`:
        plain data only); a callable is called with the call's arguments, in
        the server process, and returns the key as a ``str``
        (``unique=lambda user_id, **kw: str(user_id)``). Only a digest of the
        function's name and the key is stored, never the key. Whoever makes
        the same key gets the job: when the work depends on who asks, the
        key must hold the user.
    :param retries: attempts after the first, at most: a job that raises or
        times out runs again (the same job: one id, one page), after
        ``retry_delay`` seconds, then twice that, and so on.
    :param retry_delay: seconds before the second attempt.
    :param retry_delay_max: the longest wait between two attempts (an hour
        unless given).
    :param retry_on: an exception class, or a tuple of them: only an attempt
        that raises one of these runs again (a timeout always does).
    :param retry_crashed: whether an attempt whose process died (killed, out
        of memory, its worker gone) runs again; by default it ends the job
        ``crashed`` (the job may be what kills its process).
    :raises ValueError: if ``timeout``, ``retries``, ``retry_delay`` or
        ``retry_delay_max`` is negative or not a number.
    :raises TypeError: if ``show_args`` is not a bool, ``unique`` is not a
        bool or a callable, ``retry_on`` is not an exception class or a
        tuple of them, or ``fn`` is not a module-level function.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        ``unique``; ``retries``, ``retry_delay``, ``retry_delay_max``,
        ``retry_on`` and ``retry_crashed``.
    """
    _check_options(timeout, show_args, unique,
                   "unique=lambda user_id, *args, **kwargs: str(user_id)")
    retry = retry_policy(retries, retry_delay, retry_delay_max, retry_on,
                         retry_crashed)

    def decorate(fn: Callable[P, R]) -> BackgroundFunction[P, R]:
        _check_module_level(fn, "@background")
        options: dict[str, Any] = {"timeout": timeout, "show_args": show_args}
        if retry is not None:
            options["retry"] = retry  # how its failed attempts run again
        key = _unique_option(unique, fn)
        if key is not None:
            options["unique"] = key  # what the engine calls for the key
        return BackgroundFunction(fn, options)

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


#: Request headers whose values a job's page shows; every other header is
#: named without its value. An allow-list: a header of the app's own
#: (``X-Api-Key``, ``X-Auth-Token``...) cannot carry a credential onto a page
#: because nobody thought to deny it.
SHOWN_HEADERS = ("Host", "User-Agent", "Accept", "Accept-Language",
                 "Accept-Encoding", "Content-Type", "Origin", "X-Requested-With")
_SHOWN_KEYS = {
    ("CONTENT_TYPE" if name == "Content-Type"
     else "HTTP_" + name.upper().replace("-", "_")): name
    for name in SHOWN_HEADERS
}
#: A response header whose name matches shows no value (as Sentry's and
#: Django's scrubbers judge names); nor does a query parameter, even when
#: the app lists it in ``show_query``.
SECRET_NAME = re.compile(
    r"pass|pwd|secret|token|auth|session|key|sig|cred|csrf|xsrf|otp|code|nonce"
    r"|jwt|bearer|cookie|private|ticket|saml", re.IGNORECASE)
HIDDEN = "[hidden]"


def request_credentials(environ: WSGIEnvironment) -> list[tuple[str, str]]:
    """Who a request says is asking: ``REMOTE_USER`` (a server's or a
    proxy's login) and the request headers whose names :data:`SECRET_NAME`
    matches (``Cookie``, ``Authorization``, ``Proxy-Authorization``,
    ``X-Api-Key``, ``X-Auth-Token``...), as sorted ``(environ key, value)``
    pairs. Their values never show on a page (:func:`describe_request`);
    ``unique=True`` keys a marked app's job on them (:func:`request_key`).

    .. versionadded:: 0.2
    """
    return sorted(
        (key, str(value)) for key, value in environ.items()
        if key == "REMOTE_USER" or (
            key.startswith("HTTP_") and key not in _SHOWN_KEYS
            and SECRET_NAME.search(key[5:])))
#: Characters of one query value shown, and of the whole description.
_MAX_VALUE_CHARS = 100
_MAX_REQUEST_CHARS = 2000
#: In a response header's value, a URL's query or fragment (to the end of the
#: value, or of a Link's ``<URL>``) and its user info: where tokens travel.
_URL_SECRETS = re.compile(r"[?#][^>]*|(?<=//)[^/?#<>@\s]*@")


def describe_request(
    request: Request, body: bytes, show_query: Iterable[str] = ()
) -> str:
    """What a marked app's job page shows of its request: the request line a
    person needs and nothing that carries a credential.

    - the method and the path (``SCRIPT_NAME`` and ``PATH_INFO``);
    - the query's names, each with ``[hidden]`` for its value: a name does
      not say whether its value is secret (``sid``, ``pw``, ``h``, a
      ``next`` URL holding a token...). Only the names in ``show_query``
      show their values, cut past 100 characters, and even then not a name
      that looks secret (:data:`SECRET_NAME`: ``token``, ``password``,
      ``session``, ``key``...). A parameter without a value (``?abc123``)
      shows as ``[hidden]`` alone: its name may be the secret;
    - the body's size in bytes, never its content;
    - the values of the headers in :data:`SHOWN_HEADERS`, and the names only
      of the others (``Cookie``, ``Authorization``, ``X-Api-Key``...).

    With ``show_query=("year",)``:

    .. code-block:: text

        POST /report?year=2026&token=[hidden] · body: 15 bytes · Host:
        example.com, Content-Type: application/x-www-form-urlencoded · values
        not shown: Authorization, Cookie

    Shown headers come in :data:`SHOWN_HEADERS`' order, the others by name.

    :param show_query: the query names whose values show (``year`` above).
    """
    listed = frozenset(show_query)
    query = "&".join(
        HIDDEN if not value else f"{_short(name)}={_short(value)}"
        if name in listed and not SECRET_NAME.search(name)
        else f"{_short(name)}={HIDDEN}"
        for name, value in request.args.items(multi=True))
    line = f"{request.method} {request.script_root}{request.path}"
    parts = [f"{line}?{query}" if query else line]
    if body:
        parts.append(f"body: {len(body)} bytes")
    environ = request.environ
    shown = [f"{name}: {_short(str(environ[key]))}"
             for key, name in _SHOWN_KEYS.items() if key in environ]
    named = [key[5:].replace("_", "-").title() for key in environ
             if key.startswith("HTTP_") and key not in _SHOWN_KEYS]
    if shown:
        parts.append(", ".join(shown))
    if named:
        parts.append("values not shown: " + ", ".join(sorted(named)))
    return shorten(" · ".join(parts), _MAX_REQUEST_CHARS)


def _short(value: str) -> str:
    return shorten(value, _MAX_VALUE_CHARS)


class AppResponse(dict[str, Any]):
    """A marked app's answer, a job's result: ``{"status", "headers"}``.

    A ``dict``; its ``repr`` (what the pages show as the result) hides the
    values of the headers that carry credentials (``Set-Cookie``, and those
    :data:`SECRET_NAME` matches), and in every other value the query and
    fragment of a URL (``Location: /done?[hidden]``; ``Refresh``, ``Link``,
    ``Content-Location``...) and its user info. For an app marked
    ``show_args=False`` it hides the headers whole; the status stays.
    ``job.result`` keeps them all.
    """

    #: Whether the ``repr`` shows the headers (the app's ``show_args``).
    show_headers = True

    def __repr__(self) -> str:
        if not self.show_headers:
            return repr({**self, "headers": HIDDEN})
        headers = [(name, HIDDEN if SECRET_NAME.search(str(name))
                    else _URL_SECRETS.sub(_hide_url_part, str(value)))
                   for name, value in self.get("headers", ())]
        return repr({**self, "headers": headers})


def _hide_url_part(match: re.Match[str]) -> str:
    part = match[0]
    return f"{part[0]}{HIDDEN}" if part[0] in "?#" else f"{HIDDEN}@"


class MarkedApp:
    """A WSGI app whose requests run as background jobs; made by
    :func:`backgrounder`.

    Reached under a :class:`~wsgi_bg.BackgroundMiddleware`, a request's body is
    read, its environ snapshotted, and the app runs in a worker process as a
    job; the client is sent to the job's status page at once.
    """

    def __init__(
        self, ref: str, target: Any, timeout: float | None, show_args: bool = True,
        show_query: Iterable[str] = (), unique: Callable[[Request], str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        #: where a worker finds this app: ``"module:attribute"``.
        self.ref = ref
        self.target = target
        self.timeout = timeout
        self.show_args = show_args
        #: the query names whose values its pages show (:func:`describe_request`).
        self.show_query = frozenset(show_query)
        #: the request's key for one job per key (:func:`backgrounder`), or None.
        self.unique = unique
        #: how its failed requests run again (:func:`backgrounder`'s retries).
        self.retry = retry
        functools.update_wrapper(self, target, updated=())
        options: dict[str, Any] = {"timeout": timeout, "show_args": show_args}
        if retry is not None:
            options["retry"] = retry
        setattr(self, OPTIONS_ATTR, options)

    def __repr__(self) -> str:
        return f"<backgrounder {self.ref}>"

    def unique_digest(self, request: Request, body: bytes) -> str | None:
        """What the store keeps of this request's unique key (a digest of
        the app's ``ref`` and the key: one app, whatever the path), or
        ``None`` if the app is not marked ``unique``.

        :raises TypeError: if the app's ``unique`` callable returns no str.
        """
        if self.unique is None:
            return None
        # A request of its own, whose body reads again (the server's is read).
        environ = dict(request.environ, **{
            "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))})
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        key = self.unique(Request(environ))
        if not isinstance(key, str):
            raise TypeError(
                f"the unique= callable of backgrounder {self.ref} must return a"
                f" str key, got {key!r:.100}: return e.g."
                " request.form['report_id']")
        return unique_digest(self.ref, key)

    def __reduce__(self) -> tuple[Any, ...]:
        # Workers import the app by name rather than unpickle it: a Flask app
        # object does not pickle, and need not. show_args goes along: an app
        # marked by its import path is found unmarked there.
        return (_resolve, (self.ref, self.show_args))

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        middleware = environ.get(MIDDLEWARE_KEY) or context.active_middleware()
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


def _resolve(ref: str, show_args: bool = True) -> MarkedApp:
    """Find a marked app in a worker by its import path."""
    found = import_string(ref)
    if isinstance(found, MarkedApp):
        if found.show_args == show_args:
            return found
        return MarkedApp(ref, found.target, found.timeout, show_args)
    return MarkedApp(ref, found, None, show_args)


@overload
def backgrounder(target: str | WSGIApplication, /) -> MarkedApp: ...
@overload
def backgrounder(
    *, timeout: float | None = None, show_args: bool = True,
    show_query: Iterable[str] = (), unique: bool | Callable[[Request], str] = False,
    retries: int = 0, retry_delay: float = 1.0,
    retry_delay_max: float = RETRY_DELAY_MAX,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    retry_crashed: bool = False,
) -> Callable[[WSGIApplication], MarkedApp]: ...


def backgrounder(
    target: str | WSGIApplication | None = None, /, *, timeout: float | None = None,
    show_args: bool = True, show_query: Iterable[str] = (),
    unique: bool | Callable[[Request], str] = False, retries: int = 0,
    retry_delay: float = 1.0, retry_delay_max: float = RETRY_DELAY_MAX,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    retry_crashed: bool = False,
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
    :param show_args: ``False`` keeps the job's arguments (the request's
        environ and body) off the status pages, and the headers of its
        answer (the job's result).
    :param show_query: query names whose values the pages show, such as
        ``("year", "page")``; every other value shows as ``[hidden]``
        (:func:`~wsgi_bg.marks.describe_request`). List only names whose
        values never carry a credential.
    :param unique: one job per key: while a job of this app with the same
        key is queued or running, a request is answered with that job (the
        same page) and starts nothing. ``True`` keys on the request's
        method, path, query, body and credentials (:func:`request_key`: a
        form posted twice by one user starts one job; two users never share
        one); a callable is given the request (a Werkzeug
        :class:`~werkzeug.wrappers.Request` whose body reads) and returns
        the key as a ``str``, e.g. ``lambda request:
        request.form["report_id"]``: it must hold the user when the app's
        work or output depends on who asks. Keys are the app's, whatever the
        path. Only a digest of the app and the key is stored.
    :param retries: attempts after the first, at most: a request whose app
        raises, answers a 5xx status (:class:`~wsgi_bg.exceptions.AppFailed`)
        or times out runs again (the same job: one id, one page; its output
        gets a divider per attempt), after ``retry_delay`` seconds, then
        twice that, and so on.
    :param retry_delay: seconds before the second attempt.
    :param retry_delay_max: the longest wait between two attempts (an hour
        unless given).
    :param retry_on: an exception class, or a tuple of them: only an attempt
        that raises one of these runs again (a timeout always does); include
        :class:`~wsgi_bg.exceptions.AppFailed` to retry 5xx answers.
    :param retry_crashed: whether an attempt whose process died (killed, out
        of memory, its worker gone) runs again; by default it ends the job
        ``crashed``.
    :raises ImportError: if an import path cannot be resolved (at marking time).
    :raises ValueError: if ``timeout``, ``retries``, ``retry_delay`` or
        ``retry_delay_max`` is negative or not a number.
    :raises TypeError: if the target is not a module-level callable,
        ``show_args`` is not a bool, ``show_query`` is not a collection
        of names, ``unique`` is not a bool or a callable, or ``retry_on`` is
        not an exception class or a tuple of them.

    .. versionchanged:: 0.2
        The query's values are hidden unless named in ``show_query``;
        ``unique``; ``retries`` and the other retry options.

    .. versionadded:: 0.1
    """
    _check_options(timeout, show_args, unique,
                   "unique=lambda request: request.form['report_id']")
    show_query = _query_names(show_query)
    request_unique = _unique_option(unique)
    retry = retry_policy(retries, retry_delay, retry_delay_max, retry_on,
                         retry_crashed)

    def mark(target: str | WSGIApplication) -> MarkedApp:
        return MarkedApp(*_app_ref(target), timeout, show_args, show_query,
                         request_unique, retry)

    if target is not None:
        return mark(target)
    return mark


def _app_ref(target: str | WSGIApplication) -> tuple[str, Any]:
    """``(ref, app)`` of what :func:`backgrounder` marks: an import path and
    the app found there, or a module-level WSGI function and its path."""
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
        return target, found
    _check_module_level(target, "@backgrounder")
    qualname = getattr(target, "__qualname__", None)
    module = getattr(target, "__module__", None)
    if not isinstance(qualname, str) or not module or "." in qualname:
        raise TypeError(
            f"@backgrounder marks a module-level WSGI function; for an app"
            f" object such as {target!r} pass its import path:"
            " backgrounder('package.module:app')"
        )
    return f"{module}:{qualname}", target


def run_app(app: MarkedApp, environ: dict[str, Any], body: bytes) -> AppResponse:
    """Serve one snapshotted request with a marked app, in a job's process.

    The response body goes to the job's output; the status line and headers
    are the result (an :class:`AppResponse`). A 5xx status fails the job.
    """
    environ = dict(environ)
    environ.pop("HTTP_TRANSFER_ENCODING", None)  # the body is whole now
    environ.update({
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "CONTENT_LENGTH": str(len(body)), "wsgi.multithread": False,
        "wsgi.multiprocess": True, "wsgi.run_once": True,
        "wsgi_bg.job_id": context.current_job.id,
    })
    response = AppResponse()
    response.show_headers = app.show_args
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
