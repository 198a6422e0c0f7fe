"""Tests for the learning-rate schedules (``funcgrad/optim/_schedules.py``).

The reference is optax 0.2.8 in float64 on the CPU: every schedule equals optax's at every step
from 0 to past its end (boundaries included), for fixed and hypothesis-drawn parameters, and
drives ``optim.sgd``/``optim.adam`` along optax's trajectory. optax's schedules are called with
an int64 count: with optax's own int32 step counter, ``linear_schedule`` and
``exponential_decay`` compute ``count / steps`` in float32 even with x64 enabled, which is
optax's rounding, not the schedule's definition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import helpers
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.testing import CompileCounterWithBackend

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

F64 = torch.float64
LAST_STEP = 40  # past the end of every schedule below
RTOL, ATOL = 1e-12, 1e-14

OPTAX_NAMES = {
    "constant": "constant_schedule",
    "linear": "linear_schedule",
    "cosine_decay": "cosine_decay_schedule",
    "warmup_cosine_decay": "warmup_cosine_decay_schedule",
    "exponential_decay": "exponential_decay",
    "piecewise_constant": "piecewise_constant_schedule",
    "onecycle": "cosine_onecycle_schedule",
}

# (name, positional arguments), in optax's argument order, which is also ours.
CASES: list[tuple[str, tuple[Any, ...]]] = [
    ("constant", (0.3,)),
    ("constant", (-2,)),
    ("linear", (1.0, 0.1, 10)),
    ("linear", (1.0, 0.1, 10, 3)),
    ("linear", (0.0, 2.0, 1)),
    ("linear", (1.0, 0.1, 0, 3)),
    ("cosine_decay", (0.7, 13)),
    ("cosine_decay", (0.7, 13, 0.1, 2.5)),
    ("cosine_decay", (1.0, 1)),
    ("cosine_decay", (2.0, 10, 0.0, 0.5)),
    ("warmup_cosine_decay", (0.0, 1.0, 5, 20)),
    ("warmup_cosine_decay", (0.1, 1.0, 0, 20)),
    ("warmup_cosine_decay", (0.0, 1.0, 5, 20, 0.01, 1.5)),
    ("warmup_cosine_decay", (0.0, 0.0, 3, 10)),
    ("warmup_cosine_decay", (0.2, 1.0, 9, 10, 0.3)),
    ("exponential_decay", (1.0, 3, 0.7)),
    ("exponential_decay", (1.0, 3, 0.7, 4, True, 0.2)),
    ("exponential_decay", (1.0, 3, 1.3, 4, False, 2.0)),
    ("exponential_decay", (0.5, 1, 0.9, 0, True)),
    ("exponential_decay", (1.0, 5, 1.0, 2, False, 0.5)),
    ("piecewise_constant", (1.0, None)),
    ("piecewise_constant", (1.0, {})),
    ("piecewise_constant", (1.0, {5: 0.5, 2: 0.1, 9: 3.0})),
    ("piecewise_constant", (0.3, {0: 2.0, 7: 0.0})),
    ("onecycle", (17, 2.0)),
    ("onecycle", (3, 2.0, 0.2)),
    ("onecycle", (10, 1.0, 0.0)),
    ("onecycle", (20, 0.5, 0.5, 10.0, 100.0)),
    ("onecycle", (1, 1.0)),
]
CASE_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


@pytest.fixture(scope="module")
def optax() -> Any:
    helpers.require_jax()
    return pytest.importorskip("optax")


def ours(name: str, args: tuple[Any, ...], dtype: torch.dtype | None = F64) -> Any:
    return getattr(optim, name)(*args, dtype=dtype)


def reference(optax: Any, name: str, args: tuple[Any, ...]) -> Any:
    return getattr(optax, OPTAX_NAMES[name])(*args)


def count(step: int) -> torch.Tensor:
    """A step count as the optimizer states keep it: a 0-d int32 tensor."""
    return torch.tensor(step, dtype=torch.int32)


def our_values(schedule: Callable[[Any], Any], last: int = LAST_STEP) -> torch.Tensor:
    return torch.stack([schedule(count(t)) for t in range(last + 1)])


def optax_values(schedule: Callable[[Any], Any], last: int = LAST_STEP) -> torch.Tensor:
    _, jnp = helpers.require_jax()
    values = [np.asarray(schedule(jnp.asarray(t, dtype=jnp.int64))) for t in range(last + 1)]
    return torch.from_numpy(np.stack(values).astype(np.float64))


# --------------------------------------------------------------------------------------------
# Values: optax's at every step
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "args"), CASES, ids=CASE_IDS)
def test_matches_optax_at_every_step(optax: Any, name: str, args: tuple[Any, ...]) -> None:
    """Each schedule equals optax's at steps 0..40: before, at and past every boundary."""
    assert_trees_allclose(
        our_values(ours(name, args)), optax_values(reference(optax, name, args)), RTOL, ATOL
    )


