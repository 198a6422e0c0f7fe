"""ZeRO-1: an optimizer whose state is sharded across the processes (``shard_optimizer``).

# NOTE [ZeRO-1 by whole leaves]
# Every process owns some of the parameter leaves, chosen the same way everywhere: leaves in
# decreasing size (ties by position), each to the process that owns the fewest elements so far.
# The inner optimizer runs on a tree of the same structure in which the leaves a process does
# not own are empty tensors (shape (0,), same dtype and device): its state for them is empty, so
# a process keeps about 1/world_size of an Adam state, and masks, labels and callables that look
# at the tree's structure see the structure they expect. The owned leaves' updates are then
# all-gathered, one flat buffer per (dtype, device) of the gradients, each process's part padded
# to the longest, so every process ends with the full updates.
#
# Sharding by whole leaves, not by ranges of elements, keeps every per-leaf computation
# (Adafactor's factored moments, LAMB's and LARS's trust ratios) exactly what the unsharded
# optimizer computes: for optimizers that act leaf by leaf the sharded update equals the
# unsharded one. What couples leaves (clip_by_global_norm, a global-norm statistic) would only
# see this process's leaves, so it belongs before the sharded optimizer, on the full gradients:
# chain(clip_by_global_norm(1.0), shard_optimizer(adam(1e-3))). The balance is only as fine as
# the leaves: one huge embedding is one process's state.
"""

from __future__ import annotations

from typing import Any

import torch

from . import tree as _tree
from ._distributed_collectives import (
    _all_gather_flat,
    _check_eager,
    _groups,
    _tensor_leaves,
    rank,
    world_size,
)
from ._typing import PyTree
from .optim import GradientTransformation

__all__ = ["owned_leaves", "shard_optimizer"]


def _owners(leaves: list[Any], n: int) -> list[int]:
    """NOTE [ZeRO-1 by whole leaves]: the rank that owns each leaf."""
    load = [0] * n
    owners = [0] * len(leaves)
    sizes = [x.numel() if isinstance(x, torch.Tensor) else 1 for x in leaves]
    for i in sorted(range(len(leaves)), key=lambda i: (-sizes[i], i)):
        r = min(range(n), key=lambda r: (load[r], r))
        owners[i] = r
        load[r] += sizes[i]
    return owners


def _empty(x: Any) -> Any:
    return x.new_empty((0,)) if isinstance(x, torch.Tensor) else x


def _keep_owned(leaves: list[Any], owners: list[int], me: int) -> list[Any]:
    return [x if o == me else _empty(x) for x, o in zip(leaves, owners)]


def owned_leaves(tree: PyTree) -> PyTree:
    """The tree :func:`shard_optimizer` hands its inner optimizer on this process.

    The leaves this process owns are kept; the others become empty tensors of their dtype and
    device (NOTE [ZeRO-1 by whole leaves] in ``funcgrad/_distributed_zero.py``). With one
    process, ``tree`` itself.

    Args:
        tree: a pytree of tensors, e.g. the parameters.

    Returns:
        A tree of the structure of ``tree``.

    >>> import torch
    >>> from funcgrad import distributed
    >>> distributed.owned_leaves({"w": torch.ones(2)})  # one process owns everything
    {'w': tensor([1., 1.])}
    """
    n = world_size()
    if n == 1:
        return tree
    leaves, treedef = _tree.flatten(tree)
    return _tree.unflatten(treedef, _keep_owned(leaves, _owners(leaves, n), rank()))


def _gather_updates(
    grads: list[torch.Tensor], updates: list[Any], owners: list[int], n: int
) -> list[Any]:
    """The full updates from each process's owned ones (in the gradients' dtypes)."""
    me = rank()
    out: list[Any] = [None] * len(grads)
    for group in _groups(grads):
        per_rank = [[i for i in group if owners[i] == r] for r in range(n)]
        lengths = [sum(grads[i].numel() for i in idx) for idx in per_rank]
        longest = max(lengths)
        if longest == 0:  # only empty leaves
            for i in group:
                out[i] = grads[i].new_empty(grads[i].shape)
            continue
        g = grads[group[0]]
        mine = [updates[i].reshape(-1).to(g.dtype) for i in per_rank[me]]
        pad = longest - lengths[me]
        if pad:
            mine.append(g.new_zeros((pad,)))
        gathered = _all_gather_flat("shard_optimizer", torch.cat(mine), n)
        for r, idx in enumerate(per_rank):
            start = 0
            for i in idx:
                size = grads[i].numel()
                out[i] = gathered[r, start : start + size].view(grads[i].shape)
                start += size
    return out


def _check_opt(opt: Any) -> None:
    if isinstance(opt, GradientTransformation):
        return
    hint = "Call the factory (optim.adam(1e-3), not optim.adam)."
    if hasattr(opt, "gradient_transformation"):
        hint = "Pass multi_steps.gradient_transformation()."
    raise TypeError(
        "funcgrad.distributed.shard_optimizer: opt must be a "
        f"funcgrad.optim.GradientTransformation, got {type(opt).__name__}. {hint}"
    )


def shard_optimizer(opt: GradientTransformation) -> GradientTransformation:
    """ZeRO-1: ``opt`` with its state sharded across the processes.

    Each process keeps the optimizer state of only the parameter leaves it owns (about
    ``1/world_size()`` of them, balanced by size), computes their updates, and all-gathers the
    updates, so that every process returns the full updates: use it in a data-parallel step
    exactly like ``opt``, after ``pmean`` of the gradients. For an optimizer that acts leaf by
    leaf (``sgd``, ``adam``, ``adamw``, ``lion``, ``lamb``, ``adafactor``, ...) the updates
    equal the unsharded ones; put what couples leaves, such as ``clip_by_global_norm``, before
    it (NOTE [ZeRO-1 by whole leaves] in ``funcgrad/_distributed_zero.py``). The updates are
    gathered in the gradients' dtypes. Works under :func:`funcgrad.jit`. With one process it
    behaves as ``opt``.

    The state differs between processes (each holds its own shard): checkpoint it per rank.

    Args:
        opt: the optimizer to shard.

    Returns:
        A :class:`funcgrad.optim.GradientTransformation`.

    Raises:
        TypeError: if ``opt`` is not a ``GradientTransformation``.

    >>> import torch
    >>> from funcgrad import distributed, optim
    >>> opt = distributed.shard_optimizer(optim.adam(0.1))
    >>> params = {"w": torch.ones(2)}
    >>> updates, state = opt.update({"w": torch.ones(2)}, opt.init(params), params)
    >>> updates
    {'w': tensor([-0.1000, -0.1000])}
    """
    _check_opt(opt)

    def init(params: PyTree) -> PyTree:
        return opt.init(owned_leaves(params))

    def update(
        updates: PyTree, state: PyTree, params: PyTree | None = None
    ) -> tuple[PyTree, PyTree]:
        n = world_size()
        if n == 1:
            return opt.update(updates, state, params)
        if not torch.compiler.is_compiling():
            _check_eager("shard_optimizer")
        grads, treedef = _tensor_leaves("shard_optimizer", updates)
        owners = _owners(grads, n)
        me = rank()
        mine = _tree.unflatten(treedef, _keep_owned(grads, owners, me))
        if params is not None:
            p_leaves, p_def = _tree.flatten(params)
            params = _tree.unflatten(p_def, _keep_owned(p_leaves, _owners(p_leaves, n), me))
        new, state = opt.update(mine, state, params)
        new_leaves = _tree.leaves(new)
        return _tree.unflatten(treedef, _gather_updates(grads, new_leaves, owners, n)), state

    return GradientTransformation(init, update)
