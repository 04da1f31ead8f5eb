"""The status-pages load, run in its own process so that the clients' threads
do not compete with the server for its GIL: ``python -m bench.loadclient``.

Reads job ids from stdin (the newest line is the live job to follow), takes
finished ones (comma-separated) as its last argument, runs
pollers and event-stream clients against ``127.0.0.1:PORT`` for DURATION
seconds, then prints one JSON object of figures on stdout.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import sys
import threading
import time
from typing import Any

PREFIX = "/_jobs"


class Load:
    """Shared state of the clients: the live job, latencies, errors."""

    def __init__(self, finished: list[str]) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.live: str | None = None
        self.finished = finished
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.streams = 0
        self.events = 0
        self.stream_first: list[float] = []
        self.sockets: set[socket.socket] = set()

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)


def poller(port: int, load: Load, interval: float) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    job_id, since, n = None, 0, 0
    try:
        while not load.stop.is_set():
            n += 1
            if n % 4 == 0:  # one poll in four reads a retained finished job
                target, offset = load.finished[n % len(load.finished)], 0
            else:
                if load.live != job_id:
                    job_id, since = load.live, 0
                target, offset = job_id, since
            start = time.perf_counter()
            try:
                conn.request("GET", f"{PREFIX}/api/jobs/{target}?since={offset}")
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                if load.stop.is_set():
                    break
                load.error(f"poll: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            elapsed = time.perf_counter() - start
            if response.status != 200:
                load.error(f"poll: HTTP {response.status} {target!r}"[:60])
            else:
                with load.lock:
                    load.latencies.append(elapsed)
                if target == job_id:
                    try:
                        since = json.loads(body)["next"]
                    except (ValueError, KeyError) as exc:
                        load.error(f"poll: bad JSON {exc!r}"[:60])
            load.stop.wait(interval)
    finally:
        conn.close()


def streamer(port: int, load: Load) -> None:
    while not load.stop.is_set():
        job_id = load.live
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            start = time.perf_counter()
            conn.request(
                "GET",
                f"{PREFIX}/api/jobs/{job_id}/events",
                headers={"Accept": "text/event-stream"},
            )
            response = conn.getresponse()
            first = time.perf_counter() - start
            if conn.sock is not None:
                with load.lock:
                    load.sockets.add(conn.sock)
            if response.status != 200:
                load.error(f"events: HTTP {response.status}")
                response.read()
                load.stop.wait(0.1)
                continue
            with load.lock:
                load.streams += 1
                load.stream_first.append(first)
            while not load.stop.is_set():
                row = response.fp.readline()
                if not row:
                    break  # the job ended: the stream closed
                if row.startswith(b"event:"):
                    with load.lock:
                        load.events += 1
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if not load.stop.is_set():
                load.error(f"events: {exc!r}")
        finally:
            with load.lock:
                load.sockets.discard(conn.sock)  # type: ignore[arg-type]
            conn.close()
        # The job ended: wait for the next live job before following it.
        deadline = time.monotonic() + 5
        while load.live == job_id and time.monotonic() < deadline:
            if load.stop.wait(0.02):
                break


def run(
    port: int,
    duration: float,
    pollers: int,
    streamers: int,
    interval: float,
    finished: list[str],
) -> dict[str, Any]:
    load = Load(finished)
    first = threading.Event()

    def follow() -> None:
        while True:  # the server announces each new live job on a line
            row = sys.stdin.readline()
            if not row:
                return
            if row.strip():
                load.live = row.strip()
                first.set()

    threading.Thread(target=follow, daemon=True).start()
    if not first.wait(30):
        return {
            "latencies": [],
            "errors": ["no live job announced"],
            "streams": 0,
            "events": 0,
            "stream_first": [],
        }
    threads = [
        threading.Thread(target=poller, args=(port, load, interval))
        for _ in range(pollers)
    ]
    threads += [
        threading.Thread(target=streamer, args=(port, load)) for _ in range(streamers)
    ]
    for thread in threads:
        thread.start()
    time.sleep(duration)
    load.stop.set()
    with load.lock:
        sockets = list(load.sockets)
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    for thread in threads:
        thread.join(timeout=15)
    alive = sum(t.is_alive() for t in threads)
    if alive:
        load.error(f"{alive} client threads still alive")
    return {
        "latencies": load.latencies,
        "errors": load.errors,
        "streams": load.streams,
        "events": load.events,
        "stream_first": load.stream_first,
    }


def main() -> None:
    """``PORT DURATION POLLERS STREAMERS INTERVAL ROOT FINISHED_IDS`` from argv."""
    port, duration, pollers, streamers, interval = sys.argv[1:6]
    result = run(
        int(port),
        float(duration),
        int(pollers),
        int(streamers),
        float(interval),
        sys.argv[7].split(","),
    )
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
