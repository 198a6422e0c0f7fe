"""Tests for ``MultiSteps``, its skip functions and ``apply_if_finite``
(``funcgrad/optim/_accumulation.py``): optax's numerics, laws, vmap/compile, errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import (
    ENSEMBLE_NANS,
    ENSEMBLE_NO_NANS,
    SEPARABLE_SHAPES,
    compare_with_optax,
    ensemble_runs,
    nan_in_b,
    optax_module,
    require_jax,
    separable_problem,
    t,
    trees,
)
from hypothesis import given, settings

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

# --------------------------------------------------------------------------------------------
# MultiSteps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "use_grad_mean"),
    [(3, True), (1, True), (4, False), ("schedule", True)],
)
def test_multisteps_matches_optax(k: Any, use_grad_mean: bool) -> None:
    """MultiSteps follows optax.MultiSteps (float64 accumulator) over 60 micro-steps."""
    ox = optax_module()
    _, jnp = require_jax()
    every_k = (lambda step: 2 + step % 2) if k == "schedule" else k
    ours = optim.MultiSteps(optim.adam(0.05), every_k, use_grad_mean=use_grad_mean)
    theirs = ox.MultiSteps(
        ox.adam(0.05), every_k, use_grad_mean=use_grad_mean, accumulator_dtype=jnp.float64
    )
    _, state, _ = compare_with_optax(
        ours.gradient_transformation(), theirs.gradient_transformation(), seed=4
    )
    assert state.gradient_step > 10


def test_multisteps_skip_not_finite_matches_optax() -> None:
    """A skipped micro-batch (NaN gradient) leaves the state as it was, as in optax."""
    ox = optax_module()
    _, jnp = require_jax()
    ours = optim.MultiSteps(optim.adam(0.05), 3, should_skip_update_fn=optim.skip_not_finite)
    theirs = ox.MultiSteps(
        ox.adam(0.05), 3, should_skip_update_fn=ox.skip_not_finite, accumulator_dtype=jnp.float64
    )
    perturb = nan_in_b({2, 7, 8, 30})
    _, state, _ = compare_with_optax(
        ours.gradient_transformation(), theirs.gradient_transformation(), seed=5, perturb=perturb
    )
    assert not state.skip_state["should_skip"]


def test_multisteps_skip_large_updates_matches_optax() -> None:
    """skip_large_updates rejects micro-batches whose squared norm reaches the bound."""
    ox = optax_module()
    _, jnp = require_jax()
    ours = optim.MultiSteps(
        optim.sgd(0.05),
        2,
        should_skip_update_fn=functools.partial(optim.skip_large_updates, max_squared_norm=20.0),
    )
    theirs = ox.MultiSteps(
        ox.sgd(0.05),
        2,
        should_skip_update_fn=functools.partial(ox.skip_large_updates, max_squared_norm=20.0),
        accumulator_dtype=jnp.float64,
    )
    compare_with_optax(ours.gradient_transformation(), theirs.gradient_transformation(), seed=6)


@pytest.mark.parametrize("k", [2, 3])
def test_multisteps_equals_inner_on_the_mean_gradient(k: int) -> None:
    """k micro-batches through MultiSteps == one inner step on the mean of their gradients,
    and the parameters do not move in between."""
    params, _ = separable_problem(7)
    batches = [
        {n: t(*s, seed=100 + 7 * j + i) for i, (n, s) in enumerate(SEPARABLE_SHAPES.items())}
        for j in range(40)
    ]

    def loss(p: Any, x: Any) -> Any:
        return sum(
            ((p[n] - x[n]) ** 2 * (1 + x[n].abs()) + torch.sin(p[n])).sum()
            for n in SEPARABLE_SHAPES
        )

    grad = fg.grad(loss)
    multi = optim.MultiSteps(optim.adam(0.1), k)
    plain = optim.adam(0.1)
    p_multi, s_multi = params, multi.init(params)
    p_plain, s_plain = params, plain.init(params)
    for j in range(0, len(batches) - k + 1, k):
        grads = [grad(p_plain, x) for x in batches[j : j + k]]
        mean = fg.tree.map(lambda *gs: sum(gs) / k, *grads)
        u, s_plain = plain.update(mean, s_plain, p_plain)
        p_plain = optim.apply_updates(p_plain, u)
        for i, x in enumerate(batches[j : j + k]):
            before = p_multi
            u, s_multi = multi.update(grad(p_multi, x), s_multi, p_multi)
            p_multi = optim.apply_updates(p_multi, u)
            assert bool(multi.has_updated(s_multi)) == (i == k - 1)
            if i < k - 1:
                assert fg.tree.equal(p_multi, before)
        assert_trees_allclose(p_multi, p_plain, rtol=1e-12, atol=1e-13)


@settings(max_examples=10)
@given(tree=trees())
def test_multisteps_k1_is_the_inner_optimizer(tree: Any) -> None:
    """With k = 1 every call is an update of the inner optimizer on that gradient."""
    inner = optim.adam(0.1)
    multi = optim.MultiSteps(inner, 1)
    s, s_in = multi.init(tree), inner.init(tree)
    for _ in range(3):
        u, s = multi.update(tree, s, tree)
        u_in, s_in = inner.update(tree, s_in, tree)
        assert_trees_allclose(u, u_in)
    assert_trees_allclose(s.inner_opt_state, s_in)


def test_multisteps_accumulator_dtype() -> None:
    """The accumulator is at least float32 (bfloat16 gradients accumulate in float32)."""
    params = {"h": torch.zeros(2, dtype=torch.bfloat16), "d": torch.zeros(2, dtype=torch.float64)}
    state = optim.MultiSteps(optim.sgd(0.1), 2).init(params)
    assert state.acc_grads["h"].dtype == torch.float32
    assert state.acc_grads["d"].dtype == torch.float64
    forced = optim.MultiSteps(optim.sgd(0.1), 2, accumulator_dtype=torch.float32).init(params)
    assert forced.acc_grads["d"].dtype == torch.float32


# --------------------------------------------------------------------------------------------
# apply_if_finite
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_errors", [0, 2])
def test_apply_if_finite_matches_optax(max_errors: int) -> None:
    """NaN gradients are skipped, or applied after too many in a row, as in optax (the inner
    zero_nans keeps an applied NaN out of the parameters, so the run goes on)."""
    ox = optax_module()
    perturb = nan_in_b({3, 10, 11, 20, 21, 22, 40, 41, 42, 43, 44})
    _, state, _ = compare_with_optax(
        optim.apply_if_finite(optim.chain(optim.zero_nans(), optim.adam(0.05)), max_errors),
        ox.apply_if_finite(ox.chain(ox.zero_nans(), ox.adam(0.05)), max_errors),
        seed=10,
        perturb=perturb,
    )
    assert state.total_notfinite == 11


@settings(max_examples=10)
@given(tree=trees())
def test_apply_if_finite_with_finite_updates_is_the_inner(tree: Any) -> None:
    """Finite updates pass through the inner transformation unchanged."""
    inner = optim.sgd(0.1, momentum=0.9)
    opt = optim.apply_if_finite(inner, 1)
    s, s_in = opt.init(tree), inner.init(tree)
    for _ in range(3):
        u, s = opt.update(tree, s, tree)
        u_in, s_in = inner.update(tree, s_in, tree)
        assert_trees_allclose(u, u_in)
    assert s.notfinite_count == 0
    assert bool(s.last_finite)


def test_apply_if_finite_gives_up_after_max_consecutive_errors() -> None:
    """Zeros and an unchanged inner state until the count exceeds the maximum, then apply."""
    opt = optim.apply_if_finite(optim.sgd(1.0, momentum=0.5), max_consecutive_errors=2)
    p = torch.tensor([1.0, 2.0])
    s = opt.init(p)
    _, s = opt.update(torch.tensor([1.0, 1.0]), s, p)
    finite_inner = s.inner_state
    bad = torch.tensor([1.0, float("inf")])
    for expected_count in (1, 2):
        u, s = opt.update(bad, s, p)
        assert torch.equal(u, torch.zeros(2))
        assert s.notfinite_count == expected_count
        assert not bool(s.last_finite)
        assert_trees_allclose(s.inner_state, finite_inner)
    u, s = opt.update(bad, s, p)
    assert torch.isinf(u[1])
    assert (s.notfinite_count, s.total_notfinite) == (3, 3)
    u, s = opt.update(torch.tensor([1.0, 1.0]), s, p)
    assert (s.notfinite_count, s.total_notfinite) == (0, 3)
    assert bool(s.last_finite)


# --------------------------------------------------------------------------------------------
# Ensembles (vmap) and torch.compile
# --------------------------------------------------------------------------------------------


def _ensembles() -> dict[str, tuple[Any, list[set[int]]]]:
    return {
        "multi_steps": (
            optim.MultiSteps(optim.adam(0.05), 3).gradient_transformation(),
            ENSEMBLE_NO_NANS,
        ),
        "apply_if_finite": (
            optim.apply_if_finite(optim.chain(optim.zero_nans(), optim.adam(0.05)), 1),
            ENSEMBLE_NANS,
        ),
        "multi_steps_of_apply_if_finite": (
            optim.MultiSteps(
                optim.apply_if_finite(optim.sgd(0.05), 2), 2
            ).gradient_transformation(),
            ENSEMBLE_NANS,
        ),
    }


@pytest.mark.parametrize("name", list(_ensembles()))
def test_vmap_ensemble_equals_separate_runs(name: str) -> None:
    """vmap over 3 parameter sets and states == 3 separate runs (members may skip differently)."""
    params, state, expected, expected_state = ensemble_runs(*_ensembles()[name])
    assert_trees_allclose(params, expected, rtol=1e-12, atol=1e-14)
    assert_trees_allclose(state, expected_state, rtol=1e-12, atol=1e-14)


def test_compiled_step_matches_eager() -> None:
    """MultiSteps over apply_if_finite compiles into one graph (no Python branching on
    tensors) and gives the eager result."""
    opt = optim.MultiSteps(optim.apply_if_finite(optim.adam(0.05), 1), 2).gradient_transformation()
    params, loss = separable_problem(30)
    grad = fg.grad(lambda p: loss(p, torch.sin))
    compiled = torch.compile(opt.update, fullgraph=True, backend="eager")
    p_eager, s_eager = params, opt.init(params)
    p_comp, s_comp = params, opt.init(params)
    perturb = nan_in_b({3})
    for i in range(6):
        u, s_eager = opt.update(perturb(i, grad(p_eager)), s_eager, p_eager)
        p_eager = optim.apply_updates(p_eager, u)
        u, s_comp = compiled(perturb(i, grad(p_comp)), s_comp, p_comp)
        p_comp = optim.apply_updates(p_comp, u)
    assert_trees_allclose(p_comp, p_eager, rtol=1e-14, atol=0)
    assert_trees_allclose(s_comp, s_eager, rtol=1e-14, atol=0)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

P = {"w": torch.zeros(2), "b": torch.zeros(1)}
G = {"w": torch.ones(2), "b": torch.ones(1)}


def _update(opt: Any, state: Any = None, params: Any = P, grads: Any = G) -> Any:
    return opt.update(grads, opt.init(P) if state is None else state, params)


ERRORS: dict[str, tuple[Callable[[], Any], type[Exception], str]] = {
    "multisteps_opt": (
        lambda: optim.MultiSteps(optim.adam, 2),
        TypeError,
        r"MultiSteps: opt must be a GradientTransformation, got function",
    ),
    "multisteps_k_zero": (
        lambda: optim.MultiSteps(optim.sgd(0.1), 0),
        ValueError,
        r"MultiSteps: every_k_schedule must be at least 1 .*, got 0",
    ),
    "multisteps_k_float": (
        lambda: optim.MultiSteps(optim.sgd(0.1), 2.0),
        TypeError,
        r"MultiSteps: every_k_schedule must be a positive int or a function .*, got float 2\.0",
    ),
    "multisteps_k_bool": (
        lambda: optim.MultiSteps(optim.sgd(0.1), True),
        TypeError,
        r"every_k_schedule must be a positive int .*, got bool True",
    ),
    "multisteps_schedule_not_scalar": (
        lambda: _update(
            optim.MultiSteps(optim.sgd(0.1), lambda s: torch.ones(2)).gradient_transformation()
        ),
        ValueError,
        r"MultiSteps: a schedule must return a scalar .* shape \(2,\)",
    ),
    "multisteps_skip_fn_not_bool": (
        lambda: _update(
            optim.MultiSteps(
                optim.sgd(0.1), 2, should_skip_update_fn=lambda u, s, p: (0.0, ())
            ).gradient_transformation()
        ),
        ValueError,
        r"should_skip_update_fn must return \(skip, info\) with skip a 0-d bool tensor, but "
        r"skip is float 0\.0",
    ),
    "multisteps_wrong_state": (
        lambda: optim.MultiSteps(optim.sgd(0.1), 2).update(G, optim.sgd(0.1).init(P), P),
        TypeError,
        r"MultiSteps: expected a MultiStepsState .*, got a tuple of length 3",
    ),
    "multisteps_acc_structure": (
        lambda: optim.MultiSteps(optim.sgd(0.1), 2).update(
            G, optim.MultiSteps(optim.sgd(0.1), 2).init([torch.zeros(1)]), P
        ),
        ValueError,
        r"MultiSteps: the state's accumulated gradients must have the structure of the updates",
    ),
    "apply_if_finite_inner": (
        lambda: optim.apply_if_finite(optim.sgd, 2),
        TypeError,
        r"apply_if_finite: inner must be a GradientTransformation, got function",
    ),
    "apply_if_finite_negative": (
        lambda: optim.apply_if_finite(optim.sgd(0.1), -1),
        ValueError,
        r"apply_if_finite: max_consecutive_errors must be a non-negative int, got int -1",
    ),
    "apply_if_finite_float": (
        lambda: optim.apply_if_finite(optim.sgd(0.1), 2.5),
        ValueError,
        r"max_consecutive_errors must be a non-negative int, got float 2\.5",
    ),
    "apply_if_finite_wrong_state": (
        lambda: _update(optim.apply_if_finite(optim.sgd(0.1), 2), state=(1, 2)),
        TypeError,
        r"apply_if_finite: expected a ApplyIfFiniteState",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors(case: str) -> None:
    """Each bad input raises funcgrad's error naming the wrapper, the problem and the fix."""
    fn, error, match = ERRORS[case]
    with pytest.raises(error, match=match):
        fn()
