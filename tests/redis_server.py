"""A real redis-server for the tests: a free port on 127.0.0.1, no persistence
unless asked, a temporary directory; stopped by whoever started it.

Under pytest-xdist every xdist worker starts servers of its own: their
directories (hence Unix sockets) are unique, and a port another process took
between :func:`free_port` and the server's bind is replaced by a new one."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

INSTALL = "apt-get install -y redis-server"


def redis_server_path() -> str:
    """The redis-server binary, or skip the test with the command to install it."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip(f"redis-server is not installed ({INSTALL}); CI installs it")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortTaken(Exception):
    """Another process holds the port chosen for a server."""


class RedisServer:
    """One redis-server process. ``persist=True`` keeps data across
    :meth:`restart` (append-only file, fsync always)."""

    def __init__(self, *, persist: bool = False, tls: bool = False) -> None:
        self.binary = redis_server_path()
        self.port = free_port()
        self.persist = persist
        self._clients: list = []
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.dir = tempfile.mkdtemp(prefix=f"wsgi_bg-redis-{worker}-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        #: The same server on a Unix socket.
        self.socket = os.path.join(self.dir, "redis.sock")
        self.unix_url = f"unix://{self.socket}?db=0"
        self.tls = tls
        if tls:  # a self-signed certificate for 127.0.0.1, trusted by the URL
            if shutil.which("openssl") is None:
                pytest.skip("openssl is not installed (apt-get install -y openssl)")
            self.cert = os.path.join(self.dir, "cert.pem")
            self.key = os.path.join(self.dir, "key.pem")
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                 "-keyout", self.key, "-out", self.cert, "-days", "1",
                 "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                check=True, capture_output=True, timeout=60)
            self.url = (f"rediss://127.0.0.1:{self.port}/0"
                        f"?ssl_ca_certs={self.cert}")
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False

    def start(self, timeout: float = 10.0) -> RedisServer:
        for _ in range(5):
            try:
                return self._start(timeout)
            except PortTaken:
                if self._started:  # a restart: its users know this port
                    raise
                self._move(free_port())
        raise RuntimeError(f"redis-server found no free port in 5 tries ({self.port})")

    def _move(self, port: int) -> None:
        self.url = self.url.replace(f":{self.port}/", f":{port}/")
        self.port = port

    def _start(self, timeout: float) -> RedisServer:
        if not self.free():
            raise PortTaken(self.port)
        port = ["--port", "0", "--tls-port"] if self.tls else ["--port"]
        args = [self.binary, *port, str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--daemonize", "no",
                "--protected-mode", "no", "--loglevel", "warning",
                "--unixsocket", self.socket, "--unixsocketperm", "700"]
        if self.tls:
            args += ["--tls-cert-file", self.cert,
                     "--tls-key-file", self.key, "--tls-ca-cert-file", self.cert,
                     "--tls-auth-clients", "no"]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        # Answered by this process, not by another's server on the port.
        while not (self.ping() and self.process.poll() is None
                   and self._answering_pid() == self.process.pid):
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                if not self.free():  # another process bound it meanwhile
                    raise PortTaken(self.port)
                raise RuntimeError(f"redis-server exited with {code}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {timeout} s")
            time.sleep(0.02)
        self._started = True
        return self

    def _answering_pid(self) -> int | None:
        """The pid of the server answering on the port (INFO server)."""
        reply = b""
        try:
            with contextlib.ExitStack() as stack:
                s = stack.enter_context(
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5))
                if self.tls:
                    context = ssl.create_default_context(cafile=self.cert)
                    s = stack.enter_context(
                        context.wrap_socket(s, server_hostname="127.0.0.1"))
                s.sendall(b"INFO server\r\n")
                while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        return None
                    reply += chunk
        except OSError:
            return None
        line = reply.split(b"process_id:", 1)[1].split(b"\r\n", 1)[0]
        return int(line)

    def free(self) -> bool:
        """Whether this server's port can be bound (by the server to start)."""
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", self.port))
            except OSError:
                return False
            return True

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                if self.tls:
                    context = ssl.create_default_context(cafile=self.cert)
                    with context.wrap_socket(s, server_hostname="127.0.0.1") as t:
                        t.sendall(b"PING\r\n")
                        return t.recv(16).startswith(b"+PONG")
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def client(self):
        """A redis-py client of this server, closed when the server stops (an
        unclosed one's socket warns when it is collected, failing the run)."""
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=5)
        self._clients.append(client)
        return client

    def pause(self) -> None:
        """Hang it (SIGSTOP): connections open, nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Kill it outright, as the OOM killer would."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
