"""Gradient accumulation (:class:`MultiSteps`) and skipping non-finite updates
(:func:`apply_if_finite`); and the checks and the leafwise choice every wrapper module shares.

# NOTE [choosing with torch.where]
# Several wrappers decide at each step whether an update happens: MultiSteps on the k-th
# micro-batch, apply_if_finite when the gradients are finite, lookahead on a synchronisation
# step. The decision is a 0-d bool tensor, never a Python bool: both outcomes are computed and
# each leaf of the updates and state is picked with torch.where. A Python `if` on a tensor
# would cost a device-to-host sync per step, break the graph under torch.compile, and fail
# under vmap, where each member of an ensemble may decide differently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import _api_util
from .._typing import PyTree
from . import _foreach
from ._base import (
    GradientTransformation,
    OptState,
    Params,
    Updates,
    evaluate_schedule,
    flat_like,
    new_count,
    safe_increment,
)
from ._base import flatten as _flatten
from ._transforms import scalar_dtype

__all__ = [
    "ApplyIfFiniteState",
    "MultiSteps",
    "MultiStepsState",
    "apply_if_finite",
    "skip_large_updates",
    "skip_not_finite",
]


def _check_transformation(name: str, inner: Any, what: str = "inner") -> None:
    if isinstance(inner, GradientTransformation):
        return
    if isinstance(inner, MultiSteps):
        hint = "Pass multi_steps.gradient_transformation()."
    else:
        hint = "Call the factory (e.g. optim.adam(1e-3), not optim.adam)."
    raise TypeError(
        f"funcgrad.optim.{name}: {what} must be a GradientTransformation, got "
        f"{type(inner).__name__}. {hint}"
    )


def _check_state(name: str, state: Any, cls: type) -> None:
    if not isinstance(state, cls):
        raise TypeError(
            f"funcgrad.optim.{name}: expected a {cls.__name__} (the state returned by this "
            f"transformation's init or update), got {_api_util.describe(state)}."
        )


def _where(name: str, cond: torch.Tensor, if_true: PyTree, if_false: PyTree) -> PyTree:
    """Leafwise ``torch.where(cond, if_true, if_false)`` in ``if_false``'s dtypes (see NOTE)."""
    true_leaves, treedef = _flatten(if_true)
    false_leaves = flat_like(
        name, "inner state", if_false, treedef, if_true, "state returned by the inner update"
    )
    return treedef.unflatten(
        [
            torch.where(cond, t, f).to(f.dtype) if isinstance(f, torch.Tensor) else t
            for t, f in zip(true_leaves, false_leaves)
        ]
    )


# --------------------------------------------------------------------------------------------
# Gradient accumulation
# --------------------------------------------------------------------------------------------


class MultiStepsState(NamedTuple):
    """The state of :class:`MultiSteps`.

    Attributes:
        mini_step: micro-batches accumulated since the last update (0-d int32).
        gradient_step: updates of the inner optimizer so far (0-d int32).
        inner_opt_state: the inner optimizer's state.
        acc_grads: the running mean (or sum) of the gradients of this accumulation.
        skip_state: what ``should_skip_update_fn`` reported at the last step (``()`` without).

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.MultiSteps(optim.scale(-0.1), 2).init(torch.zeros(1))
    MultiStepsState(mini_step=tensor(0, dtype=torch.int32),
        gradient_step=tensor(0, dtype=torch.int32), inner_opt_state=EmptyState(),
        acc_grads=tensor([0.]), skip_state=())
    """

    mini_step: torch.Tensor
    gradient_step: torch.Tensor
    inner_opt_state: OptState
    acc_grads: Updates
    skip_state: PyTree = ()


ShouldSkipUpdateFn = Callable[[Updates, torch.Tensor, Params | None], tuple[torch.Tensor, PyTree]]