_value = st.floats(-3.0, 3.0, allow_nan=False).filter(lambda v: abs(v) > 1e-3)
_positive = st.floats(1e-3, 3.0)
_PARAMETERS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "linear": st.tuples(_value, _value, st.integers(0, 20), st.integers(0, 10)),
    "cosine_decay": st.tuples(_value, st.integers(1, 30), st.floats(0.0, 1.0), st.floats(0, 3)),
    "warmup_cosine_decay": st.integers(0, 15).flatmap(
        lambda warmup: st.tuples(
            _value,
            _value,
            st.just(warmup),
            st.integers(warmup + 1, 30),
            _value,
            st.floats(0.0, 3.0),
        )
    ),
    "exponential_decay": st.tuples(
        _positive,
        st.integers(1, 10),
        st.floats(0.1, 2.0),
        st.integers(0, 10),
        st.booleans(),
        st.none() | _positive,
    ),
    "piecewise_constant": st.tuples(
        _value, st.dictionaries(st.integers(0, 35), st.floats(0.0, 3.0), max_size=4)
    ),
    "onecycle": st.tuples(
        st.integers(1, 35),
        _positive,
        st.floats(0.0, 0.99),
        st.floats(1.0, 100.0),
        st.floats(1.0, 1e4),
    ),
}


@pytest.mark.parametrize("name", sorted(_PARAMETERS))
@settings(max_examples=15)
@given(data=st.data())
def test_matches_optax_for_drawn_parameters(optax: Any, name: str, data: st.DataObject) -> None:
    """Each schedule equals optax's at steps 0..40 for hypothesis-drawn parameters."""
    args = data.draw(_PARAMETERS[name], label="args")
    assert_trees_allclose(
        our_values(ours(name, args)), optax_values(reference(optax, name, args)), 1e-11, 1e-13
    )


def test_join_schedules_matches_optax(optax: Any) -> None:
    """join_schedules hands each schedule the steps since its boundary, as optax does."""
    parts = [("linear", (0.0, 1.0, 4)), ("cosine_decay", (1.0, 6, 0.1)), ("constant", (0.05,))]
    mine = optim.join_schedules([ours(n, a) for n, a in parts], [4, 12])
    theirs = optax.join_schedules([reference(optax, n, a) for n, a in parts], [4, 12])
    assert_trees_allclose(our_values(mine), optax_values(theirs), RTOL, ATOL)


def test_join_schedules_of_plain_functions() -> None:
    """User schedules may return Python numbers; the joined value is still a 0-d tensor."""
    joined = optim.join_schedules([lambda c: 0.5, lambda c: 0.25 * (c + 1)], [2])
    values = our_values(joined, 4)
    assert_trees_allclose(values, torch.tensor([0.5, 0.5, 0.25, 0.5, 0.75]))
    single = optim.join_schedules([lambda c: 0.5], [])(count(7))
    assert_trees_allclose(single, torch.tensor(0.5))


# --------------------------------------------------------------------------------------------
# Counts, dtypes, vmap
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "args"), CASES, ids=CASE_IDS)
def test_python_int_count(name: str, args: tuple[Any, ...]) -> None:
    """A Python int count gives the same 0-d float64 value as an int32 tensor count."""
    schedule = ours(name, args)
    for step in (0, 3, 10, 33):
        value = schedule(step)
        assert value.shape == ()
        assert_trees_allclose(value, schedule(count(step)), 0.0, 0.0)


