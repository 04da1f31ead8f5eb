"""Pure functions of the status pages: terminal rendering, text clean-up, HTML, SSE."""
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import wsgi_bg.status.render as render_module
from wsgi_bg.status.events import HEARTBEAT, dump_json, format_event, jsonable
from wsgi_bg.status.render import (
    clean_text,
    format_duration,
    format_time,
    html_text,
    job_page,
    list_page,
    progress_parts,
)
from wsgi_bg.terminal import Screen, render_terminal

ID = "A" * 42 + "b"


def job_dict(**changes):
    job = {
        "id": ID, "name": "tasks.report", "state": "running", "done": False,
        "created_at": 1_700_000_000.0, "started_at": 1_700_000_001.0,
        "ended_at": None, "progress": None, "error": None, "result": None,
        "url": None, "cancel_requested": False, "output_size": 0,
    }
    job.update(changes)
    return job


# -- terminal rendering -----------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        pytest.param("plain\ntext\n", "plain\ntext\n", id="plain"),
        pytest.param("", "", id="empty"),
        pytest.param("a\r\nb\r\n", "a\nb\n", id="crlf-is-newline"),
        pytest.param("10%\r20%\r30%", "30%", id="redraws-keep-latest"),
        pytest.param("10%\r20%\r30%\ndone\n", "30%\ndone\n", id="redraw-then-newline"),
        pytest.param("long line\rshort", "short", id="replaces-whole-line"),
        pytest.param("50%\r", "50%", id="trailing-cr-keeps-line"),
        pytest.param("x\r\r\ry", "y", id="several-crs"),
        pytest.param("\rfirst", "first", id="leading-cr"),
        pytest.param("a\nb\rc\nd", "a\nc\nd", id="only-that-line"),
        pytest.param("a\r\r\nb", "a\nb", id="crs-then-newline"),
        pytest.param("\n\nx", "\n\nx", id="leading-newlines-kept"),
        pytest.param(
            "dl:   0%|          | 0/3 [00:00<?, ?it/s]\r"
            "dl:  33%|███▎      | 1/3 [00:00<00:00]\r"
            "dl: 100%|██████████| 3/3 [00:00<00:00]\n",
            "dl: 100%|██████████| 3/3 [00:00<00:00]\n",
            id="tqdm",
        ),
    ],
)
def test_render_terminal(raw, shown):
    assert render_terminal(raw) == shown


SAMPLES = ["a\r\nb\r\nc", "10%\r20%\r\n30%\rdone\n", "x\r\r\ry\nz\r", "\r\n\r\n\rq"]


@pytest.mark.parametrize("raw", SAMPLES)
def test_screen_fed_in_pieces_shows_the_same(raw):
    # Output arrives in arbitrary chunks (SSE events, polls): every split
    # point, a "\r\n" split included, must render as the whole text does.
    for cut in range(len(raw) + 1):
        screen = Screen()
        screen.feed(raw[:cut])
        screen.feed(raw[cut:])
        assert screen.text() == render_terminal(raw), cut


def test_screen_state_tells_the_script_where_it_stands():
    screen = Screen()
    screen.feed("one\ntwo\r")
    assert (screen.done, screen.line, screen.pending_cr) == ("one\n", "two", True)
    screen.feed("three")
    assert (screen.done, screen.line, screen.pending_cr) == ("one\n", "three", False)


# -- clean text -----------------------------------------------------------------

def test_clean_text_replaces_lone_surrogates():
    assert clean_text("a\ud800b\udcffc") == "a\ufffdb\ufffdc"
    assert clean_text("\ud83d\ude00") == "\U0001f600"  # a pair joins
    assert clean_text("plain é") == "plain é"


def test_html_text_replaces_nul():
    assert html_text("a\x00b\ud800") == "a\ufffdb\ufffd"


def test_jsonable_and_dump_json_are_strict():
    data = {"a": float("nan"), "b": [float("inf"), 1.5], "c": "x\ud800\x00\n"}
    assert jsonable(data) == {"a": None, "b": [None, 1.5], "c": "x\ufffd\x00\n"}
    text = dump_json(data)
    assert text.isascii()
    assert "\n" not in text and "\r" not in text
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": "x\ufffd\x00\n"}


# -- server-sent events -----------------------------------------------------------

@pytest.mark.parametrize(
    "text",
    [
        pytest.param("\n\nevent: state\ndata: {}\n\n", id="lf-event"),
        pytest.param("\r\revent: gone\r\r", id="cr-event"),
        pytest.param("\r\n\r\nid: 999\r\nretry: 1\r\n\r\n", id="crlf-fields"),
        pytest.param("x\u2028\u2029\x85\x00y", id="unicode-breaks-nul"),
        pytest.param("\ud800 lone", id="surrogate"),
    ],
)
def test_format_event_puts_text_on_one_data_line(text):
    raw = format_event("output", {"text": text, "next": 7}, 7)
    assert raw.endswith(b"\n\n")
    lines = raw[:-2].split(b"\n")
    assert lines[:2] == [b"event: output", b"id: 7"]
    assert len(lines) == 3 and lines[2].startswith(b"data: ")
    assert b"\r" not in raw
    payload = json.loads(lines[2][len(b"data: "):])
    assert payload == {"text": clean_text(text), "next": 7}


