"""Module-level job targets for the tests (workers import them by name).

Jobs that must wait for the test wait on a file the test creates
(:func:`wait_file`), never for a fixed time; their own waits are bounded so
that a failing test cannot leave a job running for ever.
"""
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from wsgi_bg import background, current_job

# Bound at import, in the worker, before the job's child is forked: its stream
# is the worker's own (block-buffered) sys.stdout object.
import_time_logger = logging.getLogger("jobfuncs.import_time")
import_time_logger.addHandler(logging.StreamHandler(sys.stdout))
import_time_logger.setLevel(logging.INFO)
import_time_logger.propagate = False


def wait_file(path, timeout=30.0):
    """Wait (inside a job) until ``path`` exists; ``False`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def touch(path):
    with open(path, "w"):
        pass


def add(a, b):
    return a + b


def identity(value):
    return value


def hello():
    print("hello")
    print("to stderr", file=sys.stderr)
    return 42


def sleeper(seconds):
    time.sleep(seconds)
    return seconds


def boom():
    raise ValueError("boom")


@background(timeout=1)
def limited(seconds):
    time.sleep(seconds)


# -- output -------------------------------------------------------------------
def mixed_output():
    print("1 print")
    print("2 stderr", file=sys.stderr)
    logger = logging.getLogger("jobfuncs.mixed")
    handler = logging.StreamHandler()  # sys.stderr, as the job sees it
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.info("3 logging")
    import_time_logger.info("4 import-time handler")
    os.system("echo 5 os.system")
    subprocess.run(["sh", "-c", "echo 6 subprocess; echo 7 subprocess-stderr >&2"],
                   check=True)
    sys.stdout.write("8 write\n")
    print("9 last", file=sys.stderr)
    return "done"


def print_then_wait(flag):
    print(f"started {time.time()!r}")
    ok = wait_file(flag)
    print("released" if ok else "gave up")
    return ok


def many_lines(n):
    for i in range(n):
        print(f"line {i}")
    return n


def write_chars(n):
    sys.stdout.write("x" * n)
    return n


# -- results and errors -------------------------------------------------------
def return_lock():
    return threading.Lock()


def return_generator():
    return (i for i in range(3))


class TwoArgError(Exception):
    def __init__(self, first, second):
        super().__init__(f"{first}: {second}")
        self.first = first
        self.second = second


def raise_two_arg():
    raise TwoArgError("first", "second")


# -- crashes ------------------------------------------------------------------
def exit_hard(code):
    print("about to exit")
    os._exit(code)


def kill_self():
    print("about to SIGKILL myself")
    os.kill(os.getpid(), signal.SIGKILL)


def segfault():
    print("about to segfault")
    ctypes.string_at(0)


def print_wait_print(name, flag):
    """Prints its name, waits for ``flag``, prints it again."""
    print(f"{name} start")
    ok = wait_file(flag)
    print(f"{name} end")
    return ok


# -- timeouts and cancel ------------------------------------------------------
def pids_then_sleep(seconds, grandchild_seconds=60):
    """Print this process's pid and a grandchild's, then sleep."""
    child = subprocess.Popen(["sleep", str(grandchild_seconds)])
    print(f"pids {os.getpid()} {child.pid}")
    time.sleep(seconds)
    return "woke"


@background(timeout=1)
def limited_pids(seconds):
    return pids_then_sleep(seconds)


def cooperative(started):
    """Run until asked to stop, then return."""
    touch(started)
    deadline = time.monotonic() + 30
    while not current_job.cancel_requested:
        if time.monotonic() > deadline:
            return "never asked"
        time.sleep(0.01)
    print("stopping as asked")
    return "stopped"


def stubborn(started, seconds=60):
    """Ignore cancel requests."""
    touch(started)
    time.sleep(seconds)
    return "finished anyway"


# -- @background and current_job ----------------------------------------------
@background
def inner(x):
    print(f"inner {x}")
    return x * 2


def outer(x):
    print("outer before")
    value = inner(x)
    print(f"outer after {value}")
    return value


@background
def marked_add(a, b):
    print(f"adding {a} {b}")
    return a + b


def report_progress(flag):
    current_job.progress(3, 10, "three of ten")
    print(f"id {current_job.id}")
    wait_file(flag)
    return current_job.id



def short_work(seconds):
    """Print, work ``seconds`` (ignoring cancel requests), print again."""
    print("work start")
    time.sleep(seconds)
    print("work end")
    return seconds


def pid_cwd_env():
    """Where a job runs: its pid, working directory and a test variable."""
    return os.getpid(), os.getcwd(), os.environ.get("WSGI_BG_TEST_VAR")


def change_cwd_env(path):
    os.chdir(path)
    os.environ["WSGI_BG_TEST_VAR"] = "changed"
    return os.getpid()


def env_of(*names):
    """This job's pid and the values of the variables ``names``."""
    return os.getpid(), [os.environ.get(name) for name in names]


