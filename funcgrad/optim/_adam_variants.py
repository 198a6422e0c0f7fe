"""Adam variants: Adamax (the infinity norm), RAdam (a rectified adaptive rate) and NAdam
(Nesterov momentum).

The building blocks carry optax's defaults and the aliases torch.optim's: see NOTE [torch or
optax numerics in the adaptive family] in ``_adaptive_common.py``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import _foreach
from ._adaptive_common import (
    _adam_like,
    _beta,
    _check,
    _coupled_or_decoupled,
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
    flat_like,
    new_count,
    safe_increment,
)
from ._base import flatten as _flatten
from ._base import zeros_tree as _zeros
from ._transforms import adam_moments, bias_corrections, scalar_dtype

__all__ = [
    "ScaleByAdamaxState",
    "ScaleByNadamState",
    "ScaleByRadamState",
    "adamax",
    "nadam",
    "radam",
    "scale_by_adamax",
    "scale_by_nadam",
    "scale_by_radam",
]


# --------------------------------------------------------------------------------------------
# Building blocks: optax's defaults, torch's form one flag away
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
        mu, nu = adam_moments(mu, nu, g, b1, b2)
        t = count.to(scalar_dtype(g))
        bc1, bc2 = bias_corrections(count, (b1, b2), scalar_dtype(g))
        if nesterov:
            (next_bc1,) = bias_corrections(count + 1, (b1,), scalar_dtype(g))
            mu_hat = _foreach.add(_foreach.scale(mu, b1 / next_bc1), g, (1 - b1) / bc1)
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
        mu, nu = adam_moments(mu, nu, g, b1, b2)
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
