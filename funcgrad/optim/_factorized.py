"""Adafactor: factored second-moment estimates (Shazeer & Stern, 2018), with optax's numerics."""

from __future__ import annotations

from collections.abc import Callable
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
    init_empty,
    new_count,
    require_params,
    safe_increment,
)
from ._transforms import add_decayed_weights, scalar_dtype, scale, scale_by_learning_rate
from ._wrappers import EmaState

__all__ = ["FactoredState", "adafactor", "scale_by_factored_rms"]

Tensors = list[torch.Tensor]


class FactoredState(NamedTuple):
    """The step count and second-moment statistics of :func:`scale_by_factored_rms`.

    Each of ``v_row``, ``v_col`` and ``v`` has the parameters' tree structure. A factored
    leaf keeps its row and column statistics in ``v_row`` and ``v_col`` (the leaf's shape with
    its largest, respectively second largest, dimension removed) and a placeholder of shape
    ``(1,)`` in ``v``; any other leaf keeps its full statistics in ``v`` and placeholders in
    ``v_row`` and ``v_col`` (optax's layout).

    >>> import torch
    >>> from funcgrad import optim
    >>> state = optim.scale_by_factored_rms(min_dim_size_to_factor=2).init(
    ...     {"w": torch.ones(3, 2), "b": torch.ones(2)}
    ... )
    >>> {k: (tuple(state.v_row[k].shape), tuple(state.v_col[k].shape), tuple(state.v[k].shape))
    ...  for k in ("w", "b")}
    {'w': ((2,), (3,), (1,)), 'b': ((1,), (1,), (2,))}
    """

    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count, as in optax
    v_row: Updates
    v_col: Updates
    v: Updates


def _factored_dims(
    shape: tuple[int, ...], factored: bool, min_dim_size_to_factor: int
) -> tuple[int, int] | None:
    """The second largest and largest dimensions ``(d1, d0)``, or ``None`` when not factored."""
    if not factored or len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda i: shape[i])  # stable, like numpy's argsort
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return order[-2], order[-1]


def _without(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]


def scale_by_factored_rms(
    *,
    factored: bool = True,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: float = 1e-30,
    decay_rate_fn: Callable[[torch.Tensor, float], Any] | None = None,
) -> GradientTransformation:
    r"""Rescales updates by a factored estimate of the gradients' root mean square (Adafactor).

    With :math:`\hat\beta_t = 1 - t^{-\text{decay\_rate}}` (:math:`t` the step, from 1) and
    :math:`G = g_t^2 + \epsilon`, a matrix gradient (a leaf with two dimensions of at least
    ``min_dim_size_to_factor``; for more dimensions, the two largest) keeps only row and column
    statistics:

    .. math::
        R_t = \hat\beta_t R_{t-1} + (1 - \hat\beta_t) \operatorname{mean}_{cols} G, \quad
        C_t = \hat\beta_t C_{t-1} + (1 - \hat\beta_t) \operatorname{mean}_{rows} G, \quad
        u_t = g_t \Big/ \sqrt{\frac{R_t C_t^\top}{\operatorname{mean}(R_t)}}

    and any other leaf the full :math:`V_t = \hat\beta_t V_{t-1} + (1 - \hat\beta_t) G`,
    :math:`u_t = g_t / \sqrt{V_t}`. Follows optax's ``scale_by_factored_rms`` (state layout in
    :class:`FactoredState`) except that :math:`\hat\beta_t` is computed in the parameters' float
    dtype (at least float32), where optax always uses float32.

    Args:
        factored: factor the statistics of matrices (``False``: full statistics everywhere).
        decay_rate: the exponent of the decay schedule :math:`\hat\beta_t`.
        step_offset: subtracted from the step count before the schedule (for fine-tuning).
        min_dim_size_to_factor: factor only when two dimensions are at least this large.
        epsilon: added to the squared gradient.
        decay_rate_fn: a custom schedule ``fn(step, decay_rate)`` of the 0-d int step (from 0)
            returning :math:`\hat\beta` (default: the power schedule above).

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.scale_by_factored_rms(min_dim_size_to_factor=2)
    >>> g = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> u, state = t.update(g, t.init(g))
    >>> state.v_row, state.v_col  # row and column means of g**2
    (tensor([ 2.5000, 12.5000]), tensor([ 5., 10.]))
    >>> u.shape
    torch.Size([2, 2])
    """
    name = "scale_by_factored_rms"
    check_learning_rate(name, epsilon, "epsilon")

    def dims(x: torch.Tensor) -> tuple[int, int] | None:
        return _factored_dims(tuple(x.shape), factored, min_dim_size_to_factor)

    def init(params: Params) -> FactoredState:
        leaves, treedef = optree.tree_flatten(params, namespace=NAMESPACE)
        rows, cols, full = [], [], []
        for x in leaves:
            d = dims(x)
            if d is None:
                rows.append(x.new_zeros((1,)))
                cols.append(x.new_zeros((1,)))
                full.append(torch.zeros_like(x))
            else:
                d1, d0 = d
                rows.append(x.new_zeros(_without(x.shape, d0)))
                cols.append(x.new_zeros(_without(x.shape, d1)))
                full.append(x.new_zeros((1,)))
        return FactoredState(
            new_count(leaves),
            treedef.unflatten(rows),
            treedef.unflatten(cols),
            treedef.unflatten(full),
        )

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        g, treedef = optree.tree_flatten(updates, namespace=NAMESPACE)
        v_row = flat_like(name, "state's row statistics (v_row)", state.v_row, treedef, updates)
        v_col = flat_like(name, "state's column statistics (v_col)", state.v_col, treedef, updates)
        v = flat_like(name, "state's statistics (v)", state.v, treedef, updates)
        step = state.count - step_offset
        dtype = scalar_dtype(g)
        if decay_rate_fn is None:
            beta = 1.0 - (step + 1).to(dtype) ** (-decay_rate)
        else:
            beta = torch.as_tensor(decay_rate_fn(step, decay_rate), dtype=dtype, device=step.device)
        new, rows, cols, full = list(g), list(v_row), list(v_col), list(v)
        plain = []
        for i, x in enumerate(g):
            d = dims(x)
            if d is None:
                plain.append(i)
            else:
                new[i], rows[i], cols[i] = _factored_update(x, v_row[i], v_col[i], beta, d, epsilon)
        if plain:  # the unfactored leaves together, with list ops
            gp = [g[i] for i in plain]
            g_sq = _foreach.add_scalar_(_foreach.mul(gp, gp), epsilon)
            vp = _foreach.add(_foreach.scale([v[i] for i in plain], beta), g_sq, 1.0 - beta)
            vp = [y.to(x.dtype) for x, y in zip(gp, vp)]
            for i, x, y in zip(plain, _foreach.div(gp, _foreach.sqrt(vp)), vp):
                new[i], full[i] = x, y
        return treedef.unflatten(new), FactoredState(
            safe_increment(state.count),
            treedef.unflatten(rows),
            treedef.unflatten(cols),
            treedef.unflatten(full),
        )

    return GradientTransformation(init, update)


