"""Adaptive learning rates: RMSprop, Adagrad, Adadelta, Adamax, RAdam and NAdam.

# NOTE [torch or optax numerics in the adaptive family]
# torch.optim and optax define these optimizers differently in small ways: where epsilon goes
# (inside or outside a square root, before or after bias correction), initial accumulators,
# default decays, NAdam's momentum schedule, RAdam's threshold test, where momentum sits
# relative to the learning rate. The rule here:
# - Building blocks (scale_by_rms, scale_by_rss, ...) carry optax's names, signatures and
#   defaults, so ported optax code computes the same numbers; keyword flags select torch's form.
# - Aliases (rmsprop, adagrad, ...) follow the torch.optim class of the same name by default
#   (same defaults, same trajectory), pass the flags to the building blocks, and expose the
#   flags so that optax's form is one keyword away. Each alias's docstring lists the
#   differences. Hyperparameters other than the learning rate and weight decay are numbers.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import optree
import torch

from .._typing import PyTree
from ..tree import NAMESPACE
from . import _foreach
from ._base import (
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    chain,
    check_learning_rate,
    evaluate_schedule,
    flat_like,
    identity,
    new_count,
    safe_increment,
)
from ._transforms import (
    ScaleByScheduleState,
    add_decayed_weights,
    bias_corrections,
    scalar_dtype,
    scale_by_learning_rate,
    trace,
)

__all__ = [
    "ScaleByAdaDeltaState",
    "ScaleByAdamaxState",
    "ScaleByNadamState",
    "ScaleByRStdDevState",
    "ScaleByRadamState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "adadelta",
    "adagrad",
    "adamax",
    "nadam",
    "radam",
    "rmsprop",
    "scale_by_adadelta",
    "scale_by_adamax",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_stddev",
]

Tensors = list[torch.Tensor]


def _flatten(tree: PyTree) -> tuple[Tensors, Any]:
    return optree.tree_flatten(tree, namespace=NAMESPACE)


def _zeros(params: Params) -> PyTree:
    leaves, treedef = _flatten(params)
    return treedef.unflatten(_foreach.zeros_like(leaves))


def _check(name: str, what: str, value: Any, low: float, high: float, *, open_high: bool) -> None:
    """A number hyperparameter must lie in ``[low, high]`` (``[low, high)`` with open_high)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"funcgrad.optim.{name}: {what} must be a number, got {type(value).__name__}."
        )
    v = float(value)
    if not (low <= v < high if open_high else low <= v <= high):
        interval = f"[{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"funcgrad.optim.{name}: {what} must be in {interval}, got {v}.")


def _decay(name: str, what: str, value: Any) -> None:
    _check(name, what, value, 0.0, 1.0, open_high=False)


def _beta(name: str, what: str, value: Any) -> None:
    _check(name, what, value, 0.0, 1.0, open_high=True)


def _non_negative(name: str, what: str, value: Any) -> None:
    _check(name, what, value, 0.0, math.inf, open_high=False)


def _adam_like(name: str, b1: float, b2: float, eps: float, eps_root: float = 0.0) -> None:
    _beta(name, "b1", b1)
    _beta(name, "b2", b2)
    _non_negative(name, "eps", eps)
    _non_negative(name, "eps_root", eps_root)


def _denominator(v: Tensors, eps: float, eps_in_sqrt: bool) -> Tensors:
    """``sqrt(v + eps)`` or ``sqrt(v) + eps``, as new tensors."""
    if eps_in_sqrt:
        return _foreach.sqrt(_foreach.add_scalar(v, eps))
    return _foreach.add_scalar_(_foreach.sqrt(v), eps)


# --------------------------------------------------------------------------------------------
# RMSprop and Adagrad
# --------------------------------------------------------------------------------------------


class ScaleByRmsState(NamedTuple):
    """The step count and the moving average of squared updates (``nu``) of :func:`scale_by_rms`.

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.scale_by_rms().init({"w": torch.zeros(2)})
    ScaleByRmsState(count=tensor(0, dtype=torch.int32), nu={'w': tensor([0., 0.])})
    """

    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count, as in optax
    nu: Updates


