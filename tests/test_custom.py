"""Tests for ``funcgrad.stop_gradient``, against ``jax.lax.stop_gradient`` in float64."""

from __future__ import annotations

import functools
from typing import Any

import helpers
import pytest
import torch
from helpers import Point, t
from hypothesis import given, settings

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


# ============================================================================================
# custom_jvp and custom_vjp, against jax.custom_jvp / jax.custom_vjp with the same rules
# ============================================================================================

# Exported as fg.custom_vjp / fg.custom_jvp once funcgrad/__init__.py re-exports them.
from funcgrad._custom import custom_jvp, custom_vjp  # noqa: E402

# dynamo instantiates autograd.Function contexts while tracing one (a torch-internal warning).
pytestmark = pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated:DeprecationWarning"
)


def _aot(f: Any) -> Any:
    return fg.jit(f, backend="aot_eager")


def _loss_grads_both_ways(mode: str, f: Any, jf: Any, w: Any, xs: Any) -> tuple[Any, Any]:
    """funcgrad's and JAX's gradients of ``loss(w, xs)`` w.r.t. ``w``: plain ("grad"), per
    example ("vmap_grad"), under jit ("jit_grad") and of the gradient's sum ("grad_grad")."""
    jax, _ = helpers.require_jax()
    jw, jxs = helpers.to_jax((w, xs))
    if mode == "grad":
        actual, expected = fg.grad(f)(w, xs), jax.grad(jf)(jw, jxs)
    elif mode == "vmap_grad":
        actual = fg.vmap(fg.grad(f), in_axes=(None, 0))(w, xs)
        expected = jax.vmap(jax.grad(jf), in_axes=(None, 0))(jw, jxs)
    elif mode == "jit_grad":
        actual, expected = _aot(fg.grad(f))(w, xs), jax.jit(jax.grad(jf))(jw, jxs)
    else:
        actual = fg.grad(lambda w: fg.grad(f)(w, xs).sum())(w)
        expected = jax.grad(lambda w: jax.grad(jf)(w, jxs).sum())(jw)
    return actual, expected


# --------------------------------------------------------------------------------------------
# log1pexp: a numerically stable derivative (custom_jvp), the JAX documentation's example
# --------------------------------------------------------------------------------------------


@custom_jvp
def log1pexp(x):
    return torch.log1p(torch.exp(x))


@log1pexp.defjvp
def _log1pexp_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return log1pexp(x), t * (1 - 1 / (1 + torch.exp(x)))


def _jax_log1pexp() -> Any:
    jax, jnp = helpers.require_jax()

    @jax.custom_jvp
    def f(x):
        return jnp.log1p(jnp.exp(x))

    @f.defjvp
    def f_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return f(x), t * (1 - 1 / (1 + jnp.exp(x)))

    return f


_X_LOG1PEXP = torch.tensor([-3.0, 0.0, 0.7, 10.0, 100.0, 800.0], dtype=torch.float64)


def test_log1pexp_grad_is_finite_where_autodiff_is_not():
    """The rule gives 1 at x=800 where autodiff of log1p(exp(x)) gives NaN."""
    x = _X_LOG1PEXP
    naive = fg.grad(lambda x: torch.log1p(torch.exp(x)).sum())(x)
    assert torch.isnan(naive[-1])
    assert_trees_allclose(fg.grad(lambda x: log1pexp(x).sum())(x), torch.sigmoid(x))


