"""StatusApp: the status pages of a :class:`~wsgi_bg.BackgroundMiddleware`.

The middleware serves them under its ``prefix``; ``mw.status_app`` is the same
WSGI app, to mount anywhere else::

    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    app = DispatcherMiddleware(app, {"/admin/jobs": mw.status_app})

**What it is built from.** Not the middleware: the pages need three things of
it, and get just those, so that they can be read (and tested) without it:

- the :class:`~wsgi_bg.engine.Engine`, which reads the jobs (``get``, the
  ``store``'s pages and counts, a :class:`~wsgi_bg.Job` handle on it), says
  whether its store is shared between server processes (``shared_store``),
  and queues a job again (``rerun``);
- ``authorize(environ, action, job)``, which decides who may list, view,
  cancel and run jobs again;
- ``url_for(job_id)``, the path of a job's page as mounted, which the job
  run again carries (the middleware's :meth:`~wsgi_bg.BackgroundMiddleware.url_for`,
  as for a job it submits).

Routes, below the mount point (every link is built from ``SCRIPT_NAME``)::

    GET  /[?state=&q=&page=]        HTML list of jobs        authorize "list"
    GET  /api/jobs[?state=&q=&page=&per_page=]  as JSON      authorize "list"
    GET  /<id>                      HTML page of one job     authorize "view"
    GET  /api/jobs/<id>[?since=N]   JSON: to_dict() + output + next + now;
                                    ETag, 304 to If-None-Match
    GET  /api/jobs/<id>/output.txt  the raw output, a download  authorize "view"
    GET  /api/jobs/<id>/events      Server-Sent Events, in windows  "view"
    POST /api/jobs/<id>/cancel      cancel (same origin)     authorize "cancel"
    POST /api/jobs/<id>/rerun       run a job that ended again, as a new job
                                    (same origin)            authorize "rerun"
    GET  /metrics                   the store's figures for Prometheus
                                    (wsgi_bg.status.metrics) authorize "metrics"
    GET  /static/status.js|css      the pages' script and style

Every answer carries a Content-Security-Policy without inline script or
style, ``nosniff``, ``Referrer-Policy: no-referrer`` (a job's URL is a
capability) and ``Cache-Control: no-store``. Every HTTP error raised here (a
store may raise ``503`` with ``Retry-After`` when it cannot be reached) keeps
its status and headers; pages get it as a page in the same look, saying what
to do, and API routes as JSON.

**Why an open page costs no thread.** A synchronous WSGI server has a few
threads (gunicorn ``--threads 8``), and an answer that streams holds one of
them until it ends. A page that followed its job over one event stream held a
thread for the job's whole life: eight open tabs, and every other route of the
site waited. So the job page polls the JSON API instead: each poll asks only
for the output after ``since`` and sends ``If-None-Match``, is answered in
milliseconds (``304`` when nothing changed) and releases its thread at once;
the script polls every 0.5 s after a change, slowing to 2 s while nothing
changes. The event stream stays for API clients, in bounded windows: it ends
after ``stream_window`` seconds even while the job runs, and the client
(an ``EventSource`` does it by itself) reconnects with ``Last-Event-ID`` to
resume where it stopped, so a stream holds a thread for a window, never for a
job's life.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from werkzeug.exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    HTTPException,
    InternalServerError,
    NotFound,
    ServiceUnavailable,
)
from werkzeug.routing import BaseConverter, Map, Rule
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from ..jobs import JOB_ID_PATTERN, Job, record_to_dict
from ..stores.protocol import SEARCH_SCAN
from ..stores.signing import BadSignature
from . import metrics, render
from .events import dump_json, job_events

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..engine import Engine
    from ..middleware import Authorize

#: Sent with every answer. No inline script or style: the pages load theirs
#: from /static. A meta refresh is not governed by CSP.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none';"
        " base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

logger = logging.getLogger("wsgi_bg")

#: Actions renamed: new name -> old name. ``authorize`` is asked both, and a
#: refusal of either refuses: an ``authorize`` written for the old name
#: (``if action == "retry": return False``) keeps blocking what it blocked.
#: "retry" was the action of the rerun route; it will name retries after a
#: failure (issue 21).
OLD_ACTION_NAMES = {"rerun": "retry"}

_STATIC = {"status.js": "text/javascript", "status.css": "text/css"}

_LIST_REFUSED = (
    "The job list is not enabled. Each job's page stays open to whoever holds"
    " its link. To allow the list, pass authorize=wsgi_bg.allow_all (anyone),"
    " authorize=wsgi_bg.allow_local (clients on this machine) or your own"
    " callable authorize(environ, action, job) -> bool to BackgroundMiddleware."
)

_METRICS_REFUSED = (
    "The metrics are not enabled: they name the functions jobs run. To allow"
    " them, pass an authorize callable that allows the action \"metrics\" to"
    " your scraper (say, one that checks a bearer token: see"
    " docs/deployment.md) to BackgroundMiddleware."
)

_DEFAULT_PORTS = {"http": 80, "https": 443}

T = TypeVar("T")


class JobIdConverter(BaseConverter):
    """Matches only strings shaped like a job id (43 URL-safe characters), so
    anything else is a 404 before any lookup."""

    regex = JOB_ID_PATTERN


def _origin(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of a URL, or ``None`` if it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not scheme or not parts.hostname:
        return None
    return scheme, parts.hostname, port or _DEFAULT_PORTS.get(scheme, 0)


def check_same_origin(request: Request) -> None:
    """Refuse a state-changing request made by another site's page.

    Browsers state where a request comes from; a page cannot forge it:

    - ``Sec-Fetch-Site``, when sent, must be ``same-origin`` (or ``none``:
      typed by the user);
    - ``Origin``, when sent, must be this server's own (scheme, host, port).
      ``Origin: null`` is accepted only with ``Sec-Fetch-Site: same-origin``:
      under ``Referrer-Policy: no-referrer`` browsers send ``null`` for our own
      pages' form posts, but sandboxed or ``data:`` documents send it too;
    - else ``Referer``, when sent, must be of this server's origin.

    A request with none of them (curl, scripts) is not from a browser and is
    allowed.

    :raises Forbidden: when the request comes from another origin.
    """
    headers = request.headers
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden(
            f"cross-site requests may not change jobs (Sec-Fetch-Site: {site})"
        )
    own = _origin(request.host_url)
    origin = headers.get("Origin")
    if origin is not None:
        if origin == "null" and site == "same-origin":
            return
        if own is None or _origin(origin) != own:
            raise Forbidden(_other_origin(origin, request))
        return
    referer = headers.get("Referer")
    if referer is not None and (own is None or _origin(referer) != own):
        raise Forbidden(_other_origin(referer, request))


def _other_origin(sent: str, request: Request) -> str:
    return (
        f"requests from another origin may not change jobs ({sent!r} is not"
        f" this server, {request.host_url!r}). Behind a reverse proxy that"
        " terminates TLS or rewrites the host, wrap the app in"
        " werkzeug.middleware.proxy_fix.ProxyFix so this server knows its"
        " public address."
    )


def parse_offset(value: str | None, what: str, *, minimum: int = 0,
                 maximum: int | None = None) -> int | None:
    """A non-negative integer offset from a query or header value.

    :param minimum: the smallest value accepted.
    :param maximum: the largest value accepted, if any.
    :raises BadRequest: if present and not an integer from ``minimum`` to
        ``maximum``.
    """
    if value is None:
        return None
    shown = repr(value) if len(value) <= 30 else f"{value[:20]!r}…"
    rule = (f"{what} must be an integer from {minimum} to {maximum}"
            if maximum is not None else f"{what} must be a non-negative integer")
    # isascii: int() would accept other scripts' digits, and whitespace.
    if not (value.isascii() and value.isdigit()):
        raise BadRequest(f"{rule}, got {shown}")
    try:
        number = int(value)
    except ValueError:  # longer than int() accepts
        raise BadRequest(f"{rule}, got {shown}: too large") from None
    if number < minimum or (maximum is not None and number > maximum):
        raise BadRequest(f"{rule}, got {shown}")
    return number


def _wants_html(request: Request) -> bool:
    """Whether a POST comes from a page's own form (no script): it asks for
    HTML over JSON."""
    return request.accept_mimetypes.best_match(
        ["application/json", "text/html"]) == "text/html"


def _stored(job_id: str, read: Callable[[], T]) -> T:
    """``read()``; a job dropped meanwhile (:exc:`LookupError`) is a 404."""
    try:
        return read()
    except LookupError:
        raise NotFound(f"job {job_id} is no longer stored") from None


#: The furthest job into the list a page may start at: stores page in Lua,
#: whose numbers are doubles printed with 14 digits (``1e+20``), and no store
#: keeps anywhere near this many jobs.
MAX_LIST_OFFSET = 2**31 - 1
#: Said above a list whose search left older jobs out (Store.page).
_PARTIAL_SEARCH = (
    f"The search looked through the {SEARCH_SCAN:,} newest jobs only: older"
    " ones were not searched. A job's full id finds it wherever it is.")


class StatusApp:
    """The status pages of one :class:`~wsgi_bg.BackgroundMiddleware`, as a
    WSGI app.

    Built by the middleware (``mw.status_app``), which mounts it at its
    ``prefix``; mount it elsewhere as well with Werkzeug's
    :class:`~werkzeug.middleware.dispatcher.DispatcherMiddleware`.

    :param engine: the engine whose jobs the pages show.
    :param authorize: ``authorize(environ, action, job) -> bool``: who may
        list, view, cancel and run again jobs.
    :param url_for: ``url_for(job_id)``, the path of a job's page, given to
        the job a run again queues.

    .. versionadded:: 0.1
    """

    #: Seconds of silence after which an event stream sends a comment, which
    #: keeps proxies from closing it and tells a gone client apart.
    heartbeat: float = 15.0
    #: Seconds between two looks at the store by an event stream.
    poll_interval: float = 0.2
    #: Jobs shown at most by the list page and the list API (newest first).
    list_limit: int = 500
    #: Event streams served at once; past it, 503 (each holds a server thread
    #: and a store connection while it lasts).
    max_streams: int = 100
    #: Seconds an event stream lasts at most before it ends, while its job
    #: runs; the client reconnects with ``Last-Event-ID`` (after the
    #: ``retry`` the stream sends, 1 s) and resumes where it stopped.
    stream_window: float = 25.0
    #: Jobs per page of the list (the API accepts ``per_page`` up to
    #: ``list_limit``).
    per_page: int = 50
    #: Characters of output a job's page draws at most: the last ones, from
    #: a line's start; the page's script loads the earlier lines when asked.
    #: A page's cost is bounded by it, whatever a job prints.
    page_output_chars: int = render.PAGE_OUTPUT_CHARS

    def __init__(
        self, engine: Engine, *, authorize: Authorize,
        url_for: Callable[[str], str],
    ) -> None:
        self._engine = engine
        #: ``authorize(environ, action, job)``: who may list, view, cancel,
        #: run again and read the metrics; may be replaced at any time.
        self.authorize: Authorize = authorize
        self._url_for = url_for
        folder = resources.files(__package__).joinpath("static")
        self._files = {
            name: (folder.joinpath(name).read_bytes(), mimetype)
            for name, mimetype in _STATIC.items()
        }
        # The ANSI colour classes of job output, generated: 512 rules.
        css, mimetype = self._files["status.css"]
        self._files["status.css"] = (css + render.ansi_css().encode(), mimetype)
        self._streams = 0
        self._streams_lock = threading.Lock()  # held only to count
        self.url_map = Map(
            [
                Rule("/", endpoint="list_page", methods=["GET"]),
                Rule("/api/jobs", endpoint="list_api", methods=["GET"]),
                Rule("/api/jobs/<jobid:job_id>", endpoint="job_api", methods=["GET"]),
                Rule("/api/jobs/<jobid:job_id>/events", endpoint="events",
                     methods=["GET"]),
                Rule("/api/jobs/<jobid:job_id>/output.txt", endpoint="raw_output",
                     methods=["GET"]),
                Rule("/api/jobs/<jobid:job_id>/cancel", endpoint="cancel",
                     methods=["POST"]),
                Rule("/api/jobs/<jobid:job_id>/rerun", endpoint="rerun",
                     methods=["POST"]),
                Rule("/static/<name>", endpoint="static", methods=["GET"]),
                Rule("/metrics", endpoint="metrics", methods=["GET"]),
                Rule("/<jobid:job_id>", endpoint="job_page", methods=["GET"]),
            ],
            converters={"jobid": JobIdConverter},
        )

    @property
    def open_streams(self) -> int:
        """Event streams being served now (each holds a server thread)."""
        return self._streams

    # -- WSGI -------------------------------------------------------------------
    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        request = Request(environ)
        try:
            endpoint, values = self.url_map.bind_to_environ(environ).match()
            response = getattr(self, f"_{endpoint}")(request, **values)
        except HTTPException as exc:
            response = self._error(request, exc)
        response.headers.update(SECURITY_HEADERS)
        return response(environ, start_response)  # type: ignore[no-any-return]

    def error_response(
        self, request: Request, exc: HTTPException, *, as_json: bool,
        root: str,
    ) -> Response:
        """``exc`` answered as the pages answer their own errors: JSON
        ``{"error", "message"}`` when ``as_json``, else a page in their look
        (its links and style below ``root``, where the pages are mounted),
        with their security headers. What the middleware answers a marked
        app's request with when it starts no job (413, 503)."""
        response = self._error(request, exc, as_json=as_json, root=root)
        response.headers.update(SECURITY_HEADERS)
        return response

    def _error(
        self, request: Request, exc: HTTPException, *, as_json: bool | None = None,
        root: str | None = None,
    ) -> Response:
        # get_response keeps what the exception carries: its status and its
        # headers (Retry-After of a 503, Allow of a 405, Location of a redirect).
        response = exc.get_response(request.environ)
        code = exc.code or 500
        if code < 400:
            return response
        if as_json is None:
            # API clients get JSON; the pages' own forms (cancel, run again:
            # a POST asking for HTML) a page.
            as_json = request.path.startswith("/api/") and not (
                request.method == "POST" and _wants_html(request))
        if as_json:
            # API clients get the same message as JSON.
            body = {"error": exc.name, "message": exc.description}
            response.set_data(dump_json(body))
            response.mimetype = "application/json"
        else:
            page = render.error_page(
                request.script_root if root is None else root, code, exc.name,
                str(exc.description or ""),
                may_list=self._may(request, "list", None),
                retry_after=response.headers.get("Retry-After"),
            )
            response.set_data(page)
            response.mimetype = "text/html"
        return response

    # -- helpers ----------------------------------------------------------------
    def _job(self, request: Request, job_id: str, action: str) -> Job:
        """The job, if it exists and ``authorize`` allows ``action`` on it."""
        job = self._engine.get(job_id)
        if job is None:
            raise self._gone(job_id)
        allowed = self._authorize(request, action, job)
        if not allowed:
            raise Forbidden(f"you may not {action} this job")
        return job

    def _view(
        self, request: Request, job_id: str, since: int
    ) -> tuple[dict[str, Any], str, int]:
        """:meth:`Job.view` if ``authorize`` allows "view": one store call.
        ``authorize`` gets a handle (handles are lazy: one that reads the job
        reads the store itself) before anything is read; a job found missing,
        before or after, is a 404."""
        job = Job(self._engine, job_id)
        if not self._authorize(request, "view", job):
            raise Forbidden("you may not view this job")
        try:
            return job.view(since)
        except LookupError:
            raise self._gone(job_id) from None

    def _gone(self, job_id: str) -> NotFound:
        return NotFound(f"no job {job_id} (unknown, or finished and dropped)")

    def _authorize(self, request: Request, action: str, job: Job | None) -> bool:
        """``authorize``'s answer (see :data:`OLD_ACTION_NAMES`). One that
        raises is a bug in it: a 500 that says so, logged with its traceback,
        not a 404 that would hide it."""
        return self._answer(
            action, lambda name: self._authorize_once(request, name, job))

    def _answer(self, action: str, ask: Callable[[str], bool]) -> bool:
        """``ask(action)``; for a renamed action, ``ask`` of its old name too,
        both needed, and a :exc:`DeprecationWarning` when they differ."""
        allowed = ask(action)
        old = OLD_ACTION_NAMES.get(action)
        if old is None:
            return allowed
        allowed_old = ask(old)
        if allowed_old != allowed:
            authorize = self.authorize
            name = getattr(authorize, "__qualname__", None) or repr(authorize)
            said = {True: "allowed", False: "refused"}
            warnings.warn(
                f"the authorize callable {name} {said[allowed]} action"
                f" {action!r} but {said[allowed_old]} {old!r}, its old name:"
                f" the {action} is refused. Give both the same answer; {old!r}"
                " is deprecated since 0.2 (it will name retries after a"
                " failure), and until it is removed authorize is asked both"
                " and a refusal of either refuses.",
                DeprecationWarning, stacklevel=2)
        return allowed and allowed_old

    def _authorize_once(self, request: Request, action: str, job: Job | None) -> bool:
        authorize = self.authorize
        try:
            return bool(authorize(request.environ, action, job))
        except HTTPException:
            raise  # the store unreachable (503), or the callable's own answer
        except Exception as exc:
            if job is not None and self._engine.get(job.id) is None:
                # It read the job just as it was dropped.
                raise NotFound(f"job {job.id} is no longer stored") from None
            name = getattr(authorize, "__qualname__", None) or repr(authorize)
            logger.exception("wsgi_bg: authorize callable %s raised for action %r",
                             name, action)
            raise InternalServerError(
                f"the authorize callable {name} raised {type(exc).__name__} for"
                f" action {action!r}: a bug in the authorize function given to"
                " BackgroundMiddleware; its traceback is in the server's log"
            ) from None

    def _may(self, request: Request, action: str, job: Job | None) -> bool:
        """Whether this visitor may do ``action`` (to offer it)."""
        return self._answer(action, lambda name: self._may_once(request, name, job))

    def _may_once(self, request: Request, action: str, job: Job | None) -> bool:
        try:
            return bool(self.authorize(request.environ, action, job))
        except Exception:  # a failing authorize offers nothing, breaks nothing
            return False

    def _notice(self, request: Request) -> str | None:
        """The warning for a server whose processes do not share their jobs."""
        if request.environ.get("wsgi.multiprocess") and not getattr(
            self._engine, "shared_store", False
        ):
            return render.MULTIPROCESS_NOTICE
        return None

    def _list(self, request: Request, per_page: int) -> dict[str, Any]:
        """One page of the list, filtered: ``jobs`` (to_dict of each),
        ``counts`` per state, ``total`` matching, ``page``, ``pages``,
        ``state``, ``q``."""
        if not self._authorize(request, "list", None):
            raise Forbidden(_LIST_REFUSED)
        state = request.args.get("state", "")
        if state and state not in render.STATES:
            raise BadRequest(
                f"state must be one of {', '.join(render.STATES)}, got {state!r}"
            )
        search = request.args.get("q", "").strip()
        # Past the last page: an empty page; past any page a store could
        # hold: 400, before any store call.
        page = parse_offset(request.args.get("page"), "page", minimum=1,
                            maximum=MAX_LIST_OFFSET // per_page + 1) or 1
        store = self._engine.store
        # One store call for the page (filtered and paged by the store: a
        # Redis store sends one page, not every record), one for the counts.
        records, total = found = store.page(
            (state,) if state else (), search, (page - 1) * per_page, per_page)
        pages = max(1, math.ceil(total / per_page))
        jobs = [record_to_dict(r) for r in records]
        return {"jobs": jobs, "counts": store.counts(), "total": total,
                "page": page, "pages": pages, "state": state, "q": search,
                "partial": found.partial}

    @staticmethod
    def _json(data: Any, status: int = 200) -> Response:
        return Response(dump_json(data), status=status, mimetype="application/json")

    # -- endpoints --------------------------------------------------------------
    def _list_page(self, request: Request) -> Response:
        found = self._list(request, self.per_page)
        page = render.list_page(
            request.script_root, found["jobs"], found["counts"],
            state=found["state"], search=found["q"], page=found["page"],
            per_page=self.per_page, total=found["total"], now=time.time(),
            notice=self._notice(request) or (_PARTIAL_SEARCH if found["partial"]
                                             else None),
        )
        return Response(page, mimetype="text/html")

    def _list_api(self, request: Request) -> Response:
        per_page = parse_offset(request.args.get("per_page"), "per_page",
                                minimum=1, maximum=self.list_limit)
        if per_page is None:
            per_page = self.per_page
        return self._json(self._list(request, per_page))

    def _job_page(self, request: Request, job_id: str) -> Response:
        data, output, offset = self._view(request, job_id, 0)
        page = render.job_page(
            request.script_root, data, output, offset,
            may_list=self._may(request, "list", None), now=time.time(),
            notice=self._notice(request),
            may_rerun=self._may(request, "rerun",
                                Job(self._engine, job_id)),
            max_output_chars=self.page_output_chars,
        )
        return Response(page, mimetype="text/html")

    def _job_api(self, request: Request, job_id: str) -> Response:
        since = parse_offset(request.args.get("since"), "since") or 0
        data, output, offset = self._view(request, job_id, since)
        record = dump_json(data)
        # The same state and output after the same offset: the same tag. A
        # page polling with If-None-Match gets an empty 304 until news come.
        digest = hashlib.blake2b(
            f"{since}:{offset}:{record}".encode(), digest_size=12
        ).hexdigest()
        if not output and request.if_none_match.contains(digest):
            response = Response(status=304)
        else:
            # The record encoded once, for the tag and the body (what every
            # poll costs, issue 13): the body is it with three keys more.
            more = dump_json({"output": output, "next": offset, "now": time.time()})
            response = Response(f"{record[:-1]}, {more[1:]}",
                                mimetype="application/json")
        response.set_etag(digest)
        return response

    def _raw_output(self, request: Request, job_id: str) -> Response:
        job = self._job(request, job_id, "view")
        text, name = _stored(job_id, lambda: (job.output, job.name))
        response = Response(render.clean_text(text), mimetype="text/plain")
        stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)
        response.headers.set("Content-Disposition", "attachment",
                             filename=f"{stem[:60]}-{job_id[:8]}.txt")
        return response

    def _events(self, request: Request, job_id: str) -> Response:
        since = parse_offset(request.args.get("since"), "since")
        # A reconnecting EventSource resends its first URL; the id of the last
        # event it saw is where it really is.
        last = parse_offset(request.headers.get("Last-Event-ID"), "Last-Event-ID")
        job = self._job(request, job_id, "view")
        _stored(job_id, lambda: job.state)  # gone already: 404, not an empty stream
        if self._streams >= self.max_streams:
            raise ServiceUnavailable(
                f"{self.max_streams} event streams are open (max_streams): poll"
                " the JSON API instead, or try again later", retry_after=5)
        stream = job_events(
            job, last if last is not None else since or 0,
            heartbeat=self.heartbeat, poll_interval=self.poll_interval,
            sock=request.environ.get("werkzeug.socket"), window=self.stream_window,
        )
        response = Response(self._counted(stream), mimetype="text/event-stream")
        response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer
        return response

    def _counted(
        self, stream: Generator[bytes, None, None]
    ) -> Generator[bytes, None, None]:
        with self._streams_lock:
            self._streams += 1
        try:
            yield from stream
        finally:
            stream.close()  # at once, not when garbage-collected
            with self._streams_lock:
                self._streams -= 1

    def _cancel(self, request: Request, job_id: str) -> Response:
        check_same_origin(request)
        job = self._job(request, job_id, "cancel")
        cancelled = job.cancel()
        state = _stored(job_id, lambda: job.state.value)
        if _wants_html(request):
            # The page's form (no script): back to the page, as a GET.
            return redirect(f"{request.script_root}/{job_id}", 303)
        return self._json({"cancelled": cancelled, "state": state})

    def _rerun(self, request: Request, job_id: str) -> Response:
        check_same_origin(request)
        job = self._job(request, job_id, "rerun")
        try:
            state = job.state
        except LookupError:
            raise self._gone(job_id) from None
        if not state.done:
            raise Conflict(
                f"job {job_id} is still {state.value}: it can be run again once"
                " it has ended (cancel it first to stop it)")
        try:
            new = self._engine.rerun(job_id, url_for=self._url_for)
        except (LookupError, BadSignature) as exc:
            raise Conflict(str(exc)) from None
        url = f"{request.script_root}/{new.id}"
        if _wants_html(request):
            # The page's form (no script): on to the new job's page.
            return redirect(url, 303)
        response = self._json({"id": new.id, "url": url}, status=202)
        response.headers["Location"] = url
        return response

    def _metrics(self, request: Request) -> Response:
        if not self._authorize(request, "metrics", None):
            raise Forbidden(_METRICS_REFUSED)
        return Response(metrics.exposition(self._engine.store),
                        content_type=metrics.CONTENT_TYPE)

    def _static(self, request: Request, name: str) -> Response:
        if name not in self._files:
            raise NotFound()
        data, mimetype = self._files[name]
        return Response(data, mimetype=mimetype)