def scale_by_rms(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    *,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    r"""Divides updates by the root of the moving average of their squares (RMSprop).

    .. math::
        v_t = \rho v_{t-1} + (1 - \rho) g_t^2, \quad
        u_t = g_t / \sqrt{v_t + \epsilon} \;\text{ or }\; g_t / (\sqrt{v_t} + \epsilon)

    Defaults are optax's (``eps`` inside the square root); ``eps_in_sqrt=False`` gives
    torch.optim.RMSprop's denominator. For the centered variant see :func:`scale_by_stddev`.

    Args:
        decay: the decay :math:`\rho` of the moving average (torch's ``alpha``).
        eps: added to the denominator.
        initial_scale: the initial value of :math:`v` (0 in torch).
        eps_in_sqrt: add ``eps`` inside the square root (optax) or outside (torch).
        bias_correction: divide :math:`v_t` by :math:`1 - \rho^t`.

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.scale_by_rms(decay=0.75, eps=0.0)
    >>> t.update([torch.tensor([2.0, -4.0])], t.init([torch.zeros(2)]))[0]  # g / sqrt(g^2 / 4)
    [tensor([ 2., -2.])]
    """
    name = "scale_by_rms"
    _decay(name, "decay", decay)
    _non_negative(name, "eps", eps)
    _non_negative(name, "initial_scale", initial_scale)

    def init(params: Params) -> ScaleByRmsState:
        leaves, treedef = _flatten(params)
        nu = treedef.unflatten([torch.full_like(x, initial_scale) for x in leaves])
        return ScaleByRmsState(new_count(leaves), nu)

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        g, treedef = _flatten(updates)
        nu = flat_like(name, "state's second moment (nu)", state.nu, treedef, updates)
        count = safe_increment(state.count)
        nu = _foreach.addcmul_(_foreach.scale(nu, decay), g, g, 1.0 - decay)
        nu_hat = nu
        if bias_correction:
            (bc,) = bias_corrections(count, (decay,), scalar_dtype(g))
            nu_hat = _foreach.scale(nu, 1.0 / bc)
        new = _foreach.div(g, _denominator(nu_hat, eps, eps_in_sqrt))
        return treedef.unflatten(new), ScaleByRmsState(count, treedef.unflatten(nu))

    return GradientTransformation(init, update)


class ScaleByRStdDevState(NamedTuple):
    """The step count and the moving averages of updates (``mu``) and of their squares (``nu``)
    of :func:`scale_by_stddev`.

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.scale_by_stddev().init([torch.zeros(1)]).mu
    [tensor([0.])]
    """

    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count, as in optax
    mu: Updates
    nu: Updates


def scale_by_stddev(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    *,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    r"""Divides updates by their moving standard deviation (centered RMSprop).

    .. math::
        m_t = \rho m_{t-1} + (1 - \rho) g_t, \quad
        v_t = \rho v_{t-1} + (1 - \rho) g_t^2, \quad
        u_t = g_t / \sqrt{v_t - m_t^2 + \epsilon} \;\text{ or }\;
        g_t / (\sqrt{v_t - m_t^2} + \epsilon)

    Defaults are optax's; ``eps_in_sqrt=False`` gives torch.optim.RMSprop(centered=True)'s
    denominator. Arguments as in :func:`scale_by_rms` (the bias correction divides both moments).

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.scale_by_stddev(decay=0.5, eps=0.0)
    >>> t.update([torch.tensor([2.0])], t.init([torch.zeros(1)]))[0]  # 2 / sqrt(2 - 1)
    [tensor([2.])]
    """
    name = "scale_by_stddev"
    _decay(name, "decay", decay)
    _non_negative(name, "eps", eps)
    _non_negative(name, "initial_scale", initial_scale)

    def init(params: Params) -> ScaleByRStdDevState:
        leaves, treedef = _flatten(params)
        nu = treedef.unflatten([torch.full_like(x, initial_scale) for x in leaves])
        return ScaleByRStdDevState(new_count(leaves), _zeros(params), nu)

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        g, treedef = _flatten(updates)
        mu = flat_like(name, "state's first moment (mu)", state.mu, treedef, updates)
        nu = flat_like(name, "state's second moment (nu)", state.nu, treedef, updates)
        count = safe_increment(state.count)
        mu = _foreach.lerp(mu, g, 1.0 - decay)
        nu = _foreach.addcmul_(_foreach.scale(nu, decay), g, g, 1.0 - decay)
        mu_hat, nu_hat = mu, nu
        if bias_correction:
            correction = 1.0 / bias_corrections(count, (decay,), scalar_dtype(g))[0]
            mu_hat, nu_hat = _foreach.scale(mu, correction), _foreach.scale(nu, correction)
        variance = _foreach.addcmul(nu_hat, mu_hat, mu_hat, -1.0)
        new = _foreach.div(g, _denominator(variance, eps, eps_in_sqrt))
        state = ScaleByRStdDevState(count, treedef.unflatten(mu), treedef.unflatten(nu))
        return treedef.unflatten(new), state

    return GradientTransformation(init, update)


class ScaleByRssState(NamedTuple):
    """The running sum of squared updates of :func:`scale_by_rss` (Adagrad).

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.scale_by_rss().init([torch.zeros(2)])
    ScaleByRssState(sum_of_squares=[tensor([0.1000, 0.1000])])
    """

    sum_of_squares: Updates


def scale_by_rss(
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    eps_in_sqrt: bool = True,
) -> GradientTransformation:
    r"""Divides updates by the root of the sum of all squared updates so far (Adagrad).

    .. math::
        s_t = s_{t-1} + g_t^2, \quad
        u_t = g_t / \sqrt{s_t + \epsilon} \;\text{ or }\; g_t / (\sqrt{s_t} + \epsilon)

    Defaults are optax's; torch.optim.Adagrad uses ``initial_accumulator_value=0``,
    ``eps=1e-10`` and ``eps_in_sqrt=False``. With ``eps=0`` a leaf whose updates have all been
    zero gets ``0 / 0`` (NaN) where optax returns 0.

    Args:
        initial_accumulator_value: the initial value of :math:`s`.
        eps: added to the denominator.
        eps_in_sqrt: add ``eps`` inside the square root (optax) or outside (torch).

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.scale_by_rss(initial_accumulator_value=0.0, eps=0.0)
    >>> state = t.init([torch.zeros(1)])
    >>> _, state = t.update([torch.tensor([3.0])], state)
    >>> t.update([torch.tensor([4.0])], state)[0]  # 4 / sqrt(9 + 16)
    [tensor([0.8000])]
    """
    name = "scale_by_rss"
    _non_negative(name, "initial_accumulator_value", initial_accumulator_value)
    _non_negative(name, "eps", eps)

    def init(params: Params) -> ScaleByRssState:
        leaves, treedef = _flatten(params)
        return ScaleByRssState(
            treedef.unflatten([torch.full_like(x, initial_accumulator_value) for x in leaves])
        )

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        g, treedef = _flatten(updates)
        s = flat_like(name, "state's sum of squares", state.sum_of_squares, treedef, updates)
        s = _foreach.addcmul(s, g, g, 1.0)
        new = _foreach.div(g, _denominator(s, eps, eps_in_sqrt))
        return treedef.unflatten(new), ScaleByRssState(treedef.unflatten(s))

    return GradientTransformation(init, update)


class ScaleByAdaDeltaState(NamedTuple):
    """The moving averages of squared updates (``e_g``) and squared steps (``e_x``) of
    :func:`scale_by_adadelta`.

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.scale_by_adadelta().init([torch.zeros(1)])
    ScaleByAdaDeltaState(e_g=[tensor([0.])], e_x=[tensor([0.])])
    """

    e_g: Updates
    e_x: Updates


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> GradientTransformation:
    r"""Adadelta's unit-correcting rescaling (Zeiler, 2012, https://arxiv.org/abs/1212.5701).

    .. math::
        v_t = \rho v_{t-1} + (1 - \rho) g_t^2, \quad
        u_t = \frac{\sqrt{x_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}} g_t, \quad
        x_t = \rho x_{t-1} + (1 - \rho) u_t^2

    The same numerics in torch.optim.Adadelta and optax.

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.scale_by_adadelta(rho=0.0, eps=1.0)
    >>> t.update([torch.tensor([3.0])], t.init([torch.zeros(1)]))[0]  # 3 * sqrt(1) / sqrt(9 + 1)
    [tensor([0.9487])]
    """
    name = "scale_by_adadelta"
    _decay(name, "rho", rho)
    _non_negative(name, "eps", eps)

    def init(params: Params) -> ScaleByAdaDeltaState:
        return ScaleByAdaDeltaState(_zeros(params), _zeros(params))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        g, treedef = _flatten(updates)
        e_g = flat_like(name, "state's squared-update average (e_g)", state.e_g, treedef, updates)
        e_x = flat_like(name, "state's squared-step average (e_x)", state.e_x, treedef, updates)
        e_g = _foreach.addcmul_(_foreach.scale(e_g, rho), g, g, 1.0 - rho)
        step = _foreach.div_(_denominator(e_x, eps, True), _denominator(e_g, eps, True))
        step = _foreach.mul(step, g)
        e_x = _foreach.addcmul_(_foreach.scale(e_x, rho), step, step, 1.0 - rho)
        state = ScaleByAdaDeltaState(treedef.unflatten(e_g), treedef.unflatten(e_x))
        return treedef.unflatten(step), state

    return GradientTransformation(init, update)


# --------------------------------------------------------------------------------------------
# Adam variants
# --------------------------------------------------------------------------------------------


class ScaleByAdamaxState(NamedTuple):
    """Adamax's step count, first moment (``mu``) and decayed infinity norm (``nu``).

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.scale_by_adamax().init([torch.zeros(1)]).nu
    [tensor([0.])]
    """

    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count, as in optax
    mu: Updates
    nu: Updates


def scale_by_adamax(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    r"""Adamax: Adam with the infinity norm (Kingma & Ba, 2014, https://arxiv.org/abs/1412.6980).

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
        u_t^{\infty} = \max(\beta_2 u_{t-1}^{\infty}, |g_t| + \epsilon), \quad
        u_t = \frac{m_t}{(1 - \beta_1^t)\, u_t^{\infty}}

    The same numerics in torch.optim.Adamax and optax.

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.scale_by_adamax()
    >>> t.update([torch.tensor([2.0, -3.0])], t.init([torch.zeros(2)]))[0]  # the sign at first
    [tensor([ 1., -1.])]
    """
    name = "scale_by_adamax"
    _beta(name, "b1", b1)
    _decay(name, "b2", b2)
    _non_negative(name, "eps", eps)

    def init(params: Params) -> ScaleByAdamaxState:
        return ScaleByAdamaxState(new_count(_flatten(params)[0]), _zeros(params), _zeros(params))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        g, treedef = _flatten(updates)
        mu = flat_like(name, "state's first moment (mu)", state.mu, treedef, updates)
        nu = flat_like(name, "state's infinity norm (nu)", state.nu, treedef, updates)
        count = safe_increment(state.count)
        mu = _foreach.lerp(mu, g, 1.0 - b1)
        nu = _foreach.maximum(_foreach.scale(nu, b2), _foreach.add_scalar_(_foreach.abs(g), eps))
        (bc1,) = bias_corrections(count, (b1,), scalar_dtype(g))
        new = _foreach.scale_(_foreach.div(mu, nu), 1.0 / bc1)
        state = ScaleByAdamaxState(count, treedef.unflatten(mu), treedef.unflatten(nu))
        return treedef.unflatten(new), state

    return GradientTransformation(init, update)


class ScaleByRadamState(NamedTuple):
    """RAdam's step count and first (``mu``) and second (``nu``) moment estimates.

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.scale_by_radam().init([torch.zeros(1)]).count
    tensor(0, dtype=torch.int32)
    """

    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count, as in optax
    mu: Updates
    nu: Updates


def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
    eps_before_bias_correction: bool = False,
) -> GradientTransformation:
    r"""Rectified Adam (Liu et al., 2020, https://arxiv.org/abs/1908.03265).

    With Adam's moments and :math:`\hat m_t = m_t / (1 - \beta_1^t)`,
    :math:`\rho_\infty = 2 / (1 - \beta_2) - 1` and
    :math:`\rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t)`:

    .. math::
        u_t = \begin{cases}
            r_t \, \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon) & \rho_t > \text{threshold} \\
            \hat m_t & \text{otherwise}
        \end{cases}, \quad
        r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}}

    Defaults are optax's. ``eps_before_bias_correction=True`` adds ``eps_root`` and ``eps`` to
    the raw second moment before the bias correction, :math:`\sqrt{1 - \beta_2^t} /
    (\sqrt{v_t + \epsilon_{root}} + \epsilon)`, as torch.optim.RAdam does (its ``eps`` is in
    effect larger by :math:`1 / \sqrt{1 - \beta_2^t}`). The test is strict as in torch (optax
    uses :math:`\ge`, which differs only when :math:`\rho_t` equals the threshold exactly).
    ``nesterov`` uses optax's Nesterov look-ahead moment (see :func:`scale_by_adam`).

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.scale_by_radam()
    >>> t.update([torch.tensor([0.5])], t.init([torch.zeros(1)]))[0]  # rho_1 = 1: the moment
    [tensor([0.5000])]
    """
    name = "scale_by_radam"
    _adam_like(name, b1, b2, eps, eps_root)
    _check(name, "threshold", threshold, -math.inf, math.inf, open_high=False)
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def init(params: Params) -> ScaleByRadamState:
        return ScaleByRadamState(new_count(_flatten(params)[0]), _zeros(params), _zeros(params))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        g, treedef = _flatten(updates)
        mu = flat_like(name, "state's first moment (mu)", state.mu, treedef, updates)
        nu = flat_like(name, "state's second moment (nu)", state.nu, treedef, updates)
        count = safe_increment(state.count)
        mu = _foreach.lerp(mu, g, 1.0 - b1)
        nu = _foreach.addcmul_(_foreach.scale(nu, b2), g, g, 1.0 - b2)
        t = count.to(scalar_dtype(g))
        bc1, bc2 = bias_corrections(count, (b1, b2), scalar_dtype(g))
        if nesterov:
            mu_hat = _foreach.add(_foreach.scale(mu, b1 / (1.0 - b1 ** (t + 1))), g, (1 - b1) / bc1)
        else:
            mu_hat = _foreach.scale(mu, 1.0 / bc1)
        rho = rho_inf - 2.0 * t * b2**t / bc2
        rect = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)).sqrt()
        rectified = rho > threshold
        # u = mu_hat / D with D = denom / r when rectified and D = 1 otherwise: no branch on a
        # tensor, so the step neither synchronises nor breaks a compiled graph, and vmaps.
        inv_rect = torch.where(rectified, rect.reciprocal(), torch.zeros_like(rect))
        if eps_before_bias_correction:
            v, inv_rect = nu, inv_rect / bc2.sqrt()
        else:
            v = _foreach.scale(nu, 1.0 / bc2)
        denom = _denominator(v, eps_root, True) if eps_root else _foreach.sqrt(v)
        denom = _foreach.add_scalar_(
            _foreach.scale_(_foreach.add_scalar_(denom, eps), inv_rect), 1.0 - rectified.to(t.dtype)
        )
        new = _foreach.div(mu_hat, denom)
        state = ScaleByRadamState(count, treedef.unflatten(mu), treedef.unflatten(nu))
        return treedef.unflatten(new), state

    return GradientTransformation(init, update)


