"""Tests for ``funcgrad/nn/_linear.py``: ``Linear``, ``Embedding``, ``Dropout``, ``Flatten``.

Outputs and gradients are checked against the ``torch.nn`` module holding the same weights
(float64, ``fg.grad`` against torch.autograd); default initialisation against torch.nn's
distributions (Kolmogorov-Smirnov distance with fixed keys, bounds, moments); errors by message.
"""

from __future__ import annotations

import math

import helpers
import pytest
import torch

import funcgrad as fg
from funcgrad import nn, random
from funcgrad.testing import assert_trees_allclose

F64 = torch.float64


# --------------------------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 3, 5)])
def test_linear_matches_torch(bias: bool, shape: tuple[int, ...]) -> None:
    """Output and gradients (weights and input) equal torch.nn.Linear's, for any batch shape."""
    module = helpers.torch_module(torch.nn.Linear, 5, 3, bias=bias)
    layer = helpers.copy_weights(nn.Linear(5, 3, bias=bias, key=random.key(0), dtype=F64), module)
    helpers.check_layer_against_torch(layer, module, (helpers.t(*shape, seed=1),))


def test_linear_default_init_follows_torch() -> None:
    """Weight and bias are U(-1/sqrt(in), 1/sqrt(in)), as torch.nn.Linear's defaults."""
    layer = nn.Linear(400, 300, key=random.key(0))
    bound = 1 / math.sqrt(400)
    w, b = layer.weight, layer.bias
    assert b is not None
    assert w.dtype == torch.get_default_dtype()
    assert w.shape == (300, 400)
    assert b.shape == (300,)
    assert float(w.abs().max()) <= bound
    assert float(w.abs().max()) > 0.999 * bound
    helpers.assert_distributed(w, helpers.uniform_cdf(-bound, bound))
    helpers.assert_distributed(b, helpers.uniform_cdf(-bound, bound))
    assert abs(float(w.mean())) < 4 * bound / math.sqrt(3 * w.numel())
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.01)
    # The same statistic for torch.nn.Linear's own initialisation, as a check of the reference.
    ref = helpers.torch_module(torch.nn.Linear, 400, 300).weight.detach()
    helpers.assert_distributed(ref, helpers.uniform_cdf(-bound, bound))


