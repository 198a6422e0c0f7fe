"""Tests for ``funcgrad.grad`` and ``funcgrad.value_and_grad``.

Numbers are checked against JAX (float64, CPU), ``torch.autograd`` and finite differences.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import helpers
import pytest
import torch
from helpers import Layer, Point, t
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad.testing import assert_trees_allclose

# --------------------------------------------------------------------------------------------
# The same scalar functions written twice, in torch and in jax.numpy
# --------------------------------------------------------------------------------------------


def _mlp_torch(params, x, y):
    h = torch.tanh(x @ params["w1"] + params["b1"])
    out = h @ params["w2"] + params["b2"]
    return ((out - y) ** 2).mean()


def _mix_torch(x, y):
    scores = torch.sin(x) @ torch.exp(y).T
    return torch.logsumexp(scores, dim=-1).sum() + (torch.tanh(x) ** 2).mean()


def _namedtuple_torch(p, scale):
    return torch.tanh(p.x * scale).sum() * p.y["z"] ** 2 + torch.exp(-(scale**2)).sum()


def _nested_torch(tree, w):
    x, (m, z) = tree["a"]
    first = torch.sin(m @ (x * w)).sum()
    second = z * torch.dot(tree["b"].x, torch.cos(tree["b"].y))
    return first + second + torch.log1p(w**2).sum()


def _jax_functions(jax: Any, jnp: Any) -> dict[str, Callable[..., Any]]:
    def mlp(params, x, y):
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        out = h @ params["w2"] + params["b2"]
        return ((out - y) ** 2).mean()

    def mix(x, y):
        scores = jnp.sin(x) @ jnp.exp(y).T
        return jax.nn.logsumexp(scores, axis=-1).sum() + (jnp.tanh(x) ** 2).mean()

    def namedtuple(p, scale):
        return jnp.tanh(p.x * scale).sum() * p.y["z"] ** 2 + jnp.exp(-(scale**2)).sum()

    def nested(tree, w):
        x, (m, z) = tree["a"]
        first = jnp.sin(m @ (x * w)).sum()
        second = z * jnp.dot(tree["b"].x, jnp.cos(tree["b"].y))
        return first + second + jnp.log1p(w**2).sum()

    return {"mlp": mlp, "mix": mix, "namedtuple": namedtuple, "nested": nested}


def _mlp_params(seed: int = 0) -> dict[str, torch.Tensor]:
    return {
        "w1": t(3, 4, seed=seed),
        "b1": t(4, seed=seed + 1),
        "w2": t(4, 2, seed=seed + 2),
        "b2": t(2, seed=seed + 3),
    }


def _args(name: str) -> tuple[Any, ...]:
    if name == "mlp":
        return (_mlp_params(), t(5, 3, seed=10), t(5, 2, seed=11))
    if name == "mix":
        return (t(3, 4, seed=20), t(2, 4, seed=21))
    if name == "namedtuple":
        return (Point(t(3, seed=30), {"z": t(seed=31)}), t(3, seed=32))
    if name == "nested":
        tree = {
            "a": [t(2, seed=40), (t(2, 2, seed=41), t(seed=42))],
            "b": Point(t(2, seed=43), t(2, seed=44)),
        }
        return (tree, t(2, seed=45))
    raise AssertionError(name)


TORCH_FUNCTIONS = {
    "mlp": _mlp_torch,
    "mix": _mix_torch,
    "namedtuple": _namedtuple_torch,
    "nested": _nested_torch,
}
CASES = list(TORCH_FUNCTIONS)
ARGNUMS = [0, 1, -1, (0, 1), (-1, 0)]


def _jax_pair(name: str) -> tuple[Any, Any, Callable[..., Any]]:
    jax, jnp = helpers.require_jax()
    return jax, jnp, _jax_functions(jax, jnp)[name]


# --------------------------------------------------------------------------------------------
# Numerics against JAX and torch.autograd
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argnums", ARGNUMS, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_grad_matches_jax(name, argnums):
    """grad equals jax.grad for int, negative and tuple argnums over pytree arguments."""
    jax, _, jf = _jax_pair(name)
    args = _args(name)
    actual = fg.grad(TORCH_FUNCTIONS[name], argnums)(*args)
    expected = jax.grad(jf, argnums)(*helpers.to_jax(args))
    assert_trees_allclose(actual, expected)


@pytest.mark.parametrize("argnums", ARGNUMS, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_value_and_grad_matches_jax(name, argnums):
    """value_and_grad equals jax.value_and_grad: the value and the gradient."""
    jax, _, jf = _jax_pair(name)
    args = _args(name)
    actual = fg.value_and_grad(TORCH_FUNCTIONS[name], argnums)(*args)
    expected = jax.value_and_grad(jf, argnums)(*helpers.to_jax(args))
    assert_trees_allclose(actual, expected)


@pytest.mark.parametrize("name", CASES)
def test_grad_matches_torch_autograd(name):
    """grad over every argument equals torch.autograd.grad on the flat leaves."""
    args = _args(name)
    argnums = tuple(range(len(args)))
    actual = fg.grad(TORCH_FUNCTIONS[name], argnums)(*args)
    leaves, treedef = fg.tree.flatten(args)
    leaves = [x.detach().clone().requires_grad_(True) for x in leaves]
    out = TORCH_FUNCTIONS[name](*fg.tree.unflatten(treedef, leaves))
    expected = fg.tree.unflatten(treedef, torch.autograd.grad(out, leaves))
    assert_trees_allclose(actual, expected)


def _mlp_with_aux(lib: Any, tanh: Callable[..., Any]) -> Callable[..., Any]:
    def loss(params, x, y):
        h = tanh(x @ params["w1"] + params["b1"])
        out = h @ params["w2"] + params["b2"]
        aux = {"pred": out, "count": x.shape[0], "name": "mse", "parts": (h.sum(), None)}
        return ((out - y) ** 2).mean(), aux

    return loss


@pytest.mark.parametrize("argnums", [0, (0, 2)], ids=str)
def test_grad_has_aux_matches_jax(argnums):
    """has_aux returns aux unchanged (tensors, ints, strings, None) beside the gradient."""
    jax, jnp = helpers.require_jax()
    args = _args("mlp")
    actual = fg.grad(_mlp_with_aux(torch, torch.tanh), argnums, has_aux=True)(*args)
    jf = _mlp_with_aux(jnp, jnp.tanh)
    expected = jax.grad(jf, argnums, has_aux=True)(*helpers.to_jax(args))
    assert_trees_allclose(actual, expected)
    assert actual[1]["count"] == 5
    assert actual[1]["name"] == "mse"


def test_value_and_grad_has_aux_matches_jax():
    """value_and_grad with has_aux returns ((value, aux), grads) like JAX."""
    jax, jnp = helpers.require_jax()
    args = _args("mlp")
    actual = fg.value_and_grad(_mlp_with_aux(torch, torch.tanh), has_aux=True)(*args)
    jf = _mlp_with_aux(jnp, jnp.tanh)
    expected = jax.value_and_grad(jf, has_aux=True)(*helpers.to_jax(args))
    assert_trees_allclose(actual, expected)


def test_has_aux_tensors_are_detached():
    """Aux tensors come back as plain tensors that carry no autograd history."""
    x = t(3)
    _, aux = fg.grad(lambda x: ((x**2).sum(), x * 2), has_aux=True)(x)
    assert type(aux) is torch.Tensor
    assert aux.grad_fn is None
    assert not aux.requires_grad
    assert_trees_allclose(aux, x * 2)


def test_grad_keyword_arguments_are_not_differentiated():
    """Keyword arguments are passed through and treated as constants."""
    jax, _, jf = _jax_pair("mlp")
    params, x, y = _args("mlp")
    actual = fg.grad(_mlp_torch)(params, x=x, y=y)
    expected = jax.grad(jf)(*helpers.to_jax((params, x, y)))
    assert_trees_allclose(actual, expected)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_grad_registered_dataclass_matches_jax(activation):
    """A registered dataclass is differentiated leafwise; static fields are kept."""
    jax, jnp = helpers.require_jax()
    layer = Layer(t(3, 2, seed=1), t(2, seed=2), activation=activation)
    x = t(4, 3, seed=3)

    def loss(layer, x):
        act = torch.tanh if layer.activation == "tanh" else torch.relu
        return (act(x @ layer.weight + layer.bias) ** 2).sum()

    def jax_loss(p, x):
        act = jnp.tanh if activation == "tanh" else jax.nn.relu
        return (act(x @ p["weight"] + p["bias"]) ** 2).sum()

    actual = fg.grad(loss)(layer, x)
    assert isinstance(actual, Layer)
    assert actual.activation == activation
    jax_args = helpers.to_jax(({"weight": layer.weight, "bias": layer.bias}, x))
    expected = jax.grad(jax_loss)(*jax_args)
    expected = helpers.to_torch(expected)
    assert_trees_allclose(actual, Layer(expected["weight"], expected["bias"], activation))


@pytest.mark.parametrize("tree", helpers.corpus(), ids=helpers.CORPUS_IDS)
def test_grad_over_corpus(tree):
    """grad of sum(sin(leaf)) over every corpus tree is cos of each leaf, same structure."""

    def f(tree):
        return sum(
            (torch.sin(x).sum() for x in fg.tree.leaves(tree)), torch.zeros((), dtype=torch.float64)
        )

    assert_trees_allclose(fg.grad(f)(tree), fg.tree.map(torch.cos, tree))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_keeps_dtype(dtype):
    """Gradients have the dtype of their argument."""
    x = t(3, dtype=dtype)
    g = fg.grad(lambda x: (x**3).sum())(x)
    assert_trees_allclose(g, 3 * x**2)


# --------------------------------------------------------------------------------------------
# Composition and nesting
# --------------------------------------------------------------------------------------------


def test_grad_of_grad_matches_jax():
    """grad(grad(f)) and grad(grad(grad(f))) of a scalar function equal JAX's."""
    jax, jnp = helpers.require_jax()
    x = t(seed=5)

    def f(x):
        return torch.sin(x) * torch.exp(x**2 / 4)

    def jf(x):
        return jnp.sin(x) * jnp.exp(x**2 / 4)

    assert_trees_allclose(fg.grad(fg.grad(f))(x), jax.grad(jax.grad(jf))(helpers.to_jax(x)))
    assert_trees_allclose(
        fg.grad(fg.grad(fg.grad(f)))(x), jax.grad(jax.grad(jax.grad(jf)))(helpers.to_jax(x))
    )


