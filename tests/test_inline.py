"""runner="inline": jobs run at once in the calling thread, for tests."""
from __future__ import annotations

import io
import logging
import sys
import threading
from unittest import mock

import flask
import pytest
import webtest

import inlinefuncs
from wsgi_bg import BackgroundMiddleware, JobState, current_job
from wsgi_bg.testing import live_children, start_job, wait_for_job


@pytest.fixture
def mw(make_mw):
    """An inline middleware, with each store (the conftest's store_options)."""
    return make_mw(inlinefuncs.job_view, runner="inline")


# -- through views ----------------------------------------------------------------
def test_a_view_gets_its_job_done_and_its_303(mw):
    client = webtest.TestApp(mw, lint=True)
    res = client.post("/steps/3", status=303)
    job = start_job(client, "post", "/steps/3")
    assert res.location.endswith(f"{mw.prefix}/{res.location.rsplit('/', 1)[1]}")
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result == 6
    assert job.output == "step 1\nstep 2\nstep 3\n"
    assert job.progress == {"done": 3, "total": 3, "message": "step 3"}
    assert job.created_at <= job.started_at <= job.ended_at
    page = client.get(job.url)  # the status page shows the job
    assert "succeeded" in page.text and "step 3" in page.text
    assert "inlinefuncs.steps" in page.text
    api = client.get(f"{mw.prefix}/api/jobs/{job.id}").json
    assert api["state"] == "succeeded" and api["result"] == "6"


def test_flask_test_client_and_monkeypatch(make_mw, monkeypatch):
    app = flask.Flask(__name__)

    @app.post("/setting")
    def setting():
        job = inlinefuncs.read_setting()
        return flask.redirect(job.url, code=303)

    monkeypatch.setattr(app, "wsgi_app",
                        make_mw(app.wsgi_app, runner="inline"))
    monkeypatch.setattr(inlinefuncs, "SETTING", "patched by the test")
    job = start_job(app.test_client(), "post", "/setting")
    assert wait_for_job(job, 1).result == "patched by the test"
    assert job.output == "setting is patched by the test\n"


def test_a_mock_is_seen_inside_the_job(mw):
    with mock.patch.object(inlinefuncs, "fetch", return_value=10) as fetch:
        job = mw.submit(inlinefuncs.steps, 4)
    assert job.result == 40
    assert fetch.call_args_list == [mock.call(i) for i in range(1, 5)]


def test_a_marked_app_answers_303_and_its_body_is_the_output(make_mw, monkeypatch):
    monkeypatch.setattr(inlinefuncs, "SETTING", "patched")
    mw = make_mw(inlinefuncs.report_app, runner="inline")
    job = start_job(webtest.TestApp(mw), "get", "/monthly")
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.output == "report for /monthly patched\nbody line\n"
    assert job.result["status"] == "200 OK"


# -- current_job, cancel, errors -----------------------------------------------------
def test_current_job_is_the_inline_job(mw):
    job = mw.submit(inlinefuncs.outputs)
    assert job.result == job.id
    with pytest.raises(RuntimeError, match="only available inside a running job"):
        _ = current_job.id  # the caller is in no job once it is over


def test_cancel_requested_from_inside_is_seen_at_once(mw, monkeypatch):
    def fetch(step):
        if step == 2:  # e.g. a user pressing Cancel while step 2 runs
            assert mw.get_job(current_job.id).cancel() is True
        return step

    monkeypatch.setattr(inlinefuncs, "fetch", fetch)
    job = mw.submit(inlinefuncs.steps, 5)
    assert job.state is JobState.CANCELLED
    assert job.output == "step 1\nstep 2\nstopping at 3\n"
    assert job.progress["done"] == 2
    assert job.to_dict()["cancelled_how"] == "stopped"


def test_a_failure_keeps_the_traceback_from_the_job_code(mw):
    job = mw.submit(inlinefuncs.marked_crash, 7)
    assert job.state is JobState.FAILED
    assert job.error.startswith("Traceback (most recent call last):\n")
    first_frame = job.error.splitlines()[1]
    assert "inlinefuncs.py" in first_frame and "in marked_crash" in first_frame
    assert "wsgi_bg" not in job.error.replace("inlinefuncs", "")
    assert job.error.rstrip().endswith("ValueError: bad value 7")
    with pytest.raises(Exception, match="has no result"):
        _ = job.result


