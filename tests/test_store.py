"""The Store contract, on every store (in process; Redis: a real redis-server),
and the memory store's bounded output."""
from __future__ import annotations

import re
import time
import uuid

import pytest
import webtest

import jobfuncs
from wsgi_bg import JobState, allow_all
from wsgi_bg.stores import Ending
from wsgi_bg.stores.memory import MemoryStore, _Output


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_store(request):
    """Build a store of each kind with the given limits (Redis: a namespace of
    the test's own on the session's redis-server)."""
    if request.param == "memory":
        yield MemoryStore
        return
    from conftest import TEST_SECRET_KEY
    from wsgi_bg.stores.redis import RedisStore, connect, connection_settings
    from wsgi_bg.stores.signing import Signer

    server = request.getfixturevalue("redis_server")
    client = connect(connection_settings(server.url))
    namespace = f"store-{uuid.uuid4().hex[:12]}"

    def make(keep_finished=1000, job_ttl=86400, max_output_bytes=1_048_576):
        return RedisStore(client, namespace=namespace,
                          signer=Signer(TEST_SECRET_KEY.encode()),
                          keep_finished=keep_finished, job_ttl=job_ttl,
                          max_output_bytes=max_output_bytes)

    yield make
    client.connection_pool.disconnect()

MARKER = re.compile(
    r"\n\[… (\d+) bytes of output dropped: the job wrote more than"
    r" max_output_bytes=(\d+) …\]\n"
)


def record(job_id: str) -> dict:
    return {"id": job_id, "name": "t", "created_at": time.time(),
            "started_at": None, "ended_at": None, "result": None, "error": None,
            "progress": None, "timeout": None, "cancel_requested": False,
            "cancel_grace": None, "url": None, "pid": None}


def split(text: str) -> tuple[str, int, str]:
    head, dropped, _, tail = MARKER.split(text)
    return head, int(dropped), tail


# -- _Output -----------------------------------------------------------------------
def test_output_under_limit_is_kept_whole():
    out = _Output(1000)
    out.append("a" * 600)
    out.append("b" * 400)
    assert out.read(0) == ("a" * 600 + "b" * 400, 1000)


@pytest.mark.parametrize(
    "chunk",
    [pytest.param(1, id="1-char-writes"), pytest.param(37, id="37-char-writes"),
     pytest.param(5000, id="one-big-write")],
)
def test_output_past_limit_keeps_head_and_tail(chunk):
    limit = 1000
    written = "".join(f"{i:08d}\n" for i in range(1000))  # 9000 characters
    out = _Output(limit)
    for start in range(0, len(written), chunk):
        out.append(written[start : start + chunk])
    text, offset = out.read(0)
    assert offset == len(written)
    head, dropped, tail = split(text)
    assert written.startswith(head) and head
    assert written.endswith(tail) and tail
    assert len(head) + dropped + len(tail) == len(written)
    assert dropped > 0
    assert len(head) + len(tail) <= limit  # what is kept stays within the limit
    assert len(head) == limit // 2


def test_output_memory_stays_bounded():
    out = _Output(1000)
    for _ in range(10_000):
        out.append("z" * 97)
        kept = sum(map(len, out.chunks)) + len(out.head or "")
        assert kept <= 2 * 1000


def test_output_compacted_holds_at_most_the_limit():
    out = _Output(1000)
    for _ in range(100):
        out.append("z" * 97)
    out.compact()  # a job's end
    assert sum(map(len, out.chunks)) + len(out.head or b"") <= 1000
    text, offset = out.read(0)
    assert offset == 9700 and len(split(text)[0]) + len(split(text)[2]) <= 1000


