"""Tests for funcgrad.testing: check_grads against finite differences, and tree comparison."""

from __future__ import annotations

import math
import re
from typing import Any

import helpers
import numpy as np
import pytest
import torch
from hypothesis import assume, given

import funcgrad as fg
from funcgrad.testing import assert_trees_allclose, check_grads, default_tolerance

F64 = torch.float64

# --------------------------------------------------------------------------------------------
# Functions with known derivatives, right and wrong
# --------------------------------------------------------------------------------------------


def sin_times(tree: Any) -> Any:
    """A smooth leafwise map, x -> sin(x) * x."""
    return fg.tree.map(lambda x: torch.sin(x) * x, tree)


def mixing(tree: Any) -> Any:
    """A smooth function that mixes all leaves into a pytree output."""
    total = sum((torch.tanh(x) ** 2).sum() for x in fg.tree.leaves(tree))
    return {"total": total, "tree": fg.tree.map(lambda x: torch.exp(x / 3) * total, tree)}


def wrong_first(x: torch.Tensor) -> torch.Tensor:
    """Value sin(x), derivative 2 (should be cos(x))."""
    return torch.sin(x).detach() + 2 * (x - x.detach())


def wrong_second(x: torch.Tensor) -> torch.Tensor:
    """Value x**3 and first derivative 3 x**2, both right; second derivative 0 (should be 6x)."""
    c = x.detach()
    return c**3 + 3 * c**2 * (x - c)


def wrong_third(x: torch.Tensor) -> torch.Tensor:
    """Value x**4 with right first and second derivatives; third derivative 0 (should be 24x)."""
    c = x.detach()
    return c**4 + 4 * c**3 * (x - c) + 6 * c**2 * (x - c) ** 2


def mlp(layers: Any, x: torch.Tensor, scale: torch.Tensor) -> Any:
    """Several arguments (a list with a dataclass and a dict, a matrix, a scalar), tree output."""
    h = torch.tanh(x @ layers[0].weight + layers[0].bias)
    y = h @ layers[1]["w"]
    return {"y": y * scale, "stats": (y.mean(), (h**2).sum() * scale)}


def mlp_args(dtype: torch.dtype = F64) -> tuple[Any, ...]:
    t = helpers.t
    layers = [helpers.Layer(t(3, 4, seed=1), t(4, seed=2)), {"w": t(4, 2, seed=3)}]
    return fg.tree.map(lambda a: a.to(dtype), (layers, t(5, 3, seed=4), t(seed=5)))


LABEL = {
    "fwd": r"forward mode \(fwd, funcgrad\.jvp\)",
    "rev": r"reverse mode \(rev, funcgrad\.vjp\)",
}
NAME = {"fwd": "JVP", "rev": "VJP"}
ORDERS = [1, 2]
MODES = [("fwd",), ("rev",), ("fwd", "rev")]

# --------------------------------------------------------------------------------------------
# check_grads passes on correct derivatives
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fun", [sin_times, mixing])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("tree", helpers.corpus(), ids=helpers.CORPUS_IDS)
def test_check_grads_passes_on_corpus(tree: Any, order: int, fun: Any) -> None:
    """Correct derivatives of smooth functions of every corpus tree pass, both modes."""
    check_grads(fun, (tree,), order)


@pytest.mark.parametrize("modes", MODES)
@pytest.mark.parametrize("order", ORDERS)
def test_check_grads_passes_with_several_args_and_tree_output(
    order: int, modes: tuple[str, ...]
) -> None:
    """Several pytree arguments (dataclass, dict, scalar) and a nested output pass."""
    check_grads(mlp, mlp_args(), order, modes)


