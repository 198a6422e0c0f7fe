"""Tests for trust-ratio optimizers (scale_by_trust_ratio, LAMB, LARS): optax numerics, laws,
vmap, masks and errors."""

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
    """Random initial parameters (a matrix, a 3-d kernel, a bias) and a smooth loss's constants."""
    params = {
        "w": helpers.t(4, 3, seed=seed),
        "k": helpers.t(2, 3, 2, seed=seed + 1),
        "b": helpers.t(3, seed=seed + 2),
    }
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
    """sum a (x - c)^2 + 0.1 sum sin(3 x) per leaf, plus a cross term between two leaves."""
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


# --------------------------------------------------------------------------------------------
# Numerics against optax
# --------------------------------------------------------------------------------------------

LAMB_SETTINGS = [
    {},
    {"b1": 0.8, "b2": 0.99, "eps": 1e-4, "eps_root": 1e-8, "weight_decay": 0.01},
    {"learning_rate": 0.05, "weight_decay": 0.1, "mask": {"w": True, "k": True, "b": False}},
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kwargs", LAMB_SETTINGS)
def test_lamb_matches_optax(kwargs: dict[str, Any], seed: int) -> None:
    """lamb follows optax.lamb's trajectory and Adam moments over 50 steps (float64)."""
    helpers.require_jax()
    import optax

    kwargs = {"learning_rate": 0.01, **kwargs}
    params, consts = _problem(seed)
    ours, state = _run_funcgrad(optim.lamb(**kwargs), params, consts, STEPS)
    ref, ref_state = _run_optax(optax.lamb(**kwargs), params, consts, STEPS)
    assert_trees_allclose(ours, ref, rtol=RTOL, atol=0.0)
    assert_trees_allclose(state[0].mu, helpers.to_torch(ref_state[0].mu), rtol=RTOL, atol=1e-15)
    assert_trees_allclose(state[0].nu, helpers.to_torch(ref_state[0].nu), rtol=RTOL, atol=1e-15)


LARS_SETTINGS = [
    {},
    {"weight_decay": 1e-3, "trust_coefficient": 0.02, "eps": 1e-6, "momentum": 0.5},
    {"weight_decay": 0.01, "momentum": 0.8, "nesterov": True},
    {
        "learning_rate": 0.05,
        "trust_coefficient": 0.02,
        "weight_decay": 0.05,
        "weight_decay_mask": {"w": True, "k": True, "b": False},
        "trust_ratio_mask": {"w": False, "k": True, "b": True},
    },
    {"learning_rate": 0.05, "weight_decay": 0.01, "trust_ratio_mask": False},
]


@pytest.mark.parametrize("kwargs", LARS_SETTINGS)
def test_lars_matches_optax(kwargs: dict[str, Any]) -> None:
    """lars follows optax.lars's trajectory and momentum over 50 steps (float64)."""
    helpers.require_jax()
    import optax

    kwargs = {"learning_rate": 3.0, **kwargs}
    params, consts = _problem(2)
    ours, state = _run_funcgrad(optim.lars(**kwargs), params, consts, STEPS)
    ref, ref_state = _run_optax(optax.lars(**kwargs), params, consts, STEPS)
    assert_trees_allclose(ours, ref, rtol=RTOL, atol=0.0)
    assert_trees_allclose(
        state[-1].trace, helpers.to_torch(ref_state[-1].trace), rtol=RTOL, atol=1e-15
    )
    moved = fg.tree.map(lambda a, b: (a - b).abs().max(), ours[-1], params)
    assert min(fg.tree.leaves(moved)) > 1e-3  # the problem is not trivially static


@pytest.mark.parametrize(
    ("min_norm", "trust_coefficient", "eps"), [(0.0, 1.0, 0.0), (0.5, 0.3, 1e-3), (2.0, 2.0, 0.1)]
)
def test_scale_by_trust_ratio_matches_optax(
    min_norm: float, trust_coefficient: float, eps: float
) -> None:
    """scale_by_trust_ratio (with a zero-initialised leaf) follows optax's in a descent chain."""
    helpers.require_jax()
    import optax

    params, consts = _problem(4)
    params["b"] = torch.zeros(3, dtype=torch.float64)  # ratio 1 until the norm is positive
    hyper = {"min_norm": min_norm, "trust_coefficient": trust_coefficient, "eps": eps}
    ours = optim.chain(optim.scale_by_trust_ratio(**hyper), optim.scale(-0.02))
    ref = optax.chain(optax.scale_by_trust_ratio(**hyper), optax.scale(-0.02))
    got, _ = _run_funcgrad(ours, params, consts, STEPS)
    want, _ = _run_optax(ref, params, consts, STEPS)
    assert_trees_allclose(got, want, rtol=RTOL, atol=0.0)


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_tensor_learning_rate_and_schedule(name: str) -> None:
    """A 0-d tensor learning rate equals the float; a schedule follows optax with that schedule."""
    _, jnp = helpers.require_jax()
    import optax

    params, consts = _problem(5)
    base = 0.02 if name == "lamb" else 2.0
    ours_fn, ref_fn = getattr(optim, name), getattr(optax, name)
    by_float, _ = _run_funcgrad(ours_fn(base), params, consts, 10)
    by_tensor, _ = _run_funcgrad(
        ours_fn(torch.tensor(base, dtype=torch.float64)), params, consts, 10
    )
    assert_trees_allclose(by_tensor, by_float, rtol=1e-14, atol=0.0)

    def schedule(count: torch.Tensor) -> torch.Tensor:
        return base * torch.clamp((count.to(torch.float64) + 1) / 10, max=1.0)

    ours, _ = _run_funcgrad(ours_fn(schedule), params, consts, STEPS)
    ref, _ = _run_optax(
        ref_fn(lambda c: base * jnp.minimum((c.astype(jnp.float64) + 1) / 10, 1.0)),
        params,
        consts,
        STEPS,
    )
    assert_trees_allclose(ours, ref, rtol=RTOL, atol=0.0)


@pytest.mark.parametrize(
    "opt",
    [
        optim.lamb(0.02, weight_decay=0.1),
        optim.lars(2.0, weight_decay=0.01, trust_ratio_mask={"w": True, "k": False, "b": True}),
    ],
    ids=["lamb", "lars"],
)
def test_in_vmap_equals_separate_runs(opt: optim.GradientTransformation) -> None:
    """Inside fg.vmap (the per-leaf path), an ensemble of 3 equals 3 separate runs."""
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
            fg.tree.map(lambda x, i=i: x[i], (stacked, state)),
            (final[-1], member_state),
            rtol=1e-12,
            atol=1e-15,
        )