def test_output_since_offsets():
    out = _Output(100)
    written = "".join(chr(ord("a") + i % 26) for i in range(300))
    out.append(written[:50])
    assert out.read(0) == (written[:50], 50)
    assert out.read(20) == (written[20:50], 50)
    assert out.read(50) == ("", 50)
    out.append(written[50:])
    # From inside the head: rest of the head, the marker, the tail.
    text, offset = out.read(10)
    assert offset == 300
    head, dropped, tail = split(text)
    assert head == written[10:50] and written.endswith(tail)
    assert 10 + len(head) + dropped + len(tail) == 300
    # From inside the kept tail: only what is new.
    assert out.read(290) == (written[290:], 300)
    assert out.read(300) == ("", 300)
    assert out.read(10_000) == ("", 300)
    assert out.read(-5)[0] == out.read(0)[0]
    # From inside the dropped middle: the marker, then the tail.
    text, _ = out.read(60)
    assert MARKER.match(text)
    assert written.endswith(MARKER.split(text)[-1])


def test_output_polling_reader_sees_every_kept_character():
    """A reader polling with offsets gets the head, one marker, the tail."""
    out = _Output(200)
    written = "".join(f"{i:04d}\n" for i in range(400))
    seen, offset = [], 0
    for start in range(0, len(written), 33):
        out.append(written[start : start + 33])
        text, offset = out.read(offset)
        seen.append(text)
    joined = "".join(seen)
    assert len(MARKER.findall(joined)) <= 1 + len(seen)
    assert joined.startswith(written[:100])
    assert joined.endswith(written[-33:])


# -- the Store contract, on every store ----------------------------------------
def test_store_lifecycle_and_finish_once(make_store):
    store = make_store()
    assert store.create(record("a"), max_queued=10)
    assert store.get("a")["state"] == "queued"
    assert store.start("a", 1234)
    started_at = store.get("a")["started_at"]
    assert not store.start("a", 4321)  # another process: started already
    # The same process again: a retry of a start whose answer was lost.
    assert store.start("a", 1234)
    assert store.get("a")["started_at"] == started_at
    assert store.relay("a", "out\n", {"done": 1, "total": 2, "message": None}) == (
        False, None)
    assert store.finish("a", Ending("succeeded", b"x")) == "succeeded"
    assert store.finish("a", Ending("failed", error="again")) is None  # exactly once
    got = store.get("a")
    assert got["state"] == "succeeded" and got["pid"] is None
    assert got["progress"] == {"done": 1, "total": 2, "message": None}
    assert store.read_output("a", 0) == ("out\n", 4)
    assert store.read_output("missing", 0) is None
    assert store.get("missing") is None


def test_store_cancel(make_store):
    store = make_store()
    store.create(record("q"), 10)
    store.create(record("r"), 10)
    store.start("r", 1)
    assert store.request_cancel("q", None) == "cancelled"
    assert store.get("q")["state"] == "cancelled"
    assert not store.start("q", 2)  # never runs
    assert store.request_cancel("r", 0.5) == "requested"
    assert store.relay("r", "", None) == (True, 0.5)
    assert store.finish("r", Ending("succeeded", b"x")) == "cancelled"
    assert store.get("r")["result"] is None
    assert store.request_cancel("r", None) == ""


def test_store_finish_and_start_is_finish_then_start(make_store):
    store = make_store()
    store.create(record("a"), 10)
    store.create(record("b"), 10)
    store.start("a", 7)
    store.relay("a", "one\n", None)
    ending = Ending("succeeded", b"r", text="two\n", offset=4, shown="'r'",
                    progress={"done": 1, "total": 1, "message": None})
    assert store.finish_and_start("a", ending, "b", 8) == ("succeeded", True)
    a, b = store.get("a"), store.get("b")
    assert (a["state"], a["pid"], a["result"]) == ("succeeded", None, "'r'")
    assert a["progress"] == {"done": 1, "total": 1, "message": None}
    assert store.result("a") == b"r"
    assert store.read_output("a", 0) == ("one\ntwo\n", 8)
    assert (b["state"], b["pid"]) == ("running", 8)
    assert b["started_at"] >= a["ended_at"]
    counts = store.counts()
    assert (counts["succeeded"], counts["running"], counts["queued"]) == (1, 1, 0)
    # The next job's start is refused as start's would be; the end still lands.
    store.create(record("c"), 10)
    assert store.finish_and_start("b", Ending("failed", error="boom"), "b", 9) == (
        "failed", False)
    assert store.get("b")["state"] == "failed"
    assert store.counts()["running"] == 0