@pytest.mark.parametrize("mode", ["grad", "vmap_grad", "jit_grad", "jvp", "vjp", "grad_grad"])
def test_log1pexp_matches_jax(mode):
    """Every mode of differentiation of the custom_jvp function equals JAX's."""
    jax, _ = helpers.require_jax()
    jf = _jax_log1pexp()
    x = _X_LOG1PEXP
    jx = helpers.to_jax(x)
    if mode == "grad":
        actual, expected = (
            fg.grad(lambda x: log1pexp(x).sum())(x),
            jax.grad(lambda x: jf(x).sum())(jx),
        )
    elif mode == "vmap_grad":
        actual, expected = fg.vmap(fg.grad(log1pexp))(x), jax.vmap(jax.grad(jf))(jx)
    elif mode == "jit_grad":
        actual = _aot(fg.grad(lambda x: log1pexp(x).sum()))(x)
        expected = jax.jit(jax.grad(lambda x: jf(x).sum()))(jx)
    elif mode == "jvp":
        v = t(6, seed=1)
        actual, expected = fg.jvp(log1pexp, (x,), (v,)), jax.jvp(jf, (jx,), (helpers.to_jax(v),))
    elif mode == "vjp":
        v = t(6, seed=2)
        out, vjp_fn = fg.vjp(log1pexp, x)
        jout, jvjp_fn = jax.vjp(jf, jx)
        actual, expected = (out, vjp_fn(v)), (jout, jvjp_fn(helpers.to_jax(v)))
    else:
        actual = fg.vmap(fg.grad(fg.grad(log1pexp)))(x)
        expected = jax.vmap(jax.grad(jax.grad(jf)))(jx)
    assert_trees_allclose(actual, expected)


def test_log1pexp_hessian_forward_over_reverse_matches_jax():
    """jacfwd(jacrev(f)) and jvp(grad(f)) differentiate the rule, as in JAX."""
    jax, _ = helpers.require_jax()
    jf = _jax_log1pexp()
    x = t(4, seed=3)
    expected = jax.hessian(lambda x: jf(x).sum())(helpers.to_jax(x))
    assert_trees_allclose(fg.hessian(lambda x: log1pexp(x).sum())(x), expected)


# --------------------------------------------------------------------------------------------
# Straight-through estimator (custom_vjp): round forward, identity backward
# --------------------------------------------------------------------------------------------


@custom_vjp
def ste_round(x):
    return torch.round(x)


ste_round.defvjp(lambda x: (ste_round(x), None), lambda _, g: (g,))


def _jax_ste() -> Any:
    jax, jnp = helpers.require_jax()

    @jax.custom_vjp
    def f(x):
        return jnp.round(x)

    f.defvjp(lambda x: (f(x), None), lambda _, g: (g,))
    return f


def _ste_loss(ste: Any, lib: Any) -> Any:
    return lambda w, x: ((ste(x * w) * lib.tanh(w)) ** 2).sum()


@pytest.mark.parametrize("mode", ["grad", "vmap_grad", "jit_grad", "grad_grad"])
def test_straight_through_custom_vjp_matches_jax(mode):
    """grad, per-example grad, jit(grad) and grad-of-grad through the STE equal JAX's."""
    _, jnp = helpers.require_jax()
    w, xs = 2 * t(3, seed=4), 3 * t(5, 3, seed=5)
    f, jf = _ste_loss(ste_round, torch), _ste_loss(_jax_ste(), jnp)
    assert_trees_allclose(*_loss_grads_both_ways(mode, f, jf, w, xs))


# --------------------------------------------------------------------------------------------
# Gradient clipping inside the backward pass (custom_vjp with nondiff_argnums)
# --------------------------------------------------------------------------------------------


@functools.partial(custom_vjp, nondiff_argnums=(0,))
def clip_gradient(bound, x):
    return x


clip_gradient.defvjp(
    lambda bound, x: (clip_gradient(bound, x), None), lambda bound, _, g: (g.clamp(-bound, bound),)
)


def _jax_clip() -> Any:
    jax, jnp = helpers.require_jax()

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def f(bound, x):
        return x

    f.defvjp(
        lambda bound, x: (f(bound, x), None), lambda bound, _, g: (jnp.clip(g, -bound, bound),)
    )
    return f


def _clip_loss(clip: Any, lib: Any) -> Any:
    return lambda w, x: (lib.sin(clip(0.5, x * w)) * 4 * w).sum()


