"""Tests for ``funcgrad/nn/_recurrent.py``: ``GRUCell`` and ``LSTMCell``.

One step and unrolled sequences against ``torch.nn.GRUCell``/``LSTMCell`` with the same weights
in float64 (outputs and gradients through time), default initialisation, errors by message.
"""

from __future__ import annotations

import math
from typing import Any

import helpers
import pytest
import torch

import funcgrad as fg
from funcgrad import nn, random
from funcgrad.testing import assert_trees_allclose

F64 = torch.float64
CELLS = [(nn.GRUCell, torch.nn.GRUCell), (nn.LSTMCell, torch.nn.LSTMCell)]
IDS = ["GRUCell", "LSTMCell"]


def pair(ours: Any, theirs: Any, bias: bool = True) -> tuple[Any, torch.nn.Module]:
    module = helpers.torch_module(theirs, 3, 4, bias=bias)
    return helpers.copy_weights(ours(3, 4, bias, key=random.key(0), dtype=F64), module), module


@pytest.mark.parametrize(("ours", "theirs"), CELLS, ids=IDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_cell_step_matches_torch(ours: Any, theirs: Any, bias: bool, batched: bool) -> None:
    """One step from a given state equals torch's (output, gradients for x, state, weights)."""
    layer, module = pair(ours, theirs, bias)
    batch = (2,) if batched else ()
    x, h = helpers.t(*batch, 3, seed=1), helpers.t(*batch, 4, seed=2)
    if ours is nn.GRUCell:
        helpers.check_layer_against_torch(layer, module, (x, h))
    else:
        c = helpers.t(*batch, 4, seed=3)
        helpers.check_layer_against_torch(
            layer,
            module,
            (x, h, c),
            call=lambda m, x, h, c: m(x, (h, c)),
            torch_call=lambda m, x, h, c: m(x, (h, c)),
        )


@pytest.mark.parametrize(("ours", "theirs"), CELLS, ids=IDS)
def test_cell_sequence_matches_torch(ours: Any, theirs: Any) -> None:
    """Five steps from the zero state (None) equal torch's, with gradients through time."""
    layer, module = pair(ours, theirs)
    xs = helpers.t(5, 2, 3, seed=4)

    def unroll(m: Any, xs: torch.Tensor) -> Any:
        state = None
        outs = []
        for x in xs:
            state = m(x, state)
            outs.append(state if isinstance(state, torch.Tensor) else state[0])
        return torch.stack(outs)

    helpers.check_layer_against_torch(layer, module, (xs,), call=unroll, torch_call=unroll)


@pytest.mark.parametrize(("ours", "theirs"), CELLS, ids=IDS)
def test_cell_default_init_follows_torch(ours: Any, theirs: Any) -> None:
    """Every tensor is U(-1/sqrt(hidden), 1/sqrt(hidden)), each from its own key."""
    cell = ours(32, 64, key=random.key(0))
    bound = 1 / math.sqrt(64)
    leaves = fg.tree.leaves(cell)
    assert len(leaves) == 4
    for x in leaves:
        assert float(x.abs().max()) <= bound
        helpers.assert_distributed(x, helpers.uniform_cdf(-bound, bound))
    assert not torch.equal(leaves[2], leaves[3])
    ref = helpers.torch_module(theirs, 32, 64).weight_hh.detach()
    helpers.assert_distributed(ref, helpers.uniform_cdf(-bound, bound))


def test_cell_under_vmap() -> None:
    """fg.vmap over a batch of sequences equals the batched call."""
    cell = nn.LSTMCell(3, 4, key=random.key(0), dtype=F64)
    xs = helpers.t(6, 3, seed=1)
    mapped = fg.vmap(lambda x: cell(x))(xs)
    assert_trees_allclose(mapped, cell(xs))


def test_cell_errors() -> None:
    """Input features, state shapes and a malformed LSTM state are named."""
    gru = nn.GRUCell(3, 4, key=random.key(0))
    with pytest.raises(
        ValueError,
        match=r"nn\.GRUCell: expected an input of shape \(N, input_size=3\) or \(3,\), got an input of shape \(2, 5\)",
    ):
        gru(torch.ones(2, 5))
    with pytest.raises(
        ValueError,
        match=r"nn\.GRUCell: expected h of shape \(2, 4\) for an input of shape \(2, 3\), got \(4,\)",
    ):
        gru(torch.ones(2, 3), torch.ones(4))
    lstm = nn.LSTMCell(3, 4, key=random.key(0))
    with pytest.raises(
        TypeError, match=r"nn\.LSTMCell: state must be None or a pair \(h, c\), got Tensor"
    ):
        lstm(torch.ones(3), torch.ones(4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"nn\.LSTMCell: expected c of shape \(4,\)"):
        lstm(torch.ones(3), (torch.ones(4), torch.ones(5)))
    with pytest.raises(
        ValueError, match=r"nn\.LSTMCell: hidden_size must be a positive int, got 0"
    ):
        nn.LSTMCell(3, 0, key=random.key(0))
