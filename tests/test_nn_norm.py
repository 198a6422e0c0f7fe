"""Tests for ``funcgrad/nn/_norm.py``: ``LayerNorm``, ``RMSNorm`` and ``BatchNorm``.

Outputs and gradients against ``torch.nn`` with the same (random) weights in float64;
BatchNorm's explicit state against torch.nn.BatchNorm's buffers over several training steps,
in evaluation, with ``momentum=None``, under ``fg.vmap`` (per-example gradients in evaluation,
ensembles in training); errors by message.
"""

from __future__ import annotations

from typing import Any

import helpers
import pytest
import torch

import funcgrad as fg
from funcgrad import nn
from funcgrad.testing import assert_trees_allclose

F64 = torch.float64


def randomize(module: torch.nn.Module, seed: int = 10) -> torch.nn.Module:
    """Random affine parameters (torch starts them at ones and zeros)."""
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.copy_(helpers.t(*p.shape, seed=seed + i))
    return module


# --------------------------------------------------------------------------------------------
# LayerNorm and RMSNorm
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"normalized_shape": 5},
        {"normalized_shape": (3, 5), "eps": 1e-3},
        {"normalized_shape": 5, "elementwise_affine": False},
        {"normalized_shape": 5, "bias": False},
    ],
    ids=str,
)
def test_layer_norm_matches_torch(config: dict[str, Any]) -> None:
    """Output and gradients equal torch.nn.LayerNorm's."""
    module = randomize(helpers.torch_module(torch.nn.LayerNorm, **config))
    layer = helpers.copy_weights(nn.LayerNorm(**config, dtype=F64), module)
    helpers.check_layer_against_torch(layer, module, (helpers.t(2, 3, 5, seed=1),))


@pytest.mark.parametrize(
    "config",
    [
        {"normalized_shape": 5},
        {"normalized_shape": (3, 5), "eps": 1e-6},
        {"normalized_shape": 5, "elementwise_affine": False},
    ],
    ids=str,
)
def test_rms_norm_matches_torch(config: dict[str, Any]) -> None:
    """Output and gradients equal torch.nn.RMSNorm's (eps=None: the dtype's epsilon)."""
    module = randomize(helpers.torch_module(torch.nn.RMSNorm, **config))
    layer = helpers.copy_weights(nn.RMSNorm(**config, dtype=F64), module)
    helpers.check_layer_against_torch(layer, module, (helpers.t(2, 3, 5, seed=1),))


def test_norm_defaults() -> None:
    """Affine parameters start at ones and zeros, like torch's (no key needed)."""
    ln = nn.LayerNorm((2, 3))
    assert ln.weight is not None
    assert ln.bias is not None
    assert torch.equal(ln.weight, torch.ones(2, 3))
    assert torch.equal(ln.bias, torch.zeros(2, 3))
    assert nn.LayerNorm(3, elementwise_affine=False).weight is None
    rms = nn.RMSNorm(4, dtype=F64)
    assert rms.weight is not None
    assert torch.equal(rms.weight, torch.ones(4, dtype=F64))


def test_norm_errors() -> None:
    """Trailing dimensions that differ from normalized_shape, and bad shapes or eps, are named."""
    with pytest.raises(
        ValueError,
        match=r"nn\.LayerNorm: expected an input of shape \(\*, 3, 5\) \(normalized_shape\), got an input of shape \(2, 5, 3\)",
    ):
        nn.LayerNorm((3, 5))(torch.ones(2, 5, 3))
    with pytest.raises(ValueError, match=r"nn\.RMSNorm: expected an input of shape \(\*, 4\)"):
        nn.RMSNorm(4)(torch.ones(3))
    with pytest.raises(
        ValueError,
        match=r"nn\.LayerNorm: normalized_shape must be a positive int or a non-empty sequence",
    ):
        nn.LayerNorm(())
    with pytest.raises(
        ValueError, match=r"nn\.LayerNorm: eps must be a non-negative number, got -1"
    ):
        nn.LayerNorm(3, eps=-1)


# --------------------------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------------------------

BN_CASES = [
    (torch.nn.BatchNorm1d, (8, 3)),
    (torch.nn.BatchNorm1d, (4, 3, 5)),
    (torch.nn.BatchNorm2d, (4, 3, 2, 3)),
]


def state_of(module: torch.nn.Module) -> nn.BatchNormState:
    return nn.BatchNormState(
        module.running_mean.clone(),  # type: ignore[union-attr, operator]
        module.running_var.clone(),  # type: ignore[union-attr, operator]
        module.num_batches_tracked.clone(),  # type: ignore[union-attr, operator]
    )


