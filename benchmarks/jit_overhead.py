"""Per-call cost of ``fg.jit`` over a bare ``torch.compile`` of the same function.

``fg.jit`` adds a cache key (the arguments' tree structure and leaf kinds), its own trampoline
and, when asked, donation; dynamo adds its guards either way. This script measures what a call
costs where the compiled work is tiny, so the call path is nearly all of it:

- ``tiny``: ``x * 2 + 1`` on 3 floats;
- ``per-example``: ``vmap(grad)`` of a 16-8-4 MLP's loss over 8 examples;
- ``adam-196``: an Adam update (``update`` + ``apply_updates``) over 196 parameter tensors of 4
  floats each (~790 tensor arguments: parameters, both moments, gradients), against
  ``torch.optim.Adam(fused=True).step()`` on the same tensors.

Each case times the candidates interleaved round by round in one process (medians), all
compiled with inductor. Run: ``python benchmarks/jit_overhead.py`` (``--quick``: few rounds).
"""

from __future__ import annotations

import argparse
import datetime
import os
from collections.abc import Callable
from typing import Any

import torch
from _common import compare
from _common import cpu_name as _cpu_name

import funcgrad as fg
from funcgrad import optim


def tiny_case() -> dict[str, Callable[[], Any]]:
    x = torch.randn(3)

    def f(x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1

    ours, raw = fg.jit(f), torch.compile(f, fullgraph=True)
    return {"fg.jit": lambda: ours(x), "torch.compile": lambda: raw(x)}


def per_example_case() -> dict[str, Callable[[], Any]]:
    g = torch.Generator().manual_seed(0)
    params = {
        "w1": torch.randn(8, 16, generator=g),
        "b1": torch.zeros(8),
        "w2": torch.randn(4, 8, generator=g),
        "b2": torch.zeros(4),
    }
    x, y = torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x @ p["w1"].T + p["b1"])
        return torch.nn.functional.cross_entropy((h @ p["w2"].T + p["b2"])[None], y[None])

    ours = fg.jit(fg.vmap(fg.grad(loss), in_axes=(None, 0, 0)))
    raw = torch.compile(
        torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0)), fullgraph=True
    )
    fg.testing.assert_trees_allclose(ours(params, x, y), raw(params, x, y))
    return {"fg.jit": lambda: ours(params, x, y), "torch.compile": lambda: raw(params, x, y)}


class _AdamSteps:
    """The functional Adam step over many small leaves, carried from call to call."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.opt = optim.adam(1e-3)
        self.params = [torch.randn(4, generator=g) for _ in range(n)]
        self.grads = [torch.randn(4, generator=g) for _ in range(n)]
        self.state = self.opt.init(self.params)
        self.donated = fg.jit(self.step, donate_argnums=(0, 1))
        self.plain = fg.jit(self.step)
        self.raw = torch.compile(self.step, fullgraph=True)
        torch_params = [torch.nn.Parameter(p.clone()) for p in self.params]
        for p, grad in zip(torch_params, self.grads):
            p.grad = grad.clone()
        self.fused = torch.optim.Adam(torch_params, lr=1e-3, fused=True)

    def step(self, p: Any, s: Any, g: Any) -> tuple[Any, Any]:
        updates, s = self.opt.update(g, s, p)
        return optim.apply_updates(p, updates), s

    def call(self, fn: Callable[..., Any]) -> Callable[[], None]:
        def run() -> None:
            self.params, self.state = fn(self.params, self.state, self.grads)

        return run


def adam_case(n: int) -> dict[str, Callable[[], Any]]:
    steps = _AdamSteps(n)
    return {
        "fg.jit, donated": steps.call(steps.donated),
        "fg.jit": steps.call(steps.plain),
        "torch.compile": steps.call(steps.raw),
        "torch Adam(fused=True).step()": steps.fused.step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=31, help="interleaved timing rounds")
    parser.add_argument("--quick", action="store_true", help="few rounds (smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    rounds = 3 if opts.quick else opts.rounds
    print(
        f"# fg.jit per-call cost — {datetime.date.today()}, {_cpu_name()}, {os.cpu_count()} "
        f"cores, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"{rounds} rounds, median µs per call"
    )
    print()
    print("| case | variant | µs per call | ratio to torch.compile |")
    print("|---|---|---:|---:|")
    cases = {
        "tiny": tiny_case,
        "per-example": per_example_case,
        "adam-196": lambda: adam_case(196),
    }
    for case, build in cases.items():
        timings = compare(build(), rounds)
        base = timings["torch.compile"]
        for name, seconds in timings.items():
            print(f"| {case} | {name} | {seconds * 1e6:.1f} | {seconds / base:.3f} |")


if __name__ == "__main__":
    main()
