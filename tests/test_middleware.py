"""BackgroundMiddleware as WSGI: passthrough, marked apps, mounting, overload."""
from __future__ import annotations

import contextlib
import io
import logging
import sys
import types

import pytest
import webtest
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import appfuncs
from helpers import max_batches, wait_for
from wsgi_bg import BackgroundMiddleware, JobState, backgrounder, middleware
from wsgi_bg.terminal import render_terminal


def _job_of(mw, response):
    return mw.get_job(response.headers["Location"].rsplit("/", 1)[1])


def raw_app(environ, start_response):
    start_response("207 Odd", [("X-A", "1"), ("X-A", "2"), ("Content-Type", "x/y")])
    return [b"\x00\xffbody", b"", b"tail"]


def test_passthrough_is_byte_for_byte():
    # Nothing is started for requests that start no job.
    mw = BackgroundMiddleware(raw_app)
    bare = webtest.TestApp(raw_app).get("/a/b?c=d", status=207)
    wrapped = webtest.TestApp(mw).get("/a/b?c=d", status=207)
    assert wrapped.status == bare.status
    assert wrapped.headerlist == bare.headerlist
    assert wrapped.body == bare.body == b"\x00\xffbodytail"
    assert not mw.engine.started


def test_passthrough_near_prefix_is_not_intercepted():
    mw = BackgroundMiddleware(appfuncs.plain_site)
    app = webtest.TestApp(mw)
    assert app.get("/_jobsX").text == "site"
    assert app.get("/x/_jobs").text == "site"


@pytest.mark.parametrize("prefix", ["", "/", "//", "/a//b", "jobs", None])
def test_bad_prefix_is_refused(prefix):
    with pytest.raises(ValueError, match="prefix must be a path"):
        BackgroundMiddleware(raw_app, prefix=prefix)


def test_marked_app_redirects_to_its_job(make_mw):
    mw = make_mw(appfuncs.report)
    response = webtest.TestApp(mw).get("/x?y=1", status=303)
    assert response.headers["Location"].startswith("/_jobs/")
    assert response.headers["Cache-Control"] == "no-store"
    job = _job_of(mw, response)
    job.wait(timeout=20)
    assert job.state is JobState.SUCCEEDED
    assert job.output == "Started  /x y=1\nbody: b''\n0: line\n1: line\n2: line\ndone\n"
    assert job.result == {"status": "200 OK",
                          "headers": [("Content-Type", "text/plain")]}
    assert job.name == "GET /x"


def test_marked_app_json_client_gets_202(make_mw):
    mw = make_mw(appfuncs.echo_body)
    response = webtest.TestApp(mw).post(
        "/upload", b"payload-bytes", headers={"Accept": "application/json"},
        content_type="application/octet-stream", status=202,
    )
    data = response.json
    assert set(data) == {"id", "url", "api_url"}
    assert data["url"] == f"/_jobs/{data['id']}" == response.headers["Location"]
    assert data["api_url"] == f"/_jobs/api/jobs/{data['id']}"
    job = mw.get_job(data["id"])
    assert job.wait(timeout=20).output == "payload-bytes"


def test_body_over_the_limit_is_413_and_starts_no_job(make_mw):
    mw = make_mw(appfuncs.echo_body, max_body_bytes=10)
    app = webtest.TestApp(mw)
    app.post("/upload", b"x" * 11, content_type="text/plain", status=413)
    assert mw.jobs() == []
    app.post("/upload", b"x" * 10, content_type="text/plain", status=303)
    assert len(mw.jobs()) == 1


def test_failing_marked_apps_fail_their_job(make_mw):
    mw = make_mw(DispatcherMiddleware(appfuncs.report, {"/raises": appfuncs.raises}))
    app = webtest.TestApp(mw)
    five_hundred = _job_of(mw, app.get("/fail", status=303)).wait(timeout=20)
    assert five_hundred.state is JobState.FAILED
    assert "the app answered 500 Internal Server Error" in five_hundred.error
    assert five_hundred.output == "failed\n"
    raised = _job_of(mw, app.get("/raises", status=303)).wait(timeout=20)
    assert raised.state is JobState.FAILED
    assert "KeyError: 'no such report'" in raised.error


