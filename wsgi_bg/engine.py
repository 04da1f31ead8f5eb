"""The job engine: submit, cancel, retention, shutdown, whatever runs the jobs.

The engine owns a :class:`~wsgi_bg.stores.Store` and a runner and starts both on
the first submit, in the calling process, so that importing an app, building
the middleware, or the Werkzeug reloader's watcher process never start a
worker. Everything it starts, :meth:`Engine.shutdown` stops; it also runs at
interpreter exit, before :mod:`concurrent.futures` would wait for running jobs.

State lives in the store, never here: the engine keeps only the pickled call
of each job not yet finished, to run it again on a fresh pool should a pool
worker die before the job started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import enum
import functools
import hashlib
import itertools
import logging
import multiprocessing
import os
import pathlib
import pickle
import reprlib
import signal
import threading
import time
import traceback
import types
import uuid
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from .exceptions import CallTooLarge, QueueFull, StoreUnavailable
from .jobs import Job, JobState, new_job_id
from .options import RetryPolicy, Settings, check_number
from .runners import JobLost, LocalLink, Runner, open_runner, runs_here
from .stores import Backend, Ending, Store, open_backend
from .stores.signing import BadSignature

logger = logging.getLogger("wsgi_bg")

class _ArgsRepr(reprlib.Repr):
    """A bounded repr that never runs the job's own code.

    An argument's ``__repr__`` is the app's code: one that sleeps or raises
    held or failed the submit (issue 18). Only exact built-in types and a few
    standard ones whose repr is known are shown by value; containers are
    walked without sorting or hashing (``sorted`` would call the items'
    ``__lt__``, a lookup their ``__hash__``); anything else is shown as
    ``<ClassName object>``. The cost is bounded by the limits below, whatever
    the argument's size (a 50 MB ``bytes`` is sliced before its repr).
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 200
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 10
        self.maxlevel = 3

    def repr1(self, x: Any, level: int) -> str:
        kind = type(x)
        if kind in _VALUE_TYPES:
            return super().repr1(x, level)  # reprlib's own, for its types
        if kind in (bytes, bytearray):
            text = repr(x[: self.maxstring])
            return text if len(x) <= self.maxstring else text + self.fillvalue
        if kind in (float, complex, bool, type(None)) or kind in _KNOWN_REPRS:
            return repr(x)
        if isinstance(x, enum.Enum) and getattr(kind, "__repr__", None) is _ENUM_REPR:
            return f"{kind.__name__}.{x._name_}"
        return f"<{getattr(kind, '__name__', '?')} object>"

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4 * self.maxother:  # past what is worth printing
            return f"<int of {x.bit_length()} bits>"
        return super().repr_int(x, level)

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{" + self.fillvalue + "}"
        pieces = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                  for k, v in itertools.islice(x.items(), self.maxdict)]
        if len(x) > self.maxdict:
            pieces.append(self.fillvalue)
        return "{" + ", ".join(pieces) + "}"

    def repr_set(self, x: set[Any], level: int) -> str:
        return self._items(x, level, "{", "}") if x else "set()"

    def repr_frozenset(self, x: frozenset[Any], level: int) -> str:
        return self._items(x, level, "frozenset({", "})") if x else "frozenset()"

    def _items(self, x: set[Any] | frozenset[Any], level: int, left: str,
               right: str) -> str:
        # In iteration order: reprlib sorts them, with the items' own __lt__.
        if level <= 0:
            return left + self.fillvalue + right
        pieces = [self.repr1(item, level - 1)
                  for item in itertools.islice(x, self.maxset)]
        if len(x) > self.maxset:
            pieces.append(self.fillvalue)
        return left + ", ".join(pieces) + right


#: Types whose reprlib method is safe for them exactly (not for subclasses,
#: whose ``__repr__`` or ``__getitem__`` may be the app's).
_VALUE_TYPES = frozenset({str, int, tuple, list, dict, set, frozenset})
#: Standard types whose repr is short, bounded and runs no app code.
_KNOWN_REPRS = frozenset({
    datetime.date, datetime.datetime, datetime.time, datetime.timedelta,
    datetime.timezone, decimal.Decimal, uuid.UUID, pathlib.PurePosixPath,
    pathlib.PureWindowsPath, pathlib.PosixPath, pathlib.WindowsPath,
})

