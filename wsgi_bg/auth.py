"""Ready-made ``authorize`` callables for :class:`~wsgi_bg.BackgroundMiddleware`.

``authorize(environ, action, job) -> bool`` decides who may use the status
pages. ``action`` is ``"list"`` (the job list; ``job`` is ``None``), ``"view"``
(one job's page, JSON or event stream) or ``"cancel"``. Without one, a job's
own pages and its cancel are open to whoever holds its id (an unguessable
capability) and the list is refused.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment


def allow_all(environ: WSGIEnvironment, action: str, job: Any) -> bool:
    """Allow everything, the job list included. For development, or behind
    your own authentication."""
    return True


def allow_local(environ: WSGIEnvironment, action: str, job: Any) -> bool:
    """Allow everything to clients on a loopback address (127.0.0.0/8, ::1).

    Uses ``REMOTE_ADDR``: behind a reverse proxy, apply Werkzeug's
    :class:`~werkzeug.middleware.proxy_fix.ProxyFix` first, or every request
    looks local.
    """
    try:
        return ipaddress.ip_address(environ.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def default_authorize(environ: WSGIEnvironment, action: str, job: Any) -> bool:
    """The default: one job's pages and cancel for whoever holds its id; no list."""
    return action != "list"
