"""Every optimizer under ``funcgrad.jit``: one compilation for all steps, the eager trajectory.

A whole train step (``value_and_grad``, ``update``, ``apply_updates``) is jitted with the
parameters and optimizer state donated, as in the examples, and compiled with
``backend="aot_eager"`` (about a second per optimizer here; inductor compiles the same graphs,
see tests/test_jit.py). Step counters are tensors, so the step count never recompiles.

Not here yet: ``multi_transform`` (its label masks do not trace: dynamo's stand-in for optree
cannot rebuild the masked trees) and ``lookahead`` (its parameters are a ``LookaheadParams``
pair, a different step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

STEPS = 4

OPTIMIZERS: dict[str, Callable[[], optim.GradientTransformation]] = {
    "sgd_nesterov_wd": lambda: optim.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda: optim.adam(0.05),
    "adamw_masked": lambda: optim.adamw(0.05, weight_decay=0.1, mask={"w": True, "b": False}),
    "nadam": lambda: optim.nadam(0.05),
    "radam": lambda: optim.radam(0.05),
    "adamax": lambda: optim.adamax(0.05),
    "rmsprop_centered_momentum": lambda: optim.rmsprop(0.01, centered=True, momentum=0.9),
    "adagrad": lambda: optim.adagrad(0.1),
    "adadelta": lambda: optim.adadelta(1.0),
    "lion": lambda: optim.lion(0.01),
    "lamb": lambda: optim.lamb(0.01),
    "lars": lambda: optim.lars(0.1),
    "adafactor": lambda: optim.adafactor(0.01, min_dim_size_to_factor=2),
    "adam_warmup_cosine": lambda: optim.adam(optim.warmup_cosine_decay(0.0, 0.1, 2, 10)),
    "clip_then_adam": lambda: optim.chain(optim.clip_by_global_norm(0.5), optim.adam(0.05)),
    "multi_steps": lambda: optim.MultiSteps(optim.adam(0.05), 2).gradient_transformation(),
    "apply_if_finite": lambda: optim.apply_if_finite(optim.adam(0.05), 2),
}


def _problem() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = {
        "w": torch.randn(4, 3, generator=gen, dtype=torch.float64),
        "b": torch.zeros(3, dtype=torch.float64),
    }
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    return params, x, torch.randn(8, 3, generator=gen, dtype=torch.float64)


def _loss(p: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((torch.tanh(x @ p["w"] + p["b"]) - y) ** 2).mean()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_jitted_donated_step_follows_the_eager_trajectory(name: str) -> None:
    opt = OPTIMIZERS[name]()

    def step(p: Any, s: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
        loss, g = fg.value_and_grad(_loss)(p, x, y)
        updates, s = opt.update(g, s, p)
        return optim.apply_updates(p, updates), s, loss

    jstep = fg.jit(step, donate_argnums=(0, 1), backend="aot_eager")
    params, x, y = _problem()
    state = opt.init(params)
    ref_params, ref_state = fg.tree.map(torch.clone, (params, state))
    for _ in range(STEPS):
        ref_params, ref_state, ref_loss = step(ref_params, ref_state, x, y)
        params, state, loss = jstep(params, state, x, y)
        assert_trees_allclose((params, state, loss), (ref_params, ref_state, ref_loss))
    assert jstep.compile_count == 1


def test_vmapped_ensemble_step_under_jit() -> None:
    """vmap over stacked parameters and optimizer states inside jit (an ensemble of 3): the
    foreach kernels, which have no batching rules, are not used under the inner vmap."""
    opt = optim.adam(0.05)

    def step(p: Any, s: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
        g = fg.grad(_loss)(p, x, y)
        updates, s = opt.update(g, s, p)
        return optim.apply_updates(p, updates), s

    params, x, y = _problem()
    members = [fg.tree.map(lambda t, k=k: t + 0.1 * k, params) for k in range(3)]
    stacked = fg.tree.stack(members)
    states = fg.vmap(opt.init)(stacked)
    ensemble = fg.vmap(step, in_axes=(0, 0, None, None))
    jitted = fg.jit(ensemble, backend="aot_eager")
    ref = ensemble(stacked, states, x, y)
    assert_trees_allclose(jitted(stacked, states, x, y), ref)
    separate = [step(m, opt.init(m), x, y)[0] for m in members]
    assert_trees_allclose(ref[0], fg.tree.stack(separate))
    assert jitted.compile_count == 1
