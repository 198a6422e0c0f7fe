"""Tests for ``funcgrad/nn/init.py``: the key-driven initialisers.

Each initialiser's samples (fixed keys) pass a Kolmogorov-Smirnov test against the exact CDF of
the distribution ``torch.nn.init`` documents, and ``torch.nn.init``'s own samples pass the same
test (so the reference formula is checked too); gains equal ``calculate_gain``'s; orthogonal
matrices are orthonormal; same key => same tensor, also under ``fg.vmap``; errors by message.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import helpers
import pytest
import torch

import funcgrad as fg
from funcgrad import random
from funcgrad.nn import init
from funcgrad.testing import assert_trees_allclose

F64 = torch.float64
SHAPE = (96, 64, 3, 3)  # out, in, kernel: fan_in 576, fan_out 864
FAN_IN, FAN_OUT = 64 * 9, 96 * 9


def torch_sample(
    fill: Callable[[torch.Tensor], Any], shape: tuple[int, ...] = SHAPE
) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.empty(shape, dtype=F64)
    fill_with = fill(x)
    fill_with(g)
    return x


def truncated_cdf(
    mean: float, std: float, a: float, b: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    lo, hi = (a - mean) / std, (b - mean) / std
    phi = helpers.normal_cdf(0.0, 1.0)
    z = torch.tensor([lo, hi], dtype=F64)
    p_lo, p_hi = phi(z)
    return lambda x: ((phi((x - mean) / std) - p_lo) / (p_hi - p_lo)).clamp(0, 1)


CASES: list[
    tuple[
        str,
        Callable[[torch.Tensor], torch.Tensor],
        Callable[[torch.Tensor], Any],
        Callable[[torch.Tensor], torch.Tensor],
    ]
] = [
    (
        "uniform",
        lambda k: init.uniform(k, SHAPE, minval=-0.3, maxval=0.7, dtype=F64),
        lambda x: lambda g: torch.nn.init.uniform_(x, -0.3, 0.7, generator=g),
        helpers.uniform_cdf(-0.3, 0.7),
    ),
    (
        "normal",
        lambda k: init.normal(k, SHAPE, mean=0.5, std=2.0, dtype=F64),
        lambda x: lambda g: torch.nn.init.normal_(x, 0.5, 2.0, generator=g),
        helpers.normal_cdf(0.5, 2.0),
    ),
    (
        "truncated_normal",
        lambda k: init.truncated_normal(k, SHAPE, mean=0.1, std=0.5, a=-0.5, b=0.4, dtype=F64),
        lambda x: lambda g: torch.nn.init.trunc_normal_(x, 0.1, 0.5, -0.5, 0.4, generator=g),
        truncated_cdf(0.1, 0.5, -0.5, 0.4),
    ),
    (
        "xavier_uniform",
        lambda k: init.xavier_uniform(k, SHAPE, gain=2.0, dtype=F64),
        lambda x: lambda g: torch.nn.init.xavier_uniform_(x, 2.0, generator=g),
        helpers.uniform_cdf(
            -2 * math.sqrt(6 / (FAN_IN + FAN_OUT)), 2 * math.sqrt(6 / (FAN_IN + FAN_OUT))
        ),
    ),
    (
        "xavier_normal",
        lambda k: init.xavier_normal(k, SHAPE, dtype=F64),
        lambda x: lambda g: torch.nn.init.xavier_normal_(x, generator=g),
        helpers.normal_cdf(0.0, math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ),
    (
        "kaiming_uniform_default",
        lambda k: init.kaiming_uniform(k, SHAPE, dtype=F64),
        lambda x: lambda g: torch.nn.init.kaiming_uniform_(x, generator=g),
        helpers.uniform_cdf(
            -math.sqrt(6 / FAN_IN),
            math.sqrt(6 / FAN_IN),
        ),
    ),
    (
        "kaiming_uniform_sqrt5",
        lambda k: init.kaiming_uniform(k, SHAPE, a=math.sqrt(5), dtype=F64),
        lambda x: lambda g: torch.nn.init.kaiming_uniform_(x, a=math.sqrt(5), generator=g),
        helpers.uniform_cdf(-1 / math.sqrt(FAN_IN), 1 / math.sqrt(FAN_IN)),
    ),
    (
        "kaiming_normal_fan_out_relu",
        lambda k: init.kaiming_normal(k, SHAPE, mode="fan_out", nonlinearity="relu", dtype=F64),
        lambda x: (
            lambda g: torch.nn.init.kaiming_normal_(
                x, mode="fan_out", nonlinearity="relu", generator=g
            )
        ),
        helpers.normal_cdf(0.0, math.sqrt(2 / FAN_OUT)),
    ),
]


@pytest.mark.parametrize(
    ("ours", "theirs", "cdf"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_distribution_matches_torch_nn_init(ours: Any, theirs: Any, cdf: Any) -> None:
    """Samples from a fixed key pass a KS test against the documented distribution, as
    torch.nn.init's own samples do; shape and dtype are as asked."""
    x = ours(random.key(0))
    assert x.shape == SHAPE
    assert x.dtype == F64
    helpers.assert_distributed(x, cdf)
    helpers.assert_distributed(torch_sample(theirs), cdf)


