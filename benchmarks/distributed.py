"""All-reduce of a 100-leaf gradient tree on 2 processes (gloo): coalesced against per leaf.

The tree has the leaves of a small transformer's gradients: 100 float32 tensors, 25 weight
matrices and 75 bias and norm vectors (``--width`` sets their sizes). Timed on 2 processes on
this machine (gloo over loopback TCP), interleaved round by round, medians (each timing starts
after a barrier and ends when the reduced tree is there):

- ``funcgrad.distributed.psum``: the leaves copied into one flat buffer per dtype, one
  ``all_reduce`` per buffer, cut back into the leaves (NOTE [coalesced collectives]);
- per leaf: one ``torch.distributed.all_reduce`` per leaf, in place, one after another;
- per leaf, async: all 100 issued with ``async_op=True``, then waited for (the best a
  per-leaf loop can do: the backend may pipeline them).

Target (issue 9): coalesced >= 3x fewer milliseconds than per leaf on gloo.

Run: ``python benchmarks/distributed.py`` (``--quick``: a few rounds, a smoke run).
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import cpu_name

from funcgrad import distributed


def gradient_tree(width: int) -> dict[str, torch.Tensor]:
    """100 float32 leaves: 25 blocks of a matrix ((width, 4 width) or (width, width)) and three
    vectors (width,)."""
    g = torch.Generator().manual_seed(0)
    tree = {}
    for i in range(25):  # 25 blocks of 4 leaves: a matrix and three vectors
        tree[f"h{i}.w"] = torch.randn(width, width if i % 2 else 4 * width, generator=g)
        tree[f"h{i}.b"] = torch.randn(width, generator=g)
        tree[f"h{i}.ln.w"] = torch.randn(width, generator=g)
        tree[f"h{i}.ln.b"] = torch.randn(width, generator=g)
    return tree


def per_leaf(tree: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in tree.items()}  # psum does not mutate its input either
    for v in out.values():
        dist.all_reduce(v)
    return out


def per_leaf_async(tree: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in tree.items()}
    works = [dist.all_reduce(v, async_op=True) for v in out.values()]
    for w in works:
        w.wait()
    return out


VARIANTS: dict[str, Callable[[Any], Any]] = {
    "funcgrad psum (coalesced)": distributed.psum,
    "per leaf, all_reduce": per_leaf,
    "per leaf, all_reduce(async_op=True)": per_leaf_async,
}


def worker(rank: int, port: int, widths: list[int], rounds: int, queue: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    distributed.init(backend="gloo", timeout=datetime.timedelta(minutes=5))
    results = []
    for width in widths:
        tree = gradient_tree(width)
        want = per_leaf(tree)
        for fn in VARIANTS.values():  # same sums; and a warm-up
            got = fn(tree)
            assert all(torch.equal(got[k], want[k]) for k in want)
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(rounds):
            for name, fn in VARIANTS.items():
                dist.barrier()
                start = time.perf_counter()
                fn(tree)
                times[name].append(time.perf_counter() - start)
        numel = sum(x.numel() for x in tree.values())
        results.append((width, numel, {k: statistics.median(v) * 1e3 for k, v in times.items()}))
    if rank == 0:
        queue.put(results)
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=101, help="default: 101")
    parser.add_argument(
        "--widths", type=int, nargs="+", default=[16, 64, 256], help="default: 16 64 256"
    )
    parser.add_argument("--quick", action="store_true", help="5 rounds, for a smoke run")
    opts = parser.parse_args()
    rounds = 5 if opts.quick else opts.rounds
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(
        worker, args=(port, opts.widths, rounds, queue), nprocs=2, start_method="spawn"
    )
    results = queue.get()
    print(
        f"**{datetime.date.today()} — {cpu_name()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, gloo on 2 processes (loopback), 1 thread each, {rounds} rounds**"
    )
    print()
    names = list(VARIANTS)
    print(
        "| tree (100 float32 leaves) | elements | "
        + " | ".join(f"{n} (ms)" for n in names)
        + " | per leaf / coalesced |"
    )
    print("|---|---:|" + "---:|" * len(names) + "---:|")
    for width, numel, ms in results:
        cells = " | ".join(f"{ms[n]:.3f}" for n in names)
        ratio = ms[names[1]] / ms[names[0]]
        print(f"| width {width} | {numel:,} | {cells} | {ratio:.1f}x |")
    print()
    print("last column: per leaf / coalesced (target >= 3x)")


if __name__ == "__main__":
    main()
