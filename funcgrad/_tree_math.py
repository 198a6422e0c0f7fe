"""Tree arithmetic and stacking: the tensor-leaf helpers of :mod:`funcgrad.tree`.

Private: every function here is re-exported by :mod:`funcgrad.tree` and documented there
(``funcgrad.tree.add is funcgrad._tree_math.add``). Split out of ``tree.py`` to keep modules
under the project's size guideline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optree
import torch

from ._typing import PyTree, PyTreeDef
from .tree import NAMESPACE, _same_structure, flatten, unflatten

__all__: list[str] = []


# --------------------------------------------------------------------------------------------
# Tree math
# --------------------------------------------------------------------------------------------


def _tensor_leaves(name: str, tree: PyTree) -> tuple[list[torch.Tensor], PyTreeDef]:
    paths, leaves_, treedef = optree.tree_flatten_with_accessor(tree, namespace=NAMESPACE)
    for path, x in zip(paths, leaves_):
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"funcgrad.tree.{name}: expected every leaf to be a torch.Tensor, but the leaf "
                f"at {path.codify('tree')} is {type(x).__name__} ({x!r}). Convert it with "
                "torch.as_tensor or move non-tensor values out of the tree (tree.partition)."
            )
    return leaves_, treedef


def _zip_tensor_leaves(
    name: str, a: PyTree, b: PyTree
) -> tuple[list[torch.Tensor], list[torch.Tensor], PyTreeDef]:
    la, ta = _tensor_leaves(name, a)
    lb, tb = _tensor_leaves(name, b)
    if ta != tb:
        raise ValueError(
            f"funcgrad.tree.{name}: the two trees must have the same structure, got {ta} and {tb}."
        )
    return la, lb, ta


def add(a: PyTree, b: PyTree) -> PyTree:
    """Leafwise ``a + b``.

    >>> import torch
    >>> add({"x": torch.tensor(1.0)}, {"x": torch.tensor(2.0)})
    {'x': tensor(3.)}
    """
    la, lb, treedef = _zip_tensor_leaves("add", a, b)
    return unflatten(treedef, [x + y for x, y in zip(la, lb)])


def sub(a: PyTree, b: PyTree) -> PyTree:
    """Leafwise ``a - b``.

    >>> import torch
    >>> sub({"x": torch.tensor(1.0)}, {"x": torch.tensor(2.0)})
    {'x': tensor(-1.)}
    """
    la, lb, treedef = _zip_tensor_leaves("sub", a, b)
    return unflatten(treedef, [x - y for x, y in zip(la, lb)])


def scale(scalar: float | torch.Tensor, tree: PyTree) -> PyTree:
    """Multiplies every leaf by ``scalar`` (a number or a 0-d tensor).

    >>> import torch
    >>> scale(0.5, [torch.tensor([2.0, 4.0])])
    [tensor([1., 2.])]
    """
    leaves_, treedef = _tensor_leaves("scale", tree)
    return unflatten(treedef, [scalar * x for x in leaves_])


def dot(a: PyTree, b: PyTree) -> torch.Tensor:
    """The inner product ``sum_i <a_i, b_i>`` over all leaves, as a 0-d tensor.

    Complex leaves of ``a`` are conjugated first (like :func:`torch.vdot`).

    >>> import torch
    >>> dot({"x": torch.tensor([1.0, 2.0])}, {"x": torch.tensor([3.0, 4.0])})
    tensor(11.)
    """
    la, lb, _ = _zip_tensor_leaves("dot", a, b)
    for i, (x, y) in enumerate(zip(la, lb)):
        if x.shape != y.shape:
            path = optree.tree_accessors(a, namespace=NAMESPACE)[i].codify("tree")
            raise ValueError(
                f"funcgrad.tree.dot: the leaves at {path} have different shapes, "
                f"{tuple(x.shape)} and {tuple(y.shape)}; dot needs matching shapes."
            )
    terms = [(x.conj() * y).sum() for x, y in zip(la, lb)]
    if not terms:
        return torch.zeros(())
    return sum(terms[1:], terms[0])


def norm(tree: PyTree, ord: float = 2, *, squared: bool = False) -> torch.Tensor:
    """The norm of all leaves taken together as one vector, as a 0-d tensor.

    Args:
        tree: a pytree of tensors.
        ord: ``1``, ``2`` or ``math.inf``.
        squared: return the squared norm (only with ``ord=2``).

    >>> import torch
    >>> norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])})
    tensor(5.)
    >>> norm({"a": torch.tensor([3.0]), "b": torch.tensor([-4.0])}, ord=math.inf)
    tensor(4.)
    """
    leaves_, _ = _tensor_leaves("norm", tree)
    if ord not in (1, 2, math.inf):
        raise ValueError(f"funcgrad.tree.norm: ord must be 1, 2 or math.inf, got {ord!r}.")
    if squared and ord != 2:
        raise ValueError(f"funcgrad.tree.norm: squared=True needs ord=2, got ord={ord!r}.")
    # Integer leaves are measured in the default floating dtype; empty leaves add nothing.
    leaves_ = [
        x if x.is_floating_point() or x.is_complex() else x.to(torch.get_default_dtype())
        for x in leaves_
        if x.numel() > 0
    ]
    if not leaves_:
        return torch.zeros(())
    if ord == 2:
        total = torch.stack([torch.linalg.vector_norm(x) ** 2 for x in leaves_]).sum()
        return total if squared else total.sqrt()
    parts = torch.stack([torch.linalg.vector_norm(x, ord) for x in leaves_])
    return parts.sum() if ord == 1 else parts.max()


def zeros_like(tree: PyTree, dtype: torch.dtype | None = None) -> PyTree:
    """A tree of zeros with the structure, shapes, devices (and dtypes) of ``tree``.

    >>> import torch
    >>> zeros_like({"w": torch.ones(2)})
    {'w': tensor([0., 0.])}
    """
    leaves_, treedef = _tensor_leaves("zeros_like", tree)
    return unflatten(treedef, [torch.zeros_like(x, dtype=dtype) for x in leaves_])


def ones_like(tree: PyTree, dtype: torch.dtype | None = None) -> PyTree:
    """A tree of ones with the structure, shapes, devices (and dtypes) of ``tree``.

    >>> import torch
    >>> ones_like([torch.zeros(2, dtype=torch.int64)])
    [tensor([1, 1])]
    """
    leaves_, treedef = _tensor_leaves("ones_like", tree)
    return unflatten(treedef, [torch.ones_like(x, dtype=dtype) for x in leaves_])


def allclose(a: PyTree, b: PyTree, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
    """Whether two trees have one structure and leafwise-close values (:func:`torch.allclose`).

    Shapes and dtypes must match; non-tensor leaves must be equal.

    >>> import torch
    >>> allclose({"x": torch.tensor(1.0)}, {"x": torch.tensor(1.0 + 1e-9)})
    True
    >>> allclose({"x": torch.tensor(1.0)}, {"y": torch.tensor(1.0)})
    False
    """
    la, ta = flatten(a)
    lb, tb = flatten(b)
    if ta != tb:
        return False
    return all(_leaf_close(x, y, rtol, atol) for x, y in zip(la, lb))


def _leaf_close(x: Any, y: Any, rtol: float, atol: float) -> bool:
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return (
            x.shape == y.shape
            and x.dtype == y.dtype
            and bool(torch.allclose(x, y.to(x.device), rtol=rtol, atol=atol))
        )
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return False
    return bool(x == y)


def equal(a: PyTree, b: PyTree) -> bool:
    """Whether two trees have one structure and exactly equal leaves (shape, dtype and values).

    >>> import torch
    >>> equal([torch.tensor([1, 2])], [torch.tensor([1, 2])])
    True
    >>> equal([torch.tensor([1, 2])], [torch.tensor([1.0, 2.0])])
    False
    """
    la, ta = flatten(a)
    lb, tb = flatten(b)
    if ta != tb:
        return False
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.dtype != y.dtype or not torch.equal(x, y.to(x.device)):
                return False
        elif isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor) or not bool(x == y):
            return False
    return True


# --------------------------------------------------------------------------------------------
# Stacking (ensembles)
# --------------------------------------------------------------------------------------------


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stacks trees of one structure into one tree whose leaves gain a leading axis.

    Leaf ``i`` of the result is ``torch.stack([leaf i of each tree])``. With :func:`funcgrad.vmap`
    over that axis, the stacked tree is an ensemble: one call runs every member. The inverse is
    :func:`unstack`.

    Args:
        trees: a non-empty sequence of trees with one structure and tensor leaves of matching
            shapes and dtypes.

    >>> import torch
    >>> stacked = stack([{"w": torch.zeros(2)}, {"w": torch.ones(2)}])
    >>> stacked
    {'w': tensor([[0., 0.],
            [1., 1.]])}
    >>> unstack(stacked)
    [{'w': tensor([0., 0.])}, {'w': tensor([1., 1.])}]
    """
    if isinstance(trees, (str, bytes)) or not isinstance(trees, Sequence) or not trees:
        raise ValueError(
            "funcgrad.tree.stack: expected a non-empty sequence (list or tuple) of trees, got "
            f"{trees!r}."
        )
    first, treedef = _tensor_leaves("stack", trees[0])
    columns = [[x] for x in first]
    for i, tree in enumerate(trees[1:], 1):
        leaves_, other = _tensor_leaves("stack", tree)
        if not _same_structure(other, treedef):
            raise ValueError(
                f"funcgrad.tree.stack: tree {i} has structure {other}, but tree 0 has "
                f"{treedef}; stack needs trees of one structure."
            )
        for j, (column, x) in enumerate(zip(columns, leaves_)):
            if x.shape != column[0].shape or x.dtype != column[0].dtype:
                path = optree.tree_accessors(trees[0], namespace=NAMESPACE)[j].codify("tree")
                raise ValueError(
                    f"funcgrad.tree.stack: the leaf at {path} is a {column[0].dtype} tensor of "
                    f"shape {tuple(column[0].shape)} in tree 0 but a {x.dtype} tensor of shape "
                    f"{tuple(x.shape)} in tree {i}; stacked leaves need one shape and dtype."
                )
            column.append(x)
    return unflatten(treedef, [torch.stack(column) for column in columns])


