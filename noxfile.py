"""Sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``bench``, ``examples``, ``docs``."""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
CONSTRAINTS = ("-c", str(ROOT / ".ci" / "constraints.txt"))

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """Runs the test suite, docstring examples included, with a deterministic hypothesis profile."""
    session.install(*CONSTRAINTS, "-e", ".[test,examples]")  # the examples' smoke tests
    env = {
        "HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci"),
        "JAX_PLATFORMS": "cpu",
        # JAX is the numerics oracle: in this session a missing JAX is a failure, not a skip.
        "FUNCGRAD_REQUIRE_JAX": "1",
        # The inductor test of funcgrad.random's bit-exactness (a cold compile takes ~40 s).
        "FUNCGRAD_INDUCTOR_TESTS": "1",
    }
    session.run("pytest", "funcgrad", "tests", *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*CONSTRAINTS, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy (strict) on the package."""
    session.install(*CONSTRAINTS, "-e", ".", "mypy", "numpy")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Runs every benchmark script; each prints a ratio table (see benchmarks/RESULTS.md)."""
    session.install(*CONSTRAINTS, "-e", ".[test]")
    env = {"JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    scripts = session.posargs or sorted(
        str(p) for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_")
    )
    for script in scripts:
        session.run("python", script, env=env)


@nox.session
def examples(session: nox.Session) -> None:
    """Runs every example script in its default configuration (outputs under runs/)."""
    session.install(*CONSTRAINTS, "-e", ".[examples]")
    scripts = session.posargs or sorted(
        str(p) for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_")
    )
    for script in scripts:
        session.run("python", script)


@nox.session
def docs(session: nox.Session) -> None:
    """Builds the documentation site into docs/_build/html (warnings are errors; offline).

    Fails when a public name has no API entry (docs/_ext/funcgrad_docs.py). The code examples
    of the pages run in the tests session (tests/test_docs.py), not here.
    """
    session.install(*CONSTRAINTS, "-e", ".[docs]")
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        *session.posargs,
        env={"JAX_PLATFORMS": "cpu"},
    )
