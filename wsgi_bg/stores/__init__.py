"""Where jobs live: the :class:`Store` protocol and the stores that keep it.

- ``store=None`` (the default): :class:`~wsgi_bg.stores.memory.MemoryStore` in
  the server process, served to its pool's workers by a manager on a thread.
  Nothing to install; jobs are that server process's own.
- ``store="redis://host:6379/0"`` (also ``rediss://``, ``unix://``) or a
  :class:`redis.Redis` client: :class:`~wsgi_bg.stores.redis.RedisStore`,
  shared by every server process and kept across restarts
  (``pip install "wsgi_bg[redis]"``).

:func:`open_backend` is the one place that tells them apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .protocol import RECORD_FIELDS, Backend, Ending, Link, Record, Store

if TYPE_CHECKING:
    from ..options import Settings

__all__ = ["RECORD_FIELDS", "Backend", "Ending", "Link", "Record", "Store",
           "open_backend"]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_backend(settings: Settings) -> Backend:
    """The backend for the middleware's ``store=`` option (with its
    ``namespace``, ``secret_key`` and limits); nothing starts.

    :raises ValueError: for a ``store`` that names no known store, or a
        Redis store without a secret key.
    :raises ImportError: for a Redis store without the ``redis`` package.
    """
    store, namespace = settings.store, settings.namespace
    limits: dict[str, Any] = {"keep_finished": settings.keep_finished,
                              "job_ttl": settings.job_ttl,
                              "max_output_bytes": settings.max_output_bytes}
    if not isinstance(namespace, str) or not namespace or not all(
        c.isalnum() or c in "-_." for c in namespace
    ):
        raise ValueError(
            "namespace must be a non-empty string of letters, digits, '-', '_'"
            f" or '.', got {namespace!r}"
        )
    if store is None:
        from .memory import MemoryBackend

        return MemoryBackend(**limits)
    is_url = isinstance(store, str) and store.startswith(_REDIS_SCHEMES)
    is_client = type(store).__module__.startswith("redis.") and hasattr(
        store, "connection_pool"
    )
    if is_url or is_client:
        try:
            from .redis import RedisBackend
        except ImportError as exc:
            raise ImportError(
                "a Redis store needs the redis package: pip install"
                f' "wsgi_bg[redis]" ({exc})'
            ) from exc
        return RedisBackend(store, namespace=namespace,
                            secret_key=settings.secret_key, **limits)
    raise ValueError(
        "store must be None (the default, in memory), a Redis URL"
        " ('redis://host:6379/0', 'rediss://…' or 'unix:///path/redis.sock')"
        f" or a redis.Redis client, got {store!r}"
    )
