"""Take the screenshots in docs/screenshots/ (headless Chromium, Playwright).

    .venv/bin/python docs/screenshots/take.py [/usr/bin/chromium]

Jobs are written straight into the middleware's store (nothing runs), so the
pictures are the same on every run.
"""
import hashlib
import pickle
import sys
import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

from wsgi_bg import BackgroundMiddleware, allow_all
from wsgi_bg.jobs import new_job_id
from wsgi_bg.stores import Ending

HERE = Path(__file__).parent
CHROMIUM = sys.argv[1] if len(sys.argv) > 1 else "/usr/bin/chromium"

PYTEST = (
    "\x1b[1m============================= test session starts"
    " ==============================\x1b[0m\n"
    "platform linux -- Python 3.11.7, pytest-8.3.3\n"
    "collected 6 items\n\n"
    "tests/test_orders.py \x1b[32m.\x1b[0m\x1b[32m.\x1b[0m\x1b[32m.\x1b[0m"
    "\x1b[31mF\x1b[0m\x1b[32m.\x1b[0m\x1b[32m.\x1b[0m\x1b[31m [100%]\x1b[0m\n\n"
    "=================================== FAILURES"
    " ===================================\n"
    "\x1b[31m\x1b[1m_____________________________ test_refund_total"
    " _____________________________\x1b[0m\n"
    "\x1b[1m\x1b[31mE       assert 41.99 == 42.0\x1b[0m\n"
    "\x1b[31mFAILED\x1b[0m tests/test_orders.py::\x1b[1mtest_refund_total\x1b[0m\n"
    "\x1b[31m========================= \x1b[31m\x1b[1m1 failed\x1b[0m,"
    " \x1b[32m5 passed\x1b[0m\x1b[31m in 0.42s\x1b[0m\x1b[31m"
    " ==========================\x1b[0m\n"
)
LS = ("\x1b[01;34mbuild\x1b[0m  \x1b[01;34mdocs\x1b[0m  \x1b[01;32mmanage.py\x1b[0m"
      "  README.md  \x1b[01;31mrelease.tar.gz\x1b[0m\n")


def not_found(environ, start_response):
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


def add(store, name, state, output="", progress=None, error=None, result=None,
        age=0.0, took=3.0):
    job_id = new_job_id()
    now = time.time() - age
    store.create({
        "id": job_id, "name": name, "created_at": now - 1, "started_at": None,
        "ended_at": None, "result": None, "error": None, "progress": None,
        "timeout": None, "cancel_requested": False, "cancel_grace": None,
        "url": None, "pid": None, "args": None,
    }, 1000)
    if state != "queued":
        store.start(job_id, 0)
    if output or progress:
        store.relay(job_id, output, progress)
    if state not in ("queued", "running"):
        store.finish(job_id, Ending(state, pickle.dumps(result) if result else None,
                                    error))
    return job_id


def add_retrying(store):
    """A job of ``@background(retries=3, retry_delay=30, unique=True)`` whose first
    attempt failed: "attempt 2 of 4 · next attempt in 28 s"."""
    job_id = new_job_id()
    now = time.time()
    store.create({
        "id": job_id, "name": "shop.sync_orders", "created_at": now - 2,
        "started_at": None, "ended_at": None, "result": None, "error": None,
        "progress": None, "timeout": None, "cancel_requested": False,
        "cancel_grace": None, "url": None, "pid": None, "args": "(shop_id=42)",
        "retries": 3, "retry_delay": 30.0, "retry_delay_max": 3600.0,
        "retry_crashed": False, "attempt": 1, "retry_at": None, "errors": [],
        # @background(unique=True) too: the page says so, never the key.
        "unique": hashlib.sha256(b"shop.sync_orders:(shop_id=42)").hexdigest(),
    }, 1000)
    store.start(job_id, 0)
    store.relay(job_id, "fetching orders since 2026-12-05\nGET"
                " https://api.example.com/orders?page=1\n", None)
    store.finish(job_id, Ending(
        "failed", error="Traceback (most recent call last):\n  File \"shop.py\","
        " line 31, in sync_orders\n    page = client.orders(since, page=1)\n"
        "ConnectionError: api.example.com: connection refused\n"))
    return job_id


def main():
    mw = BackgroundMiddleware(not_found, authorize=allow_all)
    store = mw.engine.store
    for n in range(8):
        add(store, "reports.monthly", "succeeded", "done\n", result={"rows": n})
    failed = add(store, "tests.run_suite", "failed", "$ pytest\n" + PYTEST,
                 error="Traceback (most recent call last):\n  File \"ci.py\","
                 " line 12, in run_suite\n    raise SystemExit(1)\n"
                 "RuntimeError: 1 test failed: tests/test_orders.py::test_refund_total\n")
    add(store, "mail.send_digest", "cancelled", "sending 120 mails\n")
    add(store, "media.transcode", "queued")
    running = add(store, "deploy.build_release", "running",
                  "$ ls --color\n" + LS + "$ pip install -r requirements.txt\n"
                  "Collecting werkzeug>=3.0\n  Downloading werkzeug-3.1.3 (224 kB)\n"
                  "\x1b[32mSuccessfully installed werkzeug-3.1.3\x1b[0m\n"
                  "$ pytest -q\n" + PYTEST.replace("1 failed", "0 failed")
                  + "\x1b[33mwarning:\x1b[0m cache is cold\ncompressing assets",
                  progress={"done": 37, "total": 60, "message": "compressing assets"})
    retrying = add_retrying(store)
    server = make_server("127.0.0.1", 0, mw, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/_jobs"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu"])
        wide = browser.new_page(viewport={"width": 1280, "height": 820})
        for name, url in (("job-running", f"/{running}"), ("job-failed", f"/{failed}"),
                          ("job-retrying", f"/{retrying}"), ("list", "/")):
            wide.goto(base + url)
            wide.wait_for_timeout(1500)  # the elapsed time ticks
            wide.screenshot(path=str(HERE / f"{name}.png"))
        phone = browser.new_page(viewport={"width": 390, "height": 844},
                                 device_scale_factor=2)
        phone.goto(f"{base}/{running}")
        phone.wait_for_timeout(1500)
        phone.screenshot(path=str(HERE / "phone-job.png"))
        phone.goto(f"{base}/{retrying}")
        phone.wait_for_timeout(1500)
        phone.screenshot(path=str(HERE / "phone-retrying.png"))
        phone.goto(f"{base}/")
        phone.screenshot(path=str(HERE / "phone-list.png"))
        browser.close()
    server.shutdown()


if __name__ == "__main__":
    main()
