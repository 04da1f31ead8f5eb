"""Job functions and apps for the hardening tests (issue 10)."""
from __future__ import annotations

from wsgi_bg import current_job


def huge_progress():
    current_job.progress(10**5000, 10**5001, "x" * 20_000_000)
    current_job.progress(10**5000)
    return "done"


def infinite_progress():
    current_job.progress(float("inf"), 10)
    return "done"


def nan_progress():
    current_job.progress(float("nan"), 10)


def tqdm_like_huge():
    # A bar a supervisor parses: numbers of a thousand digits.
    print("Crunching:  50%|#####     | " + "9" * 1000 + "/" + "9" * 1001
          + " [00:01<00:01]")
    return "done"


def huge_error():
    raise ValueError("e" * 20_000_000)
