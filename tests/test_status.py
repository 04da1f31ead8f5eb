"""The status pages: routes, live events, security by default, a real server."""
import html
import http.client
import json
import pickle
import re
import threading
import time
import warnings
from contextlib import contextmanager

import markupsafe
import pytest
import webtest
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import make_server

import statusfuncs
from helpers import wait_for
from wsgi_bg.auth import allow_all, allow_local
from wsgi_bg.jobs import TERMINAL_STATES, Job, new_job_id
from wsgi_bg.stores import Ending

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none';"
        " base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# An inline script, a style attribute, an event handler or a javascript: URL.
INLINE = re.compile(r"<script(?![^>]*\bsrc=)|\sstyle=|\son[a-z]+=|javascript:", re.I)


def hello_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from the app"]


# -- helpers --------------------------------------------------------------------

def shown_output(page):
    """The text of a job page's output lines, as a reader sees it."""
    lines = re.findall(r'<div class="line[^"]*" id="L\d+">.*?<span class="text">'
                       r"(.*?)</span></div>", page)
    return "\n".join(html.unescape(re.sub(r"<[^>]+>", "", line)) for line in lines)


def parse_sse(text):
    """Events as a browser's EventSource would dispatch them (HTML spec 9.2.6):
    lines end at CRLF, LF or CR; a blank line dispatches; ":" starts a comment."""
    events, comments = [], []
    event, data, last_id = "", [], None
    for line in re.split(r"\r\n|\r|\n", text):
        if line == "":
            if data:
                events.append({"event": event or "message", "data": "\n".join(data),
                               "id": last_id})
            event, data = "", []
        elif line.startswith(":"):
            comments.append(line[1:].strip())
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                last_id = value
    return events, comments


def fake_job(mw, *, state="running", output="", progress=None, name="tasks.fake",
             error=None, result=None):
    """A job written straight into the middleware's store, which nothing has
    started yet: no process runs, the test sets every state itself."""
    assert not mw.engine.started, "fake jobs live in the store used before a start"
    store = mw.engine.store
    job_id = new_job_id()
    record = {
        "id": job_id, "name": name, "created_at": time.time(), "started_at": None,
        "ended_at": None, "result": None, "error": None, "progress": None,
        "timeout": None, "cancel_requested": False, "cancel_grace": None,
        "url": None, "pid": None,
    }
    assert store.create(record, 1000)
    if state != "queued":
        assert store.start(job_id, 0)
    if output or progress:
        store.relay(job_id, output, progress)
    if state in TERMINAL_STATES:
        data = pickle.dumps(result) if state == "succeeded" else None
        assert store.finish(job_id, Ending(state, data, error)) == state
    return mw.get_job(job_id)


def run(mw, fn, *args, **kwargs):
    job = mw.submit(fn, *args, **kwargs)
    return job.wait(timeout=30)


@pytest.fixture
def mw(make_mw):
    return make_mw(hello_app, authorize=allow_all)


@pytest.fixture
def client(mw):
    return webtest.TestApp(mw, lint=True)


# -- routing and 404s ---------------------------------------------------------------

@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/_jobs/{random}", id="unknown-id"),
        pytest.param("/_jobs/api/jobs/{random}", id="unknown-id-api"),
        pytest.param("/_jobs/api/jobs/{random}/events", id="unknown-id-events"),
        pytest.param("/_jobs/abc", id="short-id"),
        pytest.param("/_jobs/" + "A" * 44, id="long-id"),
        pytest.param("/_jobs/" + "A" * 42 + "!", id="bad-char"),
        pytest.param("/_jobs/api/jobs/" + "A" * 42 + ".", id="bad-char-api"),
        pytest.param("/_jobs/../../etc/passwd", id="dot-dot"),
        pytest.param("/_jobs/%2e%2e/%2e%2e/etc/passwd", id="encoded-dot-dot"),
        pytest.param("/_jobs/api/jobs/%2e%2e", id="encoded-dot-dot-api"),
        pytest.param("/_jobs/api/jobs/..%2f..%2fetc%2fpasswd", id="encoded-slash"),
        pytest.param("/_jobs/static/../app.py", id="static-walk"),
        pytest.param("/_jobs/static/%2e%2e%2fapp.py", id="static-encoded-walk"),
        pytest.param("/_jobs/static/__init__.py", id="static-not-listed"),
        pytest.param("/_jobs/static/", id="static-dir"),
        pytest.param("/_jobs/api", id="api"),
        pytest.param("/_jobs/api/jobs/{random}/output", id="unknown-sub"),
        pytest.param("/_jobs/{random}/", id="trailing-slash"),
    ],
)
def test_unknown_malformed_and_walking_paths_are_404(client, path):
    response = client.get(path.format(random=new_job_id()), status="*")
    assert response.status_int == 404
    assert "Traceback" not in response.text


def test_cancel_of_unknown_or_malformed_id_is_404(client):
    client.post(f"/_jobs/api/jobs/{new_job_id()}/cancel", status=404)
    client.post("/_jobs/api/jobs/..%2f..%2fx/cancel", status=404)


def test_api_errors_are_json(client):
    response = client.get(f"/_jobs/api/jobs/{new_job_id()}", status=404)
    assert response.content_type == "application/json"
    assert response.json["error"] == "Not Found"
    assert "no job" in response.json["message"]


def test_mount_point_without_slash_redirects(client):
    response = client.get("/_jobs", status=308)
    assert response.location == "http://localhost/_jobs/"


def test_requests_outside_the_prefix_reach_the_app(client):
    assert client.get("/_jobsX").text == "hello from the app"


def test_a_vanished_job_is_404_everywhere(client, mw, monkeypatch):
    # A record can be dropped (retention) between the lookup and its use.
    monkeypatch.setattr(mw, "get_job", lambda job_id: Job(mw.engine, job_id))
    job_id = new_job_id()
    for path in (f"/_jobs/{job_id}", f"/_jobs/api/jobs/{job_id}",
                 f"/_jobs/api/jobs/{job_id}/events"):
        client.get(path, status=404)
    client.post(f"/_jobs/api/jobs/{job_id}/cancel", status=404)


# -- the list ---------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/_jobs/", "/_jobs/api/jobs"])
def test_list_is_refused_by_default_with_how_to_enable_it(make_mw, path):
    client = webtest.TestApp(make_mw(hello_app), lint=True)
    response = client.get(path, status=403)
    for hint in ("authorize=wsgi_bg.allow_all", "wsgi_bg.allow_local",
                 "BackgroundMiddleware"):
        assert hint in response.text


def test_authorize_assigned_after_construction_rules_the_pages(make_mw):
    mw = make_mw(hello_app)
    client = webtest.TestApp(mw, lint=True)
    client.get("/_jobs/", status=403)
    mw.authorize = allow_all
    client.get("/_jobs/", status=200)
    mounted = webtest.TestApp(mw.status_app)  # the same, mounted elsewhere
    mounted.get("/", status=200)
    mw.authorize = lambda environ, action, job: action != "list"
    client.get("/_jobs/", status=403)
    with pytest.raises(TypeError, match="authorize must be a callable"):
        mw.authorize = "allow_all"


