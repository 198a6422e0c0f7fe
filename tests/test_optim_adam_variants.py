"""Tests for Adamax, RAdam and NAdam (``funcgrad/optim/_adam_variants.py``): the building blocks
``scale_by_adamax``, ``scale_by_radam``, ``scale_by_nadam`` and the aliases.

The aliases are checked against ``torch.optim`` (``.backward()`` gradients, float64, rtol 1e-10
over 50 steps, several hyperparameter combinations), the building blocks and the aliases' optax
flags against optax (``jax.grad`` gradients, float64). Where the two libraries differ, a test
shows that the default follows torch and the flag follows optax. The problems are smooth random
losses over a dict of tensors with gradients of different scales, and the runners are the
trajectory harness of ``helpers``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import helpers
import pytest
import torch
from helpers import (
    badly_scaled_problem,
    default_dtype,
    gradient_sequence,
    max_relative_difference,
    nonempty_trees,
    run_funcgrad,
    run_optax,
    run_torch,
    run_updates,
    vmapped_and_separate_runs,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

STEPS = helpers.OPTIM_STEPS  # the runners' default
RTOL, ATOL = 1e-10, 1e-12

# --------------------------------------------------------------------------------------------
# Aliases against torch.optim
# --------------------------------------------------------------------------------------------

# Small enough that the 50 steps stay in transit: near a minimum, adaptive steps approach
# lr * sign(g) and amplify rounding differences (a faithful step order still agrees to 1e-13).
LR = {"nadam": 0.01, "radam": 0.01, "adamax": 0.01}

TORCH_CLASS = {
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "adamax": torch.optim.Adamax,
}

TORCH_CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # case: (alias, funcgrad kwargs, torch.optim kwargs)
    "nadam": ("nadam", {}, {}),
    "nadam_betas_psi": (
        "nadam",
        {"b1": 0.8, "b2": 0.99, "eps": 1e-6, "momentum_decay": 0.02},
        {"betas": (0.8, 0.99), "eps": 1e-6, "momentum_decay": 0.02},
    ),
    "nadam_l2": ("nadam", {"weight_decay": 0.05}, {"weight_decay": 0.05}),
    "nadam_decoupled": (
        "nadam",
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
    ),
    "radam": ("radam", {}, {}),
    "radam_betas_eps": (
        "radam",
        {"b1": 0.7, "b2": 0.99, "eps": 1e-3},
        {"betas": (0.7, 0.99), "eps": 1e-3},
    ),
    "radam_l2": ("radam", {"weight_decay": 0.05}, {"weight_decay": 0.05}),
    "radam_decoupled": (
        "radam",
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
    ),
    "adamax": ("adamax", {}, {}),
    "adamax_betas_eps": (
        "adamax",
        {"b1": 0.5, "b2": 0.9, "eps": 1e-2},
        {"betas": (0.5, 0.9), "eps": 1e-2},
    ),
    "adamax_l2": ("adamax", {"weight_decay": 0.1}, {"weight_decay": 0.1}),
}


def _ours(case: str, lr: Any) -> optim.GradientTransformation:
    alias, kwargs, _ = TORCH_CASES[case]
    return getattr(optim, alias)(lr, **kwargs)


def _theirs(case: str) -> Callable[..., torch.optim.Optimizer]:
    alias, _, kwargs = TORCH_CASES[case]
    return lambda ps, lr, foreach: TORCH_CLASS[alias](ps, lr, foreach=foreach, **kwargs)


def _lr(case: str) -> float:
    return LR[TORCH_CASES[case][0]]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_alias_follows_torch_optim(case: str, seed: int) -> None:
    """Each alias has the trajectory of the torch.optim class with the same hyperparameters."""
    params, loss = badly_scaled_problem(seed)
    actual = run_funcgrad(_ours(case, _lr(case)), params, loss)
    desired = run_torch(_theirs(case), params, loss, _lr(case))
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("alias", list(TORCH_CLASS))
def test_alias_follows_torch_optim_foreach(alias: str) -> None:
    """torch's multi-tensor implementation (its default on CUDA) follows the same path."""
    params, loss = badly_scaled_problem(1)
    actual = run_funcgrad(_ours(alias, LR[alias]), params, loss)
    desired = run_torch(_theirs(alias), params, loss, LR[alias], foreach=True)
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