def test_meta_learning_grad_through_inner_grad_matches_jax():
    """The outer gradient through an inner SGD step (MAML) equals JAX's, for params and lr."""
    jax, _, jf = _jax_pair("mlp")
    params, x, y = _args("mlp")
    x2, y2 = t(5, 3, seed=50), t(5, 2, seed=51)
    lr = torch.tensor(0.3, dtype=torch.float64)

    def outer(params, lr, x, y, x2, y2):
        g = fg.grad(_mlp_torch)(params, x, y)
        adapted = fg.tree.map(lambda p, gp: p - lr * gp, params, g)
        return _mlp_torch(adapted, x2, y2)

    def jax_outer(params, lr, x, y, x2, y2):
        g = jax.grad(jf)(params, x, y)
        adapted = jax.tree_util.tree_map(lambda p, gp: p - lr * gp, params, g)
        return jf(adapted, x2, y2)

    args = (params, lr, x, y, x2, y2)
    actual = fg.grad(outer, (0, 1))(*args)
    expected = jax.grad(jax_outer, (0, 1))(*helpers.to_jax(args))
    assert_trees_allclose(actual, expected)


def test_grad_of_vmap_reduction_matches_jax():
    """grad of a sum over vmap equals JAX's grad(vmap)."""
    jax, jnp = helpers.require_jax()
    w, xs = t(3, 2, seed=60), t(6, 3, seed=61)

    def per_example(w, x):
        return torch.tanh(x @ w).pow(2).sum()

    def jax_per_example(w, x):
        return (jnp.tanh(x @ w) ** 2).sum()

    def f(w, xs):
        return fg.vmap(per_example, in_axes=(None, 0))(w, xs).sum()

    def jf(w, xs):
        return jax.vmap(jax_per_example, in_axes=(None, 0))(w, xs).sum()

    assert_trees_allclose(fg.grad(f)(w, xs), jax.grad(jf)(*helpers.to_jax((w, xs))))


