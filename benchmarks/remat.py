"""Rematerialisation: memory and time of ``fg.grad`` of a deep MLP with every layer checkpointed.

Model: 32 residual MLP blocks ``x + gelu(layer_norm(x) @ w1 + b1) @ w2 + b2`` (width 1024,
batch 512, float32, 268 MB of parameters), loss ``mean(x**2)``. Variants: plain ``fg.grad``;
``fg.grad`` with every block wrapped in ``fg.checkpoint``; the same two under ``fg.jit``
(inductor, the default backend).

Memory is measured in a fresh subprocess per variant, on the process itself:

- *held for backward*: on CPU, resident memory (``VmRSS``) after ``fg.vjp(loss, params, x)``
  returned (the forward pass done, its saved tensors alive in ``vjp_fn``) minus before. The
  child fixes glibc's mmap threshold at 128 KiB, so every tensor here (2 MB) is mapped on
  allocation and unmapped when freed, and RSS follows the live bytes (the default dynamic
  threshold keeps freed blocks in the heap, which would count dead activations). This is the activation memory
  that remat is about. On CUDA: ``torch.cuda.memory_allocated`` after minus before.
- *peak above held*: the high-water mark during one whole ``fg.grad`` call (CPU: ``VmHWM``
  after resetting it through ``/proc/self/clear_refs``; CUDA: ``max_memory_allocated``) minus
  the memory held before the call (parameters and inputs). It includes the gradients
  themselves (268 MB, the same for every variant), so its ratio understates the saving.

Why the whole peak does not fall (measured with a TorchDispatchMode counting live tensor bytes,
depth 8): ``torch.func.grad`` always differentiates with ``create_graph=True`` (so that it
nests), which retains the whole autograd graph until the backward ends and records the
backward's own operations: its peak equals ``torch.autograd.grad(..., create_graph=True)``'s
(252 MB of new tensors both) and is about twice ``create_graph=False``'s (132 MB). The saved
activations that remat removes are a small part of that peak; it is torch.func's, not remat's.

Under ``fg.jit`` only the peak is measured (the jitted function returns gradients, not a
``vjp_fn``). Gradients of the checkpointed variants are checked against the plain ones before
anything is measured. Times are medians of ``--repeats`` calls after one warm-up call, in one
process, variants interleaved.

Run: ``python benchmarks/remat.py`` (``--quick``: 8 blocks, no jit; ``--no-jit``;
``--device cuda``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from _common import cpu_name

import funcgrad as fg
from funcgrad._remat import checkpoint  # fg.checkpoint once exported

VARIANTS = ("plain", "remat", "jit plain", "jit remat")


def block(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = F.layer_norm(x, x.shape[-1:])
    return x + F.gelu(h @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def make_loss(remat: bool) -> Any:
    step = checkpoint(block) if remat else block

    def loss(params: list[dict[str, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
        for p in params:
            x = step(p, x)
        return (x**2).mean()

    return loss


def setup(
    depth: int, width: int, batch: int, device: torch.device
) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    scale = width**-0.5 / 4

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device)

    params = [
        {"w1": rand(width, width), "b1": rand(width), "w2": rand(width, width), "b2": rand(width)}
        for _ in range(depth)
    ]
    return params, torch.randn(batch, width, generator=g).to(device)


def grad_fn(variant: str) -> Any:
    f = fg.grad(make_loss("remat" in variant))
    return fg.jit(f) if variant.startswith("jit") else f


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _used(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    return _status("VmRSS")


def _fixed_mmap_threshold() -> None:
    """Every allocation >= 128 KiB is mapped on malloc and unmapped on free, so that RSS tracks
    the live tensor bytes: with glibc's default *dynamic* threshold, freed 2 MB blocks raise the
    threshold and later ones stay in the heap after free, counted in RSS although dead."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD (setting it also turns off the dynamic one)


