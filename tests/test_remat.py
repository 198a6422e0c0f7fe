"""Tests for ``funcgrad.checkpoint`` (remat): same values and derivatives as the function itself,
in every composition, with the recomputation really happening."""

from __future__ import annotations

import functools
from typing import Any

import helpers
import pytest
import torch
from helpers import Point, t
from hypothesis import given, settings

import funcgrad as fg
from funcgrad._remat import checkpoint, remat  # fg.checkpoint / fg.remat once exported
from funcgrad.testing import assert_trees_allclose

# dynamo instantiates autograd.Function contexts while tracing one (a torch-internal warning).
pytestmark = pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated:DeprecationWarning"
)


def layer(p, x, act):
    return Point(act(x @ p["w"] + p["b"]), {"n": (x**2).sum()})


def _params(n: int = 3) -> list[dict[str, torch.Tensor]]:
    return [{"w": t(4, 4, seed=i) / 2, "b": t(4, seed=10 + i)} for i in range(n)]


def _loss(remat_it: bool) -> Any:
    step = checkpoint(layer, static_argnums=2) if remat_it else layer

    def loss(ps, x):
        total = 0.0
        for p in ps:
            out = step(p, x, torch.tanh)
            x, total = out.x, total + out.y["n"]
        return (x**2).sum() + total

    return loss


_X = t(5, 4, seed=20)


@pytest.mark.parametrize(
    "mode", ["grad", "grad_x", "vmap_grad", "jit_grad", "grad_grad", "jvp", "hessian", "vjp"]
)
def test_derivatives_equal_the_unrematerialised_function(mode):
    """checkpoint(f) has f's derivatives under every transform and their compositions."""
    ps = _params()
    results = []
    for remat_it in (False, True):
        results.append(_derivatives(mode, _loss(remat_it), ps, remat_it))
    assert_trees_allclose(results[1], results[0])


def _derivatives(mode: str, loss: Any, ps: Any, remat_it: bool) -> Any:
    if mode == "grad":
        return fg.value_and_grad(loss)(ps, _X)
    elif mode == "grad_x":
        return fg.grad(loss, argnums=(0, 1))(ps, _X)
    elif mode == "vmap_grad":
        return fg.vmap(fg.grad(loss), in_axes=(None, 0))(ps, _X)
    elif mode == "jit_grad":
        return fg.jit(fg.grad(loss), backend="aot_eager")(ps, _X)
    elif mode == "grad_grad":
        return fg.grad(lambda x: fg.grad(loss, argnums=1)(ps, x).sum())(_X)
    elif mode == "jvp":
        return fg.jvp(lambda x: loss(ps, x), (_X,), (t(5, 4, seed=21),))
    elif mode == "hessian":
        return fg.hessian(lambda x: loss(ps, x))(_X[:2])
    else:
        out, vjp_fn = fg.vjp(lambda p, x: layer(p, x, torch.sin), ps[0], _X)
        if remat_it:
            out, vjp_fn = fg.vjp(checkpoint(lambda p, x: layer(p, x, torch.sin)), ps[0], _X)
        return (out, vjp_fn(Point(t(5, 4, seed=22), {"n": t(seed=23)})))


def test_grad_matches_jax():
    """Gradients of a checkpointed MLP equal jax.grad of the same MLP under jax.checkpoint."""
    jax, jnp = helpers.require_jax()
    ps = _params()

    def jlayer(p, x):
        return jnp.tanh(x @ p["w"] + p["b"])

    def jloss(ps, x):
        for p in ps:
            x = jax.checkpoint(jlayer)(p, x)
        return (x**2).sum()

    def loss(ps, x):
        for p in ps:
            x = checkpoint(layer, static_argnums=2)(p, x, torch.tanh).x
        return (x**2).sum()

    expected = jax.value_and_grad(jloss, argnums=(0, 1))(*helpers.to_jax((ps, _X)))
    assert_trees_allclose(fg.value_and_grad(loss, argnums=(0, 1))(ps, _X), expected)


