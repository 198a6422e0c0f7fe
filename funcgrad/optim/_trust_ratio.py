"""Layer-wise trust ratios and the optimizers built on them: LAMB and LARS (optax's numerics)."""

from __future__ import annotations

from typing import Any

import optree
import torch

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
    flat_like,
    init_empty,
    require_params,
)
from ._transforms import (
    _mask_leaves,
    add_decayed_weights,
    scale_by_adam,
    scale_by_learning_rate,
    trace,
)

__all__ = ["lamb", "lars", "scale_by_trust_ratio"]


def scale_by_trust_ratio(
    min_norm: float = 0.0,
    trust_coefficient: float = 1.0,
    eps: float = 0.0,
    *,
    mask: Any = None,
) -> GradientTransformation:
    r"""Scales each leaf's update by its trust ratio :math:`c \|p\| / (\|u\| + \epsilon)`.

    Norms are over all elements of the leaf (one layer's weight matrix or bias) and are
    clipped below at ``min_norm``; where either norm is zero the ratio is 1, so parameters
    that start at zero still move. As optax's ``scale_by_trust_ratio`` (used by LARS and
    LAMB); the update needs the current parameters.

    Args:
        min_norm: lower bound for both norms.
        trust_coefficient: the multiplier :math:`c`.
        eps: added to the update norm in the denominator.
        mask: which leaves to scale: a pytree prefix of the parameters with bool leaves, or
            a function of the parameters returning one (others pass through unchanged).

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.scale_by_trust_ratio()
    >>> params = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0])}
    >>> updates = {"w": torch.tensor([0.0, 0.5]), "b": torch.tensor([2.0])}
    >>> t.update(updates, t.init(params), params)[0]  # |w| / |u_w| = 10; b is zero: ratio 1
    {'w': tensor([0., 5.]), 'b': tensor([2.])}
    """
    name = "scale_by_trust_ratio"
    check_learning_rate(name, min_norm, "min_norm")
    check_learning_rate(name, trust_coefficient, "trust_coefficient")
    check_learning_rate(name, eps, "eps")

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        p = require_params(name, params)
        u, treedef = optree.tree_flatten(updates, namespace=NAMESPACE)
        p_leaves = flat_like(name, "params", p, treedef, updates)
        if mask is None:
            idx = list(range(len(u)))
        else:
            idx = [i for i, keep in enumerate(_mask_leaves(name, mask, p)) if keep]
        if not idx:
            return updates, state
        sel = [u[i] for i in idx]
        ratios = _trust_ratios(sel, [p_leaves[i] for i in idx], min_norm, trust_coefficient, eps)
        new = list(u)
        for i, x in zip(idx, _foreach.mul(sel, ratios)):
            new[i] = x
        return treedef.unflatten(new), state

    return GradientTransformation(init_empty, update)


def _trust_ratios(
    u: list[torch.Tensor],
    p: list[torch.Tensor],
    min_norm: float,
    trust_coefficient: float,
    eps: float,
) -> list[torch.Tensor]:
    """One 0-d ratio per leaf, in that leaf's dtype, computed for all leaves at once."""
    device = u[0].device
    p_norm = torch.stack([n.to(device) for n in _foreach.norms(p)])
    u_norm = torch.stack([n.to(device) for n in _foreach.norms(u)])
    if min_norm:
        p_norm = p_norm.clamp_min(min_norm)
        u_norm = u_norm.clamp_min(min_norm)
    ratio = trust_coefficient * p_norm / (u_norm + eps)
    ratio = torch.where((p_norm == 0.0) | (u_norm == 0.0), torch.ones_like(ratio), ratio)
    return [r.to(x) for r, x in zip(ratio.unbind(), u)]


def _requiring_params(name: str, transform: GradientTransformation) -> GradientTransformation:
    """``transform`` whose update raises a clear error naming ``name`` when params are missing."""
    inner = transform.update

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        return inner(updates, state, require_params(name, params))

    return GradientTransformation(transform.init, update)


def _check_weight_decay(name: str, weight_decay: Any) -> None:
    check_learning_rate(name, weight_decay, "weight_decay")
    if callable(weight_decay):
        raise TypeError(
            f"funcgrad.optim.{name}: weight_decay must be a number or a 0-d tensor; schedules "
            "are not supported for weight decay. Pass a 0-d tensor and change it between steps."
        )