class ScaleByNadamState(NamedTuple):
    """NAdam's step count, product of momentum coefficients :math:`\\prod_i \\mu_i` (a 0-d
    tensor), and first (``mu``) and second (``nu``) moment estimates.

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.scale_by_nadam().init([torch.zeros(1)]).mu_product
    tensor(1.)
    """

    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count, as in optax
    mu_product: torch.Tensor
    mu: Updates
    nu: Updates


def scale_by_nadam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    momentum_decay: float = 4e-3,
) -> GradientTransformation:
    r"""NAdam with torch.optim.NAdam's momentum schedule (Dozat, 2016,
    https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ).

    .. math::
        \mu_t = \beta_1 \left(1 - \tfrac12\, 0.96^{t \psi}\right), \quad
        u_t = \frac{(1 - \mu_t)\, g_t / (1 - \prod_{i \le t} \mu_i)
            + \mu_{t+1}\, m_t / (1 - \prod_{i \le t+1} \mu_i)}
            {\sqrt{v_t / (1 - \beta_2^t) + \epsilon_{root}} + \epsilon}

    with Adam's moments :math:`m_t, v_t` and :math:`\psi` = ``momentum_decay``. optax has no
    such schedule: ``optax.nadam`` is :func:`scale_by_adam` with ``nesterov=True``, which is
    this transformation with ``momentum_decay=math.inf`` (:math:`\mu_t = \beta_1`).

    The product :math:`\prod \mu_i` is kept in the parameters' widest float dtype (at least
    float32). torch keeps it in the default dtype: float64 parameters follow torch to float64
    rounding when ``torch.get_default_dtype()`` is float64; with torch's float32 default, torch
    rounds the product to float32 and the trajectories part by about 1e-6 (relative) in 50 steps.

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.scale_by_nadam(momentum_decay=float("inf"))
    >>> t.update([torch.tensor([2.0, -3.0])], t.init([torch.zeros(2)]))[0]  # 1 + 0.09 / 0.19
    [tensor([ 1.4737, -1.4737])]
    """
    name = "scale_by_nadam"
    _adam_like(name, b1, b2, eps, eps_root)
    _non_negative(name, "momentum_decay", momentum_decay)

    def init(params: Params) -> ScaleByNadamState:
        leaves = _flatten(params)[0]
        device = leaves[0].device if leaves else None
        one = torch.ones((), dtype=scalar_dtype(leaves), device=device)
        return ScaleByNadamState(new_count(leaves), one, _zeros(params), _zeros(params))

    def momentum(t: torch.Tensor) -> torch.Tensor:
        return b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        g, treedef = _flatten(updates)
        mu = flat_like(name, "state's first moment (mu)", state.mu, treedef, updates)
        nu = flat_like(name, "state's second moment (nu)", state.nu, treedef, updates)
        count = safe_increment(state.count)
        t = count.to(scalar_dtype(g))
        mu_t, mu_next = momentum(t), momentum(t + 1)
        mu_product = state.mu_product * mu_t
        mu = _foreach.lerp(mu, g, 1.0 - b1)
        nu = _foreach.addcmul_(_foreach.scale(nu, b2), g, g, 1.0 - b2)
        (bc2,) = bias_corrections(count, (b2,), scalar_dtype(g))
        nu_hat = _foreach.scale(nu, 1.0 / bc2)
        denom = _denominator(nu_hat, eps_root, True) if eps_root else _foreach.sqrt(nu_hat)
        denom = _foreach.add_scalar_(denom, eps)
        coef_g = (1.0 - mu_t) / (1.0 - mu_product)
        coef_m = mu_next / (1.0 - mu_product * mu_next)
        new = _foreach.div_(_foreach.add(_foreach.scale(g, coef_g), mu, coef_m), denom)
        state = ScaleByNadamState(count, mu_product, treedef.unflatten(mu), treedef.unflatten(nu))
        return treedef.unflatten(new), state

    return GradientTransformation(init, update)


