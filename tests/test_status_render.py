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
    assert (screen.lines, screen.line, screen.pending_cr) == (
        [[("", "one")]], [("", "two")], True)
    screen.feed("three")
    assert (screen.lines, screen.line, screen.pending_cr) == (
        [[("", "one")]], [("", "three")], False)


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
    assert f'href="/admin/jobs/api/jobs/{ID}/output.txt"' in page
    assert f'action="/admin/jobs/api/jobs/{ID}/cancel"' in page
    assert 'href="/admin/jobs/static/status.css"' in page
    assert 'src="/admin/jobs/static/status.js"' in page
    assert 'href="/admin/jobs/"' not in page  # the list: only for who may see it
    listed = job_page("/admin/jobs", job_dict(), "", 0, may_list=True)
    assert '<a class="brand" href="/admin/jobs/">' in listed
    assert '<a class="back" href="/admin/jobs/">' in listed


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
    rows = re.findall(r'<div class="line( current)?" id="L(\d+)">.*?'
                      r'<span class="text">(.*?)</span></div>', page)
    assert rows == [("", "1", ""), ("", "2", "start"), (" current", "3", "20%")]
    assert 'data-cr="1"' in page and 'data-next="17"' in page


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
    assert f'<a class="name" href="/x/{"N" * 43}">&lt;new&gt;</a>' in page
    assert f'<a class="name" href="/x/{"O" * 43}">old</a>' in page
    assert ('<a class="chip" href="/x/?state=succeeded">'
            '<span class="badge state-succeeded">succeeded</span> <b>1</b></a>') in page
    assert "state-failed" not in page  # zero counts are not shown
    assert '<progress value="1" max="3"></progress>' in page
    assert 'content="5"' in page  # a job runs: refresh without script
    assert not INLINE.search(page)


def test_list_page_empty_and_idle():
    page = list_page("", [], {})
    assert "No jobs yet." in page
    assert "http-equiv" not in page


# -- the page's script renders output as the server does ----------------------------

# status.js loaded under node without a DOM: it exposes its terminal
# (window.wsgiBgScreen) and stops. Each case's chunks are fed in order; the
# lines it finished and the one being written are printed.
NODE_HARNESS = r"""
const fs = require("fs");
const [script, casesJson] = [process.argv[2], process.argv[3]];
global.window = {};
eval(fs.readFileSync(script, "utf8"));
const results = JSON.parse(fs.readFileSync(casesJson, "utf8")).map((chunks) => {
  const screen = new window.wsgiBgScreen();
  let lines = [];
  for (const chunk of chunks) { lines = lines.concat(screen.feed(chunk)); }
  if (screen.line.length) { lines.push(screen.line); }
  return lines;
});
process.stdout.write(JSON.stringify(results));
"""

COLOURED = [
    "\x1b[01;34mdir\x1b[0m  file\n\x1b[32m. [100%]\x1b[0m\n",
    "\x1b[1m\x1b[31mE   assert 1 == 2\x1b[0m\nplain\n",
    "\x1b[38;5;208morange\x1b[48;5;19m on blue\x1b[39;49m reset\n",
    "\x1b[38;2;255;0;0mtrue red\x1b[38;2;128;128;128m grey\x1b[m\n",
    "\x1b[3;4;9mall\x1b[23mno-italic\x1b[24;29m\x1b[2mdim\x1b[22m\n",
    "\x1b]0;title\x07\x1b[2K\x1b[1Gcleared\x1b[?25l\x1b(B\n",
    "\x1b[31m 10%\r\x1b[32m 50%\r100%\n",
    "\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ text\n",
    "\x1b[90mbright black\x1b[97;100m white on grey\n\x1b[0m",
    "ESC alone \x1b then text\n",
]


def merged(lines):
    """Lines with neighbouring segments of the same style joined: how a
    piece was cut changes the segments, never what they show."""
    out = []
    for line in lines:
        joined = []
        for classes, text in line:
            if joined and joined[-1][0] == classes:
                joined[-1] = (classes, joined[-1][1] + text)
            else:
                joined.append((classes, text))
        out.append(joined)
    return out


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_status_js_renders_output_chunks_as_the_server(tmp_path):
    script = Path(render_module.__file__).parent / "static" / "status.js"
    texts = (SAMPLES + COLOURED
             + ["tqdm  0%\r tqdm 50%\r tqdm100%\r\nok\n", "<b>&amp;</b>\x00\n"])
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
        screen = Screen()
        screen.feed("".join(chunks))
        shown = merged([[tuple(segment) for segment in line] for line in result])
        assert shown == merged(screen.all_lines()), chunks


# -- ANSI styles ------------------------------------------------------------------

