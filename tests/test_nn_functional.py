"""Tests for ``funcgrad/nn/_functional.py``: activations, losses and ``accuracy``.

Values against ``torch.nn.functional`` and against JAX/optax in float64 (two independent
references); gradients against torch.autograd and finite differences; laws (softmax sums to one
and ignores shifts, cross-entropy with one-hot probabilities equals integer labels) with
hypothesis; errors by message.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import helpers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import nn
from funcgrad.testing import assert_trees_allclose, check_grads

F64 = torch.float64


def _optax() -> Any:
    helpers.require_jax()
    import optax

    return optax


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------

ACTIVATIONS: list[tuple[str, Callable[..., Any], Callable[..., Any], Callable[[Any], Any]]] = [
    ("relu", nn.relu, F.relu, lambda jnn: jnn.relu),
    ("gelu", nn.gelu, F.gelu, lambda jnn: lambda x: jnn.gelu(x, approximate=False)),
    (
        "gelu_tanh",
        lambda x: nn.gelu(x, approximate="tanh"),
        lambda x: F.gelu(x, approximate="tanh"),
        lambda jnn: lambda x: jnn.gelu(x, approximate=True),
    ),
    ("silu", nn.silu, F.silu, lambda jnn: jnn.silu),
    ("softmax", nn.softmax, lambda x: F.softmax(x, -1), lambda jnn: jnn.softmax),
    ("log_softmax", nn.log_softmax, lambda x: F.log_softmax(x, -1), lambda jnn: jnn.log_softmax),
    (
        "softmax_axis0",
        lambda x: nn.softmax(x, axis=0),
        lambda x: F.softmax(x, 0),
        lambda jnn: lambda x: jnn.softmax(x, axis=0),
    ),
]


@pytest.mark.parametrize(
    ("ours", "torch_fn", "jax_fn"), [a[1:] for a in ACTIVATIONS], ids=[a[0] for a in ACTIVATIONS]
)
def test_activation_matches_torch_and_jax(ours: Any, torch_fn: Any, jax_fn: Any) -> None:
    """Values equal torch.nn.functional's and jax.nn's; gradients pass finite differences."""
    jax, _ = helpers.require_jax()
    x = helpers.t(4, 5, seed=1) * 3
    assert_trees_allclose(ours(x), torch_fn(x), rtol=0, atol=0)
    assert_trees_allclose(
        ours(x), helpers.to_torch(jax_fn(jax.nn)(helpers.to_jax(x))), rtol=1e-12, atol=1e-14
    )
    check_grads(ours, (x,), order=2)


@given(helpers.tensors((3, 4)), st.floats(-50, 50))
def test_softmax_laws(x: torch.Tensor, shift: float) -> None:
    """softmax sums to one, ignores a constant shift, and log_softmax is its log."""
    p = nn.softmax(x)
    assert_trees_allclose(p.sum(-1), torch.ones(3, dtype=x.dtype))
    assert_trees_allclose(nn.softmax(x + shift), p, rtol=1e-9, atol=1e-12)
    assert_trees_allclose(nn.log_softmax(x), p.log(), rtol=1e-9, atol=1e-12)


def test_gelu_error() -> None:
    """An unknown approximation is named."""
    with pytest.raises(
        ValueError, match=r"nn\.gelu: approximate must be 'none' or 'tanh', got 'erf'"
    ):
        nn.gelu(torch.ones(2), approximate="erf")


# --------------------------------------------------------------------------------------------
# cross_entropy
# --------------------------------------------------------------------------------------------

SHAPES = [(5, 4), (3, 4, 2), (4,)]


def integer_labels(shape: tuple[int, ...], seed: int, ignore: bool = False) -> torch.Tensor:
    label_shape = () if len(shape) == 1 else shape[:1] + shape[2:]
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, shape[0 if len(shape) == 1 else 1], label_shape, generator=g)
    if ignore and labels.dim() > 0:
        labels.view(-1)[::2] = -100
    return labels


def probability_labels(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.softmax(helpers.t(*shape, seed=seed), 0 if len(shape) == 1 else 1)


CE_CASES = list(
    itertools.product(
        SHAPES,
        ["integer", "integer_ignored", "probabilities"],
        ["mean", "sum", "none"],
        [0.0, 0.2],
        [False, True],
    )
)


@pytest.mark.parametrize(("shape", "kind", "reduction", "smoothing", "weighted"), CE_CASES, ids=str)
def test_cross_entropy_matches_torch(
    shape: tuple[int, ...], kind: str, reduction: str, smoothing: float, weighted: bool
) -> None:
    """Value and gradient equal F.cross_entropy's for every label kind, reduction, smoothing and
    class weighting."""
    logits = helpers.t(*shape, seed=1) * 2
    if kind == "probabilities":
        labels = probability_labels(shape, 2)
    else:
        labels = integer_labels(shape, 2, ignore=kind == "integer_ignored")
    c = shape[0 if len(shape) == 1 else 1]
    kwargs: dict[str, Any] = {"reduction": reduction, "label_smoothing": smoothing}
    if weighted:
        kwargs["weight"] = helpers.t(c, seed=3).abs() + 0.5

    def loss(x: torch.Tensor) -> torch.Tensor:
        return nn.cross_entropy(x, labels, **kwargs)

    expected_value = F.cross_entropy(logits, labels, **kwargs)
    assert_trees_allclose(loss(logits), expected_value, rtol=1e-12, atol=1e-14)
    x = logits.clone().requires_grad_(True)
    F.cross_entropy(x, labels, **kwargs).sum().backward()
    assert_trees_allclose(fg.grad(lambda x: loss(x).sum())(logits), x.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_optax(smoothing: float) -> None:
    """Integer labels against optax.softmax_cross_entropy_with_integer_labels and smoothed
    probabilities against optax.softmax_cross_entropy(smooth_labels(...))."""
    optax = _optax()
    logits = helpers.t(6, 5, seed=1) * 2
    labels = integer_labels((6, 5), 2)
    one_hot = F.one_hot(labels, 5).to(F64)
    smoothed = optax.smooth_labels(helpers.to_jax(one_hot), smoothing)
    expected = optax.softmax_cross_entropy(helpers.to_jax(logits), smoothed)
    assert_trees_allclose(
        nn.cross_entropy(logits, labels, reduction="none", label_smoothing=smoothing),
        helpers.to_torch(expected),
        rtol=1e-12,
        atol=1e-14,
    )
    if smoothing == 0.0:
        integer = optax.softmax_cross_entropy_with_integer_labels(
            helpers.to_jax(logits), helpers.to_jax(labels)
        )
        assert_trees_allclose(
            nn.cross_entropy(logits, labels), helpers.to_torch(integer).mean(), rtol=1e-12
        )


@settings(max_examples=15)
@given(helpers.tensors((4, 3)), st.lists(st.integers(0, 2), min_size=4, max_size=4))
def test_cross_entropy_one_hot_probabilities_equal_integer_labels(
    logits: torch.Tensor, labels: list[int]
) -> None:
    """Probability labels that are one-hot give the loss of the integer labels."""
    ints = torch.tensor(labels)
    probs = F.one_hot(ints, 3).to(logits.dtype)
    assert_trees_allclose(
        nn.cross_entropy(logits, probs), nn.cross_entropy(logits, ints), rtol=1e-10, atol=1e-12
    )


def test_cross_entropy_errors() -> None:
    """Label shapes and dtypes, reductions and smoothing out of range are named."""
    logits = torch.ones(5, 4)
    with pytest.raises(
        ValueError,
        match=r"nn\.cross_entropy: integer labels must have the shape of the logits without the class dimension, \(5,\) for logits of shape \(5, 4\), got \(4,\)",
    ):
        nn.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    with pytest.raises(
        ValueError,
        match=r"nn\.cross_entropy: probability labels must have the shape of the logits, \(5, 4\), got \(5,\)",
    ):
        nn.cross_entropy(logits, torch.zeros(5))
    with pytest.raises(
        TypeError,
        match=r"labels must be integer class indices or floating-point probabilities, got torch.bool",
    ):
        nn.cross_entropy(logits, torch.zeros(5, dtype=torch.bool))
    with pytest.raises(
        TypeError,
        match=r"nn\.cross_entropy: logits must be a floating-point tensor, got torch.int64",
    ):
        nn.cross_entropy(torch.ones(5, 4, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"nn\.cross_entropy: reduction must be 'mean', 'sum' or 'none', got 'avg'"
    ):
        nn.cross_entropy(logits, torch.zeros(5, dtype=torch.long), reduction="avg")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        nn.cross_entropy(logits, torch.zeros(5, dtype=torch.long), label_smoothing=1.5)
    with pytest.raises(
        ValueError,
        match=r"expected logits of shape \(C,\), \(N, C\) or \(N, C, d1, ...\), got an input of shape \(\)",
    ):
        nn.cross_entropy(torch.tensor(1.0), torch.tensor(0))


# --------------------------------------------------------------------------------------------
# Regression and binary losses
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_matches_torch_and_optax(reduction: str) -> None:
    """mse equals F.mse_loss (value and gradient) and optax.squared_error reduced."""
    optax = _optax()
    p, y = helpers.t(3, 4, seed=1), helpers.t(3, 4, seed=2)
    assert_trees_allclose(
        nn.mse(p, y, reduction=reduction), F.mse_loss(p, y, reduction=reduction), rtol=0, atol=0
    )
    err = helpers.to_torch(optax.squared_error(helpers.to_jax(p), helpers.to_jax(y)))
    expected = {"mean": err.mean(), "sum": err.sum(), "none": err}[reduction]
    assert_trees_allclose(nn.mse(p, y, reduction=reduction), expected, rtol=1e-12)
    check_grads(lambda p: nn.mse(p, y, reduction=reduction), (p,), order=1)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_cross_entropy_with_logits_matches_torch_and_optax(
    reduction: str, weighted: bool
) -> None:
    """The loss equals F.binary_cross_entropy_with_logits (with weight and pos_weight) and,
    unweighted, optax.sigmoid_binary_cross_entropy."""
    optax = _optax()
    logits, labels = (
        helpers.t(3, 4, seed=1) * 3,
        torch.rand(3, 4, generator=torch.Generator().manual_seed(2), dtype=F64),
    )
    kwargs: dict[str, Any] = {"reduction": reduction}
    if weighted:
        kwargs |= {"weight": helpers.t(4, seed=3).abs(), "pos_weight": helpers.t(4, seed=4).abs()}
    ours = nn.binary_cross_entropy_with_logits(logits, labels, **kwargs)
    assert_trees_allclose(
        ours, F.binary_cross_entropy_with_logits(logits, labels, **kwargs), rtol=0, atol=0
    )
    if not weighted:
        err = helpers.to_torch(
            optax.sigmoid_binary_cross_entropy(helpers.to_jax(logits), helpers.to_jax(labels))
        )
        expected = {"mean": err.mean(), "sum": err.sum(), "none": err}[reduction]
        assert_trees_allclose(ours, expected, rtol=1e-12)
    check_grads(
        lambda x: nn.binary_cross_entropy_with_logits(x, labels, **kwargs), (logits,), order=1
    )


def test_l2_loss_matches_optax() -> None:
    """l2_loss is optax.l2_loss: elementwise 0.5 * (p - y)**2, or 0.5 * p**2 without targets."""
    optax = _optax()
    p, y = helpers.t(3, 4, seed=1), helpers.t(3, 4, seed=2)
    assert_trees_allclose(
        nn.l2_loss(p, y),
        helpers.to_torch(optax.l2_loss(helpers.to_jax(p), helpers.to_jax(y))),
        rtol=1e-14,
    )
    assert_trees_allclose(
        nn.l2_loss(p), helpers.to_torch(optax.l2_loss(helpers.to_jax(p))), rtol=1e-14
    )


def test_regression_loss_errors() -> None:
    """Shapes that would broadcast are refused rather than silently broadcast."""
    with pytest.raises(
        ValueError,
        match=r"nn\.mse: predictions and targets must have the same shape, got \(3, 1\) and \(3,\); broadcasting is not applied",
    ):
        nn.mse(torch.ones(3, 1), torch.ones(3))
    with pytest.raises(
        ValueError,
        match=r"nn\.binary_cross_entropy_with_logits: logits and labels must have the same shape",
    ):
        nn.binary_cross_entropy_with_logits(torch.ones(3), torch.ones(2))
    with pytest.raises(
        ValueError, match=r"nn\.l2_loss: predictions and targets must have the same shape"
    ):
        nn.l2_loss(torch.ones(3), torch.ones(1))
    with pytest.raises(TypeError, match=r"nn\.mse: targets must be a tensor, got list"):
        nn.mse(torch.ones(3), [1.0, 2.0, 3.0])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# accuracy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["integer", "probabilities"])
def test_accuracy_matches_sklearn(shape: tuple[int, ...], kind: str) -> None:
    """accuracy equals sklearn.metrics.accuracy_score of the argmax predictions."""
    metrics = pytest.importorskip("sklearn.metrics")
    logits = helpers.t(*shape, seed=1)
    labels = integer_labels(shape, 2) if kind == "integer" else probability_labels(shape, 2)
    dim = 0 if len(shape) == 1 else 1
    truth = labels if kind == "integer" else labels.argmax(dim)
    expected = metrics.accuracy_score(
        np.atleast_1d(truth.numpy()).ravel(), np.atleast_1d(logits.argmax(dim).numpy()).ravel()
    )
    got = nn.accuracy(logits, labels)
    assert got.dtype == F64
    assert float(got) == pytest.approx(expected, abs=1e-15)


def test_accuracy_errors() -> None:
    """Label shapes are named."""
    with pytest.raises(
        ValueError,
        match=r"nn\.accuracy: integer labels must have the shape of the logits without the class dimension, \(5,\), got \(5, 4\)",
    ):
        nn.accuracy(torch.ones(5, 4), torch.zeros(5, 4, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"nn\.accuracy: logits and probability labels must have the same shape"
    ):
        nn.accuracy(torch.ones(5, 4), torch.zeros(5, 3))