@pytest.mark.parametrize("mode", ["grad", "vmap_grad", "jit_grad", "grad_grad", "kwargs"])
def test_gradient_clipping_custom_vjp_matches_jax(mode):
    """Clipping in bwd, with a nondiff bound, equals JAX's in every composition."""
    jax, jnp = helpers.require_jax()
    w, xs = t(3, seed=6), 2 * t(4, 3, seed=7)
    f, jf = _clip_loss(clip_gradient, torch), _clip_loss(_jax_clip(), jnp)
    if mode == "kwargs":
        actual = fg.grad(lambda w: (torch.sin(clip_gradient(0.5, x=xs * w)) * 4 * w).sum())(w)
        expected = jax.grad(jf)(*helpers.to_jax((w, xs)))
    else:
        actual, expected = _loss_grads_both_ways(mode, f, jf, w, xs)
    assert_trees_allclose(actual, expected)
    assert not torch.equal(actual, fg.grad(_clip_loss(lambda b, x: x, torch))(w, xs))


# --------------------------------------------------------------------------------------------
# Pytrees, residual derivatives, None cotangents
# --------------------------------------------------------------------------------------------


def _tree_rule_pair() -> tuple[Any, Any]:
    """A custom_vjp on dict/NamedTuple trees with residuals and a None cotangent, and JAX's."""
    jax, jnp = helpers.require_jax()

    def make(lib: Any, deco: Any) -> Any:
        def fun(p, x):
            return Point(lib.sin(p["w"]) * x, {"s": (p["w"] * x).sum()})

        f = deco(fun)

        def fwd(p, x):  # calls f, as JAX code usually does (NOTE in funcgrad/_custom.py)
            return f(p, x), (lib.cos(p["w"]), p["w"], x)

        def bwd(res, g):
            cos_w, _, x = res
            dw = 2 * cos_w * x * g.x + g.y["s"] * x  # the rule doubles one term
            return {"w": dw, "frozen": None}, None

        f.defvjp(fwd, bwd)
        return f

    return make(torch, custom_vjp), make(jnp, jax.custom_vjp)


def test_pytree_rule_with_none_cotangents_matches_jax():
    """Tree-structured arguments, outputs and residuals; None cotangents are zeros."""
    jax, jnp = helpers.require_jax()
    f, jf = _tree_rule_pair()
    p = {"w": t(3, seed=8), "frozen": t(2, seed=9)}
    x = t(3, seed=10)

    def loss(f: Any, lib: Any) -> Any:
        return lambda p, x: (lib.tanh(f(p, x).x).sum() + f(p, x).y["s"] ** 2) * p["w"].sum()

    actual = fg.grad(loss(f, torch), argnums=(0, 1))(p, x)
    expected = jax.grad(loss(jf, jnp), argnums=(0, 1))(*helpers.to_jax((p, x)))
    assert_trees_allclose(actual, expected)
    assert_trees_allclose(actual[0]["frozen"], torch.zeros(2, dtype=torch.float64))
    second = fg.grad(lambda x: fg.grad(loss(f, torch))(p, x)["w"].sum())(x)
    jsecond = jax.grad(lambda x: jax.grad(loss(jf, jnp))(helpers.to_jax(p), x)["w"].sum())
    assert_trees_allclose(second, jsecond(helpers.to_jax(x)))


def test_plain_call_runs_fun_and_torch_autograd_uses_the_rule():
    """Without a transform, f(x) is fun(x); torch.autograd on requires_grad inputs uses bwd."""
    x = t(4, seed=11)
    assert_trees_allclose(ste_round(x), torch.round(x))
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((clip_gradient(0.5, xr) * 4).sum(), xr)
    assert_trees_allclose(g, torch.full_like(x, 0.5))