@pytest.mark.parametrize(("name", "args"), CASES, ids=CASE_IDS)
def test_vmap_over_counts(name: str, args: tuple[Any, ...]) -> None:
    """fg.vmap over a batch of int32 counts equals evaluating the counts one by one."""
    schedule = ours(name, args)
    batched = fg.vmap(schedule)(torch.arange(LAST_STEP + 1, dtype=torch.int32))
    assert_trees_allclose(batched, our_values(schedule), 1e-14, 1e-15)


@pytest.mark.parametrize(("name", "args"), CASES[::3], ids=CASE_IDS[::3])
def test_default_dtype(name: str, args: tuple[Any, ...]) -> None:
    """Without dtype, values are in torch's default dtype (float32), close to the float64 ones."""
    schedule = ours(name, args, dtype=None)
    values = our_values(schedule)
    assert values.dtype == torch.float32
    assert_trees_allclose(values, our_values(ours(name, args)).float(), 1e-5, 1e-6)


def test_default_dtype_is_read_at_construction() -> None:
    """The default dtype is the one in force when the schedule is built, not when called."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        schedule = optim.cosine_decay(1.0, 10)
    finally:
        torch.set_default_dtype(previous)
    assert schedule(count(3)).dtype == torch.float64


def test_count_keeps_its_device_and_int64() -> None:
    """An int64 count works too, and the value lives on the count's device."""
    schedule = optim.warmup_cosine_decay(0.0, 1.0, 5, 20, dtype=F64)
    step = torch.tensor(7, dtype=torch.int64, device="meta")
    assert schedule(step).device == step.device
    assert_trees_allclose(schedule(torch.tensor(7)), schedule(count(7)), 0.0, 0.0)


# --------------------------------------------------------------------------------------------
# As learning rates: optax's trajectories
# --------------------------------------------------------------------------------------------

TRAJECTORY_SCHEDULES = [
    ("warmup_cosine_decay", (0.0, 0.1, 10, 40, 0.001)),
    ("exponential_decay", (0.1, 7, 0.5, 5, True, 0.01)),
    ("piecewise_constant", (0.1, {10: 0.5, 30: 0.2})),
    ("onecycle", (45, 0.1)),
    ("linear", (0.1, 0.0, 50, 3)),
]


def _problem(seed: int) -> tuple[dict[str, torch.Tensor], Callable[[Any, Any], Any]]:
    """Random float64 parameters and a smooth, coupled loss ``loss(m, params)``, m = torch/jnp."""
    params = {"w": helpers.t(3, 2, seed=seed), "b": helpers.t(2, seed=seed + 1)}
    centre = {k: helpers.t(*v.shape, seed=seed + 10 + i) for i, (k, v) in enumerate(params.items())}
    arrays = {k: v.numpy() for k, v in centre.items()}

    def loss(m: Any, p: Any) -> Any:
        z = centre if m is torch else arrays
        total = sum(((p[k] - z[k]) ** 2).sum() + 0.1 * m.sin(2.0 * p[k]).sum() for k in sorted(p))
        return total + 0.3 * m.tanh(p["w"].sum() * p["b"].sum())

    return params, loss


@pytest.mark.parametrize("optimizer", ["sgd", "sgd_momentum", "adam"])
@pytest.mark.parametrize(
    ("name", "args"), TRAJECTORY_SCHEDULES, ids=[n for n, _ in TRAJECTORY_SCHEDULES]
)
def test_as_learning_rate_matches_optax(
    optax: Any, optimizer: str, name: str, args: tuple[Any, ...]
) -> None:
    """optim.sgd/adam with a schedule follow optax's trajectory with optax's schedule (50 steps)."""
    jax, jnp = helpers.require_jax()
    make = {
        "sgd": lambda m, lr: m.sgd(lr),
        "sgd_momentum": lambda m, lr: m.sgd(lr, momentum=0.9, nesterov=True),
        "adam": lambda m, lr: m.adam(lr),
    }[optimizer]
    params, loss = _problem(seed=len(args))
    ref_schedule = reference(optax, name, args)
    opt = make(optim, ours(name, args))
    ref_opt = make(optax, lambda c: ref_schedule(c.astype(jnp.int64)))

    grad = fg.grad(lambda p: loss(torch, p))
    ref_grad = jax.grad(lambda p: loss(jnp, p))
    state, ref_params = opt.init(params), helpers.to_jax(params)
    ref_state = ref_opt.init(ref_params)
    mine, theirs = [], []
    for _ in range(50):
        updates, state = opt.update(grad(params), state, params)
        params = optim.apply_updates(params, updates)
        ref_updates, ref_state = ref_opt.update(ref_grad(ref_params), ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, ref_updates)
        mine.append(params)
        theirs.append(helpers.to_torch(ref_params))
    assert_trees_allclose(mine, theirs, 1e-10, 1e-12)


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------


