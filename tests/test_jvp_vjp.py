"""Tests for ``funcgrad.jvp``, ``funcgrad.vjp`` and ``funcgrad.linearize``.

Numbers are checked against JAX (float64, CPU), ``torch.autograd`` and finite differences.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import helpers
import pytest
import torch
from helpers import Point, t
from hypothesis import given, settings

import funcgrad as fg
from funcgrad.testing import assert_trees_allclose

# --------------------------------------------------------------------------------------------
# The same pytree-valued functions written twice, in torch and in jax.numpy
# --------------------------------------------------------------------------------------------


def _mlp_torch(params, x):
    h = torch.tanh(x @ params["w1"] + params["b1"])
    return {"hidden": h, "logits": h @ params["w2"] + params["b2"], "lse": torch.logsumexp(h, -1)}


def _mix_torch(x, y):
    return torch.sin(x) * torch.exp(y), torch.logsumexp(x @ y.T, dim=-1).sum()


def _namedtuple_torch(p, scale):
    return Point(torch.tanh(p.x * scale), {"z": p.y["z"] * scale.sum() ** 2})


def _nested_torch(tree, w):
    x, (m, z) = tree["a"]
    return [torch.sin(m @ (x * w)), (z * torch.cos(tree["b"].y), torch.exp(tree["b"].x * w))]


def _jax_functions(jax: Any, jnp: Any) -> dict[str, Callable[..., Any]]:
    def mlp(params, x):
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        return {"hidden": h, "logits": h @ params["w2"] + params["b2"], "lse": _lse(h)}

    def _lse(h):
        return jax.nn.logsumexp(h, axis=-1)

    def mix(x, y):
        return jnp.sin(x) * jnp.exp(y), jax.nn.logsumexp(x @ y.T, axis=-1).sum()

    def namedtuple(p, scale):
        return Point(jnp.tanh(p.x * scale), {"z": p.y["z"] * scale.sum() ** 2})

    def nested(tree, w):
        x, (m, z) = tree["a"]
        return [jnp.sin(m @ (x * w)), (z * jnp.cos(tree["b"].y), jnp.exp(tree["b"].x * w))]

    return {"mlp": mlp, "mix": mix, "namedtuple": namedtuple, "nested": nested}


TORCH_FUNCTIONS = {
    "mlp": _mlp_torch,
    "mix": _mix_torch,
    "namedtuple": _namedtuple_torch,
    "nested": _nested_torch,
}
CASES = list(TORCH_FUNCTIONS)


def _args(name: str) -> tuple[Any, ...]:
    if name == "mlp":
        params = {"w1": t(3, 4, seed=1), "b1": t(4, seed=2), "w2": t(4, 2, seed=3), "b2": t(2)}
        return (params, t(5, 3, seed=10))
    if name == "mix":
        return (t(3, 4, seed=20), t(3, 4, seed=21))
    if name == "namedtuple":
        return (Point(t(3, seed=30), {"z": t(seed=31)}), t(3, seed=32))
    if name == "nested":
        tree = {
            "a": [t(2, seed=40), (t(2, 2, seed=41), t(seed=42))],
            "b": Point(t(2, seed=43), t(2, seed=44)),
        }
        return (tree, t(2, seed=45))
    raise AssertionError(name)


def _random_like(tree: Any, seed: int) -> Any:
    """A tree of fresh random tensors with the structure, shapes and dtypes of ``tree``."""
    leaves, treedef = fg.tree.flatten(tree)
    new = [t(*x.shape, seed=seed + i, dtype=x.dtype) for i, x in enumerate(leaves)]
    return fg.tree.unflatten(treedef, new)


def _jax_pair(name: str) -> tuple[Any, Any, Callable[..., Any]]:
    jax, jnp = helpers.require_jax()
    return jax, jnp, _jax_functions(jax, jnp)[name]


# --------------------------------------------------------------------------------------------
# Numerics against JAX and torch.autograd
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_jvp_matches_jax(name):
    """jvp equals jax.jvp on pytree inputs and outputs."""
    jax, _, jf = _jax_pair(name)
    primals = _args(name)
    tangents = _random_like(primals, seed=100)
    actual = fg.jvp(TORCH_FUNCTIONS[name], primals, tangents)
    expected = jax.jvp(jf, helpers.to_jax(primals), helpers.to_jax(tangents))
    assert_trees_allclose(actual, expected)


@pytest.mark.parametrize("name", CASES)
def test_jvp_accepts_lists(name):
    """primals and tangents may be lists as well as tuples."""
    primals = _args(name)
    tangents = _random_like(primals, seed=100)
    f = TORCH_FUNCTIONS[name]
    assert_trees_allclose(fg.jvp(f, list(primals), list(tangents)), fg.jvp(f, primals, tangents))


@pytest.mark.parametrize("name", CASES)
def test_vjp_matches_jax(name):
    """vjp's output and cotangents equal jax.vjp's."""
    jax, _, jf = _jax_pair(name)
    primals = _args(name)
    out, vjp_fn = fg.vjp(TORCH_FUNCTIONS[name], *primals)
    cotangent = _random_like(out, seed=200)
    jax_out, jax_vjp_fn = jax.vjp(jf, *helpers.to_jax(primals))
    assert_trees_allclose(out, jax_out)
    assert_trees_allclose(vjp_fn(cotangent), jax_vjp_fn(helpers.to_jax(cotangent)))


@pytest.mark.parametrize("name", CASES)
def test_vjp_matches_torch_autograd(name):
    """vjp equals torch.autograd.grad with grad_outputs on the flat leaves."""
    primals = _args(name)
    f = TORCH_FUNCTIONS[name]
    out, vjp_fn = fg.vjp(f, *primals)
    cotangent = _random_like(out, seed=300)
    leaves, treedef = fg.tree.flatten(primals)
    leaves = [x.detach().clone().requires_grad_(True) for x in leaves]
    ref_out = f(*fg.tree.unflatten(treedef, leaves))
    expected = torch.autograd.grad(
        fg.tree.leaves(ref_out), leaves, grad_outputs=fg.tree.leaves(cotangent)
    )
    assert_trees_allclose(vjp_fn(cotangent), fg.tree.unflatten(treedef, expected))


@pytest.mark.parametrize("name", CASES)
def test_vjp_fn_can_be_called_many_times(name):
    """vjp_fn is reusable and linear: vjp(a u + b w) = a vjp(u) + b vjp(w)."""
    out, vjp_fn = fg.vjp(TORCH_FUNCTIONS[name], *_args(name))
    u, w = _random_like(out, seed=1), _random_like(out, seed=50)
    first = vjp_fn(u)
    assert_trees_allclose(vjp_fn(u), first)
    combined = vjp_fn(fg.tree.add(fg.tree.scale(2.0, u), fg.tree.scale(-3.0, w)))
    expected = fg.tree.add(fg.tree.scale(2.0, first), fg.tree.scale(-3.0, vjp_fn(w)))
    assert_trees_allclose(combined, expected)


@pytest.mark.parametrize("name", CASES)
def test_linearize_matches_jax(name):
    """linearize's output and jvp_fn equal jax.linearize's, for two tangents."""
    jax, _, jf = _jax_pair(name)
    primals = _args(name)
    out, jvp_fn = fg.linearize(TORCH_FUNCTIONS[name], *primals)
    jax_out, jax_jvp_fn = jax.linearize(jf, *helpers.to_jax(primals))
    assert_trees_allclose(out, jax_out)
    for seed in (400, 500):
        tangents = _random_like(primals, seed=seed)
        assert_trees_allclose(jvp_fn(*tangents), jax_jvp_fn(*helpers.to_jax(tangents)))


def _with_aux(lib: Any, tanh: Callable[..., Any]) -> Callable[..., Any]:
    def f(params, x):
        h = tanh(x @ params["w1"] + params["b1"])
        aux = {"h_sum": h.sum(), "n": x.shape[0], "tag": "layer", "none": None}
        return {"out": h @ params["w2"]}, aux

    return f


def test_jvp_has_aux_matches_jax():
    """jvp with has_aux returns (out, tangent_out, aux) like JAX, non-tensor aux leaves kept."""
    jax, jnp = helpers.require_jax()
    primals = _args("mlp")
    tangents = _random_like(primals, seed=600)
    actual = fg.jvp(_with_aux(torch, torch.tanh), primals, tangents, has_aux=True)
    jf = _with_aux(jnp, jnp.tanh)
    expected = jax.jvp(jf, helpers.to_jax(primals), helpers.to_jax(tangents), has_aux=True)
    assert_trees_allclose(actual, expected)
    assert actual[2]["tag"] == "layer"


def test_vjp_has_aux_matches_jax():
    """vjp with has_aux returns (out, vjp_fn, aux) like JAX."""
    jax, jnp = helpers.require_jax()
    primals = _args("mlp")
    out, vjp_fn, aux = fg.vjp(_with_aux(torch, torch.tanh), *primals, has_aux=True)
    jf = _with_aux(jnp, jnp.tanh)
    jax_out, jax_vjp_fn, jax_aux = jax.vjp(jf, *helpers.to_jax(primals), has_aux=True)
    cotangent = _random_like(out, seed=700)
    assert_trees_allclose((out, aux), (jax_out, jax_aux))
    assert_trees_allclose(vjp_fn(cotangent), jax_vjp_fn(helpers.to_jax(cotangent)))
    assert aux["n"] == 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jvp_vjp_keep_dtype(dtype):
    """Tangent and cotangent outputs have the dtype of the primals."""
    x = t(3, dtype=dtype)
    v = t(3, seed=1, dtype=dtype)
    _, tangent = fg.jvp(torch.sin, (x,), (v,))
    assert_trees_allclose(tangent, torch.cos(x) * v)
    _, vjp_fn = fg.vjp(torch.sin, x)
    assert_trees_allclose(vjp_fn(v), (torch.cos(x) * v,))


# --------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------


def _loss_pair() -> tuple[Any, Callable[..., Any], Callable[..., Any]]:
    jax, jnp = helpers.require_jax()

    def loss(params, x):
        h = torch.tanh(x @ params["w1"] + params["b1"])
        return torch.logsumexp(h @ params["w2"] + params["b2"], -1).sum()

    def jax_loss(params, x):
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        return jax.nn.logsumexp(h @ params["w2"] + params["b2"], axis=-1).sum()

    return jax, loss, jax_loss


def test_hessian_vector_product_jvp_of_grad_matches_jax():
    """jvp(grad(f)) (forward-over-reverse HVP) equals JAX's and reverse-over-reverse."""
    jax, loss, jax_loss = _loss_pair()
    params, x = _args("mlp")
    v = _random_like(params, seed=800)
    grads, hvp = fg.jvp(lambda p: fg.grad(loss)(p, x), (params,), (v,))
    jax_grads, jax_hvp = jax.jvp(
        lambda p: jax.grad(jax_loss)(p, helpers.to_jax(x)),
        (helpers.to_jax(params),),
        (helpers.to_jax(v),),
    )
    assert_trees_allclose((grads, hvp), (jax_grads, jax_hvp))
    rev_rev = fg.grad(lambda p: fg.tree.dot(fg.grad(loss)(p, x), v))(params)
    assert_trees_allclose(hvp, rev_rev)


