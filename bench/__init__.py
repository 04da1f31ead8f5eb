"""wsgi_bg benchmarks (issue 5): ``make bench``, or ``python -m bench [NAME ...]``.

Each benchmark measures wsgi_bg next to its reference (the bare app, a bare
:class:`~concurrent.futures.ProcessPoolExecutor`, a buffered ``os.pipe``) in
the same run, prints a table, and appends one JSON line to ``--out``
(default ``bench/results.jsonl``). ``--quick`` is a fast smoke pass. The
figures of the latest full run are kept in ``docs/performance.md``.

Kept light: worker processes import :mod:`bench.jobfuncs` by name, which
imports this package.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks named in ``argv`` (all by default); see ``--help``."""
    from .suite import main as run

    return run(argv)
