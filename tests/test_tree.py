"""Tests for funcgrad.tree: structure, registration, partition/combine and tree math.

References: JAX's tree_util (flattening order, paths, transpose) and optax's tree_utils (tree math)
on the corpus trees JAX understands, and torch on the concatenation of all leaves.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import operator
from typing import Any

import helpers
import pytest
import torch
from helpers import Frozen, Layer, Point
from hypothesis import given
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad.testing import assert_trees_allclose

# --------------------------------------------------------------------------------------------
# Local utilities
# --------------------------------------------------------------------------------------------


def _has_dataclass(tree: Any) -> bool:
    """Whether the tree holds a funcgrad-registered dataclass (which JAX does not know)."""
    return any(
        map(dataclasses.is_dataclass, fg.tree.leaves(tree, is_leaf=dataclasses.is_dataclass))
    )


CORPUS = [pytest.param(x, id=i) for x, i in zip(helpers.corpus(), helpers.CORPUS_IDS)]
JAX_CORPUS = [p for p in CORPUS if not _has_dataclass(p.values[0])]
ORDS = [1, 2, math.inf]


def _get(tree: Any, path: tuple[Any, ...]) -> Any:
    """Follows path keys into a tree: attributes of dataclasses, items of everything else."""
    for key in path:
        tree = getattr(tree, key) if dataclasses.is_dataclass(tree) else tree[key]
    return tree


def _named_path(tree: Any, path: tuple[Any, ...]) -> tuple[Any, ...]:
    """The path with NamedTuple positions replaced by field names (JAX's GetAttrKey)."""
    named = []
    for key in path:
        named.append(tree._fields[key] if hasattr(tree, "_fields") else key)
        tree = _get(tree, (key,))
    return tuple(named)


def _jax_key(k: Any) -> Any:
    for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
        if hasattr(k, attr):
            return getattr(k, attr)
    raise AssertionError(f"unexpected JAX key {k!r}")


def _vec(tree: Any) -> torch.Tensor:
    """All leaves raveled and concatenated: the vector the tree math is defined on."""
    parts = [x.reshape(-1) for x in fg.tree.leaves(tree)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def _like(tree: Any, seed: int) -> Any:
    """A tree of new random tensors with the structure, shapes and dtypes of ``tree``."""
    leaves, treedef = fg.tree.flatten(tree)
    new = [helpers.t(*x.shape, seed=seed + i, dtype=x.dtype) for i, x in enumerate(leaves)]
    return fg.tree.unflatten(treedef, new)


def _optax_tu() -> Any:
    helpers.require_jax()
    return pytest.importorskip("optax.tree_utils")


pairs = st.tuples(helpers.trees(), helpers.seeds).map(lambda p: (p[0], _like(p[0], p[1])))
int_structures = helpers.trees(leaves=st.just(0), max_leaves=4).filter(
    lambda tr: len(fg.tree.leaves(tr)) > 0
)
scalars = st.floats(-3, 3, allow_nan=False)


# --------------------------------------------------------------------------------------------
# Structure: flatten, unflatten, leaves, structure
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tree", CORPUS)
def test_flatten_unflatten_round_trip(tree):
    """unflatten(flatten(t)) rebuilds t; leaves/structure agree with flatten."""
    leaves, treedef = fg.tree.flatten(tree)
    assert all(isinstance(x, torch.Tensor) for x in leaves)
    assert fg.tree.equal(fg.tree.unflatten(treedef, leaves), tree)
    assert all(a is b for a, b in zip(fg.tree.leaves(tree), leaves, strict=True))
    assert fg.tree.structure(tree) == treedef
    assert treedef.num_leaves == len(leaves)


@pytest.mark.parametrize("tree", CORPUS)
def test_unflatten_places_new_leaves(tree):
    """unflatten with new leaves puts them where the old ones were (same as map)."""
    leaves, treedef = fg.tree.flatten(tree)
    rebuilt = fg.tree.unflatten(treedef, [2 * x for x in leaves])
    assert fg.tree.equal(rebuilt, fg.tree.map(lambda x: 2 * x, tree))
    for path, leaf in fg.tree.flatten_with_path(rebuilt)[0]:
        torch.testing.assert_close(leaf, 2 * _get(tree, path), rtol=0, atol=0)


@pytest.mark.parametrize("tree", JAX_CORPUS)
def test_flatten_matches_jax(tree):
    """Leaf order, leaf count and node count match jax.tree_util (dicts sorted, None a node)."""
    jax, _ = helpers.require_jax()
    jax_leaves, jax_def = jax.tree_util.tree_flatten(helpers.to_jax(tree))
    leaves, treedef = fg.tree.flatten(tree)
    assert_trees_allclose(leaves, helpers.to_torch(jax_leaves), rtol=0, atol=0)
    assert (treedef.num_leaves, treedef.num_nodes) == (jax_def.num_leaves, jax_def.num_nodes)


@pytest.mark.parametrize("tree", JAX_CORPUS)
def test_paths_match_jax(tree):
    """flatten_with_path paths are JAX's key paths (NamedTuple fields by position)."""
    jax, _ = helpers.require_jax()
    jax_paths = [
        tuple(_jax_key(k) for k in p)
        for p, _ in jax.tree_util.tree_flatten_with_path(helpers.to_jax(tree))[0]
    ]
    pairs_, _ = fg.tree.flatten_with_path(tree)
    assert [_named_path(tree, p) for p, _ in pairs_] == jax_paths


def test_dict_order_sorted_ordereddict_insertion():
    """Dicts flatten in sorted key order but keep their key order; OrderedDicts keep insertion."""
    a, b = torch.tensor(1.0), torch.tensor(2.0)
    assert fg.tree.leaves({"b": b, "a": a}) == [a, b]
    assert list(fg.tree.map(torch.neg, {"b": b, "a": a})) == ["b", "a"]
    od = collections.OrderedDict([("b", b), ("a", a)])
    assert fg.tree.leaves(od) == [b, a]
    assert fg.tree.structure(od) != fg.tree.structure(collections.OrderedDict([("a", a), ("b", b)]))
    assert fg.tree.structure({"b": b, "a": a}) == fg.tree.structure({"a": a, "b": b})


def test_none_is_an_empty_node():
    """None holds no leaves, keeps its place, and map never calls f on it."""
    calls = []
    tree = {"a": None, "b": [None, torch.ones(1)]}
    out = fg.tree.map(lambda x: calls.append(x) or x, tree)
    assert len(calls) == 1
    assert out["a"] is None
    assert out["b"][0] is None
    assert fg.tree.leaves(None) == []
    assert fg.tree.structure(None).num_leaves == 0
    assert fg.tree.structure(tree) != fg.tree.structure({"a": torch.ones(1), "b": [None, 0]})


def test_is_leaf_stops_flattening():
    """is_leaf makes a node a leaf in flatten, leaves, structure, flatten_with_path and map."""
    tree = {"p": Point(torch.ones(1), torch.zeros(1)), "q": [torch.ones(2)]}
    is_point = lambda x: isinstance(x, Point)  # noqa: E731
    leaves, treedef = fg.tree.flatten(tree, is_point)
    assert leaves[0] is tree["p"]
    assert leaves[1] is tree["q"][0]
    assert fg.tree.leaves(tree, is_point) == leaves
    assert fg.tree.structure(tree, is_point) == treedef
    assert [p for p, _ in fg.tree.flatten_with_path(tree, is_point)[0]] == [("p",), ("q", 0)]
    out = fg.tree.map(lambda x: type(x).__name__, tree, is_leaf=is_point)
    assert out == {"p": "Point", "q": ["Tensor"]}


def test_unflatten_wrong_leaf_count():
    """unflatten with too few leaves is an error."""
    with pytest.raises(ValueError, match="Too few leaves"):
        fg.tree.unflatten(fg.tree.structure([0, 0]), [1])


@given(tree=helpers.trees())
def test_unflatten_leaves_round_trip_property(tree):
    """unflatten(structure(t), leaves(t)) == t for random trees."""
    assert fg.tree.equal(fg.tree.unflatten(fg.tree.structure(tree), fg.tree.leaves(tree)), tree)


# --------------------------------------------------------------------------------------------
# Paths, map, map_with_path, reduce
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tree", CORPUS)
def test_flatten_with_path_indexes_back(tree):
    """Each path leads back to its leaf; leaves and structure match flatten."""
    path_leaves, treedef = fg.tree.flatten_with_path(tree)
    assert all(_get(tree, p) is x for p, x in path_leaves)
    assert [x for _, x in path_leaves] == fg.tree.leaves(tree)
    assert treedef == fg.tree.structure(tree)


def test_dataclass_paths_are_field_names():
    """Registered dataclass data fields appear in paths by name; static fields not at all."""
    tree = [Layer(torch.ones(1), torch.zeros(1)), Frozen(torch.ones(2), scale=3.0)]
    paths = [p for p, _ in fg.tree.flatten_with_path(tree)[0]]
    assert paths == [(0, "weight"), (0, "bias"), (1, "value")]


@given(tree=helpers.trees())
def test_flatten_with_path_indexes_back_property(tree):
    """Paths of random trees lead back to their leaves, in flattening order."""
    path_leaves, _ = fg.tree.flatten_with_path(tree)
    assert [_get(tree, p) for p, _ in path_leaves] == [x for _, x in path_leaves]
    assert len(path_leaves) == len(fg.tree.leaves(tree))


@given(tree=helpers.trees())
def test_map_identity_property(tree):
    """map(identity) rebuilds the tree with the very same leaves."""
    out = fg.tree.map(lambda x: x, tree)
    assert fg.tree.structure(out) == fg.tree.structure(tree)
    assert all(a is b for a, b in zip(fg.tree.leaves(out), fg.tree.leaves(tree), strict=True))


@dataclasses.dataclass(frozen=True)
class _Seen:
    """What map_with_path's f received (an unregistered dataclass, hence a leaf)."""

    path: tuple[Any, ...]
    leaf_matches: bool
    other_matches: bool


@pytest.mark.parametrize("tree", CORPUS)
def test_map_several_trees(tree):
    """map(f, a, b) applies f to matching leaves; map_with_path passes each leaf's path."""
    other = _like(tree, seed=100)
    out = fg.tree.map(lambda x, y: x * y, tree, other)
    for path, leaf in fg.tree.flatten_with_path(out)[0]:
        torch.testing.assert_close(leaf, _get(tree, path) * _get(other, path), rtol=0, atol=0)
    seen = fg.tree.map_with_path(
        lambda p, x, y: _Seen(p, x is _get(tree, p), y is _get(other, p)), tree, other
    )
    assert fg.tree.structure(seen) == fg.tree.structure(tree)
    paths = [p for p, _ in fg.tree.flatten_with_path(tree)[0]]
    assert fg.tree.leaves(seen) == [_Seen(p, True, True) for p in paths]


def test_map_with_path_under_jit_passes_the_same_paths():
    """Inside fg.jit, f receives optree's path entries ('enc', 'w'), NamedTuple positions and
    dataclass field names, as eagerly, through every kind of node; results may be constants
    (labels). Dynamo's own tracing of it gives other paths."""
    tree = {
        "enc": {"w": torch.ones(2), "b": torch.ones(1)},
        "p": Point(torch.ones(1), torch.ones(3)),
        "l": [torch.ones(1), Layer(torch.ones(2), torch.ones(1)), None],
        "od": collections.OrderedDict(z=torch.ones(1), a=(torch.ones(2),)),
        "dd": collections.defaultdict(list, {"k": torch.ones(1)}),
        "dq": collections.deque([torch.ones(1)]),
    }

    def code(path: tuple[Any, ...]) -> int:  # a number per path, so the graph carries it
        return sum(ord(c) for c in repr(path))

    def f(t: Any, u: Any) -> Any:
        labels = fg.tree.map_with_path(lambda p, _: "enc" if p[0] == "enc" else repr(p), t)
        return fg.tree.map_with_path(lambda p, x, y: x * code(p) + y, t, u), labels

    expected = (
        fg.tree.map_with_path(lambda p, x: x * code(p) + x, tree),
        fg.tree.map_with_path(lambda p, _: "enc" if p[0] == "enc" else repr(p), tree),
    )
    got = fg.jit(f, backend="aot_eager")(tree, tree)
    assert_trees_allclose(got[0], expected[0], rtol=0, atol=0)
    assert got[1] == expected[1]


def test_map_with_path_under_jit_structure_mismatch():
    """Under jit, a tree in rest that lacks a node of the first raises what eager code raises
    (fg.jit re-runs a call whose trace raised, for the real error)."""
    f = fg.jit(lambda a, b: fg.tree.map_with_path(lambda p, x, y: x + y, a, b), backend="aot_eager")
    with pytest.raises(ValueError, match=r"Expected an instance of list, got tensor"):
        f({"a": [torch.ones(1)]}, {"a": torch.ones(1)})


def test_map_structure_mismatch():
    """map over trees of different structure is an error naming the mismatch."""
    with pytest.raises(ValueError, match="dictionary key mismatch"):
        fg.tree.map(operator.add, {"a": 1}, {"b": 1})
    with pytest.raises(ValueError, match="arity mismatch"):
        fg.tree.map(operator.add, [1, 2], [1])


@pytest.mark.parametrize("tree", CORPUS)
def test_reduce_matches_functools(tree):
    """reduce folds left to right like functools.reduce, with or without an initializer."""
    leaves = fg.tree.leaves(tree)
    total = fg.tree.reduce(lambda acc, x: acc + x.sum(), tree, torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(total, _vec(tree).sum())
    order = fg.tree.reduce(lambda acc, x: [*acc, x], tree, [])
    assert all(a is b for a, b in zip(order, leaves, strict=True))
    sizes = fg.tree.map(torch.numel, tree)
    assert fg.tree.reduce(operator.add, sizes) == functools.reduce(
        operator.add, map(torch.numel, leaves)
    )


def test_reduce_empty_tree():
    """reduce of an empty tree returns the initializer, and fails without one."""
    assert fg.tree.reduce(operator.add, {"a": None, "b": []}, 7) == 7
    with pytest.raises(TypeError, match="empty iterable with no initial value"):
        fg.tree.reduce(operator.add, {})


# --------------------------------------------------------------------------------------------
# transpose
# --------------------------------------------------------------------------------------------


def _outer_of_inner(outer: Any, inner: Any) -> Any:
    """A tree of structure outer whose leaves are trees of structure inner, with distinct ints."""
    n_out, n_in = outer.num_leaves, inner.num_leaves
    return fg.tree.unflatten(
        outer, [fg.tree.unflatten(inner, range(i * n_in, (i + 1) * n_in)) for i in range(n_out)]
    )


@pytest.mark.parametrize(
    ("outer", "inner"),
    [
        ([0, 0, 0], {"a": 0, "b": 0}),
        (Point(0, {"z": 0}), (0, [0, None, 0])),
        ({"y": 0, "x": (0,)}, collections.OrderedDict([("k", 0), ("j", 0)])),
    ],
)
def test_transpose_matches_jax(outer, inner):
    """transpose turns a tree inside out exactly like jax.tree_util.tree_transpose."""
    jax, _ = helpers.require_jax()
    outer_def, inner_def = fg.tree.structure(outer), fg.tree.structure(inner)
    tree = _outer_of_inner(outer_def, inner_def)
    expected = jax.tree_util.tree_transpose(
        jax.tree_util.tree_structure(outer), jax.tree_util.tree_structure(inner), tree
    )
    out = fg.tree.transpose(outer_def, inner_def, tree)
    assert fg.tree.structure(out) == fg.tree.structure(expected)
    assert fg.tree.leaves(out) == jax.tree_util.tree_leaves(expected)
    assert type(out) is type(expected)


@given(outer=int_structures, inner=int_structures)
def test_transpose_twice_is_identity(outer, inner):
    """transpose(inner, outer, transpose(outer, inner, t)) == t."""
    outer_def, inner_def = fg.tree.structure(outer), fg.tree.structure(inner)
    tree = _outer_of_inner(outer_def, inner_def)
    once = fg.tree.transpose(outer_def, inner_def, tree)
    assert fg.tree.equal(fg.tree.transpose(inner_def, outer_def, once), tree)


def test_transpose_errors():
    """transpose rejects a tree that is not outer-of-inner, and structures with no leaves."""
    outer, inner = fg.tree.structure([0, 0]), fg.tree.structure((0, 0))
    with pytest.raises(TypeError, match="Tree structure mismatch"):
        fg.tree.transpose(outer, inner, [(1, 2), (3,)])
    with pytest.raises(ValueError, match="at least one leaf"):
        fg.tree.transpose(fg.tree.structure([]), inner, [])


# --------------------------------------------------------------------------------------------
# register_dataclass
# --------------------------------------------------------------------------------------------


def test_register_dataclass_static_metadata():
    """Data fields are leaves; a static field is part of the structure and survives map."""
    w, b = torch.ones(3), torch.zeros(3)
    layer = Layer(w, b, activation="relu")
    assert fg.tree.leaves(layer) == [w, b]
    assert fg.tree.structure(layer) != fg.tree.structure(Layer(w, b, activation="tanh"))
    assert fg.tree.structure(layer) == fg.tree.structure(Layer(b, w, activation="relu"))
    out = fg.tree.map(lambda x: x + 1, layer)
    assert type(out) is Layer
    assert out.activation == "relu"
    assert_trees_allclose((out.weight, out.bias), (w + 1, b + 1))


def test_register_dataclass_explicit_fields_override_metadata():
    """Explicit data_fields/meta_fields win over the static metadata (decorator factory form)."""

    @fg.tree.register_dataclass(data_fields=["scale", "shift"], meta_fields=["name"])
    @dataclasses.dataclass
    class Norm:
        name: str
        shift: Any
        scale: Any = dataclasses.field(default=None, metadata={"static": True})

    norm = Norm("ln", torch.zeros(2), torch.ones(2))
    assert fg.tree.leaves(norm) == [norm.scale, norm.shift]
    assert [p for p, _ in fg.tree.flatten_with_path(norm)[0]] == [("scale",), ("shift",)]
    assert fg.tree.structure(norm) != fg.tree.structure(Norm("bn", torch.zeros(2), torch.ones(2)))
    out = fg.tree.map(torch.neg, norm)
    assert out.name == "ln"
    assert_trees_allclose((out.scale, out.shift), (-norm.scale, -norm.shift))


def test_register_dataclass_frozen_and_post_init_not_rerun():
    """Unflattening a frozen dataclass skips __post_init__ and keeps it frozen."""
    calls = []

    @fg.tree.register_dataclass
    @dataclasses.dataclass(frozen=True)
    class Checked:
        value: Any

        def __post_init__(self) -> None:
            calls.append(1)
            if not isinstance(self.value, torch.Tensor):
                raise TypeError("value must be a tensor")

    obj = Checked(torch.ones(2))
    out = fg.tree.map(lambda x: x.shape, obj)  # __post_init__ would reject a shape
    assert type(out) is Checked
    assert out.value == torch.Size([2])
    assert calls == [1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.value = 0  # type: ignore[misc]
    frozen = fg.tree.map(lambda x: 2 * x, Frozen(torch.ones(1), scale=4.0))
    assert frozen.scale == 4.0
    assert_trees_allclose(frozen.value, torch.full((1,), 2.0))


def test_register_dataclass_custom_init_not_rerun():
    """Unflattening sets the fields directly, so a custom __init__ signature does not matter."""
    inits = []

    @fg.tree.register_dataclass
    @dataclasses.dataclass(init=False)
    class Built:
        weight: Any
        size: int = dataclasses.field(metadata={"static": True})

        def __init__(self, size: int) -> None:
            inits.append(size)
            self.size = size
            self.weight = torch.arange(float(size))

    built = Built(3)
    out = fg.tree.unflatten(fg.tree.structure(built), ["replaced"])
    assert (type(out), out.weight, out.size) == (Built, "replaced", 3)
    assert inits == [3]


@pytest.mark.parametrize("meta", [False, True])
def test_register_dataclass_one_field_list_keeps_other_fields(meta):
    """Giving only data_fields (or only meta_fields) must not drop the other fields.

    Fields not listed take the other role; a round trip keeps every field's value.
    """

    @dataclasses.dataclass
    class Pair:
        a: Any
        b: Any = 5

    kwargs = {"meta_fields": ["b"]} if meta else {"data_fields": ["a"]}
    fg.tree.register_dataclass(Pair, **kwargs)
    pair = Pair(torch.ones(1), 7)
    out = fg.tree.unflatten(fg.tree.structure(pair), fg.tree.leaves(pair))
    assert (out.a, out.b) == (pair.a, 7)
    assert fg.tree.leaves(pair) == [pair.a]


def test_register_dataclass_incomplete_field_lists():
    """data_fields + meta_fields that miss a field is an error naming the field."""

    @dataclasses.dataclass
    class Triple:
        a: Any
        b: Any
        c: Any

    with pytest.raises(ValueError, match=r"register_dataclass.*\['c'\]"):
        fg.tree.register_dataclass(Triple, data_fields=["a"], meta_fields=["b"])


def test_register_dataclass_errors():
    """Non-dataclasses, instances, unknown and overlapping fields are rejected clearly."""

    class Plain:
        a: int

    @dataclasses.dataclass
    class Pair:
        a: Any
        b: Any

    with pytest.raises(TypeError, match=r"expected a dataclass type, got .*Plain"):
        fg.tree.register_dataclass(Plain)
    with pytest.raises(TypeError, match=r"expected a dataclass type, got .*Pair\(a=1, b=2\)"):
        fg.tree.register_dataclass(Pair(1, 2))
    with pytest.raises(
        ValueError, match=r"Pair has no fields \['nope'\]; its fields are \['a', 'b'\]"
    ):
        fg.tree.register_dataclass(Pair, data_fields=["a", "nope"], meta_fields=["b"])
    with pytest.raises(ValueError, match=r"fields \['a'\] of Pair are listed as both"):
        fg.tree.register_dataclass(Pair, data_fields=["a", "b"], meta_fields=["a"])


# --------------------------------------------------------------------------------------------
# partition / combine
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tree", CORPUS)
def test_partition_combine_round_trip(tree):
    """partition splits by the predicate with None holes; combine merges back to the tree."""
    big = lambda x: x.numel() > 2  # noqa: E731
    first, second = fg.tree.partition(tree, big)
    leaves = fg.tree.leaves(tree)
    assert fg.tree.leaves(first) == [x for x in leaves if big(x)]
    assert fg.tree.leaves(second) == [x for x in leaves if not big(x)]
    assert fg.tree.equal(fg.tree.combine(first, second), tree)
    assert fg.tree.equal(fg.tree.combine(second, first), tree)


def test_partition_keeps_none_already_in_tree():
    """None nodes of the input stay None in both halves and after combine."""
    tree = {"w": torch.ones(2), "b": None, "n": [3, None]}
    tensors, others = fg.tree.partition(tree, lambda x: isinstance(x, torch.Tensor))
    assert tensors == {"w": tree["w"], "b": None, "n": [None, None]}
    assert others == {"w": None, "b": None, "n": [3, None]}
    assert fg.tree.equal(fg.tree.combine(tensors, others), tree)


def test_partition_with_is_leaf():
    """partition and combine honour is_leaf: a whole subtree goes to one side."""
    tree = {"p": Point(torch.ones(1), 2), "q": torch.zeros(1)}
    is_point = lambda x: isinstance(x, Point)  # noqa: E731
    points, rest = fg.tree.partition(tree, is_point, is_leaf=is_point)
    assert points == {"p": tree["p"], "q": None}
    assert rest["p"] is None
    assert rest["q"] is tree["q"]
    assert fg.tree.equal(fg.tree.combine(points, rest, is_leaf=is_point), tree)


@given(tree=helpers.trees(), mask=st.lists(st.booleans(), min_size=64, max_size=64))
def test_partition_combine_property(tree, mask):
    """combine(*partition(t, p)) == t for a random predicate p."""
    chosen = {id(x) for x, m in zip(fg.tree.leaves(tree), mask) if m}
    first, second = fg.tree.partition(tree, lambda x: id(x) in chosen)
    assert len(fg.tree.leaves(first)) == len(chosen)
    assert fg.tree.equal(fg.tree.combine(first, second), tree)


def test_combine_first_non_none_wins():
    """Each leaf of combine is the first non-None among the trees; a None can stand for a subtree."""
    assert fg.tree.combine([None, 1, None], [2, 3, None], [4, 5, 6]) == [2, 1, 6]
    assert fg.tree.combine({"a": None, "b": 0}, {"a": (1, 2), "b": None}) == {"a": (1, 2), "b": 0}
    assert fg.tree.combine({"a": 1}) == {"a": 1}


def test_combine_errors():
    """combine needs at least one tree, and trees of one structure."""
    with pytest.raises(TypeError, match="combine: expected at least one tree, got none"):
        fg.tree.combine()
    with pytest.raises(
        ValueError, match=r"combine: the trees must have one structure.*key mismatch"
    ):
        fg.tree.combine({"a": 1}, {"b": 1})
    with pytest.raises(ValueError, match=r"combine: the trees must have one structure.*tuple"):
        fg.tree.combine({"a": (1, 2)}, {"a": None})
    with pytest.raises(ValueError, match=r"combine: .*custom node data"):
        fg.tree.combine(Layer(1, None), Layer(None, 2, activation="relu"))


# --------------------------------------------------------------------------------------------
# Tree math against torch (the concatenated vector) and optax
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tree", CORPUS)
def test_add_sub_scale_match_vector_math(tree):
    """add, sub and scale keep the structure and act on the concatenated vector."""
    other = _like(tree, seed=7)
    treedef = fg.tree.structure(tree)
    for out, expected in [
        (fg.tree.add(tree, other), _vec(tree) + _vec(other)),
        (fg.tree.sub(tree, other), _vec(tree) - _vec(other)),
        (fg.tree.scale(-2.5, tree), -2.5 * _vec(tree)),
        (fg.tree.scale(torch.tensor(0.5, dtype=torch.float64), tree), 0.5 * _vec(tree)),
    ]:
        assert fg.tree.structure(out) == treedef
        torch.testing.assert_close(_vec(out), expected)


@pytest.mark.parametrize("tree", JAX_CORPUS)
def test_add_sub_scale_match_optax(tree):
    """add, sub and scale agree with optax.tree_utils.tree_add/tree_sub/tree_scale."""
    tu = _optax_tu()
    other = _like(tree, seed=11)
    ja, jb = helpers.to_jax(tree), helpers.to_jax(other)
    assert_trees_allclose(fg.tree.add(tree, other), helpers.to_torch(tu.tree_add(ja, jb)))
    assert_trees_allclose(fg.tree.sub(tree, other), helpers.to_torch(tu.tree_sub(ja, jb)))
    assert_trees_allclose(fg.tree.scale(-1.5, tree), helpers.to_torch(tu.tree_scale(-1.5, ja)))


@pytest.mark.parametrize("tree", CORPUS)
def test_dot_matches_torch(tree):
    """dot is torch.dot of the concatenated vectors."""
    other = _like(tree, seed=3)
    out = fg.tree.dot(tree, other)
    assert out.shape == ()
    torch.testing.assert_close(out, torch.dot(_vec(tree), _vec(other)))


def test_dot_conjugates_complex_first_argument():
    """For complex leaves dot is torch.vdot (conjugates a) of the concatenated vectors."""
    c128 = torch.complex128
    a = {"x": helpers.t(3, seed=1, dtype=c128), "y": [helpers.t(2, 2, seed=2, dtype=c128)]}
    b = _like(a, seed=5)
    torch.testing.assert_close(fg.tree.dot(a, b), torch.vdot(_vec(a), _vec(b)))
    torch.testing.assert_close(fg.tree.dot(a, a).imag, torch.zeros((), dtype=torch.float64))


@pytest.mark.parametrize("tree", JAX_CORPUS)
def test_dot_matches_optax(tree):
    """dot agrees with optax.tree_utils.tree_vdot (real and complex)."""
    tu = _optax_tu()
    for dtype in (torch.float64, torch.complex128):
        a, b = _like(tree, seed=21), _like(tree, seed=42)
        if dtype.is_complex:
            a = fg.tree.map(lambda x: torch.complex(x, 0.5 - x), a)
            b = fg.tree.map(lambda x: torch.complex(x, 2 * x), b)
        expected = helpers.to_torch(tu.tree_vdot(helpers.to_jax(a), helpers.to_jax(b)))
        assert_trees_allclose(fg.tree.dot(a, b), expected)


@pytest.mark.parametrize("ord", ORDS)
@pytest.mark.parametrize("tree", CORPUS)
def test_norm_matches_torch(tree, ord):
    """norm is torch.linalg.vector_norm of the concatenated vector; squared is its square."""
    expected = torch.linalg.vector_norm(_vec(tree), ord)
    out = fg.tree.norm(tree, ord)
    assert out.shape == ()
    torch.testing.assert_close(out, expected)
    if ord == 2:
        torch.testing.assert_close(fg.tree.norm(tree, squared=True), expected**2)


@pytest.mark.parametrize(("ord", "squared"), [(1, False), (2, False), (2, True), (math.inf, False)])
@pytest.mark.parametrize("tree", JAX_CORPUS)
def test_norm_matches_optax(tree, ord, squared):
    """norm agrees with optax.tree_utils.tree_norm for ord 1, 2, inf and the squared 2-norm."""
    tu = _optax_tu()
    expected = helpers.to_torch(tu.tree_norm(helpers.to_jax(tree), ord=ord, squared=squared))
    assert_trees_allclose(fg.tree.norm(tree, ord, squared=squared), expected)


@pytest.mark.parametrize("ord", ORDS)
def test_norm_and_dot_of_empty_tree(ord):
    """A tree with no leaves has norm 0 and dot 0 (0-d tensors)."""
    empty = {"a": None, "b": []}
    assert fg.tree.norm(empty, ord).item() == 0.0
    assert fg.tree.norm(empty, ord).shape == fg.tree.dot(empty, empty).shape == ()
    assert fg.tree.dot(empty, empty).item() == 0.0


@pytest.mark.parametrize("ord", ORDS)
def test_norm_with_an_empty_leaf(ord):
    """An empty leaf (numel 0) adds nothing to the norm, for every ord."""
    tree = [torch.zeros(0, dtype=torch.float64), helpers.t(3, seed=4)]
    torch.testing.assert_close(fg.tree.norm(tree, ord), torch.linalg.vector_norm(_vec(tree), ord))


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.int64])
@pytest.mark.parametrize(("fn", "fill"), [(fg.tree.zeros_like, 0), (fg.tree.ones_like, 1)])
@pytest.mark.parametrize("tree", CORPUS)
def test_zeros_ones_like(tree, fn, fill, dtype):
    """zeros_like/ones_like keep structure, shapes and dtypes, or use the given dtype."""
    expected = fg.tree.map(lambda x: torch.full(x.shape, fill, dtype=dtype or x.dtype), tree)
    assert fg.tree.equal(fn(tree, dtype), expected)


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.int32])
@pytest.mark.parametrize("tree", JAX_CORPUS)
def test_zeros_ones_like_match_optax(tree, dtype):
    """zeros_like/ones_like agree with optax tree_zeros_like/tree_ones_like (dtype included)."""
    tu = _optax_tu()
    _, jnp = helpers.require_jax()
    jdtype = None if dtype is None else getattr(jnp, str(dtype).removeprefix("torch."))
    ja = helpers.to_jax(tree)
    assert_trees_allclose(
        fg.tree.zeros_like(tree, dtype), helpers.to_torch(tu.tree_zeros_like(ja, jdtype))
    )
    assert_trees_allclose(
        fg.tree.ones_like(tree, dtype), helpers.to_torch(tu.tree_ones_like(ja, jdtype))
    )