def test_grad_of_jvp_matches_jax():
    """grad of a directional derivative (reverse over forward) equals JAX's."""
    jax, loss, jax_loss = _loss_pair()
    params, x = _args("mlp")
    v = _random_like(params, seed=900)

    def directional(p):
        return fg.jvp(lambda q: loss(q, x), (p,), (v,))[1]

    def jax_directional(p):
        return jax.jvp(lambda q: jax_loss(q, helpers.to_jax(x)), (p,), (helpers.to_jax(v),))[1]

    assert_trees_allclose(
        fg.grad(directional)(params), jax.grad(jax_directional)(helpers.to_jax(params))
    )


def test_jvp_of_jvp_matches_jax():
    """A second directional derivative by forward over forward equals JAX's."""
    jax, jnp = helpers.require_jax()
    x, u, w = t(4, seed=1), t(4, seed=2), t(4, seed=3)

    def f(x):
        return torch.sin(x) * torch.exp(x.sum() / 4)

    def jf(x):
        return jnp.sin(x) * jnp.exp(x.sum() / 4)

    actual = fg.jvp(lambda y: fg.jvp(f, (y,), (u,))[1], (x,), (w,))
    ju, jw, jx = helpers.to_jax((u, w, x))
    expected = jax.jvp(lambda y: jax.jvp(jf, (y,), (ju,))[1], (jx,), (jw,))
    assert_trees_allclose(actual, expected)


