"""The status pages in a real browser: Debian's Chromium driven by Playwright.

What a person sees: lines appearing live, colours, cancel, the raw download,
a lost job's message, the list's filter and paging, the phone width, and no
console error or CSP violation on any page. Skipped, with the reason, where
Chromium or Playwright is missing (CI installs both).
"""
import pickle
import shutil
import threading
import time
import urllib.request
import uuid
from contextlib import contextmanager

import pytest
from werkzeug.serving import make_server

import statusfuncs
from bench.suite import FourThreads  # a server with 4 request threads
from conftest import TEST_SECRET_KEY
from helpers import wait_for
from rq_workers import RQWorkers
from test_status import fake_job, hello_app
from wsgi_bg.auth import allow_all
from wsgi_bg.jobs import new_job_id
from wsgi_bg.stores import Ending

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt install"
                       " chromium)"),
    pytest.mark.memory_store_only,  # the pages, not the stores, are under test
    pytest.mark.timeout(120),
]

ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@contextmanager
def chromium():
    """Chromium, driven by Playwright, closed on the way out."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser(make_mw):
    # One browser per test, set up after the middleware fixture and so ended
    # before it checks that no process is left: Chromium and Playwright's
    # driver are this test process's children too.
    with chromium() as browser:
        yield browser


@contextmanager
def serving(app, server=None):
    """``app`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    server = server or make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class Console:
    """Console errors, uncaught exceptions and CSP violations of pages."""

    def __init__(self):
        self.errors = []
        self.expected = []

    def expect(self, text):
        """Errors holding ``text`` are expected (Chromium logs every 404)."""
        self.expected.append(text)

    def watch(self, page):
        page.on("console", lambda msg: msg.type == "error" and not any(
            text in msg.text for text in self.expected) and self.errors.append(
            f"{page.url}: {msg.text}"))
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        return page


@pytest.fixture
def console():
    watched = Console()
    yield watched
    assert watched.errors == []


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  accept_downloads=True)
    yield context
    context.close()


@pytest.fixture
def page(context, console):
    return console.watch(context.new_page())


@pytest.fixture
def mw(make_mw):
    return make_mw(hello_app, authorize=allow_all)


def text_of(page, selector):
    try:
        return page.inner_text(selector, timeout=1000)
    except sync_api.Error:
        return ""


def wait_text(page, selector, expected, timeout=15.0):
    """Poll what a person reads in ``selector`` until it holds ``expected``."""
    return wait_for(lambda: expected in text_of(page, selector), timeout,
                    interval=0.05, message=f"{expected!r} in {selector}")


def colour(page, selector):
    return page.locator(selector).first.evaluate("el => getComputedStyle(el).color")


# -- the job page ---------------------------------------------------------------------

def test_lines_appear_live_in_colour_and_time_ticks(mw, page):
    job = fake_job(mw, output="\x1b[1mstarting\x1b[0m\n")
    store = mw.engine.store
    with serving(mw) as base:
        page.goto(f"{base}/_jobs/{job.id}")
        wait_text(page, "#output", "starting")
        assert text_of(page, "#duration-label") == "Elapsed"
        first = text_of(page, "#duration")
        wait_for(lambda: text_of(page, "#duration") not in ("", first), 5,
                 message="the elapsed time to tick")
        store.relay(job.id, "\x1b[32mPASSED\x1b[0m tests/test_a.py\n"
                            "\x1b[38;5;208morange\x1b[0m \x1b[31;1mE   failed\n", None)
        wait_text(page, "#output", "E   failed")
        shown = text_of(page, "#output")
        assert "\x1b" not in shown and "[32m" not in shown
        assert colour(page, "#L2 .fg-2") == "rgb(63, 185, 80)"
        assert colour(page, "#L3 .fg-208") == "rgb(255, 135, 0)"
        assert colour(page, "#L3 .fg-1") == "rgb(255, 123, 114)"
        # A redrawn progress bar keeps its latest state only.
        store.relay(job.id, "\x1b[2K 10%\r 60%\r100%\n", None)
        wait_text(page, "#output", "100%")
        assert "60%" not in text_of(page, "#output")
        store.finish(job.id, Ending("succeeded", pickle.dumps(42)))
        wait_text(page, "#state", "succeeded")
        assert text_of(page, "#duration-label") == "Duration"
        assert not page.is_visible("#cancel")
        assert not page.is_visible("#follow")
        # Line numbers link to their line.
        page.click("#L2 a.ln")
        assert page.url.endswith("#L2")
        # Reloaded, the server draws the same lines as the script did.
        live = text_of(page, "#output")
        page.reload()
        assert text_of(page, "#output") == live


def test_a_line_link_opens_at_that_line_without_following(mw, page):
    job = fake_job(mw, output="".join(f"line {n}\n" for n in range(1, 400)))
    with serving(mw) as base:
        page.goto(f"{base}/_jobs/{job.id}#L120")
        wait_for(lambda: page.locator("#L120").is_visible(), 5)
        assert page.evaluate("document.querySelector('#L120:target') !== null")
        assert not page.is_checked("#follow")
        box = page.locator("#output").bounding_box()
        line = page.locator("#L120").bounding_box()
        middle = line["y"] + line["height"] / 2
        assert box["y"] <= middle <= box["y"] + box["height"]  # shown in the panel


def test_cancel_from_the_page(mw, page, tmp_path):
    job = mw.submit(statusfuncs.gated, str(tmp_path / "gate"))
    with serving(mw) as base:
        page.goto(f"{base}/_jobs/{job.id}")
        wait_text(page, "#output", "started")
        page.click("#cancel button")
        wait_text(page, "#state", "cancelled", timeout=30)
        assert not page.is_visible("#cancel")
        assert job.state == "cancelled"


def test_run_again_from_the_page(mw, page, tmp_path):
    gate = tmp_path / "gate"
    job = mw.submit(statusfuncs.gated, str(gate), before="first run\n")
    with serving(mw) as base:
        page.goto(f"{base}/_jobs/{job.id}")
        wait_text(page, "#output", "first run")
        assert not page.is_visible("#rerun")  # running: nothing to run again
        gate.touch()
        wait_text(page, "#state", "succeeded", timeout=30)
        assert page.is_visible("#rerun") and not page.is_visible("#cancel")
        page.click("#rerun button")
        # On to the new job's page, which runs the same call and links back.
        wait_for(lambda: job.id not in page.url, 15, message="the new job's page")
        new_id = page.url.rsplit("/", 1)[1]
        wait_text(page, "#state", "succeeded", timeout=30)
        assert text_of(page, "#output").startswith("first run")
        assert text_of(page, "#rerun-of") == job.id
        assert page.is_visible("#rerun")
        page.click("#rerun-of")
        wait_for(lambda: page.url.endswith(job.id), 15, message="the old page")
        assert text_of(page, "#rerun-as") == new_id
        assert mw.get_job(new_id).result == "done"


def test_raw_output_downloads(mw, page):
    raw = "\x1b[32mgreen\x1b[0m\n10%\r100%\n"
    job = fake_job(mw, output=raw, state="succeeded", name="tasks.report")
    with serving(mw) as base:
        page.goto(f"{base}/_jobs/{job.id}")
        with page.expect_download() as info:
            page.click("#raw")
        download = info.value
        assert download.suggested_filename == f"tasks.report-{job.id[:8]}.txt"
        with open(download.path(), encoding="utf-8", newline="") as f:
            assert f.read() == raw


def test_a_page_whose_job_is_gone_says_so(mw, page, console, monkeypatch):
    console.expect("status of 404")
    job = fake_job(mw, output="working\n")
    with serving(mw) as base:
        page.goto(f"{base}/_jobs/{job.id}")
        wait_text(page, "#output", "working")
        assert page.is_visible("#cancel")
        store = mw.engine.store
        monkeypatch.setattr(store, "get", lambda job_id: None)
        monkeypatch.setattr(store, "view", lambda job_id, since: None)
        wait_text(page, "#lost", "no longer on the server")
        assert text_of(page, "#state") == "lost"
        assert not page.is_visible("#cancel")
        assert "working" in text_of(page, "#output")  # what it had stays


def test_a_lost_connection_is_told_and_recovered(mw, context, console):
    page = console.watch(context.new_page())
    job = fake_job(mw, output="one\n")
    with serving(mw) as base:
        page.goto(f"{base}/_jobs/{job.id}")
        wait_text(page, "#output", "one")
        console.expect("ERR_INTERNET_DISCONNECTED")  # the failed polls
        context.set_offline(True)
        wait_text(page, "#lost", "connection to the server is lost")
        assert text_of(page, "#state") == "unknown"
        assert not page.is_visible("#cancel")
        mw.engine.store.relay(job.id, "two\n", None)
        context.set_offline(False)
        wait_text(page, "#output", "two", timeout=20)
        wait_for(lambda: not page.is_visible("#lost"), 5)
        assert text_of(page, "#state") == "running"
        assert page.is_visible("#cancel")


def test_error_pages_in_the_same_look(mw, page, console):
    console.expect("status of 404")
    with serving(mw) as base:
        response = page.goto(f"{base}/_jobs/{'A' * 43}")
        assert response.status == 404
        assert text_of(page, "h1") == "Not Found"
        assert "Start the work again" in text_of(page, ".hint")
        # The same style sheet as the other pages.
        assert page.locator("header.top").evaluate(
            "el => getComputedStyle(el).borderBottomStyle") == "solid"


# -- the list -----------------------------------------------------------------------

def test_list_filters_searches_and_pages(mw, page):
    for n in range(130):
        failed = n % 3 == 0
        fake_job(mw, name=f"tasks.job{n}", state="failed" if failed else "succeeded",
                 error="Traceback (most recent call last):\nKeyError: 'x'\n"
                 if failed else None, result=n)
    with serving(mw) as base:
        page.goto(f"{base}/_jobs/")
        assert "1–50 of 130" in text_of(page, "#paging")
        assert page.locator("tr.job").count() == 50
        page.click("#paging a[rel=next]")
        wait_text(page, "#paging", "51–100 of 130")
        assert "tasks.job79" in text_of(page, "table.jobs")
        page.click("nav.counts a:has-text('failed')")
        wait_text(page, "#paging", "of 44")
        rows = text_of(page, "table.jobs")
        assert "succeeded" not in rows.replace("Succeeded", "")
        assert "KeyError: 'x'" in rows
        page.fill("input[name=q]", "job12")
        page.click("form.filters button")
        wait_text(page, "#paging", "1–5 of 5")
        names = page.locator("td.what a.name").all_inner_texts()
        assert names == ["tasks.job129", "tasks.job126", "tasks.job123", "tasks.job120",
                         "tasks.job12"]


# -- the phone width ----------------------------------------------------------------

@pytest.mark.parametrize("which", ["list", "job", "error"])
def test_no_horizontal_scroll_at_390_px(mw, context, console, which):
    page = console.watch(context.new_page())
    page.set_viewport_size({"width": 390, "height": 844})
    long_name = "reports.build_the_quarterly_report_for_every_region_" * 2
    job = fake_job(mw, name=long_name, state="failed", output="x" * 500 + "\n" + (
        "\x1b[31mword \x1b[0m" * 80) + "\n", error="E" * 300,
        progress={"done": 3, "total": 7, "message": "m" * 80})
    for n in range(20):
        fake_job(mw, name=f"tasks.n{n}", state="running", progress={"done": n,
                 "total": 20, "message": "copying files"})
    url = {"list": "/_jobs/", "job": f"/_jobs/{job.id}", "error": "/_jobs/" + "B" * 43}
    console.expect("status of 404")
    with serving(mw) as base:
        page.goto(base + url[which])
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{which} page is {width} px wide in a 390 px viewport"


# -- open pages cost no thread ---------------------------------------------------------

@pytest.mark.timeout(180)
def test_sixteen_open_pages_leave_a_four_thread_server_free(mw, context, console):
    jobs = [fake_job(mw, output="begin\n") for _ in range(16)]
    with serving(mw, FourThreads(mw)) as base:
        pages = [console.watch(context.new_page()) for _ in jobs]
        for page, job in zip(pages, jobs, strict=True):
            page.goto(f"{base}/_jobs/{job.id}", wait_until="domcontentloaded")
        for page in pages:
            wait_text(page, "#output", "begin")
        time.sleep(1)  # let every page settle into following its job
        for _ in range(5):
            started = time.monotonic()
            with urllib.request.urlopen(f"{base}/", timeout=5) as answer:
                assert answer.read() == b"hello from the app"
            assert time.monotonic() - started < 1.0
        for job in jobs:
            mw.engine.store.relay(job.id, "end\n", None)
            mw.engine.store.finish(job.id, Ending("succeeded", pickle.dumps(None)))
        for page in pages:  # every page stayed live
            wait_text(page, "#state", "succeeded", timeout=20)
            assert "end" in text_of(page, "#output")
        for page in pages:
            page.close()


def test_a_long_output_shows_its_end_and_loads_the_rest_on_demand(mw, page):
    # 5,000 coloured lines, ~200 KiB: the page draws the last 64 KiB only.
    output = "".join(f"\x1b[3{n % 8}mline {n}\x1b[0m " + "x" * 30 + "\n"
                     for n in range(1, 5001))
    job = fake_job(mw, output=output)
    with serving(mw) as base:
        page.goto(f"{base}/_jobs/{job.id}")
        wait_text(page, "#output", "line 5000")
        first = int(page.get_attribute("#output", "data-first"))
        assert first > 1 and page.locator("#L1").count() == 0
        note = text_of(page, "#earlier")
        assert f"{first - 1:,} earlier lines" in note and "Raw output has them" in note
        # Lines written now are numbered on from the last one.
        mw.engine.store.relay(job.id, "\x1b[32mline 5001\x1b[0m\n", None)
        wait_text(page, "#L5001", "line 5001")
        page.click("#show-earlier")
        wait_text(page, "#L1", "line 1 ")
        assert not page.is_visible("#earlier")
        assert page.locator("#output .line").count() == 5001
        assert text_of(page, f"#L{first - 1}").startswith(f"line {first - 1} ")
        assert colour(page, "#L1 .fg-1") == "rgb(255, 123, 114)"
        # A link to a line not drawn loads the rest, then shows that line.
        page.goto("about:blank")
        page.goto(f"{base}/_jobs/{job.id}#L7")
        assert page.locator("#earlier").count() in (0, 1)
        wait_for(lambda: page.locator("#L7").is_visible(), 10)
        assert page.evaluate("document.querySelector('#L7:target') !== null")


# -- the list's layout ----------------------------------------------------------------

def list_of_every_state(mw):
    fake_job(mw, name="deploy.build_release", state="running",
             progress={"done": 37, "total": 60, "message": "compressing assets"})
    fake_job(mw, name="media.transcode", state="queued")
    for state in ("succeeded", "failed", "cancelled", "timed_out", "crashed"):
        fake_job(mw, name=f"tasks.{state}", state=state,
                 error=None if state == "succeeded" else
                 "RuntimeError: 1 test failed: tests/test_orders.py::test_refund_total")


def test_list_names_line_up_at_390_px(mw, context, console):
    """Badges differ in width ('queued', 'timed_out'); the names after them
    start at one position, as in a column."""
    list_of_every_state(mw)
    page = console.watch(context.new_page())
    page.set_viewport_size({"width": 390, "height": 844})
    with serving(mw) as base:
        page.goto(f"{base}/_jobs/")
        starts = {round(box["x"]) for box in (
            link.bounding_box() for link in page.locator("td.what a.name").all())}
        assert len(starts) == 1, f"names start at x = {sorted(starts)}"


def test_list_progress_text_on_one_line_at_1280_px(mw, page):
    list_of_every_state(mw)
    with serving(mw) as base:
        page.goto(f"{base}/_jobs/")
        text = page.locator("td.progress-cell .progress-text")
        assert text.inner_text() == "37 / 60 · compressing assets"
        height = text.bounding_box()["height"]
        line = page.evaluate("parseFloat(getComputedStyle(document.querySelector("
                             "'td.progress-cell .progress-text')).lineHeight)")
        assert height < 1.5 * line, f"the progress text wraps: {height} px high"


def test_a_retrying_job_counts_down_to_its_next_attempt(mw, page):
    """A job of ``@background(retries=3)`` whose first attempt failed: its
    page says which attempt comes, counts down to it, lists the earlier
    error, and follows the next attempt to its end."""
    store = mw.engine.store
    job_id = new_job_id()
    store.create({
        "id": job_id, "name": "shop.sync_orders", "created_at": time.time(),
        "started_at": None, "ended_at": None, "result": None, "error": None,
        "progress": None, "timeout": None, "cancel_requested": False,
        "cancel_grace": None, "url": None, "pid": None, "args": None,
        "retries": 3, "retry_delay": 4.0, "retry_delay_max": 60.0,
        "retry_crashed": False, "attempt": 1, "retry_at": None, "errors": []}, 10)
    store.start(job_id, 0)
    store.relay(job_id, "fetching\n", None)
    with serving(mw) as base:
        page.goto(f"{base}/_jobs/{job_id}")
        wait_for(lambda: text_of(page, "#duration").endswith(" s"), 5,
                 message="attempt 1's elapsed time to show")
        store.finish(job_id, Ending("failed", error="ConnectionError: refused"))
        wait_text(page, "#attempt-info", "2 of 4 · next attempt in")
        # Waiting for attempt 2, not started: no elapsed time, as Started says.
        wait_for(lambda: text_of(page, "#duration") == "—", 5,
                 message="the elapsed time to go while the retry waits")
        shown = text_of(page, "#next-attempt")
        wait_for(lambda: text_of(page, "#next-attempt") not in ("", shown), 5,
                 message="the wait to count down")
        assert "Attempt 1 · failed" in text_of(page, "#attempts-box")
        assert "ConnectionError: refused" in text_of(page, "#attempts-box")
        wait_for(lambda: job_id in store.claim_retries()[0], 10,
                 message="the retry to be due")
        store.start(job_id, 0)
        store.relay(job_id, "fetching again\n", None)
        store.finish(job_id, Ending("succeeded", pickle.dumps(1)))
        wait_text(page, "#state", "succeeded")
        assert text_of(page, "#attempt-info") == "2 of 4"
        assert "──── attempt 2 of 4 ────" in text_of(page, "#output")
        assert "fetching again" in text_of(page, "#output")


# -- the RQ runner: a job no worker listens for ------------------------------------

@pytest.fixture
def rq_context(rq_mw, console):
    # After rq_mw: the browser ends before its middleware checks that no
    # process is left.
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield context
        context.close()


@pytest.mark.redis
@pytest.mark.timeout(180)
def test_the_no_rq_worker_notice_comes_and_goes_on_an_open_page(
        rq_mw, rq_context, console, redis_server, tmp_path):
    """A job queued where no RQ worker listens: its open page shows the
    notice, with the command that starts a worker, as soon as the server
    says it, and hides it once the job is cancelled (from the page's
    button, or elsewhere) or a worker starts it, then follows the job to
    its end; never reloaded."""
    expect = sync_api.expect
    # No worker listens there; a long name, as a namespace may give.
    queue = f"wsgi_bg.orders_service_production_reporting_{uuid.uuid4().hex[:8]}"
    mw = rq_mw(queue=queue, authorize=allow_all)
    gate = tmp_path / "gate"

    def opened(job):
        page = console.watch(rq_context.new_page())
        page.goto(f"{base}/_jobs/{job.id}")
        # Opened before the notice (the server sets it once a job has waited
        # 5 s): the page's script must show it.
        assert page.locator("#job-notice").is_hidden()
        page.evaluate("window.opened = true")  # gone if the page reloads
        return page

    with serving(mw) as base:
        job = mw.submit(statusfuncs.gated, str(gate))
        page = opened(job)
        dropped = mw.submit(statusfuncs.gated, str(gate))
        clicked, watching = opened(dropped), opened(dropped)  # two tabs
        for each in (page, clicked, watching):
            notice = each.locator("#job-notice")
            expect(notice).to_be_visible(timeout=30_000)
            expect(notice).to_contain_text(f"no RQ worker listens on queue {queue}")
            expect(notice).to_contain_text(
                f"rq worker -w wsgi_bg.rq_worker.Worker {queue}")
            expect(each.locator("#state")).to_have_text("queued")

        # On a phone the notice wraps, the queue's long name too.
        page.set_viewport_size({"width": 390, "height": 844})
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide in a 390 px viewport"
        box = page.locator("#job-notice").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
        assert page.locator("#job-notice").evaluate(
            "el => el.scrollWidth <= el.clientWidth"), "the notice overflows its box"
        page.set_viewport_size({"width": 1280, "height": 900})

        # Cancelled from the page's button (a form: its tab comes back from
        # the POST); the other tab sees it live. The notice goes in both.
        clicked.click("#cancel button")
        for each in (clicked, watching):
            expect(each.locator("#state")).to_have_text("cancelled", timeout=15_000)
            expect(each.locator("#job-notice")).to_be_hidden()
            expect(each.locator("#cancel-info")).to_contain_text(
                "cancelled before it started")
            expect(each.locator("#cancel")).to_be_hidden()
            # Never started: no duration, as "Started" says.
            expect(each.locator("#duration")).to_have_text("—")
        assert watching.evaluate("window.opened") is True

        # A worker starts the other job: its notice goes, its page follows it.
        expect(page.locator("#job-notice")).to_be_visible()
        workers = RQWorkers(redis_server.url, queue, TEST_SECRET_KEY, count=1).start()
        try:
            expect(page.locator("#state")).to_have_text("running", timeout=30_000)
            expect(page.locator("#job-notice")).to_be_hidden()
            expect(page.locator("#output")).to_contain_text("started")
            gate.touch()
            expect(page.locator("#state")).to_have_text("succeeded", timeout=30_000)
            expect(page.locator("#output")).to_contain_text("finished")
            expect(page.locator("#result")).to_have_text("'done'")
            expect(page.locator("#job-notice")).to_be_hidden()
        finally:
            workers.stop()
        assert page.evaluate("window.opened") is True