def test_backward_recomputes_and_forward_keeps_nothing():
    """The function runs again in the backward pass; the forward saves no intermediate."""
    calls = []

    def f(x):
        calls.append(torch.is_grad_enabled())
        return torch.sin(torch.exp(x)).sum()

    x = t(3, seed=24)
    g = fg.grad(checkpoint(f))(x)
    assert len(calls) == 2  # the forward, then the recomputation
    assert_trees_allclose(g, torch.cos(torch.exp(x)) * torch.exp(x))
    xr = x.clone().requires_grad_(True)
    y = checkpoint(f)(xr)
    saved = y.grad_fn.saved_tensors  # the Function's node keeps the input, nothing else
    assert len(saved) == 1
    assert torch.equal(saved[0], xr)
    (gr,) = torch.autograd.grad(y, xr)
    assert_trees_allclose(gr, g)


def test_static_argnums_and_non_tensor_leaves():
    """Static arguments and non-tensor leaves pass through; keyword arguments work."""

    def f(p, cfg, power, scale=1.0):
        return (p["w"] ** power * cfg["x"] * cfg["k"]).sum() * scale

    p, cfg = {"w": t(3, seed=25)}, {"x": t(3, seed=26), "k": 2, "name": "layer"}
    g = fg.grad(checkpoint(f, static_argnums=2))(p, cfg, 3, scale=0.5)
    assert_trees_allclose(g, {"w": 3 * p["w"] ** 2 * cfg["x"] * 2 * 0.5})
    assert_trees_allclose(fg.grad(remat(f, static_argnums=(2,)))(p, cfg, 1), fg.grad(f)(p, cfg, 1))


def test_random_keys_make_the_recomputation_deterministic():
    """Dropout keyed by fg.random draws the same mask in the recomputation."""
    key = fg.random.key(0)

    def f(w, key):
        return (fg.random.normal(key, (4,), dtype=torch.float64) * w).sin().sum()

    w = t(4, seed=27)
    assert_trees_allclose(fg.grad(checkpoint(f))(w, key), fg.grad(f)(w, key))
    assert_trees_allclose(
        fg.vmap(fg.grad(checkpoint(f)), in_axes=(None, 0))(w, fg.random.split(key, 3)),
        fg.vmap(fg.grad(f), in_axes=(None, 0))(w, fg.random.split(key, 3)),
    )


@settings(max_examples=10)
@given(helpers.nonempty_trees())
def test_grad_on_random_trees(tree):
    """checkpoint(f) and f have the same gradient on random pytrees."""

    def f(tree):
        return sum((torch.sin(x) * x).sum() for x in fg.tree.leaves(tree))

    assert_trees_allclose(fg.grad(checkpoint(f))(tree), fg.grad(f)(tree))


@pytest.mark.parametrize("reentrant", [False, True])
def test_torch_checkpoint_fails_under_torch_func(reentrant):
    """Why funcgrad has its own: torch.utils.checkpoint is refused by torch.func.grad."""
    match = "saved tensor hooks" if not reentrant else "setup_context"
    with pytest.raises(RuntimeError, match=match):
        torch.func.grad(
            lambda x: torch.utils.checkpoint.checkpoint(torch.sin, x, use_reentrant=reentrant).sum()
        )(t(3))


def test_errors():
    """Bad static_argnums, a static position past the arguments, a non-callable."""
    with pytest.raises(TypeError, match=r"static_argnums must be an int or a tuple"):
        checkpoint(torch.sin, static_argnums="0")
    with pytest.raises(ValueError, match=r"checkpoint\(sin\): static_argnums contains 1, but"):
        fg.grad(lambda x: checkpoint(torch.sin, static_argnums=1)(x).sum())(t(2))
    with pytest.raises(TypeError, match=r"funcgrad.checkpoint: expected a callable"):
        checkpoint(3)
    with pytest.raises(TypeError, match=r"every leaf of the function's output must be a tensor"):
        fg.grad(lambda x: checkpoint(lambda x: (x.sum(), "s"))(x)[0])(t(2))