def test_list_page_newest_first_with_links(client, mw):
    old = fake_job(mw, name="tasks.old", state="succeeded", result=1)
    new = fake_job(mw, name="tasks.<new>", progress={"done": 1, "total": 4,
                                                     "message": None})
    page = client.get("/_jobs/").text
    assert page.index(new.id) < page.index(old.id)
    assert f'<a class="name" href="/_jobs/{new.id}">tasks.&lt;new&gt;</a>' in page
    assert f'<a class="name" href="/_jobs/{old.id}">tasks.old</a>' in page
    assert '<span class="badge state-running">running</span>' in page
    assert '<progress value="1" max="4"></progress>' in page
    assert not INLINE.search(page)


def test_list_api(client, mw):
    old = fake_job(mw, state="failed", error="bad")
    new = fake_job(mw, state="queued")
    data = client.get("/_jobs/api/jobs").json
    assert [j["id"] for j in data["jobs"]] == [new.id, old.id]
    assert data["jobs"][1] == old.to_dict()
    assert data["counts"]["failed"] == 1 and data["counts"]["queued"] == 1
    assert set(data["counts"]) == {"queued", "running", "succeeded", "failed",
                                   "cancelled", "timed_out", "crashed"}


def test_list_with_allow_local(make_mw):
    client = webtest.TestApp(make_mw(hello_app, authorize=allow_local), lint=True)
    client.get("/_jobs/", extra_environ={"REMOTE_ADDR": "127.0.0.1"}, status=200)
    client.get("/_jobs/api/jobs", extra_environ={"REMOTE_ADDR": "::1"}, status=200)
    client.get("/_jobs/", extra_environ={"REMOTE_ADDR": "192.0.2.7"}, status=403)


# -- authorize --------------------------------------------------------------------

def test_authorize_is_asked_for_every_action(make_mw):
    calls = []

    def record(environ, action, job):
        calls.append((action, job.id if job is not None else None))
        return True

    mw = make_mw(hello_app, authorize=record)
    client = webtest.TestApp(mw, lint=True)
    job = fake_job(mw, state="succeeded")
    client.get("/_jobs/")
    client.get("/_jobs/api/jobs")
    client.get(f"/_jobs/{job.id}")
    client.get(f"/_jobs/api/jobs/{job.id}")
    client.get(f"/_jobs/api/jobs/{job.id}/events")
    client.post(f"/_jobs/api/jobs/{job.id}/cancel")
    # The job page also asks "list" and "rerun" (and "retry", its old name),
    # to link the list and offer Run again only to who may use them.
    assert calls == [("list", None), ("list", None), ("view", job.id),
                     ("list", None), ("rerun", job.id), ("retry", job.id),
                     ("view", job.id), ("view", job.id), ("cancel", job.id)]


def test_refused_view_and_cancel_are_403(make_mw):
    mw = make_mw(hello_app, authorize=lambda environ, action, job: False)
    client = webtest.TestApp(mw, lint=True)
    job = fake_job(mw, state="queued")
    for path in (f"/_jobs/{job.id}", f"/_jobs/api/jobs/{job.id}",
                 f"/_jobs/api/jobs/{job.id}/events"):
        client.get(path, status=403)
    client.post(f"/_jobs/api/jobs/{job.id}/cancel", status=403)
    assert job.state == "queued"


# -- one job's page ---------------------------------------------------------------

def test_job_page_of_a_running_job(client, mw):
    job = fake_job(mw, output="line 1\nline 2\n",
                   progress={"done": 3, "total": 10, "message": "copying"})
    page = client.get(f"/_jobs/{job.id}").text
    assert '<span id="state" class="badge state-running">running</span>' in page
    assert '<progress id="progress" value="3" max="10"></progress>' in page
    assert "3 / 10 · copying" in page
    assert shown_output(page) == "line 1\nline 2"
    assert '<div class="line" id="L2"><a class="ln" href="#L2" data-n="2"' in page
    assert f'action="/_jobs/api/jobs/{job.id}/cancel">' in page  # not hidden
    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in page
    assert 'data-next="14"' in page
    assert not INLINE.search(page)


def test_job_page_of_a_finished_job_from_a_real_worker(client, mw):
    job = run(mw, statusfuncs.say, "all done\n", result={"answer": 42})
    assert job.state == "succeeded"
    page = client.get(f"/_jobs/{job.id}").text
    assert '<span id="state" class="badge state-succeeded">succeeded</span>' in page
    assert shown_output(page) == "all done"
    assert "{&#39;answer&#39;: 42}" in page
    assert "http-equiv" not in page  # done: no refresh
    assert re.search(r'<form id="cancel"[^>]*hidden>', page)
    # The script and style it loads are served.
    for asset in re.findall(r'(?:src|href)="(/_jobs/static/[^"]+)"', page):
        client.get(asset, status=200)


def test_script_in_output_name_and_error_is_escaped(client, mw):
    job = run(mw, statusfuncs.say, "<script>alert(1)</script>\n")
    page = client.get(f"/_jobs/{job.id}").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # The raw channels keep the text as it is, as data.
    assert client.get(f"/_jobs/api/jobs/{job.id}").json["output"] == (
        "<script>alert(1)</script>\n"
    )
    failed = run(mw, statusfuncs.fail_with, "<img src=x onerror=alert(1)>")
    assert failed.state == "failed"
    page = client.get(f"/_jobs/{failed.id}").text
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_carriage_returns_render_as_a_terminal(client, mw):
    raw = "start\r\n10%\r50%\r100%\ndone\n"
    job = run(mw, statusfuncs.say, raw)
    page = client.get(f"/_jobs/{job.id}").text
    assert shown_output(page) == "start\n100%\ndone"
    # (The call's arguments, shown on the page, hold the raw text.)
    page = page.replace(str(markupsafe.escape(repr(raw))), "")
    assert "10%" not in page and "50%" not in page
    output = client.get(f"/_jobs/api/jobs/{job.id}").json["output"]
    assert output.endswith("100%\ndone\n")


def test_nul_and_invalid_utf8_stay_inert(client, mw):
    job = run(mw, statusfuncs.say_bytes, b"bad \xff\xfe here\x00nul\n")
    response = client.get(f"/_jobs/{job.id}")
    response.body.decode("utf-8")  # strict
    assert "\x00" not in response.text
    assert "\ufffdnul" in response.text
    api = client.get(f"/_jobs/api/jobs/{job.id}")
    output = json.loads(api.body.decode("utf-8"))["output"]
    assert "\x00nul" in output and "\ufffd" in output
    events, _ = parse_sse(client.get(f"/_jobs/api/jobs/{job.id}/events").text)
    assert "".join(json.loads(e["data"])["text"] for e in events
                   if e["event"] == "output") == output


