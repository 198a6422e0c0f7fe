"""Tests for ``funcgrad.tree.stack`` and ``funcgrad.tree.unstack`` (ensembles of pytrees).

Laws over the shared corpus and hypothesis trees: ``unstack(stack(ts)) == ts``, ``stack``'s
leaves are ``torch.stack`` of the trees' leaves, ``stack(unstack(t)) == t``; registered
dataclasses keep their static fields; errors name the tree and the leaf.
"""

from __future__ import annotations

from typing import Any

import helpers
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg


def scaled(tree: Any, k: float) -> Any:
    return fg.tree.map(lambda x: x * k + k, tree)


@pytest.mark.parametrize("tree", helpers.corpus(), ids=lambda t: type(t).__name__)
@pytest.mark.parametrize("n", [1, 3])
def test_unstack_inverts_stack_on_the_corpus(tree: Any, n: int) -> None:
    """unstack(stack(trees)) returns the trees; each stacked leaf is torch.stack of theirs."""
    trees = [scaled(tree, k) for k in range(n)]
    stacked = fg.tree.stack(trees)
    assert fg.tree.structure(stacked) == fg.tree.structure(tree)
    for leaf, *parts in zip(fg.tree.leaves(stacked), *(fg.tree.leaves(t) for t in trees)):
        assert torch.equal(leaf, torch.stack(parts))
    back = fg.tree.unstack(stacked)
    assert len(back) == n
    for a, b in zip(back, trees):
        assert fg.tree.equal(a, b)


@settings(max_examples=20)
@given(helpers.nonempty_trees(), st.integers(1, 3))
def test_stack_inverts_unstack(tree: Any, n: int) -> None:
    """stack(unstack(t)) == t for any tree whose leaves share a leading size."""
    tree = fg.tree.map(lambda x: x.expand(n, *x.shape).clone(), tree)
    assert fg.tree.equal(fg.tree.stack(fg.tree.unstack(tree)), tree)


def test_stack_keeps_static_fields() -> None:
    """A registered dataclass's static fields stay in the structure of the stacked tree."""
    layers = [
        helpers.Layer(helpers.t(2, seed=i), helpers.t(1, seed=i), activation="relu")
        for i in range(2)
    ]
    stacked = fg.tree.stack(layers)
    assert isinstance(stacked, helpers.Layer)
    assert stacked.activation == "relu"
    assert stacked.weight.shape == (2, 2)


def test_stack_errors() -> None:
    """Empty input, different structures, shapes, dtypes and non-tensor leaves are named."""
    with pytest.raises(
        ValueError,
        match=r"tree\.stack: expected a non-empty sequence \(list or tuple\) of trees, got \[\]",
    ):
        fg.tree.stack([])
    with pytest.raises(
        ValueError,
        match=r"tree\.stack: tree 1 has structure .* but tree 0 has .*; stack needs trees of one structure",
    ):
        fg.tree.stack([{"a": torch.ones(1)}, {"b": torch.ones(1)}])
    with pytest.raises(
        ValueError,
        match=r"tree\.stack: the leaf at tree\['w'\]\[1\] is a torch.float32 tensor of shape \(2,\) in tree 0 but a torch.float32 tensor of shape \(3,\) in tree 1",
    ):
        fg.tree.stack(
            [{"w": [torch.ones(1), torch.ones(2)]}, {"w": [torch.ones(1), torch.ones(3)]}]
        )
    with pytest.raises(
        ValueError,
        match=r"torch.float32 tensor of shape \(2,\) in tree 0 but a torch.float64 tensor",
    ):
        fg.tree.stack([torch.ones(2), torch.ones(2, dtype=torch.float64)])
    with pytest.raises(
        TypeError,
        match=r"tree\.stack: expected every leaf to be a torch\.Tensor, but the leaf at tree\['n'\] is int",
    ):
        fg.tree.stack([{"n": 1}, {"n": 2}])


def test_unstack_errors() -> None:
    """Mismatched leading sizes, scalar leaves and empty trees are named."""
    with pytest.raises(
        ValueError,
        match=r"tree\.unstack: every leaf needs the same leading axis size, but the leaf at tree\['b'\] does not match \(shapes: tree\['a'\]: \(2,\), tree\['b'\]: \(3,\)\)",
    ):
        fg.tree.unstack({"a": torch.ones(2), "b": torch.ones(3)})
    with pytest.raises(ValueError, match=r"the leaf at tree\[0\] does not match"):
        fg.tree.unstack([torch.tensor(1.0)])
    with pytest.raises(ValueError, match=r"tree\.unstack: the tree has no leaves"):
        fg.tree.unstack({"a": None})
