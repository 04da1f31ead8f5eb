"""Output: fd-level capture, in order, live, batched."""
from __future__ import annotations

import time

import pytest

import jobfuncs
from helpers import wait_for
from wsgi_bg import JobState
from wsgi_bg.capture import Relay
from wsgi_bg.stores.memory import MemoryStore

# Also on the RQ runner (see conftest.py): these describe how jobs run.
pytestmark = pytest.mark.runner_contract


def test_everything_written_arrives_in_order(mw):
    job = mw.submit(jobfuncs.mixed_output).wait(timeout=20)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.output.splitlines() == [
        "1 print",
        "2 stderr",
        "3 logging",
        "4 import-time handler",
        "5 os.system",
        "6 subprocess",
        "7 subprocess-stderr",
        "8 write",
        "9 last",
    ]


def test_a_printed_line_is_readable_within_half_a_second(mw, tmp_path):
    flag = tmp_path / "go"
    job = mw.submit(jobfuncs.print_then_wait, str(flag))
    try:
        text = wait_for(lambda: "started" in job.output and job.output,
                        20, interval=0.005, message="the first line")
        seen_at = time.time()
        printed_at = float(text.split()[1])
        latency = seen_at - printed_at
        assert job.state is JobState.RUNNING  # still running: read live
        print(f"output latency {latency * 1000:.0f} ms")
        assert latency < 0.5, f"the line took {latency:.3f} s to reach the parent"
    finally:
        jobfuncs.touch(flag)
    job.wait(timeout=20)
    assert job.output.splitlines()[1] == "released"


def test_read_output_since_offset(mw, tmp_path):
    flag = tmp_path / "go"
    job = mw.submit(jobfuncs.print_then_wait, str(flag))
    first, offset = wait_for(lambda: (r := job.read_output(0))[0] and r, 20,
                             message="first output")
    assert first.startswith("started ") and offset == len(first)
    assert job.read_output(offset) == ("", offset)
    jobfuncs.touch(flag)
    job.wait(timeout=20)
    assert job.read_output(offset) == ("released\n", offset + len("released\n"))
    assert job.read_output(10_000) == ("", len(job.output))


@pytest.mark.timeout(60)
def test_100000_lines_arrive_complete_and_fast(make_mw):
    mw = make_mw(max_output_bytes=4_000_000)  # 1.2 MB of lines: keep them all
    n = 100_000
    start = time.monotonic()
    job = mw.submit(jobfuncs.many_lines, n).wait(timeout=40)
    elapsed = time.monotonic() - start
    assert job.state is JobState.SUCCEEDED, job.error
    lines = job.output.splitlines()
    assert len(lines) == n
    assert lines[0] == "line 0" and lines[-1] == f"line {n - 1}"
    assert lines == [f"line {i}" for i in range(n)]
    # One store round trip per line would cost several seconds on its own.
    assert elapsed < 10, f"100,000 lines took {elapsed:.1f} s"


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__(max_output_bytes=4_000_000)
        self.relays = 0

    def relay(self, job_id, text, progress, offset=None):
        self.relays += 1
        return super().relay(job_id, text, progress, offset)


def _store_with_job() -> tuple[CountingStore, str]:
    store = CountingStore()
    record = {"id": "j", "name": "t", "created_at": 0.0, "started_at": None,
              "ended_at": None, "result": None, "error": None, "progress": None,
              "timeout": None, "cancel_requested": False, "cancel_grace": None,
              "url": None, "pid": None}
    assert store.create(record, 10)
    return store, "j"


def test_relay_batches_100000_lines():
    """Driven like the supervisor drives it: every pipe read is fed, and a
    batch goes out whenever one is due. One line per read is the worst case."""
    store, job_id = _store_with_job()
    relay = Relay(store, job_id)
    for i in range(100_000):
        relay.feed(f"line {i}\n".encode())
        if relay.due_in() == 0.0:
            relay.send()
    store.relay(job_id, *relay.take(final=True))
    text, _ = store.read_output(job_id, 0)
    assert text.count("\n") == 100_000
    assert store.relays < 100, f"{store.relays} store calls for 100,000 lines"


def test_relay_sends_a_lone_line_within_its_interval():
    store, job_id = _store_with_job()
    relay = Relay(store, job_id, interval=0.05)
    relay.feed(b"one line\n")
    assert 0 < relay.due_in() <= 0.05
    wait_for(lambda: relay.due_in() == 0.0, 1, interval=0.005, message="due")
    relay.send()
    assert store.read_output(job_id, 0) == ("one line\n", 9)


def test_relay_decodes_split_utf8():
    store, job_id = _store_with_job()
    relay = Relay(store, job_id)
    data = "é✓\n".encode()
    for i in range(len(data)):
        relay.feed(data[i : i + 1])
    store.relay(job_id, *relay.take(final=True))
    assert store.read_output(job_id, 0)[0] == "é✓\n"


def test_relay_polls_the_store_when_the_job_is_silent():
    """An empty send is how a cancel request reaches the supervisor: it must
    fall due even when the job writes nothing."""
    store, job_id = _store_with_job()
    relay = Relay(store, job_id, poll=0.05)
    relay.send()
    assert relay.due_in() > 0
    wait_for(lambda: relay.due_in() == 0.0, 1, interval=0.005,
             message="an empty batch to fall due")
    store.start(job_id, 1)
    store.request_cancel(job_id, None)
    assert relay.send() == (True, None)
