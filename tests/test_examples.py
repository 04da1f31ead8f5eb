"""Every example in examples/ driven through WebTest, as a user would run it.

Each test builds the example's middleware (through the ``make_mw`` fixture or
the example's own factory), always shuts it down, and checks that no process
is left behind. Jobs are awaited by polling the JSON API (or ``job.wait``)
with a deadline, never by sleeping.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from urllib.parse import urljoin

import psutil
import pytest
import requests
from webtest import TestApp

from helpers import assert_no_children, max_batches, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
sys.path.insert(0, EXAMPLES)  # the examples are plain modules, as a user has them

import dispatcher_example  # noqa: E402
import flask_example  # noqa: E402
import progress_example  # noqa: E402
import shell_example  # noqa: E402
import webpy_example  # noqa: E402
import wsgi_bg.demo  # noqa: E402
from wsgi_bg import JobState, allow_all  # noqa: E402

TIMESTAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?"


def api_url(job_url: str) -> str:
    """``/prefix/<id>`` -> ``/prefix/api/jobs/<id>``."""
    base, job_id = job_url.rsplit("/", 1)
    return f"{base}/api/jobs/{job_id}"


def poll_done(client: TestApp, job_url: str, timeout: float = 30.0) -> dict:
    """Poll the job's JSON API until it is done; return the last answer."""
    def done():
        data = client.get(api_url(job_url), headers={"Accept": "application/json"}).json
        return data if data["done"] else None

    return wait_for(done, timeout, interval=0.02, message=f"job {job_url} to end")