def test_store_finish_and_start_next_cancelled_while_queued(make_store):
    store = make_store()
    store.create(record("a"), 10)
    store.create(record("b"), 10)
    store.start("a", 1)
    assert store.request_cancel("b", None) == "cancelled"
    assert store.finish_and_start("a", Ending("succeeded", b"x", shown="1"),
                                  "b", 2) == ("succeeded", False)
    assert store.get("a")["state"] == "succeeded"
    b = store.get("b")
    assert (b["state"], b["pid"], b["started_at"]) == ("cancelled", None, None)
    assert store.counts()["running"] == 0


def test_store_finish_and_start_next_already_ended_or_unknown(make_store):
    store = make_store()
    for job in ("a", "b", "c"):
        store.create(record(job), 10)
    store.start("b", 3)
    store.finish("b", Ending("succeeded"))
    store.start("a", 1)
    assert store.finish_and_start("a", Ending("failed", error="no"), "b", 2) == (
        "failed", False)
    assert (store.get("b")["state"], store.get("b")["pid"]) == ("succeeded", None)
    store.start("c", 4)
    assert store.finish_and_start("c", Ending("succeeded"), "missing", 2) == (
        "succeeded", False)
    assert store.get("missing") is None


def test_store_finish_and_start_of_an_ended_job_still_starts_the_next(make_store):
    store = make_store()
    store.create(record("a"), 10)
    store.create(record("b"), 10)
    store.start("a", 1)
    store.request_cancel("a", 0.0)
    assert store.finish("a", Ending("cancelled", error="killed")) == "cancelled"
    assert store.finish_and_start(
        "a", Ending("succeeded", b"x", text="late\n", shown="1"), "b", 2) == (
        None, True)
    a = store.get("a")
    assert (a["state"], a["error"], a["output_size"]) == ("cancelled", "killed", 0)
    assert store.result("a") is None
    assert store.get("b")["state"] == "running"


def test_store_finish_and_start_keeps_the_cancel_outcome(make_store):
    store = make_store()
    store.create(record("a"), 10)
    store.create(record("b"), 10)
    store.start("a", 1)
    store.request_cancel("a", None)  # asked while running, then it returned
    assert store.finish_and_start("a", Ending("succeeded", b"x", shown="1"),
                                  "b", 2) == ("cancelled", True)
    assert store.get("a")["cancelled_how"] == "stopped"


@pytest.mark.timeout(60)
def test_a_search_past_the_scan_says_partial(wsgi_bg_middleware):
    from wsgi_bg.stores.protocol import SEARCH_SCAN

    mw = wsgi_bg_middleware(lambda environ, start_response: [], max_workers=1,
                            authorize=allow_all)
    assert mw.submit(jobfuncs.add, 1, 2).wait(timeout=20).result == 3
    store = mw.engine.store
    for n in range(SEARCH_SCAN + 1):
        store.create(dict(record(f"p{n}"), name="x"), SEARCH_SCAN + 2)
    records, total = found = store.page(query="x", limit=1)
    assert (len(records), total, found.partial) == (1, SEARCH_SCAN, True)
    with pytest.raises(ValueError, match="offset must be an integer"):
        store.page(offset=10**20)
    # The list says so: its JSON, and its page above the list.
    client = webtest.TestApp(mw)
    assert client.get("/_jobs/api/jobs?q=x").json["partial"] is True
    assert client.get("/_jobs/api/jobs?q=jobfuncs").json["partial"] is True
    assert client.get("/_jobs/api/jobs").json["partial"] is False
    assert "newest jobs only" in client.get("/_jobs/?q=x").text
    assert "newest jobs only" not in client.get("/_jobs/").text


