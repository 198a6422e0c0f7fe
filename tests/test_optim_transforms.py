"""Tests for the gradient transformations of ``funcgrad/optim/_transforms.py``.

Each building block is run for several steps on random pytrees (hypothesis: every node kind in
``helpers.trees``) and compared, step by step, with its optax counterpart in float64: the
updates and every leaf of the state. optax runs on the list of leaves (the transformations act
leaf by leaf, or over all leaves at once), so funcgrad-only node types are covered too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import helpers
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

F64 = torch.float64
RTOL, ATOL = 1e-12, 1e-14
STEPS = 3

# Leaves come from a small palette of shapes: JAX compiles each primitive once per shape, so new
# shapes in every example would make the optax side (not funcgrad) slow.
_PALETTE = [(), (3,), (2, 3)]
trees = helpers.trees(st.sampled_from(_PALETTE).flatmap(helpers.tensors), max_leaves=5)
nonempty_trees = trees.filter(lambda tree: len(fg.tree.leaves(tree)) > 0)


def _optax() -> Any:
    helpers.require_jax()
    import optax

    return optax


def random_like(tree: Any, seed: int, nan_every: int = 0) -> Any:
    """A tree of fresh normal values with the structure of ``tree`` (NaNs optionally sprinkled)."""
    leaves, treedef = fg.tree.flatten(tree)
    out = []
    for i, x in enumerate(leaves):
        y = helpers.t(*x.shape, seed=seed + 7919 * i, dtype=x.dtype)
        if nan_every and y.numel():
            flat = y.reshape(-1)
            flat[(seed + i) % nan_every :: nan_every] = float("nan")
        out.append(y)
    return fg.tree.unflatten(treedef, out)


def run_both(
    ours: optim.GradientTransformation,
    theirs: Any,
    params: Any,
    seed: int,
    steps: int = STEPS,
    nan_every: int = 0,
    as_jax: Callable[[Any], Any] | None = None,
) -> None:
    """Runs both transformations on the same updates; compares updates and states each step.

    optax gets ``as_jax(tree)`` (default: the list of leaves), and its results are compared
    with funcgrad's leaves.
    """
    jax, _ = helpers.require_jax()
    as_jax = as_jax or (lambda tree: helpers.to_jax(fg.tree.leaves(tree)))
    state, ox_state = ours.init(params), theirs.init(as_jax(params))
    for k in range(steps):
        updates = random_like(params, seed + 101 * k, nan_every)
        new, state = ours.update(updates, state, params)
        ox_new, ox_state = theirs.update(as_jax(updates), ox_state, as_jax(params))
        assert_trees_allclose(
            fg.tree.leaves(new), helpers.to_torch(jax.tree.leaves(ox_new)), rtol=RTOL, atol=ATOL
        )
        assert fg.tree.structure(new) == fg.tree.structure(updates)
        assert_trees_allclose(
            fg.tree.leaves(state), helpers.to_torch(jax.tree.leaves(ox_state)), rtol=RTOL, atol=ATOL
        )


# name: (funcgrad transformation, optax transformation given the optax module)
TRANSFORMS: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    "scale": (lambda: optim.scale(-0.3), lambda ox: ox.scale(-0.3)),
    "scale_tensor": (
        lambda: optim.scale(torch.tensor(1.7, dtype=F64)),
        lambda ox: ox.scale(1.7),
    ),
    "scale_by_schedule": (
        lambda: optim.scale_by_schedule(lambda c: 0.5 / (1.0 + c.to(F64))),
        lambda ox: ox.scale_by_schedule(lambda c: 0.5 / (1.0 + c)),
    ),
    "scale_by_learning_rate": (
        lambda: optim.scale_by_learning_rate(0.1),
        lambda ox: ox.scale_by_learning_rate(0.1),
    ),
    "scale_by_learning_rate_tensor": (
        lambda: optim.scale_by_learning_rate(torch.tensor(0.1, dtype=F64)),
        lambda ox: ox.scale_by_learning_rate(0.1),
    ),
    "scale_by_learning_rate_no_flip": (
        lambda: optim.scale_by_learning_rate(0.1, flip_sign=False),
        lambda ox: ox.scale_by_learning_rate(0.1, flip_sign=False),
    ),
    "scale_by_learning_rate_schedule": (
        lambda: optim.scale_by_learning_rate(lambda c: 0.2 * 0.9 ** c.to(F64)),
        lambda ox: ox.scale_by_learning_rate(lambda c: 0.2 * 0.9**c),
    ),
    "scale_by_adam": (lambda: optim.scale_by_adam(), lambda ox: ox.scale_by_adam()),
    "scale_by_adam_hyper": (
        lambda: optim.scale_by_adam(0.5, 0.9, 1e-3),
        lambda ox: ox.scale_by_adam(0.5, 0.9, 1e-3),
    ),
    "scale_by_adam_eps_root": (
        lambda: optim.scale_by_adam(eps_root=1e-4),
        lambda ox: ox.scale_by_adam(eps_root=1e-4),
    ),
    "scale_by_adam_nesterov": (
        lambda: optim.scale_by_adam(0.8, 0.95, nesterov=True),
        lambda ox: ox.scale_by_adam(0.8, 0.95, nesterov=True),
    ),
    "scale_by_adam_nesterov_eps_root": (
        lambda: optim.scale_by_adam(eps_root=1e-3, nesterov=True),
        lambda ox: ox.scale_by_adam(eps_root=1e-3, nesterov=True),
    ),
    "trace": (lambda: optim.trace(0.9), lambda ox: ox.trace(0.9)),
    "trace_nesterov": (
        lambda: optim.trace(0.5, nesterov=True),
        lambda ox: ox.trace(0.5, nesterov=True),
    ),
    "add_decayed_weights": (
        lambda: optim.add_decayed_weights(0.1),
        lambda ox: ox.add_decayed_weights(0.1),
    ),
    "add_decayed_weights_tensor": (
        lambda: optim.add_decayed_weights(torch.tensor(0.3, dtype=F64)),
        lambda ox: ox.add_decayed_weights(0.3),
    ),
    "clip": (lambda: optim.clip(0.5), lambda ox: ox.clip(0.5)),
    "clip_by_global_norm_active": (
        lambda: optim.clip_by_global_norm(0.5),
        lambda ox: ox.clip_by_global_norm(0.5),
    ),
    "clip_by_global_norm_inactive": (
        lambda: optim.clip_by_global_norm(1e3),
        lambda ox: ox.clip_by_global_norm(1e3),
    ),
    "zero_nans": (lambda: optim.zero_nans(), lambda ox: ox.zero_nans()),
    "chain": (
        lambda: optim.chain(
            optim.clip_by_global_norm(2.0),
            optim.scale_by_adam(),
            optim.add_decayed_weights(0.01),
            optim.scale_by_learning_rate(0.1),
        ),
        lambda ox: ox.chain(
            ox.clip_by_global_norm(2.0),
            ox.scale_by_adam(),
            ox.add_decayed_weights(0.01),
            ox.scale_by_learning_rate(0.1),
        ),
    ),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
@settings(max_examples=8)
@given(params=nonempty_trees, seed=helpers.seeds)
def test_matches_optax(name: str, params: Any, seed: int) -> None:
    """Each building block gives optax's updates and state over several steps, on any tree."""
    ours, theirs = TRANSFORMS[name]
    nan_every = 3 if name == "zero_nans" else 0
    run_both(ours(), theirs(_optax()), params, seed, nan_every=nan_every)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_empty_tree(name: str) -> None:
    """A tree without leaves (a model with no parameters, an empty group) works like optax."""
    ours, theirs = TRANSFORMS[name]
    run_both(ours(), theirs(_optax()), {"a": [], "b": (None, {})}, seed=0, steps=2)