def test_format_event_without_id_and_heartbeat():
    expected = b'event: state\ndata: {"done": true}\n\n'
    assert format_event("state", {"done": True}) == expected
    assert HEARTBEAT.startswith(b":") and HEARTBEAT.endswith(b"\n\n")


# -- small pieces -----------------------------------------------------------------

def test_format_time():
    assert format_time(None) == ("", "—")
    assert format_time(math.nan) == ("", "—")
    assert format_time(0.0) == ("1970-01-01T00:00:00.000Z", "1970-01-01 00:00:00 UTC")


@pytest.mark.parametrize(
    ("start", "end", "text"),
    [(None, 5.0, ""), (1.0, None, ""), (0.0, 3.25, "3.2 s"), (0.0, 125.0, "2 min 05 s"),
     (0.0, 3720.0, "1 h 02 min"), (5.0, 1.0, "0.0 s")],
)
def test_format_duration(start, end, text):
    assert format_duration(start, end) == text


@pytest.mark.parametrize(
    ("progress", "parts"),
    [
        (None, ("", "", "")),
        ({"done": 3, "total": 10, "message": "files"}, ("3", "10", "3 / 10 · files")),
        ({"done": 2.5, "total": None, "message": None}, ("", "", "2.5")),
        ({"done": 12, "total": 10, "message": None}, ("10", "10", "12 / 10")),
        ({"done": float("nan"), "total": 0, "message": "m"}, ("", "", "nan · m")),
        ({"done": None, "total": None, "message": "only text"}, ("", "", "only text")),
    ],
)
def test_progress_parts(progress, parts):
    assert progress_parts(progress) == parts


# -- pages ------------------------------------------------------------------------

INLINE = re.compile(r"<script(?![^>]*\bsrc=)|\sstyle=|\son[a-z]+=|javascript:", re.I)


def test_job_page_escapes_every_job_text():
    evil = '<script>alert(1)</script>"\'&'
    page = job_page(
        "/mount",
        job_dict(name=evil, error=evil, result=evil, state="failed", done=True,
                 progress={"done": 1, "total": 2, "message": evil}),
        evil + "\n" + evil, 99,
    )
    assert "<script>alert" not in page
    # title, heading, progress caption, output (twice), result, error
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;&amp;") == 7
    assert not INLINE.search(page)


def test_job_page_nul_and_surrogates_encode():
    page = job_page("", job_dict(name="n\x00\ud800"), "out\x00\udcff", 3)
    assert "\x00" not in page
    page.encode("utf-8")  # no lone surrogate left
    assert "out\ufffd\ufffd" in page and "n\ufffd\ufffd" in page


def test_job_page_links_and_data_come_from_the_root():
    page = job_page("/admin/jobs", job_dict(), "", 0)
    assert f'data-api="/admin/jobs/api/jobs/{ID}"' in page
    assert f'data-events="/admin/jobs/api/jobs/{ID}/events"' in page
    assert f'action="/admin/jobs/api/jobs/{ID}/cancel"' in page
    assert 'href="/admin/jobs/static/status.css"' in page
    assert 'src="/admin/jobs/static/status.js"' in page
    assert 'href="/admin/jobs/"' in page


def test_job_page_refreshes_only_while_running():
    running = job_page("", job_dict(), "", 0)
    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in running
    assert 'data-done="false"' in running
    assert re.search(r'<form id="cancel"[^>]*action="[^"]*"(?! hidden)>', running)
    done = job_page("", job_dict(state="succeeded", done=True, result="42"), "", 0)
    assert "http-equiv" not in done
    assert 'data-done="true"' in done
    assert re.search(r'<form id="cancel"[^>]*hidden>', done)
    assert '<pre id="result" class="result">\n42</pre>' in done


def test_job_page_output_is_rendered_as_a_terminal_shows_it():
    page = job_page("", job_dict(), "\nstart\n10%\r20%\r", 17)
    # The newline after <pre> is eaten by HTML parsers, so the output's own
    # first empty line survives.
    assert (
        '<pre id="output" class="output" data-cr="1">\n\nstart\n'
        '<span id="output-line">20%</span></pre>'
    ) in page
    assert 'data-next="17"' in page


def test_job_page_progress_bar():
    progress = {"done": 3, "total": 4, "message": "m"}
    page = job_page("", job_dict(progress=progress), "", 0)
    assert '<progress id="progress" value="3" max="4"></progress>' in page
    assert 'id="progress-box" hidden' not in page
    page = job_page("", job_dict(), "", 0)
    assert '<div class="progress" id="progress-box" hidden>' in page


