"""funcgrad.io: safetensors checkpoints of pytrees, checked byte for byte against what was saved
and against the ``safetensors`` library; atomicity under SIGKILL; exact resume of training."""

from __future__ import annotations

import collections
import functools
import inspect
import json
import math
import os
import random
import struct
import sys
import zipfile
from typing import Any, NamedTuple

import helpers
import optree
import pytest
import torch
from helpers import CORPUS_IDS, Frozen, Layer, Point, corpus
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import io, optim

safetensors_torch = pytest.importorskip("safetensors.torch")

io.register_type(Point, name="tests.helpers:Point")

# --------------------------------------------------------------------------------------------
# Exact comparison
# --------------------------------------------------------------------------------------------


def bits(x: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes (NaN payloads and signed zeros included)."""
    return x.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)


def assert_identical(a: Any, b: Any, path: str = "tree") -> None:
    """Same node types, dict orders, static fields, leaf types, dtypes, shapes and bytes."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device), path
        assert torch.equal(bits(a), bits(b)), path
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and str(a) == str(b)), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        assert getattr(a, "default_factory", None) is getattr(b, "default_factory", None), path
        for k in a:
            assert_identical(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, list | tuple | collections.deque):
        assert len(a) == len(b), path
        assert getattr(a, "maxlen", 0) == getattr(b, "maxlen", 0), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    elif optree.register_pytree_node.get(type(a), namespace=fg.tree.NAMESPACE) is not None:
        ka, ma, ea, _ = optree.tree_flatten_one_level(a, namespace=fg.tree.NAMESPACE)
        kb, mb, eb, _ = optree.tree_flatten_one_level(b, namespace=fg.tree.NAMESPACE)
        assert (ma, ea) == (mb, eb), path
        assert_identical(list(ka), list(kb), path)
    else:
        assert a == b, path


def round_trip(path: Any, tree: Any, **load_kw: Any) -> Any:
    io.save(path, tree)
    return io.load(path, **load_kw)


@pytest.fixture
def path(tmp_path: Any) -> str:
    return str(tmp_path / "tree.safetensors")


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("like", [False, True])
@pytest.mark.parametrize("tree", corpus(), ids=CORPUS_IDS)
def test_corpus_round_trip(path: str, tree: Any, like: bool) -> None:
    """load(save(tree)) is tree: structure, node types, static fields, bytes."""
    assert_identical(round_trip(path, tree, like=tree if like else None), tree)


def _aliases() -> list[str]:
    names = []
    for name in optim.__all__:
        fn = getattr(optim, name)
        plain_function = callable(fn) and not isinstance(fn, type)
        if plain_function and "learning_rate" in inspect.signature(fn).parameters:
            names.append(name)
    return names


def _trained(name: str, steps: int = 3) -> dict[str, Any]:
    """The parameters and state of optimizer ``name`` after ``steps`` updates."""
    opt = _optimizers()[name]()
    params: Any = {"w": helpers.t(3, 2, seed=1), "b": helpers.t(2, seed=2), "s": helpers.t(seed=3)}
    if name == "lookahead":
        params = optim.LookaheadParams.init_synced(params)
    state = opt.init(params)
    for k in range(steps):
        at = params.fast if name == "lookahead" else params
        grads = fg.tree.map(lambda p, k=k: torch.sin(p * (k + 1)), at)
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    return {"params": params, "state": state}


WRAPPED = {
    "multi_steps": lambda: optim.MultiSteps(optim.adam(0.1), 2),
    "inject_hyperparams": lambda: optim.inject_hyperparams(optim.sgd)(learning_rate=0.1),
    "masked": lambda: optim.masked(optim.trace(0.9), {"w": True, "b": False, "s": True}),
    "multi_transform": lambda: optim.multi_transform(
        {"a": optim.adam(0.1), "b": optim.sgd(0.1)}, {"w": "a", "b": "b", "s": "a"}
    ),
    "lookahead": lambda: optim.lookahead(optim.sgd(0.1), 2, 0.5),
    "ema": lambda: optim.chain(optim.ema(0.9), optim.scale(-0.1)),
    "apply_if_finite": lambda: optim.apply_if_finite(optim.sgd(0.1), 3),
    "chain": lambda: optim.chain(
        optim.clip_by_global_norm(1.0),
        optim.zero_nans(),
        optim.scale_by_schedule(optim.cosine_decay(0.1, 10)),
        optim.scale_by_stddev(),
        optim.scale_by_adamax(),
    ),
}