def test_check_grads_passes_at_order_3() -> None:
    """Any positive order works: third derivatives of a smooth function pass."""
    check_grads(mixing, ({"a": helpers.t(3, seed=1), "b": helpers.t(seed=2)},), order=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_check_grads_passes_in_lower_precision(dtype: torch.dtype) -> None:
    """Default tolerances for lower-precision inputs accept their analytic rounding error."""
    x = helpers.t(4, seed=3).to(dtype)
    check_grads(sin_times, (x,), order=2)
    check_grads(mlp, mlp_args(dtype), order=1)


# --------------------------------------------------------------------------------------------
# check_grads fails on wrong derivatives
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_check_grads_catches_wrong_first_derivative(mode: str) -> None:
    """A wrong first derivative fails in each mode; the message names mode, order and values."""
    x = helpers.t(seed=7)
    with pytest.raises(AssertionError, match=rf"{LABEL[mode]} check failed at order 1") as info:
        check_grads(wrong_first, (x,), 1, (mode,))
    message = str(info.value)
    assert f"({NAME[mode]} of f)" in message
    assert "rtol=1e-06, atol=1e-06, eps=0.0001" in message
    # For a scalar x, both sides scale with the random directions: their ratio is 2 / cos(x).
    if mode == "fwd":
        found = re.search(r"at out, element \(\): analytic (\S+), numerical (\S+),", message)
    else:
        found = re.search(r"<vjp\(u\), v> = (\S+) but <u, J v> = (\S+) by", message)
    assert found is not None, message
    analytic, numerical = float(found.group(1)), float(found.group(2))
    assert analytic / numerical == pytest.approx(2 / math.cos(x.item()), rel=1e-6)


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_check_grads_passes_order_1_but_catches_wrong_second_derivative(mode: str) -> None:
    """First derivatives right, second wrong: order 1 passes, order 2 fails in each mode."""
    x = helpers.t(3, seed=8)
    check_grads(wrong_second, (x,), 1)
    name = NAME[mode]
    with pytest.raises(
        AssertionError,
        match=rf"{LABEL[mode]} check failed at order 2 \({name} of \({name} of f\)\)",
    ):
        check_grads(wrong_second, (x,), 2, (mode,))


def test_check_grads_catches_wrong_third_derivative() -> None:
    """Right up to second derivatives, wrong third: order 2 passes and order 3 fails."""
    x = helpers.t(3, seed=9)
    check_grads(wrong_third, (x,), 2)
    with pytest.raises(AssertionError, match=r"order 3 \(JVP of \(JVP of \(JVP of f\)\)\)"):
        check_grads(wrong_third, (x,), 3)


def half_wrong(params: Any) -> Any:
    """Only the output 'bad' (a function of the input 'b' alone) has a wrong derivative."""
    return {"good": torch.sin(params["a"]) * 3, "bad": wrong_first(params["b"]).sum()}


def test_check_grads_failure_names_worst_leaf() -> None:
    """The message gives the tree path of the bad output leaf (fwd) and input leaf (rev)."""
    params = {"a": helpers.t(2, 2, seed=10), "b": helpers.t(3, seed=11)}
    with pytest.raises(AssertionError, match=r"at out\['bad'\], element \(\): analytic"):
        check_grads(half_wrong, (params,), 1, ("fwd",))
    with pytest.raises(
        AssertionError, match=r"output leaf out\['bad'\] .* input leaf args\[0\]\['b'\]"
    ):
        check_grads(half_wrong, (params,), 1, ("rev",))


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_check_grads_catches_primal_mismatch(mode: str) -> None:
    """The primal output of jvp/vjp must equal f(*args): a function that drifts fails."""
    calls: list[None] = []

    def drifting(x: torch.Tensor) -> torch.Tensor:
        calls.append(None)
        return torch.sin(x) + len(calls)

    transform = "jvp" if mode == "fwd" else "vjp"
    with pytest.raises(
        AssertionError, match=rf"primal output of funcgrad\.{transform} differs .* at out"
    ):
        check_grads(drifting, (helpers.t(2),), 1, (mode,))


# --------------------------------------------------------------------------------------------
# Tolerances, eps, float64 finite differences, seeds
# --------------------------------------------------------------------------------------------


def slightly_wrong(x: torch.Tensor) -> torch.Tensor:
    """Derivative 1.0001 for the value x: relative error 1e-4."""
    return x.detach() + 1.0001 * (x - x.detach())


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_check_grads_rtol(mode: str) -> None:
    """A relative derivative error of 1e-4 fails the float64 default (1e-6) but not rtol=1e-3."""
    x = helpers.t(4, seed=12)
    with pytest.raises(AssertionError, match=r"rtol=1e-06, atol=1e-06"):
        check_grads(slightly_wrong, (x,), 1, (mode,))
    check_grads(slightly_wrong, (x,), 1, (mode,), rtol=1e-3)


def test_check_grads_atol() -> None:
    """An absolute derivative error of 1e-5 fails the default atol but not atol=1e-3."""

    def offset(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) + 1e-5 * (x - x.detach())

    x = helpers.t(4, seed=13)
    with pytest.raises(AssertionError, match=r"atol=1e-06"):
        check_grads(offset, (x,), 1, ("fwd",))
    check_grads(offset, (x,), 1, ("fwd",), atol=1e-3)


def test_check_grads_eps() -> None:
    """A large step makes the O(eps**2) error of central differences visible for x**3."""
    x = helpers.t(4, seed=14)
    check_grads(lambda a: a**3, (x,), 1)
    with pytest.raises(AssertionError, match=r"eps=0\.1 "):
        check_grads(lambda a: a**3, (x,), 1, eps=0.1)


@pytest.mark.parametrize(
    ("dtype", "tolerances"),
    [
        (torch.float64, "rtol=1e-06, atol=1e-06"),
        (torch.float32, "rtol=0.001, atol=0.0001"),
        (torch.float16, "rtol=0.03, atol=0.03"),
        (torch.bfloat16, "rtol=0.1, atol=0.1"),
    ],
)
def test_check_grads_default_tolerances_by_dtype(dtype: torch.dtype, tolerances: str) -> None:
    """Defaults follow the least precise dtype; eps is 1e-4 for every dtype."""
    x = helpers.t(3, seed=15).to(dtype)
    with pytest.raises(AssertionError, match=rf"{tolerances}, eps=0\.0001 .*{dtype}"):
        check_grads(wrong_first, (x,), 1)
    # A float64 argument next to a less precise one does not tighten the defaults.
    with pytest.raises(AssertionError, match=rf"{tolerances}, eps=0\.0001 .*{dtype}"):
        check_grads(lambda a, b: wrong_first(a) + b.sum().to(dtype), (x, helpers.t(2)), 1)


def test_check_grads_upcasts_float32_for_finite_differences() -> None:
    """Finite differences run in float64 on upcast copies of float32 inputs.

    At x = 1000 the float32 grid spacing (6.1e-5) is close to eps = 1e-4, so a float32 central
    difference of x**2 is far from 2x; the float64 one is exact, so check_grads passes.
    """
    x = torch.tensor([1000.0, -1000.0])
    eps = torch.tensor(1e-4)
    float32_difference = ((x + eps) ** 2 - (x - eps) ** 2) / (2 * eps)
    assert not torch.allclose(float32_difference, 2 * x, rtol=0.1)

    seen: list[torch.dtype] = []

    def square(a: torch.Tensor) -> torch.Tensor:
        seen.append(a.dtype)
        return a**2

    check_grads(square, (x,), 2)
    assert set(seen) == {torch.float32, torch.float64}


def test_check_grads_upcast_error() -> None:
    """A function that cannot take float64 copies of float32 inputs gets a clear error."""
    matrix = torch.ones(3, 2)
    with pytest.raises(TypeError, match=r"f raised RuntimeError when called on float64 copies"):
        check_grads(lambda a: a @ matrix, (torch.ones(3),), 1)


def test_check_grads_directions_come_from_seeded_generator() -> None:
    """The tangent is the first standard normal draw of a generator seeded with seed (float64,
    then cast to the argument's dtype); the global RNG is not used."""

    def recorded_tangent(seed: int, dtype: torch.dtype) -> torch.Tensor:
        inputs: list[torch.Tensor] = []

        def f(a: torch.Tensor) -> torch.Tensor:
            inputs.append(a.detach().clone())
            return 3 * a  # linear: central differences are exact for any eps

        x = helpers.t(5, seed=16).to(dtype)
        check_grads(f, (x,), 1, ("fwd",), seed=seed, eps=0.5)
        plus, minus = inputs[-2:]  # the last two calls are f(x + eps v) and f(x - eps v)
        assert plus.dtype == minus.dtype == F64
        return (plus - minus) / (2 * 0.5)

    state = torch.get_rng_state()
    for seed, dtype in [(0, F64), (3, F64), (3, torch.float32)]:
        expected = torch.randn(5, generator=torch.Generator().manual_seed(seed), dtype=F64)
        expected = expected.to(dtype).to(F64)
        assert_trees_allclose(recorded_tangent(seed, dtype), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.allclose(recorded_tangent(0, F64), recorded_tangent(1, F64))


# --------------------------------------------------------------------------------------------
# check_grads: bad input
# --------------------------------------------------------------------------------------------

X = helpers.t(3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"f": 3}, TypeError, r"expected a callable f, got int 3"),
        ({"args": [X]}, TypeError, r"args to be a tuple .*got a list of length 1.*\(x,\)"),
        ({"args": X}, TypeError, r"got a torch\.float64 tensor of shape \(3,\)"),
        ({"args": ()}, ValueError, r"args has no tensor leaves"),
        (
            {"args": ({"w": X, "n": torch.arange(2)},)},
            TypeError,
            r"leaf at args\[0\]\['n'\] is a torch\.int64 tensor of shape \(2,\)",
        ),
        (
            {"args": (X, 1.0)},
            TypeError,
            r"floating-point tensor, but the leaf at args\[1\] is float",
        ),
        (
            {"args": (X.to(torch.complex128),)},
            TypeError,
            r"real floating-point tensor, but the leaf at args\[0\] is a torch\.complex128",
        ),
        ({"order": 0}, ValueError, r"expected order >= 1, got 0"),
        ({"order": 1.0}, TypeError, r"expected order to be an int, got 1\.0"),
        ({"order": True}, TypeError, r"expected order to be an int, got True"),
        ({"modes": "fwd"}, TypeError, r"got 'fwd'\. Write modes=\('fwd',\)"),
        ({"modes": ("fwd", "bwd")}, ValueError, r"'fwd'.*and 'rev'.*got \('fwd', 'bwd'\)"),
        ({"modes": ()}, ValueError, r"non-empty tuple .* got \(\)"),
        ({"atol": -1.0}, ValueError, r"atol to be None or a non-negative float, got -1\.0"),
        ({"rtol": math.nan}, ValueError, r"rtol to be None or a non-negative float, got nan"),
        ({"eps": 0.0}, ValueError, r"eps to be None or a positive float, got 0\.0"),
        ({"seed": "0"}, TypeError, r"expected seed to be an int, got '0'"),
        (
            {"f": lambda x: {"i": x.argmax(), "y": x}},
            TypeError,
            r"every leaf of the output of f .* leaf at out\['i'\] is a torch\.int64 tensor",
        ),
        ({"f": lambda x: {"n": 1.0}}, TypeError, r"leaf at out\['n'\] is float 1\.0"),
        ({"f": lambda x: None}, ValueError, r"the output of f has no tensor leaves"),
    ],
)
def test_check_grads_bad_input(kwargs: dict[str, Any], error: type, match: str) -> None:
    """Bad arguments raise a clear error naming check_grads, the expectation and what was got."""
    call: dict[str, Any] = {"f": torch.sin, "args": (X,), "order": 1, **kwargs}
    with pytest.raises(error, match=r"funcgrad\.testing\.check_grads: .*" + match):
        check_grads(**call)