# -- make demo --------------------------------------------------------------------
def make_dry_run(target: str, venv: str) -> list[str]:
    """The commands ``make <target>`` would run for a fresh ``venv``."""
    done = subprocess.run(["make", "-n", "-C", ROOT, target, f"VENV={venv}"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_make_demo_installs_the_package_alone(tmp_path):
    demo = make_dry_run("demo", str(tmp_path / "venv"))
    installs = [line for line in demo if " pip install " in line]
    assert installs and all("--group" not in line for line in installs), demo
    assert any(line.endswith("pip install --quiet -e .") for line in installs), demo
    # The tests still get everything they need.
    test = make_dry_run("test", str(tmp_path / "venv"))
    assert any("--group tests" in line for line in test), test


# -- the web.py example -----------------------------------------------------------
@pytest.mark.parametrize(
    "module",
    [pytest.param(webpy_example, id="examples"), pytest.param(wsgi_bg.demo, id="demo")],
)
def test_webpy_example_shows_all_lines_in_the_end(make_mw, module):
    mw = make_mw(module.make_app(delay=0.01))
    client = TestApp(mw)
    res = client.get("/").forms[0].submit(headers={"Accept": "text/html"}, status=303)
    job_url = res.headers["Location"].removeprefix("http://localhost")
    assert re.fullmatch(r"/_jobs/[A-Za-z0-9_-]{43}", job_url)

    data = poll_done(client, job_url)
    assert data["state"] == "succeeded", data["error"]
    lines = data["output"].splitlines()
    assert len(lines) == 12, data["output"]
    assert re.fullmatch(f"Started at {TIMESTAMP}", lines[0])
    assert lines[1] == "hit f5 to refresh!"
    for i, line in enumerate(lines[2:]):
        assert re.fullmatch(f"{i}: {TIMESTAMP}", line), line
    assert lines[2:] == sorted(lines[2:], key=lambda s: s.split(": ", 1)[1])

    assert data["result"] == "'10 lines printed'"
    assert data["progress"] == {"done": 10, "total": 10, "message": None}

    page = res.follow(headers={"Accept": "text/html"})
    assert page.content_type == "text/html"
    assert "hit f5 to refresh!" in page.text
    for line in lines:
        assert line in page.text
    # What a newcomer reads as the call: the function and its arguments.
    assert "Arguments" in page.text
    assert "lines=10, delay=0.01" in page.text


@pytest.mark.parametrize(
    "module",
    [pytest.param(webpy_example, id="examples"), pytest.param(wsgi_bg.demo, id="demo")],
)
def test_webpy_example_get_starts_nothing(make_mw, module):
    """A browser's GET, a health check's HEAD, /favicon.ico: no job."""
    mw = make_mw(module.make_app(delay=0.01))
    client = TestApp(mw)
    page = client.get("/")
    assert page.content_type == "text/html"
    assert page.forms[0].method.upper() == "POST"
    assert "Start a job" in page.text and 'href="/_jobs/"' in page.text
    client.head("/")
    client.get("/favicon.ico", status=404)
    client.put("/", status=405)
    assert mw.jobs() == []


def test_demo_lines_appear_one_by_one(make_mw):
    """What `make demo` promises: the page's output grows while the job runs."""
    mw = make_mw(wsgi_bg.demo.make_app(delay=0.3))
    client = TestApp(mw)
    job_url = client.post("/", status=303).location.removeprefix("http://localhost")
    api = api_url(job_url)

    def first_line_out():
        data = client.get(api).json
        return data if "\n0: " in data["output"] else None

    data = wait_for(first_line_out, 20, message="the first timed line")
    assert not data["done"]
    assert "9: " not in data["output"]
    # Asking from the returned offset gives only what is new.
    later = wait_for(lambda: client.get(api, {"since": data["next"]}).json["output"],
                     20, message="more output")
    assert later.startswith("1: ")
    mw.get_job(job_url.rsplit("/", 1)[1]).cancel()


# -- Flask ------------------------------------------------------------------------
def test_flask_views_redirect_to_their_jobs(make_mw, monkeypatch):
    monkeypatch.setitem(flask_example.app.config, "JOB_STEP", 0)
    mw = make_mw(flask_example.app)
    client = TestApp(mw)
    assert "Build the 2026 report" in client.get("/").text

    res = client.post("/reports/2026", status=303)
    job_url = res.location.removeprefix("http://localhost")
    job = mw.get_job(job_url.rsplit("/", 1)[1])
    assert job is not None and job.url == job_url
    assert job.name == "flask_example.send_report"
    job.wait(timeout=30)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result == {"year": 2026, "pages": 48}
    assert job.progress == {"done": 12, "total": 12, "message": "month 12 of 12"}
    assert job.output.splitlines() == [f"2026-{m:02d}: rendered" for m in range(1, 13)]
    page = res.follow()
    assert "2026-12: rendered" in page.text

    res = client.post("/reindex", status=303)
    data = poll_done(client, res.location.removeprefix("http://localhost"))
    assert data["state"] == "succeeded"
    assert data["result"] == "1234"
    assert data["output"] == "rebuilding the search index…\ndone\n"


# -- DispatcherMiddleware ---------------------------------------------------------
@pytest.fixture
def composed():
    """Build an example's (app, middleware); always shut it down."""
    made = []

    def build(factory, **options):
        options.setdefault("max_workers", 2)
        options.setdefault("cancel_grace", 1.0)
        app, mw = factory(**options)
        made.append(mw)
        return TestApp(app), mw

    yield build
    for mw in made:
        mw.shutdown(wait=False)
    assert_no_children()


def test_dispatcher_marked_app_under_admin(composed):
    client, mw = composed(dispatcher_example.marked_under_admin)
    assert client.get("/").text == "public site\n"

    res = client.get("/admin/report", {"format": "json"}, status=303)
    job_url = res.location.removeprefix("http://localhost")
    assert job_url.startswith("/admin/jobs/")
    data = poll_done(client, job_url)
    assert data["state"] == "succeeded", data["error"]
    assert data["output"] == (
        "report for /admin/report/\n"
        + "".join(f"exported batch {n} as json\n" for n in range(3))
        + "wrote users.json\n"
        + "report done\n"
    )
    page = res.follow()
    assert "exported batch 2 as json" in page.text
    assert 'href="/admin/jobs/static/status.css"' in page.text
    # The list needs authorize "list": refused by default, with a way to enable it.
    assert "authorize" in client.get("/admin/jobs/", status=403).text


def test_dispatcher_middleware_mounted_under_admin(composed):
    client, mw = composed(dispatcher_example.middleware_under_admin,
                          authorize=allow_all)
    assert client.get("/").text == "public site\n"
    assert "Export users" in client.get("/admin/").text

    res = client.post("/admin/export?format=xml", status=303)
    job_url = res.location.removeprefix("http://localhost")
    assert re.fullmatch(r"/admin/_jobs/[A-Za-z0-9_-]{43}", job_url)
    job_id = job_url.rsplit("/", 1)[1]
    assert mw.get_job(job_id).url == job_url
    data = poll_done(client, job_url)
    assert data["state"] == "succeeded", data["error"]
    assert data["result"] == "'users.xml'"
    assert data["url"] == job_url

    page = res.follow()
    assert "exported batch 2 as xml" in page.text
    assert 'href="/admin/_jobs/static/status.css"' in page.text
    listing = client.get("/admin/_jobs/api/jobs").json
    assert [j["url"] for j in listing["jobs"]] == [job_url]
    # The pages exist only under the mount.
    client.get(f"/_jobs/{job_id}", status=404)


# -- shelling out -----------------------------------------------------------------
def test_shell_example_shows_child_output(make_mw):
    mw = make_mw(shell_example.app)
    client = TestApp(mw)
    res = client.post("/", status=303)
    data = poll_done(client, res.location.removeprefix("http://localhost"))
    assert data["state"] == "succeeded", data["error"]
    assert data["result"] == "3"
    assert data["output"] == (
        "== os.system\n"
        "hello from a shell\n"
        f"{os.uname().sysname}\n"
        "exit status 0\n"
        "== subprocess.run\n"
        "hello from a child python\n"
        "and its stderr\n"
        "== a failing command\n"
        "about to fail\n"
        "exit status 3\n"
    )
    assert "hello from a child python" in res.follow().text


# -- progress ---------------------------------------------------------------------
def test_progress_reported_by_the_job(make_mw):
    mw = make_mw(progress_example.app)
    job = mw.submit(progress_example.count_up, 5, 0.01)
    job.wait(timeout=30)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result == 5
    assert job.progress == {"done": 5, "total": 5, "message": "step 5 of 5"}
    assert job.output == "counted to 5\n"
    data = TestApp(mw).get(api_url(job.url)).json
    assert data["progress"] == job.progress


def test_progress_example_view_starts_a_job(make_mw):
    mw = make_mw(progress_example.app)
    res = TestApp(mw).post("/count", status=303)
    job = mw.get_job(res.location.rsplit("/", 1)[1])
    assert job is not None and job.name == "progress_example.count_up"
    job.cancel()
    job.wait(timeout=30)
    assert job.state is JobState.CANCELLED


TQDM_TOTAL = 3000


def test_tqdm_bar_becomes_progress_and_collapses(make_mw):
    # The premise: run here, this loop redraws its bar thousands of times.
    raw = io.StringIO()
    with contextlib.redirect_stderr(raw):
        progress_example.crunch.__wrapped__(TQDM_TOTAL, 0, 0)
    assert raw.getvalue().count(f"/{TQDM_TOTAL} [") > TQDM_TOTAL

    mw = make_mw(progress_example.app)
    job = mw.submit(progress_example.crunch, TQDM_TOTAL, 0, 0)
    job.wait(timeout=30)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.progress == {"done": TQDM_TOTAL, "total": TQDM_TOTAL,
                            "message": "crunching"}
    # At most one state of the bar per batch of output (not per redraw).
    copies = job.output.count(f"/{TQDM_TOTAL} [")
    most = max_batches(job, len(raw.getvalue()))
    assert 1 <= copies <= most, f"{copies} copies kept, {most} batches at most"
    assert job.output.endswith(f"crunched {TQDM_TOTAL}\n")
    page = TestApp(mw).get(job.url)
    assert "100%" in page.text and f"{TQDM_TOTAL}/{TQDM_TOTAL}" in page.text


# -- every command in examples/ and docs/, run as written ------------------------
# Each command the docs and examples give (``wsgi-bg ...``, ``python
# examples/...``, and the commands in examples/) is found by reading them, and
# run as a reader would: a real process from the directory the docs name, on a
# free port of 127.0.0.1 (``--port``, ``-b``, the port argument, or ``PORT``),
# driven over HTTP until one of its jobs has printed, then stopped with
# SIGTERM; nothing it started may outlive it.
DOCS = [os.path.join(ROOT, "README.md"),
        *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
EXAMPLE_FILES = sorted(glob.glob(os.path.join(EXAMPLES, "**", "*.py"), recursive=True))
IN_EXAMPLES = re.compile(
    r"^\s+(?:# or: )?((?:wsgi-bg|python|gunicorn|rq) [^#]*?)\s*(?:#.*)?$")
IN_DOCS = re.compile(r"^(?:\$ )?((?:wsgi-bg|python examples/)[^#]*?)\s*(?:#.*)?$")
#: Commands in running text (``...`` or `...`), of the kinds a reader runs.
INLINE = re.compile(
    r"``?((?:wsgi-bg|python examples/|python manage\.py|PORT=\d+ python) [^`]*)``?")
DOC_FILE = re.compile(r"^# (\w+\.py)\b")
#: Commands found in running text that are not meant to be run as they are.
NOT_COMMANDS = {
    "wsgi-bg serve": "the subcommand's name",
    "wsgi-bg serve --host 0.0.0.0 --authorize all": "a warning against it, no app",
    "wsgi-bg serve app:app --store URL --namespace NAME": "a template",
    "wsgi-bg serve module:app [--reload]": "a synopsis",
    "wsgi-bg demo [--host] [--port] [--delay SECONDS]": "a synopsis",
}


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as file:
        return file.readlines()


def documented_commands() -> dict[str, str]:
    """Every command found, and the file it was found in (relative to ROOT)."""
    found: dict[str, str] = {}
    for path in EXAMPLE_FILES:
        for line in read_lines(path):
            if match := IN_EXAMPLES.match(line):
                found.setdefault(match.group(1), os.path.relpath(path, ROOT))
            for inline in INLINE.findall(line):
                found.setdefault(inline, os.path.relpath(path, ROOT))
    for path in DOCS:
        fence = None
        for line in read_lines(path):
            if line.startswith("```"):
                fence = None if fence is not None else line[3:].strip()
            elif fence is None:
                for inline in INLINE.findall(line):
                    found.setdefault(inline, os.path.relpath(path, ROOT))
            elif fence not in ("text", "python") and (match := IN_DOCS.match(line)):
                found.setdefault(match.group(1), os.path.relpath(path, ROOT))
    return {command: where for command, where in found.items()
            if command not in NOT_COMMANDS}


def doc_files(doc: str) -> dict[str, str]:
    """The Python files a doc writes out (blocks that begin ``# name.py``)."""
    files, block, name = {}, None, None
    for line in read_lines(os.path.join(ROOT, doc)):
        if line.startswith("```"):
            if block is not None and name:
                files[name] = "".join(block)
            block = [] if block is None and line.strip() == "```python" else None
            name = None
        elif block is not None:
            if not block and (match := DOC_FILE.match(line)):
                name = match.group(1)
            block.append(line)
    return files


Starter = Callable[[requests.Session, str], requests.Response]


def post(path: str, **data: str) -> Starter:
    def start(session: requests.Session, base: str) -> requests.Response:
        return session.post(base + path, data=data, allow_redirects=False, timeout=10)
    return start


def django_post(session: requests.Session, base: str) -> requests.Response:
    page = session.get(base + "/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, page.text
    return session.post(base + "/reports/2026", allow_redirects=False, timeout=10,
                        data={"csrfmiddlewaretoken": token.group(1)})


@dataclasses.dataclass(frozen=True)
class Run:
    """How to run a documented command: from ``cwd`` (relative to ROOT, or
    the files ``doc`` writes out), on a port given by ``port`` (its words,
    ``{port}`` replaced; ``None``: the ``PORT`` environment variable), and
    ``start`` for a request that starts a job (``None``: ``GET /`` only).
    ``redis``: with a Redis of its own (``REDIS_URL``, and the documented
    URL in the command replaced by it); ``first``: documented commands to
    start before it."""
    cwd: str | None
    port: tuple[str, ...] | None
    start: Starter | None
    doc: str | None = None
    redis: bool = False
    first: tuple[str, ...] = ()
    refused: str | None = None  # documented to fail: what it must say


PORT_OPTION = ("--port", "{port}")
RQ_WORKER = ("rq worker -w wsgi_bg.rq_worker.Worker wsgi_bg"
             " -u redis://localhost:6379 -P examples")
DOCUMENTED_REDIS = "redis://localhost:6379"
RUNS = {
    "wsgi-bg serve djsite.wsgi:django_app":
        Run("examples/django_example", PORT_OPTION, django_post),
    "wsgi-bg serve djsite.wsgi:application":
        Run("examples/django_example", PORT_OPTION, None,
            refused="'djsite.wsgi:application' is already a BackgroundMiddleware"),
    "wsgi-bg demo": Run("", PORT_OPTION, post("/")),
    "wsgi-bg demo --delay 0.2": Run("", PORT_OPTION, post("/")),
    "gunicorn djsite.wsgi:application":
        Run("examples/django_example", ("-b", "127.0.0.1:{port}"), django_post),
    "python manage.py runserver":
        Run("examples/django_example", ("127.0.0.1:{port}", "--noreload"), None),
    "wsgi-bg serve flask_example:app --authorize local":
        Run("examples", PORT_OPTION, post("/reports/2026")),
    "python examples/flask_example.py": Run("", None, post("/reindex")),
    "python examples/progress_example.py": Run("", None, post("/count")),
    "python examples/webpy_example.py": Run("", None, post("/")),
    "PORT=8081 python examples/webpy_example.py": Run("", None, post("/")),
    "python examples/shell_example.py": Run("", None, post("/")),
    "python examples/dispatcher_example.py": Run("", None, post("/admin/export")),
    "python examples/rq_example.py":
        Run("", None, post("/", months="2"), redis=True, first=(RQ_WORKER,)),
    RQ_WORKER: Run("", None, None, redis=True),
    "wsgi-bg serve myapp:app --authorize local":
        Run(None, PORT_OPTION, post("/reindex"), doc="README.md"),
    "wsgi-bg serve app:site --authorize local":
        Run(None, PORT_OPTION, post("/", name="Ada"), doc="docs/getting-started.md"),
}


def test_every_documented_command_has_a_run():
    found = documented_commands()
    assert set(found) == set(RUNS), (
        f"commands without a run in RUNS: {sorted(set(found) - set(RUNS))};"
        f" runs of commands no longer documented: {sorted(set(RUNS) - set(found))}")


class Started:
    """A command's process, in a session of its own; :meth:`stop` ends it and
    checks that nothing it started is left."""

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], log: str):
        self.argv = argv
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def output(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as file:
            return file.read()

    def running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.argv} exited with {self.proc.returncode}:\n"
                                 f"{self.output()}")

    def listening(self, port: int) -> bool:
        self.running()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            code = None
        _, alive = psutil.wait_procs(family, timeout=10)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever it left, after all
        self.proc.wait()
        assert code is not None, f"{self.argv} did not stop on SIGTERM"
        assert not alive, f"{self.argv} left behind {[p.pid for p in alive]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Commands:
    """What one test started: commands, and a Redis for them; :meth:`close`
    stops the commands, the last started first, then the Redis."""

    def __init__(self) -> None:
        self.started: list[Started] = []
        self.redis_server = None

    def start(self, argv: list[str], cwd: str, env: dict[str, str],
              log: str) -> Started:
        self.started.append(Started(argv, cwd, env, log))
        return self.started[-1]

    def redis(self):
        from redis_server import RedisServer

        if self.redis_server is None:
            self.redis_server = RedisServer()
            self.redis_server.start()
        return self.redis_server

    def close(self) -> None:
        errors = []
        for command in reversed(self.started):
            try:
                command.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        if self.redis_server is not None:
            self.redis_server.stop()
        assert not errors, errors


@pytest.fixture
def commands():
    made = Commands()
    try:
        yield made
    finally:
        made.close()


def job_has_output(session: requests.Session, job_url: str) -> dict | None:
    base, job_id = job_url.rsplit("/", 1)
    data = session.get(f"{base}/api/jobs/{job_id}", timeout=10).json()
    assert data["state"] not in ("failed", "crashed", "cancelled"), data
    return data if data["output"] else None


def launch(commands: Commands, command: str, tmp_path, port: int) -> Started:
    """Start ``command`` as :data:`RUNS` says, on ``port``."""
    run = RUNS[command]
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("WSGI_BG_SECRET_KEY", None)
    if run.redis:
        env["WSGI_BG_SECRET_KEY"] = "documented-commands-secret-key-0123"
        env["REDIS_URL"] = commands.redis().url
        command = command.replace(DOCUMENTED_REDIS, commands.redis().url)
    words = shlex.split(command)
    while "=" in words[0]:  # VAR=value before the command, as a shell reads it
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    if run.doc is not None:
        for name, text in doc_files(run.doc).items():
            (tmp_path / name).write_text(text)
        cwd = str(tmp_path)
    else:
        cwd = os.path.join(ROOT, run.cwd or "")
    if run.port is None:
        env["PORT"] = str(port)
    else:
        words += [word.format(port=port) for word in run.port]
    log = tmp_path / f"{len(commands.started)}.log"
    return commands.start(words, cwd, env, str(log))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", sorted(RUNS))
def test_documented_command_runs_as_written(command, commands, tmp_path):
    run = RUNS[command]
    if "django" in (run.cwd or ""):
        pytest.importorskip("django")
    for first in run.first:
        launch(commands, first, tmp_path, free_port())
    port = free_port()
    process = launch(commands, command, tmp_path, port)
    if run.refused is not None:
        try:
            code = process.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{command} was not refused") from None
        assert (code, run.refused in process.output()) == (2, True), process.output()
        return
    if command == RQ_WORKER:
        client = commands.redis().client()

        def registered():
            process.running()
            return client.scard("rq:workers") > 0

        wait_for(registered, 30, message="the rq worker to register")
        return
    wait_for(lambda: process.listening(port), 30, interval=0.05,
             message=f"{command} to listen")
    base = f"http://127.0.0.1:{port}"
    session = requests.Session()
    front = session.get(base + "/", timeout=10)
    assert front.status_code in (200, 404), front.text
    if run.start is None:
        return
    res = run.start(session, base)
    assert res.status_code == 303, (res.status_code, res.text, process.output())
    job_url = urljoin(base + "/", res.headers["Location"])
    assert session.get(job_url, timeout=10).status_code == 200
    wait_for(lambda: job_has_output(session, job_url), 30, interval=0.1,
             message=f"a job started through {command} to print")