def test_clip_by_global_norm_cases() -> None:
    """The global norm is over all leaves together: a norm-5 tree is scaled by max_norm / 5."""
    tree = {"a": torch.tensor([3.0], dtype=F64), "b": torch.tensor([[0.0, 4.0]], dtype=F64)}
    t = optim.clip_by_global_norm(2.5)
    out, _ = t.update(tree, t.init(tree))
    assert_trees_allclose(out, fg.tree.scale(0.5, tree), rtol=1e-15, atol=0)
    same, _ = optim.clip_by_global_norm(5.0).update(tree, optim.EmptyState())
    assert_trees_allclose(same, tree, rtol=0, atol=0)
    zeros = fg.tree.zeros_like(tree)
    assert_trees_allclose(t.update(zeros, optim.EmptyState())[0], zeros, rtol=0, atol=0)


def test_zero_nans_keeps_infinities_and_reports_per_leaf() -> None:
    """zero_nans zeroes NaNs only (not infinities) and records which leaves had any."""
    tree = {"a": torch.tensor([1.0, math.nan, math.inf]), "b": torch.tensor([2.0])}
    t = optim.zero_nans()
    out, state = t.update(tree, t.init(tree))
    assert_trees_allclose(out, {"a": torch.tensor([1.0, 0.0, math.inf]), "b": torch.tensor([2.0])})
    assert_trees_allclose(state.found_nan, {"a": torch.tensor(True), "b": torch.tensor(False)})