# --------------------------------------------------------------------------------------------
# check_grads: properties
# --------------------------------------------------------------------------------------------


@given(helpers.trees(), helpers.seeds)
def test_check_grads_passes_on_random_trees(tree: Any, seed: int) -> None:
    """Property: the derivatives of a smooth leafwise map pass at order 2, for any seed."""
    assume(fg.tree.leaves(tree))
    check_grads(sin_times, (tree,), 2, seed=seed)


@given(helpers.trees())
def test_check_grads_fails_on_random_trees(tree: Any) -> None:
    """Property: a derivative that is off by at least 1 everywhere fails in both modes."""
    assume(fg.tree.leaves(tree))
    for mode in ("fwd", "rev"):
        with pytest.raises(AssertionError, match=LABEL[mode]):
            check_grads(lambda tr: fg.tree.map(wrong_first, tr), (tree,), 1, (mode,))


# --------------------------------------------------------------------------------------------
# assert_trees_allclose and default_tolerance
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tree", helpers.corpus(), ids=helpers.CORPUS_IDS)
def test_assert_trees_allclose_passes_on_equal_trees(tree: Any) -> None:
    """A tree equals a copy of itself, and a copy perturbed well inside the tolerance."""
    assert_trees_allclose(tree, fg.tree.map(torch.clone, tree))
    assert_trees_allclose(tree, fg.tree.map(lambda x: x * (1 + 1e-9), tree))