# --------------------------------------------------------------------------------------------
# Aliases: torch.optim's numerics by default
# --------------------------------------------------------------------------------------------


def _weight_decay(name: str, weight_decay: float | torch.Tensor) -> GradientTransformation:
    check_learning_rate(name, weight_decay, "weight_decay")
    if isinstance(weight_decay, torch.Tensor) or weight_decay != 0:
        return add_decayed_weights(weight_decay)
    return identity()


def _coupled_or_decoupled(
    name: str, weight_decay: float | torch.Tensor, decoupled: bool
) -> tuple[GradientTransformation, GradientTransformation]:
    """Weight decay before the rescaling (L2) or after it (decoupled, as in AdamW)."""
    decay = _weight_decay(name, weight_decay)
    return (identity(), decay) if decoupled else (decay, identity())


def _lr(name: str, learning_rate: ScalarOrSchedule) -> GradientTransformation:
    check_learning_rate(name, learning_rate)
    return scale_by_learning_rate(learning_rate)


def nadam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    momentum_decay: float = 4e-3,
    weight_decay: float | torch.Tensor = 0.0,
    decoupled_weight_decay: bool = False,
) -> GradientTransformation:
    r"""NAdam: Adam with Nesterov momentum (Dozat, 2016,
    https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ), as torch.optim.NAdam.

    .. math::
        p_{t+1} = p_t - \eta \, u_t

    with :math:`u_t` of :func:`scale_by_nadam`, whose momentum coefficient
    :math:`\mu_t = \beta_1 (1 - \frac12 0.96^{t \psi})` warms up with the step count.

    The same trajectory as ``torch.optim.NAdam(lr, (b1, b2), eps, weight_decay,
    momentum_decay, decoupled_weight_decay)`` (see :func:`scale_by_nadam` for the dtype of
    :math:`\prod \mu_i`). ``optax.nadam`` has no momentum schedule: it is this optimizer with
    ``momentum_decay=math.inf`` (the same as :func:`adam` with ``nesterov=True``).

    Args:
        learning_rate: a number, a 0-d tensor or a schedule.
        b1: decay of the first moment.
        b2: decay of the second moment.
        eps: added to the denominator, outside the square root.
        eps_root: added inside the square root (0 in torch).
        momentum_decay: :math:`\psi`, how fast :math:`\mu_t` rises to :math:`\beta_1`.
        weight_decay: coefficient :math:`\lambda` of :math:`\lambda p_t`, added to the gradient
            (L2) or, with ``decoupled_weight_decay``, to the update (as AdamW; NAdamW).
        decoupled_weight_decay: decouple the weight decay from the gradient.

    >>> import torch, funcgrad as fg
    >>> from funcgrad import optim
    >>> loss = lambda p: ((p - 3.0) ** 2).sum()
    >>> opt = optim.nadam(0.1)
    >>> params = torch.zeros(2)
    >>> state = opt.init(params)
    >>> for _ in range(300):
    ...     updates, state = opt.update(fg.grad(loss)(params), state, params)
    ...     params = optim.apply_updates(params, updates)
    >>> params.round(decimals=2)
    tensor([3., 3.])
    """
    name = "nadam"
    _adam_like(name, b1, b2, eps, eps_root)
    _non_negative(name, "momentum_decay", momentum_decay)
    before, after = _coupled_or_decoupled(name, weight_decay, decoupled_weight_decay)
    return chain(
        before,
        scale_by_nadam(b1, b2, eps, eps_root, momentum_decay=momentum_decay),
        after,
        _lr(name, learning_rate),
    )