def _unrolled(p0: Any, opt: Any, consts: Any, lib: Any, grad: Any, apply: Any) -> Any:
    """The loss after 3 optimizer steps from p0 (in torch or JAX)."""
    state, p = opt.init(p0), p0
    for _ in range(3):
        updates, state = opt.update(grad(lambda q: _loss(q, consts, lib))(p), state, p)
        p = apply(p, updates)
    return _loss(p, consts, lib)


def _check_meta_gradient(ours: Any, ref: Any, seed: int) -> None:
    """fg.grad through 3 steps w.r.t. the initial parameters matches jax.grad through optax."""
    jax, jnp = helpers.require_jax()
    import optax

    params, consts = _problem(seed)
    got = fg.grad(_unrolled)(params, ours, consts, torch, fg.grad, optim.apply_updates)
    # jitted: eager JAX takes seconds on nested gradients (jit changes only the rounding).
    reference = jax.jit(
        jax.grad(lambda p0, c: _unrolled(p0, ref, c, jnp, jax.grad, optax.apply_updates))
    )
    want = reference(helpers.to_jax(params), helpers.to_jax(consts))
    assert_trees_allclose(got, helpers.to_torch(want), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_grad_through_steps_matches_jax(name: str) -> None:
    """Meta-gradients: fg.grad through 3 steps matches jax.grad through optax's optimizer."""
    helpers.require_jax()
    import optax

    lr = 0.05 if name == "lamb" else 1.0
    ours = getattr(optim, name)(lr, weight_decay=0.1)
    _check_meta_gradient(ours, getattr(optax, name)(lr, weight_decay=0.1), seed=8)


# --------------------------------------------------------------------------------------------
# Laws
# --------------------------------------------------------------------------------------------

NONEMPTY_TREES = helpers.trees().filter(lambda tree: len(fg.tree.leaves(tree)) > 0)


def _ratio_inputs(tree: Any, seed: int) -> tuple[Any, Any]:
    """Updates and parameters of the tree's shapes (nonzero almost surely)."""
    params = fg.tree.map(lambda x: helpers.t(*x.shape, seed=seed), tree)
    return tree, params


@settings(max_examples=20)
@given(NONEMPTY_TREES, helpers.seeds, st.floats(0.1, 3.0))
def test_trust_ratio_sets_each_leaf_norm(tree: Any, seed: int, coefficient: float) -> None:
    """Each scaled leaf has norm c * |p| and the direction of its update."""
    updates, params = _ratio_inputs(tree, seed)
    t = optim.scale_by_trust_ratio(trust_coefficient=coefficient)
    new, _ = t.update(updates, t.init(params), params)
    for u, p, n in zip(fg.tree.leaves(updates), fg.tree.leaves(params), fg.tree.leaves(new)):
        expected = coefficient * torch.linalg.vector_norm(p) / torch.linalg.vector_norm(u) * u
        assert_trees_allclose(n, expected, rtol=1e-13, atol=1e-15)


@settings(max_examples=20)
@given(NONEMPTY_TREES, helpers.seeds, st.floats(1e-3, 1e3))
def test_trust_ratio_is_invariant_to_update_scale(tree: Any, seed: int, factor: float) -> None:
    """Multiplying all updates by c > 0 does not change the output (eps = 0)."""
    updates, params = _ratio_inputs(tree, seed)
    t = optim.scale_by_trust_ratio()
    new, _ = t.update(updates, t.init(params), params)
    scaled, _ = t.update(fg.tree.map(lambda x: factor * x, updates), t.init(params), params)
    assert_trees_allclose(scaled, new, rtol=1e-13, atol=1e-15)


@settings(max_examples=20)
@given(NONEMPTY_TREES, helpers.seeds, st.data())
def test_trust_ratio_mask_passes_leaves_through(tree: Any, seed: int, data: Any) -> None:
    """Masked-out leaves are unchanged; the others are what the unmasked transform gives."""
    updates, params = _ratio_inputs(tree, seed)
    mask = fg.tree.map(lambda _: data.draw(st.booleans()), tree)
    t, full = optim.scale_by_trust_ratio(mask=mask), optim.scale_by_trust_ratio()
    new, _ = t.update(updates, t.init(params), params)
    everywhere, _ = full.update(updates, full.init(params), params)
    expected = fg.tree.map(lambda m, u, e: e if m else u, mask, updates, everywhere)
    assert_trees_allclose(new, expected, rtol=0.0, atol=0.0)


def test_trust_ratio_is_one_at_zero_norms() -> None:
    """A zero parameter or a zero update leaf gets ratio 1 (it still moves / stays zero)."""
    params = {"p0": torch.zeros(2), "u0": torch.ones(2), "both": torch.zeros(1)}
    updates = {"p0": torch.tensor([1.0, -2.0]), "u0": torch.zeros(2), "both": torch.zeros(1)}
    t = optim.scale_by_trust_ratio(trust_coefficient=5.0)
    new, _ = t.update(updates, t.init(params), params)
    assert_trees_allclose(new, updates, rtol=0.0, atol=0.0)


def test_lars_mask_function_equals_mask_tree() -> None:
    """Masks given as functions of the parameters act like the trees they return."""
    params, consts = _problem(6)
    trees = {
        "weight_decay_mask": {"w": True, "k": True, "b": False},
        "trust_ratio_mask": {"w": True, "k": True, "b": False},
    }
    fns = {k: (lambda p: {n: v.dim() > 1 for n, v in p.items()}) for k in trees}
    by_tree, _ = _run_funcgrad(optim.lars(2.0, weight_decay=0.1, **trees), params, consts, 10)
    by_fn, _ = _run_funcgrad(optim.lars(2.0, weight_decay=0.1, **fns), params, consts, 10)
    unmasked, _ = _run_funcgrad(optim.lars(2.0, weight_decay=0.1), params, consts, 10)
    assert_trees_allclose(by_fn, by_tree, rtol=0.0, atol=0.0)
    assert not torch.allclose(by_tree[-1]["b"], unmasked[-1]["b"])


def test_lamb_update_is_pure() -> None:
    """update never writes into the gradients, state or parameters it is given."""
    params, _ = _problem(7)
    opt = optim.lamb(0.1, weight_decay=0.1)
    state = opt.init(params)
    grads = fg.tree.map(torch.ones_like, params)
    _, state = opt.update(grads, state, params)
    before = fg.tree.map(torch.clone, (grads, state, params))
    opt.update(grads, state, params)
    assert_trees_allclose((grads, state, params), before, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_on_an_empty_tree(name: str) -> None:
    """A tree without leaves gives empty updates."""
    opt = getattr(optim, name)(0.1)
    updates, _ = opt.update({}, opt.init({}), {})
    assert updates == {}


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opt", "name"),
    [
        (optim.lamb(0.1), "lamb"),
        (optim.lars(0.1), "lars"),
        (optim.scale_by_trust_ratio(), "scale_by_trust_ratio"),
    ],
)
def test_needs_params(opt: optim.GradientTransformation, name: str) -> None:
    params = {"w": torch.ones(2)}
    with pytest.raises(
        ValueError,
        match=rf"funcgrad.optim.{name}: this transformation needs the current parameters; call "
        r"update\(updates, state, params\) with params",
    ):
        opt.update(params, opt.init(params))


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda m: optim.lamb(0.1, weight_decay=0.1, mask=m), "add_decayed_weights"),
        (lambda m: optim.lars(0.1, weight_decay_mask=m), "add_decayed_weights"),
        (lambda m: optim.lars(0.1, trust_ratio_mask=m), "scale_by_trust_ratio"),
        (lambda m: optim.scale_by_trust_ratio(mask=m), "scale_by_trust_ratio"),
    ],
)
def test_mask_not_a_prefix(make: Any, name: str) -> None:
    """A mask that does not mirror the parameters names the first path where it differs."""
    params = {"w": torch.ones(2), "b": {"x": torch.ones(1), "y": torch.ones(1)}}
    opt = make({"w": True, "b": {"x": True, "z": False}})
    with pytest.raises(
        ValueError,
        match=rf"funcgrad.optim.{name}: mask must be a pytree prefix of the params, but at "
        r"params\['b'\], the mask has structure",
    ):
        opt.update(params, opt.init(params), params)