# --------------------------------------------------------------------------------------------
# Weight decay masks
# --------------------------------------------------------------------------------------------


def _mask_params() -> dict[str, Any]:
    return {
        "enc": {"w": helpers.t(3, 2, seed=1), "b": helpers.t(2, seed=2)},
        "dec": [helpers.t(2, 2, seed=3), helpers.t(2, seed=4)],
        "s": helpers.t(seed=5),
    }


MASKS: dict[str, Any] = {
    "prefix": {"enc": True, "dec": False, "s": True},
    "full": {"enc": {"w": True, "b": False}, "dec": [True, False], "s": False},
    "mixed_prefix": {"enc": {"w": False, "b": True}, "dec": True, "s": False},
    "all": True,
    "none": False,
    "callable": "callable",
}


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_add_decayed_weights_mask_matches_optax(mask_name: str) -> None:
    """Masks (a tree prefix, a full tree, a bool, a callable) decay the same leaves as optax."""
    jax, _ = helpers.require_jax()
    ox = _optax()
    mask = MASKS[mask_name]
    ours_mask, ox_mask = mask, mask
    if mask == "callable":
        ours_mask = lambda p: fg.tree.map(lambda x: x.dim() > 1, p)  # noqa: E731
        ox_mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
    run_both(
        optim.add_decayed_weights(0.2, mask=ours_mask),
        ox.add_decayed_weights(0.2, mask=ox_mask),
        _mask_params(),
        seed=3,
        as_jax=helpers.to_jax,
    )


def test_add_decayed_weights_mask_leaves_others_untouched() -> None:
    """Leaves masked out are returned exactly; masked-in leaves get g + wd * p."""
    params = _mask_params()
    g = random_like(params, 11)
    t = optim.add_decayed_weights(0.5, mask=MASKS["full"])
    out, _ = t.update(g, t.init(params), params)
    assert out["enc"]["b"] is g["enc"]["b"] or torch.equal(out["enc"]["b"], g["enc"]["b"])
    assert_trees_allclose(out["dec"][1], g["dec"][1], rtol=0, atol=0)
    assert_trees_allclose(out["enc"]["w"], g["enc"]["w"] + 0.5 * params["enc"]["w"], rtol=1e-15)


# --------------------------------------------------------------------------------------------
# Laws
# --------------------------------------------------------------------------------------------