# --------------------------------------------------------------------------------------------
# allclose / equal
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-6, 1e-3])
@pytest.mark.parametrize("tree", JAX_CORPUS)
def test_allclose_matches_optax(tree, eps):
    """allclose agrees with optax.tree_utils.tree_allclose for shifts around the tolerance."""
    tu = _optax_tu()
    shifted = fg.tree.map(lambda x: x + eps, tree)
    expected = bool(tu.tree_allclose(helpers.to_jax(tree), helpers.to_jax(shifted)))
    assert fg.tree.allclose(tree, shifted) is expected
    assert fg.tree.equal(tree, shifted) is (eps == 0.0)


def test_allclose_tolerances_follow_torch():
    """rtol and atol mean what they mean in torch.allclose."""
    a, b = [torch.tensor([1.0, 100.0])], [torch.tensor([1.001, 100.1])]
    for rtol, atol in [(1e-5, 1e-8), (1e-3, 0.0), (0.0, 1e-3), (0.0, 0.2), (2e-3, 0.0)]:
        assert fg.tree.allclose(a, b, rtol, atol) is torch.allclose(a[0], b[0], rtol, atol)


@pytest.mark.parametrize("fn", [fg.tree.allclose, fg.tree.equal])
def test_allclose_equal_false_cases(fn):
    """Structure, static metadata, shape, dtype, values and non-tensor leaves all count."""
    x = torch.ones(2)
    assert fn({"a": x, "n": 3}, {"a": x.clone(), "n": 3})
    assert not fn({"a": x}, {"b": x})
    assert not fn([x], (x,))
    assert not fn(Layer(x, x), Layer(x, x, activation="relu"))
    assert not fn([x], [torch.ones(1, 2)])
    assert not fn([x], [x.double()])
    assert not fn([x], [x + 1])
    assert not fn({"n": 3}, {"n": 4})
    assert not fn([1.0], [torch.tensor(1.0)])
    assert not fn([torch.tensor(1.0)], [1.0])
    assert not fn([torch.tensor(float("nan"))], [torch.tensor(float("nan"))])


