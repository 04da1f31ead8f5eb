"""``rq worker`` processes for the tests: started with the test secret key
and the tests' job modules importable, with the documented worker class
(``-w wsgi_bg.rq_worker.Worker``: wsgi_bg's jobs run in the worker itself)
or RQ's stock forking one with the settings module (``-c wsgi_bg.rq_worker``),
ready once RQ lists them, stopped (and their work horses with them) by
whoever started them."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import typing
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
#: The documented worker class; ``None`` below: RQ's stock forking ``Worker``.
WSGI_BG_WORKER = "wsgi_bg.rq_worker.Worker"
ROOT = os.path.dirname(HERE)
#: What the workers import jobs from: the tests' modules and the examples.
PYTHONPATH = os.pathsep.join([HERE, ROOT, os.path.join(ROOT, "examples")])


def rq_command() -> str:
    """The ``rq`` script of this interpreter's environment."""
    path = os.path.join(os.path.dirname(sys.executable), "rq")
    return path if os.path.exists(path) else "rq"


def psutil_errors() -> tuple[type[Exception], ...]:
    import psutil

    return (psutil.NoSuchProcess, psutil.AccessDenied)


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants (each RQ work horse, and each job
    process, has a process group of its own)."""
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


class RQWorkers:
    """``count`` ``rq worker`` processes on ``queue`` (several: separated by
    spaces) with ``worker_class`` (``None``: RQ's stock one), each in a
    session of its own (so :meth:`stop` reaches its work horse and job
    processes too); ``options``: more of the command's options; ``log``: a
    file their output goes to (appended); ``secret_key=None``: none given;
    ``key_prefix``: their ``RQ_KEY_PREFIX`` (``None``: RQ's default)."""

    def __init__(self, url: str, queue: str, secret_key: str | None, count: int = 2,
                 preload: str = "", worker_class: str | None = WSGI_BG_WORKER,
                 options: tuple[str, ...] = (), log: str | None = None,
                 key_prefix: str | None = None) -> None:
        self.url = url
        self.queue = queue
        self.secret_key = secret_key
        self.count = count
        self.preload = preload  # WSGI_BG_PRELOAD: job modules to import first
        self.worker_class = worker_class
        self.options = options
        self.log = log
        self.key_prefix = key_prefix
        self.names = [f"wsgi_bg-test-{uuid.uuid4().hex[:8]}" for _ in range(count)]
        self.processes: list[subprocess.Popen[bytes]] = []
        #: Descendants of workers killed alone (:meth:`kill`), for :meth:`stop`
        #: (psutil's processes: a pid reused since is not signalled).
        self._left: list[typing.Any] = []

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=PYTHONPATH, WSGI_BG_PRELOAD=self.preload)
        env.pop("WSGI_BG_SECRET_KEY", None)
        env.pop("RQ_KEY_PREFIX", None)
        if self.key_prefix is not None:
            env["RQ_KEY_PREFIX"] = self.key_prefix
        if self.secret_key is not None:
            env["WSGI_BG_SECRET_KEY"] = self.secret_key
        chosen = (["-w", self.worker_class] if self.worker_class
                  else ["-c", "wsgi_bg.rq_worker"])
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            return subprocess.Popen(
                [rq_command(), "worker", *chosen, *self.queue.split(), "--url",
                 self.url, "--name", name, "--quiet", "--worker-ttl", "60",
                 *self.options],
                env=env, cwd=ROOT, start_new_session=True, stdout=out, stderr=out)
        finally:
            if self.log:
                out.close()  # type: ignore[union-attr]

    def start(self, timeout: float = 30.0) -> RQWorkers:
        for name in self.names:
            self.processes.append(self._spawn(name))
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def registered(self) -> set[str]:
        import redis
        from rq import Worker

        with redis.Redis.from_url(self.url, socket_timeout=5) as client:
            if self.key_prefix is None:
                return {w.name for w in Worker.all(connection=client)}
            # (this process's rq has its default prefix: RQ's layout, read plain)
            start = len(f"{self.key_prefix}:worker:")
            return {key[start:].decode()
                    for key in client.smembers(f"{self.key_prefix}:workers")}

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not set(self.names) <= self.registered():
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"rq worker exited with {process.returncode} at start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"rq workers not ready within {timeout} s")
            time.sleep(0.05)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def kill(self, index: int) -> None:
        """SIGKILL worker ``index`` alone (its work horse lives on, until
        :meth:`stop`)."""
        import psutil

        try:
            self._left += psutil.Process(
                self.processes[index].pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        self.processes[index].kill()
        self.processes[index].wait(10)

    def kill_all_of(self, index: int) -> None:
        """SIGKILL worker ``index``, its work horse and the job's process: a
        host gone."""
        _kill_tree(self.processes[index].pid)
        self.processes[index].wait(10)

    def replace(self, index: int, timeout: float = 30.0) -> None:
        """Start a fresh worker in place of worker ``index`` (after a kill)."""
        self.stop_one(index)
        name = self.names[index] = f"wsgi_bg-test-{uuid.uuid4().hex[:8]}"
        self.processes[index] = self._spawn(name)
        self.wait_ready(timeout)

    def stop_one(self, index: int, timeout: float = 10.0) -> None:
        process = self.processes[index]
        if process.poll() is None:
            process.terminate()  # warm shutdown: RQ finishes the current job
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _kill_tree(process.pid)  # the work horse and job processes left, if any
        process.wait(10)

    def stop(self) -> None:
        for index in range(len(self.processes)):
            self.stop_one(index, timeout=5.0)
        for process in self._left:
            with contextlib.suppress(psutil_errors()):
                process.send_signal(signal.SIGKILL)
