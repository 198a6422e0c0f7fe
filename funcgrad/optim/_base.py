"""The gradient-transformation interface, composition, and applying updates."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import optree
import torch

from .. import _api_util
from .._typing import PyTree
from ..tree import NAMESPACE, _same_structure
from . import _foreach

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "Schedule",
    "apply_updates",
    "chain",
    "identity",
    "set_to_zero",
]

Params = PyTree
Updates = PyTree
OptState = PyTree


class Schedule(Protocol):
    """A function of the step count (a 0-d integer tensor) returning a 0-d tensor or number."""

    def __call__(self, count: torch.Tensor, /) -> torch.Tensor | float: ...


ScalarOrSchedule = float | torch.Tensor | Schedule


class InitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class UpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pair of pure functions: ``init(params) -> state`` and
    ``update(updates, state, params=None) -> (updates, state)``.

    ``update`` turns gradients into updates (to be added to the parameters with
    :func:`apply_updates`) and returns the new state; it never mutates its inputs. States are
    pytrees of NamedTuples and tensors, so they can be flattened, saved, ``vmap``-ed and jitted.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.sgd(learning_rate=0.1)
    >>> params = {"w": torch.tensor([1.0, 2.0])}
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": torch.tensor([1.0, 1.0])}, state, params)
    >>> optim.apply_updates(params, updates)
    {'w': tensor([0.9000, 1.9000])}
    """

    init: InitFn
    update: UpdateFn


class EmptyState(NamedTuple):
    """The state of a stateless transformation.

    >>> from funcgrad import optim
    >>> optim.identity().init({})
    EmptyState()
    """


def init_empty(params: Params) -> EmptyState:
    """The ``init`` of a stateless transformation."""
    del params
    return EmptyState()


def identity() -> GradientTransformation:
    """The transformation that leaves updates unchanged.

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.identity().update([torch.tensor(1.0)], optim.EmptyState())
    ([tensor(1.)], EmptyState())
    """

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        return updates, state

    return GradientTransformation(init_empty, update)


