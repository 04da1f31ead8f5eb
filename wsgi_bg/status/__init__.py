"""Status pages (being written)."""

from __future__ import annotations

from typing import Any

from werkzeug.exceptions import NotFound


class StatusApp:
    def __init__(self, middleware: Any) -> None:
        self.middleware = middleware

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return NotFound()(environ, start_response)
