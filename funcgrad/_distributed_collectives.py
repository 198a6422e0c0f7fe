"""Pytree collectives over ``torch.distributed``: ``psum``, ``pmean``, ``all_gather``,
``broadcast``; the process's rank and the world size. Re-exported by
:mod:`funcgrad.distributed`, whose docstring shows the data-parallel pattern.

# NOTE [coalesced collectives]
# A gradient tree has tens to hundreds of leaves; one collective call per leaf pays the
# per-call latency of the backend (a round trip over TCP for gloo, a kernel launch and a
# rendezvous for NCCL) that many times. Each collective here flattens the tree with optree,
# groups the leaves by (dtype, device) in order of first appearance, concatenates each group
# into one flat buffer (torch.cat of the flattened leaves: one copy), runs ONE collective per
# buffer, and cuts the result back into the leaves' shapes (views of the result). Dtypes are
# kept: a float64, a float32, a bfloat16 and an int64 leaf make four buffers and four calls.
# benchmarks/distributed.py measures the gain over one call per leaf.
#
# NOTE [collectives under jit]
# torch.compile cannot trace the in-place c10d calls that return work handles
# (dist.broadcast, dist.all_gather_single); it traces the *functional* collectives of
# torch.distributed._functional_collectives, which return new tensors and become
# _c10d_functional ops (all_reduce, all_gather_into_tensor, broadcast, each followed by
# wait_tensor) in the graph. So each collective takes one of two paths: while dynamo traces
# (torch.compiler.is_compiling()) it calls the functional collective on the flat buffer; in
# eager mode it calls the in-place c10d op on a buffer it owns (the concatenation is already a
# copy: no second one) and turns a backend failure into an error that says what went wrong.
# Both paths run with gloo on the CPU and with NCCL on CUDA; tests/test_distributed.py runs the
# jitted one with gloo and the aot_eager and inductor backends. rank() and world_size() are
# read while tracing and become constants of the graph (a compiled step belongs to one rank).
#
# NOTE [one process]
# Without an initialised process group (a plain `python train.py`, or a world of one process)
# there is nobody to talk to: psum, pmean and broadcast return their argument unchanged (the
# same tensors, no copy) and all_gather adds the leading axis of size 1, as JAX's collectives
# do over an axis of size 1. The arguments are validated all the same, so that code which runs
# on one process does not fail on two for a reason one process could have caught.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from . import tree as _tree
from ._api_util import describe, leaf_paths
from ._typing import PyTree

__all__ = ["all_gather", "broadcast", "pmean", "psum", "rank", "world_size"]

try:  # the traceable collectives (NOTE [collectives under jit])
    import torch.distributed._functional_collectives as _funcol
except ImportError:  # pragma: no cover - torch built without distributed support
    _funcol = None  # type: ignore[assignment]

_peek_interpreter_stack: Callable[[], Any] = torch._C._functorch.peek_interpreter_stack

#: The timeout given to :func:`funcgrad.distributed.init`, in seconds, for error messages.
_timeout_s: list[float | None] = [None]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: ``0 <= rank() < world_size()``; 0 without a process group.

    >>> from funcgrad import distributed
    >>> distributed.rank()  # one process
    0
    """
    return dist.get_rank() if _initialized() else 0


def world_size() -> int:
    """The number of processes that take part in the collectives; 1 without a process group.

    >>> from funcgrad import distributed
    >>> distributed.world_size()  # one process
    1
    """
    return dist.get_world_size() if _initialized() else 1


# --------------------------------------------------------------------------------------------
# Validation and flat buffers (NOTE [coalesced collectives])
# --------------------------------------------------------------------------------------------


def _tensor_leaves(name: str, tree: PyTree) -> tuple[list[torch.Tensor], Any]:
    """The leaves of ``tree``, all tensors (else an error naming the first other leaf)."""
    leaves, treedef = _tree.flatten(tree)
    for i, x in enumerate(leaves):
        if not isinstance(x, torch.Tensor):
            path = leaf_paths(tree, "tree")[i]
            raise TypeError(
                f"funcgrad.distributed.{name}: every leaf must be a tensor, but {path} is "
                f"{describe(x)}. Make it a tensor (torch.as_tensor) or keep it out of the tree."
            )
    return leaves, treedef


def _check_floating(name: str, tree: PyTree, leaves: list[torch.Tensor]) -> None:
    for i, x in enumerate(leaves):
        if not (x.is_floating_point() or x.is_complex()):
            path = leaf_paths(tree, "tree")[i]
            raise TypeError(
                f"funcgrad.distributed.{name}: every leaf must be a floating-point tensor (a "
                f"mean keeps the leaf's dtype), but {path} is {describe(x)}. Use psum for "
                "integer leaves and divide by world_size() where you need to."
            )