@given(tree=helpers.trees())
def test_equal_is_reflexive_and_allclose_tolerates_noise(tree):
    """equal(t, clone(t)); allclose(t, t + tiny) but not equal when any leaf is non-empty."""
    assert fg.tree.equal(tree, fg.tree.map(torch.clone, tree))
    noisy = fg.tree.map(lambda x: x * (1 + 1e-12) + 1e-12, tree)
    assert fg.tree.allclose(tree, noisy)
    assert fg.tree.equal(tree, noisy) is (_vec(tree).numel() == 0)


# --------------------------------------------------------------------------------------------
# Tree-math laws (hypothesis)
# --------------------------------------------------------------------------------------------


@given(pair=pairs)
def test_sub_undoes_add(pair):
    """sub(add(a, b), b) == a."""
    a, b = pair
    assert fg.tree.allclose(fg.tree.sub(fg.tree.add(a, b), b), a, rtol=1e-12, atol=1e-12)


@given(tree=helpers.trees())
def test_dot_with_self_is_squared_norm(tree):
    """dot(a, a) == norm(a)**2 == norm(a, squared=True)."""
    d = fg.tree.dot(tree, tree)
    torch.testing.assert_close(d, fg.tree.norm(tree, squared=True))
    torch.testing.assert_close(d, fg.tree.norm(tree) ** 2)


