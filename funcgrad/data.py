"""Mini-batches of pytrees, shuffled by funcgrad keys; prefetching; small datasets.

A data set is a pytree of tensors that share a leading example axis, e.g. ``{"image": (N, 1, 28,
28), "label": (N,)}``. :func:`batches` cuts one epoch of it into mini-batches of the same
structure, in an order drawn from a :mod:`funcgrad.random` key, and :func:`prefetch` moves them to
the device ahead of use. ``funcgrad.data.datasets`` reads a few small data sets into such trees
(see below). One epoch of training:

>>> import torch
>>> import funcgrad as fg
>>> from funcgrad import data, random
>>> train = {"x": torch.randn(100, 3), "y": torch.randint(0, 2, (100,))}
>>> key = random.key(0)
>>> for epoch in range(2):
...     key, sub = random.split(key)
...     for batch in data.prefetch(data.batches(train, 32, key=sub), "cpu"):
...         pass  # params, opt_state = step(params, opt_state, batch)
>>> batch["x"].shape, batch["y"].shape  # the last, partial batch
(torch.Size([4, 3]), torch.Size([4]))

A :class:`torch.utils.data.DataLoader` works as well: its batches (lists, tuples or dicts of
tensors) are pytrees, so a funcgrad train step consumes them directly, and ``num_workers=2`` loads
them in worker processes as usual (``tests/test_data.py`` trains with one). funcgrad's own
:func:`batches` needs no workers: it gathers whole batches with one indexing operation per leaf.

>>> from torch.utils.data import DataLoader, TensorDataset
>>> loader = DataLoader(TensorDataset(train["x"], train["y"]), batch_size=32, shuffle=True)
>>> x, y = next(iter(loader))
>>> fg.grad(lambda w: ((x @ w).squeeze(-1) - y).pow(2).mean())(torch.zeros(3, 1)).shape
torch.Size([3, 1])

``datasets`` (``from funcgrad.data import datasets``) is a module of readers that return
``(train, test)`` pairs of such trees: :func:`~funcgrad.data.datasets.digits` (scikit-learn's
bundled 8x8 digits, no download), :func:`~funcgrad.data.datasets.mnist` and
:func:`~funcgrad.data.datasets.fashion_mnist` (the standard IDX files, from a directory; nothing is
ever downloaded).

# NOTE [one permutation per epoch]
# batches draws the whole epoch's order at once, random.permutation(key, n), on the device of the
# data (the key moves there: two words), and moves it once to each other device the leaves live
# on. A batch is then one index_select per leaf, with no Python work per example. Because
# funcgrad.random computes the same integers on every device, the same key gives the same batches
# whether the data lives on the CPU or a GPU, and the same order as
# jax.random.permutation(key, n) in ported JAX code. Without a key, batches are slices of the
# leaves (views, no copy).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable, Iterator
from typing import Any, TypeVar

import torch

from . import _datasets as datasets
from . import random
from . import tree as _tree
from ._api_util import describe, leaf_paths
from ._typing import PyTree

__all__ = ["Batches", "batches", "datasets", "prefetch"]

_T = TypeVar("_T")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------


class Batches:
    """One epoch of mini-batches: an iterator with a length, as :func:`batches` returns it.

    ``len()`` is the number of batches in the whole epoch (like a ``DataLoader``'s), whether or
    not some were consumed. Iterating a second time yields nothing: call :func:`batches` again,
    with a new key, for the next epoch. Not meant to be constructed directly.

    >>> import torch
    >>> from funcgrad import data
    >>> epoch = data.batches({"x": torch.arange(10)}, 4)
    >>> epoch, len(epoch)
    (Batches(num_examples=10, batch_size=4, shuffled=False, drop_last=False), 3)
    >>> [b["x"].tolist() for b in epoch]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """

    __slots__ = (
        "_batch_size",
        "_drop_last",
        "_indices",
        "_leaves",
        "_len",
        "_n",
        "_next",
        "_treedef",
    )

    def __init__(
        self,
        leaves: list[torch.Tensor],
        treedef: Any,
        indices: list[torch.Tensor] | None,
        num_examples: int,
        batch_size: int,
        drop_last: bool,
    ) -> None:
        self._leaves = leaves
        self._treedef = treedef
        self._indices = indices  # one index tensor per leaf, on its device; None: keep order
        self._n = num_examples
        self._batch_size = batch_size
        self._drop_last = drop_last
        full, rest = divmod(num_examples, batch_size)
        self._len = full if drop_last or rest == 0 else full + 1
        self._next = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> PyTree:
        i = self._next
        if i >= self._len:
            raise StopIteration
        self._next = i + 1
        start = i * self._batch_size
        stop = min(start + self._batch_size, self._n)
        if self._indices is None:
            out = [leaf[start:stop] for leaf in self._leaves]
        else:
            out = [
                torch.index_select(leaf, 0, index[start:stop])
                for leaf, index in zip(self._leaves, self._indices)
            ]
        return _tree.unflatten(self._treedef, out)

    def __repr__(self) -> str:
        return (
            f"Batches(num_examples={self._n}, batch_size={self._batch_size}, "
            f"shuffled={self._indices is not None}, drop_last={self._drop_last})"
        )


def _num_examples(tree: PyTree, leaves: list[Any]) -> int:
    """The common leading size of the leaves; errors name the path of the offending leaf."""
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            path = leaf_paths(tree, "tree")[i]
            raise TypeError(
                f"funcgrad.data.batches: every leaf must be a tensor with a leading example axis, "
                f"but {path} is {describe(leaf)}. Convert it with torch.as_tensor, or keep it "
                "outside the tree you batch."
            )
        if leaf.ndim == 0:
            path = leaf_paths(tree, "tree")[i]
            raise ValueError(
                f"funcgrad.data.batches: every leaf needs a leading example axis, but {path} is "
                f"{describe(leaf)}. Keep per-data-set constants outside the tree you batch."
            )
    n = leaves[0].shape[0]
    for i, leaf in enumerate(leaves):
        if leaf.shape[0] != n:
            paths = leaf_paths(tree, "tree")
            raise ValueError(
                "funcgrad.data.batches: every leaf must have the same leading (example) axis, "
                f"but {paths[0]} has {n} examples (shape {tuple(leaves[0].shape)}) and {paths[i]} "
                f"has {leaf.shape[0]} (shape {tuple(leaf.shape)})."
            )
    return int(n)


def _epoch_order(key: object, n: int, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """NOTE [one permutation per epoch]: the order, as one index tensor per leaf."""
    if not (isinstance(key, torch.Tensor) and key.dtype == torch.uint32 and key.shape == (2,)):
        raise TypeError(
            "funcgrad.data.batches: key must be a funcgrad.random key (a torch.uint32 tensor of "
            f"shape (2,)) or None to keep the order, got {describe(key)}. Make one with "
            "funcgrad.random.key(seed) and split it for each epoch."
        )
    device = leaves[0].device
    order = random.permutation(key.to(device), n)
    on: dict[torch.device, torch.Tensor] = {device: order}
    for leaf in leaves:
        if leaf.device not in on:
            on[leaf.device] = order.to(leaf.device)
    return [on[leaf.device] for leaf in leaves]


def batches(
    tree: PyTree, batch_size: int, *, key: torch.Tensor | None = None, drop_last: bool = False
) -> Batches:
    """One epoch of mini-batches of ``tree``, in an order drawn from ``key``.

    Every leaf of ``tree`` is a tensor whose first axis indexes the examples (the same number in
    every leaf). Each batch has the structure of ``tree``, with ``batch_size`` examples per leaf
    (fewer in a last, partial batch), on the leaves' devices and with their dtypes.

    The order is ``funcgrad.random.permutation(key, n)``, drawn once for the epoch; each batch is
    then one gather per leaf (NOTE [one permutation per epoch] in ``funcgrad/data.py``). The same
    key gives the same batches on every device, and the order ``jax.random.permutation`` gives for
    the same key. Split the key for each epoch. Without a key the order is kept and each batch is
    a slice (a view) of the leaves.

    Under :func:`funcgrad.jit`, a last batch of another size compiles a second graph once; pass
    ``drop_last=True`` to train on batches of one shape only.

    Args:
        tree: a pytree of tensors with a common leading (example) axis, e.g. the ``train`` dict
            of :func:`funcgrad.data.datasets.digits`.
        batch_size: examples per batch, a positive int.
        key: a :mod:`funcgrad.random` key to shuffle with, or ``None`` to keep the order.
        drop_last: drop the last batch when it has fewer than ``batch_size`` examples.

    Returns:
        A :class:`Batches` iterator over the epoch; ``len()`` is its number of batches.

    Raises:
        TypeError: if ``batch_size`` is not an int, a leaf is not a tensor, or ``key`` is not a
            key.
        ValueError: if ``batch_size <= 0``, ``tree`` has no leaves, a leaf is 0-d, or the
            leaves' leading sizes differ (the message names both leaves' paths).

    >>> import torch
    >>> from funcgrad import data, random
    >>> xs = {"x": torch.arange(6), "y": -torch.arange(6)}
    >>> [b["x"].tolist() for b in data.batches(xs, 4, key=random.key(0))]
    [[0, 1, 5, 4], [3, 2]]
    >>> [b["y"].tolist() for b in data.batches(xs, 4, key=random.key(0), drop_last=True)]
    [[0, -1, -5, -4]]
    """
    if not _is_int(batch_size):
        raise TypeError(
            f"funcgrad.data.batches: batch_size must be an int, got {describe(batch_size)}."
        )
    if batch_size <= 0:
        raise ValueError(f"funcgrad.data.batches: batch_size must be positive, got {batch_size}.")
    leaves, treedef = _tree.flatten(tree)
    if not leaves:
        raise ValueError(
            f"funcgrad.data.batches: the tree has no leaves ({treedef}); pass a pytree of tensors "
            "with a leading example axis, e.g. {'x': x, 'y': y}."
        )
    n = _num_examples(tree, leaves)
    indices = None if key is None else _epoch_order(key, n, leaves)
    return Batches(leaves, treedef, indices, n, batch_size, bool(drop_last))


# --------------------------------------------------------------------------------------------
# prefetch
# --------------------------------------------------------------------------------------------

# NOTE [prefetch thread]
# A daemon thread pulls items from the source iterator, moves them to the device and puts them in
# a queue of ``size`` entries; the consumer (a generator) takes them out. On CUDA the thread copies
# CPU tensors from pinned memory with non_blocking=True on a side stream and records an event;
# the consumer makes its current stream wait for the event and record_stream()s the tensors, so
# copies overlap the step and the caching allocator never reuses their memory too early. When the
# consumer stops (exhausted, an error, close() or garbage collection of an abandoned generator)
# its ``finally`` sets a stop flag, empties the queue (a blocked put returns) and joins the thread;
# the thread stops at its next put and closes the source iterator if it has a close() (a
# generator). An exception in the thread (in the source or in a copy) is re-raised in the
# consumer.

_ITEM, _END, _ERROR = range(3)
_POLL_S = 0.05


class _Mover:
    """Moves batches to a CPU (or any non-CUDA) device with plain ``.to``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def _copy(self, x: Any) -> Any:
        return x.to(self.device) if isinstance(x, torch.Tensor) else x

    def move(self, batch: Any) -> Any:
        """Runs in the prefetch thread."""
        return _tree.map(self._copy, batch)

    def ready(self, moved: Any) -> Any:
        """Runs in the consumer before it hands ``moved`` out."""
        return moved


