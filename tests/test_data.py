"""funcgrad.data: batches (order and coverage laws), prefetch, DataLoader interop."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import helpers
import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

import funcgrad as fg
from funcgrad import data, random
from funcgrad.data import datasets
from funcgrad.testing import assert_trees_allclose

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def indexed_tree(n: int, device: str = "cpu") -> dict[str, Any]:
    """Leaves of several shapes and dtypes whose row ``i`` encodes ``i`` (to check alignment)."""
    i = torch.arange(n, device=device)
    return {
        "x": torch.stack([i, -i], dim=1).to(torch.float64),
        "y": i.clone(),
        "z": ((i.reshape(n, 1, 1) * torch.ones(n, 2, 3, device=device)).to(torch.float32),),
    }


def ids(batch: dict[str, Any]) -> torch.Tensor:
    """The example indices of a batch of :func:`indexed_tree`; asserts its leaves agree."""
    y: torch.Tensor = batch["y"]
    assert torch.equal(batch["x"], torch.stack([y, -y], dim=1).to(torch.float64))
    assert torch.equal(batch["z"][0], y.reshape(-1, 1, 1).expand(-1, 2, 3).to(torch.float32))
    return y


def expected_sizes(n: int, batch_size: int, drop_last: bool) -> list[int]:
    full, rest = divmod(n, batch_size)
    return [batch_size] * full + ([rest] if rest and not drop_last else [])


# --------------------------------------------------------------------------------------------
# batches: order and coverage laws
# --------------------------------------------------------------------------------------------


@given(
    n=st.integers(0, 50),
    batch_size=st.integers(1, 60),
    seed=helpers.seeds,
    drop_last=st.booleans(),
    shuffle=st.booleans(),
)
def test_batches_cover_the_permuted_data(
    n: int, batch_size: int, seed: int, drop_last: bool, shuffle: bool
) -> None:
    """Batches have the documented sizes, keep leaves aligned, and concatenate back to the data
    in the key's permutation (the identity without a key): every example once per epoch."""
    tree = indexed_tree(n)
    key = random.key(seed) if shuffle else None
    epoch = data.batches(tree, batch_size, key=key, drop_last=drop_last)
    out = list(epoch)
    sizes = expected_sizes(n, batch_size, drop_last)
    assert len(epoch) == len(sizes)
    assert [len(ids(b)) for b in out] == sizes
    order = random.permutation(key, n) if key is not None else torch.arange(n)
    seen = torch.cat([ids(b) for b in out]) if out else torch.zeros(0, dtype=torch.int64)
    assert torch.equal(seen, order[: sum(sizes)])
    if not drop_last:
        assert torch.equal(seen.sort().values, torch.arange(n))  # each example exactly once
    if out:
        joined = fg.tree.map(lambda *xs: torch.cat(xs), *out)
        assert_trees_allclose(joined, fg.tree.map(lambda x: x[order[: sum(sizes)]], tree))


@st.composite
def batchable_trees(draw: st.DrawFn) -> tuple[int, Any]:
    """A tree of every node kind whose leaves share a leading size ``n`` (any dtype, shape)."""
    n = draw(st.integers(1, 12))
    dtypes = st.sampled_from([torch.float64, torch.float32, torch.int64, torch.bool])

    def leaf(spec: tuple[tuple[int, ...], torch.dtype, int]) -> torch.Tensor:
        shape, dtype, seed = spec
        values = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))
        return (values > 0) if dtype == torch.bool else (values * 10).to(dtype)

    leaves = st.tuples(helpers.shapes(0, 2, 3), dtypes, helpers.seeds).map(leaf)
    tree = draw(helpers.trees(leaves).filter(lambda t: len(fg.tree.leaves(t)) > 0))
    return n, tree


