"""Core gradient transformations: scaling, momentum, Adam's moments, weight decay, clipping."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .._api_util import broadcast_prefix
from .._typing import PyTree
from . import _foreach
from ._base import (
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    check_learning_rate,
    evaluate_schedule,
    flat_like,
    init_empty,
    new_count,
    require_params,
    safe_increment,
    zeros_tree,
)
from ._base import (
    flatten as _flatten,
)

__all__ = [
    "AddDecayedWeightsState",
    "ScaleByAdamState",
    "ScaleByScheduleState",
    "TraceState",
    "ZeroNansState",
    "add_decayed_weights",
    "clip",
    "clip_by_global_norm",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "trace",
    "zero_nans",
]


def scalar_dtype(leaves: list[torch.Tensor]) -> torch.dtype:
    """The dtype for step-dependent scalars: the leaves' widest float, at least float32."""
    dtype = torch.float32
    for x in leaves:
        if x.is_floating_point():
            dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def bias_corrections(
    count: torch.Tensor, decays: tuple[float, ...], dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """``1 - decay**count`` for each decay, as 0-d tensors of ``dtype``.

    Computed in float64 where the device has it (as torch.optim does with Python floats): in
    float32, ``1 - 0.999**1`` loses four digits to cancellation.
    """
    wide = torch.float64 if count.device.type in ("cpu", "cuda") else dtype
    t = count.to(wide)
    # exp(t log d) rather than d**t: equal in float64 to within a few ulps of 1 - d**t
    # (relative 4e-15 for t up to 1e6), and under jit inductor computes an exp once per step,
    # where it inlines a pow into every fused elementwise kernel (two float64 pows per vector).
    return tuple((1.0 - torch.exp(t * math.log(d))).to(dtype) for d in decays)


def adam_moments(
    mu: list[torch.Tensor], nu: list[torch.Tensor], g: list[torch.Tensor], b1: float, b2: float
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Adam's moment updates ``mu + (1 - b1)(g - mu)`` and ``b2 nu + (1 - b2) g^2``."""
    mu = _foreach.lerp(mu, g, 1.0 - b1)
    nu = _foreach.addcmul_(_foreach.scale(nu, b2), g, g, 1.0 - b2)
    return mu, nu


# --------------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------------


def scale(step_size: float | torch.Tensor) -> GradientTransformation:
    """Multiplies every update by ``step_size`` (a number or a 0-d tensor).

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.scale(-2.0).update({"w": torch.tensor([1.0, 3.0])}, optim.EmptyState())[0]
    {'w': tensor([-2., -6.])}
    """

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        leaves, treedef = _flatten(updates)
        return treedef.unflatten(_foreach.scale(leaves, step_size)), state

    return GradientTransformation(init_empty, update)


class ScaleByScheduleState(NamedTuple):
    """The step count of :func:`scale_by_schedule`."""

    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count, as in optax


def scale_by_schedule(step_size_fn: Any) -> GradientTransformation:
    """Multiplies updates by ``step_size_fn(count)``, then increments the step count.

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.scale_by_schedule(lambda count: 0.5**count)
    >>> state = t.init([torch.zeros(1)])
    >>> u, state = t.update([torch.ones(1)], state)
    >>> u, state = t.update([torch.ones(1)], state)
    >>> u
    [tensor([0.5000])]
    """
    if not callable(step_size_fn):
        raise TypeError(
            "funcgrad.optim.scale_by_schedule: expected a schedule (a function of the step "
            f"count), got {type(step_size_fn).__name__}."
        )

    def init(params: Params) -> ScaleByScheduleState:
        return ScaleByScheduleState(new_count(_flatten(params)[0]))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        leaves, treedef = _flatten(updates)
        step = evaluate_schedule("scale_by_schedule", step_size_fn, state.count)
        new = _foreach.scale(leaves, step)
        return treedef.unflatten(new), ScaleByScheduleState(safe_increment(state.count))

    return GradientTransformation(init, update)


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> GradientTransformation:
    """Scales updates by the learning rate (negated with ``flip_sign``, for descent).

    ``learning_rate`` is a number, a 0-d tensor (change it in place between steps: a jitted
    step does not recompile) or a schedule of the step count.

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.scale_by_learning_rate(0.1)
    >>> t.update([torch.tensor(2.0)], t.init([torch.tensor(0.0)]))[0]
    [tensor(-0.2000)]
    """
    check_learning_rate("scale_by_learning_rate", learning_rate)
    sign = -1.0 if flip_sign else 1.0
    if callable(learning_rate):
        schedule = learning_rate
        return scale_by_schedule(
            lambda count: sign * evaluate_schedule("scale_by_learning_rate", schedule, count)
        )
    if isinstance(learning_rate, torch.Tensor):
        # Read at every update, so that changing the tensor in place between steps takes effect.
        lr = learning_rate

        def update(
            updates: Updates, state: OptState, params: Params | None = None
        ) -> tuple[Updates, OptState]:
            del params
            leaves, treedef = _flatten(updates)
            return treedef.unflatten(_foreach.scale(leaves, sign * lr)), state

        return GradientTransformation(init_empty, update)
    return scale(sign * learning_rate)


# --------------------------------------------------------------------------------------------
# Moments
# --------------------------------------------------------------------------------------------


class ScaleByAdamState(NamedTuple):
    """Adam's step count and first (``mu``) and second (``nu``) moment estimates."""

    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count, as in optax
    mu: Updates
    nu: Updates


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float | torch.Tensor = 0.0,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Rescales updates by Adam's bias-corrected moment estimates (Kingma & Ba, 2014).

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \quad
        u_t = \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t) + \epsilon_{root}} + \epsilon}

    With ``nesterov=True`` the first moment is replaced by its Nesterov look-ahead
    :math:`\beta_1 m_t / (1 - \beta_1^{t+1}) + (1 - \beta_1) g_t / (1 - \beta_1^t)` (optax's
    NAdam).

    Args:
        b1: decay of the first moment.
        b2: decay of the second moment.
        eps: added to the denominator outside the square root (as torch.optim.Adam does).
        eps_root: added inside the square root (0 in torch.optim.Adam).
        nesterov: use the Nesterov look-ahead first moment.

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.scale_by_adam()
    >>> u, _ = t.update([torch.tensor([2.0, -3.0])], t.init([torch.zeros(2)]))
    >>> u  # the first step of Adam is the sign of the gradient
    [tensor([ 1.0000, -1.0000])]
    """
    name = "scale_by_adam"

    def init(params: Params) -> ScaleByAdamState:
        return ScaleByAdamState(
            new_count(_flatten(params)[0]), zeros_tree(params), zeros_tree(params)
        )

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        g, treedef = _flatten(updates)
        mu = flat_like(name, "state's first moment (mu)", state.mu, treedef, updates)
        nu = flat_like(name, "state's second moment (nu)", state.nu, treedef, updates)
        count = safe_increment(state.count)
        mu, nu = adam_moments(mu, nu, g, b1, b2)
        bc1, bc2 = bias_corrections(count, (b1, b2), scalar_dtype(g))
        if nesterov:
            (next_bc1,) = bias_corrections(count + 1, (b1,), scalar_dtype(g))
            numerator = _foreach.add(_foreach.scale(mu, b1 / next_bc1), g, (1.0 - b1) / bc1)
            fold = None
        else:
            # (mu / bc1) / (sqrt(nu / bc2) + eps) == mu / (bc1 * sqrt(nu / bc2) + bc1 * eps):
            # folding 1 / bc1 into the denominator's constants saves a pass over the leaves.
            numerator, fold = mu, bc1
        if not isinstance(eps_root, torch.Tensor) and eps_root == 0.0:
            # torch.optim.Adam's order of operations: sqrt(nu) / sqrt(bc2) + eps
            factor = 1.0 / bc2.sqrt() if fold is None else fold / bc2.sqrt()
            denom = _foreach.scale_(_foreach.sqrt(nu), factor)
        else:
            denom = _foreach.sqrt(_foreach.add_scalar_(_foreach.scale(nu, 1.0 / bc2), eps_root))
            denom = denom if fold is None else _foreach.scale_(denom, fold)
        denom = _foreach.add_scalar_(denom, eps if fold is None else eps * fold)
        new = (
            _foreach.div(numerator, denom) if fold is not None else _foreach.div_(numerator, denom)
        )
        return treedef.unflatten(new), ScaleByAdamState(
            count, treedef.unflatten(mu), treedef.unflatten(nu)
        )

    return GradientTransformation(init, update)


class TraceState(NamedTuple):
    """The momentum buffer of :func:`trace`."""

    trace: Updates


def trace(decay: float, nesterov: bool = False) -> GradientTransformation:
    r"""Momentum: :math:`t_k = g_k + \text{decay} \cdot t_{k-1}`, the update is :math:`t_k`
    (or :math:`g_k + \text{decay} \cdot t_k` with ``nesterov=True``), as in torch.optim.SGD
    with ``dampening=0``.

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.trace(0.9)
    >>> state = t.init([torch.zeros(1)])
    >>> u, state = t.update([torch.ones(1)], state)
    >>> u, state = t.update([torch.ones(1)], state)
    >>> u
    [tensor([1.9000])]
    """
    name = "trace"

    def init(params: Params) -> TraceState:
        leaves, treedef = _flatten(params)
        return TraceState(treedef.unflatten(_foreach.zeros_like(leaves)))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        g, treedef = _flatten(updates)
        buf = flat_like(name, "state's momentum buffer", state.trace, treedef, updates)
        new_trace = _foreach.add(g, buf, decay)
        new = _foreach.add(g, new_trace, decay) if nesterov else new_trace
        return treedef.unflatten(new), TraceState(treedef.unflatten(new_trace))

    return GradientTransformation(init, update)


# --------------------------------------------------------------------------------------------
# Weight decay and clipping
# --------------------------------------------------------------------------------------------


class AddDecayedWeightsState(NamedTuple):
    """The (empty) state of :func:`add_decayed_weights`."""


def _mask_leaves(name: str, mask: Any, params: Params) -> list[bool]:
    """One bool per parameter leaf from a mask tree (a pytree prefix) or a callable."""
    tree = mask(params) if callable(mask) else mask
    values = broadcast_prefix(
        f"optim.{name}",
        tree,
        params,
        "params",
        "mask",
        "Use True or False for a whole subtree, or mirror its structure exactly.",
    )
    for v in values:
        if not isinstance(v, bool):
            raise TypeError(
                f"funcgrad.optim.{name}: every leaf of the mask must be a bool, got "
                f"{type(v).__name__} ({v!r})."
            )
    return values


def add_decayed_weights(
    weight_decay: float | torch.Tensor = 0.0, mask: Any = None
) -> GradientTransformation:
    """Adds ``weight_decay * params`` to the updates (L2 regularisation / decoupled decay).

    Args:
        weight_decay: the coefficient (a number or a 0-d tensor).
        mask: a pytree prefix of the parameters with bool leaves, or a function of the
            parameters returning one: only leaves marked ``True`` are decayed.

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.add_decayed_weights(0.1, mask={"w": True, "b": False})
    >>> params = {"w": torch.tensor(2.0), "b": torch.tensor(2.0)}
    >>> t.update({"w": torch.tensor(0.0), "b": torch.tensor(0.0)}, t.init(params), params)[0]
    {'w': tensor(0.2000), 'b': tensor(0.)}
    """
    name = "add_decayed_weights"
    check_learning_rate(name, weight_decay, "weight_decay")

    def init(params: Params) -> AddDecayedWeightsState:
        del params
        return AddDecayedWeightsState()

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        hint = ""
        if isinstance(weight_decay, torch.Tensor):
            hint = (
                " weight_decay is a tensor here (inject_hyperparams makes every numeric "
                "hyperparameter one, even a default 0.0), so the decay is part of every step: "
                "pass params, or static_args=('weight_decay',) to inject_hyperparams for none."
            )
        p = require_params(name, params, hint)
        g, treedef = _flatten(updates)
        p_leaves = flat_like(name, "params", p, treedef, updates)
        if mask is None:
            return treedef.unflatten(_foreach.add(g, p_leaves, weight_decay)), state
        keep = _mask_leaves(name, mask, p)
        idx = [i for i, k in enumerate(keep) if k]
        decayed = _foreach.add([g[i] for i in idx], [p_leaves[i] for i in idx], weight_decay)
        new = list(g)
        for i, d in zip(idx, decayed):
            new[i] = d
        return treedef.unflatten(new), state

    return GradientTransformation(init, update)


def clip(max_delta: float) -> GradientTransformation:
    """Clips every update element to ``[-max_delta, max_delta]``.

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.clip(1.0).update([torch.tensor([-3.0, 0.5, 2.0])], optim.EmptyState())[0]
    [tensor([-1.0000,  0.5000,  1.0000])]
    """
    check_learning_rate("clip", max_delta, "max_delta")

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        leaves, treedef = _flatten(updates)
        return treedef.unflatten(_foreach.clamp(leaves, -max_delta, max_delta)), state

    return GradientTransformation(init_empty, update)


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scales all updates down together when their global L2 norm exceeds ``max_norm``.

    The updates are multiplied by ``max_norm / norm`` when ``norm > max_norm`` (as optax does;
    ``torch.nn.utils.clip_grad_norm_`` divides by ``norm + 1e-6`` instead).

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.clip_by_global_norm(1.0).update([torch.tensor([3.0, 4.0])], optim.EmptyState())[0]
    [tensor([0.6000, 0.8000])]
    """
    check_learning_rate("clip_by_global_norm", max_norm, "max_norm")

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        leaves, treedef = _flatten(updates)
        if not leaves:
            return updates, state
        norm = _foreach.sum_of_squares(leaves).sqrt()
        factor = torch.where(norm < max_norm, torch.ones_like(norm), max_norm / norm)
        return treedef.unflatten(_foreach.scale(leaves, factor)), state

    return GradientTransformation(init_empty, update)


class ZeroNansState(NamedTuple):
    """For each leaf, whether the last update had a NaN (a 0-d bool tensor)."""

    found_nan: PyTree


def zero_nans() -> GradientTransformation:
    """Replaces NaNs in the updates by zeros and records, per leaf, whether there were any.

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.zero_nans()
    >>> u, state = t.update([torch.tensor([1.0, float("nan")])], t.init([torch.zeros(2)]))
    >>> u, state.found_nan
    ([tensor([1., 0.])], [tensor(True)])
    """

    def init(params: Params) -> ZeroNansState:
        leaves, treedef = _flatten(params)
        return ZeroNansState(
            treedef.unflatten([torch.zeros((), dtype=torch.bool, device=x.device) for x in leaves])
        )

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        leaves, treedef = _flatten(updates)
        nans = [torch.isnan(x) for x in leaves]
        found = [n.any() for n in nans]
        new = [torch.where(n, torch.zeros_like(x), x) for n, x in zip(nans, leaves)]
        return treedef.unflatten(new), ZeroNansState(treedef.unflatten(found))

    return GradientTransformation(init, update)