@pytest.mark.parametrize(
    ("actual", "desired", "match"),
    [
        ({"a": X}, {"b": X}, r"structures at tree: actual has a dict node \{'a': \*\}"),
        ([X, (X,)], [X, [X]], r"structures at tree\[1\]: actual has a tuple node"),
        (
            {"a": [X, X]},
            {"a": [X]},
            r"structures at tree\['a'\]: actual has a list node \[\*, \*\]",
        ),
        ({"a": None}, {"a": X}, r"structures at tree\['a'\]: actual has None, desired has a leaf"),
        (
            [helpers.Layer(X, X, "relu")],
            [helpers.Layer(X, X, "tanh")],
            r"structures at tree\[0\]: actual has a Layer node .*relu",
        ),
        ({"w": X[:2]}, {"w": X}, r"differ at tree\['w'\]: shape \(2,\) != \(3,\)"),
        (
            {"w": X.float()},
            {"w": X},
            r"differ at tree\['w'\]: dtype torch\.float32 != torch\.float64",
        ),
        ([1, "a"], [1, "b"], r"differ at tree\[1\]: 'a' != 'b'"),
        ([X[0]], [X[0].item()], r"differ at tree\[0\]: tensor\(.*\) != -?\d"),
        (
            [torch.tensor([1, 2, 3])],
            [torch.tensor([1, 2, 4])],
            r"tree\[0\]: 1 of 3 elements differ; first at index \(2,\): actual 3, desired 4",
        ),
        (
            [torch.tensor([1.0, math.nan])],
            [torch.tensor([1.0, 2.0])],
            r"tree\[0\]: .*1 of 2 elements outside .*worst element \(1,\): actual nan, desired 2",
        ),
    ],
)
def test_assert_trees_allclose_failures(actual: Any, desired: Any, match: str) -> None:
    """Structure, shape, dtype, value and non-tensor differences name the tree path."""
    with pytest.raises(AssertionError, match=match):
        assert_trees_allclose(actual, desired)


