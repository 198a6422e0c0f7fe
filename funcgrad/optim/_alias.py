"""Named optimizers: thin chains of the building blocks, with torch.optim's numerics."""

from __future__ import annotations

from typing import Any

import torch

from ._base import GradientTransformation, ScalarOrSchedule, chain, check_learning_rate, identity
from ._fused import fusable
from ._transforms import (
    add_decayed_weights,
    scale_by_adam,
    scale_by_learning_rate,
    trace,
)

__all__ = ["adam", "adamw", "sgd"]


def _weight_decay(weight_decay: float | torch.Tensor, name: str) -> GradientTransformation:
    check_learning_rate(name, weight_decay, "weight_decay")
    if isinstance(weight_decay, torch.Tensor) or weight_decay:
        return add_decayed_weights(weight_decay)
    return identity()


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    *,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    r"""Stochastic gradient descent, with optional (Nesterov) momentum and L2 weight decay.

    .. math::
        g_t \leftarrow g_t + \lambda p_t, \quad
        b_t = \mu b_{t-1} + g_t, \quad
        p_{t+1} = p_t - \eta \, (g_t + \mu b_t \text{ if nesterov else } b_t)

    The same trajectory as ``torch.optim.SGD(lr, momentum, nesterov=..., weight_decay=...)``
    with ``dampening=0``.

    Args:
        learning_rate: a number, a 0-d tensor or a schedule.
        momentum: the momentum coefficient :math:`\mu` (``None`` or 0: plain SGD).
        nesterov: use Nesterov momentum.
        weight_decay: L2 coefficient :math:`\lambda` added to the gradient.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.sgd(0.1, momentum=0.9)
    >>> params = torch.tensor([1.0])
    >>> state = opt.init(params)
    >>> for _ in range(2):
    ...     updates, state = opt.update(torch.tensor([1.0]), state, params)
    ...     params = optim.apply_updates(params, updates)
    >>> params  # 1 - 0.1 * 1 - 0.1 * 1.9
    tensor([0.7100])
    """
    return chain(
        _weight_decay(weight_decay, "sgd"),
        trace(momentum, nesterov) if isinstance(momentum, torch.Tensor) or momentum else identity(),
        scale_by_learning_rate(learning_rate),
    )


def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Adam (Kingma & Ba, 2014, https://arxiv.org/abs/1412.6980).

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \quad
        p_{t+1} = p_t - \eta \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

    The same trajectory as ``torch.optim.Adam`` (whose ``weight_decay`` is an L2 term added to
    the gradient, as here) and as ``optax.adam``.

    Args:
        learning_rate: a number, a 0-d tensor or a schedule.
        b1: decay of the first moment.
        b2: decay of the second moment.
        eps: added to the denominator, outside the square root.
        eps_root: added inside the square root (0 as in torch; useful when differentiating
            through the optimizer, where :math:`\sqrt{0}` has no gradient).
        weight_decay: L2 coefficient added to the gradient (for decoupled decay see
            :func:`adamw`).
        nesterov: use the Nesterov look-ahead moment (optax's NAdam).

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.adam(0.1)
    >>> params = {"w": torch.tensor([1.0, -1.0])}
    >>> updates, state = opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)
    >>> optim.apply_updates(params, updates)
    {'w': tensor([ 0.9000, -0.9000])}
    """
    lr = scale_by_learning_rate(learning_rate)
    composed = chain(
        _weight_decay(weight_decay, "adam"),
        scale_by_adam(b1, b2, eps, eps_root, nesterov=nesterov),
        lr,
    )
    # NOTE [fused Adam in eager mode]
    return fusable(
        composed,
        learning_rate=learning_rate,
        lr_transform=lr,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        nesterov=nesterov,
        l2=weight_decay,
    )


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019,
    https://arxiv.org/abs/1711.05101).

    .. math::
        p_{t+1} = p_t - \eta \left(\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} + \lambda p_t\right)

    The same trajectory as ``torch.optim.AdamW`` and ``optax.adamw``. The default
    ``weight_decay`` is optax's (1e-4); torch.optim.AdamW's default is 1e-2.

    Args:
        learning_rate: a number, a 0-d tensor or a schedule.
        b1: decay of the first moment.
        b2: decay of the second moment.
        eps: added to the denominator, outside the square root.
        eps_root: added inside the square root.
        weight_decay: the decoupled decay coefficient :math:`\lambda`.
        mask: which parameters to decay: a pytree prefix of the parameters with bool leaves,
            or a function of the parameters returning one (e.g. no decay for biases).
        nesterov: use the Nesterov look-ahead moment.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.adamw(0.1, weight_decay=0.5)
    >>> params = torch.tensor([2.0])
    >>> updates, _ = opt.update(torch.tensor([1.0]), opt.init(params), params)
    >>> optim.apply_updates(params, updates)  # 2 - 0.1 * (1 + 0.5 * 2)
    tensor([1.8000])
    """
    lr = scale_by_learning_rate(learning_rate)
    composed = chain(
        scale_by_adam(b1, b2, eps, eps_root, nesterov=nesterov),
        add_decayed_weights(weight_decay, mask),
        lr,
    )
    # NOTE [fused Adam in eager mode]
    return fusable(
        composed,
        learning_rate=learning_rate,
        lr_transform=lr,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        nesterov=nesterov,
        decoupled=weight_decay,
        mask=mask,
    )