def test_lone_surrogates_never_break_an_answer(client, mw):
    job = fake_job(mw, output="x\udcff\ud800y\n", name="n\udcff",
                   state="failed", error="e\ud800")
    page = client.get(f"/_jobs/{job.id}")
    assert "x\ufffd\ufffdy" in page.body.decode("utf-8")
    data = json.loads(client.get(f"/_jobs/api/jobs/{job.id}").body.decode("utf-8"))
    assert (data["output"], data["name"], data["error"]) == (
        "x\ufffd\ufffdy\n", "n\ufffd", "e\ufffd"
    )
    events, _ = parse_sse(client.get(f"/_jobs/api/jobs/{job.id}/events").text)
    assert json.loads(events[0]["data"])["text"] == "x\ufffd\ufffdy\n"


# -- the JSON API -------------------------------------------------------------------

def test_job_api_is_to_dict_plus_output_and_next(client, mw):
    job = run(mw, statusfuncs.say, "hello\nworld\n", result=7)
    before = time.time()
    data = client.get(f"/_jobs/api/jobs/{job.id}").json
    assert data.pop("output") == "hello\nworld\n"
    assert data.pop("next") == 12
    assert before <= data.pop("now") <= time.time()  # the server's clock
    assert data == job.to_dict()


def test_since_reads_only_new_output(client, mw):
    job = fake_job(mw, output="hello\n")
    api = f"/_jobs/api/jobs/{job.id}"
    first = client.get(api).json
    assert (first["output"], first["next"]) == ("hello\n", 6)
    mw.engine.store.relay(job.id, "more\n", None)
    second = client.get(f"{api}?since={first['next']}").json
    assert (second["output"], second["next"]) == ("more\n", 11)
    assert client.get(f"{api}?since=11").json["output"] == ""
    assert client.get(f"{api}?since=3").json["output"] == "lo\nmore\n"
    beyond = client.get(f"{api}?since=1000").json
    assert (beyond["output"], beyond["next"]) == ("", 11)


@pytest.mark.parametrize(
    "since", ["-1", "abc", "1.5", "%201", "%D9%A3", "", "0x10", "9" * 5000]
)
def test_bad_since_is_400(client, mw, since):
    job = fake_job(mw)
    for path in (f"/_jobs/api/jobs/{job.id}", f"/_jobs/api/jobs/{job.id}/events"):
        response = client.get(f"{path}?since={since}", status=400)
        assert "since" in response.json["message"]


def test_bad_last_event_id_is_400(client, mw):
    job = fake_job(mw, state="succeeded")
    response = client.get(f"/_jobs/api/jobs/{job.id}/events",
                          headers={"Last-Event-ID": "x"}, status=400)
    assert "Last-Event-ID must be a non-negative integer" in response.json["message"]


# -- the event stream ---------------------------------------------------------------

def test_events_of_a_finished_job_end_with_its_state(client, mw):
    job = run(mw, statusfuncs.say, "one\ntwo\n", result=2)
    response = client.get(f"/_jobs/api/jobs/{job.id}/events")
    assert response.content_type == "text/event-stream"
    events, _ = parse_sse(response.text)
    assert [e["event"] for e in events] == ["output", "state"]
    output = json.loads(events[0]["data"])
    assert output == {"text": "one\ntwo\n", "next": 8}
    assert events[0]["id"] == "8"
    final = json.loads(events[-1]["data"])
    assert final == job.to_dict() and final["done"] is True


def test_events_since_and_last_event_id(client, mw):
    job = fake_job(mw, output="0123456789", state="succeeded")
    url = f"/_jobs/api/jobs/{job.id}/events"

    def texts(response):
        events, _ = parse_sse(response.text)
        assert events[-1]["event"] == "state"
        return [json.loads(e["data"])["text"] for e in events if e["event"] == "output"]

    assert texts(client.get(url)) == ["0123456789"]
    assert texts(client.get(f"{url}?since=4")) == ["456789"]
    # A reconnecting EventSource resends its URL and the last id it saw.
    assert texts(client.get(f"{url}?since=4", headers={"Last-Event-ID": "8"})) == ["89"]
    assert texts(client.get(url, headers={"Last-Event-ID": "10"})) == []


def test_output_cannot_inject_events(client, mw):
    evil = ('a\n\nevent: state\ndata: {"done": true}\n\nid: 999\r\nretry: 1\r\r'
            ": comment\revent: gone\ndata: x\r\n\r\n\x00end")
    job = run(mw, statusfuncs.say, evil)
    # (The capture may collapse carriage-return redraws; the stream carries
    # what the store holds.)
    assert '\n\nevent: state\ndata: {"done": true}\n\n' in job.output
    events, comments = parse_sse(client.get(f"/_jobs/api/jobs/{job.id}/events").text)
    assert [e["event"] for e in events] == ["output", "state"]
    assert json.loads(events[0]["data"])["text"] == job.output
    assert events[0]["id"] == str(job.to_dict()["output_size"])
    assert comments == []


@pytest.mark.parametrize("evil", [
    pytest.param("a\r\revent: gone\rdata: x\r\r", id="lone-cr"),
    pytest.param("a\r\n\r\nevent: gone\r\ndata: x\r\n\r\n", id="crlf"),
    pytest.param("\n\nid: 5\nretry: 1\n: c\n\n", id="fields-and-comment"),
    pytest.param("\ndata: injected\n", id="extra-data-line"),
])
def test_raw_stored_output_cannot_inject_events(client, mw, evil):
    job = fake_job(mw, output=evil, state="succeeded")
    events, comments = parse_sse(client.get(f"/_jobs/api/jobs/{job.id}/events").text)
    assert [e["event"] for e in events] == ["output", "state"]
    assert json.loads(events[0]["data"]) == {"text": evil, "next": len(evil)}
    assert [e["id"] for e in events] == [str(len(evil))] * 2
    assert comments == []


def drive(app, path, environ=None):
    """Call a WSGI app by hand: (status, headers, iterator)."""
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer["status"], answer["headers"] = status, dict(headers)

    env = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path,
           "QUERY_STRING": "", "SERVER_NAME": "localhost", "SERVER_PORT": "80",
           "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
    env.update(environ or {})
    body = app(env, start_response)
    return answer["status"], answer["headers"], iter(body), body


def next_event(chunks):
    """The next event or comment from a stream, as parse_sse sees it."""
    events, comments = parse_sse(next(chunks).decode("ascii"))
    return (events[0]["event"], json.loads(events[0]["data"])) if events else (
        "comment", comments[0])