def test_assert_trees_allclose_value_message() -> None:
    """The value message gives the largest errors and the worst element, computed by hand."""
    actual = {"p": [X, torch.tensor([[1.0, 2.0], [3.0, 4.0]])]}
    desired = {"p": [X, torch.tensor([[1.0, 2.0], [3.0, 4.5]])]}
    with pytest.raises(
        AssertionError,
        match=re.escape(
            "trees differ at tree['p'][1]: max abs error 0.5, max rel error 0.111 (1 of 4 "
            "elements outside rtol=1e-05, atol=1e-06); worst element (1, 1): actual 4, desired 4.5"
        ),
    ):
        assert_trees_allclose(actual, desired)


@pytest.mark.parametrize(
    ("dtype", "close", "far"), [(torch.float64, 5e-8, 5e-6), (torch.float32, 5e-6, 5e-4)]
)
def test_assert_trees_allclose_default_tolerance(
    dtype: torch.dtype, close: float, far: float
) -> None:
    """Without rtol/atol the dtype's defaults apply; explicit ones override them."""
    x = torch.linspace(1.0, 2.0, 5, dtype=dtype)
    assert_trees_allclose(x * (1 + close), x)
    rtol, atol = default_tolerance(dtype)
    with pytest.raises(AssertionError, match=rf"rtol={rtol:g}, atol={atol:g}"):
        assert_trees_allclose(x * (1 + far), x)
    assert_trees_allclose(x * (1 + far), x, rtol=10 * far)
    with pytest.raises(AssertionError, match=r"rtol=0, atol=0"):
        assert_trees_allclose(x * (1 + close), x, rtol=0.0, atol=0.0)


