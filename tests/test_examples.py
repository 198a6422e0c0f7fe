"""The example scripts run end to end (smoke mode) and learn something."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_classifier_smoke() -> None:
    """One epoch on the digits already beats chance (10%) by far."""
    pytest.importorskip("sklearn", reason="the classifier example reads scikit-learn's digits")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "classifier.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"final test accuracy: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) > 0.5