@settings(max_examples=15)
@given(params=nonempty_trees, seed=helpers.seeds)
def test_scale_by_learning_rate_is_scale_by_minus_lr(params: Any, seed: int) -> None:
    """Law: scale_by_learning_rate(lr) == scale(-lr), and flip_sign=False gives scale(lr)."""
    g = random_like(params, seed)
    for lr in (0.0, 0.25, torch.tensor(0.5, dtype=F64)):
        t = optim.scale_by_learning_rate(lr)
        actual, _ = t.update(g, t.init(params))
        assert_trees_allclose(actual, optim.scale(-lr).update(g, optim.EmptyState())[0], rtol=0)
        t = optim.scale_by_learning_rate(lr, flip_sign=False)
        actual, _ = t.update(g, t.init(params))
        assert_trees_allclose(actual, optim.scale(lr).update(g, optim.EmptyState())[0], rtol=0)


@settings(max_examples=15)
@given(params=nonempty_trees, seed=helpers.seeds)
def test_trace_zero_decay_is_identity(params: Any, seed: int) -> None:
    """Law: trace(0) (either form) passes updates through unchanged, step after step."""
    for nesterov in (False, True):
        t = optim.trace(0.0, nesterov=nesterov)
        state = t.init(params)
        for k in range(3):
            g = random_like(params, seed + k)
            out, state = t.update(g, state)
            assert_trees_allclose(out, g, rtol=0, atol=0)


@settings(max_examples=15)
@given(params=nonempty_trees, seed=helpers.seeds)
def test_clip_is_elementwise_clamp(params: Any, seed: int) -> None:
    """Law: clip(d) is clamp(-d, d) leaf by leaf; it is the identity for a large enough d."""
    g = random_like(params, seed)
    out, _ = optim.clip(0.3).update(g, optim.EmptyState())
    assert_trees_allclose(out, fg.tree.map(lambda x: x.clamp(-0.3, 0.3), g), rtol=0, atol=0)
    out, _ = optim.clip(1e6).update(g, optim.EmptyState())
    assert_trees_allclose(out, g, rtol=0, atol=0)


@settings(max_examples=15)
@given(params=nonempty_trees, seed=helpers.seeds)
def test_clip_by_global_norm_bounds_the_norm(params: Any, seed: int) -> None:
    """Law: after clip_by_global_norm(m), the global norm is min(norm, m), direction kept."""
    g = random_like(params, seed)
    norm = float(fg.tree.norm(g)) if fg.tree.leaves(g) else 0.0
    out, _ = optim.clip_by_global_norm(0.7).update(g, optim.EmptyState())
    if fg.tree.leaves(g):
        assert math.isclose(float(fg.tree.norm(out)), min(norm, 0.7), rel_tol=1e-12)
        assert_trees_allclose(out, fg.tree.scale(min(1.0, 0.7 / norm), g), rtol=1e-13, atol=1e-16)