@pytest.mark.timeout(60)
def test_a_workers_store_is_the_servers_through_its_manager(wsgi_bg_middleware):
    """What a pool worker reaches (a proxy, through the manager thread of the
    server process) is the server's own store, and answers as it does."""
    mw = wsgi_bg_middleware(lambda environ, start_response: [], max_workers=1)
    assert mw.submit(jobfuncs.add, 1, 2).wait(timeout=20).result == 3
    local = mw.engine.store
    store = mw.engine._backend.link().connect()  # as a worker connects
    assert type(store) is not type(local)  # a proxy
    for job in ("a", "b", "c"):
        store.create(record(job), 10)
    store.start("a", 1)
    store.request_cancel("c", None)
    # An Ending crosses to the manager and back, pickled.
    ending = Ending("succeeded", b"x", text="out\n", shown="'x'")
    assert store.finish_and_start("a", ending, "b", 2) == ("succeeded", True)
    assert store.finish_and_start("b", Ending("failed", error="no"), "c", 3) == (
        "failed", False)
    assert [local.get(job)["state"] for job in ("a", "b", "c")] == [
        "succeeded", "failed", "cancelled"]
    assert local.read_output("a", 0) == ("out\n", 4)


class _Planted:
    """Unpickling it would create a file: proof that a pickle ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.timeout(60)
def test_the_store_socket_admits_only_the_servers_own_processes(
        wsgi_bg_middleware, tmp_path):
    """docs/security.md: the manager serving the default store listens on a
    Unix socket in a directory only this user can enter, and authenticates
    with the server's random authkey before it unpickles anything."""
    import os
    import pickle
    import socket
    import stat
    import struct
    from multiprocessing import AuthenticationError, connection

    mw = wsgi_bg_middleware(lambda environ, start_response: [], max_workers=1)
    assert mw.submit(jobfuncs.add, 1, 2).wait(timeout=20).result == 3
    address = mw.engine._backend.link().address
    assert stat.S_IMODE(os.stat(os.path.dirname(address)).st_mode) == 0o700
    # A wrong key: refused before any request is read.
    with pytest.raises(AuthenticationError):
        connection.Client(address, authkey=b"not the server's key")
    # No handshake at all, a pickle straight away: never unpickled.
    planted = tmp_path / "ran"
    body = pickle.dumps(_Planted(str(planted)))
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(address)
        raw.sendall(struct.pack("!i", len(body)) + body)
        raw.settimeout(5)
        try:
            while raw.recv(4096):
                pass  # the server's challenge, then it hangs up
        except (TimeoutError, ConnectionResetError):
            pass
    assert not planted.exists()
    # The server still serves its own workers.
    assert mw.submit(jobfuncs.add, 2, 3).wait(timeout=20).result == 5


@pytest.mark.timeout(60)
def test_a_connection_thread_that_cannot_start_stops_nothing(wsgi_bg_middleware,
                                                             monkeypatch, caplog):
    """The store's server runs in the web process: a thread limit hit once
    (a burst) must cost one worker's start, not every job after it."""
    import threading

    from wsgi_bg.stores import memory

    class Once(threading.Thread):
        failed = False

        def start(self):
            if self.name == "wsgi_bg-store-connection" and not Once.failed:
                Once.failed = True
                raise RuntimeError("can't start new thread")
            super().start()

    monkeypatch.setattr(memory.threading, "Thread", Once)
    mw = wsgi_bg_middleware(lambda environ, start_response: [], max_workers=1)
    assert mw.submit(jobfuncs.add, 1, 2).wait(timeout=30).result == 3
    assert Once.failed
    assert mw.submit(jobfuncs.add, 2, 3).wait(timeout=30).result == 5
    said = [r.getMessage() for r in caplog.records if "pool worker" in r.getMessage()]
    assert any("can't start new thread" in m for m in said), said