def _check_eager(name: str) -> None:
    """Collectives are not batchable or differentiable: not inside an eager torch.func transform."""
    if _peek_interpreter_stack() is not None:
        raise RuntimeError(
            f"funcgrad.distributed.{name}: cannot run inside grad, vmap or another torch.func "
            "transform (collectives are neither differentiable nor batchable here). Apply it to "
            f"the transform's results instead, e.g. grads = {name}(fg.grad(loss)(params, batch))."
        )


def _groups(leaves: list[torch.Tensor]) -> list[list[int]]:
    """Indices of the leaves, grouped by (dtype, device) in order of first appearance."""
    groups: list[list[int]] = []
    keys: list[tuple[torch.dtype, torch.device]] = []
    for i, x in enumerate(leaves):
        key = (x.dtype, x.device)
        for j, k in enumerate(keys):
            if k == key:
                groups[j].append(i)
                break
        else:
            keys.append(key)
            groups.append([i])
    return groups


def _flat(leaves: list[torch.Tensor], group: list[int]) -> torch.Tensor:
    """One new 1-d buffer holding the group's leaves one after another."""
    return torch.cat([leaves[i].reshape(-1) for i in group])


def _unflat(
    buffer: torch.Tensor, leaves: list[torch.Tensor], group: list[int], out: list[Any]
) -> None:
    """Cuts a 1-d buffer back into the group's leaves' shapes (views), into ``out``."""
    sizes = [leaves[i].numel() for i in group]
    for i, part in zip(group, torch.split(buffer, sizes)):
        out[i] = part.view(leaves[i].shape)


def _failed(name: str, op: str, error: BaseException) -> RuntimeError:
    timeout = _timeout_s[0]
    waited = f"{timeout:g} s, the timeout given to init" if timeout is not None else "the timeout"
    return RuntimeError(
        f"funcgrad.distributed.{name}: the {op} failed on rank {rank()} of {world_size()}. "
        f"Another process exited, did not reach this collective within {waited}, or called a "
        "different collective or one with other shapes; check the other ranks' logs. The "
        f"backend said: {error}"
    )