def test_marked_app_under_dispatcher_sees_its_mount(make_mw):
    site = DispatcherMiddleware(appfuncs.plain_site, {"/admin": appfuncs.report})
    mw = make_mw(site)
    app = webtest.TestApp(mw)
    assert app.get("/other").text == "site"
    response = app.get("/admin/run?q=2", status=303)
    assert response.headers["Location"].startswith("/_jobs/")
    job = _job_of(mw, response).wait(timeout=20)
    assert job.output.startswith("Started /admin /run q=2\n")
    assert job.name == "GET /admin/run"


def test_middleware_mounted_under_admin_links_carry_the_mount(make_mw):
    mw = make_mw(appfuncs.report)
    outer = DispatcherMiddleware(appfuncs.plain_site, {"/admin": mw})
    response = webtest.TestApp(outer).get("/admin/go", status=303)
    location = response.headers["Location"]
    assert location.startswith("/admin/_jobs/")
    job = _job_of(mw, response)
    assert job.url == location
    assert job.wait(timeout=20).output.startswith("Started /admin /go")


def test_status_url_points_links_elsewhere(make_mw):
    mw = make_mw(appfuncs.report, status_url="/admin/jobs")
    response = webtest.TestApp(mw).get("/", status=303)
    assert response.headers["Location"].startswith("/admin/jobs/")


def test_marked_app_by_import_path(make_mw):
    mw = make_mw(appfuncs.marked_site)
    job = _job_of(mw, webtest.TestApp(mw).get("/", status=303)).wait(timeout=20)
    assert job.state is JobState.SUCCEEDED
    assert job.output == "site"


def test_unresolvable_import_path_fails_at_marking_time():
    with pytest.raises(ImportError, match="no_such_module_xyz"):
        backgrounder("no_such_module_xyz:app")
    with pytest.raises(ImportError, match="cannot import"):
        backgrounder("appfuncs:no_such_attribute")


def test_backgrounder_refuses_what_workers_cannot_import():
    def nested(environ, start_response):
        return []

    with pytest.raises(TypeError, match="module level"):
        backgrounder(nested)
    with pytest.raises(TypeError, match="import path"):
        backgrounder(DispatcherMiddleware(raw_app))


def test_marked_app_without_middleware_answers_500(caplog):
    with caplog.at_level(logging.ERROR, logger="wsgi_bg"):
        webtest.TestApp(appfuncs.report).get("/", status=500)
    assert "no BackgroundMiddleware is above it" in caplog.text


def test_queue_full_answers_503_with_retry_after(make_mw, tmp_path):
    import jobfuncs

    mw = make_mw(appfuncs.report, max_workers=1, max_queued=1)
    gate = tmp_path / "gate"
    blocker = mw.submit(jobfuncs.wait_file, str(gate))
    wait_for(lambda: blocker.state is JobState.RUNNING, message="blocker running")
    mw.submit(jobfuncs.add, 1, 2)  # the one job allowed to wait
    response = webtest.TestApp(mw).get("/", status=503)
    assert response.headers["Retry-After"]
    assert "max_queued" in response.text
    assert len(mw.jobs()) == 2
    gate.touch()


def test_background_function_called_in_a_view_submits(make_mw):
    def view(environ, start_response):
        job = appfuncs.longrunning(2)
        start_response("302 Found", [("Location", job.url)])
        return [b""]

    mw = make_mw(view)
    response = webtest.TestApp(mw).get("/", status=302)
    job = mw.get_job(response.headers["Location"].rsplit("/", 1)[1])
    assert job.wait(timeout=20).output == "0: line\n1: line\n"


def test_tqdm_bar_becomes_progress_and_redraws_collapse(mw):
    written = io.StringIO()
    with contextlib.redirect_stderr(written):
        appfuncs.tqdm_job(3000)
    assert written.getvalue().count("Crunching") > 3000
    job = mw.submit(appfuncs.tqdm_job, 3000).wait(timeout=30)
    assert job.state is JobState.SUCCEEDED
    assert job.progress == {"done": 3000, "total": 3000, "message": "Crunching"}
    # A batch keeps only the latest state of the line: at most one per batch
    # (within the 30 s waited, at most ~600 batches: far fewer than written).
    copies = job.output.count("Crunching")
    assert 1 <= copies <= max_batches(job, len(written.getvalue())), copies
    assert "Crunching: 100%" in render_terminal(job.output).splitlines()[-1]


