"""Autograd basics: derivatives as functions, checked against the math and finite differences.

funcgrad's transforms take a function and return a new function, so they compose:

- ``fg.grad(torch.sin)`` is cosine, ``fg.grad(fg.grad(torch.sin))`` is minus sine, and
  ``fg.vmap`` evaluates them on a whole grid at once;
- ``fg.jacfwd`` (forward mode) and ``fg.jacrev`` (reverse mode) give the same Jacobian;
- ``fg.hessian`` gives second derivatives (here of the Rosenbrock function, in closed form);
- ``fg.jvp`` and ``fg.vjp`` give Jacobian-vector and vector-Jacobian products without ever
  building the Jacobian;
- ``fg.grad`` of a function of a pytree (a dict of tensors) returns a pytree of the same shape.

Every result is checked against an independent answer (calculus, central finite differences,
``torch.autograd.functional``) in float64, and the script plots sine with its first three
derivatives as computed by funcgrad. Nothing here trains, so nothing is ``fg.jit``-ed.

    python examples/autograd_basics.py            # ~5 s on 2 CPU cores, mostly imports
    python examples/autograd_basics.py --smoke    # the same, on a coarser grid
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

import funcgrad as fg
from funcgrad import random

torch.set_default_dtype(torch.float64)  # exact checks: float64 throughout
Check = Callable[[], float]


def central_difference(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``(f(x + h) - f(x - h)) / 2h`` elementwise: a derivative that autograd took no part in."""
    h = 1e-6
    return (f(x + h) - f(x - h)) / (2 * h)


def sin_derivatives(xs: torch.Tensor) -> list[torch.Tensor]:
    """sin and its first three derivatives on a grid, each a transform of the one before."""
    fns = [torch.sin]
    for _ in range(3):
        fns.append(fg.grad(fns[-1]))
    return [fg.vmap(f)(xs) for f in fns]


def check_sin(xs: torch.Tensor) -> float:
    """grad(sin) is cos, grad(grad(sin)) is -sin, and both match finite differences."""
    _, d1, d2, d3 = sin_derivatives(xs)
    errors = [
        (d1 - torch.cos(xs)).abs().max(),
        (d2 + torch.sin(xs)).abs().max(),
        (d3 + torch.cos(xs)).abs().max(),
        (d1 - central_difference(torch.sin, xs)).abs().max(),  # about eps / h + h^2
    ]
    return max(e.item() for e in errors)


def f_vec(x: torch.Tensor) -> torch.Tensor:
    """A function from R^3 to R^2."""
    return torch.stack([x[0] * x[1] * torch.sin(x[2]), x[0] ** 2 + torch.exp(x[1] * x[2])])


def check_jacobians(x: torch.Tensor) -> float:
    """jacfwd and jacrev agree with each other and with torch.autograd.functional.jacobian."""
    fwd, rev = fg.jacfwd(f_vec)(x), fg.jacrev(f_vec)(x)
    ref = torch.autograd.functional.jacobian(f_vec, x)
    tqdm.write(f"\nJacobian of f: R^3 -> R^2 at x = {x.tolist()} (jacfwd):\n{fwd}")
    return max((fwd - rev).abs().max().item(), (fwd - ref).abs().max().item())


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def check_hessian(x: torch.Tensor) -> float:
    """fg.hessian of the Rosenbrock function equals its closed form."""
    h = fg.hessian(rosenbrock)(x)
    a, b = x[0], x[1]
    exact = torch.stack(
        [
            torch.stack([1200 * a**2 - 400 * b + 2, -400 * a]),
            torch.stack([-400 * a, torch.tensor(200.0)]),
        ]
    )
    tqdm.write(f"\nHessian of Rosenbrock at {x.tolist()}:\n{h}")
    return (h - exact).abs().max().item()