@settings(max_examples=20)
@given(case=batchable_trees(), batch_size=st.integers(1, 5), seed=helpers.seeds)
def test_batches_keep_structure_dtype_and_rows(
    case: tuple[int, Any], batch_size: int, seed: int
) -> None:
    """Any pytree batches into trees of its structure whose leaves are rows of its leaves."""
    n, tree = case
    key = random.key(seed)
    order = random.permutation(key, n)
    structure = fg.tree.structure(tree)
    start = 0
    for batch in data.batches(tree, batch_size, key=key):
        assert fg.tree.structure(batch) == structure
        rows = order[start : start + batch_size]
        for got, leaf in zip(fg.tree.leaves(batch), fg.tree.leaves(tree)):
            assert got.dtype == leaf.dtype
            assert torch.equal(got, leaf[rows])
        start += batch_size
    assert start >= n


def test_same_key_same_batches() -> None:
    """The order is a function of the key alone: two epochs with one key are identical."""
    tree = indexed_tree(37)
    first = [ids(b) for b in data.batches(tree, 8, key=random.key(3))]
    second = [ids(b) for b in data.batches(tree, 8, key=random.key(3))]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_different_keys_different_orders() -> None:
    """Distinct keys (split per epoch) give distinct orders; none is the identity."""
    tree = indexed_tree(40)
    orders = [
        torch.cat([ids(b) for b in data.batches(tree, 16, key=k)])
        for k in random.split(random.key(0), 8)
    ]
    assert len({tuple(o.tolist()) for o in orders}) == len(orders)
    assert all(not torch.equal(o, torch.arange(40)) for o in orders)


def test_order_matches_jax() -> None:
    """The epoch's order is jax.random.permutation(key, n) for the same key (ported code)."""
    jax, jnp = helpers.require_jax()
    key = random.key(1234)
    n = 300
    seen = torch.cat([ids(b) for b in data.batches(indexed_tree(n), 64, key=key)])
    jax_key = jax.random.wrap_key_data(jnp.asarray(key.numpy()))
    expected = torch.as_tensor(jax.numpy.asarray(jax.random.permutation(jax_key, n)).tolist())
    assert torch.equal(seen, expected)


def test_no_key_keeps_order_with_views() -> None:
    """Without a key the batches are consecutive slices sharing the data's memory."""
    x = torch.arange(10.0)
    out = list(data.batches({"x": x}, 4))
    assert [b["x"].tolist() for b in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(b["x"].untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for b in out)


@pytest.mark.parametrize(
    ("n", "batch_size", "drop_last", "sizes"),
    [
        (10, 4, False, [4, 4, 2]),
        (10, 4, True, [4, 4]),
        (8, 4, False, [4, 4]),
        (8, 4, True, [4, 4]),
        (3, 4, False, [3]),
        (3, 4, True, []),
        (0, 4, False, []),
        (5, 1, True, [1, 1, 1, 1, 1]),
    ],
)
@pytest.mark.parametrize("shuffle", [False, True])
def test_drop_last(
    n: int, batch_size: int, drop_last: bool, sizes: list[int], shuffle: bool
) -> None:
    """drop_last drops only a partial last batch; len() counts what is yielded."""
    key = random.key(0) if shuffle else None
    epoch = data.batches(indexed_tree(n), batch_size, key=key, drop_last=drop_last)
    assert len(epoch) == len(sizes)
    assert [len(ids(b)) for b in epoch] == sizes


def test_batches_is_a_one_epoch_iterator() -> None:
    """iter() is the object itself, len() stays the epoch's length, a second pass is empty."""
    epoch = data.batches(indexed_tree(9), 4, key=random.key(0))
    assert iter(epoch) is epoch
    assert len(epoch) == 3
    next(epoch)
    assert len(epoch) == 3
    assert len(list(epoch)) == 2
    assert list(epoch) == []
    assert repr(epoch) == "Batches(num_examples=9, batch_size=4, shuffled=True, drop_last=False)"


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int32,
        torch.uint8,
        torch.bool,
        torch.complex64,
    ],
)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shuffle", [False, True])
def test_dtype_and_device_preserved(dtype: torch.dtype, device: str, shuffle: bool) -> None:
    """Batches keep each leaf's dtype, device and trailing shape."""
    x = torch.ones(7, 2, 3, device=device).to(dtype)
    y = torch.zeros(7, dtype=torch.int64, device=device)
    key = random.key(5) if shuffle else None
    for batch in data.batches({"x": x, "y": y}, 3, key=key):
        assert batch["x"].dtype == dtype
        assert batch["x"].device == x.device
        assert batch["x"].shape[1:] == (2, 3)
        assert batch["y"].dtype == torch.int64