def test_vmap_of_grad_per_example_gradients():
    """vmap(grad(loss)) equals a loop of torch.autograd.grad and jax.vmap(jax.grad(loss))."""
    jax, _, jf = _jax_pair("mlp")
    params, xs, ys = _args("mlp")
    xs, ys = xs[:, None], ys[:, None]  # five examples, each a batch of one

    actual = fg.vmap(fg.grad(_mlp_torch), in_axes=(None, 0, 0))(params, xs, ys)

    loop = []
    for x, y in zip(xs, ys):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        gs = torch.autograd.grad(_mlp_torch(leaves, x, y), list(leaves.values()))
        loop.append(dict(zip(leaves, gs)))
    assert_trees_allclose(actual, fg.tree.map(lambda *g: torch.stack(g), *loop))

    expected = jax.vmap(jax.grad(jf), in_axes=(None, 0, 0))(*helpers.to_jax((params, xs, ys)))
    assert_trees_allclose(actual, expected)


# --------------------------------------------------------------------------------------------
# Python control flow on concrete values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_grad_python_branch_matches_jax(sign):
    """An `if` on a concrete value inside grad takes the same branch as JAX."""
    jax, jnp = helpers.require_jax()
    x = sign * t(3, seed=70).abs()

    def f(x):
        if x.sum() > 0:
            return torch.sin(x).sum()
        return (torch.cos(x) * x).sum()

    def jf(x):
        if x.sum() > 0:
            return jnp.sin(x).sum()
        return (jnp.cos(x) * x).sum()

    assert_trees_allclose(fg.value_and_grad(f)(x), jax.value_and_grad(jf)(helpers.to_jax(x)))