@settings(max_examples=10)
@given(helpers.nonempty_trees())
def test_exact_rule_on_random_trees_equals_autodiff(tree):
    """A custom_vjp whose rule is the true derivative has fg.grad equal to plain autodiff."""

    def fun(tree):
        return sum(torch.sin(x).sum() for x in fg.tree.leaves(tree))

    f = custom_vjp(fun)
    f.defvjp(lambda tr: (fun(tr), tr), lambda tr, g: (fg.tree.map(lambda x: torch.cos(x) * g, tr),))
    assert_trees_allclose(fg.grad(f)(tree), fg.grad(fun)(tree))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _bad_vjp(bwd: Any) -> Any:
    f = custom_vjp(lambda p, x: (p["w"] * x).sum())
    f.defvjp(lambda p, x: ((p["w"] * x).sum(), (p, x)), bwd)
    return f


_P, _XE = {"w": t(2, seed=12)}, t(2, seed=13)


@pytest.mark.parametrize(
    ("bwd", "error", "match"),
    [
        (lambda r, g: ({"w": g * r[1]},), TypeError, r"one cotangent per differentiable .*\(2: "),
        (lambda r, g: ([g * r[1]], None), ValueError, r"cotangent at args\[0\] must have the "),
        (lambda r, g: ({"w": g * r[1][:1]}, None), ValueError, r"for args\[0\]\['w'\] must be"),
        (lambda r, g: ({"w": 1.0}, None), ValueError, r"args\[0\]\['w'\] must be a torch.float64"),
    ],
    ids=["count", "structure", "shape", "not-a-tensor"],
)
def test_bad_cotangents_are_named(bwd, error, match):
    """bwd returning the wrong number, structure or shape of cotangents names the argument."""
    with pytest.raises(error, match=r"custom_vjp\(_bad_vjp.<locals>.<lambda>\).*" + match):
        fg.grad(_bad_vjp(bwd))(_P, _XE)


@pytest.mark.parametrize("transform", ["jvp", "jacfwd", "jit_jvp"])
def test_forward_mode_of_custom_vjp_raises(transform):
    """As in JAX, forward mode of a custom_vjp function is a TypeError."""
    x = t(3, seed=14)
    match = r"can't apply forward-mode autodiff \(jvp.*\) to a custom_vjp function"
    run = {
        "jvp": lambda x: fg.jvp(ste_round, (x,), (x,)),
        "jacfwd": fg.jacfwd(ste_round),
        "jit_jvp": _aot(lambda x: fg.jvp(ste_round, (x,), (x,))),
    }[transform]
    with pytest.raises(TypeError, match=match):
        run(x)


def test_forward_mode_of_custom_jvp_under_jit_raises():
    """Under jit, forward mode of a custom_jvp function is refused (torch would drop the rule)."""
    match = r"custom_jvp\(log1pexp\): forward mode .* inside funcgrad.jit is not supported"
    with pytest.raises((NotImplementedError, RuntimeError), match=match):
        _aot(lambda x: fg.jvp(log1pexp, (x,), (x,)))(t(3, seed=15))


def test_other_errors():
    """No rule; fwd not returning a pair; a tangent of the wrong structure; bad arguments."""
    f = custom_vjp(torch.sin)
    with pytest.raises(AttributeError, match=r"custom_vjp\(sin\): no rule defined; call .defvjp"):
        f(t(2))
    g = custom_jvp(torch.sin)
    with pytest.raises(AttributeError, match=r"custom_jvp\(sin\): no rule defined; call .defjvp"):
        g(t(2))
    f.defvjp(lambda x: torch.sin(x), lambda r, g: (g,))
    with pytest.raises(TypeError, match=r"the fwd rule must return a pair \(output, residuals\)"):
        fg.grad(lambda x: f(x).sum())(t(2))
    g.defjvp(lambda p, tg: (torch.sin(p[0]), (tg[0],)))
    with pytest.raises(ValueError, match=r"tangent_out must have the structure of the function"):
        fg.jvp(g, (t(2),), (t(2),))
    with pytest.raises(TypeError, match=r"nondiff_argnums must be a tuple of non-negative ints"):
        custom_vjp(torch.sin, nondiff_argnums=(-1,))
    with pytest.raises(ValueError, match=r"nondiff_argnums contains 0, but the function was"):
        clip_gradient()
    with pytest.raises(TypeError, match=r"funcgrad.custom_vjp: expected a callable"):
        custom_vjp(3)