def test_list_page_rows_newest_first_with_links():
    jobs = [
        job_dict(id="N" * 43, name="<new>", progress={"done": 1, "total": 3,
                                                     "message": None}),
        job_dict(id="O" * 43, name="old", state="succeeded", done=True),
    ]
    page = list_page("/x", jobs, {"running": 1, "succeeded": 1, "failed": 0})
    assert page.index("N" * 43) < page.index("O" * 43)
    assert f'<a href="/x/{"N" * 43}">&lt;new&gt;</a>' in page
    assert f'<a href="/x/{"O" * 43}">old</a>' in page
    assert '<span class="badge state-succeeded">succeeded</span> 1' in page
    assert "state-failed" not in page  # zero counts are not shown
    assert '<progress value="1" max="3"></progress>' in page
    assert 'content="5"' in page  # a job runs: refresh without script
    assert not INLINE.search(page)


def test_list_page_empty_and_idle():
    page = list_page("", [], {})
    assert "No jobs yet." in page
    assert "http-equiv" not in page


# -- the page's script renders output as the server does ----------------------------

# A minimal DOM and EventSource for status.js, enough to run its job page:
# output events are dispatched by hand, then what the <pre> shows is printed.
NODE_HARNESS = r"""
const fs = require("fs");
const [script, casesJson] = [process.argv[2], process.argv[3]];
const cases = JSON.parse(fs.readFileSync(casesJson, "utf8"));
const results = [];
for (const chunks of cases) {
  const elements = {};
  const element = (id, attrs) => {
    const el = {
      id, textContent: "", hidden: false, className: "", children: [],
      scrollTop: 0, scrollHeight: 0, clientHeight: 0, attrs: attrs || {},
      getAttribute(name) { return name in this.attrs ? this.attrs[name] : null; },
      setAttribute(name, value) { this.attrs[name] = String(value); },
      removeAttribute(name) { delete this.attrs[name]; },
      insertBefore(node) { this.children.push(node); },
      set innerHTML(v) { throw new Error("innerHTML used"); },
    };
    elements[id] = el;
    return el;
  };
  element("job", {"data-api": "/a", "data-events": "/a/events", "data-next": "0",
                  "data-done": "false"});
  element("output", {"data-cr": "0"});
  for (const id of ["output-line", "state", "started", "ended", "duration",
                    "progress", "progress-box", "progress-text", "cancel",
                    "cancel-note", "result-box", "result", "error-box", "error"]) {
    element(id);
  }
  let source = null;
  const listeners = {};
  global.window = {
    EventSource: function (url) {
      source = this;
      this.url = url;
      this.listeners = {};
      this.addEventListener = (name, fn) => { this.listeners[name] = fn; };
      this.close = () => { this.closed = true; };
    },
  };
  global.EventSource = window.EventSource;
  global.setTimeout = () => {};
  global.fetch = () => { throw new Error("no polling expected"); };
  global.document = {
    getElementById: (id) => elements[id] || null,
    createTextNode: (data) => ({ data, appendData(more) { this.data += more; } }),
    querySelectorAll: () => [],
    addEventListener: (name, fn) => { listeners[name] = fn; },
  };
  eval(fs.readFileSync(script, "utf8"));
  listeners.DOMContentLoaded();
  let next = 0;
  for (const chunk of chunks) {
    next += chunk.length;
    source.listeners.output({ data: JSON.stringify({ text: chunk, next }) });
  }
  source.listeners.state({ data: JSON.stringify({
    state: "succeeded", done: true, started_at: 1, ended_at: 2.5, progress: null,
    cancel_requested: false, result: "<b>r</b>", error: null }) });
  const pre = elements.output;
  results.push({
    shown: pre.children.map((n) => n.data).join("")
      + elements["output-line"].textContent,
    url: source.url, closed: !!source.closed, badge: elements.state.textContent,
    result: elements.result.textContent, cancelHidden: elements.cancel.hidden,
  });
}
process.stdout.write(JSON.stringify(results));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_status_js_renders_output_chunks_as_the_server(tmp_path):
    script = Path(render_module.__file__).parent / "static" / "status.js"
    texts = SAMPLES + ["tqdm  0%\r tqdm 50%\r tqdm100%\r\nok\n", "<b>&amp;</b>\x00\n"]
    cases = [[t[i:i + size] for i in range(0, len(t), size)]
             for t in texts for size in (1, 2, 3, 1000)]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "harness.js").write_text(NODE_HARNESS)
    out = subprocess.run(
        ["node", str(tmp_path / "harness.js"), str(script),
         str(tmp_path / "cases.json")],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    results = json.loads(out)
    for chunks, result in zip(cases, results, strict=True):
        assert result["shown"] == render_terminal("".join(chunks)), chunks
        assert result["url"] == "/a/events?since=0"
        assert result["closed"] and result["badge"] == "succeeded"
        assert result["result"] == "<b>r</b>" and result["cancelHidden"] is True