def radam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
    weight_decay: float | torch.Tensor = 0.0,
    decoupled_weight_decay: bool = False,
    eps_before_bias_correction: bool = True,
) -> GradientTransformation:
    r"""Rectified Adam (Liu et al., 2020, https://arxiv.org/abs/1908.03265), as
    torch.optim.RAdam.

    .. math::
        p_{t+1} = p_t - \eta \begin{cases}
            r_t \, \hat m_t \sqrt{1 - \beta_2^t} / (\sqrt{v_t} + \epsilon)
                & \rho_t > \text{threshold} \\
            \hat m_t & \text{otherwise}
        \end{cases}

    with :math:`\rho_t, r_t` of :func:`scale_by_radam`: momentum SGD for the first steps,
    while the variance of the adaptive rate is intractable, then rectified Adam.

    The same trajectory as ``torch.optim.RAdam(lr, (b1, b2), eps, weight_decay,
    decoupled_weight_decay)``. ``optax.radam`` adds ``eps`` to the bias-corrected root
    :math:`\sqrt{\hat v_t}` instead: pass ``eps_before_bias_correction=False`` for its numbers.
    It also rectifies when :math:`\rho_t \ge` threshold rather than :math:`>` (the same unless
    equal).

    Args:
        learning_rate: a number, a 0-d tensor or a schedule.
        b1: decay of the first moment.
        b2: decay of the second moment.
        eps: added to the denominator, outside the square root.
        eps_root: added inside the square root (0 in torch).
        threshold: rectify when :math:`\rho_t` exceeds it (5 in torch).
        nesterov: use optax's Nesterov look-ahead first moment (not in torch).
        weight_decay: coefficient of :math:`\lambda p_t`, added to the gradient (L2) or, with
            ``decoupled_weight_decay``, to the update (as AdamW).
        decoupled_weight_decay: decouple the weight decay from the gradient.
        eps_before_bias_correction: add ``eps`` (and ``eps_root``) to the raw second moment
            (torch) or to the bias-corrected one (optax).

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.radam(0.1)
    >>> params = torch.tensor([1.0])
    >>> updates, state = opt.update(torch.tensor([0.5]), opt.init(params), params)
    >>> optim.apply_updates(params, updates)  # rho_1 = 1 < 5: a momentum SGD step
    tensor([0.9500])
    """
    name = "radam"
    _adam_like(name, b1, b2, eps, eps_root)
    _check(name, "threshold", threshold, -math.inf, math.inf, open_high=False)
    before, after = _coupled_or_decoupled(name, weight_decay, decoupled_weight_decay)
    return chain(
        before,
        scale_by_radam(
            b1,
            b2,
            eps,
            eps_root,
            threshold,
            nesterov=nesterov,
            eps_before_bias_correction=eps_before_bias_correction,
        ),
        after,
        _lr(name, learning_rate),
    )