def test_nadam_product_of_momenta_in_float32_default_dtype() -> None:
    """torch keeps NAdam's product of momenta in the default dtype: with float32 (torch's
    default) its float64 trajectory drifts from ours by about float32 rounding, no more."""
    params, loss = badly_scaled_problem(0)
    actual = run_funcgrad(optim.nadam(LR["nadam"]), params, loss)
    ps = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    with default_dtype(torch.float32):
        opt = torch.optim.NAdam(list(ps.values()), LR["nadam"], foreach=False)
        desired = []
        for _ in range(STEPS):
            opt.zero_grad()
            loss(torch, ps).backward()
            opt.step()
            desired.append({n: p.detach().clone() for n, p in ps.items()})
    assert 1e-12 < max_relative_difference(actual, desired) < 1e-5


# --------------------------------------------------------------------------------------------
# Learning rates: a 0-d tensor, a tensor changed in place, a schedule
# --------------------------------------------------------------------------------------------

LR_CASES = {
    # alias: the TORCH_CASES case used with a varying learning rate (the most features)
    "nadam": "nadam_decoupled",
    "radam": "radam_decoupled",
    "adamax": "adamax_l2",
}


def _lr_at(case: str, k: int) -> float:
    return _lr(case) * (1.0 + 0.5 * math.sin(0.7 * k))


@pytest.mark.parametrize("alias", list(LR_CASES))
def test_learning_rate_as_schedule(alias: str) -> None:
    """A schedule, called with the int32 step count 0, 1, ..., gives torch's trajectory when
    torch's learning rate is set to the same values before each step."""
    case = LR_CASES[alias]
    params, loss = badly_scaled_problem(1)
    seen: list[torch.Tensor] = []

    def schedule(count: torch.Tensor) -> torch.Tensor:
        seen.append(count)
        return _lr(case) * (1.0 + 0.5 * torch.sin(0.7 * count.to(torch.float64)))

    actual = run_funcgrad(_ours(case, schedule), params, loss)
    desired = run_torch(_theirs(case), params, loss, _lr(case), lr_at=lambda k: _lr_at(case, k))
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)
    assert [int(c) for c in seen] == list(range(STEPS))
    assert all(c.dtype == torch.int32 and c.dim() == 0 for c in seen)


@pytest.mark.parametrize("alias", list(LR_CASES))
def test_learning_rate_as_tensor(alias: str) -> None:
    """A 0-d tensor learning rate follows torch.optim given the same tensor."""
    case = LR_CASES[alias]
    params, loss = badly_scaled_problem(0)
    lr = torch.tensor(_lr(case), dtype=torch.float64)
    actual = run_funcgrad(_ours(case, lr), params, loss)
    desired = run_torch(_theirs(case), params, loss, lr.clone())
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("alias", list(LR_CASES))
def test_learning_rate_as_tensor_changed_in_place(alias: str) -> None:
    """A 0-d tensor learning rate changed in place between steps: the next step uses it."""
    case = LR_CASES[alias]
    params, loss = badly_scaled_problem(0)
    lr = torch.tensor(_lr_at(case, 0), dtype=torch.float64)
    actual = run_funcgrad(
        _ours(case, lr), params, loss, before_step=lambda k: lr.fill_(_lr_at(case, k))
    )
    desired = run_torch(_theirs(case), params, loss, _lr(case), lr_at=lambda k: _lr_at(case, k))
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# optax: the building blocks' defaults and the aliases' flags
# --------------------------------------------------------------------------------------------

OPTAX_LR = 0.01
INF = math.inf

OPTAX_CASES: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    # case: (funcgrad transformation, optax transformation): the same numbers
    "scale_by_adamax": (lambda: optim.scale_by_adamax(), lambda ox: ox.scale_by_adamax()),
    "scale_by_adamax_args": (
        lambda: optim.scale_by_adamax(0.5, 0.9, 1e-2),
        lambda ox: ox.scale_by_adamax(0.5, 0.9, 1e-2),
    ),
    "scale_by_radam": (lambda: optim.scale_by_radam(), lambda ox: ox.scale_by_radam()),
    "scale_by_radam_args": (
        lambda: optim.scale_by_radam(0.8, 0.99, 1e-3, 1e-6, 8.0, nesterov=True),
        lambda ox: ox.scale_by_radam(0.8, 0.99, 1e-3, 1e-6, 8.0, nesterov=True),
    ),
    "scale_by_nadam_inf": (
        lambda: optim.scale_by_nadam(momentum_decay=INF),
        lambda ox: ox.scale_by_adam(nesterov=True),
    ),
    "scale_by_nadam_inf_args": (
        lambda: optim.scale_by_nadam(0.8, 0.99, 1e-3, 1e-6, momentum_decay=INF),
        lambda ox: ox.scale_by_adam(0.8, 0.99, 1e-3, 1e-6, nesterov=True),
    ),
    "adamax": (lambda: optim.adamax(OPTAX_LR), lambda ox: ox.adamax(OPTAX_LR)),
    "radam": (
        lambda: optim.radam(OPTAX_LR, eps_before_bias_correction=False),
        lambda ox: ox.radam(OPTAX_LR),
    ),
    "radam_nesterov": (
        lambda: optim.radam(OPTAX_LR, eps=1e-3, nesterov=True, eps_before_bias_correction=False),
        lambda ox: ox.radam(OPTAX_LR, eps=1e-3, nesterov=True),
    ),
    "nadam": (
        lambda: optim.nadam(OPTAX_LR, 0.8, 0.99, 1e-6, 1e-8, momentum_decay=INF),
        lambda ox: ox.nadam(OPTAX_LR, 0.8, 0.99, 1e-6, 1e-8),
    ),
}