@CUDA
def test_same_order_on_every_device() -> None:
    """Data (and key) on CUDA give the batches they give on the CPU, whatever the key's device."""
    cpu = [ids(b) for b in data.batches(indexed_tree(50), 7, key=random.key(9))]
    for key_device in ["cpu", "cuda"]:
        key = random.key(9, device=key_device)
        gpu = [ids(b).cpu() for b in data.batches(indexed_tree(50, "cuda"), 7, key=key)]
        assert all(torch.equal(a, b) for a, b in zip(cpu, gpu, strict=True))


class _CountOps(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_one_permutation_per_epoch_one_gather_per_leaf() -> None:
    """The order is drawn once (sorting happens in batches()); a batch is one gather per leaf."""
    tree = indexed_tree(1000)
    with _CountOps() as construction:
        epoch = data.batches(tree, 100, key=random.key(0))
    with _CountOps() as iteration:
        out = list(epoch)
    assert "sort" in construction.ops
    assert len(out) == 10
    assert iteration.ops.count("index_select") == 10 * 3
    assert set(iteration.ops) <= {"index_select", "slice"}


# --------------------------------------------------------------------------------------------
# batches: errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_size", "error", "match"),
    [
        (0, ValueError, r"batch_size must be positive, got 0"),
        (-3, ValueError, r"batch_size must be positive, got -3"),
        (2.0, TypeError, r"batch_size must be an int, got float 2.0"),
        (True, TypeError, r"batch_size must be an int, got bool True"),
    ],
)
def test_batch_size_errors(batch_size: Any, error: type[Exception], match: str) -> None:
    """A batch size that is not a positive int is refused."""
    with pytest.raises(error, match=r"funcgrad\.data\.batches: " + match):
        data.batches({"x": torch.ones(4)}, batch_size)


def test_non_tensor_leaf_names_its_path() -> None:
    """A non-tensor leaf is reported with its path."""
    with pytest.raises(TypeError, match=r"tree\['meta'\]\[1\] is int 3\. Convert it"):
        data.batches({"x": torch.ones(4), "meta": [torch.ones(4), 3]}, 2)


def test_scalar_leaf_has_no_example_axis() -> None:
    """A 0-d tensor has no example axis to batch."""
    with pytest.raises(ValueError, match=r"tree\['lr'\] is a torch.float32 tensor of shape \(\)"):
        data.batches({"x": torch.ones(4), "lr": torch.tensor(0.1)}, 2)


def test_leading_size_mismatch_names_both_paths() -> None:
    """Leaves with different numbers of examples are reported with both paths and shapes."""
    tree = {"image": torch.ones(10, 3), "label": torch.ones(9, dtype=torch.int64)}
    with pytest.raises(
        ValueError,
        match=r"tree\['image'\] has 10 examples \(shape \(10, 3\)\) and tree\['label'\] has 9 "
        r"\(shape \(9,\)\)",
    ):
        data.batches(tree, 2)


@pytest.mark.parametrize("tree", [{}, (), None, {"a": [], "b": None}])
def test_empty_tree(tree: Any) -> None:
    """A tree without leaves has nothing to batch."""
    with pytest.raises(ValueError, match=r"funcgrad\.data\.batches: the tree has no leaves"):
        data.batches(tree, 2)