_FD_SCRIPT = """
import logging, os, resource, socket, sys, time
from wsgi_bg.stores.memory import MemoryBackend

said = []
class Keep(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())
logging.getLogger("wsgi_bg").addHandler(Keep())
backend = MemoryBackend(keep_finished=10, job_ttl=60, max_output_bytes=4096)
address = backend.link().address
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
client = socket.socket(socket.AF_UNIX)   # a worker, knocking
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
client.connect(address)                  # accepted by the kernel, not by us
deadline = time.monotonic() + 10
while not said and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.5)                          # what a spinning loop would log meanwhile
for fd in held:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
again = socket.socket(socket.AF_UNIX)    # the worker the pool starts next
again.connect(address)
deadline = time.monotonic() + 10
while len(said) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
backend.stop()
print(len(said)); print(said[0]); print(said[-1])
"""


@pytest.mark.timeout(60)
def test_no_descriptor_left_is_said_once_and_passes(tmp_path):
    """Out of file descriptors, the store's accept loop waits and retries
    (it once logged 130,000 warnings a second, a core's worth), says so once,
    and takes connections again when descriptors are free."""
    import subprocess
    import sys

    script = tmp_path / "fds.py"
    script.write_text(_FD_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, timeout=50, cwd=str(tmp_path),
                          env=_pythonpath_env())
    count, first, last = done.stdout.splitlines()[-3:]
    assert (count, "OSError" in first, "again" in last) == ("2", True, True), done


def _pythonpath_env():
    import os
    import pathlib

    root = str(pathlib.Path(jobfuncs.__file__).resolve().parent.parent)
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root, os.environ.get("PYTHONPATH", "")]))


def test_store_max_queued(make_store):
    store = make_store()
    assert store.create(record("a"), 2)
    assert store.create(record("b"), 2)
    assert not store.create(record("c"), 2)
    assert store.get("c") is None
    store.start("a", 1)
    assert store.create(record("c"), 2)


def test_store_drops_oldest_finished_past_max_jobs(make_store):
    store = make_store(keep_finished=3)
    for i in range(6):
        store.create(record(f"j{i}"), 100)
    store.start("j0", 1)  # running: never dropped
    for i in (1, 2, 3, 4, 5):
        store.start(f"j{i}", 1)
        store.finish(f"j{i}", Ending("succeeded"))
    kept = [r["id"] for r in store.list()]
    assert kept == ["j5", "j4", "j3", "j0"]
    assert store.get("j1") is None and store.read_output("j1", 0) is None


def test_store_never_drops_queued_or_running(make_store):
    store = make_store(keep_finished=1, job_ttl=0)
    for i in range(5):
        store.create(record(f"q{i}"), 100)
    store.start("q0", 1)
    assert len(store.list()) == 5


def test_store_drops_finished_after_ttl(make_store):
    store = make_store(job_ttl=0.2)
    store.create(record("old"), 10)
    store.start("old", 1)
    store.finish("old", Ending("succeeded"))
    store.create(record("queued"), 10)
    assert store.get("old") is not None
    deadline = time.monotonic() + 5
    while store.get("old") is not None:  # a plain read drops expired jobs too
        assert time.monotonic() < deadline, "the expired job was never dropped"
        time.sleep(0.01)
    assert [r["id"] for r in store.list()] == ["queued"]


def test_counts_leave_out_what_expired(make_store):
    """The counts (the list's tabs, the metrics' wsgi_bg_jobs gauge) drop a
    job past job_ttl as every other read does, though nothing was created
    since."""
    store = make_store(job_ttl=0.2)
    store.create(record("old"), 10)
    store.start("old", 1)
    store.finish("old", Ending("succeeded"))
    assert store.counts()["succeeded"] == 1
    deadline = time.monotonic() + 5
    while store.counts()["succeeded"]:  # only counts are read here
        assert time.monotonic() < deadline, "counts still hold the expired job"
        time.sleep(0.01)


