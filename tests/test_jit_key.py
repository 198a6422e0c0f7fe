"""jit's fast signature (NOTE [jit's fast key]): stricter than the full key, used where it applies.

The law: two argument trees with equal fast signatures have equal full cache keys, so the entry
the fast dict returns is the one the full key would find. And the fast signature applies
exactly to trees of plain containers, plain tensors that do not require grad and plain Python
leaves, so it is not vacuous.
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from typing import Any, NamedTuple

import optree
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad._jit import Jitted
from funcgrad._jit_key import fast_signature
from funcgrad.testing import assert_trees_allclose


class Pair(NamedTuple):
    a: Any
    b: Any


class Custom(NamedTuple):  # a namedtuple registered with its own flatten: not a plain node
    a: Any
    b: Any


with warnings.catch_warnings():  # optree warns that this overrides namedtuple handling
    warnings.simplefilter("ignore", UserWarning)
    optree.register_pytree_node(
        Custom,
        lambda c: ((c.a, c.b), None, None),
        lambda _, children: Custom(*children),
        namespace=fg.tree.NAMESPACE,
    )


@fg.tree.register_dataclass
@dataclasses.dataclass
class Box:  # a registered dataclass: a plain node (funcgrad.nn's layers are such)
    x: Any
    tag: Any = dataclasses.field(default="a", metadata={"static": True})


@dataclasses.dataclass
class Unregistered:  # a leaf to optree, not a tensor: the full key
    x: Any


_T = torch.zeros(2)
_T_RG = torch.zeros(2, requires_grad=True)
_P = torch.nn.Parameter(torch.zeros(2))
_P_FROZEN = torch.nn.Parameter(torch.zeros(2), requires_grad=False)

# Leaves and whether the fast signature takes them.
_LEAVES: list[tuple[Any, bool]] = [
    (_T, True),
    (torch.ones(3), True),
    (_T_RG, False),
    (_P, False),
    (_P_FROZEN, False),
    (1, True),
    (2, True),
    (True, True),
    (1.0, True),
    (-0.0, True),
    (0.0, True),
    (float("nan"), True),
    ("s", True),
    (None, True),
    (1j, False),
    (torch.float32, False),
]


def _leaf() -> st.SearchStrategy[tuple[Any, bool]]:
    return st.sampled_from(_LEAVES)


def _neighbours(v: Any) -> list[Any]:
    """Leaves a loose signature could confuse with ``v`` (and ones that share its signature)."""
    if type(v) is torch.Tensor and not v.requires_grad:
        return [torch.zeros(5), _T_RG, _P, _P_FROZEN]
    if isinstance(v, torch.Tensor):
        return [_T]
    if v is None:
        return [(), []]
    if isinstance(v, float):
        return [float(v), -v, 0.0, int(v) if v == v else 0, float("nan")]
    if isinstance(v, bool):
        return [int(v), float(v), not v]
    if isinstance(v, int):
        return [bool(v), float(v), v + 1]
    if isinstance(v, str):
        return ["".join([v]), "t"]
    return [1, torch.float64]


def _node(children: st.SearchStrategy[tuple[Any, bool]]) -> st.SearchStrategy[tuple[Any, bool]]:
    def build(kind: str, kids: list[tuple[Any, bool]]) -> tuple[Any, bool]:
        values = [k for k, _ in kids]
        plain = all(p for _, p in kids)
        if kind == "list":
            return values, plain
        if kind == "tuple":
            return tuple(values), plain
        if kind == "dict":
            return {("k", "j", 1, 2)[i]: v for i, v in enumerate(values)}, plain
        if kind == "rdict":  # string keys inserted in reverse order
            return {("k", "j", "i", "h")[i]: v for i, v in reversed(list(enumerate(values)))}, plain
        if kind == "pair":
            return Pair(values[0] if values else None, values[1:]), plain
        if kind == "custom":
            return Custom(values[0] if values else None, values[1:]), False
        if kind == "ordered":
            return collections.OrderedDict(enumerate(values)), False
        if kind == "box":
            return Box(values), plain
        if kind == "tagged":  # the meta field is part of the tree structure
            return Box(values, tag=("a", "b", 1, 1.0, True)[len(values)]), plain
        return Unregistered(values), False

    kinds = st.sampled_from(
        ["list", "tuple", "dict", "rdict", "pair", "custom", "ordered", "box", "tagged", "other"]
    )
    return st.builds(build, kinds, st.lists(children, max_size=4))


_TREES = st.recursive(_leaf(), _node, max_leaves=10)


def _full_key(tree: Any) -> Any:
    return Jitted._key((tree,), {}, (), ())[0]


def _is_plain(tree: Any) -> bool:
    """The reference for where the fast signature applies: walks the tree itself."""
    t = type(tree)
    if t in (list, tuple, Pair):
        return all(map(_is_plain, tree))
    if t is dict:
        return all(map(_is_plain, tree.values()))
    if t is Box:
        return _is_plain(tree.x)
    if t is torch.Tensor:
        return not tree.requires_grad
    return tree is None or t in (int, bool, float, str)


@settings(max_examples=300)
@given(a=_TREES, data=st.data())
def test_equal_fast_signatures_mean_equal_full_keys(a: tuple[Any, bool], data: Any) -> None:
    """Law: fast_signature(x) == fast_signature(y) (neither None) implies equal full keys; and
    the fast signature exists exactly for plain trees. ``y`` is ``x`` with some leaves swapped
    for others, so the pairs are often equal or nearly so (1 and True, 0.0 and -0.0, a tensor
    and a Parameter: the cases a loose signature would confuse)."""
    x, x_plain = a
    leaves, treedef = optree.tree_flatten(x, namespace=fg.tree.NAMESPACE, none_is_leaf=True)
    swapped = [data.draw(st.sampled_from([v, *_neighbours(v)])) for v in leaves]
    y = optree.tree_unflatten(treedef, swapped)
    sx, sy = fast_signature(((x,), {}))[0], fast_signature(((y,), {}))[0]
    assert (sx is not None) == x_plain == _is_plain(x)
    assert (sy is not None) == _is_plain(y)
    if sx is not None and sx == sy:
        assert _full_key(x) == _full_key(y)


@settings(max_examples=200)
@given(a=_TREES)
def test_a_tree_and_its_copy_have_one_fast_signature(a: tuple[Any, bool]) -> None:
    """The fast signature is a function of the signature, not of the objects: a rebuilt tree
    with other tensors of the same kind has the same one (so the fast dict is hit)."""
    x, plain = a
    copy = optree.tree_map(
        lambda v: (
            v.detach().clone().requires_grad_(v.requires_grad) if type(v) is torch.Tensor else v
        ),
        x,
        namespace=fg.tree.NAMESPACE,
        none_is_leaf=True,
    )
    sx = fast_signature(((x,), {}))[0]
    assert sx == fast_signature(((copy,), {}))[0]
    assert (sx is not None) == plain


_NEAR_MISSES = {
    "list or tuple of tensors": ([_T, _T], (_T, _T)),
    "list or tuple": ([1, _T], (1, _T)),
    "lengths": ([_T], [_T, _T]),
    "namedtuple or tuple": (Pair(_T, _T), (_T, _T)),
    "two namedtuples": (Pair(_T, _T), Custom(_T, _T)),
    "dict keys": ({"a": _T}, {"b": _T}),
    "dict or list": ({0: _T}, [_T]),
    "None or empty tuple": (None, ()),
    "int or bool": ([1], [True]),
    "int or float": (1, 1.0),
    "zeros": (0.0, -0.0),
    "nested": ([[_T], _T], [_T, [_T]]),
    "dataclass meta fields": (Box(_T, tag="a"), Box(_T, tag="b")),
    "dataclass or its fields": (Box(_T), (_T,)),
}


@pytest.mark.parametrize("pair", _NEAR_MISSES.values(), ids=list(_NEAR_MISSES))
def test_different_full_keys_never_share_a_fast_signature(pair: tuple[Any, Any]) -> None:
    x, y = pair
    assert _full_key(x) != _full_key(y)
    sx, sy = fast_signature(((x,), {}))[0], fast_signature(((y,), {}))[0]
    assert sx is None or sx != sy


def test_requires_grad_anywhere_takes_the_full_key() -> None:
    for position in range(4):
        leaves = [torch.zeros(2) for _ in range(4)]
        leaves[position] = _T_RG
        assert fast_signature((leaves,))[0] is None
        assert fast_signature((tuple(leaves),))[0] is None
        assert fast_signature(({"a": leaves[:2], "b": leaves[2:]},))[0] is None
    assert fast_signature(([torch.zeros(2)] * 4,))[0] is not None


def _scale(p: dict[str, list[torch.Tensor]], s: torch.Tensor, c: float) -> Any:
    return {k: [x * c for x in v] for k, v in p.items()}, s + 1


def _params(n: int = 8) -> dict[str, list[torch.Tensor]]:
    w = [torch.ones(2, dtype=torch.float64) for _ in range(n)]
    return {"w": w, "b": [torch.zeros(1, dtype=torch.float64) for _ in range(n)]}


def test_a_jitted_step_finds_its_entry_through_the_fast_signature() -> None:
    """Repeated calls with lists of tensors hit the fast dict, with the right values; a changed
    float, grad mode and a tensor requiring grad still make their own signatures, as before."""
    f = fg.jit(_scale, backend="aot_eager")
    p, s = _params(), torch.zeros((), dtype=torch.float64)
    for i in range(3):
        p, s = f(p, s, 2.0)
        assert_trees_allclose(p["w"][3], torch.full((2,), 2.0 ** (i + 1), dtype=torch.float64))
    assert (f.cache_size, len(f._fast), f.compile_count) == (1, 1, 1)
    # The same dict built in another order: another fast signature, the same entry (where
    # dynamo, which guards on the order of the keys itself, compiles again).
    f({"b": p["b"], "w": p["w"]}, s, 2.0)
    assert (f.cache_size, len(f._fast), f.compile_count) == (1, 2, 2)
    f(p, s, 3.0)  # a non-tensor leaf is static: a new signature
    assert (f.cache_size, len(f._fast), f.compile_count) == (2, 3, 3)
    with torch.no_grad():  # grad mode is part of both keys
        f(p, s, 3.0)
    assert (f.cache_size, len(f._fast)) == (3, 4)
    assert f._fast_pays
    f.clear_cache()
    assert (f.cache_size, len(f._fast)) == (0, 0)


def test_the_fast_signature_is_left_off_where_it_does_not_pay() -> None:
    """A tree the walk cannot take (a tensor requiring grad), or one it would walk node by node
    (few tensors per container), turns the fast signature off for that function: the full key
    alone, as before, with the same results."""
    needs_grad = fg.jit(_scale, backend="aot_eager")
    p, s = _params(), torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        needs_grad(p, s.clone().requires_grad_(), 2.0)
    assert not needs_grad._fast_pays
    out, _ = needs_grad(p, s, 2.0)
    assert_trees_allclose(out["w"][0], torch.full((2,), 2.0, dtype=torch.float64))
    assert (needs_grad.cache_size, len(needs_grad._fast)) == (2, 0)

    scattered = fg.jit(_scale, backend="aot_eager")
    p = {f"k{i}": [torch.ones(2, dtype=torch.float64)] for i in range(8)}  # one tensor a list
    out, _ = scattered(p, s, 2.0)
    assert_trees_allclose(out["k5"][0], torch.full((2,), 2.0, dtype=torch.float64))
    assert not scattered._fast_pays
    scattered.clear_cache()
    assert scattered._fast_pays


def test_unhashable_static_arguments_still_get_the_full_message() -> None:
    f = fg.jit(lambda x, n: x * len(n), static_argnums=1, backend="aot_eager")
    with pytest.raises(TypeError, match=r"static argument 1 must be hashable"):
        f(torch.ones(2), [1, 2])