@given(pair=pairs, alpha=scalars, beta=scalars)
def test_scale_is_linear(pair, alpha, beta):
    """scale distributes over add and composes by multiplying scalars; dot is bilinear."""
    a, b = pair
    lhs = fg.tree.scale(alpha, fg.tree.add(a, b))
    rhs = fg.tree.add(fg.tree.scale(alpha, a), fg.tree.scale(alpha, b))
    assert_trees_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)
    assert_trees_allclose(
        fg.tree.scale(alpha, fg.tree.scale(beta, a)),
        fg.tree.scale(alpha * beta, a),
        rtol=1e-12,
        atol=1e-12,
    )
    torch.testing.assert_close(
        fg.tree.dot(fg.tree.scale(alpha, a), b), alpha * fg.tree.dot(a, b), rtol=1e-10, atol=1e-10
    )


@given(pair=pairs, alpha=scalars)
def test_norm_laws(pair, alpha):
    """Each norm matches vector_norm of the concatenation, is homogeneous and subadditive."""
    a, b = pair
    for ord in ORDS:
        n, v = fg.tree.norm(a, ord), _vec(a)
        expected = torch.linalg.vector_norm(v, ord) if v.numel() else torch.zeros(())
        torch.testing.assert_close(n, expected.to(n.dtype))
        torch.testing.assert_close(fg.tree.norm(fg.tree.scale(alpha, a), ord), abs(alpha) * n)
        assert fg.tree.norm(fg.tree.add(a, b), ord) <= n + fg.tree.norm(b, ord) + 1e-12