def test_vmap_of_jvp_matches_loop_and_jax():
    """vmap over tangents of jvp equals a loop of jvp and jax.vmap(jax.jvp)."""
    jax, _, jf = _jax_pair("mlp")
    params, x = _args("mlp")
    vs = t(6, *x.shape, seed=1000)

    def push(v):
        return fg.jvp(lambda y: _mlp_torch(params, y), (x,), (v,))[1]

    actual = fg.vmap(push)(vs)
    loop = fg.tree.map(lambda *xs: torch.stack(xs), *[push(v) for v in vs])
    assert_trees_allclose(actual, loop)
    jparams, jx = helpers.to_jax((params, x))
    expected = jax.vmap(lambda v: jax.jvp(lambda y: jf(jparams, y), (jx,), (v,))[1])(
        helpers.to_jax(vs)
    )
    assert_trees_allclose(actual, expected)


def test_vmap_of_vjp_matches_jax():
    """vmap over cotangents of vjp_fn (rows of the Jacobian) equals JAX's."""
    jax, _, jf = _jax_pair("mix")
    x, y = _args("mix")
    out, vjp_fn = fg.vjp(_mix_torch, x, y)
    cts = fg.tree.map(lambda o: t(5, *o.shape, seed=1100), out)
    actual = fg.vmap(vjp_fn)(cts)
    _, jax_vjp_fn = jax.vjp(jf, *helpers.to_jax((x, y)))
    assert_trees_allclose(actual, jax.vmap(jax_vjp_fn)(helpers.to_jax(cts)))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_python_branch_in_jvp_vjp_linearize_matches_jax(sign):
    """An `if` on a concrete value works in jvp, vjp and linearize and takes JAX's branch."""
    jax, jnp = helpers.require_jax()
    x, v = sign * t(3, seed=1).abs(), t(3, seed=2)

    def f(x):
        return torch.sin(x) if x.sum() > 0 else torch.cos(x) * x

    def jf(x):
        return jnp.sin(x) if x.sum() > 0 else jnp.cos(x) * x

    jx, jv = helpers.to_jax((x, v))
    assert_trees_allclose(fg.jvp(f, (x,), (v,)), jax.jvp(jf, (jx,), (jv,)))
    _, vjp_fn = fg.vjp(f, x)
    assert_trees_allclose(vjp_fn(v), jax.vjp(jf, jx)[1](jv))
    _, jvp_fn = fg.linearize(f, x)
    assert_trees_allclose(jvp_fn(v), jax.linearize(jf, jx)[1](jv))


