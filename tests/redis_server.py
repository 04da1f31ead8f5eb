"""A real redis-server for the tests: a free port on 127.0.0.1, no persistence
unless asked, a temporary directory; stopped by whoever started it."""
from __future__ import annotations

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


class RedisServer:
    """One redis-server process. ``persist=True`` keeps data across
    :meth:`restart` (append-only file, fsync always)."""

    def __init__(self, *, persist: bool = False, tls: bool = False) -> None:
        self.binary = redis_server_path()
        self.port = free_port()
        self.persist = persist
        self._clients: list = []
        self.dir = tempfile.mkdtemp(prefix="wsgi_bg-redis-")
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

    def start(self, timeout: float = 10.0) -> RedisServer:
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
        while not self.ping():
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"redis-server exited with {code}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {timeout} s")
            time.sleep(0.02)
        return self

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
