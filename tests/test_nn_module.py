"""Tests for ``funcgrad/nn/_module.py``: the ``Module`` base and what every layer shares.

Every layer is a pytree whose leaves are exactly its tensors (configuration static), survives
``fg.tree.map`` with its type and configuration, is reproducible from its key, checks its key;
``replace`` and the repr; a model of fg.nn layers under ``torch.compile``; errors by message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import helpers
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import nn, random
from funcgrad.testing import assert_trees_allclose

F64 = torch.float64

# Each entry builds a layer from a key (layers without random initialisation ignore it).
LAYERS: dict[str, Callable[[torch.Tensor], Any]] = {
    "Linear": lambda k: nn.Linear(3, 4, key=k),
    "Conv1d": lambda k: nn.Conv1d(2, 4, 3, key=k),
    "Conv2d": lambda k: nn.Conv2d(2, 4, 3, groups=2, key=k),
    "Embedding": lambda k: nn.Embedding(5, 3, key=k),
    "LayerNorm": lambda k: nn.LayerNorm(3),
    "RMSNorm": lambda k: nn.RMSNorm(3),
    "BatchNorm": lambda k: nn.BatchNorm(3),
    "Dropout": lambda k: nn.Dropout(0.2),
    "MultiheadAttention": lambda k: nn.MultiheadAttention(4, 2, key=k),
    "GRUCell": lambda k: nn.GRUCell(3, 2, key=k),
    "LSTMCell": lambda k: nn.LSTMCell(3, 2, key=k),
    "MLP": lambda k: nn.MLP(3, [4], 2, key=k),
    "Sequential": lambda k: nn.Sequential(nn.Linear(3, 3, key=k), nn.relu),
    "MaxPool2d": lambda k: nn.MaxPool2d(2),
    "AvgPool2d": lambda k: nn.AvgPool2d(2),
    "AdaptiveAvgPool2d": lambda k: nn.AdaptiveAvgPool2d(1),
    "Flatten": lambda k: nn.Flatten(),
}
KEYED = [
    "Linear",
    "Conv1d",
    "Conv2d",
    "Embedding",
    "MultiheadAttention",
    "GRUCell",
    "LSTMCell",
    "MLP",
]


def tensors_of(layer: Any) -> list[torch.Tensor]:
    """The tensors reachable through the layer's dataclass fields (not through the pytree)."""
    found = []
    for f in dataclasses.fields(layer):
        value = getattr(layer, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, torch.Tensor):
                found.append(v)
            elif isinstance(v, nn.Module):
                found.extend(tensors_of(v))
    return found


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_is_a_pytree_of_its_tensors(name: str) -> None:
    """The leaves are exactly the layer's tensors; tree.map keeps the type and configuration;
    the structure holds the configuration (two layers built alike share it)."""
    layer = LAYERS[name](random.key(0))
    leaves = fg.tree.leaves(layer)
    assert sorted(map(id, leaves)) == sorted(map(id, tensors_of(layer)))
    mapped = fg.tree.map(lambda x: x + 1 if x.is_floating_point() else x, layer)
    assert type(mapped) is type(layer)
    assert fg.tree.structure(mapped) == fg.tree.structure(layer)
    for f in dataclasses.fields(layer):
        if f.metadata.get("static"):
            assert getattr(mapped, f.name) == getattr(layer, f.name)
    assert fg.tree.structure(LAYERS[name](random.key(1))) == fg.tree.structure(layer)


@pytest.mark.parametrize("name", KEYED)
def test_layer_init_is_reproducible(name: str) -> None:
    """The same key gives bit-identical parameters; another key different ones."""
    a, b, c = (LAYERS[name](random.key(s)) for s in (7, 7, 8))
    assert fg.tree.equal(a, b)
    assert not any(
        torch.equal(x, y) for x, y in zip(fg.tree.leaves(a), fg.tree.leaves(c)) if x.any()
    )


@pytest.mark.parametrize("name", KEYED)
def test_layer_key_errors(name: str) -> None:
    """A non-key, a key of the wrong dtype, and a batch of keys are refused, naming the layer."""
    with pytest.raises(
        TypeError,
        match=rf"nn\.{name}: key must be a PRNG key \(a torch.uint32 tensor of shape \(2,\) from funcgrad.random.key\(seed\) or split\), got int \(0\)",
    ):
        LAYERS[name](0)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=rf"nn\.{name}: key must be a PRNG key .* got a torch.int64 tensor of shape \(2,\)\.$",
    ):
        LAYERS[name](torch.zeros(2, dtype=torch.long))
    with pytest.raises(
        ValueError,
        match=rf"nn\.{name}: .* got a torch.uint32 tensor of shape \(3, 2\)\. That is a batch of keys",
    ):
        LAYERS[name](random.split(random.key(0), 3))


