"""One process of a multi-process test of funcgrad.distributed (run by tests/test_distributed.py).

``python tests/_dist_worker.py JOB`` with torchrun's environment variables set (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Every process of a job runs the same checks against
single-process references that it computes itself (each rank's inputs are a function of the
rank, so every process knows all of them), prints ``ok JOB rank R`` and exits with 0; a failed
check raises, so the process exits with 1 and a traceback on stderr. Each check is named in the
comment above it; the pytest module states what each job covers.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import helpers  # tests/ is this script's directory
import torch
import torch.distributed as tdist

import funcgrad as fg
from funcgrad import distributed, optim
from funcgrad.testing import assert_trees_allclose

AOT = "aot_eager"
TIMEOUT_S = 20.0  # a failing peer must not hang the test


def tree_for(r: int) -> dict[str, Any]:
    """Rank ``r``'s input: leaves of four dtypes (two float32 leaves share a buffer)."""
    g = torch.Generator().manual_seed(100 + r)
    return {
        "f64": torch.randn(3, 2, generator=g, dtype=torch.float64),
        "f32": [torch.randn(5, generator=g), torch.randn((), generator=g)],
        "bf16": torch.randn(4, generator=g).to(torch.bfloat16),
        "i64": torch.randint(-50, 50, (2, 3), generator=g),
        "f32b": torch.randn(2, 2, generator=g).t(),  # not contiguous
    }


def floats(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in tree.items() if k != "i64"}


def sum_trees(trees: list[Any]) -> Any:
    """The reference psum: the leaves added one rank after another, in float64, rounded once."""
    return fg.tree.map(
        lambda *xs: torch.stack([x.double() for x in xs]).sum(0).to(xs[0].dtype), *trees
    )


