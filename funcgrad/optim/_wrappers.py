"""Wrappers: hyperparameters moved into the state, moving averages and lookahead.

lookahead synchronises with a tensor decision, as NOTE [choosing with torch.where] (in
``_accumulation.py``) explains.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch

from .. import _api_util
from . import _foreach
from ._accumulation import _check_state, _check_transformation, _where
from ._base import (
    GradientTransformation,
    OptState,
    Params,
    Updates,
    check_learning_rate,
    evaluate_schedule,
    flat_like,
    new_count,
    safe_increment,
)
from ._base import flatten as _flatten
from ._transforms import scalar_dtype

__all__ = [
    "EmaState",
    "InjectHyperparamsState",
    "LookaheadParams",
    "LookaheadState",
    "ema",
    "inject_hyperparams",
    "lookahead",
]


# --------------------------------------------------------------------------------------------
# Hyperparameters in the state
# --------------------------------------------------------------------------------------------


class InjectHyperparamsState(NamedTuple):
    """The state of :func:`inject_hyperparams`: the step count, the hyperparameters as 0-d
    tensors, and the inner state.

    >>> import torch
    >>> from funcgrad import optim
    >>> state = optim.inject_hyperparams(optim.sgd)(learning_rate=0.5).init(torch.zeros(1))
    >>> state.hyperparams
    {'learning_rate': tensor(0.5000), 'weight_decay': tensor(0.)}
    """

    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count, as in optax
    hyperparams: dict[str, torch.Tensor]
    inner_state: OptState


def _hyperparam_tensor(
    name: str, key: str, value: Any, dtype: torch.dtype, device: torch.device | None
) -> torch.Tensor:
    """A hyperparameter as a 0-d tensor: floating values in ``dtype``, integers as they are."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0:
            raise ValueError(
                f"funcgrad.optim.{name}: the hyperparameter {key} must be a number or a 0-d "
                f"tensor, got a tensor of shape {tuple(value.shape)}. Pass it in static_args "
                "if it is not a hyperparameter."
            )
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, float):
        return torch.tensor(value, dtype=dtype, device=device)
    if isinstance(value, int) and not isinstance(value, bool):
        return torch.tensor(value, device=device)
    raise TypeError(
        f"funcgrad.optim.{name}: the hyperparameter {key} must be a number or a 0-d tensor, "
        f"got {_api_util.describe(value)}."
    )


