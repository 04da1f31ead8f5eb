"""The reports app's background work.

Job functions live at module level in an importable module: a worker process
imports ``djreports.tasks`` by name. A job that uses the ORM calls
``django.setup()`` first (workers are fresh processes); this one needs only
plain Python.
"""
import time

from wsgi_bg import background, current_job

MONTHS = 12


@background(timeout=600)
def build_report(year, step=0.5):
    """Pretend to render a yearly report, a month at a time."""
    for month in range(1, MONTHS + 1):
        if current_job.cancel_requested:
            print("cancelled before month", month)
            return None
        time.sleep(step)
        print(f"{year}-{month:02d}: rendered")
        current_job.progress(month, MONTHS, f"month {month} of {MONTHS}")
    return {"year": year, "pages": MONTHS * 4}
