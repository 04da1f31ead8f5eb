"""GuardedStore: a store in another process, reached with bounded waits.

The default store lives in a manager process. A proxy call to it waits for as
long as that process takes to answer: for ever if it is stopped or swapped
out, and a killed one makes the call raise ``BrokenPipeError`` or
``EOFError`` out of whatever request made it. This wrapper, used by the
manager backend in the server process, turns both into
:exc:`~wsgi_bg.exceptions.StoreUnavailable` (a ``503`` with ``Retry-After``)::

    request thread ── call on a pooled connection ──► manager
         │ sends and reads within ``timeout``        (hung? dead?)
         └─ StoreUnavailable

A call is made in the calling thread, on one of a few connections to the
manager kept for every thread (a proxy keeps one per thread, and a threaded
server starts a thread per request): no hop to another thread, whose two
hand-overs of the GIL cost ~90 µs a call and more under load (issue 13).
The connections are non-blocking and every wait on one is a ``poll(2)``
bounded by the call's deadline, ``timeout`` from its start: a stopped
manager neither reads a large message (a ``create`` with a big payload
fills the socket's buffer) nor finishes a large answer, and a blocking write
or read would wait for as long as it is stopped. Only opening a connection,
rare, is done by a helper thread, so that a stopped manager (which accepts
but never answers the handshake) cannot hold the caller past its deadline.
Stores that are not manager proxies are called through those helper
threads.

- **Hung**: a call that takes longer than ``timeout`` is given up; until the
  store answers again (one probe thread keeps asking) every call fails at once,
  so a page costs one bounded wait, not one per store call. A ``create`` given
  up on is cancelled once the store answers, so that no job stays queued that
  nothing will run.
- **Dead**: a call that fails because the process is gone marks the store
  lost, for good; ``on_lost`` is called once (the engine then starts a fresh
  store and pool). Not once :meth:`~GuardedStore.close` was called: the
  process then ends because it was stopped, and calls still in flight just
  fail.

A child forked from a process that holds a GuardedStore (the fork start
method, a job process) never uses the parent's connections: their messages
would interleave with the parent's on the same sockets. It drops them
(closing only its copies of the descriptors) and opens its own.

Each state change is logged once, not once per request.
"""

from __future__ import annotations

import builtins
import io
import logging
import os
import pickle
import select
import struct
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing import connection, managers, reduction
from typing import Any

from ..exceptions import StoreUnavailable
from .protocol import JobStats, Page, Record, Store, check_page

logger = logging.getLogger("wsgi_bg")

#: Seconds a call may take before the store is deemed hung.
DEFAULT_TIMEOUT = 3.0
#: Calls in flight at once, each on a connection of its own to the manager
#: (and helper threads, for opening them).
_THREADS = 8


