"""Every example in examples/ driven through WebTest, as a user would run it.

Each test builds the example's middleware (through the ``make_mw`` fixture or
the example's own factory), always shuts it down, and checks that no process
is left behind. Jobs are awaited by polling the JSON API (or ``job.wait``)
with a deadline, never by sleeping.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys

import pytest
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