def test_store_counts_and_states(make_store):
    store = make_store()
    for job_id in "abc":
        store.create(record(job_id), 10)
    store.start("b", 1)
    store.request_cancel("c", None)
    assert store.ids_in_state(JobState.QUEUED.value) == ["a"]
    assert store.ids_in_state("running", "cancelled") == ["b", "c"]
    counts = store.counts()
    assert counts["queued"] == 1 and counts["running"] == 1
    assert counts["cancelled"] == 1 and counts["succeeded"] == 0


def test_view_reads_record_and_output_at_once(make_store):
    store = make_store()
    record = {"id": "v", "name": "t", "created_at": 0.0, "started_at": None,
              "ended_at": None, "result": None, "error": None, "progress": None,
              "timeout": None, "cancel_requested": False, "cancel_grace": None,
              "url": None, "pid": None}
    assert store.create(record, 10)
    store.start("v", 1)
    store.relay("v", "abc", None)
    view = store.view("v", 1)
    assert view is not None
    got, text, offset = view
    assert (got["state"], text, offset) == ("running", "bc", 3)
    store.finish("v", Ending("succeeded", text="def\n",
                             progress={"done": 1, "total": 1, "message": None}))
    got, text, offset = store.view("v", 3)
    assert (got["state"], got["progress"]["done"], text, offset) == (
        "succeeded", 1, "def\n", 7)
    assert store.view("missing", 0) is None


def running(store, job_id="o"):
    assert store.create(record(job_id), 10)
    assert store.start(job_id, 1)
    return job_id


@pytest.mark.parametrize("chunk", [pytest.param(7, id="small-writes"),
                                   pytest.param(5000, id="one-big-write")])
def test_store_output_past_limit_keeps_head_and_tail(make_store, chunk):
    store = make_store(max_output_bytes=1000)
    job = running(store)
    written = "".join(f"{i:08d}\n" for i in range(1000))
    for start in range(0, len(written), chunk):
        store.relay(job, written[start : start + chunk], None)
    text, offset = store.read_output(job, 0)
    assert offset == len(written)
    head, dropped, tail = split(text)
    assert written.startswith(head) and len(head) == 500
    assert written.endswith(tail) and tail
    assert len(head) + dropped + len(tail) == len(written)
    assert len(head) + len(tail) <= 1000
    # A poller at the end gets nothing; from inside the tail, only what is new.
    assert store.read_output(job, offset) == ("", offset)
    assert store.read_output(job, offset - 9) == (written[-9:], offset)
    # From the dropped middle: the marker, then the tail.
    assert MARKER.match(store.read_output(job, 600)[0])


def test_store_output_offsets_count_utf8_bytes_and_cuts_keep_characters(make_store):
    store = make_store(max_output_bytes=256)
    job = running(store)
    store.relay(job, "é", None)
    assert store.read_output(job, 0) == ("é", 2)  # two bytes
    line = "😀é" * 10 + "\n"  # 4- and 2-byte characters: cuts must not split them
    for _ in range(40):
        store.relay(job, line, None)
    text, offset = store.read_output(job, 0)
    assert offset == 2 + 40 * len(line.encode())
    assert "\ufffd" not in text  # no character was cut in half
    head, dropped, tail = split(text)
    assert len(head.encode()) <= 128 and len(head.encode()) + len(tail.encode()) <= 256
    assert len(head.encode()) + dropped + len(tail.encode()) == offset


def test_store_lone_surrogates_become_replacement_characters(make_store):
    store = make_store()
    job = running(store)
    store.relay(job, "a\udcffb", None)
    assert store.read_output(job, 0) == ("a\ufffdb", 5)