def test_mask_not_a_prefix_hint_speaks_of_bools() -> None:
    """The fix suggested for a bad mask is about bools (not vmap's ints or None)."""
    params = {"w": torch.ones(2), "b": {"x": torch.ones(1), "y": torch.ones(1)}}
    opt = optim.lars(0.1, trust_ratio_mask={"w": True, "b": [True]})
    with pytest.raises(ValueError, match=r"params\['b'\].*Use True or False for a whole subtree"):
        opt.update(params, opt.init(params), params)


def test_mask_leaf_not_a_bool() -> None:
    params = {"w": torch.ones(2), "b": torch.ones(1)}
    opt = optim.lars(0.1, trust_ratio_mask={"w": True, "b": 1})
    with pytest.raises(
        TypeError,
        match=r"funcgrad.optim.scale_by_trust_ratio: every leaf of the mask must be a bool, got int",
    ):
        opt.update(params, opt.init(params), params)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: optim.scale_by_trust_ratio(trust_coefficient=-1.0),
            r"scale_by_trust_ratio: trust_coefficient must be a non-negative number, got -1.0",
        ),
        (
            lambda: optim.scale_by_trust_ratio(min_norm=float("nan")),
            r"scale_by_trust_ratio: min_norm must be a non-negative number, got nan",
        ),
        (
            lambda: optim.lars(0.1, eps=-1e-3),
            r"scale_by_trust_ratio: eps must be a non-negative number",
        ),
        (
            lambda: optim.lamb(-0.1),
            r"scale_by_learning_rate: learning_rate must be a non-negative number",
        ),
        (
            lambda: optim.lars(0.1, weight_decay=-1.0),
            r"lars: weight_decay must be a non-negative number, got -1.0",
        ),
    ],
)
def test_bad_hyperparameters(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match="funcgrad.optim." + match):
        make()


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_weight_decay_schedule_is_refused(name: str) -> None:
    with pytest.raises(
        TypeError,
        match=rf"funcgrad.optim.{name}: weight_decay must be a number or a 0-d tensor; schedules "
        "are not supported",
    ):
        getattr(optim, name)(0.1, weight_decay=lambda count: 0.1)


def test_params_structure_mismatch() -> None:
    params = {"w": torch.ones(2), "b": torch.ones(1)}
    t = optim.scale_by_trust_ratio()
    with pytest.raises(
        ValueError,
        match=r"funcgrad.optim.scale_by_trust_ratio: the params must have the structure of the "
        r"updates.*lacks tree\['w'\]",
    ):
        t.update(params, t.init(params), {"b": torch.ones(1)})