def _eager(name: str, op: str, fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except RuntimeError as e:
        raise _failed(name, op, e) from e


def _world() -> Any:
    """The default group, for the functional collectives (typed optional in torch)."""
    return dist.group.WORLD


def _all_gather_flat(name: str, buffer: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's 1-d ``buffer``, stacked: shape ``(n, buffer.numel())``."""
    if torch.compiler.is_compiling():
        gathered = _funcol.all_gather_tensor(buffer, 0, _world())
    else:
        gathered = buffer.new_empty((n * buffer.numel(),))
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        _eager(name, "all_gather", gather, gathered, buffer)
    return gathered.view(n, buffer.numel())


def _all_reduce_flat(name: str, buffer: torch.Tensor) -> torch.Tensor:
    if torch.compiler.is_compiling():
        reduced: torch.Tensor = _funcol.all_reduce(buffer, "sum", _world())
        return reduced
    _eager(name, "all_reduce", dist.all_reduce, buffer)
    return buffer


# --------------------------------------------------------------------------------------------
# The collectives
# --------------------------------------------------------------------------------------------


def _reduce(name: str, tree: PyTree, mean: bool) -> PyTree:
    leaves, treedef = _tensor_leaves(name, tree)
    if mean:
        _check_floating(name, tree, leaves)
    compiling = torch.compiler.is_compiling()
    if not compiling:
        _check_eager(name)
    n = world_size()
    if n == 1 or not leaves:  # NOTE [one process]
        return tree
    out: list[Any] = list(leaves)
    for group in _groups(leaves):
        buffer = _all_reduce_flat(name, _flat(leaves, group))
        if mean:
            buffer = buffer / n if compiling else buffer.div_(n)
        _unflat(buffer, leaves, group, out)
    return _tree.unflatten(treedef, out)


def psum(tree: PyTree) -> PyTree:
    """The elementwise sum of ``tree`` over all processes, on every process.

    Every process passes a tree of the same structure, shapes and dtypes; each gets the sum,
    leaf by leaf, in the leaf's dtype. The leaves travel in one flat buffer per (dtype, device),
    with one all-reduce per buffer (NOTE [coalesced collectives] in
    ``funcgrad/_distributed_collectives.py``). Works in eager mode and inside
    :func:`funcgrad.jit`; not inside ``grad``/``vmap`` (apply it to their results). Without a
    process group, or with one process, it returns ``tree`` itself.

    Args:
        tree: a pytree of tensors (any dtypes; integer sums stay integers).

    Returns:
        A tree of the structure of ``tree``: the sums.

    Raises:
        TypeError: if a leaf is not a tensor (the message names its path).
        RuntimeError: if another process fails or times out (see
            :func:`funcgrad.distributed.init`), or inside a torch.func transform.

    >>> import torch
    >>> from funcgrad import distributed
    >>> distributed.psum({"w": torch.ones(2), "n": torch.tensor(3)})  # one process: itself
    {'w': tensor([1., 1.]), 'n': tensor(3)}
    """
    return _reduce("psum", tree, mean=False)


def pmean(tree: PyTree) -> PyTree:
    """The elementwise mean of ``tree`` over all processes, on every process.

    The data-parallel step: each process computes the gradients of its shard of the global
    batch, and ``pmean(grads)`` gives every process the gradients of the whole batch (for a
    loss that is a mean over examples and equal shards). Computed as :func:`psum` divided by
    :func:`world_size` in each leaf's dtype. Without a process group it returns ``tree`` itself.

    Args:
        tree: a pytree of floating-point tensors.

    Returns:
        A tree of the structure of ``tree``: the means.

    Raises:
        TypeError: if a leaf is not a floating-point tensor (use :func:`psum` for integers).
        RuntimeError: as :func:`psum`.

    >>> import torch
    >>> from funcgrad import distributed
    >>> distributed.pmean([torch.tensor([1.0, 2.0])])  # one process: itself
    [tensor([1., 2.])]
    """
    return _reduce("pmean", tree, mean=True)


def all_gather(tree: PyTree) -> PyTree:
    """Every process's ``tree``, stacked along a new leading axis, on every process.

    Each leaf of the result has shape ``(world_size(), *leaf.shape)``, its entry ``i`` the leaf
    of rank ``i`` (JAX's ``all_gather`` with ``tiled=False``). One all-gather per (dtype,
    device) buffer. Without a process group the new axis has size 1.

    Args:
        tree: a pytree of tensors, of the same structure, shapes and dtypes on every process.

    Returns:
        A tree of the structure of ``tree`` with the stacked leaves.

    Raises:
        TypeError: if a leaf is not a tensor.
        RuntimeError: as :func:`psum`.

    >>> import torch
    >>> from funcgrad import distributed
    >>> distributed.all_gather({"x": torch.tensor([1, 2])})  # one process: axis of size 1
    {'x': tensor([[1, 2]])}
    """
    leaves, treedef = _tensor_leaves("all_gather", tree)
    if not torch.compiler.is_compiling():
        _check_eager("all_gather")
    n = world_size()
    if n == 1:
        return _tree.unflatten(treedef, [x.unsqueeze(0) for x in leaves])
    out: list[Any] = list(leaves)
    for group in _groups(leaves):
        gathered = _all_gather_flat("all_gather", _flat(leaves, group), n)
        start = 0
        for i in group:
            size = leaves[i].numel()
            out[i] = gathered[:, start : start + size].reshape(n, *leaves[i].shape)
            start += size
    return _tree.unflatten(treedef, out)


def broadcast(tree: PyTree, src: int = 0) -> PyTree:
    """Rank ``src``'s ``tree``, on every process.

    The other processes pass a tree of the same structure, shapes and dtypes (its values are
    ignored), e.g. their own freshly initialised parameters, which ``broadcast(params)`` then
    replaces by rank 0's. One broadcast per (dtype, device) buffer. Without a process group it
    returns ``tree`` itself.

    Args:
        tree: a pytree of tensors.
        src: the rank whose values everyone gets, ``0 <= src < world_size()``.

    Returns:
        A tree of the structure of ``tree`` with ``src``'s values.

    Raises:
        TypeError: if a leaf is not a tensor, or ``src`` is not an int.
        ValueError: if ``src`` is not a rank.
        RuntimeError: as :func:`psum`.

    >>> import torch
    >>> from funcgrad import distributed
    >>> distributed.broadcast({"w": torch.zeros(2, dtype=torch.bfloat16)}, src=0)
    {'w': tensor([0., 0.], dtype=torch.bfloat16)}
    """
    leaves, treedef = _tensor_leaves("broadcast", tree)
    n = world_size()
    if not isinstance(src, int) or isinstance(src, bool):
        raise TypeError(f"funcgrad.distributed.broadcast: src must be an int, got {describe(src)}.")
    if not 0 <= src < n:
        raise ValueError(
            f"funcgrad.distributed.broadcast: src must be a rank, 0 <= src < world_size() = {n}, "
            f"got {src}."
        )
    compiling = torch.compiler.is_compiling()
    if not compiling:
        _check_eager("broadcast")
    if n == 1 or not leaves:
        return tree
    out: list[Any] = list(leaves)
    for group in _groups(leaves):
        buffer = _flat(leaves, group)
        if compiling:
            buffer = _funcol.broadcast(buffer, src, _world())
        else:
            _eager("broadcast", "broadcast", dist.broadcast, buffer, src)
        _unflat(buffer, leaves, group, out)
    return _tree.unflatten(treedef, out)
