"""Tests for the documentation in ``docs/``: every code example runs, every public name is documented.

- Each page's code blocks run in order in one namespace per page: ```pycon blocks as doctests
  (their printed output is checked), ```python blocks with ``exec``. A ```python block whose
  first line is ``# not run: <reason>`` is skipped, and must give the reason.
- The API coverage check of ``docs/_ext/funcgrad_docs.py`` (the same one that fails the Sphinx
  build) runs here without building: every name in the ``__all__`` of ``funcgrad`` and of each
  public submodule has an autodoc entry in ``docs/api/*.md``, and every entry names a real object.

Building the HTML (``nox -s docs``) is not part of this module: it takes a minute.
"""

from __future__ import annotations

import doctest
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_spec = importlib.util.spec_from_file_location("funcgrad_docs", DOCS / "_ext" / "funcgrad_docs.py")
assert _spec is not None
assert _spec.loader is not None
funcgrad_docs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("funcgrad_docs", funcgrad_docs)
_spec.loader.exec_module(funcgrad_docs)

PAGES = sorted(p for p in DOCS.glob("*.md") if p.name != "README.md")
RUN_LANGUAGES = {"pycon", "python"}
KNOWN_LANGUAGES = RUN_LANGUAGES | {
    "text",
    "bash",
    "console",
    "toml",
    "{toctree}",
    "{eval-rst}",
    "{include}",
}
_FENCE = re.compile(
    r"^(?P<indent> *)(?P<fence>`{3,})(?P<info>[^`\n]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)\s*$",
    re.M | re.S,
)
_SKIP = re.compile(r"^# not run: \S")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# Namespaces stay alive for the whole session: torch.compile deletes helper names from the
# globals of the functions it compiled when their code is freed (NOTE [jit and globals]).
_NAMESPACES: list[dict[str, Any]] = []


def code_blocks(path: Path) -> list[tuple[int, str, str]]:
    """``(line, language, code)`` of every fenced block of a page, in order."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        lang = m["info"].strip().split(" ")[0] if m["info"].strip() else ""
        out.append((line, lang, m["body"]))
    return out


def run_page(path: Path) -> None:
    """Runs the page's ```pycon blocks as doctests and its ```python blocks with exec."""
    ns: dict[str, Any] = {"__name__": f"docs_{path.stem}"}
    _NAMESPACES.append(ns)
    parser = doctest.DocTestParser()
    for line, lang, code in code_blocks(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        if lang == "pycon":
            test = parser.get_doctest(code, ns, where, str(path), line)
            test.globs = ns  # get_doctest copies the namespace; the page shares one
            runner = doctest.DocTestRunner(optionflags=FLAGS)
            runner.run(test, clear_globs=False)
            if runner.failures:
                pytest.fail(f"{where}: {runner.failures} doctest failure(s); see the output above")
        elif lang == "python":
            if _SKIP.match(code):
                continue
            exec(compile(code, where, "exec"), ns)


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_examples_run(page: Path) -> None:
    """Every executable code block of the page runs, and doctest outputs match."""
    run_page(page)


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_code_blocks_are_known(page: Path) -> None:
    """Every block declares a language this module knows whether to run; skips give a reason."""
    for line, lang, code in code_blocks(page):
        assert lang in KNOWN_LANGUAGES, f"{page.name}:{line}: unknown code block language {lang!r}"
        if lang == "python" and code.startswith("# not run"):
            assert _SKIP.match(code), f"{page.name}:{line}: '# not run: <reason>' needs a reason"
        if lang == "python":
            assert ">>>" not in code, f"{page.name}:{line}: a doctest belongs in a pycon block"


def test_every_page_runs_something_or_is_reference() -> None:
    """The guides have runnable examples (a page without code must be a pure reference)."""
    without = {
        p.stem for p in PAGES if not any(lang in RUN_LANGUAGES for _, lang, _ in code_blocks(p))
    }
    assert without <= {"performance", "examples"}, without


def test_api_coverage() -> None:
    """Every public name (``__all__`` of funcgrad and its public submodules) has an API entry."""
    documented = funcgrad_docs.documented_names()
    missing = funcgrad_docs.missing_names(documented)
    assert not missing, f"public names missing from docs/api/*.md: {missing}"


def test_api_entries_exist() -> None:
    """Every autodoc entry of the API pages names an object that exists (no stale names)."""
    documented = funcgrad_docs.documented_names()
    stale = sorted(n for n in documented if not funcgrad_docs.exists(n))
    assert not stale, f"docs/api entries for names that do not exist: {stale}"


def test_coverage_check_catches_a_missing_name() -> None:
    """The check reports a public name that has no entry (so it cannot pass vacuously)."""
    documented = funcgrad_docs.documented_names()
    documented.pop("funcgrad.grad")
    documented.pop("funcgrad.optim.adam")
    assert funcgrad_docs.missing_names(documented) == ["funcgrad.grad", "funcgrad.optim.adam"]


def test_public_names_include_nested_submodules() -> None:
    """The walk reaches modules re-exported inside modules (nn.init, data.datasets)."""
    names = funcgrad_docs.public_names()
    assert names["funcgrad.nn.init"] == "module"
    assert names["funcgrad.nn.init.xavier_uniform"] == "other"
    assert names["funcgrad.data.datasets.digits"] == "other"
    assert names["funcgrad.optim.GradientTransformation"] == "class"


def test_resolve_reports_missing_attributes() -> None:
    """``resolve`` names the module and the attribute it could not find."""
    with pytest.raises(ImportError, match=r"funcgrad.optim has no 'not_an_optimizer'"):
        funcgrad_docs.resolve("funcgrad.optim.not_an_optimizer")