def test_linearize_does_not_rerun_the_function():
    """linearize evaluates the function once; jvp_fn calls do not run it again."""
    calls = []

    def f(x):
        calls.append(1)
        return torch.sin(x)

    x = t(3)
    _, jvp_fn = fg.linearize(f, x)
    n = len(calls)
    for seed in range(3):
        v = t(3, seed=seed)
        assert_trees_allclose(jvp_fn(v), torch.cos(x) * v)
    assert len(calls) == n


# --------------------------------------------------------------------------------------------
# Purity
# --------------------------------------------------------------------------------------------


def test_transforms_do_not_mutate_inputs():
    """Primals, tangents and cotangents are unchanged by jvp, vjp and linearize."""
    primals = _args("nested")
    tangents = _random_like(primals, seed=1)
    snapshot = fg.tree.map(torch.clone, (primals, tangents))
    fg.jvp(_nested_torch, primals, tangents)
    out, vjp_fn = fg.vjp(_nested_torch, *primals)
    cotangent = _random_like(out, seed=2)
    ct_snapshot = fg.tree.map(torch.clone, cotangent)
    vjp_fn(cotangent)
    _, jvp_fn = fg.linearize(_nested_torch, *primals)
    jvp_fn(*tangents)
    assert fg.tree.equal((primals, tangents), snapshot)
    assert fg.tree.equal(cotangent, ct_snapshot)
    assert not any(x.requires_grad for x in fg.tree.leaves((primals, tangents, cotangent)))


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


