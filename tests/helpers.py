"""Polling helpers: tests wait with a deadline, never with a bare sleep.

They are the package's own (:mod:`wsgi_bg.testing`), which users' suites get
too; this module keeps the names the tests import.
"""
from __future__ import annotations

from wsgi_bg.testing import assert_no_children, live_children, wait_for

__all__ = ["assert_no_children", "live_children", "wait_for"]