_ENUM_REPR = getattr(enum.Enum, "__repr__")  # noqa: B009 - mypy
_args_repr = _ArgsRepr()


def describe_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A bounded description of a call's arguments, for pages: ``(1, 'a',
    key=2)``. It never calls the arguments' own code (``__repr__``,
    ``__eq__``, ``__hash__``): an object of another type shows as
    ``<ClassName object>``, so that describing a call can neither block nor
    fail its submit."""
    parts = []
    size = 0
    # (str.__str__: a keyword may be a str subclass with a __format__ of its own.)
    labelled = [("", v) for v in args] + [
        (str.__str__(k) + "=", v) for k, v in kwargs.items()]
    for label, value in labelled:
        if size > _MAX_ARGS_CHARS:
            break  # a call of a million arguments: the first few say enough
        parts.append(label + _safe_repr(value))
        size += len(parts[-1]) + 2
    text = ", ".join(parts)
    if len(text) > _MAX_ARGS_CHARS:
        text = text[: _MAX_ARGS_CHARS - 1] + "…"
    return f"({text})"


#: Characters of a call's description kept.
_MAX_ARGS_CHARS = 2000


def _safe_repr(value: Any) -> str:
    try:
        return _args_repr.repr(value)
    except Exception:  # (a Decimal with an absurd exponent, say): never fatal
        return f"<{type(value).__name__} object>"


#: Attribute set by @background / @backgrounder on what they mark.
OPTIONS_ATTR = "__wsgi_bg__"


def unique_digest(name: str, key: str) -> str:
    """What a store keeps of a unique job's key (``background(unique=...)``):
    a SHA-256 of the job's name and the key, never the key itself, which
    may hold what the pages must not show."""
    data = f"{name}\0{key}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def callable_name(fn: Any) -> str:
    """``module.qualname`` of a function, for names, metrics labels and
    messages; never its ``repr``, which can hold its arguments: a
    :func:`functools.partial` is named after its function, another callable
    object after its class."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not isinstance(getattr(fn, "__qualname__", None), str):
        fn = type(fn)  # a callable instance
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{fn.__qualname__}"


def dump_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
    retry_on: tuple[type[BaseException], ...] | None = None,
) -> bytes:
    """Pickle a call for a worker process, or say exactly what cannot go:
    ``(fn, args, kwargs)``, and ``retry_on`` after them when given (the job
    process tests a failed attempt's exception against it: see
    :class:`~wsgi_bg.options.RetryPolicy`).

    :raises TypeError: naming the function or the argument that cannot be
        pickled, and how to fix it.
    """
    if not callable(fn):
        raise TypeError(f"a job must be a callable, got {fn!r}")
    call = (fn, args, kwargs) if retry_on is None else (fn, args, kwargs, retry_on)
    try:
        return pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass  # find the culprit, for a message that says what to change
    name = callable_name(fn)
    qualname = getattr(fn, "__qualname__", "")
    if "<lambda>" in qualname:
        raise TypeError(
            f"cannot run the lambda {name} as a job: a worker process can only"
            " import functions by name. Define it with def at module level."
        )
    if "<locals>" in qualname:
        raise TypeError(
            f"cannot run the nested function {name} as a job: a worker process"
            " can only import functions by name. Move it to module level."
        )
    try:
        pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(
            f"cannot send {name} to a worker process: {exc}. Pass a function"
            " defined at module level, importable as module.name."
        ) from None
    labelled = [(f"argument {i}", v) for i, v in enumerate(args)]
    labelled += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in labelled:
        try:
            pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(
                f"{label} of {name} ({type(value).__qualname__}) cannot be pickled"
                f" to a worker process: {exc}. Pass plain data (ids, paths,"
                " numbers, strings) and open files, connections or locks inside"
                " the job."
            ) from None
    raise TypeError(f"the call of {name} cannot be pickled to a worker process")


#: What a record of a job without retries holds.
_NO_RETRY = RetryPolicy()
#: Seconds at most between two looks for retries that are due, in the store
#: (others' too, on a shared store): a retry starts at most this late.
RETRY_POLL_SECONDS = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    """What the engine keeps of a job it handed to its runner, to hand it
    again (a fresh pool): the pickled call and what the runner is told."""

    payload: bytes
    timeout: float | None
    name: str
    created_at: float
    attempt: int = 1


