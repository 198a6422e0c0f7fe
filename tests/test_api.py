"""The public API: every exported name is documented with a runnable example and typed."""

from __future__ import annotations

import inspect
import types
from typing import Any

import pytest

import funcgrad as fg

MODULES = [fg, fg.tree, fg.testing]


def public_names() -> list[tuple[str, Any]]:
    names = []
    for module in MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, types.ModuleType) or name.startswith("__") or name.isupper():
                continue
            names.append((f"{module.__name__}.{name}", obj))
    return names


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_lists_exactly_the_public_names(module: types.ModuleType) -> None:
    """__all__ is sorted, names exist, and every public function of the module is listed."""
    assert list(module.__all__) == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name
    defined_here = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_") and inspect.isfunction(obj) and obj.__module__ == module.__name__
    }
    assert defined_here <= set(module.__all__)


@pytest.mark.parametrize(("name", "obj"), public_names(), ids=[n for n, _ in public_names()])
def test_public_name_has_a_docstring_with_an_example(name: str, obj: Any) -> None:
    """Each public function says what it does and shows it (the example runs under doctest)."""
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    assert ">>>" in doc, f"{name}'s docstring has no runnable example"


@pytest.mark.parametrize(("name", "obj"), public_names(), ids=[n for n, _ in public_names()])
def test_public_function_is_fully_annotated(name: str, obj: Any) -> None:
    """Every parameter and the return value carry type hints."""
    signature = inspect.signature(obj)
    for param in signature.parameters.values():
        assert param.annotation is not inspect.Parameter.empty, f"{name}({param.name}) untyped"
    assert signature.return_annotation is not inspect.Signature.empty, f"{name} return untyped"


def test_version() -> None:
    assert isinstance(fg.__version__, str)
    assert fg.__version__.count(".") >= 2
