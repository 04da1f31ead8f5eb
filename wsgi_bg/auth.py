"""Ready-made ``authorize`` callables for :class:`~wsgi_bg.BackgroundMiddleware`.

``authorize(environ, action, job) -> bool`` decides who may use the status
pages. ``action`` is ``"list"`` (the job list; ``job`` is ``None``), ``"view"``
(one job's page, JSON or event stream), ``"cancel"``, ``"rerun"`` (run an
ended job's call again, as a new job) or ``"metrics"`` (the ``/metrics``
page for Prometheus; ``job`` is ``None``). Without one, a job's own pages, its
cancel and its run again are open to whoever holds its id (an unguessable
capability) and the list and the metrics are refused. ``job`` is a lazy
:class:`~wsgi_bg.Job` handle: reading it reads the store, and a job dropped
meanwhile raises :exc:`LookupError` (answered ``404``).

.. deprecated:: 0.2
    The action ``"retry"``, now ``"rerun"`` (the route's and the records'
    name; "retry" will name retries after a failure). For a rerun,
    ``authorize`` is asked ``"rerun"`` and then ``"retry"``, and a refusal of
    either refuses, so an ``authorize`` that refuses ``"retry"`` still blocks
    it; answers that differ raise a :exc:`DeprecationWarning`. Give both the
    same answer until ``"retry"`` is no longer asked.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

logger = logging.getLogger("wsgi_bg")


def allow_all(environ: WSGIEnvironment, action: str, job: Any) -> bool:
    """Allow everything, the job list included. For development, or behind
    your own authentication."""
    return True


#: Headers a reverse proxy adds; ProxyFix reads them and records what it
#: changed under "werkzeug.proxy_fix.orig".
_FORWARDING = {"HTTP_X_FORWARDED_FOR": "X-Forwarded-For",
               "HTTP_FORWARDED": "Forwarded", "HTTP_X_REAL_IP": "X-Real-IP"}
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def _is_local_host(host: str, extra: frozenset[str]) -> bool:
    """Whether a ``Host`` header names this machine (or one of ``extra``)."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("["):  # [::1]:8080
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host in extra or host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _allow_local(environ: WSGIEnvironment, extra: frozenset[str]) -> bool:
    try:
        if not ipaddress.ip_address(environ.get("REMOTE_ADDR", "")).is_loopback:
            return False
    except ValueError:
        return False
    forwarded = [h for h in _FORWARDING if environ.get(h)]
    if forwarded and "werkzeug.proxy_fix.orig" not in environ:
        # A proxy on this machine: REMOTE_ADDR is the proxy's, not the client's.
        _warn_once(
            "proxy",
            "wsgi_bg.allow_local: a request from %s carries %s, but no ProxyFix"
            " has read it: refused, since every request through a reverse proxy"
            " on this machine comes from a loopback address. Wrap the app in"
            " werkzeug.middleware.proxy_fix.ProxyFix(app, x_for=1, ...) so that"
            " the client's own address is judged (see docs/security.md).",
            environ.get("REMOTE_ADDR"),
            ", ".join(_FORWARDING[h] for h in forwarded))
        return False
    host = environ.get("HTTP_HOST")
    if host is not None and not _is_local_host(host, extra):
        # DNS rebinding: another site's page, its name pointed at 127.0.0.1.
        _warn_once(
            "host",
            "wsgi_bg.allow_local: refused a request from a loopback address for"
            " Host %r, which is not this machine's (a DNS rebinding attack, or a"
            " local name: allow it with wsgi_bg.auth.allow_local_hosts(...))",
            host[:100])
        return False
    return True


def allow_local(environ: WSGIEnvironment, action: str, job: Any) -> bool:
    """Allow everything to clients on a loopback address (127.0.0.0/8, ::1)
    that ask for a local host name.

    Judges ``REMOTE_ADDR``, and refuses:

    - a request that carries ``X-Forwarded-For``, ``Forwarded`` or
      ``X-Real-IP`` that no :class:`~werkzeug.middleware.proxy_fix.ProxyFix`
      has read: behind a reverse proxy on the same machine every request comes
      from 127.0.0.1. Apply ``ProxyFix`` first; it then judges the real
      client. A warning saying so is logged once;
    - a ``Host`` other than ``localhost`` (and ``*.localhost``), a loopback
      address or the names given to :func:`allow_local_hosts`: a page of
      another site can reach 127.0.0.1 through a visitor's browser by
      pointing its own name there (DNS rebinding).

    .. versionchanged:: 0.2
        Refuses forwarded requests without ProxyFix, and non-local hosts.
    """
    return _allow_local(environ, frozenset())


def allow_local_hosts(*hosts: str) -> Callable[[WSGIEnvironment, str, Any], bool]:
    """:func:`allow_local`, also accepting requests for the host names
    ``hosts`` (without port), e.g. a name this machine has in
    ``/etc/hosts``::

        BackgroundMiddleware(app, authorize=allow_local_hosts("devbox.lan"))

    .. versionadded:: 0.2
    """
    for host in hosts:
        if not isinstance(host, str) or not host:
            raise TypeError(f"hosts must be non-empty strings, got {host!r}")
    extra = frozenset(h.lower().rstrip(".") for h in hosts)

    def allow_local_or_named(environ: WSGIEnvironment, action: str, job: Any) -> bool:
        return _allow_local(environ, extra)

    return allow_local_or_named


def default_authorize(environ: WSGIEnvironment, action: str, job: Any) -> bool:
    """The default: one job's pages, cancel and run again for whoever holds
    its id; no list, no metrics (they name every function jobs run)."""
    return action not in ("list", "metrics")
