"""Data-parallel training over ``torch.distributed``: pytree collectives, sharded batches, ZeRO-1.

One process per device, launched by ``torchrun``; every process runs the same pure train step on
its own slice of each global batch, and averages the gradients before the update, so that all
processes keep identical parameters::

    # torchrun --nproc_per_node=2 train.py
    from funcgrad import distributed

    distributed.init()  # NCCL on CUDA, else gloo; a no-op under plain `python train.py`

    def step(params, opt_state, batch):
        loss, grads = fg.value_and_grad(loss_fn)(params, batch)
        grads = distributed.pmean(grads)  # the gradients of the whole global batch
        updates, opt_state = opt.update(grads, opt_state, params)
        return fg.optim.apply_updates(params, updates), opt_state, distributed.pmean(loss)

    step = fg.jit(step, donate_argnums=(0, 1))  # the collectives are traced into the graph
    params = distributed.broadcast(params)  # everyone starts from rank 0's parameters
    for epoch in range(epochs):
        key, sub = fg.random.split(key)  # the same key on every process
        for batch in distributed.batches(train, global_batch_size, key=sub):  # this rank's slice
            params, opt_state, loss = step(params, opt_state, batch)
    distributed.shutdown()

That is all it takes: :func:`batches` gives each process its slice of the same global batches
that ``funcgrad.data.batches`` gives one process for the same key, and for a loss that is a mean
over the examples, ``pmean`` of the slices' gradients is the gradient of the global batch; the
parameters therefore follow single-process training on the global batches, to float rounding
(``examples/data_parallel.py --check`` verifies it). Gradient accumulation is
``optim.MultiSteps`` around the optimizer, as on one process (its accumulated mean of pmean-ed
gradients is the mean over all micro-batches of all processes). :func:`shard_optimizer` keeps
only a shard of the optimizer state on each process (ZeRO-1).

Collectives (:func:`psum`, :func:`pmean`, :func:`all_gather`, :func:`broadcast`) take pytrees
with leaves of any dtypes and devices, keep the dtypes, and move one flat buffer per (dtype,
device), one collective call each (NOTE [coalesced collectives] in
``funcgrad/_distributed_collectives.py``). Inside :func:`funcgrad.jit` they become
torch.compile's functional collectives (NOTE [collectives under jit]); inside ``grad`` or
``vmap`` they raise an error: apply them to the results. Without a process group (or with a
world of one process) they are identities (NOTE [one process]), so the same script runs with
``python``:

>>> import torch
>>> from funcgrad import distributed
>>> distributed.init()  # no torchrun environment: one process
>>> distributed.world_size(), distributed.rank(), distributed.is_main()
(1, 0, True)
>>> distributed.pmean({"w": torch.tensor([1.0, 2.0])})
{'w': tensor([1., 2.])}
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from . import data as _data
from . import tree as _tree
from ._api_util import describe, leaf_paths
from ._distributed_collectives import (
    _initialized,
    _timeout_s,
    all_gather,
    broadcast,
    pmean,
    psum,
    rank,
    world_size,
)
from ._distributed_zero import owned_leaves, shard_optimizer
from ._typing import PyTree

__all__ = [
    "ShardedBatches",
    "all_gather",
    "batches",
    "broadcast",
    "device",
    "init",
    "is_main",
    "owned_leaves",
    "pmean",
    "psum",
    "rank",
    "shard",
    "shard_optimizer",
    "shutdown",
    "world_size",
]

_BACKENDS = ("gloo", "nccl", "mpi", "ucc", "xccl")


# --------------------------------------------------------------------------------------------
# The process group
# --------------------------------------------------------------------------------------------


def init(backend: str | None = None, *, timeout: float | datetime.timedelta = 600.0) -> None:
    """Joins the processes that ``torchrun`` started into one process group.

    Reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``). Without ``WORLD_SIZE`` and ``RANK`` (a plain ``python script.py``) it does
    nothing: the script runs as one process and the collectives are identities. With NCCL, each
    process uses the GPU ``cuda:LOCAL_RANK`` (see :func:`device`).

    ``timeout`` bounds every collective: when another process dies, the others get an error
    (gloo: at once when the connection drops, else after ``timeout``), not a hang; the error
    says which rank and collective failed. With NCCL, PyTorch's watchdog aborts the processes
    after ``timeout`` instead.

    Args:
        backend: ``"nccl"``, ``"gloo"``, ...; default NCCL when CUDA is available, else gloo.
        timeout: seconds (or a ``timedelta``) a collective may wait for the other processes.

    Raises:
        TypeError: if ``backend`` is not a string or ``timeout`` not a number or timedelta.
        ValueError: if ``backend`` is unknown or ``timeout`` is not positive.
        RuntimeError: if a process group already exists (call :func:`shutdown` first).

    >>> from funcgrad import distributed
    >>> distributed.init(timeout=60)  # outside torchrun: nothing to join
    >>> distributed.world_size()
    1
    """
    seconds = _check_timeout(timeout)
    if backend is not None and not isinstance(backend, str):
        raise TypeError(
            f"funcgrad.distributed.init: backend must be a string such as 'gloo' or 'nccl', or "
            f"None to choose, got {describe(backend)}."
        )
    if backend is not None and backend.lower() not in _BACKENDS:
        raise ValueError(
            f"funcgrad.distributed.init: unknown backend {backend!r}; expected one of "
            f"{', '.join(map(repr, _BACKENDS))}, or None (NCCL with CUDA, else gloo)."
        )
    if _initialized():
        raise RuntimeError(
            "funcgrad.distributed.init: a process group is already initialised; call "
            "funcgrad.distributed.shutdown() before initialising again."
        )
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return  # NOTE [one process]
    if backend is None:
        use_nccl = torch.cuda.is_available() and dist.is_nccl_available()
        backend = "nccl" if use_nccl else "gloo"
    kwargs: dict[str, Any] = {}
    if backend.lower() == "nccl":
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        kwargs["device_id"] = local
    dist.init_process_group(
        backend, timeout=datetime.timedelta(seconds=seconds), init_method="env://", **kwargs
    )
    _timeout_s[0] = seconds


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, datetime.timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(
            "funcgrad.distributed.init: timeout must be a number of seconds or a "
            f"datetime.timedelta, got {describe(timeout)}."
        )
    if not seconds > 0:
        raise ValueError(f"funcgrad.distributed.init: timeout must be positive, got {timeout}.")
    return seconds


def shutdown() -> None:
    """Leaves and destroys the process group (at the end of a script); a no-op without one.

    >>> from funcgrad import distributed
    >>> distributed.shutdown()
    """
    if _initialized():
        dist.destroy_process_group()
    _timeout_s[0] = None


def is_main() -> bool:
    """Whether this is rank 0, the process that logs, plots and saves checkpoints.

    >>> from funcgrad import distributed
    >>> distributed.is_main()
    True
    """
    return rank() == 0


def device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.

    >>> from funcgrad import distributed
    >>> distributed.device().type in ("cpu", "cuda")
    True
    """
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Data: each rank's slice of every global batch
# --------------------------------------------------------------------------------------------


