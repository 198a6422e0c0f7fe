"""Wrappers and combinators: masks, per-label transformations, gradient accumulation, injected
hyperparameters, skipping non-finite updates, moving averages and lookahead.

# NOTE [choosing with torch.where]
# Several wrappers decide at each step whether an update happens: MultiSteps on the k-th
# micro-batch, apply_if_finite when the gradients are finite, lookahead on a synchronisation
# step. The decision is a 0-d bool tensor, never a Python bool: both outcomes are computed and
# each leaf of the updates and state is picked with torch.where. A Python `if` on a tensor
# would cost a device-to-host sync per step, break the graph under torch.compile, and fail
# under vmap, where each member of an ensemble may decide differently.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NamedTuple

import optree
import torch

from .. import _api_util
from .._typing import PyTree
from ..tree import NAMESPACE
from . import _foreach
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
from ._transforms import scalar_dtype

__all__ = [
    "ApplyIfFiniteState",
    "EmaState",
    "InjectHyperparamsState",
    "LookaheadParams",
    "LookaheadState",
    "MaskedNode",
    "MaskedState",
    "MultiSteps",
    "MultiStepsState",
    "MultiTransformState",
    "apply_if_finite",
    "ema",
    "inject_hyperparams",
    "lookahead",
    "masked",
    "multi_transform",
    "skip_large_updates",
    "skip_not_finite",
]


def _flatten(tree: PyTree) -> tuple[list[Any], Any]:
    return optree.tree_flatten(tree, namespace=NAMESPACE)


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
# Masks and labels
# --------------------------------------------------------------------------------------------


class MaskedNode(NamedTuple):
    """Stands for a masked-out subtree: a node without leaves, so tree maps pass over it.

    >>> import funcgrad as fg
    >>> from funcgrad import optim
    >>> fg.tree.leaves({"w": optim.MaskedNode(), "b": 1.0})
    [1.0]
    """


class MaskedState(NamedTuple):
    """The state of :func:`masked`: the inner state, built on the unmasked parameters only.

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.masked(optim.trace(0.9), {"w": True, "b": False}).init(
    ...     {"w": torch.zeros(1), "b": torch.zeros(1)}
    ... )
    MaskedState(inner_state=TraceState(trace={'w': tensor([0.]), 'b': MaskedNode()}))
    """

    inner_state: OptState


def _mask_tree(name: str, mask: Any, tree: PyTree, root: str) -> Any:
    """The mask for ``tree`` (``mask(tree)`` for a function), checked to be a prefix of bools."""
    mask_tree = mask(tree) if callable(mask) else mask
    values = _api_util.broadcast_prefix(
        f"optim.{name}",
        mask_tree,
        tree,
        root,
        "mask",
        "Use True or False for a whole subtree, or mirror its structure exactly.",
    )
    for v in values:
        if not isinstance(v, bool):
            raise TypeError(
                f"funcgrad.optim.{name}: every leaf of the mask must be True or False, got "
                f"{_api_util.describe(v)}. Masks are static: use Python bools, not tensors."
            )
    return mask_tree


def _hide(mask_tree: Any, tree: PyTree) -> PyTree:
    """``tree`` with each subtree whose mask is False replaced by a :class:`MaskedNode`."""
    return optree.tree_map(
        lambda m, sub: sub if m else MaskedNode(), mask_tree, tree, namespace=NAMESPACE
    )


def _masked_update(
    name: str,
    inner: GradientTransformation,
    mask_tree: Any,
    updates: Updates,
    inner_state: OptState,
    params: Params | None,
) -> tuple[Updates, OptState]:
    masked_params = None
    if params is not None:
        try:
            masked_params = _hide(mask_tree, params)
        except (ValueError, TypeError):
            _api_util.broadcast_prefix(
                f"optim.{name}",
                mask_tree,
                params,
                "params",
                "mask",
                "Use True or False for a whole subtree, or mirror its structure exactly.",
            )
            raise
    new, inner_state = inner.update(_hide(mask_tree, updates), inner_state, masked_params)
    merged = optree.tree_map(
        lambda m, n, o: n if m else o, mask_tree, new, updates, namespace=NAMESPACE
    )
    return merged, inner_state


def masked(inner: GradientTransformation, mask: Any) -> GradientTransformation:
    """Applies ``inner`` only to the updates where ``mask`` is True; the others pass unchanged.

    ``inner`` sees a tree in which each masked-out subtree is a :class:`MaskedNode`, so its
    state holds nothing for them (as in optax).

    Args:
        inner: the transformation to apply to the selected leaves.
        mask: a pytree prefix of the parameters with bool leaves, or a function returning one
            (called on the parameters in ``init`` and on the updates in ``update``).

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.masked(optim.scale(10.0), {"w": True, "b": False})
    >>> grads = {"w": torch.tensor(1.0), "b": torch.tensor(1.0)}
    >>> opt.update(grads, opt.init(grads))[0]
    {'w': tensor(10.), 'b': tensor(1.)}
    """
    name = "masked"
    _check_transformation(name, inner)

    def init(params: Params) -> MaskedState:
        return MaskedState(inner.init(_hide(_mask_tree(name, mask, params, "params"), params)))

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        _check_state(name, state, MaskedState)
        mask_tree = _mask_tree(name, mask, updates, "updates")
        new, inner_state = _masked_update(
            name, inner, mask_tree, updates, state.inner_state, params
        )
        return new, MaskedState(inner_state)

    return GradientTransformation(init, update)


class MultiTransformState(NamedTuple):
    """The state of :func:`multi_transform`: one :class:`MaskedState` per label.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.multi_transform({"a": optim.identity()}, "a")
    >>> opt.init(torch.zeros(1))
    MultiTransformState(inner_states={'a': MaskedState(inner_state=EmptyState())})
    """

    inner_states: dict[Hashable, MaskedState]


def _label_masks(
    name: str, param_labels: Any, tree: PyTree, root: str, transforms: Mapping[Hashable, Any]
) -> dict[Hashable, Any]:
    """One mask tree per label, after checking that every leaf's label has a transformation."""
    labels = param_labels(tree) if callable(param_labels) else param_labels
    values = _api_util.broadcast_prefix(
        f"optim.{name}",
        labels,
        tree,
        root,
        "param_labels",
        "Use one label for a whole subtree, or mirror its structure exactly.",
    )
    for i, v in enumerate(values):
        if not isinstance(v, Hashable) or v not in transforms:
            path = _api_util.leaf_paths(tree, root)[i]
            raise ValueError(
                f"funcgrad.optim.{name}: the leaf at {path} has the label {v!r}, which has no "
                f"transformation (transforms has the labels {list(transforms)}). Add a "
                "transformation for it, or fix its label."
            )
    return {
        group: optree.tree_map(
            lambda label, g=group: bool(label == g),
            labels,
            is_leaf=lambda x: x is None,
            namespace=NAMESPACE,
        )
        for group in transforms
    }