def test_live_stream_sends_output_and_state_as_they_happen(mw):
    status_app = mw.status_app
    status_app.heartbeat = 0.05
    status_app.poll_interval = 0.01
    store = mw.engine.store
    job = fake_job(mw, output="first\n")
    status, headers, chunks, body = drive(status_app, f"/api/jobs/{job.id}/events")
    assert status == "200 OK"
    assert headers["Content-Type"].startswith("text/event-stream")
    assert next(chunks) == b"retry: 1000\n\n"
    assert next_event(chunks) == ("output", {"text": "first\n", "next": 6})
    event, data = next_event(chunks)
    assert (event, data["state"]) == ("state", "running")
    assert status_app.open_streams == 1
    # Quiet: a heartbeat comes, and nothing else.
    assert next_event(chunks) == ("comment", "keep-alive")
    store.relay(job.id, "second\n", {"done": 1, "total": 2, "message": None})
    assert next_event(chunks) == ("output", {"text": "second\n", "next": 13})
    event, data = next_event(chunks)
    assert (event, data["progress"]) == ("state", {"done": 1, "total": 2,
                                                    "message": None})
    store.relay(job.id, "last\n", None)
    store.finish(job.id, Ending("succeeded", pickle.dumps(None)))
    rest = [next_event(chunks) for _ in range(2)]
    assert rest[0] == ("output", {"text": "last\n", "next": 18})
    assert rest[1][0] == "state" and rest[1][1]["done"] is True
    with pytest.raises(StopIteration):
        next(chunks)
    body.close()
    assert status_app.open_streams == 0


def test_closing_the_stream_frees_it(mw):
    mw.status_app.poll_interval = 0.01
    job = fake_job(mw)
    _, _, chunks, body = drive(mw.status_app, f"/api/jobs/{job.id}/events")
    next(chunks)
    next_event(chunks)
    assert mw.status_app.open_streams == 1
    body.close()  # what a server does when the client has gone
    assert mw.status_app.open_streams == 0


def test_stream_of_a_job_dropped_meanwhile_ends(mw, monkeypatch):
    mw.status_app.poll_interval = 0.01
    job = fake_job(mw)
    _, _, chunks, body = drive(mw.status_app, f"/api/jobs/{job.id}/events")
    next(chunks)
    assert next_event(chunks)[0] == "state"
    monkeypatch.setattr(mw.engine.store, "get", lambda job_id: None)
    monkeypatch.setattr(mw.engine.store, "view", lambda job_id, since: None)
    assert next_event(chunks)[0] == "gone"
    with pytest.raises(StopIteration):
        next(chunks)
    body.close()


# -- cancel -----------------------------------------------------------------------

def test_cancel_a_running_job(client, mw, tmp_path):
    job = mw.submit(statusfuncs.gated, str(tmp_path / "gate"))
    wait_for(lambda: job.read_output()[0] == "started\n", timeout=30,
             message="the job to start")
    answer = client.post(f"/_jobs/api/jobs/{job.id}/cancel").json
    assert answer == {"cancelled": True, "state": "running"}
    job.wait(timeout=30)
    assert job.state == "cancelled"
    answer = client.post(f"/_jobs/api/jobs/{job.id}/cancel").json
    assert answer == {"cancelled": False, "state": "cancelled"}


def test_cancel_a_queued_job(client, mw):
    job = fake_job(mw, state="queued")
    answer = client.post(f"/_jobs/api/jobs/{job.id}/cancel").json
    assert answer == {"cancelled": True, "state": "cancelled"}


def test_cancel_from_the_page_form_redirects_back(client, mw):
    job = fake_job(mw, state="queued")
    response = client.post(f"/_jobs/api/jobs/{job.id}/cancel",
                           headers={"Accept": "text/html,application/xhtml+xml,"
                                              "application/xml;q=0.9,*/*;q=0.8"},
                           status=303)
    assert response.headers["Location"] in (f"/_jobs/{job.id}",
                                            f"http://localhost/_jobs/{job.id}")
    assert job.state == "cancelled"


def test_get_on_cancel_is_405(client, mw):
    job = fake_job(mw, state="queued")
    response = client.get(f"/_jobs/api/jobs/{job.id}/cancel", status=405)
    assert response.headers["Allow"] == "POST"
    assert job.state == "queued"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({}, 200, id="no-browser-headers"),
        pytest.param({"Origin": "http://localhost"}, 200, id="same-origin"),
        pytest.param({"Origin": "http://localhost:80"}, 200, id="same-origin-port"),
        pytest.param({"Origin": "http://LOCALHOST"}, 200, id="same-origin-case"),
        pytest.param({"Referer": "http://localhost/_jobs/x"}, 200, id="same-referer"),
        pytest.param({"Origin": "null", "Sec-Fetch-Site": "same-origin"}, 200,
                     id="own-form-under-no-referrer"),
        pytest.param({"Origin": "http://evil.example"}, 403, id="other-origin"),
        pytest.param({"Origin": "https://localhost"}, 403, id="other-scheme"),
        pytest.param({"Origin": "http://localhost:8080"}, 403, id="other-port"),
        pytest.param({"Origin": "http://localhost.evil.example"}, 403, id="suffix"),
        pytest.param({"Origin": "null"}, 403, id="null-origin"),
        pytest.param({"Origin": "garbage"}, 403, id="garbage-origin"),
        pytest.param({"Origin": "http://evil.example",
                      "Referer": "http://localhost/"}, 403, id="origin-wins"),
        pytest.param({"Referer": "http://evil.example/page"}, 403, id="other-referer"),
        pytest.param({"Origin": "http://localhost", "Sec-Fetch-Site": "cross-site"},
                     403, id="cross-site-fetch"),
        pytest.param({"Sec-Fetch-Site": "same-site"}, 403, id="same-site-fetch"),
    ],
)
def test_cancel_from_another_origin_is_refused(client, mw, headers, status):
    job = fake_job(mw, state="queued")
    response = client.post(f"/_jobs/api/jobs/{job.id}/cancel", headers=headers,
                           status=status)
    if status == 403:
        assert "may not change jobs" in response.json["message"]
        assert job.state == "queued"
    else:
        assert job.state == "cancelled"


# -- headers, static files, mounting --------------------------------------------------

ROUTES = [
    pytest.param("GET", "/_jobs/", 200, id="list"),
    pytest.param("GET", "/_jobs/api/jobs", 200, id="list-api"),
    pytest.param("GET", "/_jobs/{id}", 200, id="page"),
    pytest.param("GET", "/_jobs/api/jobs/{id}", 200, id="api"),
    pytest.param("GET", "/_jobs/api/jobs/{id}?since=2", 200, id="api-since"),
    pytest.param("GET", "/_jobs/api/jobs/{id}/events", 200, id="events"),
    pytest.param("POST", "/_jobs/api/jobs/{id}/cancel", 200, id="cancel"),
    pytest.param("GET", "/_jobs/static/status.js", 200, id="js"),
    pytest.param("GET", "/_jobs/static/status.css", 200, id="css"),
    pytest.param("GET", "/_jobs/api/jobs/{id}?since=x", 400, id="400"),
    pytest.param("GET", "/_jobs/nope", 404, id="404"),
    pytest.param("GET", "/_jobs/api/jobs/{id}/cancel", 405, id="405"),
    pytest.param("GET", "/_jobs", 308, id="redirect"),
]


@pytest.mark.parametrize(("method", "path", "status"), ROUTES)
def test_every_answer_carries_the_security_headers(client, mw, method, path, status):
    job = fake_job(mw, state="succeeded", output="out\n")
    response = client.request(path.format(id=job.id), method=method, status=status)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, name


def test_refused_list_carries_the_security_headers(make_mw):
    client = webtest.TestApp(make_mw(hello_app), lint=True)
    response = client.get("/_jobs/", status=403)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value