# The seed of each case's random problem: its position in the table of the whole adaptive
# family (RMS and Adam variants), fixed so that each case keeps its problem.
OPTAX_SEEDS = {
    "scale_by_adamax": 8,
    "scale_by_adamax_args": 9,
    "scale_by_radam": 10,
    "scale_by_radam_args": 11,
    "scale_by_nadam_inf": 12,
    "scale_by_nadam_inf_args": 13,
    "adamax": 18,
    "radam": 19,
    "radam_nesterov": 20,
    "nadam": 21,
}


@pytest.mark.parametrize("case", list(OPTAX_CASES))
def test_matches_optax_when_configured_like_optax(case: str) -> None:
    """Building blocks with their defaults, and aliases with optax's flags, follow optax."""
    ours, theirs = OPTAX_CASES[case]
    params, loss = badly_scaled_problem(OPTAX_SEEDS[case])
    if case.startswith("scale_by"):
        opt = optim.chain(ours(), optim.scale_by_learning_rate(OPTAX_LR))
        make = lambda ox: ox.chain(theirs(ox), ox.scale_by_learning_rate(OPTAX_LR))  # noqa: E731
    else:
        opt, make = ours(), theirs
    assert_trees_allclose(run_funcgrad(opt, params, loss), run_optax(make, params, loss), RTOL)


DIFFERENCES: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    # alias: (its torch-like default, optax's alias with the same hyperparameters otherwise)
    "radam": (lambda: optim.radam(OPTAX_LR, eps=1e-2), lambda ox: ox.radam(OPTAX_LR, eps=1e-2)),
    "nadam": (lambda: optim.nadam(OPTAX_LR), lambda ox: ox.nadam(OPTAX_LR)),
}


@pytest.mark.parametrize("alias", list(DIFFERENCES))
def test_torch_default_differs_from_optax(alias: str) -> None:
    """Where optax's definition differs (eps placement, NAdam's schedule, ...), the default
    trajectory (torch's, tested above) is measurably different from optax's."""
    ours, theirs = DIFFERENCES[alias]
    params, loss = badly_scaled_problem(0)
    actual = run_funcgrad(ours(), params, loss, steps=20)
    desired = run_optax(theirs, params, loss, steps=20)
    assert max_relative_difference(actual, desired) > 1e-4


# --------------------------------------------------------------------------------------------
# The per-leaf path (inside torch.func transforms) gives the foreach path's numbers
# --------------------------------------------------------------------------------------------

TRANSFORM_CASES: dict[str, Callable[[], optim.GradientTransformation]] = {
    "nadam": lambda: optim.nadam(0.02, weight_decay=0.01),
    "radam": lambda: optim.radam(
        0.02, nesterov=True, weight_decay=0.1, decoupled_weight_decay=True
    ),
    "adamax": lambda: optim.adamax(0.02),
}


@pytest.mark.parametrize("name", list(TRANSFORM_CASES))
def test_vmap_over_three_parameter_sets_equals_separate_runs(name: str) -> None:
    """fg.vmap over 3 stacked (params, state) pairs equals 3 separate (foreach) runs."""
    for batched, separate in vmapped_and_separate_runs(TRANSFORM_CASES[name]()):
        assert_trees_allclose(batched, separate, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(TRANSFORM_CASES))
