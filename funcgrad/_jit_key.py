"""The keys of :func:`funcgrad.jit`'s cache: the full key's leaf part (NOTE [jit's cache],
in _jit.py) and the fast signature (NOTE [jit's fast key]).

Private, used by ``_jit.py`` only.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import optree
import torch

from .tree import _DATACLASSES, NAMESPACE

__all__: list[str] = []

# NOTE [jit's fast key]
# jit's cache key (NOTE [jit's cache]) flattens the arguments with optree and reads every tensor
# leaf's type and requires_grad flag, ~0.25 us a leaf. An Adam step over a transformer's 196
# parameters has ~790 tensor arguments: the key took ~0.2 ms of each call with warm caches and
# ~0.4 ms right after the step's kernels had streamed ~700 MB through them (2-core CPU), 3-4% of
# a step that torch's fused Adam does in about the same time. Such calls repeat a signature of
# plain containers holding many tensors that do not require grad, so a second dict maps a
# cheaper signature straight to the entry the full key found for it:
#
# - the walk enters exact lists, tuples and dicts, None, namedtuples that optree flattens as
#   namedtuples in funcgrad's namespace, and dataclasses registered with
#   funcgrad.tree.register_dataclass (their meta fields enter the signature as they are, as
#   they enter the tree structure). A node whose children are all plain tensors (type exactly
#   torch.Tensor) is one C-level type check for all of them, and their requires_grad flags one
#   C call (torch._C._any_requires_grad) at the end;
# - int, bool, str and float leaves enter with their type and value (floats by their bits), as
#   in the full key;
# - anything else (a Parameter or another tensor subclass, another registered node, an
#   OrderedDict, a tensor that requires grad, ...) gives up: the full key.
#
# The fast signature is stricter than the full key: equal fast signatures mean the same
# containers in the same order (dict keys with their types, in insertion order where optree
# sorts them), the same non-tensor leaves and all tensors plain and not requiring grad, so equal
# full keys. A fast signature is stored only after the full key found or made its entry, and
# only the full path makes entries: donation checks, compile counts and cache sizes are as
# before.
#
# The walk is Python: it pays only where it visits few nodes for many tensors. A node visited
# one by one costs ~1 us against optree's ~0.3 (a small funcgrad.nn model's step: 35 against
# 24 us). So each jitted function walks until a call takes the full key and finds the walk gave
# up or visited more than half a node per leaf; from then on (until clear_cache) it takes the
# full key alone, as every call did before. Measured (2-core CPU, ~790 tensors in lists or
# dicts): the key 193 -> 48 us (lists) and 229 -> 72 us (dicts) with warm caches; the jitted
# Adam step over 4-float leaves 417 -> 271 us a call, and on the 24.8M-parameter model 1.006x
# -> 0.980x torch's fused step (benchmarks/RESULTS.md, seventh session).

_TENSOR = object()  # stands for a tensor leaf in a cache key
_TENSOR_RG = object()  # a tensor leaf that requires grad
_TENSOR_TYPES = frozenset({torch.Tensor, torch.nn.Parameter})
_requires_grad = operator.attrgetter("requires_grad")


def leaves_key(leaves: list[Any]) -> Any:
    """The full cache key's part for the leaves: their types and requires_grad when all are
    tensors (C-level maps, no Python call per leaf: a step can have ~800 tensor leaves), each
    leaf's :func:`_leaf_key` otherwise."""
    types = tuple(map(type, leaves))
    if _TENSOR_TYPES.issuperset(types):
        return (_TENSOR, types, tuple(map(_requires_grad, leaves)))
    return tuple(map(_leaf_key, leaves))


def _leaf_key(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return _TENSOR_RG if x.requires_grad else _TENSOR
    if type(x) is float:  # nan != nan, and -0.0 == 0.0: compare the bits
        return (float, x.hex())
    return (type(x), x)


_Tensor = torch.Tensor
_PLAIN = {torch.Tensor}
_NONE = object()  # None's part of a signature
_any_requires_grad: Callable[[list[Any]], bool] = getattr(
    torch._C, "_any_requires_grad", lambda xs: any(map(_requires_grad, xs))
)
_registered = optree.register_pytree_node.get
_NAMEDTUPLE = optree.PyTreeKind.NAMEDTUPLE


class _GiveUp(Exception):
    """Raised inside the walk: this tree needs the full key."""


def fast_signature(tree: Any) -> tuple[Any, int]:
    """The fast signature of ``tree`` (NOTE [jit's fast key]), or None where it does not apply,
    and how many nodes the walk visited one by one (what it cost)."""
    tensors: list[Any] = []  # lists of plain tensors, their requires_grad read at the end
    singles: list[Any] = []  # plain tensors met one by one
    visited = [0]
    try:
        signature = _walk(tree, tensors, singles, visited)
    except _GiveUp:
        return None, visited[0]
    if singles:
        tensors.append(singles)
    for xs in tensors:
        if _any_requires_grad(xs):
            return None, visited[0]
    return signature, visited[0]


def _children(values: list[Any], tensors: list[Any], singles: list[Any], visited: list[int]) -> Any:
    """A node's children: their count when all are plain tensors (one C-level type check for
    the lot, and their list kept for the requires_grad check), else each one's signature."""
    if values and set(map(type, values)) == _PLAIN:
        tensors.append(values)
        return len(values)
    return tuple([_walk(v, tensors, singles, visited) for v in values])


def _walk(x: Any, tensors: list[Any], singles: list[Any], visited: list[int]) -> Any:
    visited[0] += 1
    t = type(x)
    if t is _Tensor:
        singles.append(x)
        return _TENSOR
    if t is list:
        return (list, _children(x, tensors, singles, visited))
    if t is tuple:  # (as a list: torch._C._any_requires_grad reads lists, not tuples)
        return (tuple, _children(list(x), tensors, singles, visited))
    if t is dict:
        keys = tuple(x)
        return (
            dict,
            keys,
            tuple(map(type, keys)),
            _children(list(x.values()), tensors, singles, visited),
        )
    if x is None:
        return _NONE
    if t is int or t is bool or t is str or t is float:
        return _leaf_key(x)  # as in the full key
    entry = _registered(t, namespace=NAMESPACE)
    if entry is not None:
        if entry.kind == _NAMEDTUPLE and issubclass(t, tuple):
            return (t, _children(list(x), tensors, singles, visited))
        dataclass = _DATACLASSES.get(t)
        if dataclass is not None and entry.flatten_func is dataclass[0]:  # still registered so
            _, data, meta = dataclass
            return (
                t,
                tuple([getattr(x, name) for name in meta]),  # the treedef's metadata, as it is
                _children([getattr(x, name) for name in data], tensors, singles, visited),
            )
    raise _GiveUp