@pytest.mark.parametrize(
    ("key", "got"),
    [
        (0, r"int 0"),
        (torch.tensor([0, 1]), r"a torch.int64 tensor of shape \(2,\)"),
        (random.split(random.key(0), 3), r"a torch.uint32 tensor of shape \(3, 2\)"),
    ],
)
def test_bad_key(key: Any, got: str) -> None:
    """Anything but one funcgrad key (or None) is refused with the fix."""
    with pytest.raises(TypeError, match=r"key must be a funcgrad\.random key .*got " + got):
        data.batches({"x": torch.ones(4)}, 2, key=key)


# --------------------------------------------------------------------------------------------
# prefetch
# --------------------------------------------------------------------------------------------


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "funcgrad.data.prefetch"]


@pytest.mark.parametrize("size", [1, 2, 5])
@pytest.mark.parametrize("length", [0, 1, 7])
def test_prefetch_keeps_order_and_values(size: int, length: int) -> None:
    """Items come out in order, tensors on the device (the same objects there), others as is."""
    items = [{"x": torch.full((2,), float(i)), "step": i, "name": None} for i in range(length)]
    out = list(data.prefetch(items, "cpu", size))
    assert [b["step"] for b in out] == list(range(length))
    assert all(a["x"] is b["x"] for a, b in zip(items, out, strict=True))
    assert not prefetch_threads()


def test_prefetch_of_batches() -> None:
    """Prefetching an epoch changes nothing about its batches."""
    tree = indexed_tree(23)
    direct = [ids(b) for b in data.batches(tree, 5, key=random.key(1))]
    fetched = [ids(b) for b in data.prefetch(data.batches(tree, 5, key=random.key(1)), "cpu")]
    assert all(torch.equal(a, b) for a, b in zip(direct, fetched, strict=True))


def counting_source(closed: list[bool], n: int | None = None) -> Iterator[dict[str, Any]]:
    i = 0
    try:
        while n is None or i < n:
            yield {"x": torch.tensor(float(i))}
            i += 1
    finally:
        closed.append(True)


@pytest.mark.parametrize("how", ["break", "close"])
@pytest.mark.parametrize("size", [1, 3])
def test_prefetch_early_stop_leaks_no_thread(how: str, size: int) -> None:
    """Leaving the loop (or close()) joins the thread, which closes the source generator."""
    closed: list[bool] = []
    stream = data.prefetch(counting_source(closed), "cpu", size)  # an endless source
    for i, batch in enumerate(stream):
        assert float(batch["x"]) == i
        if i == 3:
            break
    assert prefetch_threads()  # still running: the queue is full
    if how == "close":
        stream.close()
    else:
        del stream  # the generator is finalised at once (reference counting)
    assert not prefetch_threads()
    assert closed == [True]


def test_prefetch_starts_nothing_until_iterated() -> None:
    """No thread runs before the first item is asked for, nor after an unused one is dropped."""
    closed: list[bool] = []
    stream = data.prefetch(counting_source(closed, 3), "cpu")
    assert not prefetch_threads()
    del stream
    assert not prefetch_threads()


def test_prefetch_reraises_source_errors() -> None:
    """An error in the source reaches the consumer after the items before it."""

    def source() -> Iterator[int]:
        yield 0
        yield 1
        raise KeyError("bad record 2")

    stream = data.prefetch(source(), "cpu")
    assert [next(stream), next(stream)] == [0, 1]
    with pytest.raises(KeyError, match="bad record 2"):
        next(stream)
    assert not prefetch_threads()


@pytest.mark.parametrize(
    ("device", "size", "match"),
    [
        ("cpu", 0, r"size must be a positive int, got 0"),
        ("cpu", 1.5, r"size must be a positive int, got 1.5"),
        ("nonsense", 2, r"device must be a torch.device or a device string .* got str 'nonsense'"),
        (3.0, 2, r"device must be a torch.device or a device string .* got float 3.0"),
    ],
)
def test_prefetch_argument_errors(device: Any, size: Any, match: str) -> None:
    """Bad devices and sizes are refused when prefetch is called, not later."""
    with pytest.raises(ValueError, match=r"funcgrad\.data\.prefetch: " + match):
        data.prefetch([], device, size)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_prefetch_to_missing_cuda() -> None:
    """Asking for CUDA without it fails at once with the fix."""
    with pytest.raises(ValueError, match=r"device 'cuda' is not available .* Prefetch to 'cpu'"):
        data.prefetch([], "cuda")


