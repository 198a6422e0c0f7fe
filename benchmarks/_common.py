"""What every benchmark script shares (not a benchmark itself: ``nox -s bench`` skips ``_*.py``)."""

from __future__ import annotations

import platform


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