def test_queue_full_in_a_view_answers_503(make_mw, tmp_path):
    import jobfuncs

    def view(environ, start_response):
        appfuncs.longrunning(1)
        start_response("200 OK", [])
        return [b""]

    mw = make_mw(view, max_workers=1, max_queued=1)
    gate = tmp_path / "gate"
    blocker = mw.submit(jobfuncs.wait_file, str(gate))
    wait_for(lambda: blocker.state is JobState.RUNNING, message="blocker running")
    app = webtest.TestApp(mw)
    app.get("/", status=200)  # queued: the one place left
    response = app.get("/", status=503)
    assert response.headers["Retry-After"] == "5"
    gate.touch()


def test_flask_view_starts_a_job_and_redirects_to_it(make_mw, tmp_path):
    import jobfuncs

    mw = make_mw(appfuncs.make_flask_app().wsgi_app, max_workers=1, max_queued=1)
    app = webtest.TestApp(mw)
    response = app.post("/count/3", status=303)
    job = _job_of(mw, response)
    assert response.headers["Location"] == job.url
    assert job.wait(timeout=20).output == "0: line\n1: line\n2: line\n"
    # Flask renders QueueFull, a werkzeug HTTPException, as 503 by itself.
    gate = tmp_path / "gate"
    blocker = mw.submit(jobfuncs.wait_file, str(gate))
    wait_for(lambda: blocker.state is JobState.RUNNING, message="blocker running")
    app.post("/count/1", status=303)
    assert app.post("/count/1", status=503).headers["Retry-After"] == "5"
    gate.touch()


@pytest.mark.parametrize(("options", "warned"), [
    pytest.param({"die-on-term": True}, True, id="die-on-term"),
    pytest.param({"die-on-term": True, "hook-master-start":
                  b"unix_signal:15 gracefully_kill_them_all"}, False, id="graceful"),
    pytest.param({"hook-master-start": [b"unix_signal:15 gracefully_kill_them_all"]},
                 False, id="graceful-only"),
])
def test_uwsgi_die_on_term_is_warned_of(monkeypatch, caplog, options, warned):
    # What uWSGI's embedded module shows the app: its options.
    monkeypatch.setitem(sys.modules, "uwsgi", types.SimpleNamespace(opt=options))
    monkeypatch.setattr(middleware, "_uwsgi_warned", False)
    with caplog.at_level(logging.WARNING, logger="wsgi_bg"):
        BackgroundMiddleware(raw_app).shutdown()
    said = [r.getMessage() for r in caplog.records if "--die-on-term" in r.getMessage()]
    assert bool(said) is warned, said
    if warned:
        assert "unix_signal:15 gracefully_kill_them_all" in said[0]


@pytest.mark.parametrize(("has_threads", "refused"), [
    pytest.param(0, True, id="threads-off"),
    pytest.param(1, False, id="threads-on"),
])
def test_uwsgi_without_threads_is_refused(monkeypatch, has_threads, refused):
    # uWSGI before 2.0.31 runs Python threads only with --enable-threads (or
    # --threads): without them a job waits for the next request to its worker.
    monkeypatch.setitem(sys.modules, "uwsgi",
                        types.SimpleNamespace(opt={}, has_threads=has_threads))
    if refused:
        with pytest.raises(RuntimeError, match="--enable-threads"):
            BackgroundMiddleware(raw_app)
    else:
        BackgroundMiddleware(raw_app).shutdown()


def test_a_middleware_around_a_middleware_is_refused():
    inner = BackgroundMiddleware(appfuncs.plain_site)  # starts nothing
    with pytest.raises(TypeError, match=r"already a BackgroundMiddleware.*\.app"):
        BackgroundMiddleware(inner)


def test_a_middleware_mounted_inside_another_runs_its_own_jobs(make_mw):
    """Nested at different mounts is legitimate: the innermost middleware a
    request passes runs the jobs it starts, and serves their pages."""
    inner = make_mw(appfuncs.report)
    outer = make_mw(DispatcherMiddleware(appfuncs.plain_site, {"/admin": inner}))
    client = webtest.TestApp(outer)
    assert client.get("/").text == "site"
    res = client.get("/admin/run", status=303)
    job_url = res.location.removeprefix("http://localhost")
    assert job_url.startswith("/admin/_jobs/")
    job = inner.get_job(job_url.rsplit("/", 1)[1])
    job.wait(timeout=30)
    assert job.state is JobState.SUCCEEDED, job.error
    assert "Started /admin /run" in client.get(job_url).text
