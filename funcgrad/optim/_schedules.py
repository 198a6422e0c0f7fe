"""Learning-rate schedules: functions of the step count, written with tensor ops only.

# NOTE [schedules are tensor functions of the count]
# A schedule maps the step count (a 0-d integer tensor, as kept in the optimizer states, or a
# Python int) to a 0-d float tensor. Everything that depends on the count is a tensor op
# (clamp, where, cos, pow), never Python control flow on its value and never `.item()`, so a
# jitted training step traces the schedule once and never recompiles as the count grows, and
# the schedule batches under `vmap` (an ensemble of optimizer states at different steps).
# Python branches only on construction-time constants. Values are computed in the schedule's
# `dtype` (torch's default float dtype when it is built, float32 unless changed): build it with
# dtype=torch.float64 to train in float64 against a float64 reference. The semantics and the
# order of floating-point operations follow optax 0.2.8's schedules, whose names are given in
# each docstring; arguments that optax documents as invalid are rejected when the schedule is
# built instead of being silently replaced.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ._base import Schedule

__all__ = [
    "constant",
    "cosine_decay",
    "exponential_decay",
    "join_schedules",
    "linear",
    "onecycle",
    "piecewise_constant",
    "warmup_cosine_decay",
]

# --------------------------------------------------------------------------------------------
# Argument checks (at construction) and the count (at each call)
# --------------------------------------------------------------------------------------------


def _real(name: str, what: str, value: Any) -> float:
    """A finite real number as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"funcgrad.optim.{name}: {what} must be a real number, got "
            f"{type(value).__name__} ({value!r})."
        )
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"funcgrad.optim.{name}: {what} must be finite, got {number}.")
    return number