def test_an_unpicklable_result_fails_as_in_a_worker(mw):
    job = mw.submit(threading.Lock)
    assert job.state is JobState.FAILED
    assert "cannot be pickled" in job.error


def test_a_call_that_could_not_reach_a_worker_is_refused(mw):
    with pytest.raises(TypeError, match="lambda"):
        mw.submit(lambda: 1)
    assert mw.jobs() == []


# -- output --------------------------------------------------------------------------
def test_print_stderr_and_logging_are_the_output_not_os_system(mw):
    job = mw.submit(inlinefuncs.outputs)
    assert job.state is JobState.SUCCEEDED, job.error
    # A handler bound to sys.stderr at import counts; a child process's
    # output does not (no fd-level capture): it goes where the caller's goes.
    assert job.output == "1 print\n2 stderr\n3 logging\n4 write\n"
    # The streams and the handler's stream are the caller's again.
    assert "Proxy" not in type(sys.stdout).__name__
    assert "Proxy" not in type(sys.stderr).__name__
    handler = inlinefuncs.early_logger.handlers[0]
    assert "Proxy" not in type(handler.stream).__name__


def test_other_threads_output_is_not_the_jobs(mw, capsys):
    inlinefuncs.STARTED.clear()
    inlinefuncs.GO.clear()
    jobs = []
    runner = threading.Thread(
        target=lambda: jobs.append(mw.submit(inlinefuncs.wait_for_test)))
    runner.start()
    try:
        assert inlinefuncs.STARTED.wait(10)
        print("a line of the test's thread")  # while the job runs
        logging.getLogger("inlinefuncs.early").info("a log line of the test")
        with pytest.raises(RuntimeError):
            _ = current_job.id  # this thread is in no job
    finally:
        inlinefuncs.GO.set()
        runner.join(10)
    (job,) = jobs
    assert job.output == "job line\njob end\n"  # neither line of the test's
    out, _ = capsys.readouterr()
    assert "a line of the test's thread" in out and "job line" not in out


def test_a_job_that_replaces_sys_stdout_keeps_it_its_own(mw):
    buffer = io.StringIO()
    with mock.patch.object(sys, "stdout", buffer):
        job = mw.submit(inlinefuncs.steps, 1)
        assert sys.stdout is buffer  # put back as found
    assert job.output == "step 1\n" and buffer.getvalue() == ""


# -- nesting ---------------------------------------------------------------------------
def test_background_inside_an_inline_job_runs_in_it(mw):
    job = mw.submit(inlinefuncs.outer_marked, 4)
    assert job.result == [8, job.id]
    assert job.output == "outer 4\ninner 4\n"
    assert len(mw.jobs()) == 1


def test_a_job_submitted_inside_an_inline_job_runs_inline_as_its_own(mw, monkeypatch):
    monkeypatch.setattr(inlinefuncs, "MW", mw)
    outer = mw.submit(inlinefuncs.submits_nested, 5)
    nested_id, nested_state, nested_result, outer_id = outer.result
    assert (nested_state, nested_result, outer_id) == ("succeeded", 10, outer.id)
    assert outer.output == "outer before\nouter after\n"
    assert mw.get_job(nested_id).output == "inner 5\n"


# -- what starts ----------------------------------------------------------------------
def test_nothing_starts_with_the_default_store(wsgi_bg_middleware):
    before = live_children()
    threads = threading.active_count()
    mw = wsgi_bg_middleware(inlinefuncs.job_view, runner="inline")
    assert mw.submit(inlinefuncs.steps, 2).result == 3
    assert live_children() == before  # no manager, no pool, no job process
    assert threading.active_count() == threads
    mw.shutdown()
    assert mw.jobs()[0].result == 3  # readable after shutdown


def test_a_bad_runner_names_the_choices():
    with pytest.raises(ValueError, match=r"runner must be 'pool' \(the default\),"
                       r" 'inline'.* got 'eager'"):
        BackgroundMiddleware(inlinefuncs.job_view, runner="eager")
