"""Adaptive learning rates from the squared gradients: RMSprop (plain and centered), Adagrad
and Adadelta.

The building blocks carry optax's defaults and the aliases torch.optim's: see NOTE [torch or
optax numerics in the adaptive family] in ``_adaptive_common.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import _foreach
from ._adaptive_common import (
    _decay,
    _denominator,
    _lr,
    _non_negative,
    _weight_decay,
)
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
from ._base import flatten as _flatten
from ._base import zeros_tree as _zeros
from ._transforms import (
    ScaleByScheduleState,
    bias_corrections,
    scalar_dtype,
    scale_by_learning_rate,
    trace,
)

__all__ = [
    "ScaleByAdaDeltaState",
    "ScaleByRStdDevState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "adadelta",
    "adagrad",
    "rmsprop",
    "scale_by_adadelta",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_stddev",
]


# --------------------------------------------------------------------------------------------
# Building blocks: optax's defaults, torch's form one flag away
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
# Aliases: torch.optim's numerics by default
# --------------------------------------------------------------------------------------------


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
