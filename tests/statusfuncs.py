"""Module-level job targets for the status page tests (workers import them by name)."""
import os
import sys
import time

from wsgi_bg import current_job


def say(text, result=None):
    """Write ``text`` to stdout exactly as given; return ``result``."""
    sys.stdout.write(text)
    sys.stdout.flush()
    return result


def say_bytes(data):
    """Write raw bytes to fd 1 (invalid UTF-8, NUL...)."""
    os.write(1, data)


def fail_with(message):
    raise ValueError(message)


def gated(path, before="started\n", after="finished\n", progress=None):
    """Write ``before``, report ``progress`` (done, total, message) if given,
    wait until the file ``path`` exists (at most 30 s), then write ``after``.

    Lets a test hold a job running for exactly as long as it needs.
    """
    sys.stdout.write(before)
    sys.stdout.flush()
    if progress is not None:
        current_job.progress(*progress)
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        if current_job.cancel_requested:
            return "cancelled"
        time.sleep(0.01)
    sys.stdout.write(after)
    sys.stdout.flush()
    return "done"