def unstack(tree: PyTree) -> list[PyTree]:
    """Splits a tree along the leading axis of its leaves: the inverse of :func:`stack`.

    Every leaf must have the same leading size ``n``; the result is a list of ``n`` trees.

    >>> import torch
    >>> unstack({"a": torch.tensor([1.0, 2.0]), "b": torch.zeros(2, 3)})
    [{'a': tensor(1.), 'b': tensor([0., 0., 0.])}, {'a': tensor(2.), 'b': tensor([0., 0., 0.])}]
    """
    leaves_, treedef = _tensor_leaves("unstack", tree)
    if not leaves_:
        raise ValueError(
            "funcgrad.tree.unstack: the tree has no leaves, so the number of trees to return "
            "is unknown."
        )
    n = leaves_[0].shape[0] if leaves_[0].dim() > 0 else None
    for i, x in enumerate(leaves_):
        if x.dim() == 0 or x.shape[0] != n:
            accessors = optree.tree_accessors(tree, namespace=NAMESPACE)
            sizes = ", ".join(
                f"{a.codify('tree')}: {tuple(y.shape)}" for a, y in zip(accessors, leaves_)
            )
            raise ValueError(
                "funcgrad.tree.unstack: every leaf needs the same leading axis size, but the "
                f"leaf at {accessors[i].codify('tree')} does not match (shapes: {sizes})."
            )
    parts = [x.unbind(0) for x in leaves_]
    return [unflatten(treedef, [p[i] for p in parts]) for i in range(n or 0)]
