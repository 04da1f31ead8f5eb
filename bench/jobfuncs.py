"""Module-level job targets for the benchmarks (workers import them by name).

Every job here is bounded: it ends by itself after a known amount of work.
"""

from __future__ import annotations

import os
import sys
import time

from wsgi_bg import backgrounder


def noop(i: int = 0) -> int:
    """The trivial job every engine in the issue is compared on."""
    return i


def hello_app(environ, start_response):  # type: ignore[no-untyped-def]
    """An unmarked route: the bare app of the passthrough benchmark."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


@backgrounder
def marked_app(environ, start_response):  # type: ignore[no-untyped-def]
    """A marked WSGI app: each request to it becomes a (trivial) job."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done\n"]


def line(i: int) -> str:
    """The ``i``-th short line the output benchmark prints (with its newline)."""
    return f"line {i}\n"


def lines_size(n: int) -> int:
    """Characters in ``n`` lines of :func:`line`."""
    return sum(len(line(i)) for i in range(n))


def print_lines(n: int) -> float:
    """Print ``n`` short lines; return ``time.monotonic()`` at the first print.

    CLOCK_MONOTONIC is system-wide on Linux, so the parent can compare it with
    its own clock.
    """
    t0 = time.monotonic()
    for i in range(n):
        print(f"line {i}")
    return t0


def pipe_lines(n: int, fd: int) -> None:
    """The reference: the same loop printing to a buffered ``os.pipe``.

    The first line carries the start time (taken before it is printed).
    """
    out = os.fdopen(fd, "w")  # block-buffered, as Python opens a plain pipe
    t0 = time.monotonic()
    print(f"T0 {t0!r}", file=out)
    for i in range(n):
        print(f"line {i}", file=out)
    out.close()


def print_bytes(total: int) -> int:
    """Print exactly ``total`` characters of ASCII output, in 64-character lines."""
    row = "x" * 63 + "\n"
    full, rest = divmod(total, len(row))
    write = sys.stdout.write
    for _ in range(full):
        write(row)
    if rest:
        write("y" * (rest - 1) + "\n" if rest > 1 else "\n")
    sys.stdout.flush()
    return total


def print_newlines(total: int) -> int:
    """Print ``total`` line breaks: as many empty lines, each a row of a
    job's page (review finding 7)."""
    sys.stdout.write("\n" * total)
    sys.stdout.flush()
    return total


def print_colours(total: int) -> int:
    """Print about ``total`` characters of colour changes, one character
    each (``ESC[3Nm`` and a letter, 80 letters a line): ~175k changes per
    MiB, the worst a job's page may be asked to draw (issue 18)."""
    parts, size, i = [], 0, 0
    while size < total:
        part = f"\x1b[3{i % 8}m{chr(97 + i % 26)}" + ("\n" if i % 80 == 79 else "")
        parts.append(part)
        size, i = size + len(part), i + 1
    sys.stdout.write("".join(parts))
    sys.stdout.flush()
    return size


def tick(n: int, delay: float) -> int:
    """A live job: one line every ``delay`` seconds, ``n`` times."""
    for i in range(n):
        print(f"tick {i} of {n}")
        time.sleep(delay)
    return n


if __name__ == "__main__":  # the pipe reference's child: python -m bench.jobfuncs N FD
    pipe_lines(int(sys.argv[1]), int(sys.argv[2]))
