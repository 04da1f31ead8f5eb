"""Testing apps that use wsgi_bg: a pytest plugin, and helpers that work without it.

Installed with wsgi_bg, the plugin is loaded by pytest itself (through the
``pytest11`` entry point) and gives every test the :func:`wsgi_bg_middleware`
fixture: a factory of :class:`~wsgi_bg.BackgroundMiddleware` objects that are
always shut down after the test, which then fails if a process the test
started is still alive::

    from webtest import TestApp
    from wsgi_bg.testing import start_job, wait_for_job

    import myapp   # job functions at module level, importable by workers

    def test_report(wsgi_bg_middleware):
        mw = wsgi_bg_middleware(myapp.app)
        job = start_job(TestApp(mw), "post", "/reports/2026")
        wait_for_job(job, timeout=30)      # fails with the job's error and output
        assert job.result == {"year": 2026}

Job code can also run alone, in the test's own process, where mocks apply:
:func:`job_context` gives it a job (``current_job`` works, ``@background``
functions run inline) and records its progress and output::

    def test_report_code():
        with job_context() as job:
            assert myapp.build_report(2026) == {"year": 2026}
        assert job.progress == {"done": 12, "total": 12, "message": "December"}

What is here:

- :func:`wsgi_bg_middleware` (fixture) and :class:`MiddlewareFactory`;
- :func:`start_job`: a request through a WebTest ``TestApp``, a Flask (or
  Werkzeug) test client or a Django test ``Client`` that starts a job, and
  that job's :class:`~wsgi_bg.Job`;
- :func:`wait_for_job`: wait with a deadline, fail with the job's error and
  output;
- :func:`job_context` and :class:`RecordedJob`: job code in a unit test;
- :func:`serving`: ``@background`` calls in views reached without WSGI
  (Django's test client) start jobs on a given middleware;
- :func:`wait_for`, :func:`live_children`, :func:`assert_no_children`:
  polling with a deadline, and checking that no process is left behind.

Importing this module starts nothing and changes nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

# Only what the plugin and job_context need at once: pytest loads this module
# in every run of every project that installs wsgi_bg (a test that doesn't
# use wsgi_bg must not pay for the engine, the stores and Werkzeug).
from . import context

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .jobs import Job, JobState
    from .middleware import BackgroundMiddleware

T = TypeVar("T")

__all__ = [
    "ChildProcess",
    "MiddlewareFactory",
    "RecordedJob",
    "assert_no_children",
    "job_context",
    "job_from_response",
    "live_children",
    "serving",
    "start_job",
    "wait_for",
    "wait_for_job",
]


def _check_timeout(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


# -- polling -------------------------------------------------------------------
def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.01,
    message: str = "the condition",
) -> T:
    """Call ``predicate`` until it returns a true value, and return that value.

    What a test does instead of ``time.sleep``: it waits exactly as long as
    needed, and fails clearly when the deadline passes::

        wait_for(lambda: "step 3" in job.output, 10, message="step 3")

    :param timeout: seconds before giving up.
    :param interval: seconds between calls.
    :param message: what is awaited, for the failure message.
    :raises AssertionError: if ``predicate`` stays false for ``timeout``.

    .. versionadded:: 0.1
    """
    __tracebackhide__ = True
    timeout = _check_timeout("timeout", timeout)
    interval = _check_timeout("interval", interval)
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


# -- processes left behind -----------------------------------------------------
@dataclass(frozen=True)
class ChildProcess:
    """A process descending from the test process.

    ``start`` tells a process from a later one that reuses its pid.

    .. versionadded:: 0.1
    """

    pid: int
    ppid: int
    start: str
    zombie: bool
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.command[:160]}"


def _all_processes() -> list[ChildProcess]:
    if os.path.isdir("/proc/self"):
        return _proc_processes()
    listing = subprocess.run(
        ["ps", "-A", "-o", "pid=,ppid=,stat=,lstart=,command="],
        capture_output=True, text=True, check=True,
    ).stdout
    found = []
    for line in listing.splitlines():
        parts = line.split(None, 8)
        if len(parts) < 8:
            continue
        pid, ppid, stat = parts[:3]
        found.append(ChildProcess(int(pid), int(ppid), " ".join(parts[3:8]),
                                  stat.startswith("Z"), parts[8] if len(parts) > 8
                                  else ""))
    return found


def _proc_processes() -> list[ChildProcess]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid ... starttime(22nd)": comm may hold spaces.
        comm_end = stat.rfind(")")
        fields = stat[comm_end + 2 :].split()
        command = cmdline.strip() or stat[stat.find("(") + 1 : comm_end]
        found.append(ChildProcess(int(name), int(fields[1]), fields[19],
                                  fields[0] == "Z", command))
    return found


def live_children(ignore: Iterable[ChildProcess] = ()) -> list[ChildProcess]:
    """The processes descending from this one that have not exited.

    Zombies (exited, not yet reaped) do not count, nor does multiprocessing's
    resource tracker: it is the whole process's, wsgi_bg leaves it alone, and
    it ends with this process. Neither do the processes in ``ignore`` (say,
    the children a test found when it began).

    A process whose parent died is adopted by init and is no longer a
    descendant: it cannot be seen from here.

    .. versionadded:: 0.1
    """
    skip = {(p.pid, p.start) for p in ignore}
    processes = _all_processes()
    children: dict[int, list[ChildProcess]] = {}
    for process in processes:
        children.setdefault(process.ppid, []).append(process)
    alive = []
    todo = [os.getpid()]
    while todo:
        for process in children.get(todo.pop(), ()):
            todo.append(process.pid)
            if (process.zombie or (process.pid, process.start) in skip
                    or "multiprocessing.resource_tracker" in process.command):
                continue
            alive.append(process)
    return alive


def assert_no_children(
    timeout: float = 10.0, *, ignore: Iterable[ChildProcess] = ()
) -> None:
    """Wait until every process this one started has exited; fail if one is
    still alive after ``timeout`` seconds, naming it.

    Call it after :meth:`BackgroundMiddleware.shutdown` to check that nothing
    is left behind; :func:`wsgi_bg_middleware` does it for you.

    :param ignore: processes not to count, e.g. ``live_children()`` taken
        before the test started them.
    :raises AssertionError: listing the processes left behind.

    .. versionadded:: 0.1
    """
    __tracebackhide__ = True
    ignore = list(ignore)
    timeout = _check_timeout("timeout", timeout)
    deadline = time.monotonic() + timeout
    while left := live_children(ignore):
        if time.monotonic() > deadline:
            listed = "; ".join(str(p) for p in left)
            raise AssertionError(
                f"{len(left)} process(es) left behind, still alive {timeout} s"
                f" later: {listed}. Shut down every BackgroundMiddleware (its"
                " shutdown() returns when all its processes are gone) and end"
                " the processes the test itself started."
            )
        time.sleep(0.01)


# -- the middleware fixture ------------------------------------------------------
def _empty_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no app: this middleware was built for jobs only\n"]


#: Factories of the tests running now (start_job looks there for a middleware).
_factories: list[MiddlewareFactory] = []


class MiddlewareFactory:
    """Builds :class:`~wsgi_bg.BackgroundMiddleware` objects and, on
    :meth:`close`, shuts every one down and checks that no process is left.

    What the :func:`wsgi_bg_middleware` fixture gives a test; usable on its
    own in other test runners::

        factory = MiddlewareFactory()
        try:
            mw = factory(app, max_workers=1)
            ...
        finally:
            factory.close()

    Options default to ``max_workers=2`` and ``cancel_grace=1.0`` (a test
    rarely needs more workers, and should not wait 5 s for a job that ignores
    a cancel); any :class:`~wsgi_bg.BackgroundMiddleware` option may be given.

    :param check_processes: on :meth:`close`, fail if a process started
        since the factory was made is still alive.
    :param process_timeout: seconds :meth:`close` waits for processes to end.

    .. versionadded:: 0.1
    """

    #: Options given to every middleware unless the call sets them.
    defaults: dict[str, Any] = {"max_workers": 2, "cancel_grace": 1.0}

    def __init__(
        self, *, check_processes: bool = True, process_timeout: float = 10.0
    ) -> None:
        self.process_timeout = _check_timeout("process_timeout", process_timeout)
        self.check_processes = check_processes
        self._before = live_children() if check_processes else []
        #: The middlewares built or adopted, in order.
        self.made: list[BackgroundMiddleware] = []
        self.closed = False
        _factories.append(self)

    def __call__(
        self, app: WSGIApplication | None = None, /, **options: Any
    ) -> BackgroundMiddleware:
        """Build ``BackgroundMiddleware(app, **options)``, to be shut down by
        :meth:`close`. Without ``app``, the middleware wraps an app answering
        404 (enough for :meth:`~wsgi_bg.BackgroundMiddleware.submit`)."""
        from .middleware import BackgroundMiddleware

        if self.closed:
            raise RuntimeError("this MiddlewareFactory was closed: build no more")
        if app is not None and not callable(app):
            raise TypeError(
                "app must be a WSGI application (a callable), got"
                f" {app!r}; call the factory with no app to get a middleware"
                " for mw.submit() alone"
            )
        if isinstance(app, BackgroundMiddleware):
            raise TypeError(
                "app is already a BackgroundMiddleware (wrapped at import?):"
                " pass it to manage() to have it shut down after the test, or"
                " pass the app it wraps (its .app) to build one with these options"
            )
        for key, value in self.defaults.items():
            options.setdefault(key, value)
        return self.manage(BackgroundMiddleware(app or _empty_app, **options))

    def manage(self, mw: BackgroundMiddleware) -> BackgroundMiddleware:
        """Shut down ``mw`` (built elsewhere, e.g. by your app's factory) with
        the others on :meth:`close`; return it."""
        from .middleware import BackgroundMiddleware

        if not isinstance(mw, BackgroundMiddleware):
            raise TypeError(f"manage() takes a BackgroundMiddleware, got {mw!r}")
        if self.closed:
            raise RuntimeError("this MiddlewareFactory was closed")
        self.made.append(mw)
        return mw

    def close(self) -> None:
        """Shut down every middleware without waiting (running jobs are
        killed at once), then check that no process started since the
        factory was made is alive.

        :raises AssertionError: naming the processes left behind.
        """
        __tracebackhide__ = True
        if self.closed:
            return
        self.closed = True
        if self in _factories:
            _factories.remove(self)
        errors: list[BaseException] = []
        for mw in self.made:
            try:
                mw.shutdown(wait=False)
            except Exception as exc:  # shut the others down anyway
                errors.append(exc)
        if errors:
            raise errors[0]
        if self.check_processes:
            assert_no_children(self.process_timeout, ignore=self._before)


# -- starting a job through a test client -----------------------------------------
@contextlib.contextmanager
def serving(mw: BackgroundMiddleware) -> Iterator[BackgroundMiddleware]:
    """Within the block, code in this thread runs as if ``mw`` served a
    request: ``@background`` calls start jobs on ``mw``.

    For test clients that call the app without WSGI, such as Django's
    ``django.test.Client`` (which calls Django's handler, never the WSGI app
    your ``wsgi.py`` wraps)::

        with serving(mw):
            response = Client().post("/reports/2026")

    :func:`start_job` does it for you.

    .. versionadded:: 0.1
    """
    from .middleware import BackgroundMiddleware

    if not isinstance(mw, BackgroundMiddleware):
        raise TypeError(f"serving() takes a BackgroundMiddleware, got {mw!r}")
    token = context.serving.set((mw, None))
    try:
        yield mw
    finally:
        context.serving.reset(token)


def _find_middleware(obj: Any, depth: int = 0) -> BackgroundMiddleware | None:
    """The middleware wrapping a test client's app, if it can be reached:
    WebTest's ``client.app``, Flask's ``client.application.wsgi_app``, and
    anything wrapped below by an ``app`` or ``wsgi_app`` attribute."""
    from .middleware import BackgroundMiddleware

    if isinstance(obj, BackgroundMiddleware):
        return obj
    if depth > 8 or obj is None:
        return None
    for attribute in ("app", "application", "wsgi_app"):
        try:
            inner = getattr(obj, attribute, None)
        except Exception:
            continue
        if inner is not None and inner is not obj:
            found = _find_middleware(inner, depth + 1)
            if found is not None:
                return found
    return None


def _only_made() -> BackgroundMiddleware:
    """The one middleware the factories of the tests running now built."""
    made = [mw for factory in _factories for mw in factory.made]
    if len(made) != 1:
        raise TypeError(
            "start_job cannot tell which BackgroundMiddleware the client"
            f" reaches (the wsgi_bg_middleware fixture built {len(made)}"
            " in this test): pass it, start_job(client, method, path, mw=mw)"
        )
    return made[0]


def _response_parts(response: Any) -> tuple[int, str | None, bytes]:
    status = getattr(response, "status_code", None)
    if not isinstance(status, int):
        status = getattr(response, "status_int", None)
    if not isinstance(status, int):
        raise TypeError(
            f"the client answered {response!r}, which has no status code: use a"
            " WebTest TestApp, a Flask or Werkzeug test client, or a Django"
            " test Client"
        )
    headers = getattr(response, "headers", None)
    location = headers.get("Location") if headers is not None else None
    body = b""
    get_data = getattr(response, "get_data", None)
    if callable(get_data):
        body = get_data()
    else:
        for attribute in ("content", "body"):
            value = getattr(response, attribute, None)
            if isinstance(value, bytes):
                body = value
                break
    return status, location, body


def job_from_response(response: Any, mw: BackgroundMiddleware) -> Job:
    """The job a response points to: a redirect (``303``, as ``@background``
    views and marked apps answer) to the job's page, or a ``202`` whose JSON
    body holds ``{"id": ...}``.

    :raises AssertionError: if the response points to no job ``mw`` knows,
        with the response's status and the start of its body.

    .. versionadded:: 0.1
    """
    __tracebackhide__ = True
    from .jobs import is_job_id

    status, location, body = _response_parts(response)
    job_id: str | None = None
    if status == 202:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            job_id = data["id"]
    if job_id is None and location and (300 <= status < 400 or status == 202):
        job_id = urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1]
    if job_id is None or not is_job_id(job_id):
        raise AssertionError(
            f"the response ({status}, Location: {location!r}) does not point to"
            " a job: expected a redirect to the job's page (job.url) or a 202"
            f" with JSON {{'id': ...}}. Body: {body[:500]!r}"
        )
    job = mw.get_job(job_id)
    if job is None:
        raise AssertionError(
            f"the response points to job {job_id!r}, which {mw!r} does not know:"
            " does the view start its jobs on this middleware?"
        )
    return job


def start_job(
    client: Any, method: str, path: str, /, *, mw: BackgroundMiddleware | None = None,
    **request_options: Any,
) -> Job:
    """Send a request that starts a job; return the job.

    ``client`` is a WebTest ``TestApp``, a Flask or Werkzeug test client, or
    a Django test ``Client``; ``request_options`` go to its request method
    (``params=`` for WebTest, ``data=`` or ``json=`` for Flask, ``data=`` for
    Django). The app must answer as ``@background`` views and marked apps
    do: a redirect to ``job.url``, or ``202`` with the job's id in JSON.

    The middleware is ``mw``, else the one the client's app is wrapped in
    (``TestApp(mw)``, ``app.wsgi_app = mw``), else the only one the
    :func:`wsgi_bg_middleware` fixture built. The request runs under
    :func:`serving` that middleware, so views reached without WSGI (Django's
    test client) start their jobs on it.

    .. code-block:: python

        job = start_job(app.test_client(), "post", "/reindex", json={"all": True})
        wait_for_job(job)

    :raises TypeError: if ``client`` has no such request method, or the
        middleware cannot be told (pass ``mw=``).
    :raises AssertionError: if the response points to no job.

    .. versionadded:: 0.1
    """
    __tracebackhide__ = True
    if not isinstance(method, str) or not isinstance(path, str):
        raise TypeError(
            "start_job(client, method, path): method and path are strings such"
            f" as 'post' and '/reports/2026', got {method!r} and {path!r}"
        )
    send = getattr(client, method.lower(), None)
    if not callable(send):
        raise TypeError(
            f"client must be a test client with a {method.lower()}() method (a"
            " WebTest TestApp, a Flask or Werkzeug test client, a Django test"
            f" Client), got {client!r}"
        )
    mw = mw or _find_middleware(client) or _only_made()
    with serving(mw):
        response = send(path, **request_options)
    return job_from_response(response, mw)


def wait_for_job(
    job: Job, timeout: float = 30.0, *,
    state: JobState | str | None = "succeeded",
) -> Job:
    """Wait for ``job`` to end; fail, with its error and output, unless it
    ends in ``state``.

    .. code-block:: python

        wait_for_job(job)                               # must succeed
        wait_for_job(job, state="failed")               # must fail
        wait_for_job(job, state=None)                   # any end will do

    :param timeout: seconds to wait at most.
    :param state: the :class:`~wsgi_bg.JobState` (or its value) the job
        must end in, or ``None`` for any terminal state; default: succeeded.
    :return: the job, done.
    :raises AssertionError: if the job is not done within ``timeout`` or ends
        in another state; the message has its state, error and last output.

    .. versionadded:: 0.1
    """
    __tracebackhide__ = True
    from .jobs import Job

    if not isinstance(job, Job):
        raise TypeError(
            f"wait_for_job takes a Job, got {job!r}: get one from start_job(),"
            " mw.submit() or mw.get_job(job_id)"
        )
    timeout = _check_timeout("timeout", timeout)
    expected = None if state is None else _terminal_state(state)
    try:
        job.wait(timeout)
    except TimeoutError:
        raise AssertionError(
            f"job {job.name} ({job.id}) is still {job.state.value} after"
            f" {timeout} s{_describe(job)}"
        ) from None
    if expected is not None and job.state is not expected:
        raise AssertionError(
            f"job {job.name} ({job.id}) ended {job.state.value}, expected"
            f" {expected.value}{_describe(job)}"
        )
    return job


def _terminal_state(state: JobState | str) -> JobState:
    from .jobs import JobState

    try:
        expected = JobState(state)
    except ValueError:
        raise ValueError(
            f"state must be a JobState or one of {[s.value for s in JobState]},"
            f" or None, got {state!r}"
        ) from None
    if not expected.done:
        raise ValueError(
            f"state must be a terminal state, got {expected.value!r}: a job"
            " is waited for until it ends"
        )
    return expected


def _describe(job: Job, tail: int = 2000) -> str:
    parts = []
    error = job.error
    if error:
        parts.append(f"error:\n{error.rstrip()}")
    output = job.output
    if len(output) > tail:
        output = "[…]" + output[-tail:]
    parts.append(f"output:\n{output.rstrip()}" if output else "output: (none)")
    return "\n" + "\n".join(parts)


# -- job code alone --------------------------------------------------------------
class _Tee(io.TextIOBase):
    """One stream both sys.stdout and sys.stderr write to, in order, as a
    job's fds 1 and 2 are one pipe."""

    def __init__(self, sink: list[str]) -> None:
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._sink.append(text)
        return len(text)


class RecordedJob(context.JobContext):
    """The job :func:`job_context` gives code under test; it records what
    the code reports.

    .. versionadded:: 0.1
    """

    __slots__ = ("progress_reports", "on_progress", "_output", "_cancel")

    def __init__(self, job_id: str, cancel_requested: bool = False) -> None:
        super().__init__(job_id)
        #: Every ``current_job.progress`` report, in order.
        self.progress_reports: list[dict[str, Any]] = []
        #: Called with each report, after it is recorded: e.g. to cancel the
        #: job at some point, ``lambda report: job.cancel()``.
        self.on_progress: Callable[[dict[str, Any]], object] | None = None
        self._output: list[str] = []
        self._cancel = cancel_requested

    @property
    def id(self) -> str:
        """The job's id, as ``current_job.id`` gives it."""
        return self.job_id

    @property
    def progress(self) -> dict[str, Any] | None:
        """The last report, ``{"done", "total", "message"}``, or ``None``
        (as :attr:`Job.progress <wsgi_bg.Job.progress>`)."""
        return self.progress_reports[-1] if self.progress_reports else None

    @property
    def output(self) -> str:
        """What the code wrote to ``sys.stdout`` and ``sys.stderr``, in order."""
        return "".join(self._output)

    @property
    def cancel_requested(self) -> bool:
        """Whether :meth:`cancel` was called (or the context began cancelled)."""
        return self._cancel

    def cancel(self) -> None:
        """Ask the job to stop: ``current_job.cancel_requested`` turns true."""
        self._cancel = True

    def report_progress(self, report: dict[str, Any]) -> None:
        self.progress_reports.append(report)
        if self.on_progress is not None:
            self.on_progress(report)

    def poll_cancel(self) -> bool:
        return self._cancel

    def __repr__(self) -> str:
        return f"<RecordedJob {self.job_id[:8]}… {len(self.progress_reports)} reports>"


@contextlib.contextmanager
def job_context(
    job_id: str | None = None, *, cancel_requested: bool = False,
    capture_output: bool = True,
) -> Iterator[RecordedJob]:
    """Run a block as a job's code, in this process: for unit tests of job
    functions, with your mocks and monkeypatches in force.

    Inside the block ``current_job`` works (``id``, ``progress``,
    ``cancel_requested``) and ``@background`` functions run inline, as in a
    real job; the :class:`RecordedJob` yielded records the progress reports
    and, unless ``capture_output`` is false, what the code writes to
    ``sys.stdout`` and ``sys.stderr``::

        def test_rebuild_stops_when_cancelled():
            with job_context() as job:
                job.on_progress = lambda report: report["done"] == 2 and job.cancel()
                assert tasks.rebuild(["a", "b", "c"]) == "stopped early"
            assert job.progress["done"] == 2
            assert "indexing b" in job.output

    Unlike a real job it has no timeout, no process of its own, and does not
    see output written straight to file descriptors 1 and 2 (``os.system``,
    child processes); use pytest's ``capfd`` for those.

    :param job_id: the id ``current_job.id`` gives; default: a fresh one.
    :param cancel_requested: start with ``current_job.cancel_requested`` true.
    :param capture_output: record ``sys.stdout`` and ``sys.stderr`` writes
        (they are not shown meanwhile).
    :raises RuntimeError: if already inside a job (or another job_context).

    .. versionadded:: 0.1
    """
    if job_id is None:
        from .jobs import new_job_id

        job_id = new_job_id()
    elif not isinstance(job_id, str) or not job_id:
        raise TypeError(f"job_id must be a non-empty str, got {job_id!r}")
    if not isinstance(cancel_requested, bool):
        raise TypeError(
            f"cancel_requested must be True or False, got {cancel_requested!r}"
        )
    if context.in_job():
        raise RuntimeError(
            "job_context() cannot be entered inside a job (or another"
            " job_context): current_job would change under the running code"
        )
    job = RecordedJob(job_id, cancel_requested)
    previous = context.enter(job)
    try:
        if capture_output:
            stream = _Tee(job._output)
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield job
        else:
            yield job
    finally:
        context.restore(previous)


# -- the pytest plugin -------------------------------------------------------------
try:
    import pytest
except ImportError:  # the helpers above work without pytest
    pass
else:

    @pytest.fixture
    def wsgi_bg_middleware() -> Iterator[MiddlewareFactory]:
        """A factory of :class:`~wsgi_bg.BackgroundMiddleware` objects
        (a :class:`MiddlewareFactory`): ``wsgi_bg_middleware(app, **options)``.

        After the test every middleware it built is shut down (running jobs
        killed), and the test fails if a process it started is still alive.

        .. versionadded:: 0.1
        """
        factory = MiddlewareFactory()
        try:
            yield factory
        finally:
            factory.close()
