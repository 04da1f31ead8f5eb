"""Process control that several of a runner's processes share: Linux's
parent-death signal and child subreaper (:func:`die_with_parent`,
:func:`become_subreaper`), a process's children (:func:`children`), killing
a job's process group (:func:`kill_group`), waiting for a process that is
not a child (:func:`wait_for_exit`), and how a process ended, in words
(:func:`describe_exitcode`).

Run where they are called: the pool worker (:mod:`~wsgi_bg.runners.pool_worker`)
asks to die with the forkserver; the job process
(:mod:`~wsgi_bg.runners.job_process`) asks to die with its supervisor and
keeps its orphans; the supervisor and the server-side pool describe how a
job process or a pool worker ended; the server (the engine, the pool) and a
dying pool worker kill job processes' groups.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import time
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc: Any = None


def _prctl(option: int, value: int) -> None:
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(option, value, 0, 0, 0)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send this process ``sig`` when its parent dies."""
    _prctl(_PR_SET_PDEATHSIG, sig)


def become_subreaper() -> None:
    """Make this process a child subreaper (Linux): its orphaned descendants
    become its children, not init's (a job process sees what a job left)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def describe_exitcode(code: int) -> str:
    """How a process ended, from its exit code (negative: the signal)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (signal {-code})"
    return f"exited with code {code}"


def children(pid: int) -> list[int]:
    """The pids of process ``pid``'s children (a pool worker's: its job
    processes, each the leader of its own group); Linux only, else none."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as file:
            return [int(child) for child in file.read().split()]
    except (OSError, ValueError):
        return []


def kill_group(pgid: int) -> None:
    """SIGKILL process group ``pgid`` (a job's: its process and what it
    started); gone already: nothing."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_for_exit(pid: int, poll: float = 0.5) -> None:
    """Block until process ``pid`` has exited (it need not be our child)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        return
    while True:  # no pidfd (not Linux): poll
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(poll)
