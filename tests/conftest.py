"""Test configuration: hypothesis profiles, float64 JAX on the CPU."""

from __future__ import annotations

import os

import hypothesis

# "ci" is deterministic (derandomized, no deadline: these machines are shared and noisy);
# "dev" explores new examples on every run. nox selects "ci" unless HYPOTHESIS_PROFILE is set.
hypothesis.settings.register_profile(
    "ci", max_examples=30, derandomize=True, deadline=None, print_blob=True
)
hypothesis.settings.register_profile("dev", max_examples=30, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

os.environ.setdefault("JAX_PLATFORMS", "cpu")