def test_store_cancel_details(make_store):
    store = make_store()
    store.create(record("q"), 10)
    store.request_cancel("q", None)
    assert store.get("q")["cancelled_how"] == "before_start"
    assert store.get("q")["cancel_requested_at"] is not None
    running(store, "stopped")
    store.request_cancel("stopped", None)
    asked = store.get("stopped")["cancel_requested_at"]
    assert asked is not None and store.get("stopped")["state"] == "running"
    assert store.finish("stopped", Ending("succeeded", b"x")) == "cancelled"
    assert store.get("stopped")["cancelled_how"] == "stopped"
    running(store, "killed")
    store.request_cancel("killed", 0.5)
    assert store.finish("killed", Ending("cancelled", error="killed")) == "cancelled"
    got = store.get("killed")
    assert (got["cancelled_how"], got["error"]) == ("killed", "killed")


def test_store_shutdown_stop_keeps_the_outcome(make_store):
    store = make_store()
    running(store, "s")
    assert store.request_cancel("s", 2.0, shutdown=True) == "requested"
    assert store.relay("s", "", None) == (True, 2.0)
    assert store.get("s")["cancel_requested"] is False
    assert store.finish("s", Ending("succeeded", b"x", shown="1")) == "succeeded"
    assert store.result("s") == b"x"


# -- paging the list ---------------------------------------------------------------
def paged(store, jobs: int = 30) -> None:
    """``jobs`` jobs, ``j00`` oldest: every third failed, every third running,
    the rest queued; names ``mail.N`` for odd N, ``Reports.N`` for even."""
    for n in range(jobs):
        job_id = f"j{n:02d}"
        store.create(dict(record(job_id), created_at=1e9 + n,
                          name=f"mail.{n}" if n % 2 else f"Reports.{n}"), 1000)
        if n % 3:
            store.start(job_id, 1)
        if n % 3 == 1:
            store.finish(job_id, Ending("failed", error="boom"))


def ids(found):
    records, total = found
    return [r["id"] for r in records], total


def test_store_page_is_newest_first_with_the_total(make_store):
    store = make_store()
    paged(store)
    assert ids(store.page(limit=3)) == (["j29", "j28", "j27"], 30)
    assert ids(store.page(offset=27, limit=5)) == (["j02", "j01", "j00"], 30)
    assert ids(store.page(offset=40, limit=5)) == ([], 30)
    assert ids(store.page(limit=0)) == ([], 30)
    records, _ = store.page(limit=1)
    assert records[0] == store.get("j29")


def test_store_page_filters_by_states(make_store):
    store = make_store()
    paged(store)
    assert ids(store.page(("failed",), limit=3)) == (["j28", "j25", "j22"], 10)
    assert ids(store.page(("failed",), offset=9, limit=3)) == (["j01"], 10)
    # Several states: merged, newest first, paged across them.
    assert ids(store.page(("queued", "failed"), limit=4)) == (
        ["j28", "j27", "j25", "j24"], 20)
    assert ids(store.page(("queued", "failed"), offset=18, limit=4)) == (
        ["j01", "j00"], 20)
    assert ids(store.page(("succeeded",))) == ([], 0)


def test_store_page_searches_names_and_ids(make_store):
    store = make_store()
    paged(store)
    # Case-insensitive, a substring of the name, newest first.
    assert ids(store.page(query="reports.2", limit=3)) == (["j28", "j26", "j24"], 6)
    assert ids(store.page(query="REPORTS.2", offset=5, limit=3)) == (["j02"], 6)
    assert ids(store.page(("failed",), "mail.", limit=2)) == (["j25", "j19"], 5)
    assert ids(store.page(query="j07")) == (["j07"], 1)  # an id, exactly
    assert ids(store.page(query="j0")) == ([], 0)  # not a part of one
    assert ids(store.page(query="nothing")) == ([], 0)


