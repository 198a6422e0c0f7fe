"""Masks and labels: a transformation for some of the parameters (:func:`masked`), or a
different one for each labelled group (:func:`multi_transform`).

Both work inside ``funcgrad.jit`` as NOTE [masked trees under torch.compile] explains.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, NamedTuple

import optree
import torch

from .. import _api_util
from .._typing import PyTree
from ..tree import NAMESPACE
from ._accumulation import _check_state, _check_transformation
from ._base import GradientTransformation, OptState, Params, Updates

__all__ = [
    "MaskedNode",
    "MaskedState",
    "MultiTransformState",
    "masked",
    "multi_transform",
]


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


# NOTE [masked trees under torch.compile]
# A masked-out subtree is a MaskedNode, an empty NamedTuple: to dynamo (torch 2.13) a Python
# constant. A dict whose entries are all constants (every parameter of a dict in another group,
# or a label with no parameters at all) is then a constant dict, and dynamo's stand-in for
# optree cannot flatten one: it folds optree's dict flatten function into a call at trace time,
# whose DictMetaData result it cannot wrap ("Unexpected type in sourceless builder"). Every
# inner transformation flattens its updates and state, so while dynamo traces, the trees handed
# to the inner transformation carry a _TracedMaskedNode instead (an object, not a constant, and
# like MaskedNode a node without leaves) and the inner state comes back with MaskedNodes, the
# structure init built eagerly. optree.tree_map, which dynamo runs without flattening, makes the
# swaps. Eager code never sees a _TracedMaskedNode, and pays one is_compiling() per call.


class _TracedMaskedNode:
    """MaskedNode's stand-in while dynamo traces (NOTE [masked trees under torch.compile])."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MaskedNode()"


optree.register_pytree_node(
    _TracedMaskedNode,  # type: ignore[arg-type]
    lambda node: ((), None, ()),
    lambda meta, children: _TracedMaskedNode(),  # type: ignore[arg-type,return-value]
    namespace=NAMESPACE,
)


def _is_masked_node(x: Any) -> bool:
    return type(x) is MaskedNode or type(x) is _TracedMaskedNode


def _swap_masked_nodes(tree: PyTree, node: type) -> PyTree:
    """``tree`` with every masked-out subtree a ``node()`` (MaskedNode or its stand-in)."""
    return optree.tree_map(
        lambda x: node() if _is_masked_node(x) else x,
        tree,
        is_leaf=_is_masked_node,
        namespace=NAMESPACE,
    )


def _hide(mask_tree: Any, tree: PyTree) -> PyTree:
    """``tree`` with each subtree whose mask is False replaced by a :class:`MaskedNode` (its
    stand-in while dynamo traces: NOTE [masked trees under torch.compile])."""
    node = _TracedMaskedNode if torch.compiler.is_compiling() else MaskedNode
    return optree.tree_map(
        lambda m, sub: sub if m else node(), mask_tree, tree, namespace=NAMESPACE
    )


def _init_hidden(inner: GradientTransformation, mask_tree: Any, params: Params) -> OptState:
    """``inner.init`` on the parameters where the mask is True."""
    state = inner.init(_hide(mask_tree, params))
    if torch.compiler.is_compiling():
        state = _swap_masked_nodes(state, MaskedNode)
    return state


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
    tracing = torch.compiler.is_compiling()
    if tracing:
        inner_state = _swap_masked_nodes(inner_state, _TracedMaskedNode)
    new, inner_state = inner.update(_hide(mask_tree, updates), inner_state, masked_params)
    if tracing:
        inner_state = _swap_masked_nodes(inner_state, MaskedNode)
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
        return MaskedState(_init_hidden(inner, _mask_tree(name, mask, params, "params"), params))

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
            {g: MaskedState(_init_hidden(t, masks[g], params)) for g, t in transforms.items()}
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