class _CudaMover(_Mover):
    """Pinned memory, non-blocking copies on a side stream (NOTE [prefetch thread])."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]

    def _copy(self, x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or x.device == self.device:
            return x
        if x.device.type != "cpu":
            return x.to(self.device)
        if not x.is_pinned():
            x = x.pin_memory()
        with torch.cuda.stream(self.stream):
            return x.to(self.device, non_blocking=True)

    def move(self, batch: Any) -> Any:
        with torch.cuda.device(self.device):
            moved = _tree.map(self._copy, batch)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(self.stream)
        return moved, event

    def ready(self, moved: Any) -> Any:
        batch, event = moved
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(event)
        for leaf in _tree.leaves(batch):
            if isinstance(leaf, torch.Tensor) and leaf.device == self.device:
                leaf.record_stream(stream)
        return batch


def _put(q: queue.Queue[tuple[int, Any]], stop: threading.Event, entry: tuple[int, Any]) -> bool:
    while not stop.is_set():
        try:
            q.put(entry, timeout=_POLL_S)
            return True
        except queue.Full:
            pass
    return False


def _produce(
    source: Iterator[Any], mover: _Mover, q: queue.Queue[tuple[int, Any]], stop: threading.Event
) -> None:
    try:
        for item in source:
            if stop.is_set() or not _put(q, stop, (_ITEM, mover.move(item))):
                return
        _put(q, stop, (_END, None))
    except BaseException as e:
        _put(q, stop, (_ERROR, e))
    finally:
        close = getattr(source, "close", None)
        if callable(close):
            close()


def _stream(iterable: Iterable[_T], mover: _Mover, size: int) -> Generator[_T, None, None]:
    q: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=size)
    stop = threading.Event()
    thread = threading.Thread(
        target=_produce,
        args=(iter(iterable), mover, q, stop),
        name="funcgrad.data.prefetch",
        daemon=True,
    )
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == _ITEM:
                yield mover.ready(value)
            elif kind == _ERROR:
                raise value
            else:
                return
    finally:
        stop.set()
        while True:
            try:
                q.get_nowait()
            except queue.Empty:
                break
        thread.join()


def _target_device(device: object) -> torch.device:
    try:
        target: torch.device = torch.device(device)  # type: ignore[call-overload]
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            "funcgrad.data.prefetch: device must be a torch.device or a device string such as "
            f"'cpu' or 'cuda:0', got {describe(device)}."
        ) from e
    if target.type == "cpu":
        return torch.device("cpu")
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"funcgrad.data.prefetch: device {str(target)!r} is not available "
                "(torch.cuda.is_available() is False). Prefetch to 'cpu', or install a CUDA "
                "build of PyTorch."
            )
        index: int | None = target.index  # None for "cuda": the current device
        if index is None:
            target = torch.device("cuda", torch.cuda.current_device())
    return target


def prefetch(
    iterable: Iterable[_T], device: torch.device | str, size: int = 2
) -> Generator[_T, None, None]:
    """Yields the items of ``iterable`` moved to ``device``, up to ``size`` of them ahead of use.

    A background thread takes the next items from ``iterable`` (a :func:`batches` epoch, a
    ``DataLoader``, any iterable of pytrees) and moves their tensor leaves to ``device`` while the
    consumer works on the current one; non-tensor leaves pass through. On CUDA, CPU tensors are
    copied from pinned memory with ``non_blocking=True`` on a side stream, so copies overlap
    compute; on the CPU the thread overlaps producing the batches (gathers, a loader's collation)
    with the step. Items come out in the source's order, and an error in the source is raised
    here. Stopping early is safe: leaving the loop (or calling ``close()`` on the returned
    generator) stops and joins the thread and closes the source if it is a generator
    (NOTE [prefetch thread] in ``funcgrad/data.py``).

    Args:
        iterable: the batches, each a pytree.
        device: where to move the tensors, e.g. ``"cuda"`` or ``torch.device("cpu")``.
        size: how many moved items to hold ready, a positive int.

    Returns:
        A generator of the moved items. Nothing starts before the first item is asked for.

    Raises:
        ValueError: if ``device`` is not a device (or is CUDA without CUDA), or ``size < 1``.

    >>> import torch
    >>> from funcgrad import data
    >>> epoch = data.batches({"x": torch.arange(5.0)}, 2)
    >>> device = "cuda" if torch.cuda.is_available() else "cpu"
    >>> [b["x"].tolist() for b in data.prefetch(epoch, device)]
    [[0.0, 1.0], [2.0, 3.0], [4.0]]
    """
    target = _target_device(device)
    if not _is_int(size) or size < 1:
        raise ValueError(f"funcgrad.data.prefetch: size must be a positive int, got {size!r}.")
    mover = _CudaMover(target) if target.type == "cuda" else _Mover(target)
    return _stream(iterable, mover, size)