def test_store_page_search_is_literal(make_store):
    store = make_store()
    for n, name in enumerate(['a"quoted"', "100%.done", "back\\slash", "ünï"]):
        store.create(dict(record(f"s{n}"), name=name, created_at=1e9 + n), 10)
    assert ids(store.page(query='"quoted')) == (["s0"], 1)
    assert ids(store.page(query="%.")) == (["s1"], 1)
    assert ids(store.page(query="k\\s")) == (["s2"], 1)
    assert ids(store.page(query="ünï")) == (["s3"], 1)


@pytest.mark.parametrize("value", [
    pytest.param(10**20, id="10**20"), pytest.param(2**63, id="2**63"),
    pytest.param(1e20, id="float"), pytest.param(-1, id="negative"),
    pytest.param(True, id="bool"), pytest.param("3", id="str"),
])
def test_store_page_refuses_paging_values_no_store_can_serve(make_store, value):
    store = make_store()
    paged(store, jobs=3)
    allowed = "must be an integer from 0 to 2147483647"
    with pytest.raises(ValueError, match=f"offset {allowed}"):
        store.page(offset=value)
    with pytest.raises(ValueError, match=f"limit {allowed}"):
        store.page(limit=value)
    with pytest.raises(ValueError, match="limit must be an integer"):
        store.list(value)
    # The largest allowed: an empty page, the right total.
    assert ids(store.page(offset=2**31 - 1, limit=2**31 - 1)) == ([], 3)


def test_store_search_reads_a_bounded_number_of_names(make_store):
    from wsgi_bg.stores.protocol import SEARCH_SCAN

    store = make_store()
    jobs = SEARCH_SCAN + 10
    for n in range(jobs):  # the 10 oldest are named "old", the others "new"
        store.create(dict(record(f"j{n:04d}"), created_at=1e9 + n,
                          name="old.job" if n < 10 else "new.job"), jobs)
    found = store.page(query="new", limit=5)
    assert ids(found) == ([f"j{n:04d}" for n in range(jobs - 1, jobs - 6, -1)],
                          SEARCH_SCAN)
    assert found.partial  # the 10 oldest were not read
    assert ids(store.page(query="old")) == ([], 0)  # ... so not found
    assert ids(store.page(query="j0003")) == (["j0003"], 1)  # an id: wherever
    # Within the bound: complete.
    store.request_cancel("j0000", None)
    within = store.page(("cancelled",), "old")
    assert ids(within) == (["j0000"], 1) and not within.partial
    assert not store.page(limit=1).partial  # no search: every job counted


def test_store_page_skips_dropped_jobs(make_store):
    store = make_store(keep_finished=2)
    paged(store, jobs=9)  # 3 failed, 2 of them dropped past keep_finished
    assert ids(store.page(("failed",))) == (["j07", "j04"], 2)
    assert store.page()[1] == 8


def test_store_rerun_links_both_records_in_the_create(make_store):
    store = make_store()
    running(store, "old")
    store.finish("old", Ending("failed", error="boom"))
    assert store.get("old")["rerun_as"] is None
    assert store.create(dict(record("new"), rerun_of="old"), 10, b"call")
    assert store.get("new")["rerun_of"] == "old"
    assert store.get("new")["rerun_as"] is None
    assert store.get("old")["rerun_as"] == "new"
    assert store.create(dict(record("newer"), rerun_of="old"), 10)
    assert store.get("old")["rerun_as"] == "newer"  # the latest
    # The original dropped meanwhile: the run again is created all the same.
    assert store.create(dict(record("orphan"), rerun_of="gone"), 10)
    assert store.get("gone") is None and store.get("orphan")["rerun_of"] == "gone"
    # Refused (queue full): nothing linked.
    assert not store.create(dict(record("refused"), rerun_of="old"), 1)
    assert store.get("old")["rerun_as"] == "newer"