def test_static_files(client):
    js = client.get("/_jobs/static/status.js")
    assert js.content_type == "text/javascript"
    assert "If-None-Match" in js.text and "textContent" in js.text
    assert "?since=" in js.text
    assert "innerHTML" not in js.text and "insertAdjacentHTML" not in js.text
    css = client.get("/_jobs/static/status.css")
    assert css.content_type == "text/css"
    assert ".state-running" in css.text


def test_status_app_mounted_elsewhere_builds_links_from_its_mount(mw):
    app = DispatcherMiddleware(hello_app, {"/admin/jobs": mw.status_app})
    client = webtest.TestApp(app, lint=True)
    job = fake_job(mw, state="queued")
    page = client.get("/admin/jobs/").text
    assert f'href="/admin/jobs/{job.id}"' in page
    page = client.get(f"/admin/jobs/{job.id}").text
    assert f'action="/admin/jobs/api/jobs/{job.id}/cancel"' in page
    assert 'src="/admin/jobs/static/status.js"' in page
    assert "/_jobs" not in page
    response = client.post(f"/admin/jobs/api/jobs/{job.id}/cancel",
                           headers={"Accept": "text/html"}, status=303)
    assert response.headers["Location"].endswith(f"/admin/jobs/{job.id}")


def test_middleware_mounted_under_a_prefix_keeps_it_in_links(mw):
    client = webtest.TestApp(DispatcherMiddleware(hello_app, {"/outer": mw}), lint=True)
    job = fake_job(mw)
    page = client.get(f"/outer/_jobs/{job.id}").text
    assert f'data-api="/outer/_jobs/api/jobs/{job.id}"' in page
    assert 'href="/outer/_jobs/"' in page


# -- a real server ------------------------------------------------------------------

