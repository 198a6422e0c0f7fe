"""float32 CPU matrix products of jitted graphs on oneDNN (NOTE [CPU matmuls on oneDNN]).

# NOTE [CPU matmuls on oneDNN]
# On the CPU, torch runs a float32 ``mm``/``addmm`` through its BLAS (oneMKL in the x86 wheels),
# and torch.compile keeps those calls. oneMKL picks its code path by CPU vendor: on AMD CPUs it
# takes the AVX2 path even where AVX-512 is present, and a 256x784 @ 784x512 product took 1.05 ms
# on this project's AMD EPYC machines against 0.46 ms through oneDNN's inner-product primitive
# (``torch.ops.mkldnn._linear_pointwise``, the op inductor itself uses for frozen linear layers),
# which is 0.65x what XLA takes for the same product there. Inductor's own route to oneDNN
# applies only to constant weights (freezing), never to a train step, whose weights are inputs.
#
# So fg.jit adds an inductor post-grad pass (it runs on the forward and backward graphs after
# AOTAutograd) that replaces an eligible ``aten.mm``/``aten.addmm`` with ``funcgrad::onednn_mm``,
# a custom op whose CPU kernel calls that primitive with dense operands. Eligible: CPU, float32,
# 2-d, ``addmm`` with a 1-d bias and unit alpha/beta, at least 2**21 multiply-adds (oneDNN spends
# ~11 us per call before it computes: a 128x128 @ 128x128 product, 2**21, takes the same time
# both ways, 2x larger ones less on oneDNN), and a row-major left operand or all dimensions >= 64
# (a transposed left operand with a small dimension was slower). benchmarks/cpu_matmul.py
# measures the products of an MLP step and the threshold. Which product is used changes
# only the float32 summation order.
#
# Whether it pays depends on the CPU and the BLAS, so it is measured: the first inductor
# compilation in a process times both on a 256x512 @ 512x512 product (~10 ms) and enables the
# pass where oneDNN takes <= 0.8x BLAS's time. ``FUNCGRAD_CPU_MATMUL`` overrides the decision:
# ``auto`` (the default), ``onednn`` (always) or ``torch`` (never: torch's own products).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

__all__: list[str] = []

ENV_VAR = "FUNCGRAD_CPU_MATMUL"
_CHOICES = ("auto", "onednn", "torch")
_MIN_MACS = 1 << 21  # multiply-adds below which BLAS wins (oneDNN: ~11 us per call)
_MIN_DIM_TRANSPOSED = 64  # a column-major left operand needs every dimension this large
_THRESHOLD = 0.8  # oneDNN's time over BLAS's at which auto enables the pass

aten = torch.ops.aten

_lib = torch.library.Library("funcgrad", "FRAGMENT")  # type: ignore[no-untyped-call]
_lib.define("onednn_mm(Tensor a, Tensor b, Tensor? bias) -> Tensor")  # type: ignore[no-untyped-call]


def _onednn_mm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``a @ b (+ bias)`` through oneDNN's inner product: ``linear(a, b.T, bias)``."""
    # The operands may have any strides, but the bias must be contiguous: oneDNN reads a strided
    # or expanded (stride 0) bias as if it were contiguous (wrong values, NaN).
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise.default(a, b.t(), bias, "none", [], "")
    # The fake kernel promises a contiguous result (oneDNN's is, for dense operands).
    return out if out.is_contiguous() else out.contiguous()