def _has_leaves(tree: Any) -> bool:
    return len(fg.tree.leaves(tree)) > 0


def _tree_fun(tree: Any) -> Any:
    """A nonlinear map that mixes all leaves; returns (a tree like the input, a scalar)."""
    s = sum(
        (torch.sin(x).sum() for x in fg.tree.leaves(tree)), torch.zeros((), dtype=torch.float64)
    )
    return fg.tree.map(lambda x: torch.tanh(x) * s + x**2, tree), torch.exp(s / 10)


@given(helpers.trees().filter(_has_leaves), helpers.seeds)
def test_transpose_identity(tree, seed):
    """<vjp(v), u> == <v, jvp(u)> for random u, v."""
    u = _random_like(tree, seed)
    out, tangent_out = fg.jvp(_tree_fun, (tree,), (u,))
    _, vjp_fn = fg.vjp(_tree_fun, tree)
    v = _random_like(out, seed + 7)
    (ct,) = vjp_fn(v)
    assert_trees_allclose(fg.tree.dot(ct, u), fg.tree.dot(v, tangent_out), rtol=1e-9, atol=1e-9)


@given(helpers.trees().filter(_has_leaves), helpers.seeds)
def test_linearize_equals_jvp(tree, seed):
    """linearize(f, x)[1](u) == jvp(f, (x,), (u,))[1], and both outputs equal f(x)."""
    u = _random_like(tree, seed)
    out, jvp_fn = fg.linearize(_tree_fun, tree)
    jvp_out, tangent_out = fg.jvp(_tree_fun, (tree,), (u,))
    assert_trees_allclose(jvp_fn(u), tangent_out)
    assert_trees_allclose(out, _tree_fun(tree))
    assert_trees_allclose(jvp_out, _tree_fun(tree))


@given(helpers.trees().filter(_has_leaves), helpers.seeds)
def test_vjp_agrees_with_grad(tree, seed):
    """vjp with cotangent 1 of a scalar function is grad; vjp of <v, f> the same as vjp(v)."""
    v = _random_like(_tree_fun(tree), seed)

    def scalar(x):
        return fg.tree.dot(v, _tree_fun(x))

    _, vjp_fn = fg.vjp(_tree_fun, tree)
    _, scalar_vjp_fn = fg.vjp(scalar, tree)
    grads = fg.grad(scalar)(tree)
    assert_trees_allclose(scalar_vjp_fn(torch.ones((), dtype=torch.float64)), (grads,))
    assert_trees_allclose(vjp_fn(v), (grads,))


@settings(max_examples=10)
@given(helpers.trees(max_leaves=4).filter(_has_leaves))
def test_jvp_vjp_pass_check_grads(tree):
    """Finite differences agree with jvp and vjp of a pytree-valued function, to order 2."""
    fg.testing.check_grads(_tree_fun, (tree,), order=2)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_error_jvp_primals_not_a_sequence():
    """primals given as a bare tensor asks for a tuple."""
    x = t(3)
    with pytest.raises(TypeError, match=r"jvp: primals must be a tuple or list .*got Tensor"):
        fg.jvp(torch.sin, x, (x,))


def test_error_jvp_tangents_not_a_sequence():
    """tangents given as a dict asks for a tuple."""
    x = {"a": t(3)}
    with pytest.raises(TypeError, match=r"jvp: tangents must be a tuple or list .*got dict"):
        fg.jvp(lambda p: p["a"], (x,), x)


