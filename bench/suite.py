"""The seven benchmarks of issue 5, and the command line that runs them.

Each benchmark measures wsgi_bg and its reference in the same run (this
machine's absolute speed drifts), prints a table, and returns a
:class:`~bench.report.Result` that :func:`main` appends to the JSON lines file.
Every middleware built here is shut down before the benchmark returns.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import psutil
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.test import Client, EnvironBuilder

from wsgi_bg import BackgroundMiddleware
from wsgi_bg.jobs import TERMINAL_STATES
from wsgi_bg.options import default_start_method

from . import jobfuncs
from .jobfuncs import hello_app, lines_size, marked_app, noop
from .report import (
    Result,
    append_jsonl,
    machine,
    median,
    ms,
    percentile,
    print_result,
    rate,
    summary,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "/_jobs"


@dataclass
class Config:
    quick: bool = False
    scale: float = 1.0  # multiplies every N (``--quick`` sets 0.1 unless given)
    duration: float = 30.0  # seconds of the status-pages load
    poll_interval: float = 0.2  # seconds between two polls of one poller
    workers: int = os.cpu_count() or 2
    out: str = os.path.join(ROOT, "bench", "results.jsonl")
    #: Options selecting the store of every middleware (default: in memory).
    store_options: dict[str, Any] = field(default_factory=dict)

    def n(self, full: int, minimum: int = 1) -> int:
        return max(minimum, int(full * self.scale))

    @property
    def reps(self) -> int:
        return 3


# -- shared helpers --------------------------------------------------------------


def router(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """The app the middleware wraps: ``/run`` is marked, the rest is plain."""
    if environ.get("PATH_INFO") == "/run":
        return marked_app(environ, start_response)
    return hello_app(environ, start_response)


@contextlib.contextmanager
def middleware(
    cfg: Config, app: Any = router, **options: Any
) -> Iterator[BackgroundMiddleware]:
    options.setdefault("max_workers", cfg.workers)
    options.setdefault("cancel_grace", 1.0)
    for key, value in cfg.store_options.items():
        options.setdefault(key, value)
    mw = BackgroundMiddleware(app, prefix=PREFIX, **options)
    try:
        yield mw
    finally:
        mw.shutdown()


@contextlib.contextmanager
def bare_pool(cfg: Config) -> Iterator[ProcessPoolExecutor]:
    ctx = multiprocessing.get_context(default_start_method())
    pool = ProcessPoolExecutor(cfg.workers, mp_context=ctx)
    try:
        list(pool.map(noop, range(cfg.workers * 4)))  # warm: every worker started
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def wait_states(
    mw: BackgroundMiddleware,
    ids: list[str],
    timeout: float = 120.0,
    interval: float = 0.002,
) -> None:
    """Poll the store until every job in ``ids`` has ended."""
    store = mw.engine.store
    deadline = time.monotonic() + timeout
    pending = list(ids)
    while pending:
        record = store.get(pending[-1])
        if record is None or record["state"] in TERMINAL_STATES:
            pending.pop()
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} jobs still not done after {timeout} s")
        time.sleep(interval)


def wait_idle(
    mw: BackgroundMiddleware, timeout: float = 300.0, interval: float = 0.005
) -> None:
    """Poll the store until no job is queued or running."""
    store = mw.engine.store
    deadline = time.monotonic() + timeout
    while True:
        counts = store.counts()
        if counts["queued"] == 0 and counts["running"] == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs still active after {timeout} s: {counts}")
        time.sleep(interval)


def warm(mw: BackgroundMiddleware, cfg: Config) -> None:
    """Start the manager and the pool, and let every worker run a job."""
    ids = [mw.submit(noop, i).id for i in range(cfg.workers * 4)]
    wait_states(mw, ids)


def wsgi_call(app: Any, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """One in-process WSGI request; the body is consumed and closed."""
    response: list[Any] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        response[:] = [status, headers]
        return lambda data: None

    body = app(environ, start_response)
    try:
        for _ in body:
            pass
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return response[0], response[1]


# -- 1. passthrough --------------------------------------------------------------


def _flask_app() -> Any:
    try:
        from flask import Flask
    except ImportError:
        return None
    app = Flask("bench_passthrough")

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    return app


def _cpu_per_request(app: Any, environ: dict[str, Any], n: int) -> float:
    """Seconds of this thread's CPU per request, over ``n`` requests.

    CPU time, not wall time: a passthrough request is pure computation in
    this thread, and on a shared machine wall time also counts the moments
    other processes hold the CPU, which moved the ratio by ±10 % between
    runs of identical code (see docs/performance.md).
    """
    call = wsgi_call
    start = time.thread_time()
    for _ in range(n):
        call(app, dict(environ))
    return (time.thread_time() - start) / n


def bench_passthrough(cfg: Config) -> Result:
    """Requests to an unmarked route through the middleware vs the bare app."""
    environ = EnvironBuilder(path="/hello").get_environ()
    rows: list[tuple[str, str, str]] = []
    figures: dict[str, Any] = {}
    reference: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    # (label, app, requests per block): 250 pairs of blocks, bare and
    # wrapped back to back (in turn first), each pair judged on its own, so
    # that drift and bursts of other load fall on both sides alike; the
    # figures are medians over the pairs.
    cases = [("wsgi_callable", hello_app, 2000)]
    flask_app = _flask_app()
    if flask_app is not None:
        cases.insert(0, ("flask_route", flask_app, 200))
    pairs = cfg.n(250, 5)
    for label, app, n in cases:
        # Nothing starts at construction: no shutdown needed, but do it anyway.
        with middleware(cfg, app) as mw:
            _cpu_per_request(app, environ, n * 5)  # warm both paths
            _cpu_per_request(mw, environ, n * 5)
            bare, wrapped, paired, extra = [], [], [], []
            for i in range(pairs):
                first, second = (app, mw) if i % 2 else (mw, app)
                one = _cpu_per_request(first, environ, n)
                two = _cpu_per_request(second, environ, n)
                b, w = (one, two) if first is app else (two, one)
                bare.append(b)
                wrapped.append(w)
                paired.append(b / w)
                extra.append(w - b)
            if mw.engine.started:
                raise RuntimeError("the passthrough started the engine")
        b, w = 1 / median(bare), 1 / median(wrapped)
        ratio, overhead = median(paired), median(extra) * 1e6
        figures[f"{label}_rps"] = w
        reference[f"{label}_rps"] = b
        figures[f"{label}_overhead_us"] = overhead
        ratios[label] = ratio
        rows.append((f"{label}: through the middleware", rate(w), f"bare {rate(b)}"))
        rows.append(
            (
                f"{label}: overhead per request",
                f"{overhead:.2f} us",
                f"ratio {ratio:.3f}",
            )
        )
    headline = ratios.get("flask_route", ratios["wsgi_callable"])
    figures["ratio_wsgi_callable"] = ratios["wsgi_callable"]
    return Result(
        name="passthrough",
        figures=figures,
        reference=reference,
        ratio=headline,
        ratio_meaning="fraction of the bare app's requests per CPU second"
        " (Flask route; median of paired blocks)",
        target=">= 0.97 of the bare throughput",
        passed=headline >= 0.97,
        rows=rows,
        note="in-process WSGI calls, requests per CPU second of the calling"
        " thread; a trivial callable shows the raw overhead",
    )


# -- 2. submit -------------------------------------------------------------------


def bench_submit(cfg: Config) -> Result:
    """A request to a marked app until its 303 is returned, pool warm."""
    n = cfg.n(500, 10)
    base = EnvironBuilder(path="/run").get_environ()
    times: list[float] = []
    bare_times: list[float] = []
    with middleware(cfg) as mw, bare_pool(cfg) as pool:
        warm(mw, cfg)
        for i in range(n + 5):
            environ = dict(base)
            start = time.perf_counter()
            status, headers = wsgi_call(mw, environ)
            elapsed = time.perf_counter() - start
            if not status.startswith("303"):
                raise RuntimeError(f"a marked app answered {status}, not 303")
            job_id = dict(headers)["Location"].rsplit("/", 1)[-1]
            wait_states(mw, [job_id], interval=0.0005)  # quiet system for the next
            if i >= 5:
                times.append(elapsed)
            start = time.perf_counter()
            future = pool.submit(noop, i)
            bare_elapsed = time.perf_counter() - start
            future.result()
            if i >= 5:
                bare_times.append(bare_elapsed)
    p50, p99 = percentile(times, 50), percentile(times, 99)
    b50 = percentile(bare_times, 50)
    return Result(
        name="submit",
        figures={"p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "n": n},
        reference={"bare_pool_submit_p50_ms": b50 * 1e3},
        ratio=p50 / b50,
        ratio_meaning="x the time of a bare ProcessPoolExecutor.submit()",
        target="p50 < 0.5 ms, p99 < 2 ms",
        passed=p50 < 0.0005 and p99 < 0.002,
        rows=[
            ("request to 303, p50", ms(p50), f"bare pool submit() p50 {ms(b50)}"),
            ("request to 303, p99", ms(p99), f"n={n}"),
        ],
    )


# -- 3. throughput -----------------------------------------------------------------


def _pool_cpu(mw: BackgroundMiddleware) -> tuple[float, float, float]:
    """CPU seconds so far of this process (the server), of the pool's
    workers, and of the job processes they ran (reaped, and alive now)."""
    times = psutil.Process().cpu_times()
    server, workers, jobs = times.user + times.system, 0.0, 0.0
    runner = mw.engine._runner
    for pid in runner.worker_pids() if runner is not None else []:
        try:
            worker = psutil.Process(pid)
            times = worker.cpu_times()
            workers += times.user + times.system
            jobs += times.children_user + times.children_system
            for child in worker.children():
                times = child.cpu_times()
                jobs += times.user + times.system
        except psutil.Error:
            continue  # gone meanwhile: what it used is lost to the figure
    return server, workers, jobs


def _burst(mw: BackgroundMiddleware, n: int) -> tuple[float, float]:
    """``n`` trivial jobs through ``mw``: jobs/s from the first submit until
    all succeeded in the store, and seconds per ``submit()`` call."""
    store = mw.engine.store
    base = store.counts()["succeeded"]
    start = time.perf_counter()
    for i in range(n):
        mw.submit(noop, i)
    submitted = time.perf_counter()
    deadline = time.monotonic() + 300
    while store.counts()["succeeded"] - base < n:
        if time.monotonic() > deadline:
            raise TimeoutError("throughput jobs did not finish")
        time.sleep(0.005)
    return n / (time.perf_counter() - start), (submitted - start) / n


def _bare_burst(pool: ProcessPoolExecutor, n: int) -> float:
    """``n`` trivial jobs through a bare pool: jobs/s until all returned."""
    start = time.perf_counter()
    futures = [pool.submit(noop, i) for i in range(n)]
    # Wait for all at once, as a plain use would: result() in turn wakes
    # this thread once per future, which costs the bare pool (its
    # server-side threads share one GIL) a few percent.
    wait(futures)
    rate_ = n / (time.perf_counter() - start)
    for future in futures:
        future.result()  # a failed noop would make the reference a lie
    return rate_


def bench_throughput(cfg: Config) -> Result:
    """N trivial jobs until all succeeded in the store vs a bare pool's results."""
    n = cfg.n(2000, 20)
    # The bare pool's rate swings by up to 2x from run to run (see
    # docs/performance.md): five interleaved runs, the median of each side.
    reps = max(cfg.reps, 5)
    ours, bare, submit_loop = [], [], []
    cpu = [0.0, 0.0, 0.0]  # server, workers, job processes, over our runs
    with (
        middleware(cfg, max_queued=n + 10, keep_finished=reps * n + 100) as mw,
        bare_pool(cfg) as pool,
    ):
        warm(mw, cfg)
        for _ in range(reps):
            before = _pool_cpu(mw)
            rate_, per_submit = _burst(mw, n)
            ours.append(rate_)
            cpu = [total + after - was for total, after, was
                   in zip(cpu, _pool_cpu(mw), before, strict=True)]
            submit_loop.append(per_submit)
            wait_idle(mw)
            bare.append(_bare_burst(pool, n))
    w, b = median(ours), median(bare)
    per_submit = median(submit_loop)
    server_us, workers_us, jobs_us = (x / (reps * n) * 1e6 for x in cpu)
    return Result(
        name="throughput",
        figures={
            "jobs_per_s": w,
            "n": n,
            "submit_call_us": per_submit * 1e6,
            "runs": [round(x) for x in ours],
            "cpu_us_per_job": {"server": server_us, "workers": workers_us,
                               "job_processes": jobs_us,
                               "total": server_us + workers_us + jobs_us},
        },
        reference={"bare_pool_jobs_per_s": b, "bare_pool_best_jobs_per_s": max(bare),
                   "runs": [round(x) for x in bare]},
        ratio=w / b,
        ratio_meaning="fraction of a bare ProcessPoolExecutor's jobs/s",
        target=">= 0.5 of the bare rate",
        passed=w / b >= 0.5,
        rows=[
            ("jobs/s, submit to succeeded in store", rate(w),
             f"bare pool {rate(b)} (best run {rate(max(bare))})"),
            (
                "submit() call, server side",
                f"{per_submit * 1e6:.0f} us",
                f"n={n}, {cfg.workers} workers",
            ),
            (
                "CPU per job",
                f"{server_us + workers_us + jobs_us:.0f} us",
                f"server {server_us:.0f}, workers {workers_us:.0f},"
                f" job processes {jobs_us:.0f} us",
            ),
        ],
    )