def adamax(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    weight_decay: float | torch.Tensor = 0.0,
) -> GradientTransformation:
    r"""Adamax, Adam with the infinity norm (Kingma & Ba, 2014, https://arxiv.org/abs/1412.6980).

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \quad
        p_{t+1} = p_t - \frac{\eta}{1 - \beta_1^t} \frac{m_t}{u_t}

    The same trajectory as ``torch.optim.Adamax(lr, (b1, b2), eps, weight_decay)`` (L2 decay
    added to the gradient) and as ``optax.adamax`` (which has no weight decay).

    Args:
        learning_rate: a number, a 0-d tensor or a schedule.
        b1: decay of the first moment.
        b2: decay of the infinity norm.
        eps: added to :math:`|g_t|`.
        weight_decay: L2 coefficient added to the gradient.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.adamax(0.1)
    >>> params = torch.tensor([1.0, 1.0])
    >>> updates, _ = opt.update(torch.tensor([2.0, -0.5]), opt.init(params), params)
    >>> optim.apply_updates(params, updates)  # the first step is lr * sign(g)
    tensor([0.9000, 1.1000])
    """
    name = "adamax"
    _beta(name, "b1", b1)
    _decay(name, "b2", b2)
    _non_negative(name, "eps", eps)
    return chain(
        _weight_decay(name, weight_decay),
        scale_by_adamax(b1, b2, eps),
        _lr(name, learning_rate),
    )


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.99,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    *,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    weight_decay: float | torch.Tensor = 0.0,
    eps_in_sqrt: bool = False,
    bias_correction: bool = False,
) -> GradientTransformation:
    r"""RMSprop (Hinton, 2012, lecture 6e of "Neural Networks for Machine Learning"; centered
    form: Graves, 2013, https://arxiv.org/abs/1308.0850), as torch.optim.RMSprop.

    .. math::
        v_t = \rho v_{t-1} + (1 - \rho) g_t^2, \quad
        d_t = \sqrt{v_t - [m_t^2]} + \epsilon, \quad
        b_t = \mu b_{t-1} + g_t / d_t, \quad
        p_{t+1} = p_t - \eta \, b_t

    where :math:`m_t = \rho m_{t-1} + (1 - \rho) g_t` is subtracted only when ``centered``,
    :math:`b_t = g_t / d_t` without momentum, and ``weight_decay`` adds :math:`\lambda p_t` to
    :math:`g_t`.

    The same trajectory as ``torch.optim.RMSprop(lr, alpha=decay, eps, weight_decay, momentum,
    centered)``. ``optax.rmsprop`` differs: its defaults are ``decay=0.9`` and ``eps`` inside the
    square root (``eps_in_sqrt=True`` here), and it applies the learning rate before the
    momentum, which changes the trajectory only when the learning rate changes over time.
    ``initial_scale``, ``nesterov`` and ``bias_correction`` are optax's options (not in torch).

    Args:
        learning_rate: a number, a 0-d tensor or a schedule.
        decay: the decay :math:`\rho` of the moving averages (torch's ``alpha``).
        eps: added to the denominator.
        initial_scale: the initial value of :math:`v`.
        centered: divide by the moving standard deviation instead of the root mean square.
        momentum: the momentum coefficient :math:`\mu` (``None`` or 0: no momentum).
        nesterov: Nesterov momentum (needs ``momentum``).
        weight_decay: L2 coefficient :math:`\lambda` added to the gradient.
        eps_in_sqrt: add ``eps`` inside the square root (optax) instead of outside (torch).
        bias_correction: divide the moving averages by :math:`1 - \rho^t`.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.rmsprop(0.01)
    >>> params = torch.tensor([1.0, -1.0])
    >>> updates, _ = opt.update(torch.tensor([1.0, -2.0]), opt.init(params), params)
    >>> optim.apply_updates(params, updates)  # g / sqrt(0.01 g^2) = 10 sign(g)
    tensor([ 0.9000, -0.9000])
    """
    name = "rmsprop"
    _decay(name, "decay", decay)
    _non_negative(name, "eps", eps)
    _non_negative(name, "initial_scale", initial_scale)
    if momentum is not None:
        _non_negative(name, "momentum", momentum)
    if nesterov and not momentum:
        raise ValueError(
            f"funcgrad.optim.{name}: nesterov=True needs a momentum > 0, got momentum="
            f"{momentum}. Pass momentum=0.9 (say), or nesterov=False."
        )
    scaling = scale_by_stddev if centered else scale_by_rms
    return chain(
        _weight_decay(name, weight_decay),
        scaling(
            decay, eps, initial_scale, eps_in_sqrt=eps_in_sqrt, bias_correction=bias_correction
        ),
        trace(momentum, nesterov) if momentum else identity(),
        _lr(name, learning_rate),
    )