def _onednn_mm_fake(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return a.new_empty((a.shape[0], b.shape[1]))


_lib.impl("onednn_mm", _onednn_mm, "CPU")  # type: ignore[no-untyped-call]
torch.library.register_fake("funcgrad::onednn_mm", _onednn_mm_fake, lib=_lib)


def _hint(s: Any) -> int | None:
    """A size as an int: itself, or a symbolic size's example value (decides speed only)."""
    if isinstance(s, int):
        return s
    if isinstance(s, torch.SymInt):
        h = s.node.hint
        return h if isinstance(h, int) else None
    return None


def eligible(a: Any, b: Any, bias: Any = None) -> bool:
    """Whether ``mm(a, b)`` (``addmm(bias, a, b)``) goes to oneDNN; ``a``/``b`` are meta values."""
    for t in (a, b):
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return False
        if t.dtype != torch.float32 or t.dim() != 2:
            return False
    dims = [_hint(a.shape[0]), _hint(a.shape[1]), _hint(b.shape[1])]
    if any(d is None for d in dims):
        return False
    m, k, n = (d or 0 for d in dims)
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dtype != torch.float32:
            return False
        if bias.dim() != 1 or _hint(bias.shape[0]) != n or bias.device.type != "cpu":
            return False
    if m * k * n < _MIN_MACS:
        return False
    row_major = _hint(a.stride(1)) == 1 or k == 1
    return row_major or min(m, k, n) >= _MIN_DIM_TRANSPOSED


def rewrite(graph: torch.fx.Graph) -> int:
    """Replaces the eligible ``mm``/``addmm`` nodes of a post-grad graph; returns how many."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.mm.default and len(node.args) == 2 and not node.kwargs:
            a, b = node.args
            bias = None
        elif node.target is aten.addmm.default and len(node.args) == 3:
            if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                continue
            bias, a, b = node.args
        else:
            continue
        if not all(isinstance(x, torch.fx.Node) for x in (a, b)):
            continue
        if bias is not None and not isinstance(bias, torch.fx.Node):
            continue
        bias_val = None if bias is None else bias.meta.get("val")
        if bias is not None and bias_val is None:
            continue
        if not eligible(a.meta.get("val"), b.meta.get("val"), bias_val):
            continue
        with graph.inserting_before(node):
            new = graph.call_function(torch.ops.funcgrad.onednn_mm.default, (a, b, bias))
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
    return count


class OneDNNMatmulPass(CustomGraphPass):
    """The post-grad pass; chains a pass already set in inductor's config."""

    def __init__(self, then: Any = None) -> None:
        self.then = then

    def __call__(self, graph: torch.fx.Graph) -> None:
        rewrite(graph)
        if self.then is not None:
            self.then(graph)

    def uuid(self) -> Any:
        # Part of inductor's FX-graph cache key: a changed rewrite must not reuse cached code.
        then = None if self.then is None else self.then.uuid()
        return ("funcgrad.onednn_mm", 1, _MIN_MACS, _MIN_DIM_TRANSPOSED, then)


def choice() -> str:
    """``FUNCGRAD_CPU_MATMUL``'s value, checked."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(
            f"funcgrad.jit: the environment variable {ENV_VAR} must be one of "
            f"{', '.join(_CHOICES)}, got {os.environ[ENV_VAR]!r}. Unset it (or set 'auto') to let "
            "funcgrad measure which is faster, 'onednn' to always run float32 CPU matrix products "
            "on oneDNN, 'torch' to keep torch's own."
        )
    return value


_measured: bool | None = None


def _median_time(f: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def measure() -> bool:
    """Times BLAS and oneDNN on one product, once per process: is oneDNN <= 0.8x BLAS?"""
    global _measured
    if _measured is None:
        with torch.no_grad(), torch.utils._python_dispatch._disable_current_modes():
            gen = torch.Generator().manual_seed(0)
            a = torch.randn(256, 512, generator=gen)
            b = torch.randn(512, 512, generator=gen)

            def blas() -> torch.Tensor:
                return torch.mm(a, b)

            def onednn() -> torch.Tensor:
                return _onednn_mm(a, b, None)

            blas(), onednn()  # warm-up: oneDNN builds its primitive on first use
            t_blas = t_onednn = float("inf")
            for _ in range(3):  # interleaved; the best of three medians of each
                t_blas = min(t_blas, _median_time(blas, 5))
                t_onednn = min(t_onednn, _median_time(onednn, 5))
        _measured = t_onednn <= _THRESHOLD * t_blas
    return _measured


def available() -> bool:
    """Whether this torch build and its settings allow oneDNN's CPU products."""
    return bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)  # type: ignore[no-untyped-call]


def post_grad_pass() -> OneDNNMatmulPass | None:
    """The pass for a new inductor compilation, or None where it is off (see the NOTE)."""
    mode = choice()
    if mode == "torch" or not available():
        return None
    if mode == "auto" and not measure():
        return None
    from torch._inductor import config

    return OneDNNMatmulPass(then=config.post_grad_custom_post_pass)