def multi_transform(
    transforms: Mapping[Hashable, GradientTransformation], param_labels: Any
) -> GradientTransformation:
    """Applies a different transformation to each group of parameters, chosen by label.

    Args:
        transforms: a mapping from labels to transformations.
        param_labels: a pytree prefix of the parameters whose leaves are labels (keys of
            ``transforms``), or a function of the parameters (or updates) returning one.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.multi_transform(
    ...     {"fast": optim.sgd(1.0), "frozen": optim.set_to_zero()},
    ...     {"w": "fast", "b": "frozen"},
    ... )
    >>> params = {"w": torch.tensor(2.0), "b": torch.tensor(2.0)}
    >>> opt.update({"w": torch.tensor(0.5), "b": torch.tensor(0.5)}, opt.init(params), params)[0]
    {'w': tensor(-0.5000), 'b': tensor(0.)}
    """
    name = "multi_transform"
    if not isinstance(transforms, Mapping):
        raise TypeError(
            f"funcgrad.optim.{name}: transforms must be a dict from labels to "
            f"GradientTransformations, got {type(transforms).__name__}."
        )
    for label, t in transforms.items():
        _check_transformation(name, t, f"transforms[{label!r}]")
    transforms = dict(transforms)

    def init(params: Params) -> MultiTransformState:
        masks = _label_masks(name, param_labels, params, "params", transforms)
        return MultiTransformState(
            {g: MaskedState(t.init(_hide(masks[g], params))) for g, t in transforms.items()}
        )

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        _check_state(name, state, MultiTransformState)
        if set(state.inner_states) != set(transforms):
            raise ValueError(
                f"funcgrad.optim.{name}: the state has the labels {list(state.inner_states)} "
                f"but transforms has {list(transforms)}. Pass the state from this "
                "transformation's init."
            )
        masks = _label_masks(name, param_labels, updates, "updates", transforms)
        inner_states = {}
        for g, t in transforms.items():
            updates, s = _masked_update(
                name, t, masks[g], updates, state.inner_states[g].inner_state, params
            )
            inner_states[g] = MaskedState(s)
        return updates, MultiTransformState(inner_states)

    return GradientTransformation(init, update)


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
# Non-finite updates, moving averages, lookahead
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
        return ApplyIfFiniteState(
            count, torch.ones((), dtype=torch.bool, device=count.device), count, inner.init(params)
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
        """Fast and slow parameters that start equal."""
        return cls(fast=params, slow=params)


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