def _steps(name: str, what: str, value: Any, minimum: int) -> int:
    """A whole number of steps, at least ``minimum``, as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"funcgrad.optim.{name}: {what} must be an integer number of steps, got "
            f"{type(value).__name__} ({value!r}). Round it with int(...)."
        )
    steps = int(value)
    if steps < minimum:
        bound = "positive" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"funcgrad.optim.{name}: {what} must be {bound}, got {steps}.")
    return steps


def _float_dtype(name: str, dtype: Any) -> torch.dtype:
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"funcgrad.optim.{name}: dtype must be a floating-point torch.dtype (such as "
            f"torch.float64) or None, got {dtype!r}."
        )
    return dtype


def _count(name: str, count: Any) -> torch.Tensor:
    """The step count as a tensor (a Python int becomes a 0-d int64 tensor)."""
    if isinstance(count, torch.Tensor):
        if count.dtype == torch.bool or count.is_complex():
            raise TypeError(
                f"funcgrad.optim.{name}: the step count must be an integer tensor (or a real "
                f"one), got a {count.dtype} tensor."
            )
        return count
    if not isinstance(count, bool) and isinstance(count, numbers.Integral):
        return torch.tensor(int(count))
    raise TypeError(
        f"funcgrad.optim.{name}: the step count must be an int or an integer tensor, got "
        f"{type(count).__name__} ({count!r})."
    )


# --------------------------------------------------------------------------------------------
# Unchecked builders, shared by the public schedules
# --------------------------------------------------------------------------------------------


def _constant(name: str, value: float, dtype: torch.dtype) -> Schedule:
    def schedule(count: torch.Tensor | int) -> torch.Tensor:
        return torch.full_like(_count(name, count), value, dtype=dtype)

    return schedule


def _linear(
    name: str, init: float, end: float, steps: int, begin: int, dtype: torch.dtype
) -> Schedule:
    if steps == 0:
        return _constant(name, init, dtype)
    delta = init - end

    def schedule(count: torch.Tensor | int) -> torch.Tensor:
        done = torch.clamp(_count(name, count) - begin, 0, steps).to(dtype)
        return delta * (1 - done / steps) + end

    return schedule


def _cosine(
    name: str, init: float, steps: int, alpha: float, exponent: float, dtype: torch.dtype
) -> Schedule:
    def schedule(count: torch.Tensor | int) -> torch.Tensor:
        done = torch.clamp(_count(name, count).to(dtype), max=float(steps))
        cosine = 0.5 * (1 + torch.cos(math.pi * done / steps))
        return init * ((1 - alpha) * cosine**exponent + alpha)

    return schedule


def _join(
    name: str, schedules: Sequence[Callable[[torch.Tensor], Any]], boundaries: Sequence[int]
) -> Schedule:
    first, rest = schedules[0], tuple(zip(boundaries, schedules[1:]))

    def schedule(count: torch.Tensor | int) -> torch.Tensor:
        step = _count(name, count)
        value = first(step)
        for boundary, later in rest:
            value = torch.where(step < boundary, value, later(step - boundary))
        if not isinstance(value, torch.Tensor):  # a single user schedule returning a number
            value = torch.full_like(step, value, dtype=torch.get_default_dtype())
        return value

    return schedule


# --------------------------------------------------------------------------------------------
# Public schedules
# --------------------------------------------------------------------------------------------


def constant(value: float, *, dtype: torch.dtype | None = None) -> Schedule:
    """The schedule that always returns ``value`` (optax's ``constant_schedule``).

    Args:
        value: the value at every step.
        dtype: the float dtype of the values (default: torch's default dtype when built).

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.constant(0.5)(torch.tensor(1000))
    tensor(0.5000)
    """
    name = "constant"
    return _constant(name, _real(name, "value", value), _float_dtype(name, dtype))


def linear(
    init_value: float,
    end_value: float,
    transition_steps: int,
    transition_begin: int = 0,
    *,
    dtype: torch.dtype | None = None,
) -> Schedule:
    r"""Goes linearly from ``init_value`` to ``end_value`` (optax's ``linear_schedule``).

    .. math::
        \eta_t = I + (E - I) \, \min\!\left(1, \frac{\max(0, t - B)}{T}\right)

    with :math:`I` = ``init_value``, :math:`E` = ``end_value``, :math:`T` =
    ``transition_steps`` and :math:`B` = ``transition_begin``: the value is held at :math:`I`
    until step :math:`B` and reaches :math:`E` at step :math:`B + T`.

    Args:
        init_value: the value up to step ``transition_begin``.
        end_value: the value from step ``transition_begin + transition_steps`` on.
        transition_steps: the length of the transition; 0 holds ``init_value`` forever (as
            in optax).
        transition_begin: the step at which the transition starts.
        dtype: the float dtype of the values (default: torch's default dtype when built).

    >>> import torch
    >>> from funcgrad import optim
    >>> schedule = optim.linear(1.0, 0.0, transition_steps=4, transition_begin=2)
    >>> torch.stack([schedule(torch.tensor(t)) for t in range(8)])
    tensor([1.0000, 1.0000, 1.0000, 0.7500, 0.5000, 0.2500, 0.0000, 0.0000])
    """
    name = "linear"
    return _linear(
        name,
        _real(name, "init_value", init_value),
        _real(name, "end_value", end_value),
        _steps(name, "transition_steps", transition_steps, 0),
        _steps(name, "transition_begin", transition_begin, 0),
        _float_dtype(name, dtype),
    )


def _check_exponent(name: str, exponent: Any) -> float:
    power = _real(name, "exponent", exponent)
    if power < 0:
        raise ValueError(
            f"funcgrad.optim.{name}: exponent must be non-negative, got {power} (a negative "
            "exponent makes the value infinite at the end of the decay)."
        )
    return power


def cosine_decay(
    init_value: float,
    decay_steps: int,
    alpha: float = 0.0,
    exponent: float = 1.0,
    *,
    dtype: torch.dtype | None = None,
) -> Schedule:
    r"""Cosine decay from ``init_value`` to ``alpha * init_value`` (optax's
    ``cosine_decay_schedule``; Loshchilov & Hutter, 2017, https://arxiv.org/abs/1608.03983).

    .. math::
        \eta_t = I \left((1 - \alpha) \left[\tfrac12 \left(1 + \cos \frac{\pi \min(t, T)}{T}
        \right)\right]^p + \alpha\right)

    Args:
        init_value: the value at step 0 (:math:`I`).
        decay_steps: the length :math:`T` of the decay; the value stays at
            :math:`\alpha I` afterwards. Must be positive.
        alpha: the final value as a fraction of ``init_value``.
        exponent: the power :math:`p` applied to the cosine factor.
        dtype: the float dtype of the values (default: torch's default dtype when built).

    >>> import torch
    >>> from funcgrad import optim
    >>> schedule = optim.cosine_decay(1.0, decay_steps=4, alpha=0.1)
    >>> torch.stack([schedule(torch.tensor(t)) for t in range(6)])
    tensor([1.0000, 0.8682, 0.5500, 0.2318, 0.1000, 0.1000])
    """
    name = "cosine_decay"
    return _cosine(
        name,
        _real(name, "init_value", init_value),
        _steps(name, "decay_steps", decay_steps, 1),
        _real(name, "alpha", alpha),
        _check_exponent(name, exponent),
        _float_dtype(name, dtype),
    )


def warmup_cosine_decay(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
    *,
    dtype: torch.dtype | None = None,
) -> Schedule:
    r"""Linear warmup from ``init_value`` to ``peak_value``, then cosine decay to ``end_value``
    (optax's ``warmup_cosine_decay_schedule``).

    For :math:`t < W` the value is :func:`linear` from :math:`I` to :math:`P` over :math:`W`
    steps; from :math:`t = W` on it is :func:`cosine_decay` of ``peak_value`` over
    :math:`D - W` steps, evaluated at :math:`t - W`, with ``alpha = end_value / peak_value``.

    Args:
        init_value: the value at step 0 (:math:`I`).
        peak_value: the value at the end of the warmup (:math:`P`).
        warmup_steps: the length :math:`W` of the warmup (0: start at the peak).
        decay_steps: the total length :math:`D` of the schedule, warmup included; must be
            greater than ``warmup_steps``.
        end_value: the value from step :math:`D` on.
        exponent: the power applied to the cosine factor (see :func:`cosine_decay`).
        dtype: the float dtype of the values (default: torch's default dtype when built).

    >>> import torch
    >>> from funcgrad import optim
    >>> schedule = optim.warmup_cosine_decay(0.0, 1.0, warmup_steps=2, decay_steps=6)
    >>> torch.stack([schedule(torch.tensor(t)) for t in range(8)])
    tensor([0.0000, 0.5000, 1.0000, 0.8536, 0.5000, 0.1464, 0.0000, 0.0000])
    """
    name = "warmup_cosine_decay"
    init = _real(name, "init_value", init_value)
    peak = _real(name, "peak_value", peak_value)
    end = _real(name, "end_value", end_value)
    warmup = _steps(name, "warmup_steps", warmup_steps, 0)
    total = _steps(name, "decay_steps", decay_steps, 1)
    if total <= warmup:
        raise ValueError(
            f"funcgrad.optim.{name}: decay_steps is the total length of the schedule, warmup "
            f"included, so it must be greater than warmup_steps; got decay_steps={total} and "
            f"warmup_steps={warmup}. Pass decay_steps=warmup_steps + the number of decay steps."
        )
    exponent = _check_exponent(name, exponent)
    dtype = _float_dtype(name, dtype)
    alpha = 0.0 if peak == 0.0 else end / peak
    warm = _linear(name, init, peak, warmup, 0, dtype)
    decay = _cosine(name, peak, total - warmup, alpha, exponent, dtype)
    return _join(name, [warm, decay], [warmup])


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> Schedule:
    r"""Exponential decay (optax's ``exponential_decay``).

    .. math::
        \eta_t = I \, r^{\,p_t}, \quad p_t = \frac{\max(0, t - B)}{T}
        \quad (\lfloor p_t \rfloor \text{ with staircase})

    then clipped below by ``end_value`` when :math:`r < 1` (above when :math:`r \ge 1`).

    Args:
        init_value: the value up to step ``transition_begin`` (:math:`I`).
        transition_steps: the number of steps :math:`T` over which the value is multiplied by
            ``decay_rate``; must be positive.
        decay_rate: the factor :math:`r` per ``transition_steps``; must be positive.
        transition_begin: the step :math:`B` at which the decay starts.
        staircase: decay in discrete jumps every ``transition_steps`` steps.
        end_value: a bound the value never crosses (``None``: no bound).
        dtype: the float dtype of the values (default: torch's default dtype when built).

    >>> import torch
    >>> from funcgrad import optim
    >>> schedule = optim.exponential_decay(1.0, transition_steps=2, decay_rate=0.5,
    ...                                    staircase=True, end_value=0.2)
    >>> torch.stack([schedule(torch.tensor(t)) for t in range(7)])
    tensor([1.0000, 1.0000, 0.5000, 0.5000, 0.2500, 0.2500, 0.2000])
    """
    name = "exponential_decay"
    init = _real(name, "init_value", init_value)
    steps = _steps(name, "transition_steps", transition_steps, 1)
    rate = _real(name, "decay_rate", decay_rate)
    if rate <= 0:
        raise ValueError(
            f"funcgrad.optim.{name}: decay_rate must be positive, got {rate}. For a value "
            "that drops to zero use piecewise_constant."
        )
    begin = _steps(name, "transition_begin", transition_begin, 0)
    if not isinstance(staircase, bool):
        raise TypeError(
            f"funcgrad.optim.{name}: staircase must be a bool, got {type(staircase).__name__}."
        )
    end = None if end_value is None else _real(name, "end_value", end_value)
    dtype = _float_dtype(name, dtype)

    def schedule(count: torch.Tensor | int) -> torch.Tensor:
        elapsed = _count(name, count) - begin
        if staircase:  # a construction-time constant, not a branch on the count
            power = torch.div(elapsed, steps, rounding_mode="floor").to(dtype)
        else:
            power = elapsed.to(dtype) / steps
        value = torch.where(elapsed <= 0, init, init * torch.pow(rate, power))
        if end is None:
            return value
        return torch.clamp(value, min=end) if rate < 1 else torch.clamp(value, max=end)

    return schedule


def piecewise_constant(
    init_value: float,
    boundaries_and_scales: Mapping[int, float] | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> Schedule:
    """Multiplies the value by ``scale`` from each step ``boundary`` on (optax's
    ``piecewise_constant_schedule``).

    The value at step ``t`` is ``init_value`` times the product of the scales of all
    boundaries ``<= t``.

    Args:
        init_value: the value before the first boundary.
        boundaries_and_scales: a ``{step: scale}`` dict of non-negative integer steps and
            non-negative scales (``None`` or empty: a constant schedule).
        dtype: the float dtype of the values (default: torch's default dtype when built).

    >>> import torch
    >>> from funcgrad import optim
    >>> schedule = optim.piecewise_constant(1.0, {2: 0.5, 4: 0.1})
    >>> torch.stack([schedule(torch.tensor(t)) for t in range(6)])
    tensor([1.0000, 1.0000, 0.5000, 0.5000, 0.0500, 0.0500])
    """
    name = "piecewise_constant"
    init = _real(name, "init_value", init_value)
    dtype = _float_dtype(name, dtype)
    if boundaries_and_scales is None:
        boundaries_and_scales = {}
    if not isinstance(boundaries_and_scales, Mapping):
        raise TypeError(
            f"funcgrad.optim.{name}: boundaries_and_scales must be a dict {{step: scale}} or "
            f"None, got {type(boundaries_and_scales).__name__}."
        )
    jumps = []
    for boundary, scale in boundaries_and_scales.items():
        step = _steps(name, f"the boundary {boundary!r}", boundary, 0)
        factor = _real(name, f"the scale at boundary {step}", scale)
        if factor < 0:
            raise ValueError(
                f"funcgrad.optim.{name}: scales must be non-negative, got {factor} at "
                f"boundary {step}."
            )
        jumps.append((step, factor))
    jumps.sort()

    def schedule(count: torch.Tensor | int) -> torch.Tensor:
        step = _count(name, count)
        value = torch.full_like(step, init, dtype=dtype)
        for boundary, factor in jumps:
            value = torch.where(step < boundary, value, value * factor)
        return value

    return schedule


def join_schedules(
    schedules: Sequence[Callable[[torch.Tensor], Any]], boundaries: Sequence[int]
) -> Schedule:
    """Runs ``schedules[i]`` from ``boundaries[i - 1]`` to ``boundaries[i]`` (optax's
    ``join_schedules``).

    Each schedule is called with the number of steps since its own start (``t - boundary``).
    The values have the dtype of the joined schedules' values.

    Args:
        schedules: the schedules, in order.
        boundaries: the steps at which to switch to the next schedule: one fewer than the
            schedules, non-negative and strictly increasing.

    >>> import torch
    >>> from funcgrad import optim
    >>> schedule = optim.join_schedules(
    ...     [optim.linear(0.0, 1.0, 2), optim.constant(1.0), optim.linear(1.0, 0.0, 2)], [2, 4]
    ... )
    >>> torch.stack([schedule(torch.tensor(t)) for t in range(7)])
    tensor([0.0000, 0.5000, 1.0000, 1.0000, 1.0000, 0.5000, 0.0000])
    """
    name = "join_schedules"
    if not isinstance(schedules, Sequence) or not schedules:
        raise TypeError(
            f"funcgrad.optim.{name}: schedules must be a non-empty list of schedules, got "
            f"{schedules!r}."
        )
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(
                f"funcgrad.optim.{name}: schedules[{i}] must be a schedule (a function of the "
                f"step count), got {type(s).__name__}."
            )
    if not isinstance(boundaries, Sequence):
        raise TypeError(
            f"funcgrad.optim.{name}: boundaries must be a list of steps, got "
            f"{type(boundaries).__name__}."
        )
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"funcgrad.optim.{name}: expected one boundary fewer than schedules, got "
            f"{len(schedules)} schedules and {len(boundaries)} boundaries."
        )
    steps = [_steps(name, f"boundaries[{i}]", b, 0) for i, b in enumerate(boundaries)]
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            raise ValueError(
                f"funcgrad.optim.{name}: boundaries must be strictly increasing, got "
                f"{steps} (boundaries[{i}]={steps[i]} <= boundaries[{i - 1}]={steps[i - 1]})."
            )
    return _join(name, list(schedules), steps)


def onecycle(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    *,
    dtype: torch.dtype | None = None,
) -> Schedule:
    r"""The one-cycle schedule with cosine phases (optax's ``cosine_onecycle_schedule``; Smith
    & Topin, 2017, https://arxiv.org/abs/1708.07120).

    The value rises from ``peak_value / div_factor`` to ``peak_value`` over the first
    :math:`S = \lfloor` ``pct_start`` :math:`\cdot T \rfloor` steps, then falls to
    ``peak_value / (div_factor * final_div_factor)`` at step :math:`T` and stays there. Each
    phase interpolates from :math:`a` to :math:`b` as
    :math:`b + \frac{a - b}{2} (1 + \cos \pi u)`, :math:`u` the fraction of the phase done.

    ``torch.optim.lr_scheduler.OneCycleLR`` (``anneal_strategy="cos"``) differs in where its
    phases end: at steps ``pct_start * total_steps - 1`` and ``total_steps - 1``.

    Args:
        transition_steps: the length :math:`T` of the cycle; must be positive.
        peak_value: the largest value, reached at step :math:`S`.
        pct_start: the fraction of the cycle spent rising, in ``[0, 1)``.
        div_factor: the initial value is ``peak_value / div_factor``.
        final_div_factor: the final value is the initial value over ``final_div_factor``.
        dtype: the float dtype of the values (default: torch's default dtype when built).

    >>> import torch
    >>> from funcgrad import optim
    >>> schedule = optim.onecycle(4, 1.0, pct_start=0.5, div_factor=10.0,
    ...                           final_div_factor=100.0)
    >>> torch.stack([schedule(torch.tensor(t)) for t in range(6)])
    tensor([0.1000, 0.5500, 1.0000, 0.5005, 0.0010, 0.0010])
    """
    name = "onecycle"
    steps = _steps(name, "transition_steps", transition_steps, 1)
    peak = _real(name, "peak_value", peak_value)
    pct = _real(name, "pct_start", pct_start)
    if not 0 <= pct < 1:
        raise ValueError(
            f"funcgrad.optim.{name}: pct_start is the fraction of the cycle spent rising and "
            f"must be in [0, 1), got {pct}."
        )
    div = _real(name, "div_factor", div_factor)
    final_div = _real(name, "final_div_factor", final_div_factor)
    for what, factor in (("div_factor", div), ("final_div_factor", final_div)):
        if factor <= 0:
            raise ValueError(f"funcgrad.optim.{name}: {what} must be positive, got {factor}.")
    dtype = _float_dtype(name, dtype)
    # The three values at steps 0, S and T, computed as optax does (a cumulative product).
    start = peak / div
    top = start * div
    final = top * (1.0 / (div * final_div))
    rise = int(pct * steps)
    rise_len, fall_len = max(rise, 1), max(steps - rise, 1)
    rise_half, fall_half = (start - top) / 2.0, (top - final) / 2.0

    def schedule(count: torch.Tensor | int) -> torch.Tensor:
        step = _count(name, count)
        up = top + rise_half * (torch.cos(math.pi * (step.to(dtype) / rise_len)) + 1)
        down_done = (step - rise).to(dtype) / fall_len
        down = final + fall_half * (torch.cos(math.pi * down_done) + 1)
        return torch.where(step < rise, up, torch.where(step < steps, down, final))

    return schedule