# -- 4. latency --------------------------------------------------------------------


def bench_latency(cfg: Config) -> Result:
    """One trivial job: submit until succeeded is visible in the store."""
    n = cfg.n(300, 5)
    ours: list[float] = []
    bare: list[float] = []
    phases: dict[str, list[float]] = {
        "submit_call": [],
        "to_started": [],
        "started_to_ended": [],
        "ended_to_seen": [],
    }
    with middleware(cfg) as mw, bare_pool(cfg) as pool:
        warm(mw, cfg)
        store = mw.engine.store
        per_block = max(1, n // cfg.reps)
        for _ in range(cfg.reps):
            for i in range(per_block):
                wall = time.time()
                start = time.perf_counter()
                job = mw.submit(noop, i)
                returned = time.perf_counter()
                deadline = start + 30
                while True:
                    record = store.get(job.id)
                    if record["state"] in TERMINAL_STATES:
                        break
                    if time.perf_counter() > deadline:
                        raise TimeoutError("a latency job did not finish")
                    time.sleep(0.0002)
                seen = time.perf_counter()
                if record["state"] != "succeeded":
                    raise RuntimeError(f"a noop job ended {record['state']}")
                ours.append(seen - start)
                phases["submit_call"].append(returned - start)
                phases["to_started"].append(record["started_at"] - wall)
                phases["started_to_ended"].append(
                    record["ended_at"] - record["started_at"]
                )
                phases["ended_to_seen"].append(
                    wall + (seen - start) - record["ended_at"]
                )
            for i in range(per_block):
                start = time.perf_counter()
                pool.submit(noop, i).result()
                bare.append(time.perf_counter() - start)
    p50, p99, b50 = percentile(ours, 50), percentile(ours, 99), percentile(bare, 50)
    phase50 = {k: percentile(v, 50) * 1e3 for k, v in phases.items()}
    rows = [
        (
            "submit to succeeded visible, p50",
            ms(p50),
            f"bare submit().result() {ms(b50)}",
        ),
        ("p99", ms(p99), f"n={len(ours)}"),
    ]
    rows += [(f"  phase {k} (p50)", f"{v:.3g} ms", "") for k, v in phase50.items()]
    return Result(
        name="latency",
        figures={"p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "phases_p50_ms": phase50},
        reference={"bare_pool_roundtrip_p50_ms": b50 * 1e3},
        ratio=p50 / b50,
        ratio_meaning="x a bare ProcessPoolExecutor round trip",
        target="p50 < 1 ms (issue 13)",
        passed=p50 < 0.001,
        rows=rows,
        note="phases from the record's wall-clock times (created, started, ended)",
    )


# -- 5. output -----------------------------------------------------------------------


def _pipe_reference(n: int) -> float:
    """Lines/s of :func:`jobfuncs.pipe_lines` read from a buffered os.pipe."""
    r, w = os.pipe()
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]);"
        " from bench.jobfuncs import pipe_lines;"
        " pipe_lines(int(sys.argv[1]), int(sys.argv[2]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(n), str(w), ROOT], pass_fds=(w,)
    )
    os.close(w)
    first = b""
    last_read = 0.0
    try:
        while True:
            data = os.read(r, 65536)
            if not data:
                break
            last_read = time.monotonic()
            if len(first) < 64:
                first += data[:64]
    finally:
        os.close(r)
        proc.wait(timeout=60)
    t0 = float(first.split(b"\n", 1)[0].split()[1])
    return n / (last_read - t0)