def memory_child(variant: str, opts: argparse.Namespace) -> None:
    device = torch.device(opts.device)
    if device.type == "cpu":
        _fixed_mmap_threshold()
    params, x = setup(opts.depth, opts.width, opts.batch, device)
    f = grad_fn(variant)
    f(params, x)  # warm-up (compilation under jit): one-time memory is not the step's
    result: dict[str, Any] = {}
    if not variant.startswith("jit"):
        warm = fg.vjp(make_loss(variant == "remat"), params, x)  # one-time initialisation
        del warm
        before = _used(device)
        _, vjp_fn = fg.vjp(make_loss(variant == "remat"), params, x)
        result["held_for_backward"] = _used(device) - before
        del vjp_fn
    held = _used(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
    grads = f(params, x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _status("VmHWM")
    result["peak_above_held"] = peak - held
    result["grad_bytes"] = sum(g.numel() * g.element_size() for g in fg.tree.leaves(grads))
    print(json.dumps(result))


def measure_memory(variants: list[str], opts: argparse.Namespace) -> dict[str, dict[str, int]]:
    out = {}
    for v in variants:
        cmd = [sys.executable, __file__, "--memory-child", v, "--device", opts.device]
        cmd += ["--depth", str(opts.depth), "--width", str(opts.width), "--batch", str(opts.batch)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"[memory] {v}: {out[v]}", file=sys.stderr)
    return out


def measure_time(variants: list[str], opts: argparse.Namespace) -> dict[str, float]:
    device = torch.device(opts.device)
    params, x = setup(opts.depth, opts.width, opts.batch, device)
    fns = {v: grad_fn(v) for v in variants}
    reference = fns["plain"](params, x)
    for v in variants:  # warm-up (and compilation), and the gradients must agree
        fg.testing.assert_trees_allclose(fns[v](params, x), reference, rtol=1e-4, atol=1e-6)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(opts.repeats):
        for v in variants if r % 2 == 0 else variants[::-1]:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fns[v](params, x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[v].append(time.perf_counter() - t0)
    return {v: statistics.median(ts) for v, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-jit", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory-child", default=None)
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.quick:
        opts.depth, opts.repeats, opts.no_jit = 8, 3, True
    if opts.memory_child:
        memory_child(opts.memory_child, opts)
        return
    variants = [v for v in VARIANTS if not (opts.no_jit and v.startswith("jit"))]
    mem = measure_memory(variants, opts)
    secs = measure_time(variants, opts)
    mb = 2.0**-20
    name = cpu_name() if opts.device == "cpu" else torch.cuda.get_device_name()
    print(
        f"\nfg.grad of {opts.depth} residual MLP blocks, width {opts.width}, batch {opts.batch}, "
        f"float32, on {name} (torch {torch.__version__})\n"
    )
    print(
        "| variant | activation memory held for backward (MB) | whole fg.grad call: peak "
        "above params and inputs (MB) | of which gradients (MB) | gradients equal | time (ms) |"
    )
    print("|---|---:|---:|---:|---|---:|")
    for v in variants:
        held = mem[v].get("held_for_backward")
        held_s = f"{held * mb:.0f}" if held is not None else "n/a"
        print(
            f"| {v} | {held_s} | {mem[v]['peak_above_held'] * mb:.0f} | "
            f"{mem[v]['grad_bytes'] * mb:.0f} | yes (checked) | {secs[v] * 1e3:.0f} |"
        )
    ratio = mem["plain"]["held_for_backward"] / max(mem["remat"]["held_for_backward"], 1)
    print(
        f"\nactivation memory held for backward, plain / remat: {ratio:.1f}x "
        f"(target >= 3x: {'met' if ratio >= 3 else 'over'}); "
        f"time remat / plain: {secs['remat'] / secs['plain']:.2f}x; gradients equal (checked).\n"
        "The whole peak does not fall: torch.func.grad differentiates with create_graph=True, "
        "which keeps the whole graph and records the backward (see the module docstring)."
    )


if __name__ == "__main__":
    main()
