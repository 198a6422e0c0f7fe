"""The public API: every exported name is documented with a runnable example and typed."""

from __future__ import annotations

import inspect
import types
from typing import Any

import pytest

import funcgrad as fg

MODULES = [
    fg, fg.tree, fg.testing, fg.optim, fg.random, fg.nn, fg.nn.init, fg.io, fg.data, fg.lax,
    fg.debug, fg.distributed,
]  # fmt: skip


def public_names(*, functions_only: bool = False) -> list[tuple[str, Any]]:
    names = []
    for module in MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            constant = name.isupper() and not callable(obj)  # NAMESPACE, not MLP
            if isinstance(obj, types.ModuleType) or name.startswith("__") or constant:
                continue
            if functions_only and not inspect.isfunction(obj):
                continue
            names.append((f"{module.__name__}.{name}", obj))
    return names


FUNCTIONS = public_names(functions_only=True)
CLASSES = [(n, obj) for n, obj in public_names() if inspect.isclass(obj)]


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


@pytest.mark.parametrize(("name", "obj"), FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_public_name_has_a_docstring_with_an_example(name: str, obj: Any) -> None:
    """Each public function says what it does and shows it (the example runs under doctest)."""
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    assert ">>>" in doc, f"{name}'s docstring has no runnable example"


@pytest.mark.parametrize(("name", "obj"), CLASSES, ids=[n for n, _ in CLASSES])
def test_public_class_has_a_docstring(name: str, obj: Any) -> None:
    """State NamedTuples and other classes say what they hold."""
    doc = obj.__doc__
    assert doc, f"{name} has no docstring"
    assert not doc.startswith(f"{obj.__name__}("), f"{name} has no docstring of its own"


@pytest.mark.parametrize(("name", "obj"), FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_public_function_is_fully_annotated(name: str, obj: Any) -> None:
    """Every parameter and the return value carry type hints."""
    signature = inspect.signature(obj)
    for param in signature.parameters.values():
        assert param.annotation is not inspect.Parameter.empty, f"{name}({param.name}) untyped"
    assert signature.return_annotation is not inspect.Signature.empty, f"{name} return untyped"


def test_version() -> None:
    assert isinstance(fg.__version__, str)
    assert fg.__version__.count(".") >= 2
