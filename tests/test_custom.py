"""Tests for ``funcgrad.stop_gradient``, against ``jax.lax.stop_gradient`` in float64."""

from __future__ import annotations

from typing import Any

import helpers
import pytest
import torch
from helpers import Point, t
from hypothesis import given

import funcgrad as fg
from funcgrad.testing import assert_trees_allclose

sg = fg.stop_gradient


def _random_like(tree: Any, seed: int) -> Any:
    leaves, treedef = fg.tree.flatten(tree)
    return fg.tree.unflatten(treedef, [t(*x.shape, seed=seed + i) for i, x in enumerate(leaves)])


def _has_leaves(tree: Any) -> bool:
    return len(fg.tree.leaves(tree)) > 0


# --------------------------------------------------------------------------------------------
# Values and structure
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tree", helpers.corpus(), ids=helpers.CORPUS_IDS)
def test_values_and_structure_unchanged(tree):
    """stop_gradient returns a tree of the same structure and values."""
    out = sg(tree)
    assert fg.tree.structure(out) == fg.tree.structure(tree)
    assert fg.tree.equal(out, tree)


def test_non_tensor_leaves_pass_through():
    """Ints, floats, strings, None and static dataclass fields are returned as they are."""
    marker = object()
    tree = {
        "x": t(2),
        "n": 3,
        "f": 1.5,
        "s": "name",
        "none": None,
        "obj": marker,
        "p": Point(t(seed=1), [2, "b"]),
        "layer": helpers.Layer(t(2, seed=2), 7, activation="relu"),
    }
    out = sg(tree)
    assert out["n"] == 3
    assert out["f"] == 1.5
    assert out["s"] == "name"
    assert out["none"] is None
    assert out["obj"] is marker
    assert out["p"].y == [2, "b"]
    assert out["layer"].bias == 7
    assert out["layer"].activation == "relu"
    assert fg.tree.equal(out, tree)


def test_does_not_mutate_and_detaches_from_autograd():
    """The input keeps requires_grad; the output carries no history; torch.autograd sees zero."""
    x = t(3).requires_grad_(True)
    y = sg({"x": x})["x"]
    assert x.requires_grad
    assert not y.requires_grad
    assert y.grad_fn is None
    (g,) = torch.autograd.grad((x * y).sum(), x)
    assert_trees_allclose(g, x.detach())


def test_leaves_are_not_copies():
    """stop_gradient is a view: no data is copied."""
    x = t(4)
    assert sg(x).data_ptr() == x.data_ptr()


# --------------------------------------------------------------------------------------------
# Derivatives against JAX
# --------------------------------------------------------------------------------------------


def _pair() -> tuple[Any, Any, Any, Any]:
    jax, jnp = helpers.require_jax()

    def f(x):
        return (x * sg(x) ** 2 + torch.sin(sg(x)) * torch.exp(x)).sum()

    def jf(x):
        s = jax.lax.stop_gradient
        return (x * s(x) ** 2 + jnp.sin(s(x)) * jnp.exp(x)).sum()

    return jax, jnp, f, jf


def test_grad_matches_jax():
    """Reverse mode treats the stopped value as a constant, like jax.lax.stop_gradient."""
    jax, _, f, jf = _pair()
    x = t(4, seed=3)
    assert_trees_allclose(fg.value_and_grad(f)(x), jax.value_and_grad(jf)(helpers.to_jax(x)))


def test_jvp_matches_jax():
    """Forward mode treats the stopped value as a constant."""
    jax, _, f, jf = _pair()
    x, v = t(4, seed=3), t(4, seed=4)
    assert_trees_allclose(fg.jvp(f, (x,), (v,)), jax.jvp(jf, *helpers.to_jax(((x,), (v,)))))


def test_second_order_matches_jax():
    """Hessian-vector products through stop_gradient (rev-rev and fwd-rev) equal JAX's."""
    jax, _, f, jf = _pair()
    x, v = t(4, seed=3), t(4, seed=5)
    jx, jv = helpers.to_jax((x, v))
    expected = jax.jvp(jax.grad(jf), (jx,), (jv,))[1]
    assert_trees_allclose(fg.jvp(fg.grad(f), (x,), (v,))[1], expected)
    assert_trees_allclose(fg.grad(lambda y: fg.tree.dot(fg.grad(f)(y), v))(x), expected)


def test_scalar_third_derivative_matches_jax():
    """grad(grad(grad(f))) with a stopped factor equals JAX's."""
    jax, jnp = helpers.require_jax()
    x = t(seed=6)

    def f(x):
        return x**3 * sg(torch.cos(x)) + torch.sin(x) * sg(x**2)

    def jf(x):
        s = jax.lax.stop_gradient
        return x**3 * s(jnp.cos(x)) + jnp.sin(x) * s(x**2)

    actual = fg.grad(fg.grad(fg.grad(f)))(x)
    assert_trees_allclose(actual, jax.grad(jax.grad(jax.grad(jf)))(helpers.to_jax(x)))