class Engine:
    """Runs jobs and keeps their records; what :class:`BackgroundMiddleware`
    delegates to. Options are documented there."""

    def __init__(self, settings: Settings) -> None:
        #: The middleware's options, checked (see :class:`~wsgi_bg.options.Settings`).
        self.settings = settings
        self._lock = threading.RLock()
        self._backend: Backend = open_backend(settings)
        self._open_runner = functools.partial(open_runner, settings, self._backend)
        self._planned: Runner = self._open_runner()
        self._closing = threading.Event()
        # Until the first submit, reads use what needs nothing started.
        self._store: Store = self._backend.reader()
        self._runner: Runner | None = None
        self._calls: dict[str, _Call] = {}
        # Jobs created that nothing will run, to end (see _settle).
        self._unsettled: dict[str, tuple[str, str]] = {}
        self._settler: threading.Thread | None = None
        self._futures: dict[str, Future[str | Ending | None]] = {}
        self._closed = False
        # Runs the attempts whose retry is due (see _retry_loop).
        self._retrier: threading.Thread | None = None

    @property
    def store(self) -> Store:
        """The store the jobs live in (a snapshot of it after shutdown)."""
        return self._store

    @property
    def shared_store(self) -> bool:
        """Whether every server process sees the same jobs (a Redis store)."""
        return self._backend.shared

    @property
    def started(self) -> bool:
        return self._runner is not None

    def first_request(self) -> None:
        """A web process serves its first request: a runner whose queued
        jobs wait elsewhere (RQ) starts now rather than at the first submit,
        so that its sweep of the jobs a process gone left behind runs in a
        process that only serves pages. Redis out of reach: the first submit
        tries again."""
        if self._backend.shared:
            # Retries waiting in a shared store are any process's to run,
            # this one's from its first request on (its pool starts only
            # when one is due: see _retry_loop).
            self._start_retries()
        if self._planned.holds_queued or self._runner is not None or self._closed:
            return
        try:
            self._start()
        except StoreUnavailable as exc:
            logger.warning("wsgi_bg: %s", exc)

    def _start(self) -> Runner:
        runner = self._runner
        if runner is not None and not self._closed:
            return runner  # started: no lock, which the pool's callbacks take
        with self._lock:
            if self._closed:
                raise RuntimeError("this BackgroundMiddleware was shut down")
            if self._runner is None:
                runner = self._planned
                ctx = multiprocessing.get_context(self.settings.start_method)
                _survive_removed_cwd()
                before = _forkserver_pid()
                with _signals_unblocked():
                    store = self._backend.start(ctx,
                                                holds_queued=runner.holds_queued)
                    if runner.needs_link and self.settings.start_method == "forkserver":
                        # Started now, not by the pool's first worker: ours
                        # to stop.
                        from multiprocessing import forkserver

                        forkserver.ensure_running()
                    _claim_forkserver(before)
                    try:
                        runner.start(self._backend.link() if runner.needs_link
                                     else LocalLink(store) if runs_here(runner)
                                     else None)
                    except BaseException:
                        # A bad executor_factory: leave nothing running.
                        self._store = self._backend.stop()
                        _release_helpers(self)
                        raise
                self._runner = runner
                self._store = store
                if self._backend.shared:
                    self._start_retries()  # others' retries are ours to run too
                _register_exit(self)
                with _started_lock:
                    _started.add(self)
            return self._runner

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        *, name: str | None = None, timeout: float | None = None,
        url_for: Callable[[str], str | None] | None = None,
        show_args: bool | None = None, shown_args: str | None = None,
        max_call_bytes: int | None = None, unique: str | None = None,
        retry: RetryPolicy | None = None, function: str | None = None,
    ) -> Job:
        """Queue ``fn(*args, **kwargs)``; see :meth:`BackgroundMiddleware.submit`.

        :param show_args: whether the pages show the call's arguments;
            default: ``fn``'s own option (:func:`~wsgi_bg.background`), else
            ``True``.
        :param shown_args: what the pages show of the arguments instead of
            :func:`describe_args` (a marked app's request, described).
        :param max_call_bytes: this call's bound instead of the engine's.
        :param unique: the digest of the call's unique key
            (:func:`unique_digest`; a marked app's request's), instead of
            the one ``fn``'s own ``unique`` option makes.
        :param retry: how failed attempts run again, instead of ``fn``'s own
            (:func:`~wsgi_bg.options.retry_policy` makes one).
        :param function: what the job runs, for its metrics' label, instead
            of ``fn``'s ``module.qualname`` (a marked app's import path).
        :raises CallTooLarge: past it; nothing is queued.
        """
        options = getattr(fn, OPTIONS_ATTR, None) or {}
        if retry is None:
            retry = options.get("retry")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")
        if timeout is None:
            timeout = options.get("timeout")
        if show_args is None:
            show_args = bool(options.get("show_args", True))
        check_number("timeout", timeout, minimum=0, allow_none=True)
        name = name or callable_name(fn)
        payload = dump_call(fn, args, kwargs, retry.on if retry else None)
        limit = (self.settings.max_call_bytes if max_call_bytes is None
                 else max_call_bytes)
        if len(payload) > limit:
            raise CallTooLarge(
                f"the call of {name} pickles to"
                f" {len(payload):,} bytes, more than max_call_bytes={limit:,}:"
                " nothing was queued. Pass a reference to the data instead (a"
                " file's path, a database key, a URL) and load it in the job, or"
                " raise max_call_bytes")
        if unique is None and options.get("unique") is not None:
            key = options["unique"](*args, **kwargs)
            if not isinstance(key, str):
                raise TypeError(
                    f"the unique= callable of {name} must return a str key, got"
                    f" {key!r:.100}: return e.g. str(user_id), or f'{{a}}:{{b}}'")
            unique = unique_digest(name, key)
        runner = self._start()
        job_id = new_job_id()
        record = {
            "id": job_id, "name": name,
            "function": function or callable_name(fn),
            "unique": unique,
            "created_at": time.time(), "started_at": None, "ended_at": None,
            "result": None, "error": None, "progress": None, "timeout": timeout,
            "cancel_requested": False, "cancel_grace": None,
            "url": url_for(job_id) if url_for else None, "pid": None,
            "args": (None if not show_args else shown_args if shown_args is not None
                     else describe_args(args, kwargs)),
            **(retry or _NO_RETRY).record_fields(),
            "attempt": 1, "retry_at": None, "errors": [],
        }
        return self._create(runner, record, payload, timeout)

    def rerun(
        self, job_id: str, url_for: Callable[[str], str | None] | None = None
    ) -> Job:
        """Queue the call of a stored job again; see
        :meth:`BackgroundMiddleware.rerun`."""
        record = self._store.get(job_id) if isinstance(job_id, str) else None
        if record is None:
            raise LookupError(
                f"job {job_id!r} is no longer stored: finished jobs are dropped"
                " after job_ttl seconds or past keep_finished, so it cannot run again")
        payload = self._store.call(job_id)  # BadSignature: never unpickled
        if payload is None:
            raise LookupError(
                f"job {job_id!r} cannot run again: its call is no longer kept"
                " (it was dropped with the job, or the job was stored by a"
                " version of wsgi_bg that did not keep it)")
        runner = self._start()
        new_id = new_job_id()
        new = {
            "id": new_id, "name": record["name"],
            "function": record.get("function"), "created_at": time.time(),
            "started_at": None, "ended_at": None, "result": None, "error": None,
            "progress": None, "timeout": record["timeout"],
            "cancel_requested": False, "cancel_grace": None,
            "url": url_for(new_id) if url_for else None, "pid": None,
            "args": record.get("args"), "rerun_of": job_id,
            # Its key's digest: while a job holds it, that job is the answer.
            "unique": record.get("unique"),
            # Its retries too (retry_on is in the call).
            **{name: record.get(name, default) for name, default
               in _NO_RETRY.record_fields().items()},
            "attempt": 1, "retry_at": None, "errors": [],
        }
        return self._create(runner, new, payload, record["timeout"])

    def _create(
        self, runner: Runner, record: dict[str, Any], payload: bytes,
        timeout: float | None,
    ) -> Job:
        job_id = record["id"]
        if record.get("retries"):
            self._start_retries()  # (this process's own store: from its first)
        # Known to shutdown's sweep of this engine's jobs before it is
        # created, so that it is cancelled or refused. The store's round trip
        # is made without the lock: held across it, it stalled the pool's
        # management thread (its callbacks take the lock) for every submit.
        with self._lock:
            if self._closed:
                raise RuntimeError("this BackgroundMiddleware was shut down")
            store = self._store
            self._calls[job_id] = _Call(payload, timeout, str(record["name"]),
                                        float(record["created_at"]))
        try:
            created = store.create(record, self.settings.max_queued, payload)
        except StoreUnavailable:
            # Its answer was lost (a timeout, a dropped connection): it may
            # have landed all the same, and nothing here will run it.
            self._calls.pop(job_id, None)
            self._settle(job_id, JobState.CANCELLED.value, _CREATE_LOST, now=False)
            raise
        except BaseException:
            self._calls.pop(job_id, None)
            raise
        if created is None:
            self._calls.pop(job_id, None)
            raise QueueFull(
                f"{self.settings.max_queued} jobs are already waiting (max_queued): try"
                " again later, or raise max_queued or max_workers"
            )
        if created != job_id:
            # A queued or running job holds the record's unique key: it is
            # the answer, and nothing was created.
            self._calls.pop(job_id, None)
            return Job(self, created)
        with self._lock:
            if self._closed:
                # Shut down while it was being created: shutdown's sweep may
                # have missed the record; cancelled here (a no-op if it did not).
                self._calls.pop(job_id, None)
                with contextlib.suppress(StoreUnavailable):
                    store.request_cancel(job_id, 0.0, shutdown=True)
                raise RuntimeError("this BackgroundMiddleware was shut down")
            self._hand_over(runner, job_id, "the job")
        return Job(self, job_id)

    # -- jobs created that nothing will run -----------------------------------------
    def _settle(self, job_id: str, state: str, error: str, *, now: bool) -> None:
        """End ``job_id``, created (or perhaps created: its answer was lost)
        but never handed to a runner, as ``state`` with ``error`` if it is
        still queued: at once if ``now``, else (the store just failed to
        answer) and while the store cannot be reached, by a thread that tries
        soon, then up to every second, until it can or shutdown, so that no
        record stays queued with nothing to run it, holding a ``max_queued``
        slot."""
        with self._lock:
            self._unsettled[job_id] = (state, error)
        if now:
            self._settle_pending()
        with self._lock:
            if self._unsettled and self._settler is None and not self._closed:
                self._settler = threading.Thread(
                    target=self._settle_loop, name="wsgi_bg-settle", daemon=True)
                self._settler.start()

    # -- retries: attempts that run again ----------------------------------------
    def _start_retries(self) -> None:
        with self._lock:
            if self._retrier is None and not self._closed:
                self._retrier = threading.Thread(
                    target=self._retry_loop, name="wsgi_bg-retries", daemon=True)
                self._retrier.start()

    def _retry_loop(self) -> None:
        """Until shutdown: take the retries that are due from the store
        (:meth:`~wsgi_bg.stores.Store.claim_retries`: each goes to one
        process) and run them, then sleep until the next is due, at most
        :data:`RETRY_POLL_SECONDS` (another process may add one sooner)."""
        failing = False
        wait = 0.0
        while not self._closing.wait(wait):
            wait = RETRY_POLL_SECONDS
            try:
                if self._runner is None:
                    # A process that only served pages so far: its runner
                    # (and the owner its pool's jobs need) starts for a retry.
                    due = self._store.next_retry()
                    if due is None or due > time.time():
                        continue
                    self._start()
                ids, next_at = self._store.claim_retries()
            except StoreUnavailable as exc:
                if not failing:
                    logger.warning("wsgi_bg: retries wait: %s", exc)
                failing = True
                continue
            except Exception:  # a shutdown meanwhile, or a store's bug: go on
                if self._closed:
                    return
                logger.exception("wsgi_bg: could not take the retries due")
                continue
            failing = False
            for job_id in ids:
                self._run_again(job_id)
            if next_at is not None:
                wait = min(wait, max(0.0, next_at - time.time()))

    def _run_again(self, job_id: str) -> None:
        """Run the next attempt of ``job_id``, claimed by this process: its
        call from the store, as :meth:`rerun` reads it."""
        store = self._store
        try:
            record = store.get(job_id)
            if record is None or record["state"] != JobState.QUEUED:
                return  # cancelled or dropped since
            payload = store.call(job_id)
        except StoreUnavailable:
            # Claimed, so no other process will run it: ended when the store
            # answers again, rather than left queued with nothing to run it.
            self._settle(job_id, JobState.CRASHED.value, _RETRY_LOST, now=False)
            return
        except BadSignature as exc:  # never unpickled
            self._finish(job_id, JobState.FAILED.value, str(exc))
            return
        if payload is None:
            self._finish(job_id, JobState.FAILED.value,
                         "its next attempt could not run: its call is no longer"
                         " in the store")
            return
        with self._lock:
            runner = self._runner
            if self._closed or runner is None:
                return  # (shutdown cancels this engine's queued jobs)
            self._calls[job_id] = _Call(
                payload, record["timeout"], str(record["name"]),
                float(record["created_at"]), int(record.get("attempt") or 1))
            try:
                self._hand_over(runner, job_id, "its next attempt")
            except BaseException:  # noqa: BLE001 - ended, and said why
                pass

    def _settle_pending(self) -> None:
        """One try at each job :meth:`_settle` holds."""
        with self._lock:
            pending, store = dict(self._unsettled), self._store
        for job_id, (state, error) in pending.items():
            try:
                record = store.get(job_id)
                if record is not None and record["state"] == JobState.QUEUED:
                    store.finish(job_id, Ending(state, error=error))
            except StoreUnavailable:
                continue  # tried again soon
            except Exception:
                logger.exception("wsgi_bg: could not end job %s, which nothing"
                                 " runs", job_id)
            with self._lock:
                self._unsettled.pop(job_id, None)

    def _settle_loop(self) -> None:
        # The first tries soon: until it is ended, a lost create holds a
        # max_queued slot (its answer was lost, not always the store).
        wait = _SETTLE_SECONDS / 16
        while not self._closing.wait(wait):
            self._settle_pending()
            with self._lock:
                # Found empty and let go under one lock: a _settle between
                # the two would see this thread still running and start none.
                if not self._unsettled:
                    self._settler = None
                    return
            wait = min(2 * wait, _SETTLE_SECONDS)
        with self._lock:
            self._settler = None

    def _hand_over(self, runner: Runner, job_id: str, what: str) -> None:
        """Under the lock: :meth:`_dispatch`; if that fails, the job (``what``
        names it in the error) ends crashed, saying why, and the failure is
        raised."""
        try:
            self._dispatch(runner, job_id)
        except BaseException:
            self._calls.pop(job_id, None)
            self._settle(job_id, JobState.CRASHED.value,
                         f"{what} could not be handed to the {runner.kind}"
                         " runner:\n" + traceback.format_exc(), now=True)
            raise

    def _dispatch(self, runner: Runner, job_id: str) -> None:
        call = self._calls[job_id]
        submit = functools.partial(
            runner.submit, job_id, call.payload, call.timeout,
            self.settings.cancel_grace, call.name, call.created_at,
            attempt=call.attempt)
        future = submit()
        if future is None:  # the runner reports nothing back: the store says it
            self._calls.pop(job_id, None)
            return
        self._futures[job_id] = future
        future.add_done_callback(lambda f: self._done(job_id, f))

    def _done(self, job_id: str, future: Future[str | Ending | None]) -> None:
        with self._lock:
            if self._futures.get(job_id) is not future:
                return  # superseded by a resubmission
            del self._futures[job_id]
            call = self._calls.pop(job_id, None)
            if future.cancelled():
                # After a cancel the store already says cancelled (a no-op
                # here); else the pool was shut down before the job ran.
                self._finish(job_id, JobState.CANCELLED.value,
                             "cancelled: the worker pool was shut down before"
                             " it started")
                return
            exc = future.exception()
            if exc is None:
                ending = future.result()
                if isinstance(ending, Ending):
                    # The store is this process's own: a plain call.
                    self._store.finish(job_id, ending)
                return
            lost = exc if isinstance(exc, JobLost) else None
            try:
                # Whether a lost job had started. (Not for a job shutdown
                # killed, its processes too: a Redis store may be what hangs.)
                record = (self._store.get(job_id) if lost is not None
                          and lost.state == JobState.CRASHED else None)
            except StoreUnavailable:
                record = None
            if (lost is not None and call is not None
                    and record is not None and record["state"] == JobState.QUEUED
                    and not self._closed and self._runner is not None):
                # A worker died before this job started: run it on a fresh
                # pool. Not from here: this callback runs inside the broken
                # executor's own handling, under its lock (Python 3.13), and
                # submitting to it would deadlock.
                self._calls[job_id] = call
                threading.Thread(target=self._redispatch, args=(job_id,),
                                 name="wsgi_bg-resubmit", daemon=True).start()
                return
        self._finish(job_id, lost.state if lost is not None else JobState.CRASHED.value,
                     str(lost) if lost is not None
                     else f"the worker process running this job failed: {exc!r}")

    def _finish(self, job_id: str, state: str, error: str) -> None:
        # From callbacks and threads: a store that cannot be reached is logged,
        # not raised into concurrent.futures' machinery.
        store = self._store
        try:
            store.finish(job_id, Ending(state, error=error))
        except StoreUnavailable as exc:
            logger.error("wsgi_bg: could not record job %s as %s: %s",
                         job_id, state, exc)

    def _redispatch(self, job_id: str) -> None:
        with self._lock:
            try:
                if self._closed or self._runner is None:
                    raise RuntimeError("the middleware was shut down")
                self._dispatch(self._runner, job_id)
            except BaseException:
                self._calls.pop(job_id, None)
                state = JobState.CANCELLED if self._closed else JobState.CRASHED
                self._finish(job_id, state.value,
                             "the pool broke before this job started and it"
                             " could not be queued again:\n"
                             + traceback.format_exc())

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or ``None`` if it is unknown or was dropped."""
        if not isinstance(job_id, str) or self._store.get(job_id) is None:
            return None
        return Job(self, job_id)

    def jobs(self, limit: int | None = None) -> list[Job]:
        """Stored jobs, newest first."""
        return [Job(self, r["id"]) for r in self._store.list(limit)]

    def cancel(self, job_id: str, grace: float | None = None) -> bool:
        """See :meth:`Job.cancel`."""
        outcome = self._store.request_cancel(job_id, grace)
        if outcome == "cancelled":
            with self._lock:
                future = self._futures.get(job_id)
            if future is not None:
                future.cancel()  # may be too late (already handed to a worker):
                # then the worker sees the store's "cancelled" and does not run it
            if self._runner is not None:
                self._runner.cancel(job_id)
        return outcome != ""

    def shutdown(self, wait: bool = True) -> None:
        """Stop everything started; see :meth:`BackgroundMiddleware.shutdown`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._runner is not None
        self._closing.set()
        if started:
            self._stop(wait)
        elif self._retrier is not None:  # (started by first_request alone)
            self._retrier.join(_SHUTDOWN_STORE_SECONDS)

    def _stop(self, wait: bool) -> None:
        with self._lock:
            runner, store = self._runner, self._store
            # This engine's own jobs: a shared store holds other processes' too.
            # (Those it could not end yet, see _settle: cancelled if queued.)
            own = [*self._calls, *self._unsettled]
            settler, retrier = self._settler, self._retrier
        if runner is None:
            return
        grace = self.settings.cancel_grace if wait else 0.0
        asked = True
        try:
            for job_id in own:
                # Queued: cancelled. Running: asked to stop, not cancelled, so
                # that a job done within its grace keeps its outcome.
                store.request_cancel(job_id, grace, shutdown=True)
        except StoreUnavailable as exc:
            asked = False
            logger.error("wsgi_bg: shutting down without the store (%s):"
                         " running jobs are stopped without their grace", exc)
        finally:
            # Even when the store is gone: stop the pool. Jobs asked to stop
            # end within their grace (their supervisors see to it); a worker
            # still busy a little later (its store calls hang), or at once
            # when the jobs could not be asked, is killed with its job.
            if retrier is not None:  # (its waits end with _closing)
                retrier.join(_SHUTDOWN_STORE_SECONDS)
            runner.shutdown(grace + _SHUTDOWN_MARGIN if asked else 0.0)
            if not self._backend.shared:
                # Retries waiting in this process's own store: nothing will
                # run them now (in a shared store, another process will).
                with contextlib.suppress(StoreUnavailable):
                    for job_id in store.ids_in_state(JobState.QUEUED.value):
                        store.request_cancel(job_id, 0.0)
            if settler is not None:  # (its waits end with _closing)
                settler.join(_SHUTDOWN_STORE_SECONDS)
            self._store = self._backend.stop()
            _release_helpers(self)