# --------------------------------------------------------------------------------------------
# Error messages
# --------------------------------------------------------------------------------------------

_ONE_TREE_FNS = {
    "scale": lambda t: fg.tree.scale(2.0, t),
    "norm": fg.tree.norm,
    "zeros_like": fg.tree.zeros_like,
    "ones_like": fg.tree.ones_like,
}
_TWO_TREE_FNS = {"add": fg.tree.add, "sub": fg.tree.sub, "dot": fg.tree.dot}


@pytest.mark.parametrize(
    ("bad", "path", "got"),
    [
        ({"a": [1.0]}, r"tree\['a'\]\[0\]", r"float \(1\.0\)"),
        (Point(torch.ones(1), "s"), r"tree\.y", r"str \('s'\)"),
        ([Layer(torch.ones(1), 3)], r"tree\[0\]\.bias", r"int \(3\)"),
    ],
)
@pytest.mark.parametrize("name", [*_ONE_TREE_FNS, *_TWO_TREE_FNS])
def test_non_tensor_leaf_error_names_the_path(name, bad, path, got):
    """Tree math on a non-tensor leaf names the function, the leaf's path and its value."""
    match = (
        rf"funcgrad\.tree\.{name}: expected every leaf to be a torch\.Tensor, "
        rf"but the leaf at {path} is {got}"
    )
    if name in _ONE_TREE_FNS:
        with pytest.raises(TypeError, match=match):
            _ONE_TREE_FNS[name](bad)
    else:
        good = fg.tree.map(lambda _: torch.ones(1), bad)
        for args in [(bad, good), (good, bad)]:
            with pytest.raises(TypeError, match=match):
                _TWO_TREE_FNS[name](*args)