def test_error_jvp_lengths_differ():
    """primals and tangents of different lengths are reported with both lengths."""
    with pytest.raises(ValueError, match=r"same length, got 2 primals and 1 tangents"):
        fg.jvp(lambda x, y: x * y, (t(2), t(2)), (t(2),))


def test_error_jvp_tangent_structure():
    """A tangent tree with different keys names both structures."""
    with pytest.raises(ValueError, match=r"tangent must have the structure .*'a'.*but got .*'b'"):
        fg.jvp(lambda p: p["a"], ({"a": t(2)},), ({"b": t(2)},))


@pytest.mark.parametrize(
    ("tangent", "got"),
    [
        (t(2), r"a torch\.float64 tensor of shape \(2,\)"),
        (t(3, dtype=torch.float32), r"a torch\.float32 tensor of shape \(3,\)"),
        (1.0, r"float 1\.0"),
    ],
    ids=["shape", "dtype", "not_tensor"],
)
def test_error_jvp_tangent_leaf(tangent, got):
    """A tangent leaf of the wrong shape or dtype, or not a tensor, is named by its path."""
    primals = ({"a": t(3), "b": t(1)},)
    with pytest.raises(
        ValueError,
        match=rf"tangent leaf at tangents\[0\]\['a'\] must be a torch\.float64 tensor of shape "
        rf"\(3,\), but got {got}",
    ):
        fg.jvp(lambda p: p["a"] * p["b"], primals, ({"a": tangent, "b": t(1)},))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda f, p: fg.jvp(f, (p,), (p,)), "jvp"),
        (lambda f, p: fg.vjp(f, p), "vjp"),
        (lambda f, p: fg.linearize(f, p), "linearize"),
    ],
    ids=["jvp", "vjp", "linearize"],
)
@pytest.mark.parametrize(
    ("leaf", "what"),
    [
        (torch.arange(2), r"floating-point tensors, but the leaf at primals\[0\]\['a'\] .*int64"),
        (torch.ones(2, dtype=torch.bool), r"primals\[0\]\['a'\] is a torch\.bool"),
        (2.0, r"only differentiate tensors, but the leaf at primals\[0\]\['a'\] is float 2\.0"),
    ],
    ids=["int", "bool", "float"],
)
def test_error_non_differentiable_primal(call, name, leaf, what):
    """An integer, bool or non-tensor primal leaf is named by its tree path."""
    with pytest.raises(TypeError, match=rf"funcgrad\.{name}: .*{what}"):
        call(lambda p: p["b"] * 2, {"a": leaf, "b": t(2)})


@pytest.mark.parametrize(
    "call",
    [
        lambda f, x: fg.jvp(f, (x,), (x,)),
        lambda f, x: fg.vjp(f, x),
        lambda f, x: fg.linearize(f, x),
    ],
    ids=["jvp", "vjp", "linearize"],
)
def test_error_output_leaf_not_a_tensor(call):
    """A non-tensor output leaf is named by its path, with the has_aux hint."""
    with pytest.raises(
        TypeError,
        match=r"every leaf of the function's output must be a tensor, but the leaf at "
        r"output\['n'\] is int 3\. .*has_aux=True",
    ):
        call(lambda x: {"y": torch.sin(x), "n": 3}, t(2))


@pytest.mark.parametrize(
    "call",
    [
        lambda f, x: fg.jvp(f, (x,), (x,)),
        lambda f, x: fg.vjp(f, x),
        lambda f, x: fg.linearize(f, x),
    ],
    ids=["jvp", "vjp", "linearize"],
)
def test_error_output_without_tensors(call):
    """A function returning no tensors is reported."""
    with pytest.raises(ValueError, match=r"returned no tensors .*nothing to differentiate"):
        call(lambda x: {"empty": []}, t(2))


