"""Job functions that do things to their own process (issue 10)."""
from __future__ import annotations

import io
import os
import sys
import tempfile


def close_stdout():
    print("before")
    sys.stdout.close()
    return "kept"


def close_stderr():
    print("before", file=sys.stderr)
    sys.stderr.close()
    return "kept"


def close_fds_after_unflushed_print():
    print("unflushed", end="")
    os.close(1)
    os.close(2)
    return "kept"


def chdir_into_removed_tmp():
    path = tempfile.mkdtemp()
    os.chdir(path)
    os.rmdir(path)
    return "kept"


def replace_sys_path():
    sys.path = ["/nonexistent"]
    return "kept"


def big_result(size):
    return b"x" * size


def rewrap_stdout_utf8():
    sys.stdout = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8",
                                  line_buffering=True)
    print("rewrapped")
    return "kept"


def reconfigure_stdout():
    sys.stdout.reconfigure(encoding="latin-1")
    print("reconfigured")
    return "kept"


def leave_daemon(seconds):
    """A fork+setsid daemon (no exec), as a job might start one: it keeps
    every fd its job process had but 0-2. Returns its pid."""
    import time

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.close(devnull)
            os.close(r)
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            time.sleep(seconds)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as pipe:
        return int(pipe.read())


def raw_progress():
    """Progress sent past current_job's checks (a job's process may send
    anything to its supervisor)."""
    from wsgi_bg import context

    context._job.report_progress({"done": "not a number"})
    context._job.report_progress({"done": 10**5000, "total": float("inf"),
                                  "message": "m" * 20_000})
    return "done"


def blocked_signals():
    """The signals this job's process blocks (none, wherever it started)."""
    import signal

    return sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))
