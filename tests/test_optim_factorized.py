"""Tests for Adafactor (scale_by_factored_rms, adafactor): optax numerics, state layout, laws,
vmap and errors.

optax computes Adafactor's second-moment decay schedule in float32 whatever the parameters'
dtype; funcgrad computes it in the parameters' dtype. The float64 comparisons therefore give
optax the same schedule in float64 (its ``decay_rate_fn`` argument, or a patched
``scale_by_factored_rms`` inside ``optax.adafactor``), and one test measures the remaining
difference against unpatched optax.
"""

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

SHAPES = {
    "w": (6, 5),  # a matrix, factored when min_dim_size_to_factor <= 5
    "k": (3, 4, 5),  # factored over its two largest dimensions, (1, 2)
    "q": (4, 4),  # equal dimensions: the first is the row dimension, as numpy's argsort gives
    "s": (2, 6),  # second dimension too small to factor when min_dim_size_to_factor > 2
    "b": (5,),
    "c": (),
}


def _problem(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Random initial parameters of SHAPES and the constants of a smooth loss."""
    params = {k: helpers.t(*shape, seed=seed + i) for i, (k, shape) in enumerate(SHAPES.items())}
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


def _compare_with_optax(
    opt: optim.GradientTransformation,
    ref: Any,
    seed: int,
    *,
    rtol: float = RTOL,
    atol: float = 0.0,
    steps: int = STEPS,
) -> tuple[Any, Any]:
    """Runs both optimizers on the gradients and parameters of funcgrad's trajectory and checks
    that every step's updates agree; returns both final states.

    Both see the same inputs at every step, while each evolves its own state. (Comparing two
    free-running trajectories does not work for Adafactor: near a minimum its sign-like steps
    amplify the last-bit differences of ``rsqrt`` between XLA and torch by about 3x per step.)
    """
    helpers.require_jax()
    params, consts = _problem(seed)
    grad = fg.grad(lambda p: _loss(p, consts, torch))
    state, ref_state = opt.init(params), ref.init(helpers.to_jax(params))
    for step in range(steps):
        grads = grad(params)
        updates, state = opt.update(grads, state, params)
        ref_updates, ref_state = ref.update(
            helpers.to_jax(grads), ref_state, helpers.to_jax(params)
        )
        try:
            assert_trees_allclose(updates, helpers.to_torch(ref_updates), rtol=rtol, atol=atol)
        except AssertionError as error:
            raise AssertionError(f"step {step}: {error}") from None
        params = optim.apply_updates(params, updates)
    moved = fg.tree.map(lambda a, b: (a - b).abs().max(), params, _problem(seed)[0])
    assert min(fg.tree.leaves(moved)) > 1e-3  # every leaf really moved
    return state, ref_state


def _decay_pow64(step: Any, exponent: Any) -> Any:
    """Adafactor's decay schedule 1 - (step + 1)^-exponent, in float64 (for optax)."""
    _, jnp = helpers.require_jax()
    return 1.0 - jnp.asarray(step + 1, jnp.float64) ** (-exponent)


@pytest.fixture
def optax_f64(monkeypatch: pytest.MonkeyPatch) -> Any:
    """optax, with optax.adafactor's decay schedule computed in float64."""
    helpers.require_jax()
    import optax
    from optax._src import factorized

    original = factorized.scale_by_factored_rms
    monkeypatch.setattr(
        factorized,
        "scale_by_factored_rms",
        functools.partial(original, decay_rate_fn=_decay_pow64),
    )
    return optax


def _state_as_torch(state: Any) -> Any:
    return helpers.to_torch((state.v_row, state.v_col, state.v))


# --------------------------------------------------------------------------------------------
# Numerics against optax
# --------------------------------------------------------------------------------------------

FACTORED_SETTINGS = [
    {"min_dim_size_to_factor": 3},
    {"min_dim_size_to_factor": 2, "decay_rate": 0.5, "epsilon": 1e-20, "step_offset": -3},
    {"min_dim_size_to_factor": 3, "factored": False},
    {},  # min_dim_size_to_factor=128: nothing is factored
]


@pytest.mark.parametrize("kwargs", FACTORED_SETTINGS)
def test_scale_by_factored_rms_matches_optax(kwargs: dict[str, Any]) -> None:
    """scale_by_factored_rms follows optax's (float64 schedule) over 50 steps, state included."""
    helpers.require_jax()
    import optax

    ours = optim.chain(optim.scale_by_factored_rms(**kwargs), optim.scale(-0.01))
    ref = optax.chain(
        optax.scale_by_factored_rms(**kwargs, decay_rate_fn=_decay_pow64), optax.scale(-0.01)
    )
    state, ref_state = _compare_with_optax(ours, ref, seed=0)
    assert_trees_allclose(
        (state[0].v_row, state[0].v_col, state[0].v),
        _state_as_torch(ref_state[0]),
        rtol=RTOL,
        atol=0.0,
    )
    assert state[0].count.dtype == torch.int32
    assert int(state[0].count) == STEPS


def test_scale_by_factored_rms_custom_decay_matches_optax() -> None:
    """A custom decay schedule (capped, as in Zhai et al. 2021) is used as optax uses it."""
    _, jnp = helpers.require_jax()
    import optax

    def ours_fn(step: torch.Tensor, rate: float) -> torch.Tensor:
        return torch.clamp(1.0 - (step + 1).to(torch.float64) ** (-rate), max=0.9)

    def ref_fn(step: Any, rate: Any) -> Any:
        return jnp.minimum(1.0 - jnp.asarray(step + 1, jnp.float64) ** (-rate), 0.9)

    kwargs = {"min_dim_size_to_factor": 3, "decay_rate": 0.7}
    ours = optim.scale_by_factored_rms(**kwargs, decay_rate_fn=ours_fn)
    ref = optax.scale_by_factored_rms(**kwargs, decay_rate_fn=ref_fn)
    _compare_with_optax(
        optim.chain(ours, optim.scale(-0.01)), optax.chain(ref, optax.scale(-0.01)), seed=1
    )


ADAFACTOR_SETTINGS = [
    {},  # no learning rate: steps relative to each parameter leaf's RMS
    {"learning_rate": 0.01, "min_dim_size_to_factor": 3},
    {
        "learning_rate": 0.02,
        "min_dim_size_to_factor": 3,
        "momentum": 0.9,
        "weight_decay_rate": 0.01,
        "weight_decay_mask": {k: len(s) > 1 for k, s in SHAPES.items()},
    },
    {
        "learning_rate": 0.01,
        "min_dim_size_to_factor": 2,
        "decay_rate": 0.6,
        "clipping_threshold": None,
        "multiply_by_parameter_scale": False,
        "eps": 1e-20,
    },
    {
        "learning_rate": 0.05,
        "factored": False,
        "momentum": 0.5,
        "dtype_momentum": None,
        "clipping_threshold": 0.5,
    },
]


@pytest.mark.parametrize("kwargs", ADAFACTOR_SETTINGS)
def test_adafactor_matches_optax(kwargs: dict[str, Any], optax_f64: Any) -> None:
    """adafactor follows optax.adafactor (float64 schedule) over 50 steps, state included."""
    _, jnp = helpers.require_jax()
    ref_kwargs = dict(kwargs)
    if "dtype_momentum" in kwargs:
        ref_kwargs["dtype_momentum"] = jnp.float64
    state, ref_state = _compare_with_optax(
        optim.adafactor(**kwargs), optax_f64.adafactor(**ref_kwargs), seed=2
    )
    assert len(state) == len(ref_state)
    assert_trees_allclose(
        (state[0].v_row, state[0].v_col, state[0].v),
        _state_as_torch(ref_state[0]),
        rtol=RTOL,
        atol=0.0,
    )
    if "momentum" in kwargs:
        (ema,) = [s.ema for s in state if hasattr(s, "ema")]
        (ref_ema,) = [s.ema for s in ref_state if hasattr(s, "ema")]
        assert_trees_allclose(ema, helpers.to_torch(ref_ema), rtol=RTOL, atol=0.0)


def test_adafactor_momentum_is_float32_by_default(optax_f64: Any) -> None:
    """As in optax, the momentum buffer is float32 by default, rounded as optax rounds it."""
    kwargs = {"learning_rate": 0.01, "min_dim_size_to_factor": 3, "momentum": 0.8}
    state, ref_state = _compare_with_optax(
        optim.adafactor(**kwargs), optax_f64.adafactor(**kwargs), seed=3
    )
    ema = state[-2].ema
    assert {x.dtype for x in fg.tree.leaves(ema)} == {torch.float32}
    assert_trees_allclose(ema, helpers.to_torch(ref_state[-2].ema), rtol=0.0, atol=0.0)


def test_adafactor_against_unpatched_optax() -> None:
    """Against optax's own float32 decay schedule, the float64 updates agree to ~1e-7.

    optax rounds the schedule 1 - (t + 1)^-0.8 to float32 (relative error up to 6e-8), which
    moves the second moments, hence each update, by about that much.
    """
    helpers.require_jax()
    import optax

    kwargs = {"learning_rate": 0.01, "min_dim_size_to_factor": 3, "momentum": 0.9}
    _compare_with_optax(optim.adafactor(**kwargs), optax.adafactor(**kwargs), seed=4, rtol=1e-6)


def test_adafactor_tensor_learning_rate_and_schedule(optax_f64: Any) -> None:
    """A 0-d tensor learning rate equals the float; a schedule follows optax with that schedule."""
    _, jnp = helpers.require_jax()
    params, consts = _problem(5)
    kwargs = {"min_dim_size_to_factor": 3, "momentum": 0.5, "dtype_momentum": None}
    by_float, _ = _run_funcgrad(optim.adafactor(0.02, **kwargs), params, consts, 10)
    lr = torch.tensor(0.02, dtype=torch.float64)
    by_tensor, _ = _run_funcgrad(optim.adafactor(lr, **kwargs), params, consts, 10)
    assert_trees_allclose(by_tensor, by_float, rtol=1e-14, atol=0.0)

    def schedule(count: torch.Tensor) -> torch.Tensor:
        return 0.05 * 0.95 ** count.to(torch.float64)

    def ref_schedule(count: Any) -> Any:
        return 0.05 * 0.95 ** count.astype(jnp.float64)

    ref_kwargs = {**kwargs, "dtype_momentum": jnp.float64}
    _compare_with_optax(
        optim.adafactor(schedule, **kwargs), optax_f64.adafactor(ref_schedule, **ref_kwargs), seed=5
    )


def test_adafactor_in_vmap_equals_separate_runs() -> None:
    """Inside fg.vmap (the per-leaf path), an ensemble of 3 equals 3 separate runs."""
    opt = optim.adafactor(0.02, min_dim_size_to_factor=3, momentum=0.9, weight_decay_rate=0.01)
    _, consts = _problem(0)
    members = [_problem(seed)[0] for seed in (11, 12, 13)]
    stacked = fg.tree.map(lambda *xs: torch.stack(xs), *members)
    grad = fg.grad(lambda p: _loss(p, consts, torch))

    def step(params: Any, state: Any) -> Any:
        updates, state = opt.update(grad(params), state, params)
        return optim.apply_updates(params, updates), state

    state = fg.vmap(opt.init)(stacked)
    assert state[0].v_row["w"].shape == (3, 5)  # factored per member, not over the stack
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


def test_grad_through_steps_matches_jax(optax_f64: Any) -> None:
    """Meta-gradients: fg.grad through 3 adafactor steps w.r.t. the initial parameters matches
    jax.grad through optax.adafactor."""
    jax, jnp = helpers.require_jax()
    kwargs = {"min_dim_size_to_factor": 3, "momentum": 0.9, "dtype_momentum": None}
    ours = optim.adafactor(0.05, **kwargs)
    ref = optax_f64.adafactor(0.05, **{**kwargs, "dtype_momentum": jnp.float64})
    params, consts = _problem(8)
    got = fg.grad(_unrolled)(params, ours, consts, torch, fg.grad, optim.apply_updates)
    # jitted: eager JAX takes seconds on nested gradients (jit changes only the rounding).
    reference = jax.jit(
        jax.grad(lambda p0, c: _unrolled(p0, ref, c, jnp, jax.grad, optax_f64.apply_updates))
    )
    want = reference(helpers.to_jax(params), helpers.to_jax(consts))
    assert_trees_allclose(got, helpers.to_torch(want), rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------------------------
# State layout and laws
# --------------------------------------------------------------------------------------------


@settings(max_examples=25)
@given(helpers.shapes(max_dims=4, max_side=5), st.integers(1, 5), st.booleans())
def test_state_layout_matches_optax(shape: tuple[int, ...], min_dim: int, factored: bool) -> None:
    """init gives optax's shapes of v_row, v_col and v for any leaf shape."""
    helpers.require_jax()
    import optax

    params = {"x": helpers.t(*shape)}
    kwargs = {"min_dim_size_to_factor": min_dim, "factored": factored}
    state = optim.scale_by_factored_rms(**kwargs).init(params)
    ref = optax.scale_by_factored_rms(**kwargs).init(helpers.to_jax(params))
    got = fg.tree.map(lambda x: tuple(x.shape), (state.v_row, state.v_col, state.v))
    want = fg.tree.map(lambda x: tuple(x.shape), helpers.to_torch((ref.v_row, ref.v_col, ref.v)))
    assert got == want


@settings(max_examples=25)
@given(helpers.shapes(min_dims=2, max_dims=3, max_side=5), helpers.seeds)
def test_rank_one_gradient_gives_its_sign(shape: tuple[int, ...], seed: int) -> None:
    """The factored estimate is exact for g = outer products: the first update is sign(g)."""
    vectors = [helpers.t(n, seed=seed + i) for i, n in enumerate(shape)]
    g = functools.reduce(lambda acc, v: acc.unsqueeze(-1) * v, vectors[1:], vectors[0])
    t = optim.scale_by_factored_rms(min_dim_size_to_factor=1)
    updates, state = t.update(g, t.init(g))
    assert state.v.shape == (1,)  # it was factored
    assert_trees_allclose(updates, torch.sign(g), rtol=1e-12, atol=0.0)


@settings(max_examples=20)
@given(
    helpers.trees().filter(lambda tree: len(fg.tree.leaves(tree)) > 0),
    helpers.seeds,
    st.floats(1e-3, 1e3),
)
def test_scale_invariance(tree: Any, seed: int, factor: float) -> None:
    """Multiplying every gradient by c > 0 leaves the updates unchanged (eps negligible)."""
    t = optim.scale_by_factored_rms(min_dim_size_to_factor=2)
    grads = [fg.tree.map(lambda x, k=k: helpers.t(*x.shape, seed=seed + k), tree) for k in range(3)]
    state, scaled_state = t.init(tree), t.init(tree)
    for g in grads:
        updates, state = t.update(g, state)
        scaled, scaled_state = t.update(fg.tree.map(lambda x: factor * x, g), scaled_state)
        assert_trees_allclose(scaled, updates, rtol=1e-12, atol=1e-300)


def test_float32_parameters_keep_float32() -> None:
    """Updates and statistics keep the parameters' float32 dtype."""
    params = {k: v.float() for k, v in _problem(6)[0].items()}
    opt = optim.adafactor(0.01, min_dim_size_to_factor=3, momentum=0.9, dtype_momentum=None)
    updates, state = opt.update(params, opt.init(params), params)
    dtypes = {x.dtype for x in fg.tree.leaves((updates, state)) if x.is_floating_point()}
    assert dtypes == {torch.float32}


def test_adafactor_update_is_pure() -> None:
    """update never writes into the gradients, state or parameters it is given."""
    params, _ = _problem(7)
    opt = optim.adafactor(0.1, min_dim_size_to_factor=3, momentum=0.9, weight_decay_rate=0.1)
    state = opt.init(params)
    grads = fg.tree.map(torch.ones_like, params)
    _, state = opt.update(grads, state, params)
    before = fg.tree.map(torch.clone, (grads, state, params))
    opt.update(grads, state, params)
    assert_trees_allclose((grads, state, params), before, rtol=0.0, atol=0.0)


def test_scale_by_factored_rms_needs_no_params() -> None:
    """Unlike optax's, the transformation reads shapes from the updates, so params are optional."""
    g = helpers.t(4, 3)
    t = optim.scale_by_factored_rms(min_dim_size_to_factor=2)
    without, _ = t.update(g, t.init(g))
    with_params, _ = t.update(g, t.init(g), g)
    assert_trees_allclose(without, with_params, rtol=0.0, atol=0.0)


def test_adafactor_on_an_empty_tree() -> None:
    """A tree without leaves gives empty updates."""
    opt = optim.adafactor(0.1)
    updates, _ = opt.update({}, opt.init({}), {})
    assert updates == {}


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_adafactor_needs_params_for_parameter_scale() -> None:
    params = {"w": torch.ones(2)}
    opt = optim.adafactor(0.1)
    with pytest.raises(
        ValueError,
        match=r"funcgrad.optim.adafactor: this transformation needs the current parameters; call "
        r"update\(updates, state, params\) with params",
    ):
        opt.update(params, opt.init(params))


def test_state_structure_mismatch() -> None:
    params = {"w": torch.ones(2, 2), "b": torch.ones(1)}
    opt = optim.adafactor(0.1)
    with pytest.raises(
        ValueError,
        match=r"funcgrad.optim.scale_by_factored_rms: the state's row statistics \(v_row\) must "
        r"have the structure of the updates.*lacks tree\['w'\]",
    ):
        opt.update(params, opt.init({"b": torch.ones(1)}), params)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (
            lambda: optim.adafactor(-1.0),
            ValueError,
            r"adafactor: learning_rate must be a non-negative number, got -1.0",
        ),
        (
            lambda: optim.adafactor(clipping_threshold=-1.0),
            ValueError,
            r"adafactor: clipping_threshold must be a non-negative number",
        ),
        (
            lambda: optim.adafactor(weight_decay_rate=float("nan")),
            ValueError,
            r"adafactor: weight_decay_rate must be a non-negative number, got nan",
        ),
        (
            lambda: optim.adafactor(weight_decay_rate=lambda c: 0.1),
            TypeError,
            r"adafactor: weight_decay_rate must be a number or a 0-d tensor; schedules are not supported",
        ),
        (
            lambda: optim.scale_by_factored_rms(epsilon=-1e-30),
            ValueError,
            r"scale_by_factored_rms: epsilon must be a non-negative number",
        ),
    ],
)
def test_bad_hyperparameters(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match="funcgrad.optim." + match):
        make()


def test_adafactor_weight_decay_mask_not_a_prefix() -> None:
    params = {"w": torch.ones(2), "b": {"x": torch.ones(1), "y": torch.ones(1)}}
    opt = optim.adafactor(
        0.1, weight_decay_rate=0.1, weight_decay_mask={"w": True, "b": {"x": True}}
    )
    with pytest.raises(
        ValueError, match=r"mask must be a pytree prefix of the params, but at params\['b'\]"
    ):
        opt.update(params, opt.init(params), params)
