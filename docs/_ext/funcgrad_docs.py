"""Sphinx extension for funcgrad's documentation: API coverage.

The coverage check fails the build when a public name is missing from the API pages. "Public"
is read from the package itself: every name in ``funcgrad.__all__`` and, recursively, in the
``__all__`` of every public submodule reached from it (``funcgrad.nn.init``,
``funcgrad.data.datasets``, ...). A new function therefore needs no change here: exporting it without an API entry fails the build.

Two views of "documented" are checked:

- :func:`documented_names` reads the autodoc directives (``.. autofunction:: funcgrad.grad`` in an
  ``{eval-rst}`` block, ...) of ``docs/api/*.md`` without building; ``tests/test_docs.py`` uses it (fast).
- During a build, the extension compares the public names with the Python domain's objects
  (what autodoc really produced) and raises an error listing what is missing.

This module imports nothing from Sphinx at module level, so the test can use it without Sphinx.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent

# An autodoc (or plain py domain) directive inside an ```{eval-rst} block: MyST parses the rST
# that autodoc generates as Markdown otherwise.
_DIRECTIVE = re.compile(
    r"^\s*\.\. (?:auto(?:function|class|data|exception|module|attribute|method)"
    r"|py:(?:function|class|data|module|exception|attribute))::\s+(?P<name>[\w.]+)",
    re.MULTILINE,
)


def resolve(dotted: str) -> Any:
    """The object a public dotted name refers to (``funcgrad.data.datasets.digits``).

    Raises:
        ImportError: when no prefix of the name imports or an attribute is missing.
    """
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise ImportError(f"{dotted}: {'.'.join(parts[:i])} has no {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"{dotted}: no module of that name imports")


def exists(dotted: str) -> bool:
    """Whether :func:`resolve` finds ``dotted``."""
    try:
        resolve(dotted)
    except ImportError:
        return False
    return True


def _walk(public: str, module: types.ModuleType, out: dict[str, str]) -> None:
    out[public] = "module"
    names = getattr(module, "__all__", None)
    if names is None:
        raise AttributeError(f"{public} has no __all__: every public module needs one")
    for name in names:
        obj = getattr(module, name)
        full = f"{public}.{name}"
        if isinstance(obj, types.ModuleType):
            if obj.__name__.startswith("funcgrad") and full not in out:
                _walk(full, obj, out)
        else:
            out[full] = "class" if inspect.isclass(obj) else "other"


def public_names() -> dict[str, str]:
    """Every public dotted name, mapped to ``"module"``, ``"class"`` or ``"other"``."""
    out: dict[str, str] = {}
    _walk("funcgrad", importlib.import_module("funcgrad"), out)
    return out


def documented_names(docs: Path = DOCS, exclude: Iterable[str] = ()) -> dict[str, str]:
    """The dotted names named by autodoc/py directives in ``docs/api/*.md``, mapped to the page."""
    skip = set(exclude)
    out: dict[str, str] = {}
    for path in sorted((docs / "api").glob("*.md")):
        page = f"api/{path.stem}"
        if page in skip:
            continue
        for m in _DIRECTIVE.finditer(path.read_text(encoding="utf-8")):
            out.setdefault(m["name"], page)
    return out


def missing_names(documented: Iterable[str]) -> list[str]:
    """The public names absent from ``documented``, sorted."""
    have = set(documented)
    return sorted(n for n in public_names() if n not in have)


# ------------------------------------------------------------------------------------------------
# Sphinx hooks
# ------------------------------------------------------------------------------------------------


def _strip_notes(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Module docstrings end with developer notes (``# NOTE [...]``): not for the user docs."""
    if what != "module":
        return
    for i, line in enumerate(lines):
        if line.lstrip().startswith("# NOTE ["):
            del lines[i:]
            return


def _check_coverage(app: Any, env: Any) -> None:
    """Fails the build when a public name has no entry among the documented objects."""
    from sphinx.errors import ExtensionError
    from sphinx.util import logging

    domain = env.get_domain("py")
    missing = missing_names(set(domain.objects) | set(domain.modules))
    if not missing:
        return
    logger = logging.getLogger(__name__)
    for name in missing:
        logger.error(
            "funcgrad API coverage: the public name %s has no entry in docs/api/*.md (add an "
            "autodoc directive in an {eval-rst} block, e.g. '.. autofunction:: %s')",
            name,
            name,
        )
    # With -W (--fail-on-warning) the errors above already fail the build; without, raise.
    if not getattr(app, "_fail_on_warnings", getattr(app, "warningiserror", False)):
        raise ExtensionError(f"funcgrad API coverage: {len(missing)} public names undocumented")


def setup(app: Any) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", _strip_notes)
    app.connect("env-check-consistency", _check_coverage)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
