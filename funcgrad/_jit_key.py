"""The fast signature of :func:`funcgrad.jit`'s cache (NOTE [jit's fast key]).

Private, used by ``_jit.py`` only.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import optree
import torch

from .tree import NAMESPACE

__all__: list[str] = []

# NOTE [jit's fast key]
# jit's cache key (NOTE [jit's cache]) flattens the arguments with optree and reads every tensor
# leaf's type and requires_grad flag, ~0.25 us a leaf. An Adam step over a transformer's 196
# parameters has ~790 tensor arguments: the key took ~0.2 ms of each call with warm caches and
# ~0.4 ms right after the step's kernels had streamed ~700 MB through them (2-core CPU), 3-4% of
# a step that torch's fused Adam does in about the same time. Most calls repeat a signature of
# plain containers and tensors that do not require grad, so a second dict maps a cheaper
# signature straight to the entry the full key found for it:
#
# - the walk enters exact lists, tuples and dicts, None, and namedtuples that optree flattens as
#   namedtuples in funcgrad's namespace; a list or tuple of plain tensors (type exactly
#   torch.Tensor) is one C-level type check for the whole container, and its requires_grad
#   flags one C call (torch._C._any_requires_grad);
# - int, bool, str and float leaves enter with their type and value (floats by their bits), as
#   in the full key;
# - anything else (a Parameter or another tensor subclass, a registered node such as a
#   dataclass, an OrderedDict, a tensor that requires grad, ...) gives up: that call takes the
#   full key, as every call did before.
#
# The fast signature is stricter than the full key: equal fast signatures mean the same
# containers in the same order (dict keys with their types, in insertion order where optree
# sorts them), the same non-tensor leaves and all tensors plain and not requiring grad, so equal
# full keys. A fast signature is stored only after the full key found or made its entry, and
# only the full path makes entries: donation checks, compile counts and cache sizes are as
# before. The Adam step's key went from 185 to 41 us (warm caches), and its jitted call from
# 1.036x to 0.991x torch's fused step in one interleaved run (benchmarks/RESULTS.md, seventh
# session).

_Tensor = torch.Tensor
_PLAIN = {torch.Tensor}
_NONE = object()  # None's part of a signature
_requires_grad = operator.attrgetter("requires_grad")
_any_requires_grad: Callable[[list[Any]], bool] = getattr(
    torch._C, "_any_requires_grad", lambda xs: any(map(_requires_grad, xs))
)
_registered = optree.register_pytree_node.get
_NAMEDTUPLE = optree.PyTreeKind.NAMEDTUPLE


class _GiveUp(Exception):
    """Raised inside the walk: this tree needs the full key."""


def fast_signature(tree: Any) -> Any:
    """The fast signature of ``tree`` (NOTE [jit's fast key]), or None where it does not apply."""
    tensor_lists: list[Any] = []
    try:
        signature = _walk(tree, tensor_lists)
    except _GiveUp:
        return None
    for xs in tensor_lists:
        if _any_requires_grad(xs):
            return None
    return signature


def _walk(x: Any, tensor_lists: list[Any]) -> Any:
    t = type(x)
    if t is _Tensor:
        tensor_lists.append([x])
        return 0
    if t is list or t is tuple:
        if x and set(map(type, x)) == _PLAIN:  # all plain tensors: one check for the lot
            tensor_lists.append(x if t is list else list(x))  # (the C call reads lists only)
            return (t, len(x))
        return (t, tuple([_walk(y, tensor_lists) for y in x]))
    if t is dict:
        keys = tuple(x)
        return (
            dict,
            keys,
            tuple(map(type, keys)),
            tuple([_walk(y, tensor_lists) for y in x.values()]),
        )
    if x is None:
        return _NONE
    if t is int or t is bool or t is str:
        return (t, x)
    if t is float:  # nan != nan, and -0.0 == 0.0: compare the bits
        return (t, x.hex())
    if issubclass(t, tuple):
        entry = _registered(t, namespace=NAMESPACE)
        if entry is not None and entry.kind == _NAMEDTUPLE:
            return (t, tuple([_walk(y, tensor_lists) for y in x]))
    raise _GiveUp