def test_assert_trees_allclose_check_dtype_false() -> None:
    """check_dtype=False compares values in the promoted dtype (no truncation to int)."""
    assert_trees_allclose([X.float()], [X], check_dtype=False)
    assert_trees_allclose([torch.tensor([1, 2])], [torch.tensor([1.0, 2.0])], check_dtype=False)
    with pytest.raises(AssertionError, match=r"tree\[0\]: max abs error 0\.4"):
        assert_trees_allclose([torch.tensor([1])], [torch.tensor([1.4])], check_dtype=False)


def test_assert_trees_allclose_nan_in_same_places() -> None:
    """NaNs in the same positions compare equal."""
    x = torch.tensor([1.0, math.nan])
    assert_trees_allclose({"x": x}, {"x": x.clone()})


def test_assert_trees_allclose_accepts_arrays() -> None:
    """JAX and NumPy arrays are compared as tensors, on either side."""
    _, jnp = helpers.require_jax()
    tree = {"w": helpers.t(2, 3, seed=1), "b": helpers.t(3, seed=2)}
    assert_trees_allclose(helpers.to_jax(tree), tree)
    assert_trees_allclose(tree, helpers.to_jax(tree))
    assert_trees_allclose(fg.tree.map(lambda x: x.numpy(), tree), tree)
    # A value computed by JAX (float64) against the same value computed by torch.
    assert_trees_allclose(
        jnp.sin(jnp.asarray(np.array([0.5, 1.5]))), torch.sin(torch.tensor([0.5, 1.5], dtype=F64))
    )
    with pytest.raises(AssertionError, match=r"differ at tree\['b'\]: max abs error 1"):
        assert_trees_allclose(helpers.to_jax(tree), fg.tree.map(torch.add, tree, {"w": 0, "b": 1}))
    with pytest.raises(AssertionError, match=r"dtype torch\.float32 != torch\.float64"):
        assert_trees_allclose(jnp.ones(2, dtype=jnp.float32), torch.ones(2, dtype=F64))


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float64, (1e-7, 1e-10)),
        (torch.float32, (1e-5, 1e-6)),
        (torch.float16, (1e-3, 1e-3)),
        (torch.bfloat16, (1e-2, 1e-2)),
        (torch.complex128, (1e-7, 1e-10)),
        (torch.complex64, (1e-5, 1e-6)),
        (torch.int64, (0.0, 0.0)),
        (torch.bool, (0.0, 0.0)),
    ],
)
def test_default_tolerance_table(dtype: torch.dtype, expected: tuple[float, float]) -> None:
    """The documented table; floating tolerances are never below the dtype's machine epsilon."""
    assert default_tolerance(dtype) == expected
    if dtype.is_floating_point or dtype.is_complex:
        assert default_tolerance(dtype)[0] >= torch.finfo(dtype).eps