def test_job_page_shows_colours_as_classes_never_escapes():
    raw = ("\x1b[01;34mdir\x1b[0m  <file>\n\x1b[38;5;208m\x1b[1morange"
           "\x1b]0;title\x07\x1b[2K\n\x1b[31mstill red")
    page = job_page("", job_dict(), raw, len(raw))
    assert "\x1b" not in page and "title" not in page.split("<main>")[1]
    assert ('<span class="text"><span class="fg-4 a-b">dir</span>  &lt;file&gt;</span>'
            in page)
    assert '<span class="fg-208 a-b">orange</span>' in page
    # The style in force at the end is handed to the script, which goes on.
    assert '<span class="fg-1 a-b">still red</span>' in page  # bold carries on
    assert 'data-sgr="1;38;5;1"' in page


def test_job_page_hands_a_cut_escape_back_to_the_script():
    raw = "ok\n\x1b[3"
    page = job_page("", job_dict(), raw, 100)
    assert 'data-next="97"' in page  # the script reads "\x1b[3" again


def test_only_known_classes_reach_the_page(monkeypatch):
    from wsgi_bg.status.render import _segments
    assert str(_segments([("fg-1 a-b", "x"), ('x" onclick="y', "z")])) == (
        '<span class="fg-1 a-b">x</span>z')


def test_ansi_css_styles_every_class():
    from wsgi_bg.status.render import ansi_css
    from wsgi_bg.terminal import STYLE_CLASSES
    css = ansi_css()
    for name in STYLE_CLASSES:
        assert f".output .{name}{{" in css, name
    assert ".output .fg-196{color:#ff0000}" in css
    assert ".output .bg-232{background-color:#080808}" in css


# -- job page details ---------------------------------------------------------------

def test_running_job_page_counts_elapsed_time_from_the_server_clock():
    page = job_page("", job_dict(), "", 0, now=1_700_000_031.5)
    assert '<dt id="duration-label">Elapsed</dt><dd id="duration">30.5 s</dd>' in page
    assert 'data-now="1700000031.5"' in page and 'data-started="1700000001.0"' in page
    done = job_page("", job_dict(state="succeeded", done=True,
                                 ended_at=1_700_000_004.0), "", 0, now=2e9)
    assert '<dt id="duration-label">Duration</dt><dd id="duration">3.0 s</dd>' in done


def test_a_job_that_has_not_started_says_so_in_its_duration_as_in_started():
    queued = job_page("", job_dict(state="queued", started_at=None), "", 0, now=2e9)
    assert '<dt>Started</dt><dd><time id="started">—</time></dd>' in queued
    assert '<dt id="duration-label">Elapsed</dt><dd id="duration">—</dd>' in queued
    never = job_page("", job_dict(state="cancelled", done=True, started_at=None,
                                  ended_at=1_700_000_004.0), "", 0, now=2e9)
    assert '<dt id="duration-label">Duration</dt><dd id="duration">—</dd>' in never


@pytest.mark.parametrize(("args", "shown"), [
    pytest.param("(2026, month=<b>)", "<code>(2026, month=&lt;b&gt;)</code>",
                 id="shown"),
    pytest.param(None, "hidden (<code>show_args=False</code>)", id="hidden"),
])
def test_job_page_shows_the_call_arguments(args, shown):
    page = job_page("", job_dict(args=args), "", 0)
    assert "<dt>Arguments</dt>" in page and shown in page
    assert "Arguments" not in job_page("", job_dict(), "", 0)  # an older record


@pytest.mark.parametrize(("how", "text"), [
    pytest.param("killed", "killed: it was still running when its grace ran out",
                 id="killed"),
    pytest.param("stopped", "stopped by itself within its grace", id="stopped"),
    pytest.param("before_start", "cancelled before it started", id="before-start"),
])
def test_job_page_tells_how_a_cancel_went(how, text):
    page = job_page("", job_dict(state="cancelled", done=True, cancel_requested=True,
                                 cancel_requested_at=1_700_000_002.0,
                                 cancelled_how=how), "", 0)
    assert re.search(r'<dt id="cancel-dt">Cancel</dt><dd id="cancel-info">requested'
                     r' <time id="cancel-at" datetime="2023-11-14T22:13:22.000Z">'
                     r"[^<]*</time><span id=\"cancel-how\"> · " + re.escape(text), page)
    assert '<dt id="cancel-dt" hidden>' in job_page("", job_dict(), "", 0)


def test_error_summary():
    from wsgi_bg.status.render import error_summary
    tb = ('Traceback (most recent call last):\n  File "x.py", line 1, in f\n'
          "    raise ValueError('no')\nValueError: no\n")
    assert error_summary(tb) == "ValueError: no"
    assert error_summary("timed out after 5 s\nmore") == "timed out after 5 s"
    assert error_summary(None) == "" and error_summary("\n\n") == ""