@pytest.mark.parametrize("name", list(_TWO_TREE_FNS))
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"a": torch.ones(1)}, {"b": torch.ones(1)}),
        ([torch.ones(1)], (torch.ones(1),)),
        (Layer(torch.ones(1), torch.ones(1)), Layer(torch.ones(1), torch.ones(1), "relu")),
    ],
    ids=["keys", "list_vs_tuple", "static_field"],
)
def test_structure_mismatch_error(name, a, b):
    """add/sub/dot on trees of different structure name the function and both structures."""
    match = rf"funcgrad\.tree\.{name}: the two trees must have the same structure, got PyTreeSpec"
    with pytest.raises(ValueError, match=match):
        _TWO_TREE_FNS[name](a, b)


def test_dot_shape_mismatch_error():
    """dot of leaves with different shapes is an error, not a silent broadcast (jnp.vdot raises)."""
    with pytest.raises(ValueError, match=r"funcgrad\.tree\.dot: .*shape"):
        fg.tree.dot({"w": torch.ones(3)}, {"w": torch.ones(2, 3)})


@pytest.mark.parametrize("ord", [0, 3, -1, "fro", None, -math.inf])
def test_norm_bad_ord(ord):
    """norm rejects every ord but 1, 2 and inf, naming the value."""
    match = rf"funcgrad\.tree\.norm: ord must be 1, 2 or math\.inf, got {ord!r}"
    with pytest.raises(ValueError, match=match):
        fg.tree.norm([torch.ones(2)], ord)  # type: ignore[arg-type]


