"""Figures, tables and the JSON lines the benchmarks write."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name"):
                    model = row.split(":", 1)[1].strip()
                    break
    except OSError:
        model = platform.processor()
    ram = 0
    try:
        import psutil

        ram = psutil.virtual_memory().total
    except Exception:  # noqa: BLE001 - informative only
        pass
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(ram / 2**30, 1),
        "platform": platform.platform(),
    }


@dataclass
class Result:
    """One benchmark's outcome: its figures, its reference and the verdict.

    ``ratio`` is the headline comparison; ``ratio_meaning`` says which way it
    reads ("fraction of the reference rate", "x the reference time", ...).
    """

    name: str
    figures: dict[str, Any]
    reference: dict[str, Any]
    ratio: float | None
    ratio_meaning: str
    target: str
    passed: bool | None  # None: could not be judged (see note)
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    note: str = ""

    def line(self) -> dict[str, Any]:
        info = machine()
        return {
            "name": self.name,
            "figures": clean(self.figures),
            "reference": clean(self.reference),
            "ratio": clean({"r": self.ratio})["r"],
            "ratio_meaning": self.ratio_meaning,
            "target": self.target,
            "pass": self.passed,
            "note": self.note,
            "python": info["python"],
            "cpus": info["cpus"],
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def verdict(passed: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[passed]


def print_result(result: Result, stream: Any = None) -> None:
    """A readable table of one benchmark's figures."""
    stream = stream or sys.stdout
    rows = result.rows or [(k, fmt(v), "") for k, v in result.figures.items()]
    width = max([len(r[0]) for r in rows] + [10])
    vwidth = max([len(r[1]) for r in rows] + [8])
    print(f"\n== {result.name} ==", file=stream)
    print(f"  {'figure':<{width}}  {'value':>{vwidth}}  reference", file=stream)
    for label, value, reference in rows:
        print(f"  {label:<{width}}  {value:>{vwidth}}  {reference}", file=stream)
    ratio = "—" if result.ratio is None else f"{result.ratio:.3g}"
    print(
        f"  ratio {ratio} ({result.ratio_meaning}); target: {result.target};"
        f" {verdict(result.passed)}",
        file=stream,
    )
    if result.note:
        print(f"  note: {result.note}", file=stream)
    stream.flush()


def summary(results: Sequence[Result], stream: Any = None) -> None:
    """The closing table: one row per benchmark."""
    stream = stream or sys.stdout
    print("\n== summary ==", file=stream)
    print(f"  {'benchmark':<14} {'ratio':>8}  {'target':<42} verdict", file=stream)
    for r in results:
        ratio = "—" if r.ratio is None else f"{r.ratio:.3g}"
        print(
            f"  {r.name:<14} {ratio:>8}  {r.target:<42} {verdict(r.passed)}",
            file=stream,
        )
    stream.flush()


def append_jsonl(path: str, result: Result) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(result.line(), allow_nan=False, default=_nan_safe) + "\n")


def _nan_safe(value: Any) -> Any:
    return str(value)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "—"
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ms(seconds: float) -> str:
    return "—" if seconds != seconds else f"{seconds * 1000:.3g} ms"


def rate(per_second: float) -> str:
    return "—" if per_second != per_second else f"{per_second:,.0f}/s"


def clean(figures: dict[str, Any]) -> dict[str, Any]:
    """Figures made JSON-safe: NaN and infinities become None, floats rounded."""
    out: dict[str, Any] = {}
    for key, value in figures.items():
        if isinstance(value, float):
            out[key] = (
                None
                if value != value or value in (float("inf"), float("-inf"))
                else float(f"{value:.6g}")
            )
        elif isinstance(value, dict):
            out[key] = clean(value)
        else:
            out[key] = value
    return out
