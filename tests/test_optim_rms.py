"""Tests for RMSprop, Adagrad and Adadelta (``funcgrad/optim/_rms.py``): the building blocks
``scale_by_rms``, ``scale_by_stddev``, ``scale_by_rss``, ``scale_by_adadelta`` and the aliases.

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
LR = {"rmsprop": 0.002, "adagrad": 0.05, "adadelta": 1.0}

TORCH_CLASS = {
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
}

TORCH_CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # case: (alias, funcgrad kwargs, torch.optim kwargs)
    "rmsprop": ("rmsprop", {}, {}),
    "rmsprop_decay_eps_l2": (
        "rmsprop",
        {"decay": 0.9, "eps": 1e-3, "weight_decay": 0.1},
        {"alpha": 0.9, "eps": 1e-3, "weight_decay": 0.1},
    ),
    "rmsprop_centered": ("rmsprop", {"centered": True}, {"centered": True}),
    "rmsprop_momentum": ("rmsprop", {"momentum": 0.9}, {"momentum": 0.9}),
    "rmsprop_centered_momentum_l2": (
        "rmsprop",
        {"centered": True, "momentum": 0.5, "weight_decay": 0.05},
        {"centered": True, "momentum": 0.5, "weight_decay": 0.05},
    ),
    "adagrad": ("adagrad", {}, {}),
    "adagrad_lr_decay": ("adagrad", {"lr_decay": 0.05}, {"lr_decay": 0.05}),
    "adagrad_accumulator_eps_l2": (
        "adagrad",
        {"initial_accumulator_value": 0.3, "eps": 1e-3, "weight_decay": 0.1},
        {"initial_accumulator_value": 0.3, "eps": 1e-3, "weight_decay": 0.1},
    ),
    "adadelta": ("adadelta", {}, {}),
    "adadelta_rho_eps": ("adadelta", {"rho": 0.5, "eps": 1e-3}, {"rho": 0.5, "eps": 1e-3}),
    "adadelta_l2": ("adadelta", {"weight_decay": 0.1}, {"weight_decay": 0.1}),
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


def test_adadelta_default_learning_rate_is_torch_default() -> None:
    """adadelta() without a learning rate uses torch.optim.Adadelta's default, 1.0."""
    params, loss = badly_scaled_problem(0)
    actual = run_funcgrad(optim.adadelta(), params, loss)
    desired = run_torch(lambda ps, lr, foreach: torch.optim.Adadelta(ps), params, loss, None)
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# Learning rates: a 0-d tensor, a tensor changed in place, a schedule
# --------------------------------------------------------------------------------------------

LR_CASES = {
    # alias: the TORCH_CASES case used with a varying learning rate (the most features)
    "rmsprop": "rmsprop_centered_momentum_l2",
    "adagrad": "adagrad_lr_decay",
    "adadelta": "adadelta_l2",
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

OPTAX_CASES: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    # case: (funcgrad transformation, optax transformation): the same numbers
    "scale_by_rms": (lambda: optim.scale_by_rms(), lambda ox: ox.scale_by_rms()),
    "scale_by_rms_flags": (
        lambda: optim.scale_by_rms(0.95, 1e-4, 0.1, eps_in_sqrt=False, bias_correction=True),
        lambda ox: ox.scale_by_rms(0.95, 1e-4, 0.1, eps_in_sqrt=False, bias_correction=True),
    ),
    "scale_by_stddev": (lambda: optim.scale_by_stddev(), lambda ox: ox.scale_by_stddev()),
    "scale_by_stddev_flags": (
        lambda: optim.scale_by_stddev(0.8, 1e-4, 0.5, eps_in_sqrt=False, bias_correction=True),
        lambda ox: ox.scale_by_stddev(0.8, 1e-4, 0.5, eps_in_sqrt=False, bias_correction=True),
    ),
    "scale_by_rss": (lambda: optim.scale_by_rss(), lambda ox: ox.scale_by_rss()),
    "scale_by_rss_args": (
        lambda: optim.scale_by_rss(0.0, 1e-3),
        lambda ox: ox.scale_by_rss(0.0, 1e-3),
    ),
    "scale_by_adadelta": (lambda: optim.scale_by_adadelta(), lambda ox: ox.scale_by_adadelta()),
    "scale_by_adadelta_args": (
        lambda: optim.scale_by_adadelta(0.5, 1e-3),
        lambda ox: ox.scale_by_adadelta(0.5, 1e-3),
    ),
    "rmsprop": (
        lambda: optim.rmsprop(OPTAX_LR, 0.9, eps_in_sqrt=True),
        lambda ox: ox.rmsprop(OPTAX_LR),
    ),
    "rmsprop_all_options": (
        lambda: optim.rmsprop(
            OPTAX_LR,
            0.9,
            1e-4,
            0.1,
            centered=True,
            momentum=0.8,
            nesterov=True,
            eps_in_sqrt=True,
            bias_correction=True,
        ),
        lambda ox: ox.rmsprop(OPTAX_LR, 0.9, 1e-4, 0.1, True, True, 0.8, True, True),
    ),
    "adagrad": (
        lambda: optim.adagrad(OPTAX_LR, 0.1, 1e-7, eps_in_sqrt=True),
        lambda ox: ox.adagrad(OPTAX_LR),
    ),
    "adadelta": (
        lambda: optim.adadelta(0.5, weight_decay=0.1),
        lambda ox: ox.adadelta(0.5, weight_decay=0.1),
    ),
}