def check_jvp_vjp(x: torch.Tensor, v: torch.Tensor, u: torch.Tensor) -> float:
    """jvp(f, x, v) = J v and vjp(f, x)(u) = u J, without building J."""
    jac = fg.jacrev(f_vec)(x)
    out, jv = fg.jvp(f_vec, (x,), (v,))
    out2, vjp_fn = fg.vjp(f_vec, x)
    (uj,) = vjp_fn(u)
    return max(
        (jv - jac @ v).abs().max().item(),
        (uj - u @ jac).abs().max().item(),
        (out - f_vec(x)).abs().max().item(),
        (out2 - f_vec(x)).abs().max().item(),
    )


def check_pytree_grad(key: torch.Tensor) -> float:
    """grad of a dict-of-tensors loss is a dict: d/dw |xw + b|^2 / n = 2 x^T r / n, etc."""
    k_w, k_x = random.split(key)
    params = {"w": random.normal(k_w, (3,), dtype=torch.float64), "b": torch.tensor(0.5)}
    x = random.normal(k_x, (16, 3), dtype=torch.float64)

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return (x @ p["w"] + p["b"]).square().mean()

    grads = fg.grad(loss)(params)
    r = x @ params["w"] + params["b"]
    exact = {"w": 2 * x.T @ r / len(x), "b": 2 * r.mean()}
    tqdm.write(f"\ngrad of a loss of {{'w', 'b'}}: {grads}")
    return max((grads[k] - exact[k]).abs().max().item() for k in exact)


def plot(path: Path, xs: torch.Tensor) -> None:
    ys = sin_derivatives(xs)
    labels = ["sin x", "grad(sin)", "grad(grad(sin))", "grad(grad(grad(sin)))"]
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    for y, label in zip(ys, labels):
        ax.plot(xs, y, label=label)
    ax.set(xlabel="x", title="sin and its derivatives, computed by funcgrad")
    fig.legend(loc="outside lower center", ncols=4)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--points",
        type=int,
        default=2001,
        help="grid points for the sine checks (default: %(default)s)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-8,
        help="largest error accepted (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random points (default: %(default)s)"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("runs/autograd_basics"),
        help="where the plot goes (default: %(default)s)",
    )
    parser.add_argument("--smoke", action="store_true", help="a coarser grid, for CI")
    opts = parser.parse_args()
    if opts.smoke:
        opts.points = 201
    opts.out_dir.mkdir(parents=True, exist_ok=True)

    torch.set_printoptions(precision=4, sci_mode=False)
    xs = torch.linspace(-2 * math.pi, 2 * math.pi, opts.points)
    k_x, k_v, k_u, k_tree = random.split(random.key(opts.seed), 4)
    x = random.uniform(k_x, (3,), dtype=torch.float64, minval=-1.0, maxval=1.0)
    checks: dict[str, Check] = {
        "sin derivatives": lambda: check_sin(xs),
        "jacfwd = jacrev": lambda: check_jacobians(x),
        "hessian": lambda: check_hessian(x[:2]),
        "jvp / vjp": lambda: check_jvp_vjp(
            x,
            random.normal(k_v, (3,), dtype=torch.float64),
            random.normal(k_u, (2,), dtype=torch.float64),
        ),
        "pytree grad": lambda: check_pytree_grad(k_tree),
    }
    errors: dict[str, float] = {}
    with tqdm(checks.items(), desc="checks", unit="check") as bar:
        for name, check in bar:
            errors[name] = check()
            bar.set_postfix(max_error=f"{max(errors.values()):.2e}")

    print()
    for name, error in errors.items():
        status = "ok" if error < opts.tolerance else "FAILED"
        print(f"{name:18s} max abs error {error:.2e}  {status}")
    path = opts.out_dir / "autograd_basics.png"
    plot(path, xs)
    print(f"plot: {path}")
    worst = max(errors.values())
    print(f"max error: {worst:.2e}")
    print(f"check: {'passed' if worst < opts.tolerance else 'FAILED'}")


if __name__ == "__main__":
    main()