def test_linear_init_is_reproducible_and_key_dependent() -> None:
    """The same key gives the same weights; another key other weights; weight and bias differ."""
    a, b = nn.Linear(4, 4, key=random.key(3)), nn.Linear(4, 4, key=random.key(3))
    c = nn.Linear(4, 4, key=random.key(4))
    assert fg.tree.equal(a, b)
    assert not torch.equal(a.weight, c.weight)
    assert a.bias is not None
    assert not torch.equal(a.weight[0, :4], a.bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_dtype_and_device(dtype: torch.dtype) -> None:
    """dtype and device arguments set the parameters'."""
    layer = nn.Linear(3, 2, key=random.key(0), dtype=dtype, device="cpu")
    assert all(x.dtype == dtype and x.device.type == "cpu" for x in fg.tree.leaves(layer))


def test_linear_is_a_pytree_with_static_config() -> None:
    """Parameters are the leaves (bias=None drops one); sizes are in the structure."""
    layer = nn.Linear(3, 2, key=random.key(0))
    assert [tuple(x.shape) for x in fg.tree.leaves(layer)] == [(2, 3), (2,)]
    assert len(fg.tree.leaves(nn.Linear(3, 2, bias=False, key=random.key(0)))) == 1
    doubled = fg.tree.map(lambda x: 2 * x, layer)
    assert isinstance(doubled, nn.Linear)
    assert doubled.in_features == 3
    assert fg.tree.structure(layer) != fg.tree.structure(nn.Linear(3, 4, key=random.key(0)))


def test_linear_errors() -> None:
    """Wrong feature counts, sizes, keys and dtypes are named."""
    layer = nn.Linear(3, 2, key=random.key(0))
    with pytest.raises(
        ValueError,
        match=r"nn\.Linear: expected an input of shape \(\*, in_features=3\), got an input of shape \(4, 5\)",
    ):
        layer(torch.ones(4, 5))
    with pytest.raises(ValueError, match=r"got an input of shape \(\)"):
        layer(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"nn\.Linear: expected a tensor input, got list"):
        layer([1.0, 2.0, 3.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"nn\.Linear: in_features must be a positive int, got 0"):
        nn.Linear(0, 2, key=random.key(0))
    with pytest.raises(
        TypeError,
        match=r"nn\.Linear: key must be a PRNG key \(a torch.uint32 tensor of shape \(2,\) .*\), got int",
    ):
        nn.Linear(3, 2, key=0)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"nn\.Linear: dtype must be a floating-point torch.dtype, got torch.int64"
    ):
        nn.Linear(3, 2, key=random.key(0), dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding_matches_torch(padding_idx: int | None) -> None:
    """Lookups and the weight gradient (none for padding_idx) equal torch.nn.Embedding's."""
    module = helpers.torch_module(torch.nn.Embedding, 6, 4, padding_idx=padding_idx)
    layer = nn.Embedding(6, 4, padding_idx, key=random.key(0), dtype=F64)
    layer = helpers.copy_weights(layer, module)
    indices = torch.tensor([[0, 2, 5], [5, 5, 1]])
    helpers.check_layer_against_torch(layer, module, (indices,))
    grad = fg.grad(lambda m: m(indices).sum())(layer).weight
    if padding_idx is not None:
        assert torch.equal(grad[padding_idx % 6], torch.zeros(4, dtype=F64))


def test_embedding_default_init_follows_torch() -> None:
    """Weights are N(0, 1); the padding row starts at zero."""
    emb = nn.Embedding(1000, 64, padding_idx=7, key=random.key(0))
    assert torch.equal(emb.weight[7], torch.zeros(64))
    rest = torch.cat([emb.weight[:7], emb.weight[8:]])
    helpers.assert_distributed(rest, helpers.normal_cdf(0.0, 1.0))
    assert abs(float(rest.mean())) < 4 / math.sqrt(rest.numel())
    assert float(rest.std()) == pytest.approx(1.0, rel=0.01)


def test_embedding_errors() -> None:
    """Float indices and out-of-range padding indices are refused with their values."""
    emb = nn.Embedding(4, 2, key=random.key(0))
    with pytest.raises(
        TypeError, match=r"nn\.Embedding: expected an integer tensor of indices, got torch.float32"
    ):
        emb(torch.ones(3))
    with pytest.raises(
        ValueError, match=r"nn\.Embedding: padding_idx must be None or an int in \[-4, 4\), got 4"
    ):
        nn.Embedding(4, 2, padding_idx=4, key=random.key(0))


# --------------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------------


def test_dropout_eval_and_zero_rate_are_the_identity() -> None:
    """train=False (any key) and rate=0 return the input itself."""
    x = helpers.t(10, seed=1)
    assert nn.Dropout(0.5)(x, train=False) is x
    assert nn.Dropout(0.0)(x, train=True) is x


def test_dropout_train_equals_random_dropout() -> None:
    """In training the layer is funcgrad.random.dropout with its key: reproducible, and the
    kept elements are scaled by 1/(1-rate)."""
    x = helpers.t(2000, seed=1)
    drop = nn.Dropout(0.25)
    y = drop(x, train=True, key=random.key(5))
    assert torch.equal(y, random.dropout(random.key(5), x, 0.25))
    kept = y != 0
    assert_trees_allclose(y[kept], x[kept] / 0.75)
    assert float(kept.double().mean()) == pytest.approx(0.75, abs=4 * math.sqrt(0.25 * 0.75 / 2000))
    assert not torch.equal(y, drop(x, train=True, key=random.key(6)))


def test_dropout_gradient_is_the_mask() -> None:
    """The gradient of sum(dropout(x)) is the scaled keep mask (fg.grad through the key)."""
    x = helpers.t(50, seed=2)
    drop = nn.Dropout(0.5)
    g = fg.grad(lambda x: drop(x, train=True, key=random.key(1)).sum())(x)
    mask = drop(torch.ones(50, dtype=F64), train=True, key=random.key(1))
    assert_trees_allclose(g, mask)


def test_dropout_errors() -> None:
    """A rate outside [0, 1) and a missing key in training are refused."""
    with pytest.raises(ValueError, match=r"nn\.Dropout: rate must be in \[0, 1\), got 1"):
        nn.Dropout(1)
    with pytest.raises(ValueError, match=r"nn\.Dropout: train=True needs a PRNG key"):
        nn.Dropout(0.5)(torch.ones(2), train=True)
    with pytest.raises(
        ValueError,
        match=r"nn\.Dropout: key must be a PRNG key .* got a torch.int64 tensor of shape \(2,\)",
    ):
        nn.Dropout(0.5)(torch.ones(2), train=True, key=torch.zeros(2, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# Flatten
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "end"), [(1, -1), (0, -1), (1, 2), (-2, -1)])
def test_flatten_matches_torch(start: int, end: int) -> None:
    """Flatten equals torch.nn.Flatten for any dimension range; it has no leaves."""
    x = helpers.t(2, 3, 4, 5, seed=1)
    assert torch.equal(nn.Flatten(start, end)(x), torch.nn.Flatten(start, end)(x))
    assert fg.tree.leaves(nn.Flatten()) == []


def test_flatten_error() -> None:
    """An input with too few dimensions is named with its shape."""
    with pytest.raises(
        ValueError,
        match=r"nn\.Flatten: expected an input with at least 2 dimensions .* got an input of shape \(3,\)",
    ):
        nn.Flatten()(torch.ones(3))
