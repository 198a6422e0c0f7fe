"""Saving and loading a ~100 MB float32 pytree: funcgrad.io against safetensors and torch.save.

The tree is a transformer's parameters (a dict of ~200 float32 tensors: embeddings, 16 blocks,
final norm), ~100 MB by default (``--size-mb``). Timed, interleaved round by round (medians):

- save: ``funcgrad.io.save`` (atomic: temporary file, fsync, rename, directory fsync; CRC-32
  of header and data) against ``safetensors.torch.save_file`` and ``torch.save``, which
  neither fsync nor rename, and against ``save_file`` made equally durable (temporary file,
  fsync, rename, directory fsync) to show what durability itself costs;
- load: ``funcgrad.io.load`` (reads every byte, verifies the checksum) against
  ``safetensors.torch.load_file`` (memory-maps the file: tensors are read lazily, on first
  use) and ``torch.load(weights_only=True)``, each alone and followed by one pass over every
  tensor (``x.sum()``), which is when a lazily loaded tensor is actually read.

Files are in ``--dir`` (default: the temporary directory), loads from a warm page cache.
Targets (issue 6): save <= 1.2x safetensors' own time and faster than ``torch.save``.

Run: ``python benchmarks/io.py`` (``--quick``: a small tree and a few rounds, a smoke run).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import cpu_name as _cpu_name
from safetensors.torch import load_file, save_file

import funcgrad as fg
from funcgrad import io


def transformer(size_mb: float, layers: int = 16) -> dict[str, torch.Tensor]:
    """A transformer's float32 parameters of about ``size_mb`` MB (width chosen to fit)."""
    vocab, context = 2048, 512
    # 12 d^2 per block (qkv 3, out 1, MLP 8) + (vocab + context) d, in 4-byte floats
    a, b, c = 12 * layers, vocab + context, -size_mb * 1e6 / 4
    d = max(8, int((-b + (b * b - 4 * a * c) ** 0.5) / (2 * a)))
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g) * 0.02

    params = {"embed": randn(vocab, d), "pos": randn(context, d)}
    for i in range(layers):
        params |= {
            f"h.{i}.ln1.w": torch.ones(d), f"h.{i}.ln1.b": torch.zeros(d),
            f"h.{i}.qkv.w": randn(d, 3 * d), f"h.{i}.qkv.b": torch.zeros(3 * d),
            f"h.{i}.out.w": randn(d, d), f"h.{i}.out.b": torch.zeros(d),
            f"h.{i}.ln2.w": torch.ones(d), f"h.{i}.ln2.b": torch.zeros(d),
            f"h.{i}.mlp_in.w": randn(d, 4 * d), f"h.{i}.mlp_in.b": torch.zeros(4 * d),
            f"h.{i}.mlp_out.w": randn(4 * d, d), f"h.{i}.mlp_out.b": torch.zeros(d),
        }  # fmt: skip
    params |= {"ln_f.w": torch.ones(d), "ln_f.b": torch.zeros(d)}
    return params


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_save_file(tree: dict[str, torch.Tensor], path: str) -> None:
    """safetensors with funcgrad.io's guarantees: temporary file, fsync, rename, fsync dir."""
    tmp = path + ".tmp"
    save_file(tree, tmp)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(os.path.dirname(path))


def touch(tree: Any) -> None:
    for x in fg.tree.leaves(tree):
        x.sum()


def timed(candidates: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds per call, one call per candidate per round, order alternating."""
    names = list(candidates)
    for fn in candidates.values():  # warm up: allocator, page cache, lazy imports
        fn()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            candidates[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def _table(title: str, times: dict[str, float], size: int, baseline: str) -> None:
    print(f"| {title} | ms | GB/s | / {baseline} |")
    print("|---|---:|---:|---:|")
    for name, seconds in times.items():
        ratio = seconds / times[baseline]
        print(f"| {name} | {seconds * 1e3:.1f} | {size / seconds / 1e9:.2f} | {ratio:.2f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100.0, help="size of the tree")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--quick", action="store_true", help="small tree, few rounds (smoke)")
    parser.add_argument("--dir", default=None, help="where to write (default: temp directory)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the sums)")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    size_mb, rounds = (4.0, 3) if opts.quick else (opts.size_mb, opts.rounds)
    tree = transformer(size_mb)
    nbytes = sum(x.numel() * x.element_size() for x in tree.values())
    directory = tempfile.mkdtemp(prefix="funcgrad-bench-io-", dir=opts.dir)
    try:
        paths = {k: os.path.join(directory, f"{k}.bin") for k in ("fg", "st", "st_durable", "pt")}
        saves = {
            "funcgrad.io.save (atomic, fsync, checksum)": lambda: io.save(paths["fg"], tree),
            "safetensors save_file": lambda: save_file(tree, paths["st"]),
            "safetensors save_file + fsync + rename": lambda: durable_save_file(
                tree, paths["st_durable"]
            ),
            "torch.save": lambda: torch.save(tree, paths["pt"]),
        }
        save_times = timed(saves, rounds)
        fg.testing.assert_trees_allclose(io.load(paths["fg"]), tree, rtol=0, atol=0)
        loads = {
            "funcgrad.io.load (reads all, verifies)": lambda: io.load(paths["fg"]),
            "safetensors load_file (lazy mmap)": lambda: load_file(paths["st"]),
            "torch.load(weights_only=True)": lambda: torch.load(paths["pt"], weights_only=True),
            "torch.load(mmap=True, weights_only=True)": lambda: torch.load(
                paths["pt"], weights_only=True, mmap=True
            ),
        }
        loads |= {
            f"{name} + sum of every tensor": lambda fn=fn: touch(fn())  # type: ignore[misc]
            for name, fn in list(loads.items())
        }
        load_times = timed(loads, rounds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print(
        f"# funcgrad.io vs safetensors and torch.save — {datetime.date.today()}, {_cpu_name()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, torch threads "
        f"{torch.get_num_threads()}, {rounds} rounds, median"
    )
    print(f"# tree: {len(tree)} float32 tensors, {nbytes / 1e6:.1f} MB; files in {opts.dir or tempfile.gettempdir()}")  # fmt: skip
    print()
    _table("save", save_times, nbytes, "safetensors save_file")
    _table("load", load_times, nbytes, "funcgrad.io.load (reads all, verifies)")
    fg_save = save_times["funcgrad.io.save (atomic, fsync, checksum)"]
    print("| comparison | ratio | target |")
    print("|---|---:|---:|")
    rows = [
        (
            "funcgrad save / safetensors save_file",
            fg_save / save_times["safetensors save_file"],
            1.2,
        ),
        (
            "funcgrad save / durable safetensors save",
            fg_save / save_times["safetensors save_file + fsync + rename"],
            None,
        ),
        ("funcgrad save / torch.save", fg_save / save_times["torch.save"], 1.0),
    ]
    for label, ratio, target in rows:
        flag = "" if target is None or ratio <= target else " (over)"
        print(f"| {label} | {ratio:.3f}{flag} | {'—' if target is None else f'<= {target:.2f}'} |")


if __name__ == "__main__":
    main()
