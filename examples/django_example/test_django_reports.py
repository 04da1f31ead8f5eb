"""Tests of the example project, as its authors would write them: through
Django's own test client, with wsgi_bg's pytest plugin (installed with
wsgi_bg, nothing to configure).

Run them from examples/django_example/: ``pytest``.
"""
from unittest import mock

from django.test import Client, override_settings
from djreports import tasks
from djsite.wsgi import make_application
from werkzeug.test import Client as WSGIClient

from wsgi_bg.testing import job_context, start_job, wait_for_job


@override_settings(REPORT_STEP=0)
def test_report_job_through_the_django_test_client(wsgi_bg_middleware):
    # The project's own wrapping, shut down after the test, and the test fails
    # if a process is left behind.
    mw = wsgi_bg_middleware.manage(make_application(max_workers=1, cancel_grace=1.0))
    # Django's client calls Django, not the WSGI app: start_job serves the
    # request with mw, so that the view's @background call starts a job on it.
    job = start_job(Client(), "post", "/reports/2026", mw=mw)
    assert job.url == f"/_jobs/{job.id}"

    wait_for_job(job, timeout=30)  # fails with the job's error and output
    assert job.result == {"year": 2026, "pages": 48}
    assert job.progress == {"done": 12, "total": 12, "message": "month 12 of 12"}
    assert job.output.splitlines()[-1] == "2026-12: rendered"

    # The job's page is the middleware's: drive the WSGI app for it.
    page = WSGIClient(mw).get(job.url, headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "2026-12: rendered" in page.get_data(as_text=True)


def test_the_view_wants_a_post():
    assert Client().get("/reports/2026").status_code == 405


def test_report_code_alone_with_a_mock():
    # No middleware, no process: the job's own code, with a mock in force.
    with mock.patch.object(tasks.time, "sleep") as sleep, job_context() as job:
        assert tasks.build_report(2026, step=3) == {"year": 2026, "pages": 48}
    assert sleep.call_count == 12
    assert job.progress == {"done": 12, "total": 12, "message": "month 12 of 12"}
    assert job.output.startswith("2026-01: rendered\n")


def test_report_stops_when_cancelled():
    with job_context() as job:
        job.on_progress = lambda report: report["done"] == 3 and job.cancel()
        assert tasks.build_report(2026, step=0) is None
    assert job.output.endswith("cancelled before month 4\n")