def test_stop_gradient_of_outer_variable_in_inner_transform_matches_jax():
    """A value of the outer grad stopped inside an inner grad/jvp is constant at every level."""
    jax, _ = helpers.require_jax()
    x, y0, one = t(seed=7), t(seed=8), torch.ones((), dtype=torch.float64)
    s = jax.lax.stop_gradient
    jx, jy0, jone = helpers.to_jax((x, y0, one))

    def inner_grad(x):
        return fg.grad(lambda y: y**2 * sg(x) * x)(y0)

    def jax_inner_grad(x):
        return jax.grad(lambda y: y**2 * s(x) * x)(jy0)

    def inner_jvp(x):
        return fg.jvp(lambda y: torch.sin(y) * sg(x) * x**2, (y0,), (one,))[1]

    def jax_inner_jvp(x):
        return jax.jvp(lambda y: jax.numpy.sin(y) * s(x) * x**2, (jy0,), (jone,))[1]

    assert_trees_allclose(fg.grad(inner_grad)(x), jax.grad(jax_inner_grad)(jx))
    assert_trees_allclose(fg.grad(inner_jvp)(x), jax.grad(jax_inner_jvp)(jx))
    assert_trees_allclose(fg.jvp(inner_grad, (x,), (one,)), jax.jvp(jax_inner_grad, (jx,), (jone,)))


def test_straight_through_estimator_matches_jax():
    """x + stop_gradient(round(x) - x) has the value round(x) and the gradient of x."""
    jax, jnp = helpers.require_jax()
    x = 3 * t(5, seed=9)

    def f(x):
        return (x + sg(torch.round(x) - x)).pow(2).sum()

    def jf(x):
        return (x + jax.lax.stop_gradient(jnp.round(x) - x)) ** 2

    actual = fg.value_and_grad(f)(x)
    expected = jax.value_and_grad(lambda x: jf(x).sum())(helpers.to_jax(x))
    assert_trees_allclose(actual, expected)
    assert_trees_allclose(actual[1], 2 * torch.round(x))


def test_pytree_params_partially_stopped_matches_jax():
    """Stopping one subtree of dict params zeroes its gradient; the rest equals JAX's."""
    jax, jnp = helpers.require_jax()
    params = {"w": t(3, 2, seed=10), "b": t(2, seed=11), "frozen": Point(t(2, seed=12), t())}
    x = t(6, 3, seed=13)

    def loss(params, x):
        frozen = sg(params["frozen"])
        h = torch.tanh(x @ params["w"] + params["b"]) * frozen.x
        return h.pow(2).mean() * frozen.y

    def jax_loss(params, x):
        frozen = jax.lax.stop_gradient(params["frozen"])
        h = jnp.tanh(x @ params["w"] + params["b"]) * frozen.x
        return (h**2).mean() * frozen.y

    actual = fg.grad(loss)(params, x)
    assert_trees_allclose(actual["frozen"], fg.tree.zeros_like(params["frozen"]))
    assert_trees_allclose(actual, jax.grad(jax_loss)(*helpers.to_jax((params, x))))


def test_per_example_gradients_with_stop_gradient_match_jax():
    """vmap(grad(f)) with a stopped term equals jax.vmap(jax.grad(f))."""
    jax, jnp = helpers.require_jax()
    w, xs = t(3, seed=14), t(5, 3, seed=15)

    def f(w, x):
        return torch.sin(x @ w) * sg(x @ w) ** 2

    def jf(w, x):
        return jnp.sin(x @ w) * jax.lax.stop_gradient(x @ w) ** 2

    actual = fg.vmap(fg.grad(f), in_axes=(None, 0))(w, xs)
    expected = jax.vmap(jax.grad(jf), in_axes=(None, 0))(*helpers.to_jax((w, xs)))
    assert_trees_allclose(actual, expected)


# --------------------------------------------------------------------------------------------
# Properties on random trees
# --------------------------------------------------------------------------------------------


@given(helpers.trees())
def test_identity_on_values(tree):
    """stop_gradient(tree) equals tree, leaf by leaf, with the same structure."""
    out = sg(tree)
    assert fg.tree.structure(out) == fg.tree.structure(tree)
    assert fg.tree.equal(out, tree)


@given(helpers.trees().filter(_has_leaves), helpers.seeds)
def test_zero_derivative_every_mode(tree, seed):
    """jvp, vjp and linearize of stop_gradient give zeros; the primal output is the input."""
    u = _random_like(tree, seed)
    zeros = fg.tree.zeros_like(tree)
    out, tangent = fg.jvp(sg, (tree,), (u,))
    assert_trees_allclose(out, tree)
    assert_trees_allclose(tangent, zeros)
    _, vjp_fn = fg.vjp(sg, tree)
    assert_trees_allclose(vjp_fn(u), (zeros,))
    _, jvp_fn = fg.linearize(sg, tree)
    assert_trees_allclose(jvp_fn(u), zeros)


@given(helpers.trees().filter(_has_leaves))
def test_grad_of_inner_product_with_stopped_copy(tree):
    """grad of <stop_gradient(x), x> is x (not 2x) and grad of the stopped norm is zero."""
    assert_trees_allclose(fg.grad(lambda x: fg.tree.dot(sg(x), x))(tree), tree)
    zero = fg.grad(lambda x: fg.tree.dot(sg(x), sg(x)))(tree)
    assert_trees_allclose(zero, fg.tree.zeros_like(tree))
