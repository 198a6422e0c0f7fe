"""Tests for funcgrad.optim's Lion: trajectories vs optax, laws, vmap, meta-gradients, errors."""

from __future__ import annotations

import functools
from typing import Any

import helpers
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

STEPS = 50
RTOL = 1e-10


def _problem(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Random initial parameters and the constants of a smooth, coupled loss."""
    params = {"w": helpers.t(4, 3, seed=seed), "b": helpers.t(3, seed=seed + 1)}
    consts = {
        "a": {
            k: helpers.t(*v.shape, seed=seed + 10 + i).abs() + 0.5
            for i, (k, v) in enumerate(params.items())
        },
        "c": {
            k: helpers.t(*v.shape, seed=seed + 20 + i) for i, (k, v) in enumerate(params.items())
        },
    }
    return params, consts


def _loss(p: Any, consts: Any, lib: Any) -> Any:
    """sum a (x - c)^2 + 0.1 sum sin(3 x) per leaf, plus a cross term between the leaves."""
    total = 0.0
    for k in sorted(p):
        x, a, c = p[k], consts["a"][k], consts["c"][k]
        total = total + lib.sum(a * (x - c) ** 2) + 0.1 * lib.sum(lib.sin(3.0 * x))
    return total + 0.05 * lib.sum(p["w"]) * lib.sum(p["b"])


def _run_funcgrad(opt: optim.GradientTransformation, params: Any, consts: Any, steps: int) -> Any:
    grad = fg.grad(lambda p: _loss(p, consts, torch))
    state = opt.init(params)
    trajectory = []
    for _ in range(steps):
        updates, state = opt.update(grad(params), state, params)
        params = optim.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory, state


@functools.cache
def _jax_grad() -> Any:
    """The loss gradient in JAX, jitted once for the module (eager JAX dominates run time)."""
    jax, jnp = helpers.require_jax()
    return jax.jit(jax.grad(lambda p, c: _loss(p, c, jnp)))


def _run_optax(opt: Any, params: Any, consts: Any, steps: int) -> Any:
    helpers.require_jax()
    import optax

    params, consts = helpers.to_jax(params), helpers.to_jax(consts)
    grad = _jax_grad()
    state = opt.init(params)
    trajectory = []
    for _ in range(steps):
        updates, state = opt.update(grad(params, consts), state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(params)
    return helpers.to_torch(trajectory), state


LION_SETTINGS = [
    {},
    {"learning_rate": 0.003, "b1": 0.95, "b2": 0.98, "weight_decay": 0.1},
    {"learning_rate": 0.02, "b1": 0.5, "b2": 0.9, "weight_decay": 0.0},
    {"learning_rate": 0.01, "weight_decay": 0.3, "mask": {"w": True, "b": False}},
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kwargs", LION_SETTINGS)
def test_lion_matches_optax(kwargs: dict[str, Any], seed: int) -> None:
    """lion follows optax.lion's trajectory and momentum over 50 steps (float64)."""
    helpers.require_jax()
    import optax

    kwargs = {"learning_rate": 0.01, **kwargs}
    params, consts = _problem(seed)
    ours, state = _run_funcgrad(optim.lion(**kwargs), params, consts, STEPS)
    ref, ref_state = _run_optax(optax.lion(**kwargs), params, consts, STEPS)
    assert_trees_allclose(ours, ref, rtol=RTOL, atol=0.0)
    assert_trees_allclose(state[0].mu, helpers.to_torch(ref_state[0].mu), rtol=RTOL, atol=1e-15)
    assert state[0].count.dtype == torch.int32
    assert int(state[0].count) == STEPS == int(ref_state[0].count)


@pytest.mark.parametrize(
    ("mode", "smooth_beta"), [("hard", 1.0), ("smooth", 1.0), ("smooth", 7.0), ("refined", 1.0)]
)
def test_scale_by_lion_modes_match_optax(mode: str, smooth_beta: float) -> None:
    """Each sign variant of scale_by_lion follows optax's over 50 steps of a chained descent."""
    helpers.require_jax()
    import optax

    params, consts = _problem(3)
    ours = optim.chain(
        optim.scale_by_lion(0.8, 0.95, mode=mode, smooth_beta=smooth_beta), optim.scale(-0.01)
    )
    ref = optax.chain(
        optax.scale_by_lion(0.8, 0.95, mode=mode, smooth_beta=smooth_beta), optax.scale(-0.01)
    )
    got, _ = _run_funcgrad(ours, params, consts, STEPS)
    want, _ = _run_optax(ref, params, consts, STEPS)
    assert_trees_allclose(got, want, rtol=RTOL, atol=0.0)


def test_lion_mu_dtype_matches_optax() -> None:
    """A float32 momentum buffer under float64 parameters is kept and rounded as in optax."""
    _, jnp = helpers.require_jax()
    import optax

    params, consts = _problem(5)
    ours, state = _run_funcgrad(optim.lion(0.01, mu_dtype=torch.float32), params, consts, STEPS)
    ref, ref_state = _run_optax(optax.lion(0.01, mu_dtype=jnp.float32), params, consts, STEPS)
    assert {x.dtype for x in fg.tree.leaves(state[0].mu)} == {torch.float32}
    assert {x.dtype for x in fg.tree.leaves(ours[-1])} == {torch.float64}
    assert_trees_allclose(ours, ref, rtol=RTOL, atol=0.0)
    assert_trees_allclose(state[0].mu, helpers.to_torch(ref_state[0].mu), rtol=0.0, atol=0.0)


def test_lion_tensor_learning_rate_and_schedule() -> None:
    """A 0-d tensor learning rate equals the float; a schedule follows optax with that schedule."""
    _, jnp = helpers.require_jax()
    import optax

    params, consts = _problem(7)
    by_float, _ = _run_funcgrad(optim.lion(0.01), params, consts, 10)
    lr = torch.tensor(0.01, dtype=torch.float64)
    by_tensor, _ = _run_funcgrad(optim.lion(lr), params, consts, 10)
    assert_trees_allclose(by_tensor, by_float, rtol=1e-14, atol=0.0)

    def schedule(count: torch.Tensor) -> torch.Tensor:
        return 0.02 * 0.97 ** count.to(torch.float64)

    ours, _ = _run_funcgrad(optim.lion(schedule, weight_decay=0.05), params, consts, STEPS)
    ref, _ = _run_optax(
        optax.lion(lambda c: 0.02 * 0.97 ** c.astype(jnp.float64), weight_decay=0.05),
        params,
        consts,
        STEPS,
    )
    assert_trees_allclose(ours, ref, rtol=RTOL, atol=0.0)


def test_lion_in_vmap_equals_separate_runs() -> None:
    """Inside fg.vmap (the per-leaf path), an ensemble of 3 equals 3 separate runs."""
    opt = optim.lion(0.01, weight_decay=0.1)
    _, consts = _problem(0)
    members = [_problem(seed)[0] for seed in (11, 12, 13)]
    stacked = fg.tree.map(lambda *xs: torch.stack(xs), *members)
    grad = fg.grad(lambda p: _loss(p, consts, torch))

    def step(params: Any, state: Any) -> Any:
        updates, state = opt.update(grad(params), state, params)
        return optim.apply_updates(params, updates), state

    state = fg.vmap(opt.init)(stacked)
    for _ in range(5):
        stacked, state = fg.vmap(step)(stacked, state)
    for i, member in enumerate(members):
        final, member_state = _run_funcgrad(opt, member, consts, 5)
        assert_trees_allclose(
            fg.tree.map(lambda x, i=i: x[i], stacked), final[-1], rtol=1e-13, atol=0.0
        )
        assert_trees_allclose(
            fg.tree.map(lambda x, i=i: x[i], state[0].mu),
            member_state[0].mu,
            rtol=1e-13,
            atol=1e-16,
        )


@pytest.mark.parametrize("mode", ["hard", "smooth"])
def test_grad_through_lion_matches_jax(mode: str) -> None:
    """fg.grad through 3 Lion steps w.r.t. the initial parameters matches jax.grad through optax."""
    jax, jnp = helpers.require_jax()
    import optax

    params, consts = _problem(2)

    def make(lib_opt: Any, lib_chain: Any, lib_scale: Any, lib_wd: Any) -> Any:
        return lib_chain(
            lib_opt(0.9, 0.99, mode=mode, smooth_beta=3.0), lib_wd(0.2), lib_scale(-0.05)
        )

    ours = make(optim.scale_by_lion, optim.chain, optim.scale, optim.add_decayed_weights)
    ref = make(optax.scale_by_lion, optax.chain, optax.scale, optax.add_decayed_weights)

    def unrolled(p0: Any, opt: Any, c: Any, lib: Any, grad: Any, apply: Any) -> Any:
        state, p = opt.init(p0), p0
        for _ in range(3):
            updates, state = opt.update(grad(lambda q: _loss(q, c, lib))(p), state, p)
            p = apply(p, updates)
        return _loss(p, c, lib)

    got = fg.grad(unrolled)(params, ours, consts, torch, fg.grad, optim.apply_updates)
    c_jax = helpers.to_jax(consts)
    want = jax.grad(unrolled)(
        helpers.to_jax(params), ref, c_jax, jnp, jax.grad, optax.apply_updates
    )
    assert_trees_allclose(got, helpers.to_torch(want), rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------------------------
# Laws
# --------------------------------------------------------------------------------------------

NONEMPTY_TREES = helpers.trees().filter(lambda tree: len(fg.tree.leaves(tree)) > 0)


@settings(max_examples=20)
@given(NONEMPTY_TREES, helpers.seeds)
def test_lion_second_step_is_signed_interpolation(tree: Any, seed: int) -> None:
    """Without decay, step 2 is -lr * sign((1 - b1) g2 + b1 (1 - b2) g1), leaf by leaf."""
    b1, b2, lr = 0.7, 0.9, 0.25
    g1 = tree
    g2 = fg.tree.map(lambda x: helpers.t(*x.shape, seed=seed), tree)
    opt = optim.lion(lr, b1, b2, weight_decay=0.0)
    state = opt.init(tree)
    _, state = opt.update(g1, state, tree)
    updates, state = opt.update(g2, state, tree)
    expected = fg.tree.map(lambda a, b: -lr * torch.sign((1 - b1) * b + b1 * (1 - b2) * a), g1, g2)
    assert_trees_allclose(updates, expected, rtol=0.0, atol=0.0)
    mu = fg.tree.map(lambda a, b: (1 - b2) * b + b2 * (1 - b2) * a, g1, g2)
    assert_trees_allclose(state[0].mu, mu, rtol=1e-15, atol=1e-17)


@settings(max_examples=15)
@given(NONEMPTY_TREES, helpers.seeds, st.floats(1e-3, 1e3))
def test_lion_is_invariant_to_gradient_scale(tree: Any, seed: int, factor: float) -> None:
    """Hard-mode Lion's updates do not change when every gradient is multiplied by c > 0."""
    opt = optim.lion(0.1, weight_decay=0.01)
    grads = [fg.tree.map(lambda x, k=k: helpers.t(*x.shape, seed=seed + k), tree) for k in range(4)]
    state, scaled_state = opt.init(tree), opt.init(tree)
    for g in grads:
        updates, state = opt.update(g, state, tree)
        scaled, scaled_state = opt.update(fg.tree.map(lambda x: factor * x, g), scaled_state, tree)
        assert_trees_allclose(scaled, updates, rtol=0.0, atol=0.0)


def test_lion_mask_function_equals_mask_tree() -> None:
    """A mask given as a function of the parameters acts like the tree it returns."""
    params, consts = _problem(4)
    by_tree, _ = _run_funcgrad(
        optim.lion(0.01, weight_decay=0.5, mask={"w": False, "b": True}), params, consts, 10
    )
    by_fn, _ = _run_funcgrad(
        optim.lion(0.01, weight_decay=0.5, mask=lambda p: {k: v.dim() == 1 for k, v in p.items()}),
        params,
        consts,
        10,
    )
    unmasked, _ = _run_funcgrad(optim.lion(0.01, weight_decay=0.5), params, consts, 10)
    assert_trees_allclose(by_fn, by_tree, rtol=0.0, atol=0.0)
    assert not torch.equal(by_tree[-1]["w"], unmasked[-1]["w"])
    assert_trees_allclose(by_tree[-1]["b"], unmasked[-1]["b"], rtol=0.0, atol=0.0)


def test_lion_update_is_pure() -> None:
    """update never writes into the gradients, state or parameters it is given."""
    params, _ = _problem(6)
    opt = optim.lion(0.1, mu_dtype=torch.float32)
    state = opt.init(params)
    grads = fg.tree.map(torch.ones_like, params)
    _, state = opt.update(grads, state, params)
    before = fg.tree.map(torch.clone, (grads, state, params))
    opt.update(grads, state, params)
    assert_trees_allclose((grads, state, params), before, rtol=0.0, atol=0.0)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_lion_bad_mode() -> None:
    with pytest.raises(
        ValueError,
        match=r"funcgrad.optim.scale_by_lion: mode must be one of \('hard', 'smooth', 'refined'\), got 'soft'",
    ):
        optim.scale_by_lion(mode="soft")


@pytest.mark.parametrize(
    ("kwargs", "what"), [({"b1": 1.5}, "b1"), ({"b2": -0.1}, "b2"), ({"b1": True}, "b1")]
)
def test_lion_bad_decay(kwargs: dict[str, Any], what: str) -> None:
    with pytest.raises(
        ValueError, match=rf"funcgrad.optim.scale_by_lion: {what} must be a number in \[0, 1\]"
    ):
        optim.lion(0.1, **kwargs)


def test_lion_bad_learning_rate_and_weight_decay() -> None:
    with pytest.raises(
        ValueError,
        match=r"funcgrad.optim.scale_by_learning_rate: learning_rate must be a non-negative number, got -0.1",
    ):
        optim.lion(-0.1)
    with pytest.raises(
        ValueError,
        match=r"funcgrad.optim.lion: weight_decay must be a non-negative number, got nan",
    ):
        optim.lion(0.1, weight_decay=float("nan"))
    with pytest.raises(
        TypeError,
        match=r"funcgrad.optim.lion: weight_decay must be a number or a 0-d tensor; schedules are not supported",
    ):
        optim.lion(0.1, weight_decay=lambda count: 0.1)


def test_lion_needs_params_for_weight_decay() -> None:
    params = {"w": torch.ones(2)}
    opt = optim.lion(0.1)
    with pytest.raises(
        ValueError,
        match=r"funcgrad.optim.add_decayed_weights: this transformation needs the current parameters; call update\(updates, state, params\)",
    ):
        opt.update(params, opt.init(params))


def test_lion_state_structure_mismatch() -> None:
    params = {"w": torch.ones(2), "b": torch.ones(1)}
    opt = optim.lion(0.1)
    with pytest.raises(
        ValueError,
        match=r"funcgrad.optim.scale_by_lion: the state's momentum \(mu\) must have the structure of the updates.*lacks tree\['w'\]",
    ):
        opt.update(params, opt.init({"b": torch.ones(1)}), params)


def test_lion_mask_not_a_prefix() -> None:
    params = {"w": torch.ones(2), "b": {"x": torch.ones(1), "y": torch.ones(1)}}
    opt = optim.lion(0.1, mask={"w": True, "b": {"x": True}})
    with pytest.raises(
        ValueError, match=r"mask must be a pytree prefix of the params, but at params\['b'\]"
    ):
        opt.update(params, opt.init(params), params)


def test_lion_on_an_empty_tree() -> None:
    """A tree without leaves gives empty updates (and a counted step)."""
    opt = optim.lion(0.1)
    updates, state = opt.update({}, opt.init({}), {})
    assert updates == {}
    assert int(state[0].count) == 1