@contextmanager
def serving(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-server")
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def request(port, method, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


class EventReader:
    """Reads a live event stream over HTTP, one event (or comment) at a time."""

    def __init__(self, port, path, headers=None):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()

    def next(self):
        lines = []
        while True:
            line = self.response.readline()
            if not line:
                return None  # the stream ended
            if line == b"\n":
                break
            lines.append(line.decode("ascii"))
        events, comments = parse_sse("".join(lines) + "\n")
        if events:
            return events[0]["event"], json.loads(events[0]["data"])
        return "comment", comments[0] if comments else ""

    def until(self, kind):
        seen = []
        while True:
            item = self.next()
            assert item is not None, f"the stream ended before {kind}: {seen}"
            seen.append(item)
            if item[0] == kind:
                return item[1], seen

    def close(self):
        self.response.close()
        self.conn.close()


def test_real_server_pages_and_live_events(mw, tmp_path):
    gate = tmp_path / "gate"
    job = mw.submit(statusfuncs.gated, str(gate), "line one\n", "line two\n",
                    (1, 4, "step"))
    with serving(mw) as port:
        status, headers, body = request(port, "GET", "/_jobs/")
        assert status == 200 and job.id.encode() in body
        assert headers["Content-Security-Policy"] == SECURITY_HEADERS[
            "Content-Security-Policy"]
        status, _, body = request(port, "GET", f"/_jobs/{job.id}")
        assert status == 200
        status, _, body = request(port, "GET", "/_jobs/static/status.js")
        assert status == 200 and b"?since=" in body
        status, _, _ = request(port, "POST", f"/_jobs/api/jobs/{job.id}/cancel",
                               {"Origin": "http://evil.example"})
        assert status == 403

        reader = EventReader(port, f"/_jobs/api/jobs/{job.id}/events")
        try:
            assert reader.response.status == 200
            assert reader.response.getheader("Content-Type").startswith(
                "text/event-stream")
            # Live: the first line arrives while the job still runs.
            text = ""
            while "line one\n" not in text:
                data, _ = reader.until("output")
                text += data["text"]
            state, _ = reader.until("state")
            while state["progress"] is None:
                state, _ = reader.until("state")
            assert state["state"] == "running"
            assert state["progress"] == {"done": 1, "total": 4, "message": "step"}
            assert not job.done
            gate.touch()
            data, _ = reader.until("output")
            assert data["text"] == "line two\n"
            state, _ = reader.until("state")
            while not state["done"]:
                state, _ = reader.until("state")
            assert state["state"] == "succeeded"
            assert reader.next() is None  # the stream ends with the job
        finally:
            reader.close()
            gate.touch()
        status, _, body = request(port, "GET", f"/_jobs/api/jobs/{job.id}?since=9")
        assert json.loads(body)["output"] == "line two\n"


def without_socket(app):
    """The app behind a server that does not expose its socket: only a failed
    write tells the stream that the client has gone."""
    def wrapped(environ, start_response):
        environ.pop("werkzeug.socket", None)
        return app(environ, start_response)
    return wrapped


def request_threads():
    """The server's threads serving a request (socketserver.ThreadingMixIn)."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())


@pytest.mark.parametrize(("wrap", "heartbeat"), [
    # Werkzeug's server exposes the socket: the stream sees the client close
    # it at its next poll, long before a heartbeat would be due.
    pytest.param(lambda app: app, 30.0, id="socket-peek"),
    pytest.param(without_socket, 0.3, id="failed-write"),
])
def test_client_going_away_frees_the_server_thread(mw, tmp_path, wrap, heartbeat):
    mw.status_app.heartbeat = heartbeat
    mw.status_app.poll_interval = 0.02
    gate = tmp_path / "gate"
    job = mw.submit(statusfuncs.gated, str(gate))
    try:
        # Nothing changes once the stream is open: only the client's going
        # away can end it.
        wait_for(lambda: job.read_output()[0] == "started\n", timeout=30,
                 message="the job to start")
        with serving(wrap(mw)) as port:
            assert request_threads() == 0
            reader = EventReader(port, f"/_jobs/api/jobs/{job.id}/events")
            try:
                assert reader.until("state")[0]["state"] == "running"
                if heartbeat < 1:
                    assert reader.until("comment")[0] == "keep-alive"
                assert mw.status_app.open_streams == 1
                assert request_threads() == 1
            finally:
                reader.close()
            gone = time.monotonic()
            wait_for(lambda: mw.status_app.open_streams == 0, timeout=10,
                     message="the stream to close")
            wait_for(lambda: request_threads() == 0, timeout=10,
                     message="the server thread to end")
            # Within one heartbeat (a write into a reset connection may need
            # a second one), plus scheduling slack.
            assert time.monotonic() - gone < min(3 * heartbeat, 2) + 1
            assert not job.done  # the job itself goes on
    finally:
        gate.touch()
        job.wait(timeout=30)
    assert job.state == "succeeded"


def test_head_of_a_running_stream_does_not_start_it(client, mw):
    job = fake_job(mw)  # running: a GET would stream until it ends
    response = client.head(f"/_jobs/api/jobs/{job.id}/events")
    assert response.content_type == "text/event-stream" and response.body == b""
    assert mw.status_app.open_streams == 0


def test_event_streams_past_max_streams_get_503(mw):
    mw.status_app.max_streams = 1
    mw.status_app.poll_interval = 0.01
    job = fake_job(mw)
    _, _, chunks, body = drive(mw.status_app, f"/api/jobs/{job.id}/events")
    next(chunks)
    assert mw.status_app.open_streams == 1
    app = webtest.TestApp(mw)
    response = app.get(f"/_jobs/api/jobs/{job.id}/events", status=503)
    assert response.headers["Retry-After"] == "5"
    assert "max_streams" in response.text
    body.close()
    assert mw.status_app.open_streams == 0


def test_cross_origin_refusal_says_how_to_fix_a_proxy(mw):
    job = fake_job(mw)
    response = webtest.TestApp(mw).post(
        f"/_jobs/api/jobs/{job.id}/cancel",
        headers={"Origin": "https://example.org"}, status=403)
    assert "ProxyFix" in response.text


# -- issue 11: raw output, conditional polls, windows, errors, the list -------------

def test_raw_output_is_a_plain_text_download_under_view(make_mw):
    allowed = {"view"}
    mw = make_mw(hello_app, authorize=lambda environ, action, job: action in allowed)
    client = webtest.TestApp(mw, lint=True)
    raw = "\x1b[32mgreen\x1b[0m <b>\r\n50%\r100%\n"
    job = fake_job(mw, output=raw, name="tasks.build report", state="succeeded")
    response = client.get(f"/_jobs/api/jobs/{job.id}/output.txt")
    assert response.content_type == "text/plain"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename=tasks.build-report-{job.id[:8]}.txt')
    assert response.text == raw  # raw: escapes and redraws as written
    assert response.headers["Cache-Control"] == "no-store"
    allowed.clear()
    client.get(f"/_jobs/api/jobs/{job.id}/output.txt", status=403)
    client.get(f"/_jobs/api/jobs/{'x' * 43}/output.txt", status=404)


def test_polls_are_conditional(client, mw):
    job = fake_job(mw, output="one\n")
    api = f"/_jobs/api/jobs/{job.id}?since=4"
    first = client.get(api)
    etag = first.headers["ETag"]
    again = client.get(api, headers={"If-None-Match": etag}, status=304)
    assert again.body == b"" and again.headers["ETag"] == etag
    mw.engine.store.relay(job.id, "two\n", None)
    news = client.get(api, headers={"If-None-Match": etag}, status=200)
    assert news.json["output"] == "two\n" and news.headers["ETag"] != etag
    # A change of state alone is news too.
    etag = client.get(f"/_jobs/api/jobs/{job.id}?since=8").headers["ETag"]
    mw.engine.store.finish(job.id, Ending("succeeded", pickle.dumps(1)))
    done = client.get(f"/_jobs/api/jobs/{job.id}?since=8",
                      headers={"If-None-Match": etag}, status=200)
    assert done.json["state"] == "succeeded"


def test_event_stream_lasts_one_window_then_resumes(mw):
    status_app = mw.status_app
    status_app.poll_interval = 0.01
    status_app.heartbeat = 60
    status_app.stream_window = 0.2
    job = fake_job(mw, output="first\n")
    started = time.monotonic()
    _, _, chunks, body = drive(status_app, f"/api/jobs/{job.id}/events")
    received = list(chunks)  # ends by itself although the job still runs
    body.close()
    assert time.monotonic() - started < 5
    assert not job.done and status_app.open_streams == 0
    assert received[-1] == b": window ends\n\n"
    mw.engine.store.relay(job.id, "second\n", None)
    mw.engine.store.finish(job.id, Ending("succeeded", pickle.dumps(None)))
    # The browser reconnects with the id of the last output event it saw.
    _, _, chunks, body = drive(status_app, f"/api/jobs/{job.id}/events",
                               {"HTTP_LAST_EVENT_ID": "6"})
    events, _ = parse_sse(b"".join(chunks).decode())
    body.close()
    assert [e["event"] for e in events] == ["output", "state"]
    assert json.loads(events[0]["data"])["text"] == "second\n"


@pytest.mark.parametrize(("path", "status"), [
    pytest.param("/_jobs/" + "A" * 43, 404, id="404"),
    pytest.param("/_jobs/nope/x", 404, id="404-route"),
])
def test_error_pages_are_styled_and_say_what_to_do(client, path, status):
    response = client.get(path, status=status)
    assert response.content_type == "text/html"
    page = response.text
    assert 'href="/_jobs/static/status.css"' in page
    assert '<p class="code">404</p><h1>Not Found</h1>' in page
    assert "restarted server forgets" in page
    assert not INLINE.search(page)


def test_refused_list_page_is_styled_and_links_no_list(make_mw):
    client = webtest.TestApp(make_mw(hello_app), lint=True)
    page = client.get("/_jobs/", status=403).text
    assert "<h1>Forbidden</h1>" in page and "authorize=wsgi_bg.allow_all" in page
    assert 'href="/_jobs/"' not in page
    job = fake_job(client.app, state="running")
    page = client.get(f"/_jobs/{job.id}").text  # default: the list is refused
    assert 'href="/_jobs/"' not in page and '<span class="brand">' in page


def test_a_503_from_the_store_keeps_its_status_and_retry_after(client, mw, monkeypatch):
    from werkzeug.exceptions import ServiceUnavailable

    def unreachable(*args, **kwargs):
        raise ServiceUnavailable("the job store cannot be reached", retry_after=7)

    job = fake_job(mw)
    monkeypatch.setattr(mw.engine.store, "view", unreachable)
    monkeypatch.setattr(mw.engine.store, "page", unreachable)
    page = client.get(f"/_jobs/{job.id}", status=503)
    assert page.headers["Retry-After"] == "7"
    assert "<h1>Service Unavailable</h1>" in page.text
    assert "the job store cannot be reached" in page.text
    assert "retry after 7 seconds" in page.text
    api = client.get(f"/_jobs/api/jobs/{job.id}", status=503)
    assert api.headers["Retry-After"] == "7" and api.json["error"] == (
        "Service Unavailable")
    assert client.get("/_jobs/", status=503).headers["Retry-After"] == "7"
    for name, value in SECURITY_HEADERS.items():
        assert page.headers[name] == value


@pytest.mark.memory_store_only  # the Redis store is shared: no warning there
@pytest.mark.parametrize("path", ["/_jobs/", "/_jobs/{id}"])
def test_multiprocess_servers_without_a_shared_store_are_warned(client, mw, path):
    job = fake_job(mw)
    url = path.format(id=job.id)
    warned = client.get(url, extra_environ={"wsgi.multiprocess": True}).text
    assert 'id="server-notice"' in warned
    assert "jobs are kept per process" in warned
    assert "store=&#34;redis://...&#34;" in warned
    single = client.get(url, extra_environ={"wsgi.multiprocess": False}).text
    assert 'id="server-notice"' not in single


def test_shared_store_needs_no_warning(client, mw, monkeypatch):
    job = fake_job(mw)
    monkeypatch.setattr(type(mw.engine), "shared_store", True, raising=False)
    page = client.get(f"/_jobs/{job.id}", extra_environ={"wsgi.multiprocess": True})
    assert 'id="server-notice"' not in page.text


def test_list_filters_by_state_and_searches_by_name(client, mw):
    fake_job(mw, name="reports.monthly", state="failed",
             error="Traceback (most recent call last):\n  x\nKeyError: 'month'\n")
    fake_job(mw, name="reports.yearly", state="succeeded", result=1)
    fake_job(mw, name="mail.send", state="failed", error="SMTP down")
    data = client.get("/_jobs/api/jobs?state=failed").json
    assert [j["name"] for j in data["jobs"]] == ["mail.send", "reports.monthly"]
    assert data["total"] == 2 and data["counts"]["failed"] == 2
    data = client.get("/_jobs/api/jobs?q=REPORTS").json
    assert [j["name"] for j in data["jobs"]] == ["reports.yearly", "reports.monthly"]
    data = client.get("/_jobs/api/jobs?q=reports&state=failed").json
    assert [j["name"] for j in data["jobs"]] == ["reports.monthly"]
    page = client.get("/_jobs/?state=failed").text
    assert "mail.send" in page and "reports.yearly" not in page
    assert '<div class="error-line">KeyError: &#39;month&#39;</div>' in page
    assert '<div class="error-line">SMTP down</div>' in page
    client.get("/_jobs/?state=sleeping", status=400)
    client.get("/_jobs/?page=x", status=400)
    client.get("/_jobs/api/jobs?per_page=0", status=400)


def test_list_pages_through_ten_thousand_jobs(make_mw):
    mw = make_mw(hello_app, authorize=allow_all, keep_finished=10_000)
    client = webtest.TestApp(mw, lint=True)
    store = mw.engine.store
    for n in range(10_000):
        record = {
            "id": f"{n:043d}", "name": f"tasks.n{n}", "created_at": 1e9 + n,
            "started_at": None, "ended_at": None, "result": None, "error": None,
            "progress": None, "timeout": None, "cancel_requested": False,
            "cancel_grace": None, "url": None, "pid": None,
        }
        assert store.create(record, 20_000)
    started = time.monotonic()
    page = client.get("/_jobs/?page=200").text
    assert time.monotonic() - started < 2
    assert "9951–10000 of 10000 · page 200 of 200" in page
    assert f'href="/_jobs/{0:043d}"' in page and f'href="/_jobs/{50:043d}"' not in page
    assert page.count('<tr class="job">') == 50
    assert 'rel="next"' not in page and 'href="/_jobs/?page=199"' in page
    data = client.get("/_jobs/api/jobs?page=2&per_page=100").json
    assert [j["name"] for j in data["jobs"]][:2] == ["tasks.n9899", "tasks.n9898"]
    assert (data["total"], data["pages"]) == (10_000, 100)


# -- run again ----------------------------------------------------------------------

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def test_run_again_starts_a_new_job_with_the_same_call_and_links_both(client, mw):
    old = run(mw, statusfuncs.say, "again\n", result=7)
    page = client.get(f"/_jobs/{old.id}").text
    assert (f'<form id="rerun" class="rerun" method="post"'
            f' action="/_jobs/api/jobs/{old.id}/rerun">') in page
    response = client.post(f"/_jobs/api/jobs/{old.id}/rerun", status=202)
    new_id = response.json["id"]
    assert response.json == {"id": new_id, "url": f"/_jobs/{new_id}"}
    assert response.headers["Location"].endswith(f"/_jobs/{new_id}")
    new = mw.get_job(new_id).wait(timeout=30)
    assert (new.output, new.result, new.name) == ("again\n", 7, old.name)
    assert new.to_dict()["args"] == old.to_dict()["args"] == "('again\\n', result=7)"
    assert new.to_dict()["rerun_of"] == old.id and old.to_dict()["rerun_as"] == new.id
    assert client.get(f"/_jobs/api/jobs/{old.id}").json["rerun_as"] == new.id
    assert f'<a id="rerun-as" class="jobid" href="/_jobs/{new.id}">' in client.get(
        f"/_jobs/{old.id}").text
    assert f'<a id="rerun-of" class="jobid" href="/_jobs/{old.id}">' in client.get(
        f"/_jobs/{new.id}").text


def test_status_app_is_built_from_engine_authorize_and_url_for(mw):
    """Issue 20: the pages need the engine, ``authorize`` and a URL builder,
    not the middleware; each is the one given."""
    from wsgi_bg.status import StatusApp

    asked = []

    def authorize(environ, action, job):
        asked.append(action)
        return action != "cancel"

    app = StatusApp(mw.engine, authorize=authorize,
                    url_for=lambda job_id: f"/elsewhere/{job_id}")
    assert not hasattr(app, "middleware")
    client = webtest.TestApp(app)
    old = run(mw, statusfuncs.say, "again\n")
    assert client.get("/api/jobs").json["jobs"][0]["id"] == old.id
    client.post(f"/api/jobs/{old.id}/cancel", status=403)
    new_id = client.post(f"/api/jobs/{old.id}/rerun", status=202).json["id"]
    new = mw.get_job(new_id).wait(timeout=30)
    assert new.url == f"/elsewhere/{new_id}" and new.output == "again\n"
    assert {"list", "cancel", "rerun"} <= set(asked)


def test_run_again_from_the_page_form_redirects_to_the_new_job(client, mw):
    old = run(mw, statusfuncs.fail_with, "boom")
    response = client.post(f"/_jobs/api/jobs/{old.id}/rerun", headers=HTML,
                           status=303)
    new_id = response.headers["Location"].rsplit("/", 1)[1]
    assert new_id != old.id
    assert mw.get_job(new_id).wait(timeout=30).state == "failed"
    assert old.to_dict()["rerun_as"] == new_id


def test_run_again_keeps_timeout_and_hidden_arguments(client, mw):
    import jobfuncs

    old = mw.engine.submit(jobfuncs.add, (1, 2), {}, name="sums", timeout=9.5)
    old.wait(timeout=30)
    new = mw.rerun(old.id)
    assert mw.engine.store.get(new.id)["timeout"] == 9.5
    assert new.wait(timeout=30).result == 3 and new.name == "sums"


def test_a_running_job_cannot_be_run_again_from_the_pages(client, mw, tmp_path):
    job = mw.submit(statusfuncs.gated, str(tmp_path / "gate"))
    page = client.get(f"/_jobs/{job.id}").text
    assert '<form id="rerun" class="rerun" method="post"' in page
    assert f'action="/_jobs/api/jobs/{job.id}/rerun" hidden>' in page
    answer = client.post(f"/_jobs/api/jobs/{job.id}/rerun", status=409).json
    assert "can be run again once it has ended" in answer["message"]
    (tmp_path / "gate").touch()
    job.wait(timeout=30)
    assert len(mw.jobs()) == 1


def test_run_again_without_a_kept_call_is_409_and_of_an_unknown_job_404(client, mw):
    job = fake_job(mw, state="failed", error="x")  # created without its call
    answer = client.post(f"/_jobs/api/jobs/{job.id}/rerun", status=409).json
    assert "its call is no longer kept" in answer["message"]
    with pytest.raises(LookupError, match="its call is no longer kept"):
        mw.rerun(job.id)
    with pytest.raises(LookupError, match="is no longer stored"):
        mw.rerun(new_job_id())
    page = client.post(f"/_jobs/api/jobs/{new_job_id()}/rerun", headers=HTML,
                       status=404).text
    assert "<h1>Not Found</h1>" in page


def test_run_again_follows_authorize_and_same_origin(make_mw):
    asked = []

    def authorize(environ, action, job):
        asked.append(action)
        return action not in ("rerun", "retry")  # as docs/security.md says

    mw = make_mw(hello_app, authorize=authorize)
    client = webtest.TestApp(mw, lint=True)
    job = run(mw, statusfuncs.say, "x")
    page = client.get(f"/_jobs/{job.id}").text
    assert 'id="rerun"' not in page  # not offered
    client.post(f"/_jobs/api/jobs/{job.id}/rerun", status=403)
    assert "rerun" in asked and job.to_dict()["rerun_as"] is None
    client = webtest.TestApp(make_mw(hello_app), lint=True)
    job = run(client.app, statusfuncs.say, "x")
    client.post(f"/_jobs/api/jobs/{job.id}/rerun", status=403,
                headers={"Origin": "https://evil.example"})
    client.post(f"/_jobs/api/jobs/{job.id}/rerun", status=403,
                headers={"Sec-Fetch-Site": "cross-site"})
    assert job.to_dict()["rerun_as"] is None  # (Redis: both share one namespace)
    client.post(f"/_jobs/api/jobs/{job.id}/rerun", status=202,
                headers={"Origin": "http://localhost"})  # default: allowed


@pytest.mark.parametrize("authorize", [
    pytest.param(lambda environ, action, job: action != "retry", id="refuses-retry"),
    pytest.param(lambda environ, action, job: action in {"view", "cancel", "retry"},
                 id="allows-only-retry"),
])
def test_an_authorize_written_for_retry_keeps_its_say_over_rerun(make_mw, authorize):
    """"retry" was the rerun route's action until 0.2: an authorize written
    then, asked "rerun" (a name it never heard of), must not let a run again
    through that it refused, nor allow one it did not know to allow."""
    mw = make_mw(hello_app, authorize=authorize)
    client = webtest.TestApp(mw, lint=True)
    job = run(mw, statusfuncs.say, "x")
    said = r"action 'rerun' but (refused|allowed) 'retry', its old name: the rerun is"
    with pytest.warns(DeprecationWarning, match=said):
        page = client.get(f"/_jobs/{job.id}").text
    assert 'id="rerun"' not in page  # not offered
    with pytest.warns(DeprecationWarning, match=said + r" refused\. Give both"):
        client.post(f"/_jobs/api/jobs/{job.id}/rerun", status=403,
                    headers={"Origin": "http://localhost"})
    assert job.to_dict()["rerun_as"] is None and len(mw.jobs()) == 1


def test_an_authorize_that_answers_retry_and_rerun_alike_gets_no_warning(make_mw):
    def authorize(environ, action, job):
        return action in ("view", "rerun", "retry")

    mw = make_mw(hello_app, authorize=authorize)
    client = webtest.TestApp(mw, lint=True)
    job = run(mw, statusfuncs.say, "x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert 'id="rerun"' in client.get(f"/_jobs/{job.id}").text
        client.post(f"/_jobs/api/jobs/{job.id}/rerun", status=202,
                    headers={"Origin": "http://localhost"})
    assert job.to_dict()["rerun_as"] is not None


def test_get_on_rerun_is_405(client, mw):
    job = fake_job(mw, state="failed")
    assert client.get(f"/_jobs/api/jobs/{job.id}/rerun", status=405).headers[
        "Allow"] == "POST"


# -- one store call per poll ---------------------------------------------------------

def count_calls(monkeypatch, store):
    calls = []
    for name in ("get", "view", "read_output", "list", "page", "counts", "call"):
        method = getattr(store, name)

        def counted(*args, _name=name, _method=method, **kwargs):
            calls.append(_name)
            return _method(*args, **kwargs)

        monkeypatch.setattr(store, name, counted)
    return calls


def test_a_poll_and_a_page_cost_one_store_call(client, mw, monkeypatch):
    job = fake_job(mw, output="hello\n")
    calls = count_calls(monkeypatch, mw.engine.store)
    client.get(f"/_jobs/api/jobs/{job.id}?since=6")
    assert calls == ["view"]
    calls.clear()
    client.get(f"/_jobs/{job.id}")
    assert calls == ["view"]
    calls.clear()
    client.get("/_jobs/api/jobs?state=running&q=fake")
    assert calls == ["page", "counts"]


def test_authorize_reading_a_vanished_job_is_404_not_500(make_mw):
    def authorize(environ, action, job):
        return job is None or job.name == "tasks.fake"  # reads the store

    client = webtest.TestApp(make_mw(hello_app, authorize=authorize), lint=True)
    for path in (f"/_jobs/{new_job_id()}", f"/_jobs/api/jobs/{new_job_id()}"):
        assert "no longer stored" in client.get(path, status=404).text


# -- a marked app's refusals, in the pages' look ------------------------------------

def test_a_marked_apps_413_and_503_are_styled_pages_or_json(make_mw, tmp_path):
    import appfuncs
    import jobfuncs

    mw = make_mw(appfuncs.echo_body, max_body_bytes=10, max_workers=1, max_queued=1)
    client = webtest.TestApp(mw, lint=True)
    page = client.post("/upload", b"x" * 11, content_type="text/plain",
                       headers=HTML, status=413)
    assert page.content_type == "text/html"
    assert '<p class="code">413</p><h1>Request Entity Too Large</h1>' in page.text
    assert "max_body_bytes=10" in page.text and "raise max_body_bytes" in page.text
    assert 'href="/_jobs/static/status.css"' in page.text and not INLINE.search(
        page.text)
    for name, value in SECURITY_HEADERS.items():
        assert page.headers[name] == value
    answer = client.post("/upload", b"x" * 11, content_type="text/plain",
                         headers={"Accept": "application/json"}, status=413).json
    assert answer["error"] == "Request Entity Too Large"
    assert "max_body_bytes=10" in answer["message"]
    gate = tmp_path / "gate"
    blocker = mw.submit(jobfuncs.wait_file, str(gate))
    wait_for(lambda: blocker.state == "running", timeout=30, message="blocker")
    mw.submit(jobfuncs.add, 1, 2)  # the one job allowed to wait
    page = client.post("/upload", b"x", content_type="text/plain", headers=HTML,
                       status=503)
    assert page.headers["Retry-After"] == "5"
    assert "<h1>Service Unavailable</h1>" in page.text and "max_queued" in page.text
    answer = client.post("/upload", b"x", content_type="text/plain",
                         headers={"Accept": "application/json"}, status=503)
    assert answer.json["error"] == "Service Unavailable"
    gate.touch()