def _wsgi_bg_output(mw: BackgroundMiddleware, n: int) -> float:
    """Lines/s of :func:`jobfuncs.print_lines` until its last line is in the store."""
    store = mw.engine.store
    expected = lines_size(n)
    job = mw.submit(jobfuncs.print_lines, n)
    deadline = time.monotonic() + 300
    while True:
        record = store.get(job.id)
        if record["output_size"] >= expected:
            seen = time.monotonic()
            break
        if record["state"] in TERMINAL_STATES and record["state"] != "succeeded":
            raise RuntimeError(
                f"the output job ended {record['state']}: {record['error']}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError("the output job did not finish")
        time.sleep(0.002)
    last = jobfuncs.line(n - 1)
    text, _ = store.read_output(job.id, expected - len(last))
    if text != last:
        raise RuntimeError(f"the last line read back is {text!r}, not {last!r}")
    job.wait(60)
    return n / (seen - job.result)


def _timed_get(client: Client, url: str) -> tuple[float, int, int]:
    start = time.perf_counter()
    response = client.get(url)
    body = response.get_data()
    elapsed = time.perf_counter() - start
    return elapsed, response.status_code, len(body)


def bench_output(cfg: Config) -> Result:
    """Output rate vs a buffered os.pipe; the page read of 1 MiB of output."""
    n = cfg.n(1_000_000, 1000)
    ours, pipe = [], []
    size = 1_048_576
    with middleware(cfg) as mw:
        warm(mw, cfg)
        for _ in range(cfg.reps):
            ours.append(_wsgi_bg_output(mw, n))
            pipe.append(_pipe_reference(n))
        job = mw.submit(jobfuncs.print_bytes, size)
        job.wait(60)
        store = mw.engine.store
        client = Client(mw)
        reads: dict[str, list[float]] = {"store": [], "json": [], "html": []}
        statuses: dict[str, int] = {}
        for _ in range(5):
            start = time.perf_counter()
            text, _ = store.read_output(job.id, 0)
            reads["store"].append(time.perf_counter() - start)
            if len(text) != size:
                raise RuntimeError(f"read {len(text)} characters of output, not {size}")
            for kind, url in (
                ("json", f"{PREFIX}/api/jobs/{job.id}"),
                ("html", f"{PREFIX}/{job.id}"),
            ):
                elapsed, status, _length = _timed_get(client, url)
                statuses[kind] = status
                reads[kind].append(elapsed)
    w, p = median(ours), median(pipe)
    read = {k: median(v) for k, v in reads.items()}
    pages_ok = statuses.get("json") == 200 and statuses.get("html") == 200
    page_ms = max(read["json"], read["html"]) * 1e3
    ratio = w / p
    if ratio < 0.5 or (pages_ok and page_ms >= 20):
        passed: bool | None = False
    elif pages_ok:
        passed = True
    else:
        passed = None
    page_note = (
        ""
        if pages_ok
        else (
            f"status pages answered json={statuses.get('json')}"
            f" html={statuses.get('html')}: page reads not judged"
        )
    )
    return Result(
        name="output",
        figures={
            "lines_per_s": w,
            "n": n,
            "page_read_json_ms": read["json"] * 1e3,
            "page_read_html_ms": read["html"] * 1e3,
            "store_read_1mib_ms": read["store"] * 1e3,
            "page_status": statuses,
            "runs": [round(x) for x in ours],
        },
        reference={"pipe_lines_per_s": p, "runs": [round(x) for x in pipe]},
        ratio=ratio,
        ratio_meaning="fraction of a buffered os.pipe's lines/s",
        target=">= 0.5 of the pipe; 1 MiB page read < 20 ms",
        passed=passed,
        rows=[
            (
                "lines/s, first print to last line in store",
                rate(w),
                f"os.pipe {rate(p)}",
            ),
            ("1 MiB: store.read_output", ms(read["store"]), ""),
            (
                "1 MiB: GET api/jobs/{id}",
                ms(read["json"]),
                f"HTTP {statuses.get('json')}",
            ),
            (
                "1 MiB: GET {id} (HTML)",
                ms(read["html"]),
                f"HTTP {statuses.get('html')}",
            ),
        ],
        note=page_note,
    )


# -- 6. status pages under load ------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass  # thousands of requests: no access log


def _feeder(
    mw: BackgroundMiddleware,
    stop: threading.Event,
    running: int,
    announce: Callable[[str], None],
    done: list[int],
) -> None:
    """Keep ``running`` live jobs (a line every 20 ms, 2 s each) going."""
    active: list[Any] = []
    while not stop.is_set():
        for job in list(active):
            if job.done:
                active.remove(job)
                done[0] += 1
        while len(active) < running:
            job = mw.submit(jobfuncs.tick, 100, 0.02)
            active.append(job)
            announce(job.id)
        stop.wait(0.05)


def bench_status(cfg: Config) -> Result:
    """A threaded server, 50 pollers and 10 event streams, 1,000 finished jobs kept.

    The clients run in a separate process (:mod:`bench.loadclient`): in this
    one they would compete with the server for the GIL.
    """
    retained = cfg.n(1000, 20) if cfg.scale < 1 else 1000
    pollers, streamers = 50, 10
    if cfg.scale < 0.05:
        pollers, streamers = 5, 2
    stop = threading.Event()
    done = [0]
    with middleware(cfg, keep_finished=retained) as mw:
        warm(mw, cfg)
        finished: list[str] = []
        for start in range(0, retained, 500):
            batch = range(start, min(retained, start + 500))
            ids = [mw.submit(noop, i).id for i in batch]
            wait_states(mw, ids)
            finished += ids
        probe = Client(mw).get(f"{PREFIX}/api/jobs/{finished[-1]}")
        if probe.status_code != 200:
            return Result(
                name="status",
                figures={"probe_status": probe.status_code},
                reference={},
                ratio=None,
                ratio_meaning="—",
                target="no errors, p99 < 50 ms",
                passed=None,
                note=f"GET api/jobs/{{id}} answered {probe.status_code}: the"
                " status pages are not there; load not run",
            )
        server = make_server(
            "127.0.0.1", 0, mw, threaded=True, request_handler=_QuietHandler
        )
        serve = threading.Thread(
            target=server.serve_forever, name="bench-server", daemon=True
        )
        serve.start()
        code = (
            "import sys; sys.path.insert(0, sys.argv[6]);"
            " from bench.loadclient import main; main()"
        )
        client = subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                str(server.server_port),
                str(cfg.duration),
                str(pollers),
                str(streamers),
                str(cfg.poll_interval),
                ROOT,
                ",".join(finished[-50:]),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdin is not None
        lock = threading.Lock()

        def announce(job_id: str) -> None:
            with lock, contextlib.suppress(OSError, ValueError):
                client.stdin.write(job_id + "\n")  # type: ignore[union-attr]
                client.stdin.flush()  # type: ignore[union-attr]

        feeder = threading.Thread(
            target=_feeder,
            name="bench-feeder",
            args=(mw, stop, cfg.workers, announce, done),
        )
        try:
            feeder.start()
            cpu_before = psutil.Process().cpu_times()
            # Not communicate(): it would close the client's stdin at once.
            guard = threading.Timer(cfg.duration + 60, client.kill)
            guard.start()
            out = client.stdout.read()  # type: ignore[union-attr]
            client.wait()
            guard.cancel()
            cpu_after = psutil.Process().cpu_times()
        finally:
            stop.set()
            if client.poll() is None:
                client.kill()
                client.wait()
            for stream in (client.stdin, client.stdout):
                with contextlib.suppress(OSError):
                    stream.close()  # type: ignore[union-attr]
            feeder.join(timeout=15)
            server.shutdown()
            server.server_close()
            serve.join(timeout=5)
    stats = json.loads(out)
    lat = stats["latencies"]
    errors = stats["errors"]
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    cpu = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
    figures = {
        "requests": len(lat),
        "requests_per_s": len(lat) / cfg.duration,
        "p50_ms": p50 * 1e3,
        "p99_ms": p99 * 1e3,
        "max_ms": max(lat or [0]) * 1e3,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "streams": stats["streams"],
        "stream_events": stats["events"],
        "stream_first_byte_p50_ms": percentile(stats["stream_first"], 50) * 1e3,
        "jobs_completed_under_load": done[0],
        "duration_s": cfg.duration,
        "pollers": pollers,
        "streamers": streamers,
        "retained_jobs": retained,
        "server_cpu_s_per_s": cpu / cfg.duration,
    }
    return Result(
        name="status",
        figures=figures,
        reference={"poll_interval_s": cfg.poll_interval},
        ratio=p99 / 0.050,
        ratio_meaning="p99 as a fraction of the 50 ms budget",
        target="no errors, p99 < 50 ms",
        passed=not errors and p99 < 0.050,
        rows=[
            (
                "poll requests",
                f"{len(lat):,}",
                f"{len(lat) / cfg.duration:.0f}/s,"
                f" {pollers} pollers every {cfg.poll_interval} s",
            ),
            ("poll latency p50", ms(p50), ""),
            ("poll latency p99", ms(p99), ""),
            ("poll latency max", ms(max(lat or [0])), ""),
            ("errors", str(len(errors)), "; ".join(sorted(set(errors))[:3])),
            (
                "event streams opened",
                str(stats["streams"]),
                f"{streamers} clients, {stats['events']:,} events",
            ),
            ("stream headers p50", ms(percentile(stats["stream_first"], 50)), ""),
            ("live jobs completed", str(done[0]), f"{retained} finished kept"),
            (
                "server process CPU",
                f"{cpu / cfg.duration:.2f} s/s",
                "clients in their own process",
            ),
        ],
    )


# -- 7. soak ---------------------------------------------------------------------------


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def _memory(mw: BackgroundMiddleware) -> dict[str, int]:
    gc.collect()
    engine = mw.engine
    manager = engine._backend._manager._process.pid  # type: ignore[attr-defined]
    workers = engine._runner.worker_pids()  # type: ignore[union-attr]
    return {
        "server": _rss(os.getpid()),
        "manager": _rss(manager),
        "workers": sum(_rss(pid) for pid in workers),
        "n_workers": len(workers),
    }


def bench_soak(cfg: Config) -> Result:
    """50,000 trivial jobs through keep_finished=1000: RSS at 5,000 and at 50,000."""
    n = cfg.n(50_000, 200)
    checkpoint = n // 10
    chunk = 500
    with middleware(cfg, keep_finished=1000, max_queued=1000) as mw:
        warm(mw, cfg)
        done = 0
        marks: dict[int, dict[str, int]] = {}
        start = time.perf_counter()
        while done < n:
            step = min(chunk, n - done, (checkpoint - done) if done < checkpoint else n)
            for i in range(step):
                mw.submit(noop, done + i)
            wait_idle(mw)
            done += step
            if done in (checkpoint, n):
                marks[done] = _memory(mw)
        elapsed = time.perf_counter() - start
        stored = sum(mw.engine.store.counts().values())
        futures = len(mw.engine._futures)
    first, last = marks[checkpoint], marks[n]
    growth = {
        k: (last[k] - first[k]) / first[k] * 100 if first[k] else float("nan")
        for k in ("server", "manager", "workers")
    }
    worst = max(growth.values())
    mib = 2**20
    rows = [
        (
            f"{k} RSS at {checkpoint:,} / {n:,}",
            f"{first[k] / mib:.1f} / {last[k] / mib:.1f} MiB",
            f"growth {growth[k]:+.1f} %",
        )
        for k in ("server", "manager", "workers")
    ]
    rows.append(
        (
            "jobs/s over the soak",
            rate(n / elapsed),
            f"{stored} jobs stored, {futures} futures held",
        )
    )
    return Result(
        name="soak",
        figures={
            "n": n,
            "checkpoint": checkpoint,
            **{
                f"{k}_rss_mib_first": first[k] / mib
                for k in ("server", "manager", "workers")
            },
            **{
                f"{k}_rss_mib_last": last[k] / mib
                for k in ("server", "manager", "workers")
            },
            **{f"{k}_growth_pct": v for k, v in growth.items()},
            "jobs_stored_at_end": stored,
            "jobs_per_s": n / elapsed,
        },
        reference={
            "checkpoint_rss_mib": {
                k: first[k] / mib for k in ("server", "manager", "workers")
            }
        },
        ratio=worst / 100,
        ratio_meaning="worst RSS growth (fraction) between checkpoints",
        target="growth < 10 % (each process kind)",
        passed=worst < 10,
        rows=rows,
    )


# -- command line -----------------------------------------------------------------

# -- 8. the Redis store beside the default one ----------------------------------------


@contextlib.contextmanager
def redis_store(cfg: Config) -> Iterator[Config]:
    """A redis-server of this run's own (free port, no persistence) and a
    copy of ``cfg`` whose middlewares keep their jobs in it."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from redis_server import RedisServer

    server = RedisServer().start()
    try:
        yield dataclasses.replace(cfg, store_options={
            "store": server.url, "namespace": f"bench-{os.getpid()}",
            "secret_key": "bench-secret-key-0123456789abcdef"})
    finally:
        server.stop()


def bench_redis(cfg: Config) -> Result:
    """Throughput, latency, output rate and status pages under load with the
    Redis store, each beside the default store's in the same run."""
    if shutil.which("redis-server") is None:
        return Result(name="redis", figures={}, reference={}, ratio=None,
                      ratio_meaning="—", target="", passed=None,
                      note="redis-server is not installed (apt-get install -y"
                      " redis-server): not run")
    memory = {"throughput": bench_throughput(cfg), "latency": bench_latency(cfg),
              "output": bench_output(cfg), "status": bench_status(cfg)}
    with redis_store(cfg) as rcfg:
        redis = {"throughput": bench_throughput(rcfg),
                 "latency": bench_latency(rcfg), "output": bench_output(rcfg),
                 "status": bench_status(rcfg)}
    lat_m = memory["latency"].figures["p50_ms"]
    lat_r = redis["latency"].figures["p50_ms"]
    through = (redis["throughput"].figures["jobs_per_s"]
               / memory["throughput"].figures["jobs_per_s"])
    out = (redis["output"].figures["lines_per_s"]
           / memory["output"].figures["lines_per_s"])
    p99_m = memory["status"].figures.get("p99_ms", float("nan"))
    p99_r = redis["status"].figures.get("p99_ms", float("nan"))
    errors = redis["status"].figures.get("errors", 0)
    passed = through >= 0.8 and out >= 0.5 and p99_r <= p99_m and not errors
    return Result(
        name="redis",
        figures={
            "throughput_jobs_per_s": redis["throughput"].figures["jobs_per_s"],
            "output_lines_per_s": redis["output"].figures["lines_per_s"],
            "status_p99_ms": p99_r, "status_errors": errors,
            "throughput_ratio": through, "output_ratio": out,
            "latency_p50_ms": lat_r,
            "status_p50_ms": redis["status"].figures.get("p50_ms"),
        },
        reference={
            "memory_throughput_jobs_per_s": memory["throughput"].figures["jobs_per_s"],
            "memory_latency_p50_ms": lat_m,
            "memory_status_p50_ms": memory["status"].figures.get("p50_ms"),
            "memory_output_lines_per_s": memory["output"].figures["lines_per_s"],
            "memory_status_p99_ms": p99_m,
        },
        ratio=through,
        ratio_meaning="Redis store's trivial-job throughput / the default store's",
        target="throughput >= 0.8x, output >= 0.5x, status p99 <= the default's",
        passed=passed,
        rows=[
            ("jobs/s (Redis)", rate(redis["throughput"].figures["jobs_per_s"]),
             f"default {rate(memory['throughput'].figures['jobs_per_s'])}"
             f" ({through:.2f}x)"),
            ("latency p50, submit to succeeded seen (Redis)", f"{lat_r:.2f} ms",
             f"default {lat_m:.2f} ms"),
            ("output lines/s (Redis)", rate(redis["output"].figures["lines_per_s"]),
             f"default {rate(memory['output'].figures['lines_per_s'])} ({out:.2f}x)"),
            ("status p99 under load (Redis)", f"{p99_r:.1f} ms",
             f"default {p99_m:.1f} ms; errors {errors}"),
        ],
    )


def _rq_wait(check: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish")
        time.sleep(0.001)


def bench_rq(cfg: Config) -> Result:
    """wsgi_bg jobs on RQ vs plain RQ jobs, on the same two ``rq worker``
    processes (wsgi_bg's worker class, where plain RQ jobs fork a work horse
    as on a stock worker): trivial-job throughput and one-job latency (p50)."""
    if shutil.which("redis-server") is None:
        return Result(name="rq", figures={}, reference={}, ratio=None,
                      ratio_meaning="—", target="", passed=None,
                      note="redis-server is not installed: not run")
    import redis
    import rq
    from rq.registry import FinishedJobRegistry

    n, m = cfg.n(300, 20), cfg.n(60, 10)
    with redis_store(cfg) as rcfg:
        from rq_workers import RQWorkers  # tests/, on the path from redis_store

        url = rcfg.store_options["store"]
        key = rcfg.store_options["secret_key"]
        # The documented command: rq worker -w wsgi_bg.rq_worker.Worker, with
        # the job module preloaded; it serves the plain RQ jobs too, on a
        # queue of their own (on wsgi_bg's, it runs only wsgi_bg's jobs).
        workers = RQWorkers(url, "wsgi_bg.bench bench-rq", key, count=2,
                            preload="bench.jobfuncs").start()
        try:
            client = redis.Redis.from_url(url)
            queue = rq.Queue("bench-rq", connection=client)
            finished = FinishedJobRegistry(queue=queue)
            ours_queue = rq.Queue("wsgi_bg.bench", connection=client)
            with middleware(rcfg, runner=ours_queue, max_queued=n + 10,
                            keep_finished=cfg.reps * (n + m) + 100) as mw:
                store = mw.engine.store
                for i in range(4):  # warm: imports in the workers
                    mw.submit(noop, i).wait(timeout=60)
                    queue.enqueue(noop, i)
                ours, plain, lat_ours, lat_plain = [], [], [], []
                for _ in range(cfg.reps):
                    base = store.counts()["succeeded"]
                    start = time.perf_counter()
                    for i in range(n):
                        mw.submit(noop, i)
                    _rq_wait(lambda base=base: store.counts()["succeeded"] - base >= n,
                             "wsgi_bg jobs on RQ")
                    ours.append(n / (time.perf_counter() - start))
                    base = finished.count
                    start = time.perf_counter()
                    for i in range(n):
                        queue.enqueue(noop, i)
                    _rq_wait(lambda base=base: finished.count - base >= n,
                             "plain RQ jobs")
                    plain.append(n / (time.perf_counter() - start))
                for i in range(m):
                    start = time.perf_counter()
                    job = mw.submit(noop, i)
                    _rq_wait(lambda job=job: job.state.value == "succeeded",
                             "a wsgi_bg job")
                    lat_ours.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    plain_job = queue.enqueue(noop, i)
                    _rq_wait(lambda j=plain_job: j.get_status(refresh=True)
                             == "finished", "a plain RQ job")
                    lat_plain.append(time.perf_counter() - start)
        finally:
            workers.stop()
    w, b = median(ours), median(plain)
    p50_w, p50_b = median(lat_ours), median(lat_plain)
    passed = w / b >= 0.8 and p50_w <= p50_b + 0.005
    return Result(
        name="rq",
        figures={"jobs_per_s": w, "latency_p50_ms": p50_w * 1000, "n": n, "m": m,
                 "runs": [round(x) for x in ours]},
        reference={"plain_rq_jobs_per_s": b, "plain_rq_latency_p50_ms": p50_b * 1000,
                   "runs": [round(x) for x in plain]},
        ratio=w / b,
        ratio_meaning="wsgi_bg-on-RQ trivial-job throughput / plain RQ's",
        target="throughput >= 0.8x plain RQ, latency p50 <= plain RQ's + 5 ms",
        passed=passed,
        rows=[
            ("jobs/s on 2 rq workers", rate(w), f"plain RQ {rate(b)} ({w / b:.2f}x)"),
            ("latency p50, submit to succeeded", f"{p50_w * 1000:.1f} ms",
             f"plain RQ {p50_b * 1000:.1f} ms"),
        ],
    )


# -- 10. open job pages on a server with few threads -----------------------------------


class FourThreads(BaseWSGIServer):
    """A server with 4 request threads, as gunicorn ``--threads 4``."""

    def __init__(self, app: Any) -> None:
        super().__init__("127.0.0.1", 0, app, handler=_QuietHandler)
        self.pool = ThreadPoolExecutor(4)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.pool.submit(self._handle, request, client_address)

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _page(base: str, job_id: str, stop: threading.Event, errors: list[str]) -> None:
    """What an open job page does: poll for new output with ``since`` and
    ``If-None-Match``, 0.5 s after news, slowing to 2 s while nothing changes."""
    since, etag, delay = 0, None, 0.5
    while not stop.is_set():
        url = f"{base}{PREFIX}/api/jobs/{job_id}?since={since}"
        request = urllib.request.Request(url)
        if etag:
            request.add_header("If-None-Match", etag)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                data = json.loads(answer.read())
                etag = answer.headers.get("ETag")
                since, delay = data["next"], 0.5
        except urllib.error.HTTPError as exc:
            if exc.code != 304:
                errors.append(f"HTTP {exc.code}")
            delay = min(delay * 2, 2.0)
        except OSError as exc:
            errors.append(repr(exc))
        stop.wait(delay)


def bench_pages(cfg: Config) -> Result:
    """16 open job pages on a 4-thread server, jobs live: how long the app's
    other routes take meanwhile (the pages must cost no thread for a job's life)."""
    pages, duration = 16, max(3.0, cfg.duration / 3)
    stop, errors = threading.Event(), []
    latencies: list[float] = []
    with middleware(cfg, max_workers=pages) as mw:
        jobs = [mw.submit(jobfuncs.tick, int(duration * 4) + 40, 0.25)
                for _ in range(pages)]
        deadline = time.monotonic() + 60
        while any(job.state.value == "queued" for job in jobs):
            if time.monotonic() > deadline:
                raise TimeoutError("the page jobs did not start")
            time.sleep(0.05)
        server = FourThreads(mw)
        serve = threading.Thread(target=server.serve_forever, daemon=True)
        serve.start()
        base = f"http://127.0.0.1:{server.server_port}"
        pollers = [threading.Thread(target=_page, args=(base, j.id, stop, errors),
                                    daemon=True) for j in jobs]
        try:
            for poller in pollers:
                poller.start()
            time.sleep(1.0)  # the pages settle into following their jobs
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                start = time.perf_counter()
                with urllib.request.urlopen(f"{base}/", timeout=10) as answer:
                    answer.read()
                latencies.append(time.perf_counter() - start)
                time.sleep(0.05)
        finally:
            stop.set()
            for poller in pollers:
                poller.join(15)
            server.shutdown()
            server.server_close()
            for job in jobs:
                job.cancel()
    worst, p99 = max(latencies), percentile(latencies, 99)
    return Result(
        name="pages",
        figures={"other_route_p50_ms": percentile(latencies, 50) * 1e3,
                 "other_route_p99_ms": p99 * 1e3, "other_route_max_ms": worst * 1e3,
                 "requests": len(latencies), "page_errors": len(errors),
                 "error_samples": sorted(set(errors))[:5]},
        reference={"budget_s": 1.0},
        ratio=worst / 1.0,
        ratio_meaning="slowest other-route answer as a fraction of 1 s",
        target="16 live pages on 4 threads: other routes < 1 s, pages without errors",
        passed=worst < 1.0 and not errors,
        rows=[("GET / while 16 job pages poll (4 threads)",
               f"p50 {ms(percentile(latencies, 50))}, p99 {ms(p99)}, max {ms(worst)}",
               f"{len(latencies)} requests; page errors {len(errors)}")],
    )


def _page_cost(client: Client, url: str, loads: int) -> tuple[float, float, int]:
    """Median CPU seconds of this thread and wall seconds of one GET of
    ``url`` (the status app renders in the calling thread), and its size."""
    cpu, wall, size = [], [], 0
    for _ in range(loads):
        start_cpu, start = time.thread_time(), time.perf_counter()
        response = client.get(url)
        size = len(response.get_data())
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return median(cpu), median(wall), size


def bench_page_cost(cfg: Config) -> Result:
    """What one load of a job's page costs the server for 1 MiB of output made
    of colour changes, next to 1 MiB of plain text (issue 18 item 3) and of
    empty lines (review finding 7)."""
    size, loads = 1 << 20, cfg.n(10, minimum=3)
    figures: dict[str, Any] = {}
    rows = []
    with middleware(cfg, max_output_bytes=size) as mw:
        jobs = {"coloured": mw.submit(jobfuncs.print_colours, size),
                "plain": mw.submit(jobfuncs.print_bytes, size),
                "newlines": mw.submit(jobfuncs.print_newlines, size)}
        client = Client(mw)
        for kind, job in jobs.items():
            job.wait(120)
            for what, url in (("page", f"{PREFIX}/{job.id}"),
                              ("json", f"{PREFIX}/api/jobs/{job.id}"),
                              ("raw", f"{PREFIX}/api/jobs/{job.id}/output.txt")):
                cpu, wall, body = _page_cost(client, url, loads)
                figures[f"{kind}_{what}_cpu_ms"] = cpu * 1e3
                figures[f"{kind}_{what}_wall_ms"] = wall * 1e3
                figures[f"{kind}_{what}_bytes"] = body
                rows.append((f"{kind} 1 MiB: GET {what}",
                             f"CPU {ms(cpu)}, wall {ms(wall)}",
                             f"{body / 1e6:.2f} MB"))
    cpu = max(figures[f"{kind}_page_cpu_ms"] for kind in jobs) / 1e3
    html = max(figures[f"{kind}_page_bytes"] for kind in jobs)
    return Result(
        name="page_cost",
        figures=figures,
        reference={"plain_page_cpu_ms": figures["plain_page_cpu_ms"],
                   "budget_cpu_s": 0.3, "budget_html_bytes": 2_000_000},
        ratio=figures["coloured_page_cpu_ms"] / max(figures["plain_page_cpu_ms"],
                                                    1e-3),
        ratio_meaning="x the CPU of the same page for plain text",
        target="a page of 1 MiB of colour changes or of empty lines: < 0.3 s"
               " CPU, < 2 MB of HTML",
        passed=cpu < 0.3 and html < 2_000_000,
        rows=rows,
    )


# -- Huey beside us (issue 20 item 6) ----------------------------------------------


@contextlib.contextmanager
def huey_consumer(cfg: Config, db: str, delay: float) -> Iterator[Any]:
    """A ``huey_consumer`` process (``-k process -w workers``) on a fresh
    SQLite file, and the producer's side of it; stopped, and its workers
    with it, on the way out."""
    os.environ["WSGI_BG_BENCH_HUEY_DB"] = db
    from . import hueyapp  # reads the variable: imported after it is set

    consumer = shutil.which("huey_consumer", path=os.path.dirname(sys.executable))
    if consumer is None:
        raise RuntimeError("huey is not installed: pip install --group bench")
    process = subprocess.Popen(
        [consumer, "bench.hueyapp.huey", "-k", "process", "-w", str(cfg.workers),
         "-q", "-n", "-C", "-d", str(delay), "-m", str(delay)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield hueyapp
    finally:
        # SIGINT: Huey's graceful stop, which ends its worker processes too.
        os.killpg(process.pid, 2)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(30)


def _huey_run(app: Any, n: int, timeout: float = 300) -> float:
    """Jobs/s from the first enqueue until ``n`` results are stored."""
    huey = app.huey
    base = huey.result_count()
    start = time.perf_counter()
    for i in range(n):
        app.noop(i)
    deadline = time.monotonic() + timeout
    while huey.result_count() - base < n:
        if time.monotonic() > deadline:
            raise TimeoutError("Huey's jobs did not finish")
        time.sleep(0.005)
    return n / (time.perf_counter() - start)


def bench_huey(cfg: Config) -> Result:
    """N trivial jobs: wsgi_bg's default store, Huey's fastest setup (SQLite,
    fsync off, process consumer) and a bare pool, interleaved in one run."""
    import tempfile

    n = cfg.n(2000, 20)
    reps = max(cfg.reps, 5)
    ours, theirs, bare = [], [], []
    with (
        tempfile.TemporaryDirectory() as tmp,
        middleware(cfg, max_queued=n + 10, keep_finished=reps * n + 100) as mw,
        huey_consumer(cfg, os.path.join(tmp, "huey.db"), 0.001) as app,
        bare_pool(cfg) as pool,
    ):
        warm(mw, cfg)
        _huey_run(app, cfg.workers * 4)  # every Huey worker started
        for _ in range(reps):
            ours.append(_burst(mw, n)[0])
            wait_idle(mw)
            theirs.append(_huey_run(app, n))
            bare.append(_bare_burst(pool, n))
    w, h, b = median(ours), median(theirs), median(bare)
    return Result(
        name="huey",
        figures={"jobs_per_s": w, "n": n, "runs": [round(x) for x in ours],
                 "bare_pool_jobs_per_s": b, "fraction_of_bare_pool": w / b},
        reference={"huey_jobs_per_s": h, "runs": [round(x) for x in theirs]},
        ratio=w / h,
        ratio_meaning="wsgi_bg's jobs/s over Huey's (SqliteHuey, fsync off,"
                      f" process consumer -w {cfg.workers})",
        target=">= 1 (ahead of Huey)",
        passed=w >= h,
        rows=[
            ("wsgi_bg jobs/s, submit to succeeded in store", rate(w),
             f"runs {[round(x) for x in ours]}"),
            ("Huey jobs/s, enqueue to result stored", rate(h),
             f"runs {[round(x) for x in theirs]}"),
            ("bare ProcessPoolExecutor jobs/s", rate(b),
             f"wsgi_bg {w / b:.2f} of it, Huey {h / b:.2f}"),
        ],
    )


BENCHMARKS: dict[str, Callable[[Config], Result]] = {
    "passthrough": bench_passthrough,
    "submit": bench_submit,
    "throughput": bench_throughput,
    "latency": bench_latency,
    "output": bench_output,
    "status": bench_status,
    "soak": bench_soak,
    "redis": bench_redis,
    "pages": bench_pages,
    "rq": bench_rq,
    "page_cost": bench_page_cost,
    "huey": bench_huey,
}


def parse(argv: list[str] | None) -> tuple[list[str], Config]:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="wsgi_bg benchmarks (issue 5); each compares with its reference"
        " measured in the same run.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a fast smoke pass: N scaled by 0.1, status load 5 s",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help="multiply every N by this (default 1, or 0.1 with --quick)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of the status-pages load (default 30, 5 with --quick)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.2,
        help="seconds between two polls of one status poller (default 0.2)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="pool workers for wsgi_bg and the bare pool (default: CPUs)",
    )
    parser.add_argument(
        "--out",
        default=Config.out,
        help="JSON lines file to append to (default bench/results.jsonl)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}"
        )
    scale = args.scale if args.scale is not None else (0.1 if args.quick else 1.0)
    duration = (
        args.duration if args.duration is not None else (5.0 if args.quick else 30.0)
    )
    if scale <= 0 or duration <= 0 or args.poll_interval < 0 or args.workers < 1:
        parser.error("--scale and --duration must be > 0, --workers >= 1")
    cfg = Config(
        quick=args.quick,
        scale=scale,
        duration=duration,
        poll_interval=args.poll_interval,
        workers=args.workers,
        out=args.out,
    )
    return args.names or list(BENCHMARKS), cfg


def main(argv: list[str] | None = None) -> int:
    names, cfg = parse(argv)
    info = machine()
    print(
        f"wsgi_bg benchmarks: Python {info['python']}, {info['cpus']} CPUs"
        f" ({info['cpu_model']}), {info['ram_gib']} GiB; workers={cfg.workers},"
        f" scale={cfg.scale}, start method {default_start_method()}"
    )
    results = []
    for name in names:
        started = time.perf_counter()
        result = BENCHMARKS[name](cfg)
        result.figures["elapsed_s"] = round(time.perf_counter() - started, 2)
        print_result(result)
        append_jsonl(cfg.out, result)
        results.append(result)
    if len(results) > 1:
        summary(results)
    print(f"\nresults appended to {cfg.out}")
    stop_forkserver()
    return 0


def stop_forkserver() -> None:
    """The bare reference pools start multiprocessing's forkserver; it is this
    run's to stop (a middleware stops only a forkserver it started itself)."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is not None:
        stop()