@pytest.mark.parametrize("nesting", ["grad_grad", "vmap_grad"])
def test_nested_transforms_under_jit_raise(nesting):
    """Inside jit a custom rule may sit under one transform only (torch.compile limitation)."""
    loss = _clip_loss(clip_gradient, torch)
    w, xs = t(3, seed=16), t(4, 3, seed=17)
    if nesting == "grad_grad":
        f = _aot(lambda w, xs: fg.grad(lambda w: fg.grad(loss)(w, xs).sum())(w))
    else:
        f = _aot(fg.vmap(fg.grad(loss), in_axes=(None, 0)))
    match = r"support one transform around them|vmap over ApplyTemplate"  # torch's, for vmap
    with pytest.raises(RuntimeError, match=match):
        f(w, xs)


@custom_jvp
def cube_jvp(x):
    return x**3


@cube_jvp.defjvp
def _cube_jvp_rule(primals, tangents):
    (x,), (dx,) = primals, tangents
    return cube_jvp(x), 3 * x**2 * dx  # calls the function, as JAX's examples do


cube_vjp = custom_vjp(lambda x: x**3)
cube_vjp.defvjp(lambda x: (cube_vjp(x), x), lambda x, g: (3 * x**2 * g,))

_NESTINGS = {
    "grad_grad": lambda f: lambda x: fg.grad(lambda x: fg.grad(lambda y: f(y).sum())(x).sum())(x),
    "hessian": lambda f: fg.hessian(lambda x: f(x).sum()),
    "jacfwd_jacrev": lambda f: fg.jacfwd(fg.jacrev(lambda x: f(x).sum())),
    "jacrev_jacrev": lambda f: fg.jacrev(fg.jacrev(lambda x: f(x).sum())),
    "grad_vmap": lambda f: fg.grad(lambda x: fg.vmap(f)(x).sum()),
    # The inner transform does not track x, the outer one does: zeros too on torch 2.13.
    "outer_tracks_only": lambda f: fg.grad(
        lambda x: fg.grad(lambda y: (y * f(x)).sum())(torch.ones((), dtype=x.dtype))
    ),
}


@pytest.mark.parametrize("nesting", sorted(_NESTINGS))
@pytest.mark.parametrize("kind", ["custom_jvp", "custom_vjp"])
def test_second_level_under_jit_raises_where_torch_returns_zeros(kind, nesting):
    """A custom function at a second transform level inside jit raises (torch.compile would
    silently return zeros), also for a custom_jvp rule calling the function itself."""
    f = {"custom_jvp": cube_jvp, "custom_vjp": cube_vjp}[kind]
    x = t(3, seed=18)
    error: Any = (NotImplementedError, RuntimeError)
    match = rf"funcgrad.{kind}\(.*\): inside funcgrad.jit, .* support one transform around them"
    if kind == "custom_vjp" and nesting in ("hessian", "jacfwd_jacrev"):
        error, match = TypeError, r"can't apply forward-mode autodiff .* to a custom_vjp"
    else:  # eager mode is right
        assert_trees_allclose(_NESTINGS[nesting](f)(x), _NESTINGS[nesting](lambda x: x**3)(x))
    with pytest.raises(error, match=match):
        _aot(_NESTINGS[nesting](f))(x)