@settings(max_examples=10)
@given(params=nonempty_trees, seed=helpers.seeds)
def test_scale_by_adam_count_and_moments(params: Any, seed: int) -> None:
    """The state counts steps (0-d int32) and holds the exponential moving averages of g, g^2."""
    t = optim.scale_by_adam(0.9, 0.99)
    state = t.init(params)
    mu, nu = fg.tree.zeros_like(params), fg.tree.zeros_like(params)
    for k in range(1, 4):
        g = random_like(params, seed + k)
        _, state = t.update(g, state)
        mu = fg.tree.map(lambda m, x: 0.9 * m + 0.1 * x, mu, g)
        nu = fg.tree.map(lambda v, x: 0.99 * v + 0.01 * x * x, nu, g)
        assert state.count.dtype == torch.int32
        assert state.count.dim() == 0
        assert int(state.count) == k
        assert_trees_allclose(state.mu, mu, rtol=1e-14, atol=1e-16)
        assert_trees_allclose(state.nu, nu, rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transforms_keep_low_precision_dtypes(dtype: torch.dtype) -> None:
    """Updates and state tensors stay in the leaves' dtype (float32, bfloat16)."""
    params = {"w": helpers.t(4, 3, seed=1, dtype=dtype), "b": helpers.t(3, seed=2, dtype=dtype)}
    opt = optim.chain(
        optim.clip_by_global_norm(1.0),
        optim.scale_by_adam(nesterov=True),
        optim.trace(0.5),
        optim.add_decayed_weights(0.1),
        optim.scale_by_learning_rate(torch.tensor(0.1)),
    )
    state = opt.init(params)
    for k in range(3):
        out, state = opt.update(random_like(params, k), state, params)
        floats = fg.tree.leaves((out, state[1].mu, state[1].nu, state[2]))
        assert all(x.dtype == dtype for x in floats)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("b2", [0.999, 0.9999])
def test_scale_by_adam_float32_is_accurate(b2: float, nesterov: bool) -> None:
    """float32 Adam updates are within a few float32 ulps of float64 Adam's in early steps.

    (torch.optim.Adam computes its bias corrections 1 - b**t in Python floats; computed in
    float32, 1 - 0.999**1 has a relative error of 1.3e-5 from cancellation.)
    """
    g64 = [helpers.t(1000, seed=k) for k in range(3)]
    t = optim.scale_by_adam(b2=b2, nesterov=nesterov)
    s32, s64 = t.init([g64[0].float()]), t.init([g64[0]])
    for g in g64:
        u32, s32 = t.update([g.float()], s32)
        u64, s64 = t.update([g], s64)
        assert_trees_allclose(u32, [u64[0].float()], rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_scale_by_schedule_needs_a_callable() -> None:
    """scale_by_schedule given a number says it wants a function of the step count."""
    with pytest.raises(TypeError, match=r"scale_by_schedule: expected a schedule .* got float"):
        optim.scale_by_schedule(0.1)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (torch.ones(2), ValueError, r"a tensor of shape \(2,\) at step 0"),
        (torch.ones(1, 1), ValueError, r"a tensor of shape \(1, 1\) at step 0"),
        ("0.1", TypeError, r"but it returned str"),
        (None, TypeError, r"but it returned NoneType"),
        (True, TypeError, r"but it returned bool"),
    ],
    ids=["vector", "matrix", "str", "none", "bool"],
)
def test_schedule_must_return_a_scalar(value: Any, error: type, match: str) -> None:
    """A schedule returning a non-scalar (or a non-number) raises at update, saying what."""
    t = optim.scale_by_schedule(lambda count: value)
    tree = [torch.ones(2)]
    with pytest.raises(
        error, match=r"scale_by_schedule: a schedule must return a scalar.*" + match
    ):
        t.update(tree, t.init(tree))


@pytest.mark.parametrize(
    ("lr", "error", "match"),
    [
        (-0.1, ValueError, r"must be a non-negative number, got -0\.1"),
        (float("nan"), ValueError, r"must be a non-negative number, got nan"),
        (torch.tensor(-2.0), ValueError, r"must be a non-negative number, got -2\.0"),
        (torch.tensor(float("nan")), ValueError, r"must be a non-negative number, got nan"),
        (torch.ones(2), ValueError, r"must be a number, a 0-d tensor or a schedule, got a tensor"),
        (torch.tensor(1), TypeError, r"must be a floating-point tensor, got torch\.int64"),
        ("0.1", TypeError, r"must be a number, a 0-d tensor or a schedule .* got str"),
        (True, TypeError, r"must be a number, a 0-d tensor or a schedule .* got bool"),
    ],
    ids=["negative", "nan", "negative_tensor", "nan_tensor", "vector", "int_tensor", "str", "bool"],
)
def test_scale_by_learning_rate_bad_values(lr: Any, error: type, match: str) -> None:
    """Learning rates must be non-negative numbers, 0-d float tensors or schedules."""
    with pytest.raises(error, match=r"scale_by_learning_rate: learning_rate " + match):
        optim.scale_by_learning_rate(lr)