def _optimizers() -> dict[str, Any]:
    return {
        **{name: lambda name=name: getattr(optim, name)(0.1) for name in _aliases()},
        "sgd_momentum": lambda: optim.sgd(0.1, momentum=0.9, nesterov=True),
        **WRAPPED,
    }


@pytest.mark.parametrize("name", sorted(_optimizers()))
def test_optimizer_state_round_trip(path: str, name: str) -> None:
    """The state of every alias (after 3 steps) loads back, without and with like=."""
    run = _trained(name)
    assert_identical(round_trip(path, run), run)
    assert_identical(io.load(path, like=run), run)


def _namedtuple_types(tree: Any) -> set[type]:
    found = set()

    def visit(x: Any) -> None:
        if optree.is_namedtuple_instance(x):
            found.add(type(x))

    optree.tree_map(visit, tree, is_leaf=lambda x: visit(x) or False, namespace="funcgrad")
    return found


def test_optimizer_states_cover_every_state_type() -> None:
    """The states above contain every NamedTuple type of funcgrad.optim, so each is registered."""
    seen = set().union(*(_namedtuple_types(_trained(name)) for name in _optimizers()))
    types = {getattr(optim, n) for n in optim.__all__}
    states = {t for t in types if isinstance(t, type) and optree.is_namedtuple_class(t)}
    assert states - {optim.GradientTransformation} <= seen


def test_nn_layers_round_trip(path: str) -> None:
    """funcgrad.nn layers (static fields holding activations included) load without like=."""
    from funcgrad import nn

    key = fg.random.key(0)
    model = {
        "mlp": nn.MLP(3, [4], 2, activation=torch.tanh, key=key),
        "seq": nn.Sequential(nn.Linear(2, 2, key=key), nn.Lambda(nn.gelu)),
        "norm": nn.LayerNorm(3),
    }
    out = round_trip(path, model)
    assert_identical(out, model)
    assert out["mlp"].activation is torch.tanh
    x = torch.randn(5, 3)
    assert_identical(out["mlp"](x), model["mlp"](x))


DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex128,
    torch.complex64, torch.complex32, torch.bool, torch.int8, torch.int16, torch.int32,
    torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn,
    torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
]  # fmt: skip


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random bit patterns (NaN payloads, infinities, subnormals) of any dtype."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    size = dtype.itemsize
    raw = torch.randint(0, 256, (n * size,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (5,), (2, 3, 4)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_exactly(path: str, dtype: torch.dtype, shape: Any) -> None:
    """Every dtype and shape (0-d, empty) comes back byte for byte."""
    tree = {"x": random_tensor(shape, dtype, seed=len(shape)), "y": [random_tensor((2,), dtype, 9)]}
    assert_identical(round_trip(path, tree), tree)


@pytest.mark.parametrize(
    "make",
    [
        lambda w: w.t(),
        lambda w: w[:, ::2],
        lambda w: w[1:, 1],
        lambda w: w[0].expand(4, 3, 6),
        lambda w: torch.as_strided(w, (2, 2), (1, 6)),
        lambda w: w.to(torch.complex64).conj(),
        lambda w: w.to(torch.complex128).conj().imag,
        lambda w: w.bfloat16().t(),
    ],
    ids=["transpose", "step", "column", "expand", "as_strided", "conj", "neg_bit", "bf16_t"],
)
def test_non_contiguous_tensors(path: str, make: Any) -> None:
    """Strided, expanded, conjugated and negated views are stored as their values."""
    x = make(torch.arange(24.0).reshape(4, 6))
    out = round_trip(path, {"x": x})["x"]
    assert out.is_contiguous()
    assert not out.is_conj()
    assert not out.is_neg()
    assert_identical(out, x.resolve_conj().resolve_neg().contiguous())


def test_shared_tensors_are_stored_once_and_come_back_shared(path: str) -> None:
    """NOTE [shared tensors]: one tensor (or one identical view) at several places is one tensor
    after loading; overlapping but different views are separate copies."""
    w = torch.arange(6.0).reshape(2, 3)
    tree = {"embed": w, "unembed": w, "same_view": w.view(2, 3), "row": w[0], "t": w.t()}
    out = round_trip(path, tree)
    assert out["embed"] is out["unembed"] is out["same_view"]
    assert sorted(safetensors_torch.load_file(path)) == ["embed", "row", "t"]
    out["row"].zero_()
    assert_identical(out["embed"], w)
    assert_identical(out["t"], w.t().contiguous())


# --------------------------------------------------------------------------------------------
# Non-tensor leaves and node types
# --------------------------------------------------------------------------------------------


@io.register_type
class Empty(NamedTuple):
    pass


def test_non_tensor_leaves_and_containers(path: str) -> None:
    """Scalars keep their exact type and value (NaN, -0.0, big ints, unicode); every built-in
    node keeps its type, order and extras (OrderedDict, defaultdict factory, deque maxlen)."""
    tree = {
        "zeta": [True, False, 0, -(2**100), 5e-324, -0.0, float("nan"), float("inf"), None],
        "alpha": ("", 'q"uo\\te', "日本\n\x00", None, 1.5 - 2j, -math.inf),
        "types": [torch.bfloat16, torch.device("cpu"), torch.device("cuda", 1), float, Empty()],
        "od": collections.OrderedDict([("b", 1), ("a", 2)]),
        "dd": collections.defaultdict(list, {3: [1], 1: []}),
        "dd_none": collections.defaultdict(None, {"x": 1}),
        "dq": collections.deque([torch.ones(1), "x"], maxlen=5),
        "keys": {7: "int", 2.5: "float", True: "bool", None: "none", "s": "str"},
        "nodes": [Layer(torch.ones(2), None, activation="gelu"), Frozen(torch.zeros(1), 3.0)],
    }
    assert_identical(round_trip(path, tree), tree)
    assert_identical(io.load(path, like=tree), tree)


@pytest.mark.parametrize("tree", [None, {}, [], (), Empty(), [None, {}], 0, "s"])
def test_trees_without_tensors(path: str, tree: Any) -> None:
    """Trees with no tensors (None itself, empty containers, a bare scalar) round-trip."""
    assert_identical(round_trip(path, tree), tree)
    assert safetensors_torch.load_file(path) == {}


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.complex_numbers(allow_nan=False),
)
TENSORS = st.builds(
    lambda dtype, shape, seed, t: (
        random_tensor(shape, dtype, seed).mT if t else random_tensor(shape, dtype, seed)
    ),
    st.sampled_from(DTYPES),
    helpers.shapes(min_dims=2),
    helpers.seeds,
    st.booleans(),
)


@given(helpers.trees(st.one_of(helpers.tensors(), TENSORS, SCALARS)), st.booleans())
@settings(max_examples=40)
def test_round_trip_property(tmp_path_factory: Any, tree: Any, like: bool) -> None:
    """load(save(tree)) is tree, for trees of every node kind with any leaves."""
    p = str(tmp_path_factory.mktemp("h") / "t.safetensors")
    assert_identical(round_trip(p, tree, like=tree if like else None), tree)


@given(helpers.nonempty_trees(), st.data())
@settings(max_examples=25)
def test_like_reports_exactly_the_changed_leaves(tmp_path_factory: Any, tree: Any, data: Any) -> None:  # fmt: skip
    """Changing the shape of some leaves of the template reports those paths, and only those."""
    p = str(tmp_path_factory.mktemp("h") / "t.safetensors")
    io.save(p, tree)
    accessors = optree.tree_accessors(tree, namespace="funcgrad")
    changed = data.draw(st.sets(st.integers(0, len(accessors) - 1), min_size=1))
    leaves, treedef = fg.tree.flatten(tree)
    bad = [torch.zeros(*x.shape, 7) if i in changed else x for i, x in enumerate(leaves)]
    with pytest.raises(ValueError, match="does not match like=") as e:
        io.load(p, like=fg.tree.unflatten(treedef, bad))
    lines = [line for line in str(e.value).splitlines() if line.startswith("  tree")]
    assert all(", 7) in like" in line or "(7,) in like" in line for line in lines)
    assert {line.split(": ")[0].strip() for line in lines} == {
        accessors[i].codify("tree") for i in changed
    }


def test_like_lists_every_mismatch_by_path(path: str) -> None:
    """One error lists every kind of difference, each with its tree path."""
    saved = {
        "w": torch.zeros(2, 3),
        "d": torch.zeros(2, dtype=torch.int64),
        "keys": {"a": 1, "b": 2},
        "seq": [1, 2],
        "kind": (1,),
        "nt": Point(1, 2),
        "layer": Layer(torch.ones(1), torch.ones(1), activation="relu"),
        "n": 1,
        "opt": optim.adam(0.1).init({"w": torch.zeros(1)}),
    }
    like = {
        **saved,
        "w": torch.zeros(3, 2),
        "d": torch.zeros(2, dtype=torch.int32),
        "keys": {"a": 1, "c": 2},
        "seq": [1, 2, 3],
        "kind": [1],
        "nt": helpers.Point(1, "two"),
        "layer": Layer(torch.ones(1), torch.ones(1), activation="tanh"),
        "n": 1.0,
        "opt": optim.sgd(0.1, momentum=0.9).init({"w": torch.zeros(1)}),
    }
    io.save(path, saved)
    with pytest.raises(ValueError, match="at 9 places") as e:
        io.load(path, like=like)
    lines = str(e.value).splitlines()
    for expected in [
        "  tree['w']: a float32 tensor of shape (3, 2) in like, "
        "a float32 tensor of shape (2, 3) in the file",
        "  tree['d']: an int32 tensor of shape (2,) in like, an int64 tensor of shape (2,) in the file",
        "  tree['keys']: entries missing in the file: ['c']; entries only in the file: ['b']",
        "  tree['seq']: a list of length 3 in like, of length 2 in the file",
        "  tree['kind']: a list in like, a tuple in the file",
        "  tree['nt'].y: the str 'two' in like, the int 2 in the file",
        "  tree['layer']: static fields ('tanh',) in like, ('relu',) in the file",
        "  tree['n']: the float 1.0 in like, the int 1 in the file",
        "  tree['opt'][1]: a funcgrad.optim:TraceState in like, "
        "a funcgrad.optim:ScaleByAdamState in the file",
    ]:
        assert expected in lines, (expected, lines)


def test_like_places_tensors_on_the_template_devices(path: str) -> None:
    """device= moves every tensor; with like=, each goes to its template leaf's device."""
    tree = {"a": torch.ones(2), "b": [torch.zeros(3, dtype=torch.int8)], "c": 1}
    io.save(path, tree)
    assert all(x.device.type == "meta" for x in fg.tree.leaves(io.load(path, device="meta"))[:2])
    like = {"a": torch.empty(2, device="meta"), "b": [torch.empty(3, dtype=torch.int8)], "c": 0}
    out = io.load(path, like=like)
    assert out["a"].device.type == "meta"
    assert out["c"] == 1
    assert_identical(out["b"], tree["b"])
    assert io.load(path, like=like, device="cpu")["a"].device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors(path: str) -> None:
    """CUDA tensors save from the GPU and load onto device= or the template's device."""
    tree = {"w": torch.randn(3, 4, device="cuda"), "b": torch.randn(2)}
    io.save(path, tree)
    out = io.load(path, device="cuda")
    assert all(x.is_cuda for x in fg.tree.leaves(out))
    assert_identical(io.load(path, like=tree), tree)


# --------------------------------------------------------------------------------------------
# Type names: registration, and loading never imports
# --------------------------------------------------------------------------------------------


class Unregistered(NamedTuple):
    a: Any
    b: Any


def test_unregistered_types_need_like_or_registration(path: str) -> None:
    """An unknown name is an error saying how to register it; like= or register_type fixes it."""
    tree = {"x": Unregistered(torch.ones(1), 2), "f": os.path.join}
    io.save(path, tree)
    name = f"{__name__}:Unregistered"
    with pytest.raises(io.CheckpointError, match=rf"not registered: '{name}' \(at tree\['x'\]\), 'posixpath:join'.*register_type\(cls, name='{name}'\)"):  # fmt: skip
        io.load(path)
    assert_identical(io.load(path, like=tree), tree)
    io.register_type(Unregistered)
    io.register_type(os.path.join)
    assert_identical(io.load(path), tree)


@pytest.mark.parametrize("module", ["antigravity", "os", "this"])
def test_loading_never_imports_the_named_module(path: str, module: str) -> None:
    """A file naming "antigravity:fly" (or "os:system") fails before anything is imported."""

    class system(NamedTuple):
        x: Any

    system.__module__, system.__qualname__ = module, "system"
    io.save(path, {"payload": system(1)})
    before = set(sys.modules)
    with pytest.raises(io.CheckpointError, match=f"'{module}:system'.*never imports"):
        io.load(path)
    assert set(sys.modules) == before


def test_register_type_aliases_and_errors(path: str) -> None:
    """A second name keeps old files loadable; conflicting or invalid names are errors."""

    class Renamed(NamedTuple):
        v: Any

    io.register_type(Renamed, name="old.place:Renamed")
    io.save(path, Renamed(1))
    io.register_type(Renamed, name="new.place:Renamed")
    assert io.load(path) == Renamed(1)
    assert io.read_metadata(path) == {}
    with pytest.raises(ValueError, match=r"'old.place:Renamed' is already registered"):
        io.register_type(Unregistered, name="old.place:Renamed")
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        io.register_type(Renamed, name="")
    with pytest.raises(TypeError, match="has no __module__ and __qualname__"):
        io.register_type(object())


# --------------------------------------------------------------------------------------------
# Unsupported values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "match"),
    [
        ({"x": object()}, r"cannot store a value of type object \(<object.*at tree\['x'\]"),
        ([{1, 2}], r"type set .* at tree\[0\]. Leaves must be tensors"),
        ({"n": __import__("numpy").float32(1)}, r"type float32 .*convert NumPy values"),
        ({(1, 2): torch.ones(1)}, r"cannot store the dict key \(1, 2\) at tree\[\(1, 2\)\]"),
        (
            {"s": torch.ones(2).to_sparse()},
            r"a torch.sparse_coo torch.float32 tensor on cpu at tree\['s'\]",
        ),
        ({"m": torch.ones(2, device="meta")}, r"tensor on meta at tree\['m'\]. Only dense"),
        (
            {"q": torch.zeros(1, dtype=torch.uint8).view(torch.float8_e8m0fnu)},
            r"dtype torch.float8_e8m0fnu at tree\['q'\]",
        ),
        (Layer(torch.ones(1), None, activation=torch.ones(1)), r"a tensor in a static field"),
        ([functools.partial(int, 2)], r"type partial \(functools.partial\(<class 'int'>, 2\)\)"),
    ],
)
def test_unsupported_values_are_rejected_by_path(path: str, tree: Any, match: str) -> None:
    """Values without a safe encoding are a TypeError naming the path; nothing is written."""
    with pytest.raises(TypeError, match=match):
        io.save(path, tree)
    assert os.listdir(os.path.dirname(path)) == []