@pytest.mark.parametrize("mode", ["grad", "jit_grad", "jit_vmap"])
def test_rule_calling_the_function_under_jit_matches_jax(mode):
    """Under jit, one transform around a custom_jvp function whose rule calls it (the
    transposition runs it one level up) equals JAX."""
    jax, jnp = helpers.require_jax()

    @jax.custom_jvp
    def jcube(x):
        return x**3

    jcube.defjvp(lambda p, tg: (jcube(p[0]), 3 * p[0] ** 2 * tg[0]))
    x = t(5, seed=19)
    jx = helpers.to_jax(x)
    if mode in ("grad", "jit_grad"):
        f = fg.grad(lambda x: (cube_jvp(x) * torch.sin(x)).sum())
        actual = (_aot(f) if mode == "jit_grad" else f)(x)
        expected = jax.grad(lambda x: (jcube(x) * jnp.sin(x)).sum())(jx)
    else:
        actual, expected = _aot(fg.vmap(cube_jvp))(x), jax.vmap(jcube)(jx)
    assert_trees_allclose(actual, expected)


# A custom_jvp function applied to the tangents inside another one's rule (NOTE [custom_jvp on
# tangents]): eager mode used to recurse without end, jit reaches it one level up.


@custom_jvp
def double(x):
    return 2 * x


@double.defjvp
def _double_rule(primals, tangents):
    return double(primals[0]), double(tangents[0])


@custom_jvp
def sin_via_double(x):
    return torch.sin(x)


@sin_via_double.defjvp
def _sin_via_double_rule(primals, tangents):
    (x,), (dx,) = primals, tangents
    return sin_via_double(x), double(dx) * torch.cos(x) / 2


@pytest.mark.parametrize("mode", ["grad", "jit_grad", "jvp", "grad_grad", "vmap_grad"])
def test_custom_jvp_applied_to_tangents_matches_jax(mode):
    """Transposing a rule that applies a custom_jvp function to its tangents equals JAX."""
    jax, jnp = helpers.require_jax()

    @jax.custom_jvp
    def jdouble(x):
        return 2 * x

    jdouble.defjvp(lambda p, tg: (jdouble(p[0]), jdouble(tg[0])))

    @jax.custom_jvp
    def jsin(x):
        return jnp.sin(x)

    jsin.defjvp(lambda p, tg: (jsin(p[0]), jdouble(tg[0]) * jnp.cos(p[0]) / 2))
    x, v = t(4, seed=21), t(4, seed=22)
    jx, jv = helpers.to_jax(x), helpers.to_jax(v)
    if mode in ("grad", "jit_grad"):
        f = fg.grad(lambda x: (sin_via_double(x) * x).sum())
        actual = (_aot(f) if mode == "jit_grad" else f)(x)
        expected = jax.grad(lambda x: (jsin(x) * x).sum())(jx)
    elif mode == "jvp":
        actual, expected = fg.jvp(sin_via_double, (x,), (v,)), jax.jvp(jsin, (jx,), (jv,))
    elif mode == "grad_grad":
        actual = fg.vmap(fg.grad(fg.grad(sin_via_double)))(x)
        expected = jax.vmap(jax.grad(jax.grad(jsin)))(jx)
    else:
        actual = fg.vmap(fg.grad(lambda x: double(x) * sin_via_double(x)))(x)
        expected = jax.vmap(jax.grad(lambda x: jdouble(x) * jsin(x)))(jx)
    assert_trees_allclose(actual, expected)


def test_jit_without_any_transform_calls_the_function() -> None:
    """jit(f) with no transform inside: custom_vjp, custom_jvp and checkpoint compute f (under
    dynamo, "is a transform active?" needs NOTE [peek_interpreter_stack under dynamo])."""
    x = torch.tensor([0.5, 1.0, 30.0], dtype=torch.float64)
    ste = custom_vjp(torch.round)
    ste.defvjp(lambda x: (torch.round(x), None), lambda _, g: (g,))
    assert_trees_allclose(_aot(log1pexp)(x), torch.nn.functional.softplus(x))
    assert_trees_allclose(_aot(ste)(x), torch.round(x))
    assert_trees_allclose(_aot(fg.checkpoint(torch.sin))(x), torch.sin(x))