#: Seconds at most between two tries at ending jobs that nothing runs (see
#: _settle); the first come sooner.
_SETTLE_SECONDS = 1.0
#: The error of a job whose create landed after its submit had given up.
_CREATE_LOST = (
    "never started: the job store did not confirm this job's creation in time"
    " (hung, overloaded or cut off), so the request that submitted it was"
    " answered 503 (try again) and nothing was to run it; the record had"
    " landed all the same, and was ended when the store answered again"
)

#: The error of a retry this process took and could not read back.
_RETRY_LOST = (
    "its next attempt never started: the job store could not be reached to"
    " read its call back, and the job was ended when it answered again"
)

#: Seconds shutdown waits for the thread ending jobs that nothing runs.
_SHUTDOWN_STORE_SECONDS = 1.0
#: Seconds past cancel_grace that shutdown waits for a pool worker to end its
#: job before it kills the worker (a job asked to stop is killed by its
#: supervisor at cancel_grace, and recorded; the worker then answers at once).
_SHUTDOWN_MARGIN = 0.5

#: Engines started and not yet shut down, in this process. The forkserver and
#: the resource tracker are shared by all of them: stopping the forkserver while
#: another engine runs would kill that engine's workers (they die with their
#: parent, the forkserver) and can block for as long as they live.
_started: weakref.WeakSet[Engine] = weakref.WeakSet()
_started_lock = threading.Lock()