@pytest.mark.parametrize(
    "call",
    [
        lambda f, x: fg.jvp(f, (x,), (x,), has_aux=True),
        lambda f, x: fg.vjp(f, x, has_aux=True),
    ],
    ids=["jvp", "vjp"],
)
def test_error_has_aux_without_pair(call):
    """has_aux=True with a function returning a single tensor says what it returned."""
    with pytest.raises(
        TypeError, match=r"must return a pair \(output, aux\), but it returned a torch\.float64"
    ):
        call(torch.sin, t(2))


def test_error_vjp_cotangent_structure():
    """A cotangent with a different structure from the output names both structures."""
    _, vjp_fn = fg.vjp(lambda x: {"a": x, "b": x * 2}, t(2))
    with pytest.raises(ValueError, match=r"vjp: the cotangent must have the structure .*got"):
        vjp_fn({"a": t(2)})
    with pytest.raises(ValueError, match=r"vjp: the cotangent must have the structure"):
        vjp_fn(t(2))


@pytest.mark.parametrize(
    ("cotangent", "got"),
    [
        (t(3), r"a torch\.float64 tensor of shape \(3,\)"),
        (t(2, dtype=torch.float32), r"a torch\.float32 tensor of shape \(2,\)"),
        (1.0, r"float 1\.0"),
    ],
    ids=["shape", "dtype", "not_tensor"],
)
def test_error_vjp_cotangent_leaf(cotangent, got):
    """A cotangent leaf of the wrong shape or dtype is named by its path."""
    _, vjp_fn = fg.vjp(lambda x: (x, x.sum()), t(2))
    with pytest.raises(
        ValueError,
        match=rf"cotangent leaf at cotangent\[0\] must be a torch\.float64 tensor of shape "
        rf"\(2,\), but got {got}",
    ):
        vjp_fn((cotangent, torch.ones((), dtype=torch.float64)))


def test_error_linearize_wrong_number_of_tangents():
    """jvp_fn takes one tangent per primal."""
    _, jvp_fn = fg.linearize(lambda x, y: x * y, t(2), t(2))
    with pytest.raises(TypeError, match=r"jvp_fn takes one tangent per primal \(2\), got 1"):
        jvp_fn(t(2))


def test_error_linearize_tangent_shape():
    """A linearize tangent of the wrong shape is named by its path."""
    _, jvp_fn = fg.linearize(lambda x, y: x * y, t(2), t(2))
    with pytest.raises(ValueError, match=r"tangent leaf at tangents\[1\] must be .*shape \(2,\)"):
        jvp_fn(t(2), t(3))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: fg.jvp(3, (t(2),), (t(2),)), "jvp"),
        (lambda: fg.vjp("f", t(2)), "vjp"),
        (lambda: fg.linearize(None, t(2)), "linearize"),
    ],
    ids=["jvp", "vjp", "linearize"],
)
def test_error_not_callable(call, name):
    """A non-callable is rejected with its type."""
    with pytest.raises(TypeError, match=rf"funcgrad\.{name}: expected a callable"):
        call()


def _doubles_in_place(x: torch.Tensor) -> torch.Tensor:
    x.mul_(2)
    return x


def test_jvp_in_place_write_into_a_primal_is_an_error() -> None:
    """jvp cannot stop the write, but it names the primal and fails loudly."""
    x = torch.ones(3, dtype=torch.float64)
    with pytest.raises(
        RuntimeError,
        match=r"funcgrad\.jvp: the function modified its input at primals\[0\] in place, so the "
        r"caller's tensor has changed",
    ):
        fg.jvp(_doubles_in_place, (x,), (torch.ones_like(x),))


@pytest.mark.parametrize("name", ["vjp", "linearize"])
def test_reverse_in_place_write_into_a_primal_is_an_error(name: str) -> None:
    """vjp and linearize refuse the write before it happens."""
    x = torch.ones(3, dtype=torch.float64)
    with pytest.raises(
        RuntimeError, match=rf"funcgrad\.{name}: the function modified a differentiated input"
    ):
        getattr(fg, name)(_doubles_in_place, x)
    assert torch.equal(x, torch.ones(3, dtype=torch.float64))