# Layers whose call takes one batched input, with the shape of one example.
BATCHABLE: dict[str, tuple[Callable[[torch.Tensor], Any], tuple[int, ...]]] = {
    "Linear": (lambda k: nn.Linear(3, 4, key=k, dtype=F64), (3,)),
    "Conv1d": (lambda k: nn.Conv1d(2, 4, 3, padding=1, key=k, dtype=F64), (2, 6)),
    "Conv2d": (lambda k: nn.Conv2d(2, 4, 3, stride=2, key=k, dtype=F64), (2, 5, 5)),
    "LayerNorm": (lambda k: nn.LayerNorm(3, dtype=F64), (2, 3)),
    "RMSNorm": (lambda k: nn.RMSNorm(3, dtype=F64), (3,)),
    "MaxPool2d": (lambda k: nn.MaxPool2d(2), (1, 4, 4)),
    "MultiheadAttention": (lambda k: nn.MultiheadAttention(4, 2, key=k, dtype=F64), (3, 4)),
    "GRUCell": (lambda k: nn.GRUCell(3, 2, key=k, dtype=F64), (3,)),
    "MLP": (lambda k: nn.MLP(3, [5], 2, key=k, dtype=F64), (3,)),
}


@settings(max_examples=10)
@given(name=st.sampled_from(sorted(BATCHABLE)), batch=st.integers(1, 4), seed=helpers.seeds)
def test_vmap_over_examples_equals_the_batched_call(name: str, batch: int, seed: int) -> None:
    """Batching law: fg.vmap of a layer over examples equals the layer on the batch."""
    build, shape = BATCHABLE[name]
    layer = build(random.key(seed % 1000))
    xs = helpers.t(batch, *shape, seed=seed)
    assert_trees_allclose(fg.vmap(layer)(xs), layer(xs), rtol=1e-10, atol=1e-12)


def test_replace_returns_a_changed_copy() -> None:
    """replace changes the copy only; unknown fields and shape changes are refused."""
    layer = nn.Linear(2, 3, key=random.key(0))
    new = layer.replace(bias=torch.zeros(3))
    assert new.bias is not None
    assert not new.bias.any()
    assert layer.bias is not None
    assert layer.bias.any()
    assert new.weight is layer.weight
    with pytest.raises(
        TypeError,
        match=r"nn\.Linear\.replace: Linear has no fields \['weights'\]; its fields are \['bias', 'in_features', 'out_features', 'weight'\]",
    ):
        layer.replace(weights=torch.zeros(3, 2))
    with pytest.raises(
        ValueError,
        match=r"nn\.Linear\.replace: weight has shape \(3, 2\), got a tensor of shape \(2, 3\)",
    ):
        layer.replace(weight=torch.zeros(2, 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.weight = torch.zeros(3, 2)  # type: ignore[misc]


def test_repr_summarises_tensors() -> None:
    """The repr shows the configuration, then tensors as dtype[shape]; functions by name."""
    assert repr(nn.Linear(2, 3, bias=False, key=random.key(0), dtype=F64)) == (
        "Linear(in_features=2, out_features=3, weight=f64[3,2], bias=None)"
    )
    assert repr(nn.MLP(1, [], 1, key=random.key(0))) == (
        "MLP(activation=relu, layers=(Linear(in_features=1, out_features=1, weight=f32[1,1], bias=f32[1]),))"
    )


@fg.tree.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ConvNet(nn.Module):
    conv: nn.Conv2d
    bn: nn.BatchNorm
    head: nn.Linear

    def __call__(self, x: torch.Tensor, state: nn.BatchNormState, *, train: bool) -> Any:
        h, state = self.bn(self.conv(x), state, train=train)
        h = nn.AdaptiveAvgPool2d(1)(nn.relu(h)).flatten(1)
        return self.head(h), state


def test_user_model_of_layers_under_grad_and_compile() -> None:
    """A user model subclassing Module: a train step (fg.grad with the BatchNorm state as
    auxiliary data) jits (aot_eager, one graph) and equals eager."""
    keys = random.split(random.key(0), 2)
    model = ConvNet(
        nn.Conv2d(2, 4, 3, key=keys[0], dtype=F64),
        nn.BatchNorm(4, dtype=F64),
        nn.Linear(4, 3, key=keys[1], dtype=F64),
    )
    x, y = helpers.t(5, 2, 6, 6, seed=1), torch.arange(5) % 3

    def step(model: ConvNet, state: nn.BatchNormState) -> Any:
        def loss(m: ConvNet) -> Any:
            out, new_state = m(x, state, train=True)
            return nn.cross_entropy(out, y), new_state

        return fg.grad(loss, has_aux=True)(model)

    compiled = fg.jit(step, backend="aot_eager")
    state = model.bn.init_state()
    assert_trees_allclose(compiled(model, state), step(model, state), rtol=1e-10, atol=1e-12)
    assert compiled.compile_count == 1


def test_dtype_errors() -> None:
    """A non-floating dtype is refused by every layer that takes one."""
    with pytest.raises(
        TypeError, match=r"nn\.Conv2d: dtype must be a floating-point torch.dtype, got torch.int32"
    ):
        nn.Conv2d(1, 1, 1, key=random.key(0), dtype=torch.int32)
    with pytest.raises(
        TypeError, match=r"nn\.LayerNorm: dtype must be a floating-point torch.dtype, got 'float32'"
    ):
        nn.LayerNorm(2, dtype="float32")  # type: ignore[arg-type]
