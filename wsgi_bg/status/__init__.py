"""The status pages: HTML, JSON and Server-Sent Events of the jobs.

:class:`StatusApp` is built by :class:`~wsgi_bg.BackgroundMiddleware` as
``mw.status_app``; see :mod:`wsgi_bg.status.app` for its routes.
"""

from __future__ import annotations

from .app import StatusApp

__all__ = ["StatusApp"]