@CUDA
@pytest.mark.parametrize("pin", [False, True])
def test_prefetch_to_cuda(pin: bool) -> None:
    """CPU batches (pinned or not) arrive on the GPU with their values; others pass through."""
    tree = indexed_tree(20)
    if pin:
        tree = fg.tree.map(lambda x: x.pin_memory(), tree)
    source = [{**b, "tag": "b"} for b in data.batches(tree, 6)]
    out = list(data.prefetch(source, "cuda", 2))
    for a, b in zip(source, out, strict=True):
        assert b["tag"] == "b"
        assert b["y"].device.type == "cuda"
        assert torch.equal(ids(b).cpu(), a["y"])
    assert not prefetch_threads()


# --------------------------------------------------------------------------------------------
# torch.utils.data.DataLoader interop
# --------------------------------------------------------------------------------------------


def train(loader: Any, epochs: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Softmax regression with funcgrad's grad and sgd, fed by ``loader``'s [x, y] batches."""

    def loss_fn(params: dict[str, torch.Tensor], batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return fg.nn.cross_entropy(x @ params["w"] + params["b"], y)

    params = {"w": torch.zeros(4, 3, dtype=torch.float64), "b": torch.zeros(3, dtype=torch.float64)}
    opt = fg.optim.sgd(0.5)
    state = opt.init(params)
    losses = []
    for _ in range(epochs):
        for batch in data.prefetch(loader, "cpu"):
            loss, grads = fg.value_and_grad(loss_fn)(params, batch)
            updates, state = opt.update(grads, state, params)
            params = fg.optim.apply_updates(params, updates)
            losses.append(float(loss))
    return params, losses


# A DataLoader's workers are forked on Linux (Python < 3.14). Forking warns once JAX's backend
# runs in this process (other tests) and, on Python >= 3.12, whenever torch's thread pool runs;
# neither concerns these short-lived workers, which only index a TensorDataset.
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_dataloader_with_workers_feeds_a_train_step() -> None:
    """A DataLoader with 2 worker processes trains exactly like the same batches in-process."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(240) % 3
    x = torch.randn(240, 4, generator=gen, dtype=torch.float64) + 2.0 * torch.nn.functional.one_hot(
        y, 4
    ).to(torch.float64)
    dataset = TensorDataset(x, y)
    workers = DataLoader(dataset, batch_size=40, num_workers=2)
    in_process = DataLoader(dataset, batch_size=40, num_workers=0)
    params, losses = train(workers, epochs=2)
    expected, expected_losses = train(in_process, epochs=2)
    assert_trees_allclose(params, expected, rtol=0, atol=0)
    assert losses == expected_losses
    assert losses[-1] < 0.5 * losses[0]
    assert not prefetch_threads()
    assert not multiprocessing.active_children()


@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_prefetch_early_stop_shuts_down_dataloader_workers() -> None:
    """Stopping a prefetched DataLoader early leaves no thread and no worker process behind."""
    loader = DataLoader(TensorDataset(torch.arange(400.0)), batch_size=10, num_workers=2)
    stream = data.prefetch(loader, "cpu", size=2)
    assert [float(next(stream)[0][0]) for _ in range(2)] == [0.0, 10.0]
    assert multiprocessing.active_children()
    stream.close()
    assert not prefetch_threads()
    assert not multiprocessing.active_children()


def test_public_names_are_documented_with_examples() -> None:
    """Sorted __all__s; every public name has a docstring with a runnable example."""
    assert data.__all__ == sorted(data.__all__)
    assert datasets.__all__ == sorted(datasets.__all__)
    assert data.datasets is datasets
    for module in (data, datasets):
        for name in module.__all__:
            doc = getattr(module, name).__doc__
            assert doc is not None, name
            assert ">>>" in doc, name
