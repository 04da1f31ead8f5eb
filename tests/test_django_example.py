"""The Django example's own tests (Django's test client, the pytest plugin),
run as its authors would: pytest in examples/django_example/, in a process of
its own (Django's settings are global to a process)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "django_example")


def test_django_example_tests_pass():
    pytest.importorskip("django")
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-W", "error", "--timeout", "60", "--rootdir", EXAMPLE, "-c", os.devnull,
         EXAMPLE],
        cwd=EXAMPLE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=90)
    finally:
        try:  # whatever it left behind, it was in its own session
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    assert process.returncode == 0, out
    assert "4 passed" in out, out