@pytest.mark.parametrize(
    ("nonlinearity", "param"),
    [
        ("linear", None),
        ("conv2d", None),
        ("sigmoid", None),
        ("tanh", None),
        ("relu", None),
        ("leaky_relu", None),
        ("leaky_relu", 0.2),
        ("selu", None),
    ],
)
def test_calculate_gain_matches_torch(nonlinearity: str, param: float | None) -> None:
    """The gains equal torch.nn.init.calculate_gain's."""
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(
        torch.nn.init.calculate_gain(nonlinearity, param), rel=1e-15
    )


@pytest.mark.parametrize("shape", [(5, 5), (3, 7), (8, 2), (4, 2, 3)])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal_rows_or_columns_are_orthonormal(shape: tuple[int, ...], gain: float) -> None:
    """The flattened matrix has orthonormal rows (or columns, whichever are fewer), times gain."""
    q = init.orthogonal(random.key(0), shape, gain=gain, dtype=F64)
    assert q.shape == shape
    m = q.reshape(shape[0], -1) / gain
    small = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    assert_trees_allclose(small, torch.eye(min(m.shape), dtype=F64), rtol=1e-12, atol=1e-12)


def test_orthogonal_is_haar_distributed() -> None:
    """Entries of Haar-random n x n orthogonal matrices have mean 0 and variance 1/n (over
    many keys); the first entry's distribution matches torch.nn.init.orthogonal_'s (KS, two
    samples)."""
    n = 4
    qs = fg.vmap(lambda k: init.orthogonal(k, (n, n), dtype=F64))(random.split(random.key(0), 2000))
    assert abs(float(qs.mean())) < 4 * math.sqrt(1 / n / qs.numel())
    assert float(qs.var()) == pytest.approx(1 / n, rel=0.03)
    g = torch.Generator().manual_seed(0)
    theirs = torch.stack(
        [
            torch.nn.init.orthogonal_(torch.empty(n, n, dtype=F64), generator=g)[0, 0]
            for _ in range(2000)
        ]
    )
    ours = qs[:, 0, 0].sort().values
    both = torch.cat([ours, theirs]).sort().values
    gap = (
        (
            torch.searchsorted(ours, both, right=True)
            - torch.searchsorted(theirs.sort().values, both, right=True)
        )
        .abs()
        .max()
    )
    assert float(gap) / 2000 < 1.95 * math.sqrt(2 / 2000)


def test_zeros_and_ones() -> None:
    """zeros and ones ignore the key but take its device; dtype defaults to the default; an
    empty orthogonal matrix is zeros."""
    assert torch.equal(init.zeros(random.key(0), (2, 3)), torch.zeros(2, 3))
    assert torch.equal(init.ones(random.key(0), 4, dtype=F64), torch.ones(4, dtype=F64))
    assert torch.equal(init.ones(None, 2), torch.ones(2))
    assert init.orthogonal(random.key(0), (0, 3)).shape == (0, 3)


@pytest.mark.parametrize(
    "name",
    ["uniform", "normal", "truncated_normal", "xavier_uniform", "kaiming_normal", "orthogonal"],
)
def test_same_key_same_tensor_also_under_vmap(name: str) -> None:
    """An initialiser is a pure function of its key: equal for equal keys, different for
    different ones, and vmap over keys equals the loop."""
    fn = getattr(init, name)
    keys = random.split(random.key(3), 3)
    assert torch.equal(fn(keys[0], (4, 5)), fn(keys[0], (4, 5)))
    assert not torch.equal(fn(keys[0], (4, 5)), fn(keys[1], (4, 5)))
    mapped = fg.vmap(lambda k: fn(k, (4, 5), dtype=F64))(keys)
    assert_trees_allclose(
        mapped, torch.stack([fn(k, (4, 5), dtype=F64) for k in keys]), rtol=1e-12, atol=1e-14
    )


def test_dtype_and_device_defaults() -> None:
    """dtype defaults to torch.get_default_dtype(); device to the key's; both can be given."""
    assert init.normal(random.key(0), 3).dtype == torch.get_default_dtype()
    x = init.uniform(random.key(0), (2,), dtype=torch.float16, device="cpu")
    assert x.dtype == torch.float16
    assert x.device.type == "cpu"


def test_init_errors() -> None:
    """Fans of 1-d shapes, bad modes, nonlinearities, shapes and bounds are named."""
    with pytest.raises(
        ValueError,
        match=r"init\.xavier_uniform: fan_in and fan_out need a shape of at least 2 dimensions, \(out_features, in_features, \*kernel_size\), got \(5,\)",
    ):
        init.xavier_uniform(random.key(0), 5)
    with pytest.raises(
        ValueError, match=r"init\.kaiming_normal: mode must be 'fan_in' or 'fan_out', got 'fan_avg'"
    ):
        init.kaiming_normal(random.key(0), (2, 2), mode="fan_avg")
    with pytest.raises(ValueError, match=r"init\.calculate_gain: unknown nonlinearity 'swish'"):
        init.kaiming_uniform(random.key(0), (2, 2), nonlinearity="swish")
    with pytest.raises(
        TypeError,
        match=r"init\.normal: shape must be an int or a sequence of non-negative ints, got \(2, -1\)",
    ):
        init.normal(random.key(0), (2, -1))
    with pytest.raises(
        ValueError,
        match=r"init\.truncated_normal: the bounds must satisfy a < b, got a=1.0, b=-1.0",
    ):
        init.truncated_normal(random.key(0), 3, a=1.0, b=-1.0)
    with pytest.raises(
        ValueError, match=r"init\.orthogonal: needs a shape of at least 2 dimensions, got \(3,\)"
    ):
        init.orthogonal(random.key(0), 3)