class _OsModule(types.ModuleType):
    """:mod:`os` for :mod:`multiprocessing.spawn`, whose ``getcwd()`` answers
    ``"/"`` once this process's working directory was removed."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def getcwd() -> str:
        try:
            return os.getcwd()
        except FileNotFoundError:
            return "/"


def _survive_removed_cwd() -> None:
    """Let multiprocessing start processes (pool workers, the forkserver)
    after the server's working directory was
    removed (a deploy pruning old releases): it sends every new process the
    parent's ``os.getcwd()``, which then raises. They start in ``/``
    instead; nothing else changes, and only where it would have failed."""
    from multiprocessing import spawn

    if not isinstance(getattr(spawn, "os", None), _OsModule):
        spawn.os = _OsModule("os")  # type: ignore[attr-defined]


@contextlib.contextmanager
def _signals_unblocked() -> Iterator[None]:
    """Start processes with no signal blocked.

    A process inherits the signal mask of the thread that forks or spawns it,
    and the processes multiprocessing starts from there inherit it in turn
    (the forkserver's: pool workers, job processes). Servers
    block signals in their request threads (uWSGI blocks nearly all), so a
    forkserver started from one never saw SIGCHLD: it reaped no pool worker,
    and shutdown waited for ever for a worker that had exited (uWSGI's master
    then killed the server after its 60 s mercy). A signal that arrives in
    this short window may be handled by this thread, as by any other.
    """
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_SETMASK, ())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _release_helpers(engine: Engine) -> None:
    with _started_lock:
        _started.discard(engine)
        in_use = {other.settings.start_method for other in _started}
        _stop_helpers(in_use)


def _forkserver_pid() -> int | None:
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


#: The forkserver an engine of ours started (not the app's): ours to stop
#: once no engine uses it.
_our_forkserver: int | None = None


def _claim_forkserver(before: int | None) -> None:
    global _our_forkserver
    now = _forkserver_pid()
    if before is None and now is not None:
        with _started_lock:
            _our_forkserver = now


def _stop_helpers(in_use: set[str]) -> None:
    """Stop multiprocessing's forkserver if an engine of ours started it and
    no live engine (start methods ``in_use``) uses it; it restarts by itself
    if anything needs it later.

    The resource tracker is left alone: it is the whole process's (the app's
    own shared memory and pools register with it), stopping it blocks while
    any process holds it, and it ends with this process.
    """
    from multiprocessing import forkserver

    global _our_forkserver
    if (_our_forkserver is not None and _our_forkserver == _forkserver_pid()
            and "forkserver" not in in_use):
        _our_forkserver = None
        stop = getattr(forkserver._forkserver, "_stop", None)
        if stop is not None:
            stop()


def _register_exit(engine: Engine) -> None:
    # threading's exit hooks run before concurrent.futures' own (registered at
    # its import, so later in reverse order), which would wait for running
    # jobs to finish; ours gives them cancel_grace, then kills them.
    ref = weakref.ref(engine)
    pid = os.getpid()

    def at_exit() -> None:
        if os.getpid() != pid:  # a forked child (start_method="fork") inherited it
            return
        engine = ref()
        if engine is not None:
            engine.shutdown(wait=True)

    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError
        register(at_exit)
    except RuntimeError:
        import atexit

        atexit.register(at_exit)