def _scale_by_decaying_learning_rate(
    learning_rate: ScalarOrSchedule, lr_decay: float
) -> GradientTransformation:
    """Scales updates by ``-learning_rate(count) / (1 + count * lr_decay)`` (torch's Adagrad)."""

    def init(params: Params) -> ScaleByScheduleState:
        return ScaleByScheduleState(new_count(_flatten(params)[0]))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        g, treedef = _flatten(updates)
        lr = learning_rate
        if callable(lr):
            lr = evaluate_schedule("adagrad", lr, state.count)
        step = -lr / (1.0 + state.count.to(scalar_dtype(g)) * lr_decay)
        new = _foreach.scale(g, step)
        return treedef.unflatten(new), ScaleByScheduleState(safe_increment(state.count))

    return GradientTransformation(init, update)


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    *,
    lr_decay: float = 0.0,
    weight_decay: float | torch.Tensor = 0.0,
    eps_in_sqrt: bool = False,
) -> GradientTransformation:
    r"""Adagrad (Duchi et al., 2011, https://jmlr.org/papers/v12/duchi11a.html), as
    torch.optim.Adagrad.

    .. math::
        s_t = s_{t-1} + g_t^2, \quad
        p_{t+1} = p_t - \frac{\eta}{1 + (t - 1)\,\delta} \frac{g_t}{\sqrt{s_t} + \epsilon}

    with :math:`s_0` = ``initial_accumulator_value``, :math:`\delta` = ``lr_decay`` and
    ``weight_decay`` adding :math:`\lambda p_t` to :math:`g_t`.

    The same trajectory as ``torch.optim.Adagrad(lr, lr_decay, weight_decay,
    initial_accumulator_value, eps)``. ``optax.adagrad`` differs: ``initial_accumulator_value``
    0.1, ``eps`` 1e-7 inside the square root; ``adagrad(lr, 0.1, 1e-7, eps_in_sqrt=True)`` gives
    its numbers.

    Args:
        learning_rate: a number, a 0-d tensor or a schedule.
        initial_accumulator_value: the initial sum of squares :math:`s_0`.
        eps: added to the denominator.
        lr_decay: :math:`\delta`, divides the learning rate by :math:`1 + (t - 1) \delta`.
        weight_decay: L2 coefficient :math:`\lambda` added to the gradient.
        eps_in_sqrt: add ``eps`` inside the square root (optax) instead of outside (torch).

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.adagrad(0.1)
    >>> params = torch.tensor([1.0, 1.0])
    >>> updates, _ = opt.update(torch.tensor([2.0, -0.5]), opt.init(params), params)
    >>> optim.apply_updates(params, updates)  # the first step is lr * sign(g)
    tensor([0.9000, 1.1000])
    """
    name = "adagrad"
    _non_negative(name, "initial_accumulator_value", initial_accumulator_value)
    _non_negative(name, "eps", eps)
    _non_negative(name, "lr_decay", lr_decay)
    check_learning_rate(name, learning_rate)
    lr = (
        _scale_by_decaying_learning_rate(learning_rate, lr_decay)
        if lr_decay
        else scale_by_learning_rate(learning_rate)
    )
    return chain(
        _weight_decay(name, weight_decay),
        scale_by_rss(initial_accumulator_value, eps, eps_in_sqrt=eps_in_sqrt),
        lr,
    )