def set_to_zero() -> GradientTransformation:
    """The transformation that replaces every update by zeros (freezes parameters).

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.set_to_zero().update([torch.tensor(3.0)], optim.EmptyState())
    ([tensor(0.)], EmptyState())
    """

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        leaves, treedef = optree.tree_flatten(updates, namespace=NAMESPACE)
        return treedef.unflatten(_foreach.zeros_like(leaves)), state

    return GradientTransformation(init_empty, update)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Applies transformations one after another; the state is the tuple of their states.

    >>> import torch
    >>> from funcgrad import optim
    >>> opt = optim.chain(optim.clip_by_global_norm(1.0), optim.scale(-0.5))
    >>> updates, _ = opt.update([torch.tensor([3.0, 4.0])], opt.init([torch.zeros(2)]))
    >>> updates
    [tensor([-0.3000, -0.4000])]
    """
    for i, t in enumerate(transforms):
        if not isinstance(t, GradientTransformation):
            raise TypeError(
                f"funcgrad.optim.chain: argument {i} must be a GradientTransformation, got "
                f"{type(t).__name__}. Call the factory (e.g. optim.adam(1e-3), not optim.adam)."
            )
    inits = tuple(t.init for t in transforms)
    updates_fns = tuple(t.update for t in transforms)

    def init(params: Params) -> tuple[OptState, ...]:
        return tuple(fn(params) for fn in inits)

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        if not isinstance(state, tuple) or len(state) != len(updates_fns):
            raise ValueError(
                f"funcgrad.optim.chain: expected the state of {len(updates_fns)} chained "
                f"transformations (a tuple), got {_api_util.describe(state)}. Pass the state "
                "returned by this chain's init or update."
            )
        new_state = []
        for fn, s in zip(updates_fns, state):
            updates, s = fn(updates, s, params)
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def apply_updates(params: Params, updates: Updates) -> Params:
    """Returns ``params + updates``, leaf by leaf, in each parameter's dtype.

    Each sum is computed in the promoted dtype and rounded once to the parameter's dtype.

    >>> import torch
    >>> from funcgrad import optim
    >>> optim.apply_updates({"w": torch.ones(2)}, {"w": torch.tensor([0.5, -0.5])})
    {'w': tensor([1.5000, 0.5000])}
    """
    p_leaves, p_def = optree.tree_flatten(params, namespace=NAMESPACE)
    u_leaves = flat_like("apply_updates", "updates", updates, p_def, params, "params")
    # Added in the promoted dtype and rounded once to the parameter's dtype (as optax does).
    new = _foreach.add(p_leaves, u_leaves)
    return p_def.unflatten(
        [n if n.dtype == p.dtype else n.to(p.dtype) for p, n in zip(p_leaves, new)]
    )


# --------------------------------------------------------------------------------------------
# Helpers shared by the transformations
# --------------------------------------------------------------------------------------------


def flatten(tree: PyTree) -> tuple[list[Any], Any]:
    """Leaves and structure of a tree in funcgrad's namespace (every transform's first step)."""
    return optree.tree_flatten(tree, namespace=NAMESPACE)


def zeros_tree(params: Params) -> PyTree:
    """A tree of zeros shaped like ``params`` (a fresh moment buffer)."""
    leaves, treedef = flatten(params)
    return treedef.unflatten(_foreach.zeros_like(leaves))


def flat_like(
    name: str,
    what: str,
    tree: PyTree,
    treedef: Any,
    reference: PyTree,
    reference_what: str = "updates",
) -> list[Any]:
    """The leaves of ``tree``, which must have structure ``treedef`` (that of ``reference``)."""
    leaves, got = optree.tree_flatten(tree, namespace=NAMESPACE)
    if not _same_structure(got, treedef):
        raise ValueError(
            f"funcgrad.optim.{name}: the {what} must have the structure of the {reference_what}, "
            f"{treedef}, but got {got}{_first_difference(tree, reference, reference_what)}. Pass "
            "trees built from "
            "the same parameters (the optimizer state from init(params) of this model)."
        )
    return leaves


def _first_difference(a: PyTree, b: PyTree, b_what: str) -> str:
    a_paths = set(_api_util.leaf_paths(a, "tree"))
    b_paths = set(_api_util.leaf_paths(b, "tree"))
    only_a, only_b = sorted(a_paths - b_paths), sorted(b_paths - a_paths)
    if only_a:
        return f" (it has {only_a[0]}, which the {b_what} do not)"
    if only_b:
        return f" (it lacks {only_b[0]})"
    return ""


def require_params(name: str, params: Params | None, hint: str = "") -> Params:
    if params is None:
        raise ValueError(
            f"funcgrad.optim.{name}: this transformation needs the current parameters; call "
            f"update(updates, state, params) with params.{hint}"
        )
    return params


def check_learning_rate(name: str, value: Any, what: str = "learning_rate") -> None:
    """A number or tensor hyperparameter must be finite and non-negative; schedules pass."""
    if callable(value):
        return
    if isinstance(value, torch.Tensor):
        if value.dim() != 0:
            raise ValueError(
                f"funcgrad.optim.{name}: {what} must be a number, a 0-d tensor or a schedule, "
                f"got a tensor of shape {tuple(value.shape)}."
            )
        if not value.is_floating_point():
            raise TypeError(
                f"funcgrad.optim.{name}: {what} must be a floating-point tensor, got {value.dtype}."
            )
        if not _eager():
            return  # the value is traced or batched here: it can only be checked eagerly
        number = float(value.detach())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise TypeError(
            f"funcgrad.optim.{name}: {what} must be a number, a 0-d tensor or a schedule "
            f"(a function of the step count), got {type(value).__name__}."
        )
    if math.isnan(number) or number < 0:
        raise ValueError(
            f"funcgrad.optim.{name}: {what} must be a non-negative number, got {number}."
        )


def _eager() -> bool:
    """Whether tensor values can be read here (not compiling, not inside a torch.func transform)."""
    return not torch.compiler.is_compiling() and not _api_util.in_transform()


def evaluate_schedule(
    name: str, schedule: Callable[[torch.Tensor], Any], count: torch.Tensor
) -> Any:
    """Calls a schedule and checks that it returned a scalar."""
    value = schedule(count)
    if isinstance(value, torch.Tensor):
        if value.dim() != 0:
            raise ValueError(
                f"funcgrad.optim.{name}: a schedule must return a scalar (a number or a 0-d "
                f"tensor), but it returned a tensor of shape {tuple(value.shape)} at step "
                f"{count.tolist() if _eager() else '(traced)'}."
            )
    elif not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(
            f"funcgrad.optim.{name}: a schedule must return a scalar (a number or a 0-d "
            f"tensor), but it returned {_api_util.describe(value)}."
        )
    return value


def new_count(leaves: list[torch.Tensor]) -> torch.Tensor:
    """A step counter: a 0-d int32 tensor on the parameters' device (never a Python int)."""
    device = leaves[0].device if leaves else None
    return torch.zeros((), dtype=torch.int32, device=device)


def safe_increment(count: torch.Tensor) -> torch.Tensor:
    """``count + 1``, saturating at the largest int32 instead of wrapping around."""
    max_int = torch.iinfo(torch.int32).max
    return torch.where(count < max_int, count + 1, count)
