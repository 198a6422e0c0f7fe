"""Tests for ``funcgrad/nn/_conv.py``: ``Conv1d``, ``Conv2d`` and the pooling layers.

Outputs and gradients (weights and input) against ``torch.nn`` with the same weights in float64,
over products of stride, padding (ints, ``"same"``, ``"valid"``), dilation and groups; default
initialisation against torch.nn's distribution; errors by message.
"""

from __future__ import annotations

import math
from typing import Any

import helpers
import pytest
import torch

import funcgrad as fg
from funcgrad import nn, random

F64 = torch.float64


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"stride": 2},
        {"padding": 1},
        {"padding": "same"},
        {"padding": "valid", "stride": 2},
        {"dilation": 2, "padding": 2},
        {"groups": 2},
        {"groups": 2, "stride": 2, "padding": 1, "bias": False},
    ],
    ids=str,
)
@pytest.mark.parametrize("batched", [True, False])
def test_conv2d_matches_torch(config: dict[str, Any], batched: bool) -> None:
    """Output and gradients equal torch.nn.Conv2d's, batched and unbatched."""
    module = helpers.torch_module(torch.nn.Conv2d, 4, 6, 3, **config)
    layer = nn.Conv2d(4, 6, 3, **config, key=random.key(0), dtype=F64)
    layer = helpers.copy_weights(layer, module)
    x = helpers.t(2, 4, 7, 8, seed=1) if batched else helpers.t(4, 7, 8, seed=1)
    helpers.check_layer_against_torch(layer, module, (x,))


@pytest.mark.parametrize(
    "config",
    [{}, {"stride": 2, "padding": 1}, {"padding": "same", "dilation": 2}, {"groups": 3}],
    ids=str,
)
def test_conv1d_matches_torch(config: dict[str, Any]) -> None:
    """Output and gradients equal torch.nn.Conv1d's."""
    module = helpers.torch_module(torch.nn.Conv1d, 3, 6, 4, **config)
    layer = helpers.copy_weights(nn.Conv1d(3, 6, 4, **config, key=random.key(0), dtype=F64), module)
    helpers.check_layer_against_torch(layer, module, (helpers.t(2, 3, 11, seed=1),))


def test_conv2d_rectangular_kernel_matches_torch() -> None:
    """Tuple kernel sizes, strides and paddings equal torch's."""
    config: dict[str, Any] = {"kernel_size": (2, 3), "stride": (1, 2), "padding": (1, 0)}
    module = helpers.torch_module(torch.nn.Conv2d, 2, 3, **config)
    layer = helpers.copy_weights(nn.Conv2d(2, 3, **config, key=random.key(0), dtype=F64), module)
    assert layer.weight.shape == (3, 2, 2, 3)
    helpers.check_layer_against_torch(layer, module, (helpers.t(1, 2, 5, 6, seed=1),))