def test_list_page_paging_links_keep_the_filter():
    jobs = [job_dict(id=f"{n:043d}", state="failed", done=True,
                     error="Traceback (most recent call last):\nKeyError: 'k'")
            for n in range(2)]
    page = list_page("/x", jobs, {"failed": 120}, state="failed", search="a b",
                     page=2, per_page=2, total=120)
    assert '<a rel="prev" href="/x/?state=failed&amp;q=a+b">← Newer</a>' in page
    assert ('<a rel="next" href="/x/?state=failed&amp;q=a+b&amp;page=3">Older →</a>'
            in page)
    assert "3–4 of 120 · page 2 of 60" in page
    assert '<div class="error-line">KeyError: &#39;k&#39;</div>' in page
    assert '<a class="chip on" href="/x/?state=failed&amp;q=a+b">' in page
    assert '<option value="failed" selected>' in page
    assert 'value="a b"' in page


def test_error_page_says_why_and_what_to_do():
    from wsgi_bg.status.render import error_page
    page = error_page("/j", 503, "Service Unavailable", "store <down>",
                      retry_after="5")
    assert "<h1>Service Unavailable</h1>" in page and "store &lt;down&gt;" in page
    assert "retry after 5 seconds" in page
    assert 'href="/j/static/status.css"' in page
    assert not INLINE.search(page)


# -- a page's cost is bounded whatever the output ------------------------------------
def coloured_output(size: int) -> str:
    """``size`` characters of colour changes, one character each (ESC[3Nm +
    a letter), 80 letters a line: ~175k changes per MiB."""
    parts, n, i = [], 0, 0
    while n < size:
        part = f"\x1b[3{i % 8}m{chr(97 + i % 26)}" + ("\n" if i % 80 == 79 else "")
        parts.append(part)
        n, i = n + len(part), i + 1
    return "".join(parts)


@pytest.mark.parametrize("kind", ["coloured", "plain", "one-line"])
def test_a_page_of_a_mebibyte_of_output_is_bounded(kind):
    output = {
        "coloured": coloured_output(1 << 20),
        "plain": "".join(f"{n:07d} " + "x" * 72 + "\n" for n in range(13_107)),
        "one-line": "\x1b[32m" + "y" * (1 << 20) + "\n",
    }[kind]
    lines = output.count("\n") + (not output.endswith("\n"))
    page = job_page("/_jobs", job_dict(), output, len(output))
    assert len(page.encode()) < 400_000  # 5 MB drawn whole, coloured
    assert page.count("<span class=\"fg-") <= render_module.PAGE_OUTPUT_CHARS // 5
    assert page.count('class="line') <= render_module.PAGE_OUTPUT_CHARS // 80 + 1
    # The last line drawn has its number in the whole output; the bar says
    # what comes before and links the raw output.
    assert f'id="L{lines}"' in page and f'id="L{lines + 1}"' not in page
    if kind == "one-line":
        assert 'data-first="1"' in page
        assert "The first 983,046 characters of this line (960 KiB) not shown" in page
    else:
        first = int(re.search(r'data-first="(\d+)"', page).group(1))
        assert first > 1 and f'id="L{first}"' in page
        assert f'id="L{first - 1}"' not in page
        assert re.search(rf'<p id="earlier" class="earlier" data-lines="{first - 1}">'
                         rf'<span class="note">{first - 1:,} earlier lines \(', page)
    assert '<button type="button" id="show-earlier" hidden>Show them</button>' in page
    assert "not shown here; Raw output has them." in page


@pytest.mark.parametrize("line", [
    pytest.param("\n", id="empty-lines"),
    pytest.param("x\n", id="one-letter-lines"),
    pytest.param("\x1b[31m\n", id="colour-only-lines"),
    pytest.param("\r\n", id="crlf-lines"),
])
def test_a_page_of_a_mebibyte_of_short_lines_is_bounded(line):
    # Each line is a row of markup: 64 Ki empty lines drew 9.5 MB of HTML.
    output = line * ((1 << 20) // len(line))
    lines = output.count("\n")
    page = job_page("/_jobs", job_dict(), output, len(output))
    assert len(page.encode()) < 400_000
    rows = page.count('class="line')
    assert rows == render_module.PAGE_OUTPUT_LINES
    first = int(re.search(r'data-first="(\d+)"', page).group(1))
    assert first == lines - rows + 1
    assert f'id="L{lines}"' in page and f'id="L{first - 1}"' not in page
    assert re.search(rf'data-lines="{first - 1}"><span class="note">{first - 1:,}'
                     r" earlier lines \(", page)
    assert '<button type="button" id="show-earlier" hidden>Show them</button>' in page


def test_a_short_output_is_drawn_whole_without_the_bar():
    output = coloured_output(10_000)
    page = job_page("", job_dict(), output, len(output))
    assert 'id="earlier"' not in page and 'data-first="1"' in page
    assert 'id="L1"' in page


def test_runs_of_one_style_make_one_span():
    page = job_page("", job_dict(), "\x1b[31mab\x1b[31mcd\x1b[0m\x1b[0mef\n", 30)
    assert '<span class="text"><span class="fg-1">abcd</span>ef</span>' in page
