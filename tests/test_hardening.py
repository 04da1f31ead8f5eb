"""Issue 10, at the WSGI level: whole bodies or 413, allow_local behind a
proxy and for foreign hosts, an authorize that raises, bounded progress."""
from __future__ import annotations

import io
import logging

import pytest
import webtest
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import EnvironBuilder

import appfuncs
import hardenfuncs
from wsgi_bg import JobState, allow_local, auth
from wsgi_bg.auth import allow_local_hosts
from wsgi_bg.middleware import read_body


def call(app, environ):
    """Call a WSGI app; ``(status code, body)``."""
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    return int(status[0].split()[0]), body


def chunked_environ(body: bytes, *, terminated: bool = True) -> dict:
    """A POST as servers pass on a chunked body: no Content-Length."""
    environ = EnvironBuilder(path="/upload", method="POST").get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input"] = io.BytesIO(body)
    environ["wsgi.input_terminated"] = terminated
    return environ


# -- bodies ---------------------------------------------------------------------
@pytest.mark.parametrize("size", [11, 10 * 65536])
def test_chunked_body_over_the_limit_is_413_and_starts_no_job(make_mw, size):
    mw = make_mw(appfuncs.echo_body, max_body_bytes=10)
    code, body = call(mw, chunked_environ(b"x" * size))
    assert code == 413 and b"max_body_bytes=10" in body
    assert mw.jobs() == []


def test_chunked_body_within_the_limit_reaches_the_job_whole(make_mw):
    mw = make_mw(appfuncs.echo_body, max_body_bytes=200_000)
    code, _ = call(mw, chunked_environ(b"y" * 150_000))
    assert code == 303
    [job] = mw.jobs()
    assert job.wait(timeout=20).output == "y" * 150_000


def test_body_never_cut():
    with pytest.raises(Exception, match="max_body_bytes=4") as info:
        read_body(chunked_environ(b"12345"), 4)
    assert info.value.code == 413
    assert read_body(chunked_environ(b"1234"), 4) == b"1234"
    # Unterminated chunked input cannot be read whole: 411, never empty.
    with pytest.raises(Exception, match="Content-Length") as info:
        read_body(chunked_environ(b"1234", terminated=False), 4)
    assert info.value.code == 411
    short = EnvironBuilder(method="POST", data=b"abc").get_environ()
    short["CONTENT_LENGTH"] = "10"
    with pytest.raises(Exception, match="3 of its 10") as info:
        read_body(short, 100)
    assert info.value.code == 400


# -- allow_local --------------------------------------------------------------------
LOCAL = {"REMOTE_ADDR": "127.0.0.1"}


@pytest.fixture
def fresh_warnings():
    auth._warned.clear()
    yield
    auth._warned.clear()


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
def test_allow_local_refuses_forwarded_requests_without_proxyfix(
        make_mw, caplog, fresh_warnings, header):
    client = webtest.TestApp(make_mw(authorize=allow_local))
    with caplog.at_level(logging.WARNING, logger="wsgi_bg"):
        for _ in range(3):
            client.get("/_jobs/", headers={header: "203.0.113.9"},
                       extra_environ=LOCAL, status=403)
    warnings = [r.getMessage() for r in caplog.records if "ProxyFix" in r.getMessage()]
    assert len(warnings) == 1 and header in warnings[0]
    client.get("/_jobs/", extra_environ=LOCAL, status=200)


def test_allow_local_behind_proxyfix_judges_the_real_client(make_mw):
    app = ProxyFix(make_mw(authorize=allow_local), x_for=1)
    client = webtest.TestApp(app)
    client.get("/_jobs/", headers={"X-Forwarded-For": "203.0.113.9"},
               extra_environ=LOCAL, status=403)
    client.get("/_jobs/", headers={"X-Forwarded-For": "127.0.0.1"},
               extra_environ=LOCAL, status=200)


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8080",
                                  "127.0.0.1.attacker.example"])
def test_allow_local_refuses_foreign_hosts(make_mw, fresh_warnings, host):
    client = webtest.TestApp(make_mw(authorize=allow_local))
    client.get("/_jobs/", headers={"Host": host}, extra_environ=LOCAL, status=403)


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "127.0.0.1:5000",
                                  "127.8.9.1", "[::1]:8080", "app.localhost"])
def test_allow_local_accepts_local_hosts(make_mw, host):
    client = webtest.TestApp(make_mw(authorize=allow_local))
    client.get("/_jobs/", headers={"Host": host}, extra_environ=LOCAL, status=200)


def test_allow_local_hosts_names_more(make_mw, fresh_warnings):
    client = webtest.TestApp(make_mw(authorize=allow_local_hosts("devbox.lan")))
    client.get("/_jobs/", headers={"Host": "devbox.lan:8080"}, extra_environ=LOCAL,
               status=200)
    client.get("/_jobs/", headers={"Host": "other.lan"}, extra_environ=LOCAL,
               status=403)
    with pytest.raises(TypeError, match="non-empty strings"):
        allow_local_hosts("")


# -- authorize that raises -------------------------------------------------------------
def broken_authorize(environ, action, job):
    return environ["myapp.user"].is_admin  # KeyError: a LookupError


def test_authorize_that_raises_is_a_logged_500(make_mw, caplog):
    mw = make_mw(authorize=broken_authorize)
    job = mw.submit(hardenfuncs.infinite_progress).wait(timeout=20)
    client = webtest.TestApp(mw)
    with caplog.at_level(logging.ERROR, logger="wsgi_bg"):
        page = client.get(f"/_jobs/{job.id}", status=500)
        assert "broken_authorize raised KeyError" in page.text
        api = client.get(f"/_jobs/api/jobs/{job.id}", status=500).json
        assert "broken_authorize" in api["message"]
        client.get("/_jobs/api/jobs", status=500)
    logged = [r for r in caplog.records if "broken_authorize" in r.getMessage()]
    assert len(logged) == 3 and all(r.exc_info for r in logged)


# -- bounded progress ------------------------------------------------------------------
@pytest.mark.parametrize("fn", [hardenfuncs.huge_progress,
                                hardenfuncs.infinite_progress,
                                hardenfuncs.tqdm_like_huge])
def test_absurd_progress_breaks_no_page(make_mw, fn):
    mw = make_mw(authorize=auth.allow_all)
    job = mw.submit(fn).wait(timeout=30)
    assert job.state is JobState.SUCCEEDED, job.error
    client = webtest.TestApp(mw)
    client.get(f"/_jobs/{job.id}", status=200)
    data = client.get(f"/_jobs/api/jobs/{job.id}", status=200).json
    client.get("/_jobs/", status=200)
    client.get("/_jobs/api/jobs", status=200)
    if job.progress is not None:
        assert len(str(job.progress["done"])) < 400
        assert len(job.progress["message"] or "") <= 1000
        assert data["progress"] is not None


def test_nan_progress_is_refused_in_the_job(make_mw):
    job = make_mw().submit(hardenfuncs.nan_progress).wait(timeout=20)
    assert job.state is JobState.FAILED
    assert "done must be a number, not NaN" in job.error