def test_grad_through_steps(name: str) -> None:
    """Under fg.grad (the per-leaf path) three steps give the foreach path's value, and the
    gradient w.r.t. the initial parameters agrees with finite differences."""
    opt = TRANSFORM_CASES[name]()
    params, loss = badly_scaled_problem(1)

    def unrolled(p0: Any) -> torch.Tensor:
        p, state = p0, opt.init(p0)
        for _ in range(3):
            updates, state = opt.update(fg.grad(lambda q: loss(torch, q))(p), state, p)
            p = optim.apply_updates(p, updates)
        return loss(torch, p)

    value, _ = fg.value_and_grad(unrolled)(params)
    assert_trees_allclose(value, unrolled(params), rtol=1e-13, atol=0)
    fg.testing.check_grads(unrolled, (params,), order=1, modes=("rev",), eps=1e-6)


# --------------------------------------------------------------------------------------------
# State: counters, dtypes, laws
# --------------------------------------------------------------------------------------------

BLOCKS: dict[str, Callable[..., optim.GradientTransformation]] = {
    "scale_by_adamax": optim.scale_by_adamax,
    "scale_by_radam": optim.scale_by_radam,
    "scale_by_nadam": optim.scale_by_nadam,
}

STATE_TYPES = {
    "scale_by_adamax": optim.ScaleByAdamaxState,
    "scale_by_radam": optim.ScaleByRadamState,
    "scale_by_nadam": optim.ScaleByNadamState,
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_state_type_and_step_counter(name: str) -> None:
    """Each building block has its own state type; step counters are 0-d int32 tensors that
    count the updates."""
    t = BLOCKS[name]()
    params = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    state = t.init(params)
    for k in range(3):
        _, state = t.update(fg.tree.map(lambda x, k=k: x + k + 1.0, params), state)
    assert type(state) is STATE_TYPES[name]
    if "count" in state._fields:
        assert state.count.dtype == torch.int32
        assert state.count.dim() == 0
        assert int(state.count) == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(TRANSFORM_CASES))
def test_dtypes_are_kept(name: str, dtype: torch.dtype) -> None:
    """Updates and float state keep the parameters' dtype (no float64 scalars leak into
    float32), and the first update matches the same step computed in float64."""
    opt = TRANSFORM_CASES[name]()
    params64, loss = badly_scaled_problem(0)
    params = fg.tree.map(lambda x: x.to(dtype), params64)
    grads = fg.grad(lambda p: loss(torch, p))(params64)
    updates, state = opt.update(fg.tree.map(lambda x: x.to(dtype), grads), opt.init(params), params)
    assert all(u.dtype == dtype for u in fg.tree.leaves(updates))
    floats = [x for x in fg.tree.leaves(state) if x.is_floating_point()]
    assert floats
    assert all(x.dtype == dtype for x in floats)
    reference, _ = opt.update(grads, opt.init(params64), params64)
    assert_trees_allclose(updates, fg.tree.map(lambda x: x.to(dtype), reference))


SCALE_INVARIANT = {
    "scale_by_adamax": lambda: optim.scale_by_adamax(eps=0.0),
    "scale_by_nadam": lambda: optim.scale_by_nadam(eps=0.0),
}


@settings(max_examples=15)
@given(tree=nonempty_trees(), c=st.floats(1e-3, 1e3), name=st.sampled_from(list(SCALE_INVARIANT)))
def test_scale_invariance_without_eps(tree: Any, c: float, name: str) -> None:
    """With eps = 0 adaptive updates are invariant to rescaling every gradient by c > 0."""
    t = SCALE_INVARIANT[name]()
    grads = gradient_sequence(tree)
    scaled = [fg.tree.map(lambda x: c * x, g) for g in grads]
    assert_trees_allclose(
        run_updates(t, scaled, tree), run_updates(t, grads, tree), rtol=1e-11, atol=0
    )


@settings(max_examples=10)
@given(tree=nonempty_trees(), c=st.floats(1e-3, 1e3))
def test_radam_is_momentum_then_scale_invariant(tree: Any, c: float) -> None:
    """RAdam (eps = 0) scales with the gradients while rho_t <= 5 (steps 1-5 for b2 = 0.999:
    bias-corrected momentum) and is invariant to their scale once rectified (steps 6, 7)."""
    t = optim.scale_by_radam(eps=0.0)
    grads = gradient_sequence(tree, 7)
    plain = run_updates(t, grads, tree)
    scaled = run_updates(t, [fg.tree.map(lambda x: c * x, g) for g in grads], tree)
    expected = [fg.tree.map(lambda x: c * x, u) for u in plain[:5]] + plain[5:]
    assert_trees_allclose(scaled, expected, rtol=1e-11, atol=0)


