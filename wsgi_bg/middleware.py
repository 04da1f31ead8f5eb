"""BackgroundMiddleware: run marked work in a process pool, serve its status pages.

Wrap any WSGI app; requests outside ``prefix`` reach it untouched::

    from wsgi_bg import BackgroundMiddleware

    app = BackgroundMiddleware(app, prefix="/_jobs")

Views then start jobs by calling :func:`~wsgi_bg.background` functions, or
code anywhere calls :meth:`BackgroundMiddleware.submit`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, ParamSpec

from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    LengthRequired,
    RequestEntityTooLarge,
    RequestHeaderFieldsTooLarge,
)
from werkzeug.wrappers import Request, Response

from . import context
from .auth import default_authorize
from .engine import Engine
from .exceptions import CallTooLarge, QueueFull, StoreUnavailable
from .jobs import Job
from .limits import MAX_CALL_BYTES, MAX_RESULT_BYTES
from .marks import (
    MIDDLEWARE_KEY,
    MarkedApp,
    describe_request,
    run_app,
    snapshot_environ,
)
from .options import KEEP_FINISHED, Settings, check_number, default_start_method
from .status import StatusApp

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from redis import Redis
    from rq import Queue

logger = logging.getLogger("wsgi_bg")

P = ParamSpec("P")


#: ``authorize(environ, action, job) -> bool``; see :mod:`wsgi_bg.auth`.
Authorize = Callable[["WSGIEnvironment", str, "Job | None"], bool]


def read_body(environ: WSGIEnvironment, limit: int) -> bytes:
    """The whole request body, never a part of it.

    With ``Content-Length``, that many bytes. Without it, a body the server
    ends for us (chunked, ``wsgi.input_terminated``) is read to its end.

    :raises RequestEntityTooLarge: past ``limit`` bytes, with or without
        ``Content-Length`` (Werkzeug's own reading stops at the limit and
        returns what it read: a marked app must not run on a cut body).
    :raises LengthRequired: for a chunked body the server does not end.
    :raises BadRequest: for a malformed ``Content-Length``.
    """
    too_large = RequestEntityTooLarge(
        f"the request body is larger than max_body_bytes={limit}, the largest"
        " body a marked app may receive: no job was started")
    length_header = environ.get("CONTENT_LENGTH", "").strip()
    want: int | None
    if length_header:
        if not length_header.isdigit():
            raise BadRequest(f"Content-Length must be a number, got {length_header!r}")
        want = int(length_header)
        if want > limit:
            raise too_large
    elif environ.get("wsgi.input_terminated"):
        want = None  # read to the end: the server dechunked it
    elif "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        raise LengthRequired(
            "this server does not end chunked request bodies"
            " (wsgi.input_terminated): send a Content-Length")
    else:
        return b""
    stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    size = 0
    while want is None or size < want:
        step = 65536 if want is None else min(65536, want - size)
        chunk = stream.read(min(step, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise too_large
    if want is not None and size < want:
        raise BadRequest(f"the body ended after {size} of its {want} bytes"
                         " (Content-Length): no job was started")
    return b"".join(chunks)


def python_executable() -> str | None:
    """The Python interpreter multiprocessing should start, when
    ``sys.executable`` is not one (under uWSGI it is the ``uwsgi`` binary,
    which ``forkserver`` and ``spawn`` would start with Python's options);
    ``None`` when it is fine, or when no interpreter is found.

    Looked for beside ``sys.executable`` first (a virtualenv's ``bin``, where
    ``pip install uwsgi`` puts it), then in ``sys.prefix`` and
    ``sys.exec_prefix``, as ``pythonX.Y``, ``python3``, ``python``.
    """
    current = sys.executable or ""
    if os.path.basename(current).startswith(("python", "pypy")):
        return None
    names = [f"python{sys.version_info.major}.{sys.version_info.minor}",
             f"python{sys.version_info.major}", "python"]
    folders = [os.path.dirname(current)] if current else []
    for prefix in (sys.prefix, sys.exec_prefix, getattr(sys, "base_prefix", "")):
        if prefix:
            folders.append(os.path.join(prefix, "bin"))
    for folder in folders:
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return None


def _use_real_python() -> None:
    if multiprocessing.get_start_method(allow_none=True) == "fork":
        return  # nothing is executed
    path = python_executable()
    if path is None:
        if not os.path.basename(sys.executable or "").startswith(("python", "pypy")):
            logger.warning(
                "wsgi_bg: sys.executable is %r, not a Python interpreter, and no"
                " interpreter was found beside it: call"
                " multiprocessing.set_executable('/path/to/python') before the"
                " first job", sys.executable)
        return
    multiprocessing.set_executable(path)


def _sigterm_exits(signum: int, frame: Any) -> None:
    # Unwind the server's main loop: at exit the middleware shuts down, and
    # running jobs get cancel_grace before they are killed.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills
    sys.exit(0)


def _exit_on_sigterm() -> None:
    """Make SIGTERM exit the process through Python's own exit (as
    ``sys.exit``), when nothing else handles it: servers that leave SIGTERM
    to its default (waitress, ``run_simple``) would otherwise die at once and
    take running jobs with them, without their grace. Servers with their own
    handler (gunicorn, ``wsgi-bg serve``) and uWSGI (whose handlers are not
    Python's) are left alone."""
    if (threading.current_thread() is not threading.main_thread()
            or "uwsgi" in sys.modules
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        return
    signal.signal(signal.SIGTERM, _sigterm_exits)


#: The uWSGI option that makes SIGTERM a graceful shutdown.
UWSGI_GRACEFUL_SIGTERM = "unix_signal:15 gracefully_kill_them_all"
_uwsgi_warned = False


def _check_uwsgi_sigterm() -> None:
    """Warn, once, when uWSGI runs with ``--die-on-term`` and not the
    graceful SIGTERM: it then ends the worker from a signal handler, and
    skips Python's exit (so the middleware's shutdown) whenever a request is
    in flight, and running jobs get no ``cancel_grace``."""
    global _uwsgi_warned
    uwsgi = sys.modules.get("uwsgi")
    options = getattr(uwsgi, "opt", None)
    if _uwsgi_warned or not isinstance(options, dict):
        return
    hooks = options.get("hook-master-start") or []
    if not isinstance(hooks, list):
        hooks = [hooks]
    graceful = any(b"gracefully_kill_them_all" in (
        hook if isinstance(hook, bytes) else str(hook).encode()) for hook in hooks)
    if options.get("die-on-term") and not graceful:
        _uwsgi_warned = True
        logger.warning(
            "wsgi_bg: uWSGI runs with --die-on-term, which stops its worker on"
            " SIGTERM without Python's exit whenever a request is in flight:"
            " running jobs then get no cancel_grace and are killed at once."
            ' Use --hook-master-start "%s" instead (a graceful shutdown; see'
            " wsgi_bg's deployment docs, uWSGI)", UWSGI_GRACEFUL_SIGTERM)


def _check_uwsgi_threads() -> None:
    """Refuse to run under a uWSGI whose Python threads are off: the
    middleware's threads (the pool's, the store's heartbeat) would then run
    only while a request holds the worker, so a job submitted to an idle
    worker would wait, silently, for the next request to reach it."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None or getattr(uwsgi, "has_threads", True):
        return
    raise RuntimeError(
        "wsgi_bg needs Python threads, which this uWSGI runs with off: jobs"
        " would wait until the next request reached their worker. Start uWSGI"
        " with --enable-threads (or --threads N; uWSGI 2.0.31 and newer enable"
        " them by default). See wsgi_bg's deployment docs, uWSGI."
    )


def _check_path(label: str, path: Any) -> None:
    if (not isinstance(path, str) or not path.startswith("/")
            or not path.strip("/") or "//" in path):
        raise ValueError(
            f"{label} must be a path such as '/_jobs' (starting with '/',"
            f" not the root), got {path!r}"
        )


def _check_authorize(authorize: Any) -> None:
    if not callable(authorize):
        raise TypeError(
            "authorize must be a callable (environ, action, job) -> bool,"
            f" got {authorize!r}")


def _old_max_jobs(max_jobs: int, keep_finished: int) -> int:
    """``max_jobs``, the deprecated name of ``keep_finished``."""
    if keep_finished != KEEP_FINISHED:
        raise TypeError(
            "max_jobs is the old name of keep_finished: pass keep_finished alone")
    warnings.warn(
        "BackgroundMiddleware(max_jobs=...) is deprecated: pass"
        " keep_finished=... (the number of finished jobs kept)",
        DeprecationWarning, stacklevel=3)
    return max_jobs


class BackgroundMiddleware:
    """Runs marked work in background processes and serves its status pages.

    Nothing starts when it is built: the first submit starts the worker
    pool (and what serves the store to it), in the calling process. Everything
    started stops on :meth:`shutdown`, on leaving a ``with`` block, or at
    interpreter exit.

    :param app: the WSGI application to wrap.
    :param prefix: where the status pages are served, below the middleware's
        own mount point (``SCRIPT_NAME``).
    :param max_workers: jobs that run at once (pool workers); default: the
        number of CPUs.
    :param keep_finished: finished jobs kept; past it the oldest finished are
        dropped (``job_ttl`` drops them by age).
    :param job_ttl: seconds a finished job is kept.
    :param max_output_bytes: output kept per job, in bytes of UTF-8; past it
        the head and the tail are kept (cut at character boundaries), with a
        marker saying how many bytes were dropped.
    :param max_result_bytes: the largest result a job may return, in pickled
        bytes (default 10 MiB). A job returning more ends ``failed`` with an
        error naming the size and the limit; the result is dropped in the
        job's own process and no other process, nor the store, keeps it.
        Return a path to a file for results this large.
    :param max_call_bytes: the largest call a submit may queue, in pickled
        bytes of the function and its arguments (default 1 MiB): every store
        keeps a job's call until it ends. A bigger call raises
        :exc:`~wsgi_bg.CallTooLarge` (a :exc:`ValueError`) and queues
        nothing; pass a reference instead (a file's path, a key). For a
        marked app, the request's body counts against ``max_body_bytes``
        and the rest of its call (its environ) against ``max_call_bytes``:
        a request past it is answered ``431``.
    :param max_queued: jobs that may wait for a worker; one more raises
        :exc:`~wsgi_bg.QueueFull` (``503`` for requests).
    :param cancel_grace: seconds a running job gets to stop after a cancel (or
        shutdown) before its process is killed.
    :param start_method: multiprocessing start method of the pool; default
        ``"forkserver"`` on Linux (a threaded server must not fork), else
        ``"spawn"``.
    :param executor_factory: a callable returning the
        :class:`concurrent.futures.Executor` to run jobs on, instead of the
        default :class:`~concurrent.futures.ProcessPoolExecutor`. Its workers
        must be processes (each job is forked from one).
    :param max_jobs_per_process: jobs one job process runs before it is
        replaced. A job runs in a process forked from its pool worker; when the
        job returns and leaves no thread or process of its own running, that
        process runs the worker's next job (so module-level state can carry
        over, as in any process pool). A job that crashes, is killed (timeout,
        or a cancel it ignored) or leaves something running ends its process
        and the next job gets a fresh one. ``1`` gives every job a fresh
        process.
    :param max_body_bytes: request body a marked app may receive; a larger
        one is answered ``413`` and starts no job.
    :param authorize: ``authorize(environ, action, job) -> bool`` deciding who
        may ``"list"`` jobs, ``"view"`` one, ``"cancel"`` one or ``"rerun"``
        it (run it again; ``"retry"``, its deprecated name, is asked too),
        or read the ``"metrics"``. Default:
        a job's pages and cancel are open to whoever holds its id; the list
        and the metrics are refused. See :mod:`wsgi_bg.auth`.
    :param status_url: absolute path where links to job pages point, when
        :attr:`status_app` is mounted elsewhere; default: ``SCRIPT_NAME +
        prefix``.
    :param store: where jobs are kept. ``None`` (default): in memory, in
        this server process; nothing to install, but each
        server process sees only its own jobs. A Redis URL
        (``"redis://host:6379/0"``, ``"rediss://…"``, ``"unix:///path.sock"``)
        or a :class:`redis.Redis` client: in Redis, shared by every server
        process and kept across restarts (``pip install "wsgi_bg[redis]"``;
        needs a secret key).
    :param namespace: prefix of every Redis key, so that several apps share one
        Redis without seeing each other's jobs (also the RQ queue's name).
    :param secret_key: key signing everything pickled into Redis (results), so
        that whoever can write to Redis cannot make a process run code; the
        same in every process. Default: the ``WSGI_BG_SECRET_KEY`` environment
        variable. Required by a Redis store.
    :param runner: where jobs run. ``"pool"`` (default): a process pool of
        this server process (``max_workers``, ``start_method``,
        ``executor_factory`` and ``max_jobs_per_process`` apply to it).
        ``"rq"``: queued on the RQ queue ``wsgi_bg.<namespace>`` (``wsgi_bg``
        for the default namespace), run by ``rq worker -w
        wsgi_bg.rq_worker.Worker`` processes on any host
        (``max_jobs_per_process`` applies there; ``pip install "wsgi_bg[rq]"``;
        needs the Redis store, and the same secret key on the workers); or
        an :class:`rq.Queue` of your own, in the store's Redis, whose name
        begins with ``wsgi_bg``. This process
        then starts no pool. ``"inline"``, for tests: each job runs at once
        in the thread that starts it, in the configured store (with the
        default store nothing starts), so mocks apply; no fd-level capture,
        no timeout, no crash isolation, no parallelism (see
        :mod:`wsgi_bg.runners.inline`).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        The ``runner`` option.
    .. deprecated:: 0.2
        ``max_jobs``, now ``keep_finished``: beside ``max_workers``,
        ``max_queued`` and ``max_jobs_per_process`` it read as a cap on jobs
        that run. The old name still works, with a :exc:`DeprecationWarning`.
    """

    def __init__(
        self, app: WSGIApplication, *, prefix: str = "/_jobs",
        max_workers: int | None = None, keep_finished: int = KEEP_FINISHED,
        job_ttl: float = 86400, max_output_bytes: int = 1_048_576,
        max_queued: int = 1000, cancel_grace: float = 5.0,
        start_method: str | None = None,
        executor_factory: Callable[[], Executor] | None = None,
        max_jobs_per_process: int = 100,
        max_body_bytes: int = 1_048_576,
        authorize: Authorize | None = None,
        status_url: str | None = None,
        store: str | Redis | None = None,
        namespace: str = "wsgi_bg",
        secret_key: str | bytes | None = None,
        runner: str | Queue = "pool",
        max_result_bytes: int = MAX_RESULT_BYTES,
        max_call_bytes: int = MAX_CALL_BYTES,
        max_jobs: int | None = None,
    ) -> None:
        if isinstance(app, BackgroundMiddleware):
            # Two engines on one app: the inner one runs the jobs its views
            # start, the outer one's pages never see them, and whoever shuts
            # down the outer one leaves the inner one's processes behind.
            raise TypeError(
                "app is already a BackgroundMiddleware: wrap the app it wraps"
                " (its .app), or use it as it is; two middlewares around one"
                " app would run jobs on the inner one"
            )
        _check_path("prefix", prefix)
        if status_url is not None:
            _check_path("status_url", status_url)
        if authorize is not None:
            _check_authorize(authorize)
        check_number("max_body_bytes", max_body_bytes, minimum=0, integer=True)
        if max_jobs is not None:
            keep_finished = _old_max_jobs(max_jobs, keep_finished)
        # Under uWSGI, sys.executable is uwsgi: point multiprocessing (the
        # forkserver, spawn) at the interpreter instead.
        _use_real_python()
        _exit_on_sigterm()
        _check_uwsgi_threads()
        _check_uwsgi_sigterm()
        self.app = app
        self.prefix = prefix.rstrip("/")
        self._prefix_dir = self.prefix + "/"
        self.status_url = status_url.rstrip("/") if status_url else None
        self.max_body_bytes = max_body_bytes
        #: The options the engine, store and runner read, checked
        #: (:class:`~wsgi_bg.options.Settings`); they never change.
        self.settings = Settings(
            max_workers=max_workers, keep_finished=keep_finished,
            job_ttl=job_ttl, max_output_bytes=max_output_bytes, max_queued=max_queued,
            cancel_grace=cancel_grace,
            start_method=start_method or default_start_method(),
            executor_factory=executor_factory,
            max_jobs_per_process=max_jobs_per_process, store=store,
            namespace=namespace, secret_key=secret_key, runner=runner,
            max_result_bytes=max_result_bytes, max_call_bytes=max_call_bytes,
        )
        self.engine = Engine(self.settings)
        self._multiprocess_checked = False
        self._script_name = ""  # where we were last seen mounted
        #: The status pages as a standalone WSGI app, to mount elsewhere, e.g.
        #: ``DispatcherMiddleware(app, {"/admin/jobs": mw.status_app})`` (then
        #: pass ``status_url="/admin/jobs"`` so that job links point there).
        self.status_app = StatusApp(
            self.engine, authorize=authorize or default_authorize,
            url_for=self.url_for)

    @property
    def authorize(self) -> Authorize:
        """``authorize(environ, action, job) -> bool``, as given (or the
        default); assigning another takes effect on the next request, on
        the pages mounted here and on :attr:`status_app` wherever it is
        mounted."""
        return self.status_app.authorize

    @authorize.setter
    def authorize(self, authorize: Authorize) -> None:
        _check_authorize(authorize)
        self.status_app.authorize = authorize

    # -- WSGI ---------------------------------------------------------------------
    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        # Every request passes here: kept to what each needs (issue 13: the
        # prefix test at a "/" boundary, one context variable set and reset).
        script_name = environ.get("SCRIPT_NAME", "")
        self._script_name = script_name
        if not self._multiprocess_checked:
            self._check_multiprocess(environ)
        path = environ.get("PATH_INFO", "")
        if path.startswith(self.prefix) and (
                path == self.prefix or path.startswith(self._prefix_dir)):
            # Mount the pages as werkzeug's DispatcherMiddleware would.
            environ["SCRIPT_NAME"] = script_name + self.prefix
            environ["PATH_INFO"] = path[len(self.prefix) :]
            return self.status_app(environ, start_response)
        environ[MIDDLEWARE_KEY] = self
        token = context.serving.set((self, script_name))
        try:
            return self.app(environ, start_response)
        except (QueueFull, StoreUnavailable) as exc:
            # A @background call in a view found no room, or no store: 503.
            return exc(environ, start_response)
        finally:
            context.serving.reset(token)

    def _check_multiprocess(self, environ: WSGIEnvironment) -> None:
        self._multiprocess_checked = True
        self.engine.first_request()  # (RQ: its sweep runs from now on)
        if environ.get("wsgi.multiprocess") and not self.engine.shared_store:
            logger.warning(
                "wsgi_bg: this server runs several processes (wsgi.multiprocess)"
                " but jobs are kept in each process's own store: a job's page is"
                " found only by the process that started it. Use a store shared"
                " by every process: BackgroundMiddleware(app,"
                ' store="redis://host:6379/0"). See docs/deployment.md.'
            )

    def start_app_job(
        self, app: MarkedApp, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Run a request to a marked app as a job; answer with the way to it.

        Called by :class:`~wsgi_bg.marks.MarkedApp`; the answer is ``303 See
        Other`` to the job's page, or ``202`` with JSON when the client prefers
        ``application/json``.
        """
        request = Request(environ)
        as_json = request.accept_mimetypes.best_match(
            ["text/html", "application/json"]) == "application/json"
        try:
            body = read_body(environ, self.max_body_bytes)  # 413 past the limit
            job = self._submit_request(app, request, body)
        except HTTPException as exc:  # 413, 431, or QueueFull's 503
            # As the status pages answer theirs: a page in their look, or JSON.
            response = self.status_app.error_response(
                request, exc, as_json=as_json, root=self._status_base())
            return response(environ, start_response)
        url = self.url_for(job.id)
        if as_json:
            api_url = f"{self._status_base()}/api/jobs/{job.id}"
            response = Response(
                json.dumps({"id": job.id, "url": url, "api_url": api_url}),
                status=202, mimetype="application/json",
            )
        else:
            response = Response(
                f"Started job {job.id}: see {url}\n", status=303, mimetype="text/plain"
            )
        response.headers["Location"] = url
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"  # the URL is a capability
        return response(environ, start_response)

    def _submit_request(self, app: MarkedApp, request: Request, body: bytes) -> Job:
        # The body is bounded by max_body_bytes; the rest of the call (the
        # environ) by max_call_bytes, so that neither option undoes the other.
        try:
            return self.engine.submit(
                run_app, (app, snapshot_environ(request.environ), body), {},
                name=f"{request.method} {request.script_root}{request.path}",
                function=app.ref,
                timeout=app.timeout, url_for=self.url_for,
                show_args=app.show_args,
                # Never the environ and the body: cookies, credentials, forms.
                shown_args=describe_request(request, body, app.show_query),
                max_call_bytes=self.settings.max_call_bytes + len(body),
                unique=app.unique_digest(request, body),
                retry=app.retry,
            )
        except CallTooLarge:
            raise RequestHeaderFieldsTooLarge(
                "the request's headers and environment are larger than"
                f" max_call_bytes={self.settings.max_call_bytes}, the most a job's"
                " call may carry besides its body: no job was started") from None

    # -- jobs ---------------------------------------------------------------------
    def _status_base(self) -> str:
        if self.status_url is not None:
            return self.status_url
        served = context.serving.get()
        # The request's own mount point (apps below may have changed environ's),
        # when this middleware serves it; else where it was last seen mounted.
        script_name = served[1] if served is not None and served[0] is self else None
        if script_name is None:
            script_name = self._script_name
        return script_name + self.prefix

    def url_for(self, job_id: str) -> str:
        """The path of a job's status page, as mounted."""
        return f"{self._status_base()}/{job_id}"

    def submit(
        self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job:
        """Queue ``fn(*args, **kwargs)`` to run in a worker process; return its
        :class:`~wsgi_bg.Job` at once.

        ``fn`` must be a module-level function (plain or
        :func:`~wsgi_bg.background`, whose options such as ``timeout`` and
        ``unique`` apply) and every argument must pickle. Every keyword is
        ``fn``'s: a call takes no options of its own, so a job keyed by
        ``unique`` is marked so (``@background(unique=True)``), and a plain
        function is never unique. When a job of ``fn`` with the same unique
        key is queued or running, that job is returned and nothing is queued
        (nor counted against ``max_queued``).

        :raises TypeError: if the function or an argument cannot be sent to a
            worker process; nothing is queued.
        :raises CallTooLarge: if the call pickles to more than
            ``max_call_bytes``; nothing is queued.
        :raises QueueFull: if ``max_queued`` jobs are already waiting.
        :raises RuntimeError: after :meth:`shutdown`.
        """
        return self.engine.submit(fn, args, kwargs, url_for=self.url_for)

    def rerun(self, job_id: str) -> Job:
        """Queue a stored job's call again, as a new job; return it at once.

        The new job runs the same pickled call (a marked app: the same
        request) with the same name, ``timeout`` and arguments shown; its
        ``rerun_of`` is ``job_id``, and the old job's ``rerun_as`` becomes the
        new id (the latest run again), set by the same store call. It may be
        run again while the old one still runs: the status pages offer it
        only once the job is done.

        :raises LookupError: if the job is no longer stored, or its call is
            not kept (jobs stored by an older wsgi_bg have none).
        :raises QueueFull: if ``max_queued`` jobs are already waiting.
        :raises RuntimeError: after :meth:`shutdown`.

        .. versionadded:: 0.2
        """
        return self.engine.rerun(job_id, url_for=self.url_for)

    def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or ``None`` if unknown or already dropped."""
        return self.engine.get(job_id)

    def jobs(self) -> list[Job]:
        """Every stored job, newest first."""
        return self.engine.jobs()

    def shutdown(self, wait: bool = True) -> None:
        """Stop every process started: queued jobs end cancelled; running jobs
        get ``cancel_grace`` seconds to finish (none if ``wait`` is false), then
        are killed. Returns when all processes are gone. Job handles stay
        readable afterwards; submitting raises :exc:`RuntimeError`.
        """
        self.engine.shutdown(wait=wait)

    def __enter__(self) -> BackgroundMiddleware:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