def skip_not_finite(
    updates: Updates, gradient_step: torch.Tensor, params: Params | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A ``should_skip_update_fn`` for :class:`MultiSteps`: skip updates with an inf or NaN.

    Returns the decision and ``{"should_skip": ..., "num_not_finite": ...}`` (the count of
    non-finite elements).

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.skip_not_finite([torch.tensor([1.0, float("inf")])], torch.tensor(0), None)[0]
    tensor(True)
    """
    del gradient_step, params
    leaves = _flatten(updates)[0]
    counts = [torch.logical_not(torch.isfinite(x)).sum() for x in leaves]
    num = torch.stack(counts).sum() if counts else torch.zeros((), dtype=torch.int64)
    should_skip = num > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num}


def skip_large_updates(
    updates: Updates,
    gradient_step: torch.Tensor,
    params: Params | None,
    max_squared_norm: float | torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A ``should_skip_update_fn`` for :class:`MultiSteps` (bind ``max_squared_norm`` with
    ``functools.partial``): skip updates whose squared global norm is not below the bound.

    Returns the decision and ``{"should_skip": ..., "norm_squared": ...}``; a NaN norm skips.

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.skip_large_updates([torch.tensor([3.0, 4.0])], torch.tensor(0), None, 20.0)
    (tensor(True), {'should_skip': tensor(True), 'norm_squared': tensor(25.)})
    """
    del gradient_step, params
    leaves = _flatten(updates)[0]
    squares = [x.square().sum() for x in leaves]
    norm_sq = torch.stack(squares).sum() if squares else torch.zeros(())
    should_skip = torch.logical_not(norm_sq < max_squared_norm)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


class MultiSteps:
    """Gradient accumulation: the inner optimizer steps once every ``k`` micro-batches.

    Each call to :meth:`update` adds the gradients to a running mean (or sum) and returns zero
    updates, except at the ``k``-th call, which passes the mean to the inner optimizer,
    returns its updates and resets the accumulator. ``k`` may follow a schedule of the number
    of inner steps taken (to grow the batch size during training). The decision is made with
    tensors, so a step works under ``torch.compile`` and ``vmap``.

    Unlike optax, whose accumulator defaults to float32, the accumulator defaults to each
    parameter's dtype promoted to at least float32 (bfloat16 accumulates in float32, float64
    stays float64).

    Args:
        opt: the inner optimizer.
        every_k_schedule: ``k`` (a positive int), or a function of ``gradient_step`` giving it.
        use_grad_mean: average the accumulated gradients (else sum them).
        should_skip_update_fn: ``f(updates, gradient_step, params) -> (skip, info)``, with
            ``skip`` a 0-d bool tensor: a skipped micro-batch leaves the state as it was
            (except ``skip_state = info``), e.g. :func:`skip_not_finite`.
        accumulator_dtype: the accumulator's dtype (default: see above).

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.MultiSteps(optim.sgd(1.0), every_k_schedule=2)
    >>> params = torch.tensor([0.0])
    >>> state = opt.init(params)
    >>> u, state = opt.update(torch.tensor([1.0]), state, params)
    >>> u  # still accumulating
    tensor([0.])
    >>> u, state = opt.update(torch.tensor([3.0]), state, params)
    >>> u  # -1.0 * mean([1.0, 3.0])
    tensor([-2.])
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[torch.Tensor], int | torch.Tensor],
        *,
        use_grad_mean: bool = True,
        should_skip_update_fn: ShouldSkipUpdateFn | None = None,
        accumulator_dtype: torch.dtype | None = None,
    ) -> None:
        _check_transformation("MultiSteps", opt, "opt")
        if isinstance(every_k_schedule, bool) or not (
            callable(every_k_schedule) or isinstance(every_k_schedule, int)
        ):
            raise TypeError(
                "funcgrad.optim.MultiSteps: every_k_schedule must be a positive int or a "
                "function of the gradient step returning one, got "
                f"{_api_util.describe(every_k_schedule)}."
            )
        if isinstance(every_k_schedule, int) and every_k_schedule < 1:
            raise ValueError(
                "funcgrad.optim.MultiSteps: every_k_schedule must be at least 1 (the number of "
                f"micro-batches per update), got {every_k_schedule}."
            )
        self._opt = opt
        self._every_k_schedule = every_k_schedule
        self._use_grad_mean = use_grad_mean
        self._should_skip_update_fn = should_skip_update_fn
        self._accumulator_dtype = accumulator_dtype

    @property
    def inner_opt(self) -> GradientTransformation:
        """The wrapped optimizer."""
        return self._opt

    def _acc_dtype(self, x: torch.Tensor) -> torch.dtype:
        if self._accumulator_dtype is not None:
            return self._accumulator_dtype
        return torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else x.dtype

    def init(self, params: Params) -> MultiStepsState:
        """The initial state: zero counters, the inner optimizer's state, a zero accumulator."""
        leaves, treedef = _flatten(params)
        acc = treedef.unflatten([torch.zeros_like(x, dtype=self._acc_dtype(x)) for x in leaves])
        gradient_step = new_count(leaves)
        skip_state: PyTree = ()
        if self._should_skip_update_fn is not None:
            zeros = treedef.unflatten(_foreach.zeros_like(leaves))
            skip_state = self._should_skip_update_fn(zeros, gradient_step, params)[1]
        return MultiStepsState(
            new_count(leaves), gradient_step, self._opt.init(params), acc, skip_state
        )

    def update(
        self, updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        """Accumulates ``updates``; returns the inner optimizer's updates every ``k``-th call
        and zeros otherwise."""
        name = "MultiSteps"
        _check_state(name, state, MultiStepsState)
        g, treedef = _flatten(updates)
        acc = flat_like(name, "state's accumulated gradients", state.acc_grads, treedef, updates)
        k = self._every_k_schedule
        k_steps = evaluate_schedule(name, k, state.gradient_step) if callable(k) else k
        mini_step = state.mini_step
        g_acc = [x.to(a.dtype) for x, a in zip(g, acc)]
        if self._use_grad_mean:  # Welford's running mean, as optax
            weight = 1.0 / (mini_step + 1).to(scalar_dtype(acc))
            acc = _foreach.add(acc, _foreach.sub(g_acc, acc), weight)
        else:
            acc = _foreach.add(acc, g_acc)
        inner_in = treedef.unflatten([a.to(x.dtype) for a, x in zip(acc, g)])
        new, inner_state = self._opt.update(inner_in, state.inner_opt_state, params)
        emit = mini_step == k_steps - 1
        new_leaves, new_def = _flatten(new)
        out = [torch.where(emit, u, 0.0) for u in new_leaves]
        new_state = MultiStepsState(
            (safe_increment(mini_step) % k_steps).to(torch.int32),
            torch.where(emit, safe_increment(state.gradient_step), state.gradient_step),
            _where(name, emit, inner_state, state.inner_opt_state),
            treedef.unflatten([torch.where(emit, 0.0, a) for a in acc]),
            state.skip_state,
        )
        if self._should_skip_update_fn is None:
            return new_def.unflatten(out), new_state
        return self._skip(updates, state, params, new_def.unflatten(out), new_state)

    def _skip(
        self,
        updates: Updates,
        state: MultiStepsState,
        params: Params | None,
        new: Updates,
        new_state: MultiStepsState,
    ) -> tuple[Updates, MultiStepsState]:
        """Keeps the old state and returns zeros where ``should_skip_update_fn`` says so."""
        assert self._should_skip_update_fn is not None
        skip, skip_state = self._should_skip_update_fn(updates, state.gradient_step, params)
        if not (isinstance(skip, torch.Tensor) and skip.dtype == torch.bool and skip.dim() == 0):
            raise ValueError(
                "funcgrad.optim.MultiSteps: should_skip_update_fn must return (skip, info) with "
                f"skip a 0-d bool tensor, but skip is {_api_util.describe(skip)}."
            )
        leaves, treedef = _flatten(new)
        mini_step, gradient_step, inner_state, acc = _where(
            "MultiSteps", skip, state[:4], new_state[:4]
        )
        new = treedef.unflatten([torch.where(skip, 0.0, u) for u in leaves])
        return new, MultiStepsState(mini_step, gradient_step, inner_state, acc, skip_state)

    def has_updated(self, state: MultiStepsState) -> torch.Tensor:
        """Whether the last :meth:`update` stepped the inner optimizer (a 0-d bool tensor)."""
        return torch.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformation:
        """This wrapper as a :class:`GradientTransformation` (to chain or mask it)."""
        return GradientTransformation(self.init, self.update)


# --------------------------------------------------------------------------------------------
# Non-finite updates
# --------------------------------------------------------------------------------------------


class ApplyIfFiniteState(NamedTuple):
    """The state of :func:`apply_if_finite`.

    Attributes:
        notfinite_count: consecutive non-finite updates so far (reset by a finite one).
        last_finite: whether the last update was finite (0-d bool).
        total_notfinite: non-finite updates since ``init`` (never reset).
        inner_state: the inner transformation's state.

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.apply_if_finite(optim.identity(), 3).init(torch.zeros(1)).last_finite
    tensor(True)
    """

    notfinite_count: torch.Tensor
    last_finite: torch.Tensor
    total_notfinite: torch.Tensor
    inner_state: OptState


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformation:
    """Skips updates with an inf or NaN: returns zeros and keeps the inner state, unless more
    than ``max_consecutive_errors`` non-finite updates came in a row (then it applies them).

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.apply_if_finite(optim.sgd(1.0), max_consecutive_errors=2)
    >>> params = torch.tensor([1.0])
    >>> u, state = opt.update(torch.tensor([float("nan")]), opt.init(params), params)
    >>> u, state.notfinite_count
    (tensor([0.]), tensor(1, dtype=torch.int32))
    """
    name = "apply_if_finite"
    _check_transformation(name, inner)
    if (
        not isinstance(max_consecutive_errors, int)
        or isinstance(max_consecutive_errors, bool)
        or max_consecutive_errors < 0
    ):
        raise ValueError(
            f"funcgrad.optim.{name}: max_consecutive_errors must be a non-negative int, got "
            f"{_api_util.describe(max_consecutive_errors)}."
        )

    def init(params: Params) -> ApplyIfFiniteState:
        leaves = _flatten(params)[0]
        count = new_count(leaves)
        return ApplyIfFiniteState(  # two distinct counters: aliased state would recompile a jit
            count,
            torch.ones((), dtype=torch.bool, device=count.device),
            count.clone(),
            inner.init(params),
        )

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        _check_state(name, state, ApplyIfFiniteState)
        leaves = _flatten(updates)[0]
        isfinite = state.last_finite.new_ones(())
        if leaves:
            isfinite = torch.stack([torch.isfinite(x).all() for x in leaves]).all()
        notfinite_count = torch.where(
            isfinite, torch.zeros_like(state.notfinite_count), safe_increment(state.notfinite_count)
        )
        apply = torch.logical_or(isfinite, notfinite_count > max_consecutive_errors)
        new, inner_state = inner.update(updates, state.inner_state, params)
        new_leaves, new_def = _flatten(new)
        return new_def.unflatten([torch.where(apply, u, 0.0) for u in new_leaves]), (
            ApplyIfFiniteState(
                notfinite_count,
                isfinite,
                torch.where(isfinite, state.total_notfinite, safe_increment(state.total_notfinite)),
                _where(name, apply, inner_state, state.inner_state),
            )
        )

    return GradientTransformation(init, update)
