"""GuardedStore: a store in another process, reached with bounded waits.

The default store lives in a manager process. A proxy call to it waits for as
long as that process takes to answer: for ever if it is stopped or swapped
out, and a killed one makes the call raise ``BrokenPipeError`` or
``EOFError`` out of whatever request made it. This wrapper, used by the
manager backend in the server process, turns both into
:exc:`~wsgi_bg.exceptions.StoreUnavailable` (a ``503`` with ``Retry-After``)::

    request thread ── call on a pooled connection ──► manager
         │ polls for the answer at most ``timeout``   (hung? dead?)
         └─ StoreUnavailable

A call is made in the calling thread, on one of a few connections to the
manager kept for every thread (a proxy keeps one per thread, and a threaded
server starts a thread per request): no hop to another thread, whose two
hand-overs of the GIL cost ~90 µs a call and more under load (issue 13).
Only opening a connection, rare, is done by a helper thread, so that a
stopped manager (which accepts but never answers the handshake) cannot hold
the caller beyond ``timeout``. Stores that are not manager proxies are
called through those helper threads.

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

Each state change is logged once, not once per request.
"""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing import connection, managers
from typing import Any

from ..exceptions import StoreUnavailable
from .protocol import Record, Store

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
        self._idle: list[connection.Connection] = []
        self._slots = threading.BoundedSemaphore(_THREADS)

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
        ``BaseProxy._callmethod`` does, with a bounded wait for the answer."""
        if not self._slots.acquire(timeout=self.timeout):
            raise self._no_answer()  # every connection waits on the store
        try:
            conn = self._connection()
            # Back to the pool only in step with the manager (its answer
            # read); closed if anything else happened on the way.
            outcome = "broken"
            try:
                conn.send((self._store._id, method, args, {}))  # type: ignore[attr-defined]
                if not conn.poll(self.timeout):
                    # The answer may come later: read it in a thread of its
                    # own (a create that lands is then cancelled), never here.
                    outcome = "late"
                    threading.Thread(
                        target=self._late_answer, args=(conn, method, args),
                        name="wsgi_bg-store-late", daemon=True).start()
                    raise self._no_answer()
                kind, result = conn.recv()
                outcome = "answered"
            except (OSError, EOFError) as exc:
                raise self._broken(exc) from exc
            finally:
                if outcome == "answered":
                    self._release(conn)
                elif outcome != "late":
                    _close(conn)
        finally:
            self._slots.release()
        if kind == "#RETURN":
            return result
        error = _managers.convert_to_error(kind, result)
        error.__traceback__ = None
        raise error

    def _connection(self) -> connection.Connection:
        """An idle pooled connection, or a new one opened by a helper thread
        within ``timeout`` (a stopped manager never finishes the handshake)."""
        try:
            return self._idle.pop()
        except IndexError:
            pass
        try:
            future = self._executor.submit(self._open)
        except RuntimeError:  # the executor was shut down: the store was stopped
            raise StoreUnavailable(self._lost_text()) from None
        try:
            return future.result(self.timeout)
        except FutureTimeout:
            future.add_done_callback(_close_opened)
            raise self._no_answer() from None
        except CancelledError:  # still queued when close() stopped the helpers
            raise StoreUnavailable(_STOPPED) from None
        except (OSError, EOFError) as exc:
            raise self._broken(exc) from exc

    def _open(self) -> connection.Connection:
        proxy: Any = self._store
        conn = connection.Client(proxy._token.address, authkey=proxy._authkey)
        _managers.dispatch(conn, None, "accept_connection", ("wsgi_bg-store",))
        return conn

    def _late_answer(
        self, conn: connection.Connection, method: str, args: tuple[Any, ...]
    ) -> None:
        try:
            kind, result = conn.recv()
            if method == "create" and kind == "#RETURN" and result is True:
                # A submit gave up on this create and said so; it landed after all.
                self._store.request_cancel(args[0]["id"], 0.0)
        except Exception:  # noqa: S110 - the store is gone: so is the record
            pass
        finally:
            _close(conn)

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

    def _release(self, conn: connection.Connection) -> None:
        """Back to the pool: ``conn`` is in step with the manager."""
        self._idle.append(conn)
        if self._closed:
            # close() may have emptied the pool between this call's start
            # and the append: empty it again (close() sets _closed first).
            self._drain()

    def _drain(self) -> None:
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return
            _close(conn)

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
    ) -> str | None:
        return self._call(  # type: ignore[no-any-return]
            "finish", job_id, state, result, error, text, progress, offset, shown)

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
    ) -> tuple[builtins.list[Record], int]:
        return self._call(  # type: ignore[no-any-return]
            "page", states, query, offset, limit)

    def ids_in_state(self, *states: str) -> builtins.list[str]:
        return self._call("ids_in_state", *states)  # type: ignore[no-any-return]

    def counts(self) -> dict[str, int]:
        return self._call("counts")  # type: ignore[no-any-return]

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


def _close_opened(future: Future[connection.Connection]) -> None:
    # A connection opened after its caller gave up on it.
    if not future.cancelled() and future.exception() is None:
        _close(future.result())


#: multiprocessing.managers, for the helpers typeshed does not declare.
_managers: Any = managers


_HUNG = ("the job store did not answer within {} s (its process is stopped or"
         " overloaded): try again later")