def _factored_update(
    g: torch.Tensor,
    v_row: torch.Tensor,
    v_col: torch.Tensor,
    beta: torch.Tensor,
    dims: tuple[int, int],
    epsilon: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adafactor's update of one factored leaf: ``(update, new v_row, new v_col)``."""
    d1, d0 = dims
    g_sq = g * g + epsilon
    new_row = (beta * v_row + (1.0 - beta) * g_sq.mean(dim=d0)).to(g.dtype)
    new_col = (beta * v_col + (1.0 - beta) * g_sq.mean(dim=d1)).to(g.dtype)
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    row_factor = (new_row / new_row.mean(dim=reduced_d1, keepdim=True)).rsqrt()
    col_factor = new_col.rsqrt()
    return g * row_factor.unsqueeze(d0) * col_factor.unsqueeze(d1), new_row, new_col


# --------------------------------------------------------------------------------------------
# The other steps of adafactor (optax's clip_by_block_rms, scale_by_param_block_rms and ema
# without debiasing), private until the public transforms grow the options adafactor needs.
# --------------------------------------------------------------------------------------------


def _rms(xs: Tensors) -> Tensors:
    """Root mean square of each leaf, from its norm (0-d tensors)."""
    return [n / x.numel() ** 0.5 for n, x in zip(_foreach.norms(xs), xs)]


def _clip_by_block_rms(threshold: float) -> GradientTransformation:
    """Divides each leaf by ``max(1, rms(leaf) / threshold)``."""

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        u, treedef = optree.tree_flatten(updates, namespace=NAMESPACE)
        if not u:
            return updates, state
        denom = [torch.clamp_min(r / threshold, 1.0) for r in _rms(u)]
        return treedef.unflatten(_foreach.div(u, denom)), state

    return GradientTransformation(init_empty, update)


def _scale_by_param_block_rms(name: str, min_scale: float = 1e-3) -> GradientTransformation:
    """Multiplies each leaf by the root mean square of its parameter (at least ``min_scale``)."""

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        p = require_params(name, params)
        u, treedef = optree.tree_flatten(updates, namespace=NAMESPACE)
        p_leaves = flat_like(name, "params", p, treedef, updates)
        if not u:
            return updates, state
        factors = [
            torch.where(r <= min_scale, torch.full_like(r, min_scale), r) for r in _rms(p_leaves)
        ]
        return treedef.unflatten(_foreach.mul(u, factors)), state

    return GradientTransformation(init_empty, update)


def _ema(decay: float, dtype: torch.dtype | None) -> GradientTransformation:
    """``m_t = (1 - decay) u_t + decay m_{t-1}`` (not debiased); the update is ``m_t``.

    :func:`funcgrad.optim.ema` with ``debias=False``, plus optax's ``accumulator_dtype``: the
    average is kept in ``dtype`` (``None``: the updates' dtype).
    """

    def init(params: Params) -> EmaState:
        leaves, treedef = optree.tree_flatten(params, namespace=NAMESPACE)
        ema = [torch.zeros_like(x, dtype=dtype) for x in leaves]
        return EmaState(new_count(leaves), treedef.unflatten(ema))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        u, treedef = optree.tree_flatten(updates, namespace=NAMESPACE)
        m = flat_like("adafactor", "state's momentum (ema)", state.ema, treedef, updates)
        # decay * m in m's dtype, then the sum in the promoted dtype, as optax computes it.
        new = _foreach.add(_foreach.scale(u, 1.0 - decay), _foreach.scale(m, decay))
        stored = new if dtype is None else [x.to(dtype) for x in new]
        return treedef.unflatten(new), EmaState(
            safe_increment(state.count), treedef.unflatten(stored)
        )

    return GradientTransformation(init, update)


def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    *,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: torch.dtype | None = torch.float32,
    weight_decay_rate: float | torch.Tensor | None = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: Any = None,
) -> GradientTransformation:
    r"""Adafactor (Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost", https://arxiv.org/abs/1804.04235).

    The gradient is divided by a factored estimate of its root mean square
    (:func:`scale_by_factored_rms`: row and column statistics for matrices, so the state of an
    :math:`n \times m` weight is :math:`n + m` numbers), then, in order:

    .. math::
        u \leftarrow u / \max(1, \operatorname{rms}(u) / d), \quad
        u \leftarrow \eta_t \, u, \quad
        u \leftarrow \max(\operatorname{rms}(p), 10^{-3}) \, u, \quad
        m_t = \beta m_{t-1} + (1 - \beta) u, \quad
        p_{t+1} = p_t - (m_t + \lambda p_t)

    where each step is optional (``clipping_threshold`` :math:`d`, ``learning_rate``
    :math:`\eta`, ``multiply_by_parameter_scale``, ``momentum`` :math:`\beta`,
    ``weight_decay_rate`` :math:`\lambda`) and the RMS is per parameter leaf. Follows optax's
    ``adafactor`` (same defaults, chain and state layout), except that the second-moment decay
    schedule is computed in the parameters' dtype (optax: float32 always, which only matters
    for float64 parameters). torch.optim.Adafactor (torch >= 2.5) is a different variant (no
    update clipping, parameter scaling or momentum; a different epsilon and decay).

    Args:
        learning_rate: a number, a 0-d tensor, a schedule, or ``None`` (no scaling: with
            ``multiply_by_parameter_scale`` the steps are relative to the parameters' scale).
        min_dim_size_to_factor: factor a leaf's statistics only when two of its dimensions are
            at least this large.
        decay_rate: the exponent of the second-moment decay schedule :math:`1 - t^{-c}`.
        decay_offset: subtracted from the step count in that schedule (for fine-tuning).
        multiply_by_parameter_scale: scale the steps by each leaf's parameter RMS.
        clipping_threshold: the update RMS threshold :math:`d` (``None``: no clipping).
        momentum: the momentum :math:`\beta` (``None``: none, and no momentum state).
        dtype_momentum: dtype of the momentum buffer (optax's default float32; ``None``: the
            parameters' dtype).
        weight_decay_rate: the decoupled decay :math:`\lambda` (not multiplied by the learning
            rate), or ``None``.
        eps: added to the squared gradients.
        factored: use factored statistics for matrices.
        weight_decay_mask: which parameters to decay: a pytree prefix of the parameters with
            bool leaves, or a function of the parameters returning one.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.adafactor(learning_rate=0.1)
    >>> params = {"w": torch.tensor([2.0, -2.0])}
    >>> updates, state = opt.update({"w": torch.tensor([5.0, -1.0])}, opt.init(params), params)
    >>> optim.apply_updates(params, updates)  # 0.1 * sign(g) * rms(w), relative steps
    {'w': tensor([ 1.8000, -1.8000])}
    """
    name = "adafactor"
    if learning_rate is not None:
        check_learning_rate(name, learning_rate)
    if clipping_threshold is not None:
        check_learning_rate(name, clipping_threshold, "clipping_threshold")
    if weight_decay_rate is not None:
        check_learning_rate(name, weight_decay_rate, "weight_decay_rate")
        if callable(weight_decay_rate):
            raise TypeError(
                "funcgrad.optim.adafactor: weight_decay_rate must be a number or a 0-d tensor; "
                "schedules are not supported for weight decay."
            )
    steps = [
        scale_by_factored_rms(
            factored=factored,
            decay_rate=decay_rate,
            step_offset=decay_offset,
            min_dim_size_to_factor=min_dim_size_to_factor,
            epsilon=eps,
        )
    ]
    if clipping_threshold is not None:
        steps.append(_clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        steps.append(scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        steps.append(_scale_by_param_block_rms(name))
    if momentum is not None:
        steps.append(_ema(momentum, dtype_momentum))
    if weight_decay_rate is not None:
        steps.append(add_decayed_weights(weight_decay_rate, weight_decay_mask))
    steps.append(scale(-1.0))
    return chain(*steps)