def change_env(changes):
    """Set each variable of ``changes`` to its value; ``None`` removes it."""
    for name, value in changes.items():
        if value is None:
            del os.environ[name]
        else:
            os.environ[name] = value
    return os.getpid()


def leave_thread(flag):
    """Start a thread that outlives the job (until ``flag`` exists)."""
    import threading

    threading.Thread(target=wait_file, args=(flag, 30), daemon=True).start()
    return os.getpid()


def leave_process():
    """Start a process that outlives the job; return both pids."""
    import subprocess

    straggler = subprocess.Popen(["sleep", "30"])
    return os.getpid(), straggler.pid


def leave_quiet_process():
    """A child that outlives the job without holding its output pipe."""
    import subprocess

    straggler = subprocess.Popen(["sleep", "30"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    return os.getpid(), straggler.pid


def leave_orphan():
    """A grandchild orphaned at once (its parent exits), quiet as well."""
    import subprocess

    out = subprocess.run(
        ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True,
    )
    return os.getpid(), int(out.stdout)


def replace_stdout():
    import io

    sys.stdout = io.StringIO()
    return os.getpid()


def print_pid():
    print("visible")
    return os.getpid()


def pid_and_parent():
    """Where it runs: this process's pid and its parent's."""
    return os.getpid(), os.getppid()


def signal_handlers():
    """The handlers this job started with, by signal name ("default",
    "ignored", or the handler's name)."""
    import signal

    names = {signal.SIG_DFL: "default", signal.SIG_IGN: "ignored"}
    return {sig.name: names.get(signal.getsignal(sig),
                                 getattr(signal.getsignal(sig), "__name__", "?"))
            for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT,
                        signal.SIGHUP, signal.SIGUSR1)}


def set_handler(handler="function", signum="SIGUSR1"):
    import signal

    signal.signal(getattr(signal, signum),
                  signal.SIG_IGN if handler == "SIG_IGN" else lambda *a: None)
    return os.getpid()


class LoudRepr:
    def __repr__(self):
        raise RuntimeError("no repr for you")


def return_loud_repr():
    return LoudRepr()


def return_big(n):
    return "x" * n



def kill_supervisor():
    """Kill this job's pool worker (its parent): the pool breaks as a whole."""
    import signal

    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)


#: Kept for the life of the job's process, as tqdm keeps its lock.
_KEPT_LOCKS = []


def named_lock():
    """Make a multiprocessing lock the process keeps (tqdm does: its write
    lock); return its semaphore's name, or None where the start method is
    fork (the semaphore is then unlinked at once)."""
    import multiprocessing

    lock = multiprocessing.Lock()
    _KEPT_LOCKS.append(lock)
    return lock._semlock.name


class Adder:
    """A callable object as a job: named after its class."""

    def __init__(self, secret):
        self.secret = secret

    def __call__(self, a):
        return a + 1

    def __repr__(self):
        return f"Adder({self.secret!r})"