def test_metadata_is_stored_and_validated(path: str) -> None:
    """metadata= strings land in __metadata__ (visible to safetensors); others are errors."""
    from safetensors import safe_open

    io.save(path, [torch.ones(1)], metadata={"run": "a", "lr": "0.1"})
    assert io.read_metadata(path) == {"run": "a", "lr": "0.1"}
    with safe_open(path, framework="pt") as f:
        assert {"run", "funcgrad.format", "funcgrad.tree"} <= set(f.metadata())
    with pytest.raises(TypeError, match=r"metadata must map str to str.*'lr': 0.1"):
        io.save(path, [], metadata={"lr": 0.1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"'funcgrad\.tree' is reserved"):
        io.save(path, [], metadata={"funcgrad.tree": "x"})


# --------------------------------------------------------------------------------------------
# Interop with the safetensors library
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_safetensors_reads_our_files(path: str, dtype: torch.dtype) -> None:
    """Our files open with safetensors.torch.load_file; tensors are named by their tree path;
    complex128/complex32 (no safetensors dtype) appear as their real view (NOTE)."""
    x = random_tensor((3, 2), dtype, seed=4)
    io.save(path, {"params": {"w": x}, "opt": [x[0]]})
    theirs = safetensors_torch.load_file(path)
    assert sorted(theirs) == ["opt.0", "params.w"]
    expected = torch.view_as_real(x) if dtype in (torch.complex128, torch.complex32) else x
    assert_identical(theirs["params.w"], expected)


def test_we_read_safetensors_files(tmp_path: Any) -> None:
    """A plain safetensors file (Hugging Face weights) loads as a flat dict sorted by name, or
    into a template's structure by dotted names, checked like any template."""
    p = str(tmp_path / "model.safetensors")
    weights = {f"h.{i}.{n}": random_tensor((2, 3), d, i) for i, d in enumerate(DTYPES[:6]) for n in ("weight", "bias") if d != torch.complex128}  # fmt: skip
    weights["h.0.weight"] = torch.randn(4, 4).t()
    safetensors_torch.save_file({k: v.contiguous() for k, v in weights.items()}, p, metadata={"format": "pt"})  # fmt: skip
    out = io.load(p)
    assert list(out) == sorted(weights)
    assert_identical(out, {k: weights[k].contiguous() for k in sorted(weights)})
    assert io.read_metadata(p) == {"format": "pt"}
    template = {
        "h": [{"weight": torch.empty(4, 4), "bias": torch.empty(2, 3, dtype=torch.float64)}]
    }
    pair = {"h.0.weight": weights["h.0.weight"].contiguous(), "h.0.bias": weights["h.0.bias"]}
    safetensors_torch.save_file(pair, p)
    assert_identical(io.load(p, like=template), {"h": [{"weight": pair["h.0.weight"], "bias": pair["h.0.bias"]}]})  # fmt: skip
    with pytest.raises(ValueError, match=r"at 3 places(.|\n)*tree\['h'\]\[0\]\['weight'\]: a float32 tensor of shape \(4, 5\) in like, a float32 tensor of shape \(4, 4\)(.|\n)*no tensor named 'h.0.b'(.|\n)*not in like: \['h.0.bias'\]"):  # fmt: skip
        io.load(
            p,
            like={
                "h": [{"weight": torch.empty(4, 5), "b": torch.empty(2, 3, dtype=torch.float64)}]
            },
        )


# --------------------------------------------------------------------------------------------
# Integrity: truncated, bit-flipped and foreign files
# --------------------------------------------------------------------------------------------


def _saved(path: str) -> bytes:
    tree = {"w": torch.randn(64, 8), "flags": torch.tensor([True, False]), "step": 3, "n": "x"}
    io.save(path, tree, metadata={"note": "n"})
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("keep", [0, 5, 8, 40, -2049, -1])
def test_truncated_files_are_rejected(path: str, keep: int) -> None:
    """A file cut anywhere (empty, in the length, in the header, in the data) names itself."""
    data = _saved(path)
    _write(path, data[:keep])
    with pytest.raises(io.CheckpointError, match=f"{path} is (not a valid safetensors|truncated)"):  # fmt: skip
        io.load(path)


def test_every_flipped_bit_in_the_header_and_sampled_data_bits_are_detected(path: str) -> None:
    """Each single-bit flip in the length and header, and in 200 random data positions, is a
    CheckpointError, never a silently different tree."""
    data = _saved(path)
    (n,) = struct.unpack("<Q", data[:8])
    rng = random.Random(0)
    positions = [(i // 8, i % 8) for i in range(64)]
    positions += [(i, rng.randrange(8)) for i in range(8, 8 + n)]
    positions += [(rng.randrange(8 + n, len(data)), rng.randrange(8)) for _ in range(200)]
    for byte, bit in positions:
        flipped = bytearray(data)
        flipped[byte] ^= 1 << bit
        _write(path, bytes(flipped))
        with pytest.raises(io.CheckpointError, match=path):
            io.load(path)


def test_damage_messages(path: str) -> None:
    """The messages say which part is damaged."""
    data = _saved(path)
    flipped = bytearray(data)
    flipped[-1] ^= 1
    _write(path, bytes(flipped))
    with pytest.raises(io.CheckpointError, match="checksum of its tensor data does not match"):
        io.load(path)
    _write(path, data.replace(b'\\"step\\",3', b'\\"step\\",4'))
    with pytest.raises(io.CheckpointError, match="checksum of its header does not match"):
        io.load(path)
    _write(path, data + b"\x00")
    with pytest.raises(io.CheckpointError, match="truncated or has trailing bytes"):
        io.load(path)


def _funcgrad_meta_file(path: str, **meta: str) -> None:
    safetensors_torch.save_file({"x": torch.ones(1)}, path, metadata=meta)


def test_foreign_and_inconsistent_files(tmp_path: Any) -> None:
    """Not safetensors (text, torch.save zip), unknown dtypes, partial or future funcgrad
    metadata: each a CheckpointError naming the file."""
    p = str(tmp_path / "f.bin")
    _write(p, b"hello world, this is not a checkpoint")
    with pytest.raises(io.CheckpointError, match=f"{p} is not a valid safetensors file"):
        io.load(p)
    torch.save({"x": torch.ones(2)}, p)
    assert zipfile.is_zipfile(p)
    with pytest.raises(io.CheckpointError, match=r"torch\.save writes zip files"):
        io.load(p)
    header = json.dumps({"x": {"dtype": "F4", "shape": [1], "data_offsets": [0, 1]}}).encode()
    _write(p, struct.pack("<Q", len(header)) + header + b"\x00")
    with pytest.raises(io.CheckpointError, match="has dtype 'F4', which this torch build"):
        io.load(p)
    _funcgrad_meta_file(p, **{"funcgrad.format": "1", "funcgrad.tree": '{"tensor": "x"}'})
    with pytest.raises(io.CheckpointError, match=r"corrupted: its funcgrad metadata has the keys \['funcgrad.format', 'funcgrad.tree'\]"):  # fmt: skip
        io.load(p)
    _funcgrad_meta_file(p, **{"funcgrad.format": "2"})
    with pytest.raises(io.CheckpointError, match=r"has checkpoint format 2; .*Upgrade funcgrad"):
        io.load(p)
    with open(p, "wb") as f:  # a valid checksum over a malformed tree
        _st_write(f, {"tensor": "y"})
    with pytest.raises(io.CheckpointError, match="malformed tree structure"):
        io.load(p)


def _st_write(f: Any, tree_json: Any) -> None:
    from funcgrad import _safetensors

    meta = {"funcgrad.format": "1", "funcgrad.tree": json.dumps(tree_json)}
    _safetensors.write(f, {"x": torch.ones(1)}, meta, "funcgrad.checksum")


def test_failed_save_keeps_the_old_file_and_no_temporary(path: str, monkeypatch: Any) -> None:
    """An exception in the middle of writing removes the temporary; the old file stays."""
    io.save(path, {"v": torch.ones(3)})

    def broken(*args: Any, **kwargs: Any) -> None:
        args[0].write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("funcgrad._safetensors.write", broken)
    with pytest.raises(OSError, match="disk full"):
        io.save(path, {"v": torch.zeros(3)})
    assert os.listdir(os.path.dirname(path)) == ["tree.safetensors"]
    assert_identical(io.load(path), {"v": torch.ones(3)})
