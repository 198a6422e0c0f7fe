"""Normal sampling throughput: funcgrad.random.normal against torch.randn and jax.random.normal.

Draws N float32 standard normals (default 10M) per call. Timed, interleaved round by round:

- ``torch.randn(N)`` (torch's global Mersenne-Twister generator, Box-Muller), and for context
  ``torch.compile`` of it (inductor's own Philox generator);
- ``fg.random.normal(key, (N,))`` eager: threefry2x32 in ~130 int32 torch ops, evaluated in
  cache-sized chunks (NOTE [eager chunking] in funcgrad/_prng.py), then XLA's erfinv;
- ``fg.jit(fg.random.normal)`` (inductor, fullgraph): the same expression fused into one
  vectorized kernel. Compile time (the first call) is reported separately;
- ``jax.jit(jax.random.normal)`` when JAX is installed (XLA on the CPU, its own thread pool).

Target (issue 5): jitted funcgrad <= 2x torch.randn on the CPU. Before timing, the compiled
output is checked against the eager one, and the eager one against JAX (within 1e-6).

Run: ``python benchmarks/prng.py`` (``--quick``: 1M values, a few rounds, a smoke run).
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

import numpy as np
import torch
import torch._inductor.config
from _common import cpu_name as _cpu_name

import funcgrad as fg
from funcgrad import random


def _time_per_call(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def compare(candidates: dict[str, Callable[[], Any]], rounds: int, sample_s: float = 0.2) -> dict:
    """Median seconds per call of each candidate, in interleaved rounds (as in optim.py: each
    sample lasts about ``sample_s``; the order of the candidates alternates by round)."""
    calls = {}
    for name, fn in candidates.items():  # warm up (allocator, caches), calibrate
        for _ in range(2):
            fn()
        calls[name] = max(1, round(sample_s / _time_per_call(fn, 1)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name].append(_time_per_call(candidates[name], calls[name]))
    return {name: statistics.median(s) for name, s in samples.items()}


def _jax_candidate(n: int, key: torch.Tensor) -> tuple[Callable[[], Any], np.ndarray] | None:
    """``jax.jit(jax.random.normal)`` on the same key, and its output; None without JAX."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jkey = jax.random.wrap_key_data(jnp.asarray(key.numpy()))
    fn = jax.jit(lambda k: jax.random.normal(k, (n,), jnp.float32))
    out = np.asarray(fn(jkey))
    return (lambda: fn(jkey).block_until_ready()), out


def run(opts: argparse.Namespace) -> None:
    if opts.threads:
        torch.set_num_threads(opts.threads)
    n = 1_000_000 if opts.quick else opts.size
    rounds = 3 if opts.quick else opts.rounds
    key = random.key(0)

    def fg_normal(k: torch.Tensor) -> torch.Tensor:
        return random.normal(k, (n,))

    def torch_randn() -> torch.Tensor:
        return torch.randn(n)

    eager = fg_normal(key)
    candidates: dict[str, Callable[[], Any]] = {
        "torch.randn": torch_randn,
        "fg.random.normal, eager": lambda: fg_normal(key),
    }
    first: dict[str, float] = {}
    if not opts.no_compile:
        t0 = time.perf_counter()
        compiled_randn = torch.compile(torch_randn, fullgraph=True)
        compiled_randn()
        first["torch.compile(torch.randn) (context)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled = fg.jit(fg_normal)
        out = compiled(key)
        first["fg.jit(fg.random.normal)"] = time.perf_counter() - t0
        # Same key, same numbers: exact but for torch's log1p in the generated kernel.
        torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
        other = random.key(1)  # a new key reuses the graph
        torch.testing.assert_close(compiled(other), fg_normal(other), rtol=1e-6, atol=1e-6)
        candidates["fg.jit(fg.random.normal)"] = lambda: compiled(key)
        candidates["torch.compile(torch.randn) (context)"] = compiled_randn
    jax_version, agreement = "absent", ""
    jax_run = _jax_candidate(n, key)
    if jax_run is not None:
        import jax

        jax_version = jax.__version__
        fn, expected = jax_run
        np.testing.assert_allclose(eager.numpy(), expected, rtol=0, atol=1e-6)
        diff = np.abs(eager.numpy() - expected)
        agreement = (
            f"funcgrad vs JAX on the same key: max |difference| {diff.max():.2g}, "
            f"{(diff == 0).mean():.2%} of values bit-identical"
        )
        candidates["jax.jit(jax.random.normal)"] = fn
    timings = compare(candidates, rounds)

    print(
        f"# normal sampling, {n / 1e6:g}M float32 values — {datetime.date.today()}, "
        f"{_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, torch threads "
        f"{torch.get_num_threads()}, JAX {jax_version}, {rounds} rounds, median per call, "
        f"{'warm' if opts.warm_cache else 'cold'} inductor cache"
    )
    print()
    base = timings["torch.randn"]
    print("| variant | time (ms) | M values/s | / torch.randn | first call, incl. compile (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in timings.items():
        compile_s = f"{first[name]:.1f}" if name in first else "—"
        print(
            f"| {name} | {seconds * 1e3:.1f} | {n / seconds / 1e6:.0f} | {seconds / base:.2f} | "
            f"{compile_s} |"
        )
    if "fg.jit(fg.random.normal)" in timings:
        ratio = timings["fg.jit(fg.random.normal)"] / base
        flag = "" if ratio <= 2.0 else " (over)"
        print()
        print(f"compiled funcgrad / torch.randn: {ratio:.2f}{flag} (target <= 2.00)")
    if agreement:
        print(agreement)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000_000, help="values per call")
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds")
    parser.add_argument("--quick", action="store_true", help="1M values, few rounds (smoke)")
    parser.add_argument("--no-compile", action="store_true", help="eager variants only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--warm-cache", action="store_true", help="reuse inductor's on-disk caches (default: cold)"
    )
    opts = parser.parse_args()
    cache_dir = None
    if not opts.warm_cache:  # compile times are cold compiles: a fresh cache, no FX graph cache
        cache_dir = tempfile.mkdtemp(prefix="funcgrad-bench-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        torch._inductor.config.fx_graph_cache = False
    try:
        run(opts)
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