def _batch_leaves(name: str, tree: PyTree) -> tuple[list[torch.Tensor], Any, int]:
    leaves, treedef = _tree.flatten(tree)
    for i, x in enumerate(leaves):
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            path = leaf_paths(tree, "tree")[i]
            raise TypeError(
                f"funcgrad.distributed.{name}: every leaf must be a tensor with a leading batch "
                f"axis, but {path} is {describe(x)}."
            )
    sizes = {x.shape[0] for x in leaves}
    if len(sizes) > 1:
        raise ValueError(
            f"funcgrad.distributed.{name}: every leaf must have the same leading (batch) size, "
            f"got the sizes {sorted(sizes)}."
        )
    return leaves, treedef, (sizes.pop() if sizes else 0)


def shard(tree: PyTree) -> PyTree:
    """This process's slice of a global batch: rank ``r`` of ``n`` gets rows
    ``[r * b, (r + 1) * b)`` of every leaf, ``b = batch / n`` (views, no copy).

    Concatenating the slices of ranks ``0, ..., n - 1`` gives the global batch back, so with
    equal slices ``pmean`` of per-slice mean losses (and gradients) is the global batch's. With
    one process it returns ``tree``.

    Args:
        tree: a pytree of tensors with a common leading (batch) size, divisible by
            :func:`world_size`.

    Returns:
        A tree of the structure of ``tree``.

    Raises:
        TypeError: if a leaf is not a tensor with a batch axis.
        ValueError: if the leading sizes differ or are not divisible by the world size.

    >>> import torch
    >>> from funcgrad import distributed
    >>> distributed.shard({"x": torch.arange(4)})  # one process: the whole batch
    {'x': tensor([0, 1, 2, 3])}
    """
    leaves, treedef, size = _batch_leaves("shard", tree)
    n = world_size()
    if n == 1:
        return tree
    if size % n:
        raise ValueError(
            f"funcgrad.distributed.shard: the batch size {size} is not divisible by the world "
            f"size {n}; use a global batch size that is a multiple of {n} (and drop_last=True "
            "for a partial last batch)."
        )
    b = size // n
    r = rank()
    return _tree.unflatten(treedef, [x[r * b : (r + 1) * b] for x in leaves])


