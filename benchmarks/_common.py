"""What every benchmark script shares (not a benchmark itself: ``nox -s bench`` skips ``_*.py``)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


def cpu_name() -> str:
    """The CPU's model name, for the header of every results table."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time_per_call(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def compare(
    candidates: dict[str, Callable[[], Any]], rounds: int, sample_s: float = 0.02
) -> dict[str, float]:
    """Median seconds per call of each candidate, timed in interleaved rounds.

    Each sample times enough back-to-back calls of one candidate to last about ``sample_s``.
    """
    calls = {}
    for name, fn in candidates.items():  # warm up (first-call costs, lazy imports), calibrate
        for _ in range(3):
            fn()
        calls[name] = max(1, round(sample_s / _time_per_call(fn, 3)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            samples[name].append(_time_per_call(candidates[name], calls[name]))
    return {name: statistics.median(s) for name, s in samples.items()}
