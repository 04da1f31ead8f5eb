"""Bounded memory: jobs kept, output kept."""
from __future__ import annotations

import re
import time

import pytest

import jobfuncs
from helpers import wait_for
from wsgi_bg import JobState


def test_keep_finished_drops_oldest_finished_first(make_mw, tmp_path):
    mw = make_mw(keep_finished=3, max_workers=2)
    flag = str(tmp_path / "go")
    running = mw.submit(jobfuncs.print_wait_print, "old", flag)  # the oldest
    wait_for(lambda: running.state is JobState.RUNNING, 20, message="running")
    done = []
    for i in range(6):
        done.append(mw.submit(jobfuncs.add, i, 0).wait(timeout=20))
    kept = mw.jobs()
    assert kept == [*done[-1:-4:-1], running]  # newest 3 finished + the running one
    assert mw.get_job(done[0].id) is None
    with pytest.raises(LookupError, match="no longer stored"):
        _ = done[0].state
    jobfuncs.touch(flag)
    running.wait(timeout=20)
    wait_for(lambda: mw.get_job(done[-3].id) is None, 5,
             message="the oldest finished job to be dropped")
    # Creation order, newest first; the long job, finished last, was created first.
    assert mw.jobs() == [done[-1], done[-2], running]


def test_max_jobs_is_the_old_name_of_keep_finished(make_mw):
    with pytest.warns(DeprecationWarning,
                      match=r"max_jobs=\.\.\.\) is deprecated: pass keep_finished="):
        mw = make_mw(max_jobs=1)
    assert mw.settings.keep_finished == 1
    first = mw.submit(jobfuncs.add, 1, 1).wait(timeout=20)
    second = mw.submit(jobfuncs.add, 2, 2).wait(timeout=20)
    wait_for(lambda: mw.get_job(first.id) is None, 10,
             message="the first job to be dropped past max_jobs=1")
    assert mw.jobs() == [second]
    with pytest.raises(TypeError, match="old name of keep_finished: pass"
                       " keep_finished alone"):
        make_mw(max_jobs=1, keep_finished=2)


def test_job_ttl_drops_finished_jobs(make_mw, tmp_path):
    mw = make_mw(job_ttl=1.0)
    flag = str(tmp_path / "go")
    running = mw.submit(jobfuncs.print_wait_print, "long", flag)
    wait_for(lambda: running.state is JobState.RUNNING, 20, message="running")
    finished = mw.submit(jobfuncs.add, 1, 1)
    # Its end time taken from the read that first shows it ended: a finished
    # job may be gone by a later read (under load, a second is not much).
    seen = []

    def succeeded() -> bool:
        record = mw.engine.store.get(finished.id)
        if record is not None and record["state"] == JobState.SUCCEEDED:
            seen.append(record["ended_at"])
        return bool(seen)

    wait_for(succeeded, 20, message="the job to succeed")
    ended = seen[0]
    wait_for(lambda: mw.get_job(finished.id) is None, 10,
             message="the finished job to expire")
    assert time.time() - ended >= 1.0
    # Running (and queued) jobs stay whatever their age.
    assert mw.get_job(running.id) == running
    jobfuncs.touch(flag)
    running.wait(timeout=20)


@pytest.mark.timeout(90)
def test_thousands_of_jobs_keep_the_store_bounded(make_mw):
    keep_finished = 100
    mw = make_mw(keep_finished=keep_finished, max_workers=2, max_queued=3000)
    start = time.monotonic()
    stored_max = 0
    last = None
    for i in range(3000):
        last = mw.submit(jobfuncs.add, i, 0)
        if i % 100 == 0:
            counts = mw.engine.store.counts()
            pending = counts["queued"] + counts["running"]
            stored = sum(counts.values())
            assert stored <= keep_finished + pending
            stored_max = max(stored_max, stored - pending)
    last.wait(timeout=80)  # ~9 s on 2 idle cores
    wait_for(lambda: not any(
        mw.engine.store.counts()[s] for s in ("queued", "running")),
        20, message="every job to finish")
    jobs = mw.jobs()
    assert len(jobs) == keep_finished
    assert all(j.state is JobState.SUCCEEDED for j in jobs)
    assert jobs[0] == last and last.result == 2999
    elapsed = time.monotonic() - start
    print(f"3000 jobs in {elapsed:.1f} s")
    assert stored_max <= keep_finished


def test_big_output_keeps_head_and_tail(make_mw):
    limit = 10_000
    mw = make_mw(max_output_bytes=limit)
    job = mw.submit(jobfuncs.many_lines, 5000).wait(timeout=20)  # ~54 KB
    assert job.state is JobState.SUCCEEDED
    written = "".join(f"line {i}\n" for i in range(5000))
    out = job.output
    match = re.search(
        r"\n\[… (\d+) bytes of output dropped: the job wrote more than"
        r" max_output_bytes=10000 …\]\n", out)
    assert match
    head, tail = out[: match.start()], out[match.end() :]
    assert written.startswith(head) and len(head) == limit // 2
    assert written.endswith(tail) and tail.endswith("line 4999\n")
    assert len(head) + int(match[1]) + len(tail) == len(written)
    assert len(head) + len(tail) <= limit
    assert job.to_dict()["output_size"] == len(written)
