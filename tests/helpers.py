"""The shared corpus of pytrees, hypothesis strategies and JAX bridges used by every test module."""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

import funcgrad as fg

# --------------------------------------------------------------------------------------------
# Node types
# --------------------------------------------------------------------------------------------


class Point(NamedTuple):
    x: Any
    y: Any


@fg.tree.register_dataclass
@dataclasses.dataclass
class Layer:
    """A registered dataclass: two data fields and a static one."""

    weight: Any
    bias: Any
    activation: str = dataclasses.field(default="tanh", metadata={"static": True})


@fg.tree.register_dataclass
@dataclasses.dataclass(frozen=True)
class Frozen:
    """A frozen registered dataclass with a custom ``__post_init__`` check."""

    value: Any
    scale: float = dataclasses.field(default=1.0, metadata={"static": True})

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ValueError("scale must be positive")


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


def t(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A deterministic random tensor (never reads the global RNG)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype)


def corpus() -> list[Any]:
    """Trees of float64 tensors covering every built-in node type and registered dataclasses."""
    return [
        t(3, seed=1),
        t(seed=2),
        (t(2, seed=3), t(2, 3, seed=4)),
        [t(4, seed=5), [t(1, seed=6), t(2, 2, seed=7)]],
        {"w": t(3, 2, seed=8), "b": t(2, seed=9)},
        {"layer1": {"w": t(2, 2, seed=10), "b": None}, "layer2": [t(2, seed=11)]},
        Point(t(2, seed=12), {"z": t(seed=13)}),
        collections.OrderedDict([("b", t(2, seed=14)), ("a", t(3, seed=15))]),
        Layer(t(3, 2, seed=16), t(2, seed=17), activation="relu"),
        [Layer(t(2, 2, seed=18), None), Frozen(t(3, seed=19), scale=2.0)],
        {"deep": ((t(1, seed=20),), [{"er": t(2, seed=21)}])},
    ]


CORPUS_IDS = [
    "tensor",
    "scalar",
    "tuple",
    "nested_list",
    "dict",
    "dict_with_none",
    "namedtuple",
    "ordereddict",
    "dataclass",
    "dataclasses_in_list",
    "deep",
]


# --------------------------------------------------------------------------------------------
# Hypothesis strategies
# --------------------------------------------------------------------------------------------

seeds = st.integers(min_value=0, max_value=2**31 - 1)


def shapes(
    min_dims: int = 0, max_dims: int = 3, max_side: int = 4
) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(st.integers(1, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


def tensors(
    shape: tuple[int, ...] | None = None, dtype: torch.dtype = torch.float64
) -> st.SearchStrategy[torch.Tensor]:
    """Normal random tensors drawn from a hypothesis-chosen seed (well scaled, reproducible)."""
    shape_st = st.just(shape) if shape is not None else shapes()
    return st.tuples(shape_st, seeds).map(lambda s: t(*s[0], seed=s[1], dtype=dtype))


def trees(
    leaves: st.SearchStrategy[Any] | None = None, max_leaves: int = 6
) -> st.SearchStrategy[Any]:
    """Pytrees of every node kind in the corpus, with leaves drawn from ``leaves``."""
    leaf = leaves if leaves is not None else tensors()

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        keys = st.text("abcdefgh", min_size=1, max_size=3)
        return st.one_of(
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(keys, children, max_size=3),
            st.tuples(children, children).map(lambda c: Point(*c)),
            st.tuples(children, children).map(lambda c: Layer(*c)),
        )

    return st.recursive(leaf, extend, max_leaves=max_leaves)


# --------------------------------------------------------------------------------------------
# JAX bridges
# --------------------------------------------------------------------------------------------


def require_jax() -> tuple[Any, Any]:
    """Imports JAX (float64, CPU); skips with a reason when absent, unless CI requires it."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:  # pragma: no cover - depends on the environment
        if os.environ.get("FUNCGRAD_REQUIRE_JAX"):
            raise
        pytest.skip("JAX is not installed; it is the reference for this numerics test")
    jax.config.update("jax_enable_x64", True)
    return jax, jnp


def to_jax(tree: Any) -> Any:
    """Tensors to JAX arrays (same dtype); the tree structure is kept (NamedTuples included)."""
    _, jnp = require_jax()
    return fg.tree.map(
        lambda x: jnp.asarray(x.detach().cpu().numpy()) if isinstance(x, torch.Tensor) else x, tree
    )


def to_torch(tree: Any) -> Any:
    """JAX/NumPy arrays to tensors; containers kept as they are."""
    return fg.tree.map(
        lambda x: torch.from_numpy(np.array(x)) if hasattr(x, "__array__") else x, tree
    )