class ShardedBatches:
    """One epoch of this process's slices of the global batches, as :func:`batches` returns it.

    ``len()`` is the number of batches in the epoch. Not meant to be constructed directly.

    >>> import torch
    >>> from funcgrad import distributed
    >>> epoch = distributed.batches({"x": torch.arange(6)}, 4)
    >>> len(epoch), [b["x"].tolist() for b in epoch]
    (2, [[0, 1, 2, 3], [4, 5]])
    """

    __slots__ = ("_index", "_leaves", "_n", "_rank", "_treedef")

    def __init__(self, leaves: list[torch.Tensor], treedef: Any, index: _data.Batches) -> None:
        self._leaves = leaves
        self._treedef = treedef
        self._index = index  # the global batches of example indices
        self._n = world_size()
        self._rank = rank()

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> ShardedBatches:
        return self

    def __next__(self) -> PyTree:
        index = next(self._index)
        b = index.shape[0] // self._n
        mine = index[self._rank * b : (self._rank + 1) * b]
        on: dict[torch.device, torch.Tensor] = {mine.device: mine}
        out = []
        for x in self._leaves:
            if x.device not in on:
                on[x.device] = mine.to(x.device)
            out.append(torch.index_select(x, 0, on[x.device]))
        return _tree.unflatten(self._treedef, out)

    def __repr__(self) -> str:
        return f"ShardedBatches(batches={len(self)}, rank={self._rank}, world_size={self._n})"


def batches(
    tree: PyTree, batch_size: int, *, key: torch.Tensor | None = None, drop_last: bool = False
) -> ShardedBatches:
    """One epoch of ``funcgrad.data.batches(tree, batch_size, key=key)``, each global batch
    :func:`shard`-ed: this process's slice of every global batch.

    Every process passes the whole data set and the same key; the global batches are then the
    ones one process gets from :func:`funcgrad.data.batches` for that key, whatever the number
    of processes, and each process gathers only its own slice of each. ``batch_size`` is the
    global batch size, a multiple of :func:`world_size`.

    Args:
        tree: a pytree of tensors with a common leading (example) axis.
        batch_size: examples per global batch.
        key: a :mod:`funcgrad.random` key to shuffle with (the same on every process), or
            ``None`` to keep the order.
        drop_last: drop the last global batch when it has fewer than ``batch_size`` examples.

    Returns:
        A :class:`ShardedBatches` iterator over the epoch.

    Raises:
        TypeError, ValueError: as :func:`funcgrad.data.batches`; and ValueError if
            ``batch_size`` (or the size of the last batch, without ``drop_last``) is not
            divisible by the world size.

    >>> import torch
    >>> from funcgrad import distributed, random
    >>> xs = {"x": torch.arange(6)}
    >>> [b["x"].tolist() for b in distributed.batches(xs, 4, key=random.key(0))]
    [[0, 1, 5, 4], [3, 2]]
    """
    try:  # the same checks and the same order as funcgrad.data.batches
        _data.batches(tree, batch_size, drop_last=drop_last)
        leaves, treedef = _tree.flatten(tree)
        n_examples = leaves[0].shape[0]
        index = _data.batches(
            torch.arange(n_examples, device=leaves[0].device),
            batch_size,
            key=key,
            drop_last=drop_last,
        )
    except (TypeError, ValueError) as e:
        raise type(e)(
            str(e).replace("funcgrad.data.batches", "funcgrad.distributed.batches")
        ) from None
    n = world_size()
    last = n_examples % batch_size
    if batch_size % n or (last % n and not drop_last):
        what = f"batch_size {batch_size}" if batch_size % n else f"the last batch's size {last}"
        raise ValueError(
            f"funcgrad.distributed.batches: {what} is not divisible by the world size {n}: "
            f"every process must get a slice of the same size. Use a batch size that is a "
            f"multiple of {n}{'' if batch_size % n else ', or drop_last=True'}."
        )
    return ShardedBatches(leaves, treedef, index)
