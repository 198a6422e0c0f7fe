"""Test configuration: hypothesis profiles, float64 JAX on the CPU."""

from __future__ import annotations

import functools
import os

import hypothesis
import pytest
from _pytest.doctest import DoctestItem

# "ci" is deterministic (derandomized, no deadline: these machines are shared and noisy);
# "dev" explores new examples on every run. nox selects "ci" unless HYPOTHESIS_PROFILE is set.
hypothesis.settings.register_profile(
    "ci", max_examples=30, derandomize=True, deadline=None, print_blob=True
)
hypothesis.settings.register_profile("dev", max_examples=30, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Docstring examples keep their namespace after they run (doctest clears it by default).

    torch.compile installs helper names in the globals of the functions it compiles and deletes
    them when the compiled code is freed; a cleared doctest namespace turns those deletions into
    "Exception ignored" KeyErrors, which pytest reports as warnings (errors here) in whichever
    test is running then. See NOTE [jit and globals] in funcgrad/_jit.py.
    """
    for item in items:
        if isinstance(item, DoctestItem) and item.runner is not None:
            item.runner.run = functools.partial(item.runner.run, clear_globs=False)  # type: ignore[method-assign]
