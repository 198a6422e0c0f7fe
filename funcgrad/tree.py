"""Pytrees: nested containers of tensors, built on `optree <https://github.com/metaopt/optree>`_.

Every function here works in optree's ``"funcgrad"`` namespace, so a node type registered with
:func:`register_dataclass` is understood by every funcgrad transform and by every function below.
Tuples, lists, dicts (flattened in sorted key order), ``OrderedDict``, ``defaultdict``, ``deque``,
NamedTuples and ``None`` (an empty node, never a leaf) are built in.

>>> import torch
>>> import funcgrad as fg
>>> params = {"w": torch.ones(2), "b": torch.zeros(())}
>>> fg.tree.map(lambda x: x + 1, params)
{'w': tensor([2., 2.]), 'b': tensor(1.)}
>>> fg.tree.leaves(params)
[tensor(0.), tensor([1., 1.])]
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import optree
import torch

from ._typing import PyTree, PyTreeDef

__all__ = [
    "NAMESPACE",
    "add",
    "allclose",
    "combine",
    "dot",
    "equal",
    "flatten",
    "flatten_with_path",
    "leaves",
    "map",
    "map_with_path",
    "norm",
    "ones_like",
    "partition",
    "reduce",
    "register_dataclass",
    "scale",
    "stack",
    "structure",
    "sub",
    "transpose",
    "unflatten",
    "unstack",
    "zeros_like",
]

#: The optree namespace that funcgrad registers its node types in.
NAMESPACE = "funcgrad"

# NOTE [treedef equality under torch.compile]
# On torch 2.13 dynamo traces ``treedef_a == treedef_b``. Older dynamo (2.11 seen on a CUDA
# machine) replaces optree's PyTreeSpec with a Python polyfill whose ``__eq__`` compares the
# node's function objects and fails ("Polyfill handler <method-wrapper '__eq__' of function
# object> does not have a traceable function"), which broke every jitted optimizer step there.
# While such a dynamo traces, structures are compared by what it can trace: the number of nodes,
# the root's type and every leaf's key path. That tells apart every pair of structures a
# transform meets in practice (different keys, lengths or nesting); outside tracing, and on
# torch >= 2.13, the comparison is optree's exact one.
_TREEDEF_EQ_TRACEABLE = torch.torch_version.TorchVersion(torch.__version__) >= "2.13"


def _same_structure(a: PyTreeDef, b: PyTreeDef) -> bool:
    """``a == b`` for two treedefs, also under an older dynamo (NOTE above)."""
    if _TREEDEF_EQ_TRACEABLE or not torch.compiler.is_compiling():
        return bool(a == b)
    return bool(a.num_nodes == b.num_nodes and a.type is b.type and a.paths() == b.paths())


_T = TypeVar("_T")
_MISSING: Any = object()


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------


def flatten(
    tree: PyTree, is_leaf: Callable[[Any], bool] | None = None
) -> tuple[list[Any], PyTreeDef]:
    """Flattens a pytree into its leaves and its structure.

    Args:
        tree: the pytree.
        is_leaf: optional predicate; a node for which it returns ``True`` is a leaf.

    Returns:
        ``(leaves, treedef)``; ``unflatten(treedef, leaves)`` rebuilds the tree.

    >>> leaves, treedef = flatten({"b": 2, "a": (1, None)})
    >>> leaves
    [1, 2]
    >>> treedef
    PyTreeSpec({'a': (*, None), 'b': *})
    """
    return optree.tree_flatten(tree, is_leaf, namespace=NAMESPACE)


def unflatten(treedef: PyTreeDef, leaves: Iterable[Any]) -> PyTree:
    """Builds a pytree of structure ``treedef`` from ``leaves`` (the inverse of :func:`flatten`).

    >>> leaves, treedef = flatten([1, (2, 3)])
    >>> unflatten(treedef, [10, 20, 30])
    [10, (20, 30)]
    """
    return optree.tree_unflatten(treedef, leaves)


def leaves(tree: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> list[Any]:
    """Returns the leaves of a pytree, in flattening order.

    >>> leaves({"x": [1, 2], "y": None})
    [1, 2]
    """
    return optree.tree_leaves(tree, is_leaf, namespace=NAMESPACE)


def structure(tree: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> PyTreeDef:
    """Returns the structure (treedef) of a pytree.

    >>> structure((1, {"a": 2})) == structure((3, {"a": 4}))
    True
    """
    return optree.tree_structure(tree, is_leaf, namespace=NAMESPACE)


def flatten_with_path(
    tree: PyTree, is_leaf: Callable[[Any], bool] | None = None
) -> tuple[list[tuple[tuple[Any, ...], Any]], PyTreeDef]:
    """Flattens a pytree into ``(path, leaf)`` pairs and its structure.

    A path is a tuple of keys: dict keys, sequence indices, and field names of registered
    dataclasses (NamedTuple fields are indexed by position).

    >>> pairs, _ = flatten_with_path({"a": [10, 20]})
    >>> pairs
    [(('a', 0), 10), (('a', 1), 20)]
    """
    paths, leaves_, treedef = optree.tree_flatten_with_path(tree, is_leaf, namespace=NAMESPACE)
    return list(zip(paths, leaves_)), treedef


def map(
    f: Callable[..., Any],
    tree: PyTree,
    *rest: PyTree,
    is_leaf: Callable[[Any], bool] | None = None,
) -> PyTree:
    """Applies ``f`` to every leaf (and the matching leaves of ``rest``), keeping the structure.

    Every tree in ``rest`` must have the structure of ``tree``.

    >>> map(lambda x, y: x * y, {"a": 2, "b": 3}, {"a": 10, "b": 100})
    {'a': 20, 'b': 300}
    """
    return optree.tree_map(f, tree, *rest, is_leaf=is_leaf, namespace=NAMESPACE)


def map_with_path(
    f: Callable[..., Any],
    tree: PyTree,
    *rest: PyTree,
    is_leaf: Callable[[Any], bool] | None = None,
) -> PyTree:
    """Like :func:`map`, but ``f`` receives the leaf's path first: ``f(path, leaf, *rest_leaves)``.

    >>> map_with_path(lambda path, x: f"{path[0]}={x}", {"lr": 0.1, "wd": 0.0})
    {'lr': 'lr=0.1', 'wd': 'wd=0.0'}
    """
    if torch.compiler.is_compiling():
        return _map_with_path_traced(f, tree, rest, is_leaf)
    return optree.tree_map_with_path(f, tree, *rest, is_leaf=is_leaf, namespace=NAMESPACE)


def _map_with_path_traced(
    f: Callable[..., Any],
    tree: PyTree,
    rest: tuple[PyTree, ...],
    is_leaf: Callable[[Any], bool] | None,
) -> PyTree:
    """:func:`map_with_path` while dynamo traces, one tree level at a time.

    Dynamo (torch 2.13) traces optree.tree_map_with_path into wrong paths: torch's key objects
    (MappingKey('a'), GetAttrKey('x') for a NamedTuple field) instead of optree's entries, and
    below a registered dataclass or an OrderedDict only the last entry. A label function
    comparing keys would then silently choose differently under jit. Unflattening a tree of
    constant leaves (labels) fails there too (dynamo folds optree's rebuild of each node at
    trace time), so the walk rebuilds each node itself (:func:`_rebuild`).
    """

    def walk(path: tuple[Any, ...], node: Any, others: list[Any]) -> Any:
        if optree.tree_is_leaf(node, is_leaf, namespace=NAMESPACE):
            return f(path, node, *others)
        children, metadata, entries, unflatten = optree.tree_flatten_one_level(
            node, is_leaf, namespace=NAMESPACE
        )
        columns = []
        for other in others:
            other_children = []
            if type(other) is type(node):
                other_children = optree.tree_flatten_one_level(other, is_leaf, namespace=NAMESPACE)[
                    0
                ]
            if len(other_children) != len(children):
                raise ValueError(
                    "funcgrad.tree.map_with_path: every tree in rest must have the first "
                    f"tree's structure; at path {path} the first has a {type(node).__name__} "
                    f"with {len(children)} children, another a {type(other).__name__}"
                    + (f" with {len(other_children)}." if type(other) is type(node) else ".")
                )
            columns.append(other_children)
        new = tuple(
            walk((*path, entry), child, [column[i] for column in columns])
            for i, (entry, child) in enumerate(zip(entries, children))
        )
        return _rebuild(node, entries, new, metadata, unflatten)

    return walk((), tree, list(rest))


def _rebuild(
    node: Any, entries: Any, children: tuple[Any, ...], metadata: Any, unflatten: Any
) -> Any:
    """``node``'s type with new children. Built-in containers are built here: dynamo folds
    optree's own rebuild of a dict of constants at trace time and mixes up nodes' metadata."""
    kind = type(node)
    if kind is dict:
        by_key = dict(zip(entries, children))
        return {k: by_key[k] for k in node}
    if kind is collections.OrderedDict:
        by_key = dict(zip(entries, children))
        return collections.OrderedDict((k, by_key[k]) for k in node)
    if kind is collections.defaultdict:
        by_key = dict(zip(entries, children))
        return collections.defaultdict(node.default_factory, {k: by_key[k] for k in node})
    if kind is list:
        return list(children)
    if kind is tuple:
        return children
    if kind is collections.deque:
        return collections.deque(children, maxlen=node.maxlen)
    if isinstance(node, tuple) and hasattr(kind, "_fields"):  # a NamedTuple
        return kind(*children)
    return unflatten(metadata, children)


def reduce(
    f: Callable[[_T, Any], _T],
    tree: PyTree,
    initializer: _T = _MISSING,
    is_leaf: Callable[[Any], bool] | None = None,
) -> _T:
    """Folds ``f`` over the leaves from left to right, like :func:`functools.reduce`.

    >>> import operator
    >>> reduce(operator.add, [1, (2, 3)], 100)
    106
    """
    if initializer is _MISSING:
        return optree.tree_reduce(f, tree, is_leaf=is_leaf, namespace=NAMESPACE)  # type: ignore[no-any-return]
    return optree.tree_reduce(f, tree, initializer, is_leaf=is_leaf, namespace=NAMESPACE)


def transpose(outer_treedef: PyTreeDef, inner_treedef: PyTreeDef, tree: PyTree) -> PyTree:
    """Turns a tree of structure ``outer`` of trees of structure ``inner`` inside out.

    >>> outer = structure([0, 0])
    >>> inner = structure({"a": 0, "b": 0})
    >>> transpose(outer, inner, [{"a": 1, "b": 2}, {"a": 3, "b": 4}])
    {'a': [1, 3], 'b': [2, 4]}
    """
    return optree.tree_transpose(outer_treedef, inner_treedef, tree)


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------


def register_dataclass(
    cls: type[_T] | None = None,
    *,
    data_fields: Sequence[str] | None = None,
    meta_fields: Sequence[str] | None = None,
) -> Any:
    """Registers a dataclass as a pytree node; usable as a decorator.

    Data fields become children (traced, differentiated, mapped); meta fields become part of the
    tree structure (static configuration: sizes, activation names, flags). By default a field is
    data unless it was declared with ``dataclasses.field(metadata={"static": True})``.
    Unflattening sets the fields directly, without calling ``__init__``, so frozen dataclasses
    and custom constructors work.

    Args:
        cls: the dataclass (omit it to use ``register_dataclass(...)`` as a decorator factory).
        data_fields: names of the data fields, overriding the ``static`` metadata. Given
            alone, every other field is a meta field.
        meta_fields: names of the meta fields, overriding the ``static`` metadata. Given
            alone, every other field is a data field.

    >>> import dataclasses, torch
    >>> @register_dataclass
    ... @dataclasses.dataclass
    ... class Affine:
    ...     weight: torch.Tensor
    ...     bias: torch.Tensor
    ...     activation: str = dataclasses.field(default="relu", metadata={"static": True})
    >>> layer = Affine(torch.ones(2), torch.zeros(2))
    >>> leaves(layer)
    [tensor([1., 1.]), tensor([0., 0.])]
    >>> map(lambda x: x + 1, layer).activation
    'relu'
    """
    if cls is None:
        return lambda c: register_dataclass(c, data_fields=data_fields, meta_fields=meta_fields)
    if not dataclasses.is_dataclass(cls) or not isinstance(cls, type):
        raise TypeError(
            f"funcgrad.tree.register_dataclass: expected a dataclass type, got {cls!r}. "
            "Decorate the class with @dataclasses.dataclass below @register_dataclass."
        )
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    if data_fields is None and meta_fields is None:
        meta = tuple(f.name for f in fields if f.metadata.get("static", False))
        data = tuple(f.name for f in fields if not f.metadata.get("static", False))
    else:
        given = tuple(data_fields or ()) + tuple(meta_fields or ())
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(
                f"funcgrad.tree.register_dataclass: {cls.__name__} has no fields {unknown}; "
                f"its fields are {names}."
            )
        # One list given: the other role goes to the remaining fields, in declaration order.
        if meta_fields is None:
            data = tuple(data_fields or ())
            meta = tuple(n for n in names if n not in data)
        elif data_fields is None:
            meta = tuple(meta_fields)
            data = tuple(n for n in names if n not in meta)
        else:
            data, meta = tuple(data_fields), tuple(meta_fields)
        overlap = sorted(set(data) & set(meta))
        if overlap:
            raise ValueError(
                f"funcgrad.tree.register_dataclass: fields {overlap} of {cls.__name__} are listed "
                "as both data_fields and meta_fields; give each field one role."
            )
        missing = [n for n in names if n not in data and n not in meta]
        if missing:
            raise ValueError(
                f"funcgrad.tree.register_dataclass: fields {missing} of {cls.__name__} are in "
                "neither data_fields nor meta_fields; every field needs a role (or pass only "
                "one of the two lists and the other gets the remaining fields)."
            )

    def flatten_fn(obj: Any) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[str, ...]]:
        children = tuple(getattr(obj, n) for n in data)
        metadata = tuple(getattr(obj, n) for n in meta)
        return children, metadata, data

    def unflatten_fn(metadata: tuple[Any, ...], children: Iterable[Any]) -> Any:
        obj = object.__new__(cls)
        for n, v in zip(data, children):
            object.__setattr__(obj, n, v)
        for n, v in zip(meta, metadata):
            object.__setattr__(obj, n, v)
        return obj

    optree.register_pytree_node(
        cls,  # type: ignore[arg-type]
        flatten_fn,
        unflatten_fn,  # type: ignore[arg-type]
        path_entry_type=optree.GetAttrEntry,
        namespace=NAMESPACE,
    )
    _DATACLASSES[cls] = (flatten_fn, data, meta)
    return cls


# Dataclasses registered above: (their flatten function, data fields, meta fields), read by
# jit's fast signature (NOTE [jit's fast key], funcgrad/_jit_key.py).
_DATACLASSES: dict[type, tuple[Callable[[Any], Any], tuple[str, ...], tuple[str, ...]]] = {}


# --------------------------------------------------------------------------------------------
# Splitting and merging
# --------------------------------------------------------------------------------------------


def partition(
    tree: PyTree,
    predicate: Callable[[Any], bool],
    is_leaf: Callable[[Any], bool] | None = None,
) -> tuple[PyTree, PyTree]:
    """Splits a tree in two by a predicate on its leaves, leaving ``None`` holes.

    The first tree keeps the leaves where ``predicate(leaf)`` is true, the second keeps the
    others; :func:`combine` merges them back. Use it to differentiate only part of a model.

    >>> import torch
    >>> tree = {"w": torch.ones(2), "n": 3}
    >>> tensors, others = partition(tree, lambda x: isinstance(x, torch.Tensor))
    >>> tensors, others
    ({'w': tensor([1., 1.]), 'n': None}, {'w': None, 'n': 3})
    >>> combine(tensors, others)
    {'w': tensor([1., 1.]), 'n': 3}
    """
    leaves_, treedef = flatten(tree, is_leaf)
    mask = [bool(predicate(x)) for x in leaves_]
    first = unflatten(treedef, [x if m else None for x, m in zip(leaves_, mask)])
    second = unflatten(treedef, [None if m else x for x, m in zip(leaves_, mask)])
    return first, second


def _is_none(x: Any) -> bool:
    return x is None


def combine(*trees: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> PyTree:
    """Merges trees of one structure with ``None`` holes: each leaf is the first non-``None``.

    The inverse of :func:`partition`.

    >>> combine({"a": None, "b": 2}, {"a": 1, "b": None})
    {'a': 1, 'b': 2}
    """
    if not trees:
        raise TypeError("funcgrad.tree.combine: expected at least one tree, got none.")

    def leaf_or_none(x: Any) -> bool:
        return x is None or (is_leaf is not None and is_leaf(x))

    def first_not_none(*xs: Any) -> Any:
        return next((x for x in xs if x is not None), None)

    try:
        return optree.tree_map(first_not_none, *trees, is_leaf=leaf_or_none, namespace=NAMESPACE)
    except ValueError as e:
        raise ValueError(
            "funcgrad.tree.combine: the trees must have one structure once None holes are "
            f"counted as leaves, but they differ: {e}"
        ) from None


# Tree math and stacking live in _tree_math.py (module size) and are re-exported here. That
# module imports NAMESPACE, flatten, unflatten and _same_structure from this one, so the import
# stands at the bottom, once they exist: this module is always imported first (only it imports
# _tree_math), and _tree_math then finds it complete.
from ._tree_math import add as add  # noqa: E402
from ._tree_math import allclose as allclose  # noqa: E402
from ._tree_math import dot as dot  # noqa: E402
from ._tree_math import equal as equal  # noqa: E402
from ._tree_math import norm as norm  # noqa: E402
from ._tree_math import ones_like as ones_like  # noqa: E402
from ._tree_math import scale as scale  # noqa: E402
from ._tree_math import stack as stack  # noqa: E402
from ._tree_math import sub as sub  # noqa: E402
from ._tree_math import unstack as unstack  # noqa: E402
from ._tree_math import zeros_like as zeros_like  # noqa: E402
