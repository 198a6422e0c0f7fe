"""Lion: sign-of-momentum updates (Chen et al., 2023), with optax's numerics."""

from __future__ import annotations

from typing import Any, NamedTuple

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
    new_count,
    safe_increment,
)
from ._transforms import add_decayed_weights, scale_by_learning_rate

__all__ = ["ScaleByLionState", "lion", "scale_by_lion"]

_MODES = ("hard", "smooth", "refined")


class ScaleByLionState(NamedTuple):
    """Lion's step count and momentum ``mu`` (an exponential moving average of gradients).

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.scale_by_lion().init({"w": torch.ones(2)})
    ScaleByLionState(count=tensor(0, dtype=torch.int32), mu={'w': tensor([0., 0.])})
    """

    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count, as in optax
    mu: Updates


def _check_decay(name: str, value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(
            f"funcgrad.optim.{name}: {what} must be a number in [0, 1], got {value!r}."
        )


def scale_by_lion(
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: torch.dtype | None = None,
    *,
    mode: str = "hard",
    smooth_beta: float = 1.0,
) -> GradientTransformation:
    r"""Rescales updates to the sign of an interpolation of momentum and gradient (Lion).

    .. math::
        c_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
        u_t = \operatorname{sign}(c_t), \quad
        m_t = \beta_2 m_{t-1} + (1 - \beta_2) g_t

    ``mode="smooth"`` uses :math:`\tanh(\beta_s c_t)` instead of the sign, and
    ``mode="refined"`` keeps :math:`c_t` where :math:`|c_t| < 1` and its sign elsewhere
    (:math:`\operatorname{clip}(c_t, -1, 1)`), as optax's ``scale_by_lion`` does.

    Args:
        b1: weight of the momentum in the interpolation that gives the update.
        b2: decay of the momentum.
        mu_dtype: dtype of the momentum buffer (``None``: the parameters' dtype).
        mode: ``"hard"`` (sign), ``"smooth"`` (tanh) or ``"refined"`` (clip to [-1, 1]).
        smooth_beta: the slope :math:`\beta_s` of the tanh in ``"smooth"`` mode.

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.scale_by_lion()
    >>> u, state = t.update([torch.tensor([0.5, -2.0, 0.0])], t.init([torch.zeros(3)]))
    >>> u
    [tensor([ 1., -1.,  0.])]
    >>> state.mu  # 0.01 * g
    [tensor([ 0.0050, -0.0200,  0.0000])]
    """
    name = "scale_by_lion"
    _check_decay(name, b1, "b1")
    _check_decay(name, b2, "b2")
    if mode not in _MODES:
        raise ValueError(f"funcgrad.optim.{name}: mode must be one of {_MODES}, got {mode!r}.")

    def init(params: Params) -> ScaleByLionState:
        leaves, treedef = optree.tree_flatten(params, namespace=NAMESPACE)
        mu = [torch.zeros_like(x, dtype=mu_dtype) for x in leaves]
        return ScaleByLionState(new_count(leaves), treedef.unflatten(mu))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        g, treedef = optree.tree_flatten(updates, namespace=NAMESPACE)
        mu = flat_like(name, "state's momentum (mu)", state.mu, treedef, updates)
        # optax's order of operations, (1 - b) * g + b * m; with a separate mu_dtype the
        # product b * m is taken in mu's dtype before the sum promotes, as in optax.
        if mu_dtype is None:
            c = _foreach.add(_foreach.scale(g, 1.0 - b1), mu, b1)
            new_mu = _foreach.add(_foreach.scale(g, 1.0 - b2), mu, b2)
        else:
            c = _foreach.add(_foreach.scale(g, 1.0 - b1), _foreach.scale(mu, b1))
            new_mu = _foreach.add(_foreach.scale(g, 1.0 - b2), _foreach.scale(mu, b2))
            new_mu = [m.to(mu_dtype) for m in new_mu]
        if mode == "hard":
            new = _foreach.sign(c)
        elif mode == "smooth":
            new = [torch.tanh(x) for x in _foreach.scale_(c, smooth_beta)]
        else:
            new = _foreach.clamp(c, -1.0, 1.0)
        return treedef.unflatten(new), ScaleByLionState(
            safe_increment(state.count), treedef.unflatten(new_mu)
        )

    return GradientTransformation(init, update)


def lion(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: torch.dtype | None = None,
    weight_decay: float | torch.Tensor = 1e-3,
    mask: Any = None,
) -> GradientTransformation:
    r"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms",
    https://arxiv.org/abs/2302.06675).

    .. math::
        c_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
        p_{t+1} = p_t - \eta_t \left(\operatorname{sign}(c_t) + \lambda p_t\right), \quad
        m_t = \beta_2 m_{t-1} + (1 - \beta_2) g_t

    Follows optax's ``lion`` (same defaults, state and trajectory); torch.optim has no Lion.
    Every update element is :math:`\pm\eta`, so a good learning rate is 3-10x smaller than
    AdamW's and the weight decay 3-10x larger. As in optax and PyTorch-style AdamW, the decay
    is multiplied by the learning rate (the paper multiplies it by the schedule only).

    Args:
        learning_rate: a number, a 0-d tensor or a schedule.
        b1: weight of the momentum in the interpolation that gives the update.
        b2: decay of the momentum.
        mu_dtype: dtype of the momentum buffer (``None``: the parameters' dtype).
        weight_decay: the decoupled decay coefficient :math:`\lambda` (a number or 0-d tensor).
        mask: which parameters to decay: a pytree prefix of the parameters with bool leaves,
            or a function of the parameters returning one.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.lion(0.1, weight_decay=0.0)
    >>> params = {"w": torch.tensor([1.0, -1.0])}
    >>> updates, state = opt.update({"w": torch.tensor([3.0, -0.1])}, opt.init(params), params)
    >>> optim.apply_updates(params, updates)  # each parameter moves by the learning rate
    {'w': tensor([ 0.9000, -0.9000])}
    """
    check_learning_rate("lion", weight_decay, "weight_decay")
    if callable(weight_decay):
        raise TypeError(
            "funcgrad.optim.lion: weight_decay must be a number or a 0-d tensor; schedules "
            "are not supported for weight decay. Pass a 0-d tensor and change it between steps."
        )
    return chain(
        scale_by_lion(b1, b2, mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
