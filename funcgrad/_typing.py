"""Type aliases shared across funcgrad.

A *pytree* is any nesting of tuples, lists, dicts, NamedTuples, ``None`` and registered nodes
(see :func:`funcgrad.tree.register_dataclass`) whose leaves are tensors or other values. Python's
type system cannot express the recursion usefully, so these aliases are documentation: they say
what a function expects without pretending to check it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import torch

__all__ = ["ArgNums", "Array", "AxisSpec", "PyTree", "PyTreeDef"]

#: A tensor leaf.
Array: TypeAlias = torch.Tensor

#: Any pytree. Leaves are usually :class:`torch.Tensor`.
PyTree: TypeAlias = Any

#: The structure of a pytree (an ``optree.PyTreeSpec``).
PyTreeDef: TypeAlias = Any

#: ``argnums`` of the differentiation transforms: one position or a tuple of them.
ArgNums: TypeAlias = int | Sequence[int]

#: ``in_axes``/``out_axes`` of :func:`funcgrad.vmap`: a pytree prefix of ints and ``None``.
AxisSpec: TypeAlias = Any

#: A function of pytrees.
Fun: TypeAlias = Callable[..., Any]