@pytest.mark.parametrize("groups", [1, 4])
def test_conv_default_init_follows_torch(groups: int) -> None:
    """Weights and biases are U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in/groups * k*k."""
    conv = nn.Conv2d(32, 64, 5, groups=groups, key=random.key(0))
    bound = 1 / math.sqrt(32 // groups * 25)
    assert conv.weight.shape == (64, 32 // groups, 5, 5)
    assert float(conv.weight.abs().max()) <= bound
    helpers.assert_distributed(conv.weight, helpers.uniform_cdf(-bound, bound))
    assert conv.bias is not None
    assert float(conv.bias.abs().max()) <= bound
    ref = helpers.torch_module(torch.nn.Conv2d, 32, 64, 5, groups=groups).weight.detach()
    helpers.assert_distributed(ref, helpers.uniform_cdf(-bound, bound))


def test_conv_vmap_per_example_gradients() -> None:
    """fg.vmap(fg.grad) of a conv net gives each example's gradient (equal to the loop)."""
    conv = nn.Conv2d(2, 3, 3, padding=1, key=random.key(0), dtype=F64)
    xs = helpers.t(4, 2, 5, 5, seed=1)

    def loss(c: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return c(x).tanh().sum()

    per_example = fg.vmap(fg.grad(loss), in_axes=(None, 0))(conv, xs)
    loop = fg.tree.stack([fg.grad(loss)(conv, x) for x in xs])
    fg.testing.assert_trees_allclose(per_example, loop)


def test_conv_errors() -> None:
    """Channel counts, input ranks, groups, padding modes and strings are named."""
    conv = nn.Conv2d(3, 4, 3, key=random.key(0))
    with pytest.raises(
        ValueError,
        match=r"nn\.Conv2d: expected an input of shape \(N, C_in=3, H, W\) or \(C_in=3, H, W\), got an input of shape \(2, 5, 8, 8\)",
    ):
        conv(torch.ones(2, 5, 8, 8))
    with pytest.raises(ValueError, match=r"got an input of shape \(8, 8\)"):
        conv(torch.ones(8, 8))
    with pytest.raises(
        ValueError, match=r"nn\.Conv1d: expected an input of shape \(N, C_in=2, L\)"
    ):
        nn.Conv1d(2, 2, 3, key=random.key(0))(torch.ones(1, 3, 5))
    with pytest.raises(
        ValueError,
        match=r"nn\.Conv2d: in_channels \(3\) and out_channels \(4\) must both be divisible by groups \(2\)",
    ):
        nn.Conv2d(3, 4, 3, groups=2, key=random.key(0))
    with pytest.raises(ValueError, match=r"nn\.Conv2d: padding='same' needs stride 1"):
        nn.Conv2d(3, 4, 3, stride=2, padding="same", key=random.key(0))
    with pytest.raises(
        ValueError,
        match=r"nn\.Conv2d: padding must be an int, a tuple of 2 ints, 'same' or 'valid', got 'full'",
    ):
        nn.Conv2d(3, 4, 3, padding="full", key=random.key(0))
    with pytest.raises(
        ValueError,
        match=r"nn\.Conv2d: kernel_size must be an int >= 1 or a sequence of 2 such ints, got \(3, 3, 3\)",
    ):
        nn.Conv2d(3, 4, (3, 3, 3), key=random.key(0))
    with pytest.raises(ValueError, match=r"nn\.Conv2d: padding must be an int >= 0"):
        nn.Conv2d(3, 4, 3, padding=-1, key=random.key(0))


# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------

POOLS: list[tuple[Any, Any, dict[str, Any]]] = [
    (nn.MaxPool2d, torch.nn.MaxPool2d, {"kernel_size": 2}),
    (nn.MaxPool2d, torch.nn.MaxPool2d, {"kernel_size": 3, "stride": 2, "padding": 1}),
    (nn.MaxPool2d, torch.nn.MaxPool2d, {"kernel_size": 2, "dilation": 2, "ceil_mode": True}),
    (nn.AvgPool2d, torch.nn.AvgPool2d, {"kernel_size": 2}),
    (nn.AvgPool2d, torch.nn.AvgPool2d, {"kernel_size": 3, "stride": 2, "padding": 1}),
    (
        nn.AvgPool2d,
        torch.nn.AvgPool2d,
        {"kernel_size": 3, "padding": 1, "count_include_pad": False, "ceil_mode": True},
    ),
    (nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool2d, {"output_size": 1}),
    (nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool2d, {"output_size": (3, None)}),
]


@pytest.mark.parametrize(
    ("ours", "theirs", "config"), POOLS, ids=lambda p: str(p) if isinstance(p, dict) else ""
)
@pytest.mark.parametrize("batched", [True, False])
def test_pooling_matches_torch(
    ours: Any, theirs: Any, config: dict[str, Any], batched: bool
) -> None:
    """Output and input gradient equal torch.nn's pooling; pooling layers have no leaves."""
    x = helpers.t(2, 3, 7, 6, seed=1) if batched else helpers.t(3, 7, 6, seed=1)
    layer = ours(**config)
    assert fg.tree.leaves(layer) == []
    helpers.check_layer_against_torch(layer, theirs(**config), (x,))


def test_pooling_errors() -> None:
    """Padding beyond half the kernel, bad output sizes and input ranks are named."""
    with pytest.raises(
        ValueError,
        match=r"nn\.MaxPool2d: padding must be at most half the kernel size, got padding=\(2, 2\) for kernel_size=\(3, 3\)",
    ):
        nn.MaxPool2d(3, padding=2)
    with pytest.raises(
        ValueError, match=r"nn\.AdaptiveAvgPool2d: output_size must be a positive int"
    ):
        nn.AdaptiveAvgPool2d(0)
    with pytest.raises(
        ValueError,
        match=r"nn\.AvgPool2d: expected an input of shape \(N, C, H, W\) or \(C, H, W\), got an input of shape \(4,\)",
    ):
        nn.AvgPool2d(2)(torch.ones(4))
