"""Issue 18: a job's pages never show a request's secrets, and what a job or
a client sends never sets the server's cost (arguments described without
their own code, a bound on a call's size, paging, coloured output)."""
from __future__ import annotations

import time

import pytest

import trustfuncs

pytestmark = pytest.mark.runner_contract


# -- describing arguments never runs their code ------------------------------------
def test_an_argument_whose_repr_sleeps_or_raises_never_delays_the_submit(mw):
    started = time.monotonic()
    job = mw.submit(trustfuncs.takes, trustfuncs.SlowRepr(), trustfuncs.FailingRepr(),
                    {trustfuncs.SlowRepr(): [trustfuncs.SlowRepr()]},
                    {trustfuncs.SlowRepr(), trustfuncs.SlowRepr()},
                    key=trustfuncs.SlowRepr())
    assert time.monotonic() - started < 5  # (it would take minutes)
    assert job.to_dict()["args"] == (
        "(<SlowRepr object>, <FailingRepr object>, {<SlowRepr object>:"
        " [<SlowRepr object>]}, {<SlowRepr object>, <SlowRepr object>},"
        " key=<SlowRepr object>)")
    assert job.wait(timeout=30).result == 5


# -- a marked app's page never shows the request's secrets -------------------------
SECRETS = ("SECRET123", "TOPSECRET", "PROXYPASS", "APIKEY77", "QTOKEN99", "hunter2",
           "NEWSESSION42")


def post_login(client, path="/login?year=2026&token=QTOKEN99&name=ann"):
    return client.post(
        path, "user=ann&password=hunter2",
        headers={"Cookie": "session=SECRET123", "Authorization": "Bearer TOPSECRET",
                 "Proxy-Authorization": "Basic PROXYPASS", "X-Api-Key": "APIKEY77",
                 "Content-Type": "application/x-www-form-urlencoded",
                 "User-Agent": "curl/8.4"},
        status=303)


def every_answer(client, job):
    """Every answer of the status app about ``job``: its page, its JSON (from
    the start and polled), its raw output, its event stream, the list."""
    api = f"/_jobs/api/jobs/{job.id}"
    return {
        "page": client.get(f"/_jobs/{job.id}").text,
        "json": client.get(api).text,
        "json since": client.get(api + "?since=3").text,
        "output": client.get(api + "/output.txt").text,
        "events": client.get(api + "/events").text,
        "list": client.get("/_jobs/?q=login").text,
        "list json": client.get("/_jobs/api/jobs").text,
    }


def test_a_marked_apps_pages_show_the_request_line_and_no_secret(make_mw):
    import webtest

    from wsgi_bg import allow_all

    mw = make_mw(trustfuncs.login, authorize=allow_all)
    client = webtest.TestApp(mw)
    post_login(client)
    [job] = mw.jobs()
    assert job.wait(timeout=30).state == "succeeded"
    answers = every_answer(client, job)
    for where, text in answers.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} in the {where}"
    args = job.to_dict()["args"]
    assert args == (
        "POST /login?year=2026&token=[hidden]&name=ann · body: 25 bytes ·"
        " Content-Type: application/x-www-form-urlencoded, Host: localhost:80,"
        " User-Agent: curl/8.4 · values not shown: Authorization, Cookie,"
        " Proxy-Authorization, X-Api-Key")
    assert "token=[hidden]&amp;name=ann · body: 25 bytes" in answers["page"]
    # The result shows the response's headers, without the cookie it set;
    # job.result, read by the server's own code, keeps it.
    assert "('Set-Cookie', '[hidden]')" in job.to_dict()["result"]
    assert job.result["headers"][1] == ("Set-Cookie", "session=NEWSESSION42; HttpOnly")


def test_show_args_false_hides_a_marked_apps_request(make_mw):
    import webtest

    from wsgi_bg import allow_all

    mw = make_mw(trustfuncs.login_hidden, authorize=allow_all)
    client = webtest.TestApp(mw)
    post_login(client, "/hidden?year=2026")
    [job] = mw.jobs()
    assert job.wait(timeout=30).state == "succeeded"
    assert job.to_dict()["args"] is None
    answers = every_answer(client, job)
    assert "hidden (<code>show_args=False</code>)" in answers["page"]
    for where, text in answers.items():
        assert "year=2026" not in text, where
        for secret in SECRETS:
            assert secret not in text, f"{secret} in the {where}"