def _call_with(
    factory: Callable[..., GradientTransformation],
    signature: inspect.Signature,
    arguments: Mapping[str, Any],
) -> GradientTransformation:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for key, p in signature.parameters.items():
        if key not in arguments:
            continue
        if p.kind is p.POSITIONAL_ONLY:
            args.append(arguments[key])
        elif p.kind is p.VAR_POSITIONAL:
            args.extend(arguments[key])
        elif p.kind is p.VAR_KEYWORD:
            kwargs.update(arguments[key])
        else:
            kwargs[key] = arguments[key]
    return factory(*args, **kwargs)


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    *,
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: torch.dtype | None = None,
) -> Callable[..., GradientTransformation]:
    """Moves an optimizer's numeric hyperparameters into its state, as 0-d tensors.

    ``inject_hyperparams(optim.adam)(learning_rate=..., ...)`` takes the factory's arguments.
    Numbers and 0-d tensors become entries of ``state.hyperparams`` (floats in
    ``hyperparam_dtype``, by default the parameters' widest float dtype, at least float32);
    change one between steps (``state._replace(hyperparams={**state.hyperparams, "b1": ...})``)
    and the next update uses it. A function is a schedule: it is evaluated at the step count
    each update, and its last value is recorded in ``state.hyperparams`` (editing it has no
    effect). Bools, ``None`` and the names in ``static_args`` are passed through unchanged.
    Each update calls the factory with the current values, as optax does.

    Args:
        inner_factory: a function returning a GradientTransformation (e.g. ``optim.adam``).
        static_args: names of arguments that are neither hyperparameters nor schedules (such
            as a mask function).
        hyperparam_dtype: the dtype of floating hyperparameters.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.inject_hyperparams(optim.sgd)(learning_rate=0.1)
    >>> params = torch.tensor([1.0])
    >>> state = opt.init(params)
    >>> state = state._replace(hyperparams={**state.hyperparams, "learning_rate": 0.5})
    >>> opt.update(torch.tensor([1.0]), state, params)[0]
    tensor([-0.5000])
    """
    name = "inject_hyperparams"
    if not callable(inner_factory):
        raise TypeError(
            f"funcgrad.optim.{name}: expected an optimizer factory such as optim.adam, got "
            f"{_api_util.describe(inner_factory)}."
        )
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    unknown = sorted(static - set(signature.parameters))
    if unknown:
        raise ValueError(
            f"funcgrad.optim.{name}: static_args {unknown} are not parameters of "
            f"{getattr(inner_factory, '__name__', 'the factory')}, whose parameters are "
            f"{list(signature.parameters)}."
        )

    @functools.wraps(inner_factory)
    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformation:
        factory_name = getattr(inner_factory, "__name__", "the factory")
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(
                f"funcgrad.optim.{name}: cannot call {factory_name} with these arguments: {e}."
            ) from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        schedules: dict[str, Callable[[torch.Tensor], Any]] = {}
        numeric: dict[str, Any] = {}
        for key, value in arguments.items():
            if key in static or value is None or isinstance(value, bool):
                continue
            if callable(value):
                schedules[key] = value
            elif isinstance(value, (int, float, torch.Tensor)):
                _hyperparam_tensor(name, key, value, torch.float32, None)  # validates
                numeric[key] = value
        keys = [k for k in arguments if k in numeric or k in schedules]

        def current(
            values: Mapping[str, Any], count: torch.Tensor, leaves: list[torch.Tensor]
        ) -> dict[str, torch.Tensor]:
            dtype = hyperparam_dtype or scalar_dtype(leaves)
            device = count.device
            out = {}
            for k in keys:
                v = evaluate_schedule(name, schedules[k], count) if k in schedules else values[k]
                out[k] = _hyperparam_tensor(name, k, v, dtype, device)
            return out

        def init(params: Params) -> InjectHyperparamsState:
            leaves = _flatten(params)[0]
            count = new_count(leaves)
            hyperparams = current(numeric, count, leaves)
            inner = _call_with(inner_factory, signature, {**arguments, **hyperparams})
            return InjectHyperparamsState(count, hyperparams, inner.init(params))

        def update(
            updates: Updates, state: OptState, params: Params | None = None
        ) -> tuple[Updates, OptState]:
            _check_state(name, state, InjectHyperparamsState)
            if not isinstance(state.hyperparams, Mapping) or set(state.hyperparams) != set(keys):
                got = list(state.hyperparams) if isinstance(state.hyperparams, Mapping) else None
                raise ValueError(
                    f"funcgrad.optim.{name}: state.hyperparams must have the keys {keys}, got "
                    f"{got if got is not None else _api_util.describe(state.hyperparams)}. "
                    "Change values, not keys."
                )
            hyperparams = current(state.hyperparams, state.count, _flatten(updates)[0])
            inner = _call_with(inner_factory, signature, {**arguments, **hyperparams})
            new, inner_state = inner.update(updates, state.inner_state, params)
            return new, InjectHyperparamsState(
                safe_increment(state.count), hyperparams, inner_state
            )

        return GradientTransformation(init, update)

    return wrapped


# --------------------------------------------------------------------------------------------
# Moving averages and lookahead
# --------------------------------------------------------------------------------------------


class EmaState(NamedTuple):
    """The state of :func:`ema`: the step count and the moving average.

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.ema(0.9).init([torch.ones(2)])
    EmaState(count=tensor(0, dtype=torch.int32), ema=[tensor([0., 0.])])
    """

    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count, as in optax
    ema: Updates


def ema(decay: float | torch.Tensor, debias: bool = True) -> GradientTransformation:
    r"""Exponential moving average of the updates, optionally debiased.

    .. math::
        e_t = \text{decay} \cdot e_{t-1} + (1 - \text{decay}) \, u_t, \quad
        \text{output} = e_t / (1 - \text{decay}^t) \text{ if debias else } e_t

    Unlike :func:`trace` (``decay * t + u``), the new update is weighted by ``1 - decay``.

    >>> import torch
    >>> from funcgrad import optim
    >>> t = optim.ema(0.5, debias=False)
    >>> state = t.init([torch.zeros(1)])
    >>> u, state = t.update([torch.tensor([4.0])], state)
    >>> u, state = t.update([torch.tensor([4.0])], state)
    >>> u  # 0.5 * 2 + 0.5 * 4
    [tensor([3.])]
    """
    name = "ema"
    if isinstance(decay, torch.Tensor):
        check_learning_rate(name, decay, "decay")
    elif isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay <= 1:
        raise ValueError(
            f"funcgrad.optim.{name}: decay must be a number in [0, 1] or a 0-d tensor, got "
            f"{_api_util.describe(decay)}."
        )

    def init(params: Params) -> EmaState:
        leaves, treedef = _flatten(params)
        return EmaState(new_count(leaves), treedef.unflatten(_foreach.zeros_like(leaves)))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        _check_state(name, state, EmaState)
        g, treedef = _flatten(updates)
        average = flat_like(name, "state's moving average (ema)", state.ema, treedef, updates)
        average = _foreach.lerp(average, g, 1.0 - decay)
        count = safe_increment(state.count)
        new = average
        if debias:
            new = _foreach.scale(average, 1.0 / (1.0 - decay ** count.to(scalar_dtype(g))))
        return treedef.unflatten(new), EmaState(count, treedef.unflatten(average))

    return GradientTransformation(init, update)


