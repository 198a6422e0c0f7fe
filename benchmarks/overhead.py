"""Per-call overhead of funcgrad's transforms over torch.func (and, for context, JAX eager).

Cases: (a) a tiny function of one tensor; (b) a loss over a dict of 100 parameter tensors.
For each transform the script times funcgrad and torch.func in the same process, interleaved
round by round, and prints medians and the ratio funcgrad / torch.func (target: <= 1.25 on (a),
<= 1.10 on (b)). The JAX column is un-jitted ``jax.grad``/``jax.vmap`` on the same function,
for orientation only (eager JAX re-traces on each call).

Run: ``python benchmarks/overhead.py`` (or ``nox -s bench``). ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import datetime
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.func
from _common import compare
from _common import cpu_name as _cpu_name

import funcgrad as fg

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def tiny_case() -> dict[str, dict[str, Callable[[], Any]]]:
    x = torch.randn(3)
    xs = torch.randn(8, 3)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (x * x).sum()

    cases = {
        "grad": {"funcgrad": fg.grad(f), "torch.func": torch.func.grad(f)},
        "value_and_grad": {
            "funcgrad": fg.value_and_grad(f),
            "torch.func": torch.func.grad_and_value(f),
        },
        "vmap": {"funcgrad": fg.vmap(f), "torch.func": torch.func.vmap(f)},
        "vjp (+ one vjp_fn call)": {
            "funcgrad": lambda x: fg.vjp(f, x)[1](ct),
            "torch.func": lambda x: torch.func.vjp(f, x)[1](ct),
        },
        "jvp": {
            "funcgrad": lambda x: fg.jvp(f, (x,), (t,)),
            "torch.func": lambda x: torch.func.jvp(f, (x,), (t,)),
        },
        "jacrev": {"funcgrad": fg.jacrev(f), "torch.func": torch.func.jacrev(f)},
        "jacfwd": {"funcgrad": fg.jacfwd(f), "torch.func": torch.func.jacfwd(f)},
        "hessian": {"funcgrad": fg.hessian(f), "torch.func": torch.func.hessian(f)},
    }
    ct, t = torch.tensor(1.0), torch.ones(3)
    args: dict[str, tuple[Any, ...]] = {name: (x,) for name in cases}
    args["vmap"] = (xs,)
    jax_fns = _jax_tiny()
    out: dict[str, dict[str, Callable[[], Any]]] = {}
    for name, fns in cases.items():
        out[name] = {k: (lambda fn=fn, a=args[name]: fn(*a)) for k, fn in fns.items()}
        if jax_fns is not None:
            out[name]["jax (eager)"] = jax_fns[name]
    return out


def dict_case(n: int = 100) -> dict[str, dict[str, Callable[[], Any]]]:
    params = {f"layer{i:03d}": torch.randn(16) for i in range(n)}
    x = torch.randn(16)
    xs = torch.randn(8, 16)

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return sum(((p * x) ** 2).sum() for p in params.values())  # type: ignore[return-value]

    cases = {
        "grad": {"funcgrad": fg.grad(loss), "torch.func": torch.func.grad(loss)},
        "value_and_grad": {
            "funcgrad": fg.value_and_grad(loss),
            "torch.func": torch.func.grad_and_value(loss),
        },
        "vmap": {
            "funcgrad": fg.vmap(loss, in_axes=(None, 0)),
            "torch.func": torch.func.vmap(loss, in_dims=(None, 0)),
        },
    }
    args = {"grad": (params, x), "value_and_grad": (params, x), "vmap": (params, xs)}
    jax_fns = _jax_dict(n)
    out: dict[str, dict[str, Callable[[], Any]]] = {}
    for name, fns in cases.items():
        out[name] = {k: (lambda fn=fn, a=args[name]: fn(*a)) for k, fn in fns.items()}
        if jax_fns is not None:
            out[name]["jax (eager)"] = jax_fns[name]
    return out


def _jax_tiny() -> dict[str, Callable[[], Any]] | None:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    x = jnp.ones(3)
    xs = jnp.ones((8, 3))

    def f(x: Any) -> Any:
        return (x * x).sum()

    g, vg, vm, jr, jf, h = (
        jax.grad(f),
        jax.value_and_grad(f),
        jax.vmap(f),
        jax.jacrev(f),
        jax.jacfwd(f),
        jax.hessian(f),
    )
    return {
        "grad": lambda: g(x).block_until_ready(),
        "value_and_grad": lambda: vg(x)[1].block_until_ready(),
        "vmap": lambda: vm(xs).block_until_ready(),
        "vjp (+ one vjp_fn call)": lambda: jax.vjp(f, x)[1](jnp.ones(()))[0].block_until_ready(),
        "jvp": lambda: jax.block_until_ready(jax.jvp(f, (x,), (x,))),
        "jacrev": lambda: jr(x).block_until_ready(),
        "jacfwd": lambda: jf(x).block_until_ready(),
        "hessian": lambda: h(x).block_until_ready(),
    }


def _jax_dict(n: int) -> dict[str, Callable[[], Any]] | None:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    params = {f"layer{i:03d}": jnp.ones(16) for i in range(n)}
    x = jnp.ones(16)
    xs = jnp.ones((8, 16))

    def loss(params: Any, x: Any) -> Any:
        return sum(((p * x) ** 2).sum() for p in params.values())

    g, vg, vm = jax.grad(loss), jax.value_and_grad(loss), jax.vmap(loss, in_axes=(None, 0))
    return {
        "grad": lambda: jax.block_until_ready(g(params, x)),
        "value_and_grad": lambda: jax.block_until_ready(vg(params, x)),
        "vmap": lambda: vm(params, xs).block_until_ready(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=41, help="interleaved timing rounds")
    parser.add_argument("--quick", action="store_true", help="a few rounds, for a smoke run")
    opts = parser.parse_args()
    rounds = 5 if opts.quick else opts.rounds
    torch.set_num_threads(1)
    print(
        f"# funcgrad overhead over torch.func — {datetime.date.today()}, "
        f"{_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{rounds} rounds, median per call, torch threads 1"
    )
    print()
    print(
        "| case | transform | funcgrad (µs) | torch.func (µs) | ratio | target | JAX eager (µs) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for case, (build, target) in {
        "(a) tiny fn, 1 tensor": (tiny_case, 1.25),
        "(b) loss, dict of 100": (dict_case, 1.10),
    }.items():
        for transform, candidates in build().items():
            med = compare(candidates, rounds)
            ratio = med["funcgrad"] / med["torch.func"]
            jax_us = f"{med['jax (eager)'] * 1e6:.0f}" if "jax (eager)" in med else "n/a"
            flag = "" if ratio <= target else " (over)"
            print(
                f"| {case} | {transform} | {med['funcgrad'] * 1e6:.1f} | "
                f"{med['torch.func'] * 1e6:.1f} | {ratio:.3f}{flag} | <= {target:.2f} | {jax_us} |"
            )


if __name__ == "__main__":
    main()