def test_keeps_metadata_and_plain_call():
    """The wrapper keeps the name; without differentiation it simply calls the function."""
    f = checkpoint(functools.partial(layer, act=torch.tanh))
    assert checkpoint(layer).__name__ == "layer"
    assert_trees_allclose(f(_params(1)[0], _X), layer(_params(1)[0], _X, torch.tanh))


def test_nested_transforms_under_jit_raise():
    """Inside jit, grad of grad through checkpoint is refused (it would come back as zeros)."""
    f = checkpoint(torch.sin)
    gg = fg.jit(lambda x: fg.grad(lambda x: fg.grad(lambda y: f(y).sum())(x).sum())(x))
    with pytest.raises(RuntimeError, match=r"checkpoint\(sin\): inside funcgrad.jit, .* support"):
        gg(t(3))


_ste = fg.custom_vjp(torch.round)
_ste.defvjp(lambda x: (_ste(x), None), lambda _, g: (g,))


@pytest.mark.parametrize("inner", ["checkpoint", "custom_vjp"])
def test_nested_checkpoint_and_custom_vjp_inside_under_jit(inner):
    """jit(grad) through a checkpoint whose function holds another checkpoint or a custom_vjp
    function (both run one level up in the recomputation) equals the plain derivative."""
    g = checkpoint(torch.sin) if inner == "checkpoint" else _ste
    h = lambda x: (g(x * 2) * torch.cos(x)).sum()  # noqa: E731
    x = t(5, seed=3)
    expected = fg.grad(h)(x)
    assert_trees_allclose(fg.jit(fg.grad(checkpoint(h)), backend="aot_eager")(x), expected)
    if inner == "custom_vjp":
        assert_trees_allclose(fg.grad(checkpoint(h))(x), expected)


@pytest.mark.parametrize("transform", ["grad", "grad_of_grad", "vmap_grad"])
def test_nested_checkpoint_eager(transform: str) -> None:
    """A checkpoint inside a checkpoint, in eager mode: the inner one runs as plain code in the
    outer recomputation; derivatives equal the unwrapped function's."""
    g = checkpoint(torch.sin)
    nested = checkpoint(lambda x: (g(x * 2) * x).sum())
    plain = lambda x: (torch.sin(x * 2) * x).sum()  # noqa: E731
    x = t(3)
    if transform == "grad":
        assert_trees_allclose(fg.grad(nested)(x), fg.grad(plain)(x))
    elif transform == "grad_of_grad":
        assert_trees_allclose(
            fg.grad(lambda x: fg.grad(nested)(x).sum())(x),
            fg.grad(lambda x: fg.grad(plain)(x).sum())(x),
        )
    else:
        xs = torch.stack([x, x * 0.5])
        assert_trees_allclose(fg.vmap(fg.grad(nested))(xs), fg.vmap(fg.grad(plain))(xs))


def test_second_level_under_jit_raises():
    """grad of vmap, and an inner transform that does not track the input, come back as zeros
    from torch.compile: refused; a custom_jvp function inside a checkpoint too."""
    f, x = checkpoint(torch.sin), t(3, seed=4)
    log1p = fg.custom_jvp(torch.log1p)
    log1p.defjvp(lambda p, tg: (log1p(p[0]), tg[0] / (1 + p[0])))
    cases = [
        lambda x: fg.grad(lambda x: fg.vmap(f)(x).sum())(x),
        lambda x: fg.grad(lambda x: fg.grad(lambda y: (y * f(x)).sum())(x.new_ones(())))(x),
        fg.grad(checkpoint(lambda x: log1p(x.exp()).sum())),
    ]
    for case, name in zip(cases, ["checkpoint", "checkpoint", "custom_jvp"]):
        with pytest.raises(RuntimeError, match=rf"{name}\(.*\): inside funcgrad.jit, .* support"):
            fg.jit(case, backend="aot_eager")(x)