@pytest.mark.parametrize("scale", [0.5, 3.0, 40.0])
def test_grad_data_dependent_loop_matches_jax(scale):
    """A while loop whose trip count depends on the data differentiates like JAX's."""
    jax, jnp = helpers.require_jax()
    x = scale * t(3, seed=71)

    def f(x):
        steps = 0
        while x.abs().sum() > 1:
            x = torch.sin(x) / 2
            steps += 1
        return (x**2).sum() * (steps + 1)

    def jf(x):
        steps = 0
        while jnp.abs(x).sum() > 1:
            x = jnp.sin(x) / 2
            steps += 1
        return (x**2).sum() * (steps + 1)

    assert_trees_allclose(fg.value_and_grad(f)(x), jax.value_and_grad(jf)(helpers.to_jax(x)))


# --------------------------------------------------------------------------------------------
# Metadata and purity
# --------------------------------------------------------------------------------------------


def _documented(params: dict, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
    """A documented loss."""
    return scale * (params["w"] * x).sum()


@pytest.mark.parametrize(
    "transform",
    [
        fg.grad,
        fg.value_and_grad,
        lambda f: fg.grad(f, argnums=(0, 1)),
        lambda f: fg.grad(fg.grad(f)),
    ],
    ids=["grad", "value_and_grad", "grad_tuple_argnums", "grad_of_grad"],
)
def test_transform_keeps_metadata(transform):
    """The transformed function keeps __name__, __doc__ and the signature."""
    g = transform(_documented)
    assert g.__name__ == "_documented"
    assert g.__doc__ == "A documented loss."
    assert inspect.signature(g) == inspect.signature(_documented)


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
def test_transform_does_not_mutate_inputs(transform):
    """Arguments (containers and tensors) are identical before and after the call."""
    params, x, y = _args("mlp")
    before = fg.tree.map(torch.clone, (params, x, y))
    ids = {k: id(v) for k, v in params.items()}
    transform(_mlp_torch, (0, 1, 2))(params, x, y)
    assert fg.tree.equal((params, x, y), before)
    assert {k: id(v) for k, v in params.items()} == ids
    assert not any(v.requires_grad for v in fg.tree.leaves((params, x, y)))


def test_grads_are_new_tensors():
    """The gradient of the identity-like sum is not the input tensor itself."""
    x = t(3)
    g = fg.grad(lambda x: x.sum())(x)
    assert g is not x
    assert_trees_allclose(g, torch.ones_like(x))


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


def _smooth_scalar(tree: Any) -> torch.Tensor:
    terms = [(torch.sin(x) * x + 0.1 * x**3).sum() for x in fg.tree.leaves(tree)]
    return sum(terms, torch.zeros((), dtype=torch.float64))


def _has_leaves(tree: Any) -> bool:
    return len(fg.tree.leaves(tree)) > 0


@given(helpers.trees().filter(_has_leaves))
def test_value_and_grad_agree_with_f_and_grad(tree):
    """value_and_grad's value is f(x) and its gradient is grad's; structure is kept."""
    value, g = fg.value_and_grad(_smooth_scalar)(tree)
    assert_trees_allclose(value, _smooth_scalar(tree))
    assert_trees_allclose(g, fg.grad(_smooth_scalar)(tree))
    assert fg.tree.structure(g) == fg.tree.structure(tree)


@given(helpers.trees().filter(_has_leaves))
def test_grad_analytic_on_trees(tree):
    """grad of sum(sin(x) x + 0.1 x^3) is sin(x) + x cos(x) + 0.3 x^2 leafwise."""
    expected = fg.tree.map(lambda x: torch.sin(x) + x * torch.cos(x) + 0.3 * x**2, tree)
    assert_trees_allclose(fg.grad(_smooth_scalar)(tree), expected)


@given(helpers.tensors(), helpers.tensors(), st.floats(-2, 2), st.floats(-2, 2))
def test_grad_is_linear_in_the_function(x, y, a, b):
    """grad(a f + b g) = a grad(f) + b grad(g), for tuple argnums."""

    def f(x, y):
        return torch.tanh(x).sum() * torch.exp(-(y**2)).sum()

    def g(x, y):
        return (torch.sin(x) ** 2).sum() + y.sum()

    combined = fg.grad(lambda x, y: a * f(x, y) + b * g(x, y), (0, 1))(x, y)
    fx, gx = fg.grad(f, (0, 1))(x, y), fg.grad(g, (0, 1))(x, y)
    expected = fg.tree.add(fg.tree.scale(a, fx), fg.tree.scale(b, gx))
    assert_trees_allclose(combined, expected, rtol=1e-9, atol=1e-12)


@settings(max_examples=15)
@given(helpers.trees(max_leaves=4).filter(_has_leaves), helpers.seeds)
def test_grad_agrees_with_finite_differences(tree, seed):
    """grad passes check_grads (f to order 2, grad(f) to order 1) and matches a central FD."""
    fg.testing.check_grads(_smooth_scalar, (tree,), order=2, seed=seed)
    fg.testing.check_grads(fg.grad(_smooth_scalar), (tree,), order=1, seed=seed)
    v = fg.tree.map(lambda x: t(*x.shape, seed=seed), tree)
    eps = 1e-5
    plus = _smooth_scalar(fg.tree.add(tree, fg.tree.scale(eps, v)))
    minus = _smooth_scalar(fg.tree.sub(tree, fg.tree.scale(eps, v)))
    directional = fg.tree.dot(fg.grad(_smooth_scalar)(tree), v)
    assert_trees_allclose(directional, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
def test_error_non_scalar_output(transform):
    """A non-scalar output names its shape and suggests .sum() or jacrev."""
    name = transform.__name__
    with pytest.raises(
        TypeError,
        match=rf"funcgrad\.{name}: .*scalar output .*shape \(3,\).*\.sum\(\).*jacrev",
    ):
        transform(torch.sin)(t(3))


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
def test_error_integer_output(transform):
    """An integer scalar output asks for a floating-point loss."""
    with pytest.raises(TypeError, match=r"floating-point scalar tensor, got a torch\.int64"):
        transform(lambda x: (x > 0).sum())(t(3))


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
def test_error_non_tensor_output(transform):
    """A non-tensor output is named."""
    with pytest.raises(TypeError, match=r"must return a scalar tensor, but it returned float 1\.0"):
        transform(lambda x: 1.0)(t(3))


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
def test_error_pair_without_has_aux_hints(transform):
    """Returning (loss, aux) without has_aux suggests has_aux=True."""
    with pytest.raises(TypeError, match=r"returned a tuple of length 2\. .*pass has_aux=True"):
        transform(lambda x: (x.sum(), {"n": 1}))(t(3))


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
@pytest.mark.parametrize(
    ("ret", "got"),
    [
        (lambda x: x.sum(), r"a torch\.float64 tensor of shape \(\)"),
        (lambda x: (x.sum(), 1, 2), r"a tuple of length 3"),
    ],
    ids=["scalar", "triple"],
)
def test_error_has_aux_without_pair(transform, ret, got):
    """has_aux=True with a function that does not return a pair says what it returned."""
    with pytest.raises(TypeError, match=rf"has_aux=True .*must return a pair .*returned {got}"):
        transform(ret, has_aux=True)(t(3))


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
@pytest.mark.parametrize("argnums", [2, -3, (0, 5)], ids=str)
def test_error_argnums_out_of_range(transform, argnums):
    """argnums beyond the positional arguments is reported at call time with the count."""
    g = transform(lambda x, y: (x * y).sum(), argnums)
    with pytest.raises(
        ValueError, match=r"argnums=-?\d is out of range for a call with 2 positional"
    ):
        g(t(2), t(2))


def test_error_differentiated_argument_passed_by_keyword():
    """A differentiated argument given as a keyword is out of range and the hint says so."""
    with pytest.raises(ValueError, match=r"argnums=0 .*0 positional arguments.*positionally"):
        fg.grad(lambda x: x.sum())(x=t(2))


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
def test_error_argnums_repeated(transform):
    """A repeated position is rejected when the transform is created."""
    with pytest.raises(ValueError, match=r"argnums must not repeat a position, got \(0, 0\)"):
        transform(lambda x: x.sum(), (0, 0))


def test_error_argnums_repeated_after_resolving_negative():
    """(0, -2) names one position twice for two arguments; reported at call time."""
    g = fg.grad(lambda x, y: (x * y).sum(), (0, -2))
    with pytest.raises(ValueError, match=r"names the same position twice .*positions \(0, 0\)"):
        g(t(2), t(2))


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
def test_error_argnums_empty(transform):
    """An empty argnums tuple is rejected."""
    with pytest.raises(ValueError, match=r"argnums is an empty tuple"):
        transform(lambda x: x.sum(), ())


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
@pytest.mark.parametrize("argnums", ["0", 1.0, True, (0, "1"), None], ids=repr)
def test_error_argnums_wrong_type(transform, argnums):
    """argnums that is not an int or a tuple of ints is a TypeError naming what it got."""
    with pytest.raises(TypeError, match=r"argnums must be an int or a tuple of ints, got"):
        transform(lambda x: x.sum(), argnums)


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
@pytest.mark.parametrize(
    ("value", "what"),
    [
        (torch.arange(3), r"floating-point tensors, but the leaf at args\[0\]\['a'\] .*int64"),
        (torch.ones(3, dtype=torch.bool), r"floating-point tensors, .*args\[0\]\['a'\] .*bool"),
        (1.5, r"only differentiate tensors, but the leaf at args\[0\]\['a'\] is float 1\.5"),
        ("s", r"only differentiate tensors, but the leaf at args\[0\]\['a'\] is str 's'"),
    ],
    ids=["int", "bool", "float", "str"],
)
def test_error_non_differentiable_leaf(transform, value, what):
    """An integer, bool or non-tensor leaf is named by its tree path."""
    with pytest.raises(TypeError, match=what):
        transform(lambda p: p["b"].sum())({"a": value, "b": t(2)})


def test_error_non_differentiable_leaf_path_in_second_argument():
    """The path points into the right argument for tuple argnums."""
    with pytest.raises(TypeError, match=r"args\[1\]\.y\[0\] is a torch\.int64"):
        fg.grad(lambda x, p: x.sum(), (0, 1))(t(2), Point(t(2), [torch.arange(2)]))


def test_error_nothing_to_differentiate():
    """A differentiated argument with no tensor leaves is reported."""
    with pytest.raises(
        ValueError, match=r"contain no tensors, so there is nothing to differentiate"
    ):
        fg.grad(lambda p, x: x.sum())({}, t(2))


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
def test_error_not_callable(transform):
    """A non-callable is rejected when the transform is created."""
    with pytest.raises(TypeError, match=r"expected a callable as its first argument, got int"):
        transform(3)


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
def test_in_place_write_into_a_differentiated_input_is_an_error(transform: Any) -> None:
    """Writing into a differentiated input is refused with funcgrad's purity error."""
    x = torch.ones(3, dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return x.sum()

    with pytest.raises(
        RuntimeError,
        match=rf"funcgrad\.{transform.__name__}: the function modified a differentiated input "
        r"in place .* must be pure",
    ):
        transform(f)(x)
    assert torch.equal(x, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("transform", [fg.grad, fg.value_and_grad])
def test_in_place_write_into_a_non_differentiated_argument_is_a_purity_error(
    transform: Any,
) -> None:
    """torch.func refuses writes into tensors captured from outside the transform (here a
    non-differentiated argument); funcgrad says so in its own words, and nothing changes."""
    x, y = torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)

    def f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y.mul_(2)
        return (x * y).sum()

    with pytest.raises(
        RuntimeError,
        match=rf"funcgrad\.{transform.__name__}: the function modified in place a tensor it did "
        r"not create \(a non-differentiated argument, or a tensor it closes over\).*must be pure",
    ):
        transform(f)(x, y)
    assert torch.equal(y, torch.ones(2, dtype=torch.float64))