# The seed of each case's random problem: its position in the table of the whole adaptive
# family (RMS and Adam variants), fixed so that each case keeps its problem.
OPTAX_SEEDS = {
    "scale_by_rms": 0,
    "scale_by_rms_flags": 1,
    "scale_by_stddev": 2,
    "scale_by_stddev_flags": 3,
    "scale_by_rss": 4,
    "scale_by_rss_args": 5,
    "scale_by_adadelta": 6,
    "scale_by_adadelta_args": 7,
    "rmsprop": 14,
    "rmsprop_all_options": 15,
    "adagrad": 16,
    "adadelta": 17,
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
    "rmsprop": (lambda: optim.rmsprop(OPTAX_LR, 0.9, 1e-3), lambda ox: ox.rmsprop(OPTAX_LR)),
    "adagrad": (
        lambda: optim.adagrad(OPTAX_LR, 0.1, 1e-2),
        lambda ox: ox.adagrad(OPTAX_LR, 0.1, 1e-2),
    ),
}


@pytest.mark.parametrize("alias", list(DIFFERENCES))
def test_torch_default_differs_from_optax(alias: str) -> None:
    """Where optax's definition differs (eps placement, initial accumulator), the default
    trajectory (torch's, tested above) is measurably different from optax's."""
    ours, theirs = DIFFERENCES[alias]
    params, loss = badly_scaled_problem(0)
    actual = run_funcgrad(ours(), params, loss, steps=20)
    desired = run_optax(theirs, params, loss, steps=20)
    assert max_relative_difference(actual, desired) > 1e-4


def test_rmsprop_momentum_with_schedule_differs_from_optax_order() -> None:
    """With momentum and a schedule, rmsprop applies the learning rate after the momentum
    (torch), optax.rmsprop before it: ours is optax's chain in torch's order."""
    params, loss = badly_scaled_problem(1)
    ours = optim.rmsprop(lambda c: 0.01 / (1.0 + c.to(torch.float64)), 0.9, momentum=0.9)

    def torch_order(ox: Any) -> Any:
        rms = ox.scale_by_rms(0.9, 1e-8, eps_in_sqrt=False)
        return ox.chain(rms, ox.trace(0.9), ox.scale_by_learning_rate(lambda c: 0.01 / (1 + c)))

    actual = run_funcgrad(ours, params, loss)
    assert_trees_allclose(actual, run_optax(torch_order, params, loss), rtol=RTOL, atol=ATOL)
    optax_order = run_optax(
        lambda ox: ox.rmsprop(lambda c: 0.01 / (1 + c), 0.9, 1e-8, eps_in_sqrt=False, momentum=0.9),
        params,
        loss,
    )
    assert max_relative_difference(actual, optax_order) > 1e-4


# --------------------------------------------------------------------------------------------
# The per-leaf path (inside torch.func transforms) gives the foreach path's numbers
# --------------------------------------------------------------------------------------------

