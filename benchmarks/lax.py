"""A 100-step RNN through ``fg.lax.scan``: compile time and step time, forward + backward.

The model is ``h_t = tanh(W h_{t-1} + U x_t + b)`` with hidden size 64 (input size 64, batch
16, float32, T=100 steps); the loss is the mean of the squared hidden states over all steps.
One step computes the loss and its gradient with respect to ``(W, U, b)``. Variants, all on
the same weights and inputs:

- ``fg.lax.scan, eager``: ``fg.value_and_grad`` of the loss written with ``fg.lax.scan``
  (the reference row of the ratios);
- ``fg.jit(fg.value_and_grad(scan loss))``: the same, compiled with ``fg.jit`` (inductor);
  the scan is unrolled into one graph (NOTE [lax strategies] in ``funcgrad/_lax_checks.py``);
- ``torch.compile(Python loop) + .backward()``: the loss as a plain Python loop over time,
  ``torch.compile(fullgraph=True)``, gradients by ``torch.autograd.grad`` (the PyTorch way);
- ``Python loop, eager + .backward()`` (context);
- ``JAX jit(value_and_grad(lax.scan))`` (when JAX is installed; on the CPU).

The gradients of every variant are checked against the eager one (float32 tolerance) before
timing. "compile (s)" is the first call (tracing and compilation, inductor's cache cold: a
fresh directory per run); the step time is the median of interleaved rounds after warm-up.

Run: ``python benchmarks/lax.py`` (``--quick``: T=20 and few rounds, a smoke run;
``--steps``, ``--rounds``, ``--threads``, ``--no-jax``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import cpu_name

import funcgrad as fg
from funcgrad import lax

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HIDDEN, INPUT, BATCH = 64, 64, 16
REF = "fg.lax.scan, eager"


def make_data(steps: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    params = {
        "W": torch.randn(HIDDEN, HIDDEN, generator=g) / HIDDEN**0.5,
        "U": torch.randn(HIDDEN, INPUT, generator=g) / INPUT**0.5,
        "b": torch.zeros(HIDDEN),
    }
    return params, torch.randn(steps, BATCH, INPUT, generator=g)


def scan_loss(params: dict[str, torch.Tensor], xs: torch.Tensor) -> torch.Tensor:
    def step(h: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(h @ params["W"].T + x @ params["U"].T + params["b"])
        return h, h

    _, hs = lax.scan(step, xs.new_zeros(BATCH, HIDDEN), xs)
    return (hs**2).mean()


def loop_loss(params: dict[str, torch.Tensor], xs: torch.Tensor) -> torch.Tensor:
    h = xs.new_zeros(BATCH, HIDDEN)
    hs = []
    for x in xs:
        h = torch.tanh(h @ params["W"].T + x @ params["U"].T + params["b"])
        hs.append(h)
    return (torch.stack(hs) ** 2).mean()


def autograd_step(forward: Callable[..., torch.Tensor]) -> Callable[..., Any]:
    def step(params: dict[str, torch.Tensor], xs: torch.Tensor) -> Any:
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        loss = forward(leaves, xs)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        return loss.detach(), dict(zip(leaves, grads))

    return step


def jax_step(params: dict[str, torch.Tensor], xs: torch.Tensor) -> Callable[[], Any]:
    import jax
    import jax.numpy as jnp

    def loss(p: Any, xs: Any) -> Any:
        def step(h: Any, x: Any) -> Any:
            h = jnp.tanh(h @ p["W"].T + x @ p["U"].T + p["b"])
            return h, h

        _, hs = jax.lax.scan(step, jnp.zeros((BATCH, HIDDEN), xs.dtype), xs)
        return (hs**2).mean()

    fn = jax.jit(jax.value_and_grad(loss))
    jp = {k: jnp.asarray(v.numpy()) for k, v in params.items()}
    jxs = jnp.asarray(xs.numpy())

    def call() -> Any:
        value, grads = jax.block_until_ready(fn(jp, jxs))
        return torch.from_numpy(jax.numpy.asarray(value).__array__().copy()), {
            k: torch.from_numpy(v.__array__().copy()) for k, v in grads.items()
        }

    return call


def variants(steps: int, use_jax: bool) -> dict[str, Callable[[], Any]]:
    params, xs = make_data(steps)
    compiled_loop = torch.compile(loop_loss, fullgraph=True)
    jitted = fg.jit(fg.value_and_grad(scan_loss))
    eager = fg.value_and_grad(scan_loss)
    out: dict[str, Callable[[], Any]] = {
        REF: lambda: eager(params, xs),
        "fg.jit(fg.value_and_grad(scan loss))": lambda: jitted(params, xs),
        "torch.compile(Python loop) + .backward()": lambda: autograd_step(compiled_loop)(
            params, xs
        ),
        "Python loop, eager + .backward() (context)": lambda: autograd_step(loop_loss)(params, xs),
    }
    if use_jax:
        out["JAX jit(value_and_grad(lax.scan))"] = jax_step(params, xs)
    return out


def have_jax() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def time_calls(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="time steps (default 100)")
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds")
    parser.add_argument("--quick", action="store_true", help="T=20, 3 rounds (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads and CPU cores")
    parser.add_argument("--no-jax", action="store_true", help="leave out the JAX row")
    opts = parser.parse_args()
    steps = opts.steps or (20 if opts.quick else 100)
    rounds = 3 if opts.quick else opts.rounds
    if opts.threads:
        torch.set_num_threads(opts.threads)
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: opts.threads])
    cache_dir = tempfile.mkdtemp(prefix="funcgrad-bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    try:
        run(steps, rounds, not opts.no_jax and have_jax())
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def run(steps: int, rounds: int, use_jax: bool) -> None:
    start = time.perf_counter()
    fns = variants(steps, use_jax)
    first: dict[str, float] = {}
    ref = None
    for name, fn in fns.items():
        print(f"  first call: {name}", file=sys.stderr, flush=True)
        tic = time.perf_counter()
        value, grads = fn()
        first[name] = time.perf_counter() - tic
        if ref is None:
            ref = (value, grads)
        else:  # a wrong variant stops the run
            fg.testing.assert_trees_allclose((value, grads), ref, rtol=1e-4, atol=1e-6)
    calls = {}
    for name, fn in fns.items():
        fn()
        calls[name] = max(1, round(0.1 / time_calls(fn, 2)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name].append(time_calls(fns[name], calls[name]))
    med = {name: statistics.median(s) for name, s in samples.items()}
    jax_text = "no JAX"
    if use_jax:
        import jax

        jax_text = f"JAX {jax.__version__} (cpu)"
    print(
        f"## lax.scan RNN — {datetime.date.today()}, {cpu_name()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, {jax_text}, "
        f"Python {sys.version.split()[0]}, {rounds} rounds, median per step, cold inductor "
        f"cache; run took {time.perf_counter() - start:.0f} s"
    )
    print()
    print(
        f"RNN h = tanh(W h + U x + b), hidden {HIDDEN}, input {INPUT}, batch {BATCH}, "
        f"T={steps}, float32; one step = loss and gradient w.r.t. (W, U, b)."
    )
    print()
    print(f"| variant | step (ms) | vs {REF} | first call incl. compile (s) |")
    print("|---|---:|---:|---:|")
    for name in fns:
        print(
            f"| {name} | {med[name] * 1e3:.2f} | {med[name] / med[REF]:.3f} | {first[name]:.2f} |"
        )


if __name__ == "__main__":
    main()