def _copy(tree: Params) -> Params:
    """``tree`` with every tensor leaf cloned (other leaves as they are)."""
    leaves, treedef = _flatten(tree)
    return treedef.unflatten([x.clone() if isinstance(x, torch.Tensor) else x for x in leaves])


class LookaheadParams(NamedTuple):
    """The parameters :func:`lookahead` works on: ``fast`` (take gradients here) and ``slow``
    (evaluate here).

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.LookaheadParams.init_synced(torch.ones(1))
    LookaheadParams(fast=tensor([1.]), slow=tensor([1.]))
    """

    fast: Params
    slow: Params

    @classmethod
    def init_synced(cls, params: Params) -> LookaheadParams:
        """Fast and slow parameters that start equal: ``fast`` is ``params`` and ``slow`` a copy.

        Fast and slow never share a tensor, so a jitted step sees the same aliasing (none) at
        every call and compiles once (torch.compile guards on ``fast is slow``), and donating
        them reuses both.
        """
        return cls(fast=params, slow=_copy(params))


class LookaheadState(NamedTuple):
    """The state of :func:`lookahead`: the fast optimizer's state and the fast steps taken
    since the last synchronisation.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.lookahead(optim.sgd(0.1), sync_period=5, slow_step_size=0.5)
    >>> opt.init(optim.LookaheadParams.init_synced(torch.ones(1))).steps_since_sync
    tensor(0, dtype=torch.int32)
    """

    fast_state: OptState
    steps_since_sync: torch.Tensor


def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: float | torch.Tensor,
    reset_state: bool = False,
) -> GradientTransformation:
    r"""Lookahead (Zhang et al., 2019, https://arxiv.org/abs/1907.08610): ``k`` steps forward
    with the fast optimizer, then one step back.

    The parameters are a :class:`LookaheadParams` ``(fast, slow)``; gradients are taken at
    ``fast``. Every ``sync_period`` steps, after the fast step,

    .. math::
        \text{slow} \leftarrow \text{slow} + \alpha (\text{fast} - \text{slow}), \quad
        \text{fast} \leftarrow \text{slow}

    with :math:`\alpha` = ``slow_step_size``. ``update`` returns a ``LookaheadParams`` of
    updates; apply it unmodified with :func:`apply_updates`. ``reset_state`` re-initialises
    the fast optimizer's state at each synchronisation. optax's semantics.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.lookahead(optim.sgd(1.0), sync_period=2, slow_step_size=0.5)
    >>> params = optim.LookaheadParams.init_synced(torch.tensor([0.0]))
    >>> state = opt.init(params)
    >>> for _ in range(2):
    ...     updates, state = opt.update(torch.tensor([-1.0]), state, params)
    ...     params = optim.apply_updates(params, updates)
    >>> params  # fast went 0 -> 1 -> 2; slow moved halfway, and fast joined it
    LookaheadParams(fast=tensor([1.]), slow=tensor([1.]))
    """
    name = "lookahead"
    _check_transformation(name, fast_optimizer, "fast_optimizer")
    if not isinstance(sync_period, int) or isinstance(sync_period, bool) or sync_period < 1:
        raise ValueError(
            f"funcgrad.optim.{name}: sync_period must be an int >= 1, got "
            f"{_api_util.describe(sync_period)}."
        )
    check_learning_rate(name, slow_step_size, "slow_step_size")

    def init(params: Params) -> LookaheadState:
        fast = params.fast if isinstance(params, LookaheadParams) else params
        leaves = _flatten(fast)[0]
        return LookaheadState(fast_optimizer.init(fast), new_count(leaves))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        _check_state(name, state, LookaheadState)
        if not isinstance(params, LookaheadParams):
            raise TypeError(
                f"funcgrad.optim.{name}: update needs params=LookaheadParams(fast, slow), the "
                f"current fast and slow parameters, got {_api_util.describe(params)}. Start "
                "from LookaheadParams.init_synced(params)."
            )
        new, fast_state = fast_optimizer.update(updates, state.fast_state, params.fast)
        u, treedef = _flatten(new)
        fast = flat_like(name, "fast parameters", params.fast, treedef, new)
        slow = flat_like(name, "slow parameters", params.slow, treedef, new)
        sync = state.steps_since_sync == sync_period - 1
        s = sync.to(scalar_dtype(u))
        difference = _foreach.sub(_foreach.add(fast, u), slow)
        slow_updates = _foreach.scale(difference, slow_step_size * s)
        fast_updates = _foreach.add(u, difference, -((1.0 - slow_step_size) * s))
        if reset_state:
            fast_state = _where(name, sync, fast_optimizer.init(params.fast), fast_state)
        steps = (state.steps_since_sync + 1) % sync_period
        return LookaheadParams(treedef.unflatten(fast_updates), treedef.unflatten(slow_updates)), (
            LookaheadState(fast_state, steps)
        )

    return GradientTransformation(init, update)
