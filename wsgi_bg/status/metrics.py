"""The ``/metrics`` page: the store's figures in Prometheus' text format.

Served by :class:`~wsgi_bg.status.app.StatusApp` at ``{prefix}/metrics``,
behind ``authorize`` with the action ``"metrics"`` (refused by default)::

    scrape ──► StatusApp ──► store.counts()  jobs per state, now
                        └─► store.stats()   what ended, counted as each job
                                            ended (JobStats), in the store

Everything comes from the store, none of it from the process that answers:
with a Redis store every server process of ``gunicorn -w 4`` answers the
same figures, and they outlive restarts. A store that does not answer gives
``wsgi_bg_store_up 0`` and what can be said without it, not an error: a
scrape that fails would hide that the store is down.

Written by hand in the text exposition format 0.0.4
(https://prometheus.io/docs/instrumenting/exposition_formats/): a few
families, one escaping rule (:func:`label_value`). prometheus_client's
registry keeps figures in the process that counts them, which is not where
they are counted here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from ..exceptions import StoreUnavailable
from ..jobs import JobState
from ..stores.protocol import BUCKETS, Histogram, JobStats, Store

#: The content type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def label_value(value: str) -> str:
    """``value`` as a quoted label value: backslash, double quote and line
    feed escaped, as the text format requires."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n"))
    return f'"{escaped}"'


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _family(name: str, kind: str, text: str) -> Iterator[str]:
    yield f"# HELP {name} {text}"
    yield f"# TYPE {name} {kind}"


def _histograms(name: str, text: str, found: dict[str, Histogram]) -> Iterator[str]:
    yield from _family(name, "histogram", text)
    for function in sorted(found):
        histogram = found[function]
        label = f"function={label_value(function)}"
        seen = 0
        for bound, count in zip((*BUCKETS, math.inf), histogram.buckets, strict=True):
            seen += count
            yield f'{name}_bucket{{{label},le="{_number(bound)}"}} {seen}'
        yield f"{name}_sum{{{label}}} {_number(histogram.sum)}"
        yield f"{name}_count{{{label}}} {seen}"


def exposition(store: Store) -> str:
    """The metrics page's text: ``store``'s counts and stats, read now.

    A store that raises :exc:`~wsgi_bg.exceptions.StoreUnavailable` gives
    ``wsgi_bg_store_up 0`` and no other figure.
    """
    try:
        counts, stats = store.counts(), store.stats()
        up = 1
    except StoreUnavailable:
        counts, stats, up = {}, JobStats(), 0
    lines: list[str] = []
    lines += _family("wsgi_bg_store_up", "gauge",
                     "1 if the job store answered this scrape, else 0.")
    lines.append(f"wsgi_bg_store_up {up}")
    if up:
        lines += _family("wsgi_bg_jobs", "gauge", "Jobs stored, per state.")
        lines += [f"wsgi_bg_jobs{{state={label_value(s)}}} {counts.get(s, 0)}"
                  for s in JobState]
    lines += _family("wsgi_bg_jobs_finished_total", "counter",
                     "Jobs ended, per function and the state they ended in.")
    lines += [f"wsgi_bg_jobs_finished_total{{function={label_value(function)},"
              f"outcome={label_value(outcome)}}} {count}"
              for (function, outcome), count in sorted(stats.finished.items())]
    lines += _family("wsgi_bg_job_retries_total", "counter",
                     "Attempts that failed and ran again (background(retries=...)),"
                     " per function.")
    lines += [f"wsgi_bg_job_retries_total{{function={label_value(function)}}} {count}"
              for function, count in sorted(stats.retries.items())]
    lines += _histograms("wsgi_bg_job_duration_seconds",
                         "Seconds from a job's start to its end, per function.",
                         stats.duration)
    lines += _histograms("wsgi_bg_job_queue_wait_seconds",
                         "Seconds a job waited queued before it started, per"
                         " function (counted when it ends).", stats.queue_wait)
    return "\n".join(lines) + "\n"