@pytest.mark.parametrize("ord", [1, math.inf])
def test_norm_squared_needs_ord_2(ord):
    """squared=True with ord 1 or inf is an error."""
    match = rf"funcgrad\.tree\.norm: squared=True needs ord=2, got ord={ord!r}"
    with pytest.raises(ValueError, match=match):
        fg.tree.norm([torch.ones(2)], ord, squared=True)


@pytest.mark.parametrize("exact", [True, False])
def test_structure_checks_under_jit_on_every_dynamo(exact: bool, monkeypatch: Any) -> None:
    """A jitted optimizer step compares treedefs while tracing: with optree's exact equality
    (torch >= 2.13) and with the traceable comparison used under older dynamo (NOTE [treedef
    equality under torch.compile]); both accept equal structures and name a differing key."""
    import funcgrad.tree as fg_tree

    monkeypatch.setattr(fg_tree, "_TREEDEF_EQ_TRACEABLE", exact)
    opt = fg.optim.adam(0.1)

    def step(p: Any, s: Any) -> Any:
        u, s = opt.update(p, s, p)
        return fg.optim.apply_updates(p, u), s

    p = {"w": torch.ones(3, dtype=torch.float64), "b": [torch.zeros(2, dtype=torch.float64), None]}
    got = fg.jit(step, backend="aot_eager")(p, opt.init(p))
    assert_trees_allclose(got, step(p, opt.init(p)))
    other = {"w": torch.ones(3), "c": [torch.zeros(2), None]}
    with pytest.raises(ValueError, match=r"it has tree\['c'\]\[0\], which the updates do not"):
        fg.jit(step, backend="aot_eager")(p, opt.init(other))
    a, b = fg.tree.structure(p), fg.tree.structure(other)
    assert fg_tree._same_structure(a, fg.tree.structure(p))
    assert not fg_tree._same_structure(a, b)