def adadelta(
    learning_rate: ScalarOrSchedule = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    *,
    weight_decay: float | torch.Tensor = 0.0,
) -> GradientTransformation:
    r"""Adadelta (Zeiler, 2012, https://arxiv.org/abs/1212.5701), as torch.optim.Adadelta.

    .. math::
        v_t = \rho v_{t-1} + (1 - \rho) g_t^2, \quad
        u_t = \frac{\sqrt{x_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}} g_t, \quad
        x_t = \rho x_{t-1} + (1 - \rho) u_t^2, \quad
        p_{t+1} = p_t - \eta \, u_t

    with ``weight_decay`` adding :math:`\lambda p_t` to :math:`g_t`. The same trajectory as
    ``torch.optim.Adadelta(lr, rho, eps, weight_decay)`` and as ``optax.adadelta`` (whose
    learning rate has no default; torch's and this one's is 1).

    Args:
        learning_rate: a number, a 0-d tensor or a schedule.
        rho: the decay of both moving averages.
        eps: added inside both square roots.
        weight_decay: L2 coefficient :math:`\lambda` added to the gradient.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.adadelta()
    >>> params = torch.tensor([1.0])
    >>> updates, _ = opt.update(torch.tensor([1.0]), opt.init(params), params)
    >>> optim.apply_updates(params, updates)  # 1 - sqrt(1e-6) / sqrt(0.1 + 1e-6)
    tensor([0.9968])
    """
    name = "adadelta"
    _decay(name, "rho", rho)
    _non_negative(name, "eps", eps)
    return chain(
        _weight_decay(name, weight_decay),
        scale_by_adadelta(rho, eps),
        _lr(name, learning_rate),
    )