def counting(names: tuple[str, ...]) -> dict[str, int]:
    """Counts the calls of torch.distributed's eager collectives (patched in place)."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        original = getattr(tdist, name)

        def wrapper(*args: Any, _f: Callable[..., Any] = original, _n: str = name) -> Any:
            counts[_n] += 1
            return _f(*args)

        setattr(tdist, name, wrapper)
    return counts


# --------------------------------------------------------------------------------------------
# Job "collectives": psum, pmean, all_gather, broadcast; eager and jitted
# --------------------------------------------------------------------------------------------


def check_collectives(r: int, n: int) -> None:
    trees = [tree_for(i) for i in range(n)]
    mine = trees[r]
    before = fg.tree.map(torch.clone, mine)
    gather = (
        "all_gather_single" if hasattr(tdist, "all_gather_single") else "all_gather_into_tensor"
    )
    counts = counting(("all_reduce", gather, "broadcast"))
    # Each collective equals its single-process equivalent and keeps every leaf's dtype.
    assert_trees_allclose(distributed.psum(mine), sum_trees(trees))
    assert counts["all_reduce"] == 4, counts  # one call per (dtype, device) buffer, not per leaf
    mean = fg.tree.map(lambda x: (x.double() / n).to(x.dtype), sum_trees(list(map(floats, trees))))
    assert_trees_allclose(distributed.pmean(floats(mine)), mean)
    assert_trees_allclose(distributed.all_gather(mine), fg.tree.stack(trees))
    assert counts[gather] == 4, counts
    for src in range(n):
        assert_trees_allclose(distributed.broadcast(mine, src=src), trees[src])
    assert counts["broadcast"] == 4 * n, counts
    assert_trees_allclose(mine, before)  # the inputs are left as they were

    # Under fg.jit: the same values, and one functional collective per buffer in the graph.
    def together(t: Any) -> Any:
        return (
            distributed.psum(t),
            distributed.pmean(floats(t)),
            distributed.all_gather(t),
            distributed.broadcast(t, src=n - 1),
        )

    jitted = fg.jit(together, backend=AOT)
    text = jitted.lower(mine).as_text()
    for name in ("all_reduce", "all_gather_into_tensor", "broadcast"):
        calls = text.count(f"_c10d_functional.{name}(")
        assert calls == (7 if name == "all_reduce" else 4), (name, text)
    results = together(mine)
    assert_trees_allclose(jitted(mine), results)
    assert_trees_allclose(jitted(mine)[1], mean)
    if "FG_TEST_OUT" in os.environ:  # for the JAX reference in the pytest process
        fg.io.save(os.path.join(os.environ["FG_TEST_OUT"], f"rank{r}.safetensors"), results)
    # Every node type of the shared corpus keeps its structure (each rank passes the same tree).
    for tree in helpers.corpus():
        assert_trees_allclose(distributed.psum(tree), fg.tree.map(lambda x: x * n, tree))
        assert_trees_allclose(distributed.all_gather(tree), fg.tree.stack([tree] * n))
    # psum of an empty tree, and of 0-element leaves.
    assert distributed.psum({}) == {}
    empty = {"e": torch.zeros(0, 3), "x": torch.ones(2)}
    assert_trees_allclose(
        distributed.psum(empty), {"e": torch.zeros(0, 3), "x": torch.full((2,), n * 1.0)}
    )


# --------------------------------------------------------------------------------------------
# Job "collectives" (continued): data, data-parallel training, MultiSteps, ZeRO-1
# --------------------------------------------------------------------------------------------


def dataset(n_examples: int = 36) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n_examples, 3, generator=g, dtype=torch.float64)
    return {"x": x, "y": x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.1}


def check_batches(r: int, n: int) -> None:
    train = dataset()
    key = fg.random.key(3)
    # The global batches (the slices of all ranks, in rank order) are funcgrad.data.batches'.
    for batch_size, drop_last in [(8, True), (8, False), (12, False)]:
        local = list(distributed.batches(train, batch_size, key=key, drop_last=drop_last))
        reference = list(fg.data.batches(train, batch_size, key=key, drop_last=drop_last))
        assert len(local) == len(reference)
        for mine, whole in zip(local, reference):
            gathered = distributed.all_gather(mine)
            assert_trees_allclose(fg.tree.map(lambda x: x.flatten(0, 1), gathered), whole)
            assert_trees_allclose(distributed.shard(whole), mine)
    unshuffled = next(iter(distributed.batches(train, 8)))
    assert_trees_allclose(unshuffled, fg.tree.map(lambda x: x[4 * r : 4 * r + 4], train))
    # Sizes that do not split evenly between the ranks are errors.
    expect_error(lambda: distributed.shard({"x": torch.zeros(3)}), ValueError, "batch size 3")
    expect_error(lambda: distributed.batches(train, 7), ValueError, "batch_size 7 is not divisible")
    expect_error(
        lambda: distributed.batches(dataset(37), 12), ValueError, "the last batch's size 1"
    )
    expect_error(
        lambda: distributed.batches(train, 8, key=3), TypeError, "distributed.batches: key"
    )


def expect_error(fn: Callable[[], Any], kind: type[Exception], text: str) -> None:
    try:
        fn()
    except kind as e:
        message = str(e)
    else:
        raise AssertionError(f"no {kind.__name__} ({text})")
    assert text in message, message


def loss_fn(params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    pred = torch.tanh(batch["x"] @ params["w"]) @ params["v"] + params["b"]
    return (pred - batch["y"]).square().mean()


def init_params() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return {
        "w": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "v": torch.randn(4, generator=g, dtype=torch.float64),
        "b": torch.zeros((), dtype=torch.float64),
    }


def make_step(opt: optim.GradientTransformation, parallel: bool) -> Callable[..., Any]:
    def step(params: Any, state: Any, batch: Any) -> Any:
        loss, grads = fg.value_and_grad(loss_fn)(params, batch)
        if parallel:
            grads, loss = distributed.pmean((grads, loss))
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state, loss

    return step


def train(step: Callable[..., Any], opt: Any, batches: Callable[[Any], Any], epochs: int) -> Any:
    params = init_params()
    state = opt.init(params)
    losses = []
    for epoch in range(epochs):
        for batch in batches(fg.random.fold_in(fg.random.key(5), epoch)):
            params, state, loss = step(params, state, batch)
            losses.append(loss)
    return params, torch.stack(losses)


def check_data_parallel(r: int, n: int) -> None:
    data = dataset()
    del r
    for opt in [
        optim.adam(0.05),
        optim.MultiSteps(optim.adam(0.05), 3).gradient_transformation(),
        optim.MultiSteps(optim.sgd(0.1, momentum=0.9), 2).gradient_transformation(),
    ]:
        # Data-parallel training (pmean of the gradients, each rank its slice) equals training
        # one process on the global batches; with MultiSteps, accumulation included. (Jitted:
        # examples/data_parallel.py, which the pytest module runs with --check.)
        parallel, single = make_step(opt, True), make_step(opt, False)
        got = train(parallel, opt, lambda k: distributed.batches(data, 8, key=k), 2)
        want = train(single, opt, lambda k: fg.data.batches(data, 8, key=k), 2)
        assert_trees_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert got[1][-1] < got[1][0]  # it trains


def check_zero(r: int, n: int) -> None:
    g = torch.Generator().manual_seed(1)
    params = {
        "emb": torch.randn(10, 4, generator=g),
        "w1": torch.randn(4, 6, generator=g, dtype=torch.float64),
        "b1": torch.randn(6, generator=g, dtype=torch.float64),
        "w2": torch.randn(6, 3, generator=g),
        "b2": torch.randn(3, generator=g),
        "scale": torch.randn((), generator=g),
    }
    grads = [
        fg.tree.map(lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype), params)
        for _ in range(3)
    ]
    for inner in [
        optim.adamw(0.1, weight_decay=0.1),
        optim.sgd(0.1, momentum=0.9),
        optim.lamb(0.01),
    ]:
        # The sharded optimizer's updates equal the unsharded ones, step after step; each
        # rank's state holds only its own leaves. (Jitted: examples/data_parallel.py --zero.)
        sharded = distributed.shard_optimizer(inner)
        p_s, s_s = params, sharded.init(params)
        p_u, s_u = params, inner.init(params)
        for gr in grads:
            u_s, s_s = sharded.update(gr, s_s, p_s)
            u_u, s_u = inner.update(gr, s_u, p_u)
            assert_trees_allclose(u_s, u_u, rtol=0, atol=0)
            p_s, p_u = optim.apply_updates(p_s, u_s), optim.apply_updates(p_u, u_u)
        full = sum(x.numel() for x in fg.tree.leaves(s_u))
        mine = sum(x.numel() for x in fg.tree.leaves(s_s))
        owned = sum(x.numel() for x in fg.tree.leaves(distributed.owned_leaves(params)))
        total = sum(x.numel() for x in fg.tree.leaves(params))
        assert 0 < owned < total, (owned, total)
        assert mine < full, (mine, full)
        everyone = distributed.psum(torch.tensor(owned))
        assert int(everyone) == total  # every leaf has exactly one owner
    del r, n


def job_collectives(r: int, n: int) -> None:
    for check in (check_collectives, check_batches, check_data_parallel, check_zero):
        start, cpu = time.perf_counter(), time.process_time()
        check(r, n)
        print(
            f"{check.__name__}: {time.perf_counter() - start:.1f} s "
            f"(cpu {time.process_time() - cpu:.1f} s)",
            flush=True,
        )


# --------------------------------------------------------------------------------------------
# Job "kill": a rank dies; the other gets a clear error within the timeout
# --------------------------------------------------------------------------------------------


def job_kill(r: int, n: int) -> None:
    distributed.psum(torch.ones(3))  # both ranks are up
    if r == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    start = time.perf_counter()
    expect_error(
        lambda: distributed.psum({"g": torch.ones(3)}),
        RuntimeError,
        "funcgrad.distributed.psum: the all_reduce failed on rank 0 of 2. Another process "
        "exited, did not reach this collective within",
    )
    print(f"error after {time.perf_counter() - start:.2f} s")


def job_hang(r: int, n: int) -> None:
    distributed.psum(torch.ones(3))  # both ranks are up
    timeout = float(os.environ["FG_TEST_TIMEOUT"])
    if r == 1:  # alive but never reaches the next collective
        time.sleep(timeout + 3)
        os._exit(0)
    start = time.perf_counter()
    expect_error(
        lambda: distributed.all_gather([torch.ones(3)]),
        RuntimeError,
        "funcgrad.distributed.all_gather: the all_gather failed on rank 0 of 2. Another "
        f"process exited, did not reach this collective within {timeout:g} s, the timeout "
        "given to init",
    )
    print(f"error after {time.perf_counter() - start:.2f} s")


JOBS = {"collectives": job_collectives, "hang": job_hang, "kill": job_kill}


def main() -> None:
    job = sys.argv[1]
    torch.manual_seed(0)
    distributed.init(timeout=float(os.environ.get("FG_TEST_TIMEOUT", TIMEOUT_S)))
    r, n = distributed.rank(), distributed.world_size()
    assert n == int(os.environ["WORLD_SIZE"])
    assert r == int(os.environ["RANK"])
    assert distributed.is_main() == (r == 0)
    JOBS[job](r, n)
    distributed.shutdown()
    print(f"ok {job} rank {r}", flush=True)


if __name__ == "__main__":
    main()