def test_compiles_once_without_graph_breaks() -> None:
    """Every schedule in one joined graph: fullgraph traces it, and counts 0..5 reuse it."""
    schedule = optim.join_schedules(
        [
            optim.warmup_cosine_decay(0.0, 1.0, 1, 3),
            optim.exponential_decay(1.0, 1, 0.5, staircase=True, end_value=0.3),
            optim.piecewise_constant(0.5, {0: 0.5}),
            optim.linear(0.2, 0.1, 2),
            optim.onecycle(4, 1.0),
            optim.constant(0.01),
        ],
        [1, 2, 3, 4, 5],
    )
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(schedule, backend=counter, fullgraph=True)
    values = [compiled(count(t)) for t in range(6)]
    assert counter.frame_count == 1
    assert_trees_allclose(values, [schedule(count(t)) for t in range(6)], 0.0, 0.0)
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def _s(c: Any) -> float:
    return 0.1


ERRORS: list[tuple[Callable[[], Any], type[Exception], str]] = [
    (lambda: optim.constant("a"), TypeError, r"constant: value must be a real number, got str"),
    (lambda: optim.constant(True), TypeError, r"constant: value must be a real number, got bool"),
    (lambda: optim.constant(float("nan")), ValueError, r"constant: value must be finite, got nan"),
    (
        lambda: optim.linear(1.0, 0.0, -1),
        ValueError,
        r"linear: transition_steps must be at least 0, got -1",
    ),
    (
        lambda: optim.linear(1.0, 0.0, 10.0),
        TypeError,
        r"linear: transition_steps must be an integer number of steps, got float \(10.0\)\. "
        r"Round it with int",
    ),
    (
        lambda: optim.linear(1.0, 0.0, 10, -2),
        ValueError,
        r"linear: transition_begin must be at least 0, got -2",
    ),
    (
        lambda: optim.cosine_decay(1.0, 0),
        ValueError,
        r"cosine_decay: decay_steps must be positive, got 0",
    ),
    (
        lambda: optim.cosine_decay(1.0, 10, exponent=-1.0),
        ValueError,
        r"cosine_decay: exponent must be non-negative, got -1.0",
    ),
    (
        lambda: optim.warmup_cosine_decay(0.0, 1.0, 10, 10),
        ValueError,
        r"warmup_cosine_decay: decay_steps is the total length of the schedule, warmup "
        r"included, so it must be greater than warmup_steps; got decay_steps=10 and "
        r"warmup_steps=10",
    ),
    (
        lambda: optim.warmup_cosine_decay(0.0, 1.0, -1, 10),
        ValueError,
        r"warmup_cosine_decay: warmup_steps must be at least 0, got -1",
    ),
    (
        lambda: optim.warmup_cosine_decay(0.0, float("inf"), 1, 10),
        ValueError,
        r"warmup_cosine_decay: peak_value must be finite, got inf",
    ),
    (
        lambda: optim.exponential_decay(1.0, 0, 0.5),
        ValueError,
        r"exponential_decay: transition_steps must be positive, got 0",
    ),
    (
        lambda: optim.exponential_decay(1.0, 10, 0.0),
        ValueError,
        r"exponential_decay: decay_rate must be positive, got 0.0",
    ),
    (
        lambda: optim.exponential_decay(1.0, 10, 0.5, staircase=1),
        TypeError,
        r"exponential_decay: staircase must be a bool, got int",
    ),
    (
        lambda: optim.exponential_decay(1.0, 10, 0.5, end_value=float("inf")),
        ValueError,
        r"exponential_decay: end_value must be finite, got inf",
    ),
    (
        lambda: optim.piecewise_constant(1.0, {5: -0.1}),
        ValueError,
        r"piecewise_constant: scales must be non-negative, got -0.1 at boundary 5",
    ),
    (
        lambda: optim.piecewise_constant(1.0, {2.5: 0.1}),
        TypeError,
        r"piecewise_constant: the boundary 2.5 must be an integer number of steps",
    ),
    (
        lambda: optim.piecewise_constant(1.0, {-1: 0.1}),
        ValueError,
        r"piecewise_constant: the boundary -1 must be at least 0, got -1",
    ),
    (
        lambda: optim.piecewise_constant(1.0, [(1, 0.1)]),
        TypeError,
        r"piecewise_constant: boundaries_and_scales must be a dict \{step: scale\} or None, "
        r"got list",
    ),
    (
        lambda: optim.join_schedules([], []),
        TypeError,
        r"join_schedules: schedules must be a non-empty list of schedules, got \[\]",
    ),
    (
        lambda: optim.join_schedules([_s, 3], [1]),
        TypeError,
        r"join_schedules: schedules\[1\] must be a schedule \(a function of the step count\), "
        r"got int",
    ),
    (
        lambda: optim.join_schedules([_s, _s], []),
        ValueError,
        r"join_schedules: expected one boundary fewer than schedules, got 2 schedules and 0 "
        r"boundaries",
    ),
    (
        lambda: optim.join_schedules([_s, _s, _s], [5, 5]),
        ValueError,
        r"join_schedules: boundaries must be strictly increasing, got \[5, 5\] "
        r"\(boundaries\[1\]=5 <= boundaries\[0\]=5\)",
    ),
    (
        lambda: optim.join_schedules([_s, _s], 5),
        TypeError,
        r"join_schedules: boundaries must be a list of steps, got int",
    ),
    (
        lambda: optim.join_schedules([_s, _s], [-3]),
        ValueError,
        r"join_schedules: boundaries\[0\] must be at least 0, got -3",
    ),
    (
        lambda: optim.onecycle(0, 1.0),
        ValueError,
        r"onecycle: transition_steps must be positive, got 0",
    ),
    (
        lambda: optim.onecycle(10, 1.0, pct_start=1.0),
        ValueError,
        r"onecycle: pct_start is the fraction of the cycle spent rising and must be in "
        r"\[0, 1\), got 1.0",
    ),
    (
        lambda: optim.onecycle(10, 1.0, div_factor=0.0),
        ValueError,
        r"onecycle: div_factor must be positive, got 0.0",
    ),
    (
        lambda: optim.onecycle(10, 1.0, final_div_factor=-1),
        ValueError,
        r"onecycle: final_div_factor must be positive, got -1.0",
    ),
    (
        lambda: optim.linear(1.0, 0.0, 5, dtype=torch.int32),
        TypeError,
        r"linear: dtype must be a floating-point torch.dtype \(such as torch.float64\) or "
        r"None, got torch.int32",
    ),
    (
        lambda: optim.cosine_decay(1.0, 5)(1.5),
        TypeError,
        r"cosine_decay: the step count must be an int or an integer tensor, got float \(1.5\)",
    ),
    (
        lambda: optim.constant(1.0)(True),
        TypeError,
        r"constant: the step count must be an int or an integer tensor, got bool",
    ),
    (
        lambda: optim.onecycle(5, 1.0)(torch.tensor(True)),
        TypeError,
        r"onecycle: the step count must be an integer tensor \(or a real one\), got a "
        r"torch.bool tensor",
    ),
]


@pytest.mark.parametrize(("make", "error", "message"), ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_bad_input(make: Callable[[], Any], error: type[Exception], message: str) -> None:
    """Bad arguments and counts raise errors that name the schedule and the problem."""
    with pytest.raises(error, match=r"^funcgrad\.optim\." + message):
        make()