@pytest.mark.parametrize(
    ("factory", "what"),
    [
        (lambda v: optim.add_decayed_weights(v), "weight_decay"),
        (lambda v: optim.clip(v), "max_delta"),
        (lambda v: optim.clip_by_global_norm(v), "max_norm"),
    ],
    ids=["add_decayed_weights", "clip", "clip_by_global_norm"],
)
@pytest.mark.parametrize("value", [-1.0, float("nan"), torch.tensor(-1.0)], ids=str)
def test_other_hyperparameters_must_be_non_negative(factory: Any, what: str, value: Any) -> None:
    """weight_decay, max_delta and max_norm are checked like learning rates."""
    with pytest.raises(ValueError, match=rf"{what} must be a non-negative number"):
        factory(value)


def test_add_decayed_weights_without_params() -> None:
    """add_decayed_weights (masked or not) needs params and says how to pass them."""
    for mask in (None, {"a": True}, lambda p: True):
        t = optim.add_decayed_weights(0.1, mask=mask)
        with pytest.raises(ValueError, match=r"call update\(updates, state, params\) with params"):
            t.update({"a": torch.ones(1)}, t.init({"a": torch.ones(1)}))


@pytest.mark.parametrize(
    "mask",
    [{"enc": True}, {"enc": True, "dec": False, "s": True, "x": False}, [True, False, True]],
    ids=["missing_key", "extra_key", "list_for_dict"],
)
def test_add_decayed_weights_mask_not_a_prefix(mask: Any) -> None:
    """A mask tree that is not a prefix of the params is refused, showing both structures."""
    params = _mask_params()
    t = optim.add_decayed_weights(0.1, mask=mask)
    with pytest.raises(ValueError, match=r"add_decayed_weights: mask must be a pytree prefix of"):
        t.update(params, t.init(params), params)
    t = optim.add_decayed_weights(0.1, mask=lambda p: mask)
    with pytest.raises(ValueError, match=r"add_decayed_weights: mask must be a pytree prefix of"):
        t.update(params, t.init(params), params)


def test_add_decayed_weights_mask_prefix_error_suggests_bools() -> None:
    """The fix suggested for a bad mask speaks of bools (not of vmap's ints and None)."""
    params = _mask_params()
    t = optim.add_decayed_weights(0.1, mask={"enc": True})
    with pytest.raises(
        ValueError, match=r"mask must be a pytree prefix of the params.*True or False"
    ):
        t.update(params, t.init(params), params)


@pytest.mark.parametrize(
    ("leaf", "shown"),
    [(1, r"int \(1\)"), (torch.tensor(True), r"Tensor"), ("yes", r"str \('yes'\)")],
    ids=["int", "tensor", "str"],
)
def test_add_decayed_weights_mask_leaves_must_be_bool(leaf: Any, shown: str) -> None:
    """Mask leaves must be Python bools; the message shows the offending leaf."""
    params = _mask_params()
    t = optim.add_decayed_weights(0.1, mask={"enc": leaf, "dec": True, "s": False})
    with pytest.raises(TypeError, match=rf"every leaf of the mask must be a bool, got {shown}"):
        t.update(params, t.init(params), params)


@pytest.mark.parametrize(
    ("name", "factory"),
    [
        ("scale_by_adam", lambda: optim.scale_by_adam()),
        ("trace", lambda: optim.trace(0.9)),
        ("add_decayed_weights", lambda: optim.add_decayed_weights(0.1)),
    ],
)
def test_state_structure_mismatch_names_the_path(name: str, factory: Any) -> None:
    """State (or params) from another tree: the message names the transformation and a path."""
    t = factory()
    params = {"w": torch.ones(2), "b": torch.ones(2)}
    other = {"w": torch.ones(2), "z": torch.ones(2)}
    with pytest.raises(ValueError, match=rf"optim\.{name}: .*it has tree\['b'\]"):
        t.update(other, t.init(params), params)