class GuardedStore:
    """A :class:`~wsgi_bg.stores.Store` whose every call is bounded by
    ``timeout`` seconds and whose failures are
    :exc:`~wsgi_bg.exceptions.StoreUnavailable`.

    :param store: the proxy to wrap.
    :param alive: whether the process serving ``store`` still runs.
    :param on_lost: called once, from whichever thread noticed, when that
        process is found dead.
    :param timeout: seconds a call may take.
    """

    def __init__(
        self, store: Store, *, alive: Callable[[], bool],
        on_lost: Callable[[], None] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._store = store
        self._alive = alive
        self._on_lost = on_lost
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(
            _THREADS, thread_name_prefix="wsgi_bg-store")
        self._lock = threading.Lock()
        self.hung = False
        self.lost = False
        self._closed = False
        # A manager proxy is called directly, on pooled connections.
        self._direct = isinstance(store, managers.BaseProxy)
        self._idle: list[_Link] = []
        # Every connection opened and not yet collected (pooled, in use, or
        # read by a late-answer thread), for a forked child to let go of.
        self._links: weakref.WeakSet[_Link] = weakref.WeakSet()
        self._slots = threading.BoundedSemaphore(_THREADS)
        _stores.add(self)

    def _forked(self) -> None:
        """In a child just forked from the process that made this store: its
        connections are the parent's (its sockets, shared), its threads and
        their locks stayed behind. The child lets go of the connections
        without a word on them and will open its own; closing its copies of
        the descriptors leaves the parent's connections as they were."""
        for link in list(self._links):
            link.close()
        self._links = weakref.WeakSet()
        self._idle = []
        self._executor = ThreadPoolExecutor(
            _THREADS, thread_name_prefix="wsgi_bg-store")
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(_THREADS)
        self.hung = False  # the probe stayed with the parent: ask again

    # -- the guard ----------------------------------------------------------------
    def _call(self, method: str, *args: Any) -> Any:
        if self.lost or self._closed:
            raise StoreUnavailable(self._lost_text())
        if self.hung:
            raise StoreUnavailable(_HUNG.format(self.timeout))
        if self._direct:
            return self._call_direct(method, args)
        try:
            future = self._executor.submit(_invoke, self._store, method, args)
        except RuntimeError:  # the executor was shut down: the store was stopped
            raise StoreUnavailable(self._lost_text()) from None
        try:
            return future.result(self.timeout)
        except FutureTimeout:
            if method == "create":
                future.add_done_callback(lambda f: self._undo_create(f, args[0]))
            raise self._no_answer() from None
        except CancelledError:  # still queued when close() stopped the helpers
            raise StoreUnavailable(_STOPPED) from None
        except (OSError, EOFError) as exc:
            raise self._broken(exc) from exc

    def _call_direct(self, method: str, args: tuple[Any, ...]) -> Any:
        """The call on a pooled connection, in this thread; what
        ``BaseProxy._callmethod`` does, every wait bounded by one deadline."""
        deadline = time.monotonic() + self.timeout
        message = _dumps((self._store._id, method, args, {}))  # type: ignore[attr-defined]
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self._no_answer()  # every connection waits on the store
        try:
            link = self._connection(deadline)
            # Back to the pool only in step with the manager (its answer
            # read); closed if anything else happened on the way.
            outcome = "broken"
            try:
                if not link.send(message, deadline):
                    # Not all of it written (the manager stopped reading):
                    # it never runs, and the link is out of step.
                    raise self._no_answer()
                answer = link.receive(deadline)
                if answer is None:
                    # The answer, or its rest, may come later: read it in a
                    # thread of its own (a create that lands is then
                    # cancelled), never here.
                    outcome = "late"
                    threading.Thread(
                        target=self._late_answer, args=(link, method, args),
                        name="wsgi_bg-store-late", daemon=True).start()
                    raise self._no_answer()
                outcome = "answered"
            except (OSError, EOFError) as exc:
                raise self._broken(exc) from exc
            finally:
                if outcome == "answered":
                    self._release(link)
                elif outcome != "late":
                    link.close()
        finally:
            self._slots.release()
        kind, result = pickle.loads(answer)
        if kind == "#RETURN":
            return result
        error = _managers.convert_to_error(kind, result)
        error.__traceback__ = None
        raise error

    def _connection(self, deadline: float) -> _Link:
        """An idle pooled connection, or a new one opened by a helper thread
        by ``deadline`` (a stopped manager never finishes the handshake)."""
        try:
            return self._idle.pop()
        except IndexError:
            pass
        try:
            future = self._executor.submit(self._open)
        except RuntimeError:  # the executor was shut down: the store was stopped
            raise StoreUnavailable(self._lost_text()) from None
        try:
            return future.result(max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.add_done_callback(_close_opened)
            raise self._no_answer() from None
        except CancelledError:  # still queued when close() stopped the helpers
            raise StoreUnavailable(_STOPPED) from None
        except (OSError, EOFError) as exc:
            raise self._broken(exc) from exc

    def _open(self) -> _Link:
        proxy: Any = self._store
        conn = connection.Client(proxy._token.address, authkey=proxy._authkey)
        try:
            _managers.dispatch(conn, None, "accept_connection", ("wsgi_bg-store",))
            link = _Link(conn)
        except BaseException:
            _close(conn)
            raise
        self._links.add(link)
        return link

    def _late_answer(
        self, link: _Link, method: str, args: tuple[Any, ...]
    ) -> None:
        try:
            kind, result = pickle.loads(link.receive(None))  # type: ignore[arg-type]
            if method == "create" and kind == "#RETURN" and result is True:
                # A submit gave up on this create and said so; it landed after all.
                self._store.request_cancel(args[0]["id"], 0.0)
        except Exception:  # noqa: S110 - the store is gone: so is the record
            pass
        finally:
            link.close()

    def _no_answer(self) -> StoreUnavailable:
        """No answer within ``timeout``: the store is lost or hung."""
        if self._closed:  # stopped meanwhile: no news, nothing to log
            return StoreUnavailable(_STOPPED)
        if not self._alive():
            self._mark_lost()
            return StoreUnavailable(self._lost_text())
        self._mark_hung()
        return StoreUnavailable(_HUNG.format(self.timeout))

    def _broken(self, exc: BaseException) -> StoreUnavailable:
        """The connection broke: the process is gone, or going."""
        if self._closed:  # stopped meanwhile (shutdown): not a loss
            return StoreUnavailable(_STOPPED)
        if not self._alive():
            self._mark_lost()
            return StoreUnavailable(self._lost_text())
        return StoreUnavailable(
            f"the job store could not be reached ({exc!r}); try again")

    def _lost_text(self) -> str:
        if not self.lost and self._closed:
            return _STOPPED
        return _LOST + (" A fresh one is being started: try again in a few"
                        " seconds." if self._on_lost is not None else
                        " Restart the server.")

    def _undo_create(self, future: Future[Any], record: Record) -> None:
        # A submit gave up on this create and said so; it landed after all.
        try:
            if future.result() is True:
                self._store.request_cancel(record["id"], 0.0)
        except Exception:  # noqa: S110 - the store is gone: so is the record
            pass

    def _mark_hung(self) -> None:
        with self._lock:
            if self.hung or self.lost:
                return
            self.hung = True
        logger.error(
            "wsgi_bg: the job store's process did not answer within %s s (stopped,"
            " swapped out or overloaded?): requests that need it are answered 503"
            " until it answers again", self.timeout)
        threading.Thread(target=self._probe, name="wsgi_bg-store-probe",
                         daemon=True).start()

    def _probe(self) -> None:
        # One call in flight at most while hung: it returns when the process
        # answers again, or fails when it dies.
        try:
            self._store.counts()
        except Exception:
            if self._closed:
                return  # stopped meanwhile (a hung manager is killed): no news
            if not self._alive():
                self._mark_lost()
                return
        with self._lock:
            self.hung = False
        if not self.lost:
            logger.warning("wsgi_bg: the job store answers again")

    def _mark_lost(self) -> None:
        with self._lock:
            # Closed: the process ends because it was stopped (shutdown, or
            # a hung one killed), which is no loss to log or recover from.
            if self.lost or self._closed:
                return
            self.lost = True
        logger.error(
            "wsgi_bg: the job store's process is gone (killed, or out of memory):"
            " the jobs it held are lost; %s", "starting a fresh store and worker"
            " pool" if self._on_lost is not None else "requests that need it are"
            " answered 503 until the server restarts")
        if self._on_lost is not None:
            self._on_lost()

    def _release(self, link: _Link) -> None:
        """Back to the pool: ``link`` is in step with the manager."""
        self._idle.append(link)
        if self._closed:
            # close() may have emptied the pool between this call's start
            # and the append: empty it again (close() sets _closed first).
            self._drain()

    def _drain(self) -> None:
        while True:
            try:
                link = self._idle.pop()
            except IndexError:
                return
            link.close()

    def close(self) -> None:
        """Stop the helper threads and close the idle connections (without
        waiting for a hung call). Calls in flight fail with
        :exc:`~wsgi_bg.exceptions.StoreUnavailable`; none of them counts as
        the store lost."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._drain()

    # -- the Store protocol -------------------------------------------------------
    def create(
        self, record: Record, max_queued: int, call: bytes | None = None
    ) -> bool:
        return bool(self._call("create", record, max_queued, call))

    def start(self, job_id: str, pid: int) -> bool:
        return bool(self._call("start", job_id, pid))

    def relay(
        self, job_id: str, text: str, progress: dict[str, Any] | None,
        offset: int | None = None,
    ) -> tuple[bool, float | None]:
        return self._call("relay", job_id, text, progress, offset)  # type: ignore[no-any-return]

    def finish(
        self, job_id: str, state: str, result: bytes | None, error: str | None,
        text: str = "", progress: dict[str, Any] | None = None,
        offset: int | None = None, shown: str | None = None,
        cancel_seen: bool = True,
    ) -> str | None:
        return self._call(  # type: ignore[no-any-return]
            "finish", job_id, state, result, error, text, progress, offset, shown,
            cancel_seen)

    def finish_and_start(
        self, job_id: str, state: str, result: bytes | None, error: str | None,
        text: str, progress: dict[str, Any] | None, offset: int | None,
        shown: str | None, next_id: str, pid: int, cancel_seen: bool = True,
    ) -> tuple[str | None, bool]:
        return self._call(  # type: ignore[no-any-return]
            "finish_and_start", job_id, state, result, error, text, progress,
            offset, shown, next_id, pid, cancel_seen)

    def result(self, job_id: str) -> bytes | None:
        return self._call("result", job_id)  # type: ignore[no-any-return]

    def call(self, job_id: str) -> bytes | None:
        return self._call("call", job_id)  # type: ignore[no-any-return]

    def request_cancel(
        self, job_id: str, grace: float | None, shutdown: bool = False
    ) -> str:
        return self._call(  # type: ignore[no-any-return]
            "request_cancel", job_id, grace, shutdown)

    def get(self, job_id: str) -> Record | None:
        return self._call("get", job_id)  # type: ignore[no-any-return]

    def read_output(self, job_id: str, since: int) -> tuple[str, int] | None:
        return self._call("read_output", job_id, since)  # type: ignore[no-any-return]

    def view(self, job_id: str, since: int) -> tuple[Record, str, int] | None:
        return self._call("view", job_id, since)  # type: ignore[no-any-return]

    def list(self, limit: int | None = None) -> builtins.list[Record]:
        return self._call("list", limit)  # type: ignore[no-any-return]

    def page(
        self, states: tuple[str, ...] = (), query: str = "", offset: int = 0,
        limit: int = 50,
    ) -> Page:
        check_page(offset, limit)  # (here: a clear error, not the manager's)
        return self._call(  # type: ignore[no-any-return]
            "page", states, query, offset, limit)

    def ids_in_state(self, *states: str) -> builtins.list[str]:
        return self._call("ids_in_state", *states)  # type: ignore[no-any-return]

    def counts(self) -> dict[str, int]:
        return self._call("counts")  # type: ignore[no-any-return]

    def stats(self) -> JobStats:
        return self._call("stats")  # type: ignore[no-any-return]

    def snapshot(self) -> Store:
        """A copy of the store (see :meth:`MemoryStore.snapshot`)."""
        return self._call("snapshot")  # type: ignore[no-any-return]


_LOST = ("the job store's process is gone (killed, or out of memory): the jobs"
         " it held are lost.")
_STOPPED = ("the job store was stopped (the server is shutting down, or its"
            " store is being replaced): try again in a few seconds")

def _invoke(store: Store, method: str, args: tuple[Any, ...]) -> Any:
    try:
        return getattr(store, method)(*args)
    except BaseException as exc:
        # Drop the frames below: multiprocessing's send and receive hold
        # memoryviews of BytesIO buffers there. Kept alive in a future and
        # collected in a cycle later, they make CPython 3.13 report an
        # unraisable BufferError when the buffer is finalized first.
        exc.__traceback__ = None
        raise


def _close(conn: connection.Connection) -> None:
    try:
        conn.close()
    except OSError:
        pass


#: Every GuardedStore of this process, for a forked child to reset.
_stores: weakref.WeakSet[GuardedStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_stores):
        store._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_opened(future: Future[_Link]) -> None:
    # A connection opened after its caller gave up on it.
    if not future.cancelled() and future.exception() is None:
        future.result().close()


def _dumps(message: Any) -> bytes:
    """``message`` pickled as ``Connection.send`` does. As bytes, not a view
    of the pickler's buffer: a view kept by a traceback would make its
    finalization raise BufferError."""
    buffer = io.BytesIO()
    reduction.ForkingPickler(buffer).dump(message)
    return buffer.getvalue()


_SIZE = struct.Struct("!i")
_LONG_SIZE = struct.Struct("!Q")
#: Bytes read at once: a whole small answer in one read.
_CHUNK = 65536


class _Link:
    """A pooled connection to the manager, made non-blocking: every wait on
    it is a poll(2) bounded by the caller's deadline. Messages are framed as
    :mod:`multiprocessing.connection` frames them: a 4-byte big-endian size,
    or -1 and an 8-byte size past 2 GiB, then the bytes."""

    __slots__ = ("conn", "fd", "_readable", "_writable", "_head", "_body",
                 "_filled", "__weakref__")

    def __init__(self, conn: connection.Connection) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        os.set_blocking(self.fd, False)
        self._readable = select.poll()
        self._readable.register(self.fd, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(self.fd, select.POLLOUT)
        self._head = b""  # an answer's first bytes, until its size is known
        self._body: bytearray | None = None  # a large answer, being read
        self._filled = 0

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def close(self) -> None:
        _close(self.conn)

    def send(self, data: bytes, deadline: float) -> bool:
        """Write one message; ``False`` if ``deadline`` passed first (then
        part of it may have been written: the link is out of step)."""
        size = len(data)
        header = (_SIZE.pack(size) if size <= 0x7FFFFFFF
                  else _SIZE.pack(-1) + _LONG_SIZE.pack(size))
        parts: list[bytes | memoryview] = [header, data]
        while True:
            try:
                sent = os.writev(self.fd, parts)
            except BlockingIOError:
                sent = 0
            while parts and sent >= len(parts[0]):
                sent -= len(parts[0])
                del parts[0]
            if not parts:
                return True
            parts[0] = memoryview(parts[0])[sent:]
            if not _ready(self._writable, deadline):
                return False

    def receive(self, deadline: float | None) -> bytes | bytearray | memoryview | None:
        """The answer; ``None`` if ``deadline`` passed first (what was read
        is kept: call again to wait for the rest). No deadline: wait for as
        long as it takes."""
        while self._body is None:
            if not _ready(self._readable, deadline):
                return None
            try:
                chunk = os.read(self.fd, _CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                raise EOFError("the job store's process closed the connection")
            head = self._head + chunk if self._head else chunk
            start = _SIZE.size
            if len(head) < start:
                self._head = head
                continue
            size = _SIZE.unpack_from(head)[0]
            if size == -1:
                start += _LONG_SIZE.size
                if len(head) < start:
                    self._head = head
                    continue
                size = _LONG_SIZE.unpack_from(head, _SIZE.size)[0]
            self._head = b""
            got = len(head) - start
            if got == size:  # a small answer, whole
                return memoryview(head)[start:]
            if got > size:
                raise OSError("the job store sent more than its answer")
            self._body = bytearray(size)
            self._body[:got] = memoryview(head)[start:]
            self._filled = got
        body = self._body
        while self._filled < len(body):
            if not _ready(self._readable, deadline):
                return None
            with memoryview(body)[self._filled:] as rest:
                try:
                    got = os.readv(self.fd, [rest])
                except BlockingIOError:
                    continue
            if not got:
                raise EOFError("the job store's process closed the connection"
                               " in the middle of an answer")
            self._filled += got
        self._body = None
        return body


def _ready(poll: select.poll, deadline: float | None) -> bool:
    """Whether ``poll``'s event came by ``deadline`` (``None``: wait for it)."""
    if deadline is None:
        return bool(poll.poll())
    return bool(poll.poll(max(0.0, deadline - time.monotonic()) * 1000))


#: multiprocessing.managers, for the helpers typeshed does not declare.
_managers: Any = managers


_HUNG = ("the job store did not answer within {} s (its process is stopped or"
         " overloaded): try again later")