@settings(max_examples=15)
@given(tree=nonempty_trees(), name=st.sampled_from(list(BLOCKS)))
def test_odd_symmetry_and_purity(tree: Any, name: str) -> None:
    """Negating every gradient negates every update; updates never mutate their inputs."""
    t = BLOCKS[name]()
    grads = gradient_sequence(tree)
    before = fg.tree.map(torch.clone, (grads, tree))
    negated = run_updates(t, [fg.tree.map(torch.neg, g) for g in grads], tree)
    expected = fg.tree.map(torch.neg, run_updates(t, grads, tree))
    assert_trees_allclose(negated, expected, rtol=0, atol=0)
    assert_trees_allclose((grads, tree), before, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_update_does_not_mutate_state(name: str) -> None:
    """The old state is unchanged by an update (the new state is new tensors)."""
    t = BLOCKS[name]()
    params = {"w": helpers.t(2, 3, seed=1), "b": helpers.t(3, seed=2)}
    _, state = t.update(params, t.init(params))
    before = fg.tree.map(torch.clone, state)
    t.update(fg.tree.map(lambda x: 2 * x, params), state)
    assert_trees_allclose(state, before, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_empty_tree(name: str) -> None:
    """A tree without leaves (a group of no parameters) gives an empty update, as in optax."""
    t = BLOCKS[name]()
    updates, _ = t.update({}, t.init({}))
    assert updates == {}


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

ALIASES = [optim.nadam, optim.radam, optim.adamax]


@pytest.mark.parametrize("alias", ALIASES, ids=lambda a: a.__name__)
@pytest.mark.parametrize(
    "lr", [-0.1, float("nan"), torch.tensor(-1e-3), torch.tensor(float("nan"))], ids=str
)
def test_negative_or_nan_learning_rate(alias: Any, lr: Any) -> None:
    """A negative or NaN learning rate (number or tensor) is refused, naming the alias."""
    with pytest.raises(
        ValueError, match=rf"optim\.{alias.__name__}: learning_rate must be a non-negative number"
    ):
        alias(lr)


BAD_HYPERPARAMETERS: list[tuple[Callable[..., Any], dict[str, Any], type, str]] = [
    (optim.nadam, {"b1": 1.0}, ValueError, r"optim\.nadam: b1 must be in \[0, 1\), got 1\.0"),
    (optim.nadam, {"momentum_decay": -1e-3}, ValueError, r"momentum_decay must be in \[0, inf\]"),
    (optim.nadam, {"weight_decay": -0.1}, ValueError, r"optim\.nadam: weight_decay must be a non"),
    (optim.radam, {"b2": math.nan}, ValueError, r"optim\.radam: b2 must be in \[0, 1\), got nan"),
    (optim.radam, {"eps_root": -1.0}, ValueError, r"optim\.radam: eps_root must be in \[0, inf\]"),
    (optim.radam, {"threshold": math.nan}, ValueError, r"optim\.radam: threshold must be in"),
    (optim.adamax, {"eps": -1e-8}, ValueError, r"optim\.adamax: eps must be in \[0, inf\], got"),
    (optim.adamax, {"b2": 1.5}, ValueError, r"optim\.adamax: b2 must be in \[0, 1\], got 1\.5"),
    (optim.scale_by_adamax, {"b1": -0.5}, ValueError, r"scale_by_adamax: b1 must be in \[0, 1\)"),
    (optim.scale_by_radam, {"b1": "0.9"}, TypeError, r"scale_by_radam: b1 must be a number, got"),
    (optim.scale_by_nadam, {"b2": torch.tensor(0.9)}, TypeError, r"b2 must be a number, got Ten"),
]


@pytest.mark.parametrize(
    ("factory", "kwargs", "error", "message"),
    BAD_HYPERPARAMETERS,
    ids=[f"{f.__name__}-{next(iter(k))}" for f, k, _, _ in BAD_HYPERPARAMETERS],
)
def test_bad_hyperparameter(
    factory: Any, kwargs: dict[str, Any], error: type, message: str
) -> None:
    """Out-of-range, NaN or non-number hyperparameters are refused when building, by name."""
    args = () if factory.__name__.startswith("scale_by") else (0.1,)  # a learning rate
    with pytest.raises(error, match=message):
        factory(*args, **kwargs)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_state_structure_mismatch_names_path(name: str) -> None:
    """A state built from other parameters: the message names the state's field and path."""
    t = BLOCKS[name]()
    state = t.init({"w": torch.ones(2), "b": torch.ones(2)})
    with pytest.raises(
        ValueError,
        match=rf"optim\.{name}: the state's .* must have the structure of the updates, .*"
        r"it has tree\['b'\], which the updates do not",
    ):
        t.update({"w": torch.ones(2), "c": torch.ones(2)}, state)
