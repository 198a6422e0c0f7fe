"""The variants of ``benchmarks/train_step.py``: built, checked against a reference, timed.

For each workload, the variants as factories of steps (``train_steps``, ``per_example_steps``),
the check of one step against the eager ``nn.Module`` + ``Adam(foreach)`` step, the interleaved
timing (``compare``) and the peak-memory measurement that runs in a subprocess per variant
(``memory_child``). Not a benchmark itself: ``nox -s bench`` skips ``_*.py``.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _train_step_models import (
    LR,
    CallStep,
    FuncgradStep,
    JaxStep,
    Step,
    TorchStep,
    Workload,
    cuda_sync,
    jax_apply,
    jax_device,
    make_workload,
    mlp_apply,
    mlp_module,
)
from optim import _minor_faults  # benchmarks/optim.py

import funcgrad as fg

REF = "torch eager: Module + Adam(foreach)"
JIT_DONATED = "fg.jit(step), donated params & state"
JIT_PLAIN = "fg.jit(step), no donation"
RAW = "torch.compile(same functional step), no fg.jit"
JIT_TORCH_MATMUL = "fg.jit(step), donated, torch's matmuls (FUNCGRAD_CPU_MATMUL=torch)"
JIT_CUDA_GRAPHS = "fg.jit(step), donated, reduce-overhead"


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _time_per_call(step: Step, calls: int) -> tuple[float, float]:
    """Seconds and minor page faults per call over ``calls`` back-to-back calls."""
    step.sync()
    faults = _minor_faults()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    step.sync()
    return (time.perf_counter() - start) / calls, (_minor_faults() - faults) / calls


def compare(
    steps: dict[str, Step], rounds: int, sample_s: float = 0.05
) -> dict[str, tuple[float, float]]:
    """Median seconds and page faults per call of each step, in interleaved rounds (as
    ``optim.compare``, with a synchronisation before every timer read)."""
    calls = {}
    for name, step in steps.items():  # warm up (allocator, caches), calibrate
        for _ in range(3):
            step()
        calls[name] = max(1, round(sample_s / _time_per_call(step, 2)[0]))
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name].append(_time_per_call(steps[name], calls[name]))
    return {
        name: (statistics.median(t for t, _ in s), statistics.median(f for _, f in s))
        for name, s in samples.items()
    }


# --------------------------------------------------------------------------------------------
# Train-step variants
# --------------------------------------------------------------------------------------------


def train_steps(w: Workload, use_jax: bool) -> dict[str, Callable[[], Step]]:
    """The variants, as factories (each compiles on its first call)."""
    cuda = w.device.type == "cuda"
    steps: dict[str, Callable[[], Step]] = {
        REF: lambda: TorchStep(w, fused=False),
        "torch eager: Module + Adam(fused)": lambda: TorchStep(w, fused=True),
        "torch.compile(model) + compiled Adam(foreach).step": lambda: TorchStep(
            w, fused=False, compile_model=True, compile_step=True
        ),
        "torch.compile(model) + Adam(fused).step": lambda: TorchStep(
            w, fused=True, compile_model=True
        ),
        "funcgrad eager: value_and_grad + adam": lambda: FuncgradStep(w, "eager"),
        JIT_DONATED: lambda: FuncgradStep(w, "jit-donated"),
        JIT_PLAIN: lambda: FuncgradStep(w, "jit"),
        RAW: lambda: FuncgradStep(w, "torch.compile"),
    }
    if not cuda:  # NOTE [CPU matmuls on oneDNN]: fg.jit without its oneDNN products
        steps[JIT_TORCH_MATMUL] = lambda: FuncgradStep(w, "jit-donated", cpu_matmul="torch")
    if cuda:
        steps["torch.compile(model) + compiled step, reduce-overhead"] = lambda: TorchStep(
            w, fused=False, compile_model=True, compile_step=True, mode="reduce-overhead"
        )
        steps[JIT_CUDA_GRAPHS] = lambda: FuncgradStep(w, "jit-donated", mode="reduce-overhead")
    if use_jax:
        steps[f"JAX jit(value_and_grad) + optax adam, donated ({jax_device()})"] = lambda: JaxStep(
            w
        )
    return steps


def check_adam_step(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """Asserts that one Adam step gave the reference's parameters, to float32 accuracy.

    Adam's first step moves each parameter by ``lr * g / (|g| + eps)``: where a gradient is
    within rounding error of zero (a few elements in a million here), float32 summation order
    alone changes that element's move by up to ``lr``. So at most 0.1% of the elements of a
    tensor (at least two: one such element in a 512-element bias is 0.2%) may differ by more
    than ``1e-6 + 1e-4 * |p|``, and none by more than ``2 * lr``; a real error (a wrong sign,
    scale, bias correction or a missing update) shows in every element.
    """
    if sorted(got) != sorted(ref):
        raise AssertionError(f"parameter names differ: {sorted(got)} vs {sorted(ref)}")
    for k, d in ref.items():
        a = got[k].to(torch.float64)
        if a.shape != d.shape or not bool(torch.isfinite(a).all()):
            raise AssertionError(f"{k}: shape {tuple(a.shape)} vs {tuple(d.shape)} or not finite")
        err = (a - d.to(torch.float64)).abs()
        n_bad = int((err > 1e-6 + 1e-4 * d.abs()).sum())
        if n_bad > max(2, 1e-3 * d.numel()) or float(err.max()) > 2 * LR:
            raise AssertionError(
                f"{k}: {n_bad} of {d.numel()} elements differ beyond float32 tolerance, "
                f"max abs error {float(err.max()):.3g} (lr {LR})"
            )


def build_and_check(
    factories: dict[str, Callable[[], Step]],
    reference: dict[str, torch.Tensor],
    check: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None],
) -> tuple[dict[str, Step], dict[str, Any]]:
    """Builds every step, runs it once (compiling) and checks its result against
    ``reference``; returns the steps and the seconds the first call took.

    A CUDA-graph variant (``reduce-overhead``) that fails to compile is left out with a note
    in its place (``first`` holds the error); every other failure, and any numerical
    mismatch, stops the run.
    """
    steps, first = {}, {}
    for name, make in factories.items():
        print(f"  {name}: compiling and checking one step", file=sys.stderr, flush=True)
        try:
            step = make()
            t0 = time.perf_counter()
            step()
            step.sync()
        except Exception as e:
            if "reduce-overhead" not in name:
                raise
            first[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
            print(f"  {name}: FAILED, left out ({first[name]})", file=sys.stderr, flush=True)
            continue
        first[name] = time.perf_counter() - t0
        try:
            check(step.result(), reference)
        except AssertionError as e:
            raise SystemExit(
                f"FAILED: one step of {name!r} differs from the reference:\n{e}"
            ) from None
        steps[name] = step
    return steps, first


# --------------------------------------------------------------------------------------------
# Per-example gradients
# --------------------------------------------------------------------------------------------


def per_example_steps(device: torch.device, use_jax: bool) -> dict[str, Callable[[], Step]]:
    sizes, n = (784, 128, 10), 64
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    params = {k: v.detach().to(device) for k, v in mlp_module(sizes).named_parameters()}
    x = torch.randn(n, sizes[0], generator=g).to(device)
    y = torch.randint(0, sizes[-1], (n,), generator=g).to(device)

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(mlp_apply(p, xi[None]), yi[None])

    def loop(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> Any:
        leaves = [v.requires_grad_() for v in p.values()]
        per = [torch.autograd.grad(loss(p, x[i], y[i]), leaves) for i in range(x.shape[0])]
        return {k: torch.stack(gs) for k, gs in zip(p, zip(*per))}

    loop_params = {k: v.clone() for k, v in params.items()}
    sync = lambda _: cuda_sync(device)  # noqa: E731
    cpu = lambda out: {k: v.detach().cpu() for k, v in out.items()}  # noqa: E731
    tfunc = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
    fgfunc = fg.vmap(fg.grad(loss), in_axes=(None, 0, 0))
    steps: dict[str, Callable[[], Step]] = {
        "Python loop of torch.autograd.grad": lambda: CallStep(
            loop, (loop_params, x, y), sync, cpu
        ),
        "torch.func.vmap(grad), eager": lambda: CallStep(tfunc, (params, x, y), sync, cpu),
        "fg.vmap(fg.grad), eager": lambda: CallStep(fgfunc, (params, x, y), sync, cpu),
        "torch.compile(torch.func.vmap(grad))": lambda: CallStep(
            torch.compile(tfunc, fullgraph=True), (params, x, y), sync, cpu
        ),
        "fg.jit(fg.vmap(fg.grad))": lambda: CallStep(fg.jit(fgfunc), (params, x, y), sync, cpu),
    }
    if use_jax:
        import jax
        import numpy as np
        import optax

        jparams = {k: jax.numpy.asarray(v.cpu().numpy()) for k, v in params.items()}
        jx, jy = jax.numpy.asarray(x.cpu().numpy()), jax.numpy.asarray(y.cpu().numpy())
        mlp = jax_apply("mlp")

        def jloss(p: Any, xi: Any, yi: Any) -> Any:
            return optax.softmax_cross_entropy_with_integer_labels(mlp(p, xi[None]), yi[None])[0]

        jfn = jax.jit(jax.vmap(jax.grad(jloss), in_axes=(None, 0, 0)))
        steps[f"jax.jit(jax.vmap(jax.grad)) ({jax_device()})"] = lambda: CallStep(
            jfn,
            (jparams, jx, jy),
            jax.block_until_ready,
            lambda out: {k: torch.from_numpy(np.array(v)) for k, v in out.items()},
        )
    return steps


# --------------------------------------------------------------------------------------------
# Peak memory (one subprocess per variant)
# --------------------------------------------------------------------------------------------

MEMORY_VARIANTS = {
    "torch Adam(foreach), in place": "torch-foreach",
    "torch Adam(fused), in place": "torch-fused",
    "funcgrad eager": "fg-eager",
    JIT_PLAIN: "fg-jit",
    JIT_DONATED: "fg-jit-donated",
    "JAX jit + optax, donated (context)": "jax",
}


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(variant: str, quick: bool, device: torch.device) -> None:
    """Runs in a subprocess: prints JSON with the memory held between steps and the peak of
    one step above it (bytes)."""
    cuda = device.type == "cuda"
    gc.collect()
    base = torch.cuda.memory_allocated(device) if cuda else _proc_status_bytes("VmRSS")
    w = make_workload("memory", quick, device)
    step: Step = {
        "torch-foreach": lambda: TorchStep(w, fused=False),
        "torch-fused": lambda: TorchStep(w, fused=True),
        "fg-eager": lambda: FuncgradStep(w, "eager"),
        "fg-jit": lambda: FuncgradStep(w, "jit"),
        "fg-jit-donated": lambda: FuncgradStep(w, "jit-donated"),
        "jax": lambda: JaxStep(w),
    }[variant]()
    w.module, w.start = None, {}  # type: ignore[assignment]  # only the step's copy stays
    for _ in range(3):  # compile, allocate the optimizer state, warm up
        step()
        step.sync()
    gc.collect()
    if cuda:
        held = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        step.sync()
        peak = torch.cuda.max_memory_allocated(device)
    else:
        held = _proc_status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        step()
        step.sync()
        peak = _proc_status_bytes("VmHWM")
    n_params = sum(p.numel() for p in step.result().values())
    print(json.dumps({"held": held - base, "peak_above": peak - held, "param_bytes": 4 * n_params}))