TRANSFORM_CASES: dict[str, Callable[[], optim.GradientTransformation]] = {
    "rmsprop": lambda: optim.rmsprop(0.002, centered=True, momentum=0.9, weight_decay=0.01),
    "adagrad": lambda: optim.adagrad(lambda c: 0.1 / (1.0 + c.to(torch.float64)), lr_decay=0.1),
    "adadelta": lambda: optim.adadelta(1.0, weight_decay=0.01),
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
    "scale_by_rms": optim.scale_by_rms,
    "scale_by_stddev": optim.scale_by_stddev,
    "scale_by_rss": optim.scale_by_rss,
    "scale_by_adadelta": optim.scale_by_adadelta,
}

STATE_TYPES = {
    "scale_by_rms": optim.ScaleByRmsState,
    "scale_by_stddev": optim.ScaleByRStdDevState,
    "scale_by_rss": optim.ScaleByRssState,
    "scale_by_adadelta": optim.ScaleByAdaDeltaState,
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
    "scale_by_rms": lambda: optim.scale_by_rms(eps=0.0),
    "scale_by_stddev": lambda: optim.scale_by_stddev(eps=0.0),
    "scale_by_rss": lambda: optim.scale_by_rss(0.0, 0.0),
}


@settings(max_examples=15)
@given(tree=nonempty_trees(), c=st.floats(1e-3, 1e3), name=st.sampled_from(list(SCALE_INVARIANT)))
def test_scale_invariance_without_eps(tree: Any, c: float, name: str) -> None:
    """With eps = 0 (and an empty initial accumulator) adaptive updates are invariant to
    rescaling every gradient by c > 0."""
    t = SCALE_INVARIANT[name]()
    grads = gradient_sequence(tree)
    scaled = [fg.tree.map(lambda x: c * x, g) for g in grads]
    assert_trees_allclose(
        run_updates(t, scaled, tree), run_updates(t, grads, tree), rtol=1e-11, atol=0
    )


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

ALIASES = [optim.rmsprop, optim.adagrad, optim.adadelta]


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
    (optim.rmsprop, {"decay": -0.1}, ValueError, r"optim\.rmsprop: decay must be in \[0, 1\]"),
    (optim.rmsprop, {"momentum": -0.9}, ValueError, r"optim\.rmsprop: momentum must be in"),
    (optim.rmsprop, {"initial_scale": math.nan}, ValueError, r"initial_scale must be in"),
    (optim.rmsprop, {"weight_decay": math.nan}, ValueError, r"weight_decay must be a non-neg"),
    (optim.adagrad, {"lr_decay": -0.1}, ValueError, r"optim\.adagrad: lr_decay must be in"),
    (optim.adagrad, {"initial_accumulator_value": -1.0}, ValueError, r"initial_accumulator_v"),
    (optim.adagrad, {"eps": math.nan}, ValueError, r"optim\.adagrad: eps must be in \[0, inf\]"),
    (optim.adadelta, {"rho": 1.1}, ValueError, r"optim\.adadelta: rho must be in \[0, 1\], got"),
    (optim.adadelta, {"weight_decay": -1.0}, ValueError, r"adadelta: weight_decay must be a non"),
    (optim.scale_by_rms, {"decay": math.nan}, ValueError, r"scale_by_rms: decay must be in \["),
    (optim.scale_by_stddev, {"eps": -1.0}, ValueError, r"scale_by_stddev: eps must be in \[0"),
    (optim.scale_by_rss, {"eps": -1.0}, ValueError, r"scale_by_rss: eps must be in \[0, inf\]"),
    (optim.scale_by_adadelta, {"eps": True}, TypeError, r"eps must be a number, got bool"),
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


def test_rmsprop_nesterov_without_momentum() -> None:
    """Nesterov momentum needs a momentum coefficient."""
    with pytest.raises(ValueError, match=r"optim\.rmsprop: nesterov=True needs a momentum > 0"):
        optim.rmsprop(0.01, nesterov=True)


def test_adagrad_lr_decay_schedule_returning_non_scalar() -> None:
    """With lr_decay, a schedule returning a non-scalar tensor is refused at update."""
    opt = optim.adagrad(lambda count: torch.full((3,), 0.1), lr_decay=0.1)
    params = {"w": torch.ones(2)}
    with pytest.raises(ValueError, match=r"optim\.adagrad: a schedule must return a scalar"):
        opt.update({"w": torch.ones(2)}, opt.init(params), params)


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
