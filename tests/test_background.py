"""@background and current_job."""
from __future__ import annotations

import pytest
import webtest

import jobfuncs
from helpers import wait_for
from wsgi_bg import Job, JobState, background, current_job

# Also on the RQ runner (see conftest.py): these describe how jobs run.
pytestmark = pytest.mark.runner_contract

started_jobs: list[Job] = []


def view_app(environ, start_response):
    """A plain WSGI app whose view calls @background functions."""
    path = environ["PATH_INFO"]
    if path == "/add":
        job = jobfuncs.marked_add(2, 3)
    elif path == "/limited":
        job = jobfuncs.limited(30)
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    started_jobs.append(job)
    start_response("202 Accepted", [("Content-Type", "text/plain")])
    return [job.id.encode()]


@pytest.fixture
def client(make_mw):
    started_jobs.clear()
    mw = make_mw(view_app)
    return webtest.TestApp(mw, lint=True), mw


def test_called_in_a_request_returns_a_job(client):
    app, mw = client
    response = app.get("/add", status=202)
    (job,) = started_jobs
    assert isinstance(job, Job)
    assert response.text == job.id
    assert mw.get_job(job.id) == job
    assert job.name == "jobfuncs.marked_add"
    assert job.url == f"/_jobs/{job.id}"
    job.wait(timeout=20)
    assert job.state is JobState.SUCCEEDED
    assert job.result == 5
    assert job.output == "adding 2 3\n"


def test_timeout_of_a_background_function_called_in_a_request(client):
    app, _ = client
    app.get("/limited", status=202)
    (job,) = started_jobs
    job.wait(timeout=20)
    assert job.state is JobState.TIMED_OUT
    assert 1.0 <= job.ended_at - job.started_at < 2.0


def test_submitted_background_function_runs(mw):
    job = mw.submit(jobfuncs.marked_add, 4, 5).wait(timeout=20)
    assert job.result == 9
    assert job.output == "adding 4 5\n"


def test_called_inside_a_job_runs_inline(mw):
    job = mw.submit(jobfuncs.outer, 21).wait(timeout=20)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result == 42
    assert job.output == "outer before\ninner 21\nouter after 42\n"
    assert len(mw.jobs()) == 1  # no second job


def test_called_elsewhere_raises(mw):
    with pytest.raises(RuntimeError, match=r"mw\.submit\(marked_add, \.\.\.\)"):
        jobfuncs.marked_add(1, 2)
    assert mw.jobs() == []


def test_wrapped_is_the_plain_function():
    assert jobfuncs.marked_add.__wrapped__(1, 2) == 3
    assert jobfuncs.marked_add.__name__ == "marked_add"
    assert jobfuncs.limited.__wrapped__.__name__ == "limited"


def test_background_rejects_what_cannot_run():
    with pytest.raises(TypeError, match="module level"):
        background(lambda: 1)

    def nested():
        pass

    with pytest.raises(TypeError, match="module level"):
        background(nested)
    with pytest.raises(ValueError, match="timeout"):
        background(timeout=-1)


def test_current_job_outside_a_job_raises():
    with pytest.raises(RuntimeError, match="only available inside a running job"):
        _ = current_job.id
    with pytest.raises(RuntimeError, match="only available inside a running job"):
        _ = current_job.cancel_requested
    with pytest.raises(RuntimeError, match="only available inside a running job"):
        current_job.progress(1, 2)


def test_current_job_inside_a_job(mw, tmp_path):
    flag = tmp_path / "go"
    job = mw.submit(jobfuncs.report_progress, str(flag))
    progress = wait_for(lambda: job.progress, 20, message="a progress report")
    assert progress == {"done": 3, "total": 10, "message": "three of ten"}
    wait_for(lambda: "id " in job.output, 20, message="the id line")
    assert job.state is JobState.RUNNING
    jobfuncs.touch(flag)
    job.wait(timeout=20)
    assert job.output == f"id {job.id}\n"
    assert job.result == job.id
    assert job.to_dict()["progress"] == progress
