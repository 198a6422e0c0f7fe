"""float32 CPU matrix products: torch's BLAS against oneDNN, the choice ``fg.jit`` makes.

``fg.jit`` (inductor backend) runs a float32 CPU ``mm``/``addmm`` with at least 2**21
multiply-adds on oneDNN where that is faster than torch's BLAS on the machine, and keeps BLAS for
a transposed left operand with a dimension below 64 (NOTE [CPU matmuls on oneDNN] in
``funcgrad/_cpu_matmul.py``). This script times both, in one process, on the products of an MLP
train step (forward ``x @ W.T``, backward ``g @ W`` and ``g.T @ x``) and on small products near
the threshold, and prints what ``fg.jit`` chooses for each; every product is checked against a
float64 one first.

- ``torch.mm`` (``addmm`` where a bias is added): torch's own product, what ``torch.compile``
  calls;
- ``funcgrad::onednn_mm``: the op ``fg.jit`` calls, oneDNN's inner product on the same dense
  operands (no copies).

Run: ``python benchmarks/cpu_matmul.py`` (``--quick``: few rounds). CPU only.
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

from funcgrad import _cpu_matmul

# (label, m, k, n, left operand row-major, bias): the MLP 784-512-512-10 at batch 256 and small
# products around the thresholds.
CASES = [
    ("mlp fwd x @ W1.T + b", 256, 784, 512, True, True),
    ("mlp fwd h @ W2.T + b", 256, 512, 512, True, True),
    ("mlp fwd h @ W3.T + b", 256, 512, 10, True, True),
    ("mlp bwd g @ W2", 256, 512, 512, True, False),
    ("mlp bwd g.T @ x (dW1)", 512, 256, 784, False, False),
    ("mlp bwd g.T @ h (dW3)", 10, 256, 512, False, False),
    ("small 32x64 @ 64x128", 32, 64, 128, True, False),
    ("small 64x128 @ 128x128", 64, 128, 128, True, False),
    ("threshold 128x128 @ 128x128 (2**21)", 128, 128, 128, True, False),
    ("128x256 @ 256x128", 128, 256, 128, True, False),
]


def operands(
    m: int, k: int, n: int, row_major: bool, bias: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g) if row_major else torch.randn(k, m, generator=g).t()
    b = torch.randn(n, k, generator=g).t()  # a weight's transpose, as in a linear layer
    return a, b, (torch.randn(n, generator=g) if bias else None)


def candidates(a: Any, b: Any, bias: Any) -> dict[str, Callable[[], Any]]:
    def blas() -> torch.Tensor:
        return torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)

    def onednn() -> torch.Tensor:
        return torch.ops.funcgrad.onednn_mm.default(a, b, bias)

    want = a.double() @ b.double() + (0 if bias is None else bias.double())
    for f in (blas, onednn):
        torch.testing.assert_close(f().double(), want, rtol=1e-4, atol=1e-3)
    return {"torch": blas, "onednn": onednn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds")
    parser.add_argument("--quick", action="store_true", help="few rounds (smoke run)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all)")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if not _cpu_matmul.available():
        print("this torch build has no oneDNN: nothing to compare")
        return
    rounds = 3 if opts.quick else opts.rounds
    enabled = _cpu_matmul.measure()
    print(
        f"# float32 CPU products, BLAS vs oneDNN — {datetime.date.today()}, {_cpu_name()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, torch threads "
        f"{torch.get_num_threads()}, {rounds} rounds, median µs per product"
    )
    print()
    print(f"fg.jit's measurement at the first compilation: oneDNN {'on' if enabled else 'off'}")
    print()
    print("| product | m x k x n | left operand | torch (µs) | oneDNN (µs) | oneDNN / torch "
          "| fg.jit uses |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---|")
    for label, m, k, n, row_major, bias in CASES:
        a, b, c = operands(m, k, n, row_major, bias)
        t = compare(candidates(a, b, c), rounds)
        chosen = "oneDNN" if enabled and _cpu_matmul.eligible(a, b, c) else "torch"
        layout = "row-major" if row_major else "transposed"
        print(
            f"| {label} | {m}x{k}x{n} | {layout} | {t['torch'] * 1e6:.1f} | "
            f"{t['onednn'] * 1e6:.1f} | {t['onednn'] / t['torch']:.3f} | {chosen} |"
        )


if __name__ == "__main__":
    main()