def _mask_or_none(mask: Any) -> Any:
    return None if mask is True else mask


def lamb(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float | torch.Tensor = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    r"""LAMB: Adam directions rescaled layer by layer by a trust ratio (You et al., 2020,
    "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
    https://arxiv.org/abs/1904.00962).

    .. math::
        r_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon} + \lambda p_t, \quad
        p_{t+1} = p_t - \eta_t \frac{\|p_t\|}{\|r_t\|} r_t

    with Adam's bias-corrected moments :math:`\hat m_t, \hat v_t`; norms are per parameter
    leaf, and the ratio is 1 where either norm is zero. Follows optax's ``lamb`` (same defaults,
    state and trajectory); torch.optim has no LAMB. The update needs the current parameters.

    Args:
        learning_rate: a number, a 0-d tensor or a schedule.
        b1: decay of the first moment.
        b2: decay of the second moment.
        eps: added to the denominator, outside the square root.
        eps_root: added inside the square root.
        weight_decay: the decoupled decay coefficient :math:`\lambda` (a number or 0-d tensor).
        mask: which parameters to decay: a pytree prefix of the parameters with bool leaves,
            or a function of the parameters returning one.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.lamb(0.1)
    >>> params = {"w": torch.tensor([3.0, 4.0])}
    >>> updates, state = opt.update({"w": torch.tensor([1.0, 0.0])}, opt.init(params), params)
    >>> updates  # the step has norm 0.1 * |w| = 0.5
    {'w': tensor([-0.5000, -0.0000])}
    """
    _check_weight_decay("lamb", weight_decay)
    return _requiring_params(
        "lamb",
        chain(
            scale_by_adam(b1, b2, eps, eps_root),
            add_decayed_weights(weight_decay, mask),
            scale_by_trust_ratio(),
            scale_by_learning_rate(learning_rate),
        ),
    )


def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: float | torch.Tensor = 0.0,
    weight_decay_mask: Any = True,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: Any = True,
    momentum: float = 0.9,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""LARS: SGD with momentum on layer-wise trust-ratio-scaled gradients (You et al., 2017,
    "Large Batch Training of Convolutional Networks", https://arxiv.org/abs/1708.03888).

    .. math::
        r_t = g_t + \lambda p_t, \quad
        s_t = \eta_t \frac{c \|p_t\|}{\|r_t\| + \epsilon} r_t, \quad
        b_t = \mu b_{t-1} + s_t, \quad
        p_{t+1} = p_t - b_t \ (\text{or } p_t - s_t - \mu b_t \text{ with Nesterov})

    Norms are per parameter leaf, and the ratio is 1 where either norm is zero. Follows optax's
    ``lars`` (same defaults, state and trajectory: the learning rate is applied before the
    momentum); torch.optim has no LARS. The update needs the current parameters.

    Args:
        learning_rate: a number, a 0-d tensor or a schedule.
        weight_decay: the coefficient :math:`\lambda` (a number or 0-d tensor).
        weight_decay_mask: which parameters to decay (``True``: all): a pytree prefix of the
            parameters with bool leaves, or a function of the parameters returning one.
        trust_coefficient: the multiplier :math:`c` of the trust ratio.
        eps: added to the update norm in the trust ratio's denominator.
        trust_ratio_mask: which parameters get the trust ratio (``True``: all; others use
            :math:`r_t` unscaled), as a mask like ``weight_decay_mask``.
        momentum: the momentum coefficient :math:`\mu`.
        nesterov: use Nesterov momentum.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.lars(0.1, trust_coefficient=0.01, momentum=0.0)
    >>> params = {"w": torch.tensor([30.0, 40.0])}
    >>> updates, state = opt.update({"w": torch.tensor([2.0, 0.0])}, opt.init(params), params)
    >>> updates  # 0.1 * (0.01 * 50 / 2) * g
    {'w': tensor([-0.0500, -0.0000])}
    """
    _check_weight_decay("lars", weight_decay)
    return _requiring_params(
        "lars",
        chain(
            add_decayed_weights(weight_decay, _mask_or_none(weight_decay_mask)),
            scale_by_trust_ratio(
                trust_coefficient=trust_coefficient, eps=eps, mask=_mask_or_none(trust_ratio_mask)
            ),
            scale_by_learning_rate(learning_rate),
            trace(momentum, nesterov),
        ),
    )