@pytest.mark.parametrize(("cls", "shape"), BN_CASES, ids=lambda c: getattr(c, "__name__", str(c)))
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_matches_torch(
    cls: Any, shape: tuple[int, ...], momentum: float | None, affine: bool
) -> None:
    """Three training steps: outputs, gradients and the running statistics equal torch's; then
    evaluation with the final statistics equals torch's eval mode."""
    module = randomize(helpers.torch_module(cls, 3, momentum=momentum, affine=affine))
    layer = helpers.copy_weights(
        nn.BatchNorm(3, momentum=momentum, affine=affine, dtype=F64), module
    )
    state = layer.init_state()
    assert_trees_allclose(state, state_of(module), rtol=0, atol=0)
    for step in range(3):
        x = helpers.t(*shape, seed=step) * (step + 1) + step
        holder: dict[str, Any] = {}

        def call(
            m: nn.BatchNorm, x: torch.Tensor, s: Any = state, holder: dict[str, Any] = holder
        ) -> torch.Tensor:
            y, holder["state"] = m(x, s, train=True)
            return y

        helpers.check_layer_against_torch(layer, module.train(), (x,), call=call)
        state = holder["state"]
        assert_trees_allclose(state, state_of(module), rtol=1e-12, atol=1e-14)
    x = helpers.t(*shape, seed=9)
    _y, same = layer(x, state, train=False)
    assert same is state
    helpers.check_layer_against_torch(
        layer, module.eval(), (x,), call=lambda m, x: m(x, state, train=False)[0]
    )


def test_batch_norm_does_not_modify_the_state_given() -> None:
    """Training returns new statistics and leaves the state passed in untouched."""
    bn = nn.BatchNorm(2, dtype=F64)
    state = bn.init_state()
    before = fg.tree.map(torch.clone, state)
    _, new = bn(helpers.t(5, 2, seed=1), state, train=True)
    assert fg.tree.equal(state, before)
    assert not torch.equal(new.running_mean, state.running_mean)
    assert int(new.num_batches_tracked) == 1


def test_batch_norm_state_is_not_differentiated() -> None:
    """fg.grad with respect to the layer returns gradients for weight and bias only; the new
    state comes back as auxiliary data."""
    bn = nn.BatchNorm(2, dtype=F64)

    def loss(m: nn.BatchNorm, s: nn.BatchNormState) -> tuple[torch.Tensor, nn.BatchNormState]:
        y, s = m(helpers.t(6, 2, seed=1), s, train=True)
        return (y * helpers.t(6, 2, seed=2)).sum(), s

    grads, new_state = fg.grad(loss, has_aux=True)(bn, bn.init_state())
    assert isinstance(grads, nn.BatchNorm)
    assert isinstance(new_state, nn.BatchNormState)
    assert int(new_state.num_batches_tracked) == 1


def test_batch_norm_eval_per_example_gradients_under_vmap() -> None:
    """fg.vmap(fg.grad) over examples (each a batch of one) with BatchNorm in evaluation
    equals the loop of fg.grad: the Opacus use case."""
    bn = nn.BatchNorm(3, dtype=F64).replace(weight=helpers.t(3, seed=1), bias=helpers.t(3, seed=2))
    _, state = bn(helpers.t(16, 3, 4, 4, seed=3), bn.init_state(), train=True)
    xs = helpers.t(5, 3, 4, 4, seed=4)

    def loss(m: nn.BatchNorm, x: torch.Tensor) -> torch.Tensor:
        return m(x[None], state, train=False)[0].tanh().sum()

    per_example = fg.vmap(fg.grad(loss), in_axes=(None, 0))(bn, xs)
    assert_trees_allclose(per_example, fg.tree.stack([fg.grad(loss)(bn, x) for x in xs]))


def test_batch_norm_training_ensemble_under_vmap() -> None:
    """An ensemble of BatchNorms (stacked layers and states) trains under fg.vmap as the loop."""
    members = [
        nn.BatchNorm(2, dtype=F64).replace(
            weight=helpers.t(2, seed=i), bias=helpers.t(2, seed=9 + i)
        )
        for i in range(3)
    ]
    states = [m.init_state() for m in members]
    xs = helpers.t(3, 6, 2, seed=5)
    ys, new_states = fg.vmap(lambda m, x, s: m(x, s, train=True))(
        fg.tree.stack(members), xs, fg.tree.stack(states)
    )
    loop = [m(x, s, train=True) for m, x, s in zip(members, xs, states)]
    assert_trees_allclose(ys, torch.stack([y for y, _ in loop]))
    assert_trees_allclose(new_states, fg.tree.stack([s for _, s in loop]))


def test_batch_norm_init_state_dtype_and_device() -> None:
    """The state follows the weight's dtype and device, or the given ones without affine."""
    state = nn.BatchNorm(2, dtype=F64).init_state()
    assert state.running_mean.dtype == F64
    assert state.num_batches_tracked.dtype == torch.long
    plain = nn.BatchNorm(2, affine=False).init_state(dtype=torch.float16, device="cpu")
    assert plain.running_var.dtype == torch.float16


def test_batch_norm_errors() -> None:
    """Channel counts, a missing batch dimension, a wrong state and bad momenta are named."""
    bn = nn.BatchNorm(3)
    state = bn.init_state()
    with pytest.raises(
        ValueError,
        match=r"nn\.BatchNorm: expected an input of shape \(N, C=3, \*spatial\) \(a batch is needed\), got an input of shape \(4, 2\)",
    ):
        bn(torch.ones(4, 2), state, train=True)
    with pytest.raises(ValueError, match=r"got an input of shape \(3,\)"):
        bn(torch.ones(3), state, train=False)
    with pytest.raises(
        TypeError,
        match=r"nn\.BatchNorm: state must be the BatchNormState from bn\.init_state\(\) .* got tuple",
    ):
        bn(torch.ones(4, 3), tuple(state), train=True)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"nn\.BatchNorm: momentum must be in \[0, 1\] or None, got 2"
    ):
        nn.BatchNorm(3, momentum=2)
