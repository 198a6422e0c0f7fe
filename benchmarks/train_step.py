"""A whole training step, side by side: nn.Module + torch.optim, torch.compile, funcgrad, JAX.

One step is forward, backward and an Adam update (lr 1e-3, torch's and optax's defaults otherwise)
on a fixed batch, float32. Variants, all starting from the same weights:

- ``torch eager``: ``nn.Module`` + ``torch.optim.Adam(foreach=True)`` (the reference row of
  every ratio) and ``fused=True``; the loop is ``loss.backward(); opt.step();
  opt.zero_grad()``, so that between steps torch holds what funcgrad holds (parameters and
  optimizer state, no gradients);
- ``torch.compile``: ``torch.compile(model)`` (forward and backward) with the optimizer step
  compiled as PyTorch's "compiling the optimizer" tutorial does (``@torch.compile(fullgraph=False)
  def step(): opt.step()``), and with an eager fused step;
- ``funcgrad eager``: ``fg.value_and_grad`` of a pure loss (``torch.nn.functional``) +
  ``fg.optim.adam`` + ``fg.optim.apply_updates`` on a dict of parameters;
- ``fg.jit`` of that whole step, with ``donate_argnums=(0, 1)`` (parameters and optimizer
  state) and without donation (inductor, the default backend); for diagnosis, the same step
  function under a plain ``torch.compile(fullgraph=True)`` (what ``fg.jit`` adds is the rest);
- ``JAX``: ``jax.jit`` of ``jax.value_and_grad`` + optax's adam, parameters and state donated
  (when JAX is installed; on the CPU);
- on CUDA also ``mode="reduce-overhead"`` (CUDA graphs) for torch.compile and ``fg.jit``.

Workloads: ``mlp`` 784-512-512-10, batch 256; ``cnn`` conv(1->16, 3x3) relu maxpool conv(16->32)
relu maxpool linear(->10) on 28x28 inputs, batch 64; ``small-mlp`` 64-128-128-10, batch 32 (per-call
overhead decides); ``per-example``: per-example gradients of a 784-128-10 MLP over 64 examples,
``fg.jit(fg.vmap(fg.grad(loss), in_axes=(None, 0, 0)))`` against a Python loop of
``torch.autograd.grad``, ``torch.compile(torch.func.vmap(torch.func.grad(loss)))`` and
``jax.jit(jax.vmap(jax.grad(loss)))``; ``memory``: the peak memory of one step of a 51M-parameter
MLP (4 layers 3584x3584, batch 64) above the memory held between steps, each variant in a fresh
subprocess (CPU: reset the high-water mark through ``/proc/self/clear_refs``, run one step,
read ``VmHWM`` minus ``VmRSS`` before the step; CUDA: ``torch.cuda.max_memory_allocated``).

Before timing, one step of every variant is checked against the eager Module + Adam(foreach)
step (float32 tolerance, ``check_adam_step``; per-example gradients against the loop); a
mismatch stops the run. Times are medians over interleaved rounds
in one process (the order alternates from round to round), after warm-up, synchronising the
device (and JAX's asynchronous dispatch) before each timer read. Targets (issue 3), printed
with "met"/"over": jitted funcgrad step <= 1.0x JAX+optax and <= 0.9x eager Module+Adam on
``mlp`` and ``small-mlp`` (on CUDA: <= 1.0x the best torch.compile variant); per-example
``fg.jit`` <= 1.1x ``torch.compile``; with donation the step's peak above the held memory <=
that of ``Adam(fused=True)`` + 10% of the parameter bytes. Rows marked "(context)" have no
target.

Each table also gives minor page faults per call: where glibc returns a large freed block to
the kernel, the next call pays for it again in page faults, which can swing a variant's time
several-fold from one run to the next with no change in the code (per-example gradients write
a 26 MB result). ``--keep-freed-memory`` sets ``mallopt`` so that freed memory is always reused,
as in ``optim.py``. On a shared machine prefer ``--threads 1``: with all cores and other
processes running, OpenMP's thread barriers make torch's times swing far more than JAX's.

Run: ``python benchmarks/train_step.py`` (``--quick``: tiny sizes and few rounds on
``small-mlp,per-example,memory``, a smoke run of 2-3 minutes; ``--workloads mlp,cnn`` to choose;
``--device cuda``; on CUDA every variant computes in float32: TF32 off in cuDNN and in JAX,
which runs on the GPU too). Inductor's caches start empty for each run (a fresh directory, shared with
the memory subprocesses, so that a graph compiled twice in one run compiles once) unless
``--warm-cache``; the "first call" column includes compilation.

Layout: this script parses the options, runs the workloads and prints the tables and targets;
``_train_step_models.py`` holds the models and the steps, ``_train_step_variants.py`` the
variants of each workload, their check, the timing and the memory subprocess's measurement.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

import torch
from _train_step_models import Workload, have_jax, jax_device, make_workload
from _train_step_variants import (
    JIT_CUDA_GRAPHS,
    JIT_DONATED,
    JIT_TORCH_MATMUL,
    MEMORY_VARIANTS,
    RAW,
    REF,
    build_and_check,
    check_adam_step,
    compare,
    memory_child,
    per_example_steps,
    train_steps,
)
from optim import _cpu_name, keep_freed_memory  # benchmarks/optim.py

import funcgrad as fg

WORKLOADS = ("mlp", "cnn", "small-mlp", "per-example", "memory")
QUICK_WORKLOADS = ("small-mlp", "per-example", "memory")


# --------------------------------------------------------------------------------------------
# Train-step workloads
# --------------------------------------------------------------------------------------------


def run_train_step(w: Workload, rounds: int, use_jax: bool) -> dict[str, Any]:
    print(f"[{w.name}] {w.label}", file=sys.stderr, flush=True)
    torch._dynamo.reset()  # each workload starts as in a fresh process
    factories = train_steps(w, use_jax)
    ref = factories[REF]()
    ref()
    steps, first = build_and_check(factories, ref.result(), check_adam_step)
    del ref
    times = compare(steps, rounds)
    return {"workload": w, "times": times, "first": first}


def print_table(title: str, unit: str, base_label: str, res: dict[str, Any]) -> None:
    timings, first = res["times"], res["first"]
    base = timings[next(iter(timings))][0]
    print(f"### {title}")
    print()
    print(f"| variant | {unit} | ratio to {base_label} | page faults / call | first call (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, (t, faults) in timings.items():
        print(f"| {name} | {t * 1e3:.3f} | {t / base:.3f} | {faults:.0f} | {first[name]:.1f} |")
    print()


def train_step_targets(res: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    """(comparison, ratio, target or None) rows for one workload."""
    w, cuda, main = res["workload"], res["workload"].device.type == "cuda", None
    times = {name: t for name, (t, _) in res["times"].items()}
    compiled = [n for n in times if n.startswith("torch.compile(model)")]
    best = min(compiled, key=times.__getitem__)
    jax_rows = [n for n in times if n.startswith("JAX")]
    if w.name in ("mlp", "small-mlp"):
        main = 1.0 if cuda else 0.9
    against = [(f"best torch.compile ({best})", best, 1.0 if cuda else None)]
    if not cuda:
        against.insert(0, ("eager Module + Adam(foreach)", REF, main))
        against += [("JAX + optax", n, 1.0 if main else None) for n in jax_rows]
    against.append(("torch.compile(same step)", RAW, None))
    rows = [(f"{w.name}: fg.jit donated / {label}", times[JIT_DONATED] / times[n], target)
            for label, n, target in against]  # fmt: skip
    if JIT_TORCH_MATMUL in times:  # the same products as torch.compile: fg.jit's own cost
        rows.append((f"{w.name}: {JIT_TORCH_MATMUL} / torch.compile(same step) "
                     "(fg.jit's own cost)", times[JIT_TORCH_MATMUL] / times[RAW], None))  # fmt: skip
    if JIT_CUDA_GRAPHS in times:
        ratio = times[JIT_CUDA_GRAPHS] / times[best]
        rows.append((f"{w.name}: {JIT_CUDA_GRAPHS} / best torch.compile ({best})", ratio, 1.0))
    return rows


# --------------------------------------------------------------------------------------------
# Per-example gradients
# --------------------------------------------------------------------------------------------


def run_per_example(device: torch.device, rounds: int, use_jax: bool) -> dict[str, Any]:
    print("[per-example] per-example gradients, MLP 784-128-10, 64 examples", file=sys.stderr)
    torch._dynamo.reset()
    factories = per_example_steps(device, use_jax)
    ref = next(iter(factories.values()))()
    ref()
    check = functools.partial(fg.testing.assert_trees_allclose, rtol=1e-4, atol=1e-6)
    steps, first = build_and_check(factories, ref.result(), check)
    return {"times": compare(steps, rounds), "first": first}


def per_example_targets(res: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    times = {name: t for name, (t, _) in res["times"].items()}
    ratio = times["fg.jit(fg.vmap(fg.grad))"] / times["torch.compile(torch.func.vmap(grad))"]
    return [("per-example: fg.jit(vmap(grad)) / torch.compile(vmap(grad))", ratio, 1.1)]


# --------------------------------------------------------------------------------------------
# Peak memory (one subprocess per variant)
# --------------------------------------------------------------------------------------------


def run_memory(opts: argparse.Namespace, device: torch.device, use_jax: bool) -> dict[str, Any]:
    print("[memory] peak memory of one step, one subprocess per variant", file=sys.stderr)
    out = {}
    for label, variant in MEMORY_VARIANTS.items():
        if variant == "jax" and (not use_jax or device.type == "cuda"):
            continue
        cmd = [sys.executable, __file__, "--memory-child", variant, "--device", str(device)]
        cmd += ["--quick"] if opts.quick else []
        cmd += ["--threads", str(opts.threads)] if opts.threads else []
        print(f"  {label}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"FAILED: memory measurement of {label!r}:\n{proc.stderr}")
        out[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def print_memory(
    res: dict[str, Any], device: torch.device
) -> list[tuple[str, float, float | None]]:
    param_bytes = next(iter(res.values()))["param_bytes"]
    how = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "RSS (VmHWM - VmRSS)"
    mb = 2**20
    print(
        f"### memory: one step of an MLP with {param_bytes / 4e6:.1f}M parameters "
        f"({param_bytes / mb:.0f} MB), {how}, one subprocess per variant"
    )
    print()
    print(
        "Held: memory after warm-up steps minus memory before the model was built (parameters, "
        "optimizer state and, for compiled variants, the compiler's own memory)."
    )
    print()
    print(
        "| variant | held between steps (MB) | step peak above it (MB) | peak / parameter bytes |"
    )
    print("|---|---:|---:|---:|")
    for label, r in res.items():
        print(
            f"| {label} | {r['held'] / mb:.0f} | {r['peak_above'] / mb:.0f} | "
            f"{r['peak_above'] / param_bytes:.2f} |"
        )
    print()
    fused = res["torch Adam(fused), in place"]["peak_above"]
    donated = res[JIT_DONATED]["peak_above"]
    # As a ratio: (donated - fused) / parameter bytes <= 0.10
    return [
        (
            "memory: (fg.jit donated - Adam(fused)) peak / parameter bytes",
            (donated - fused) / param_bytes,
            0.1,
        )
    ]


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny sizes, few rounds (smoke; default workloads {','.join(QUICK_WORKLOADS)})",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads and CPU cores (default: all)"
    )
    parser.add_argument("--no-jax", action="store_true", help="leave out the JAX rows")
    parser.add_argument(
        "--workloads",
        default=None,
        help=f"comma-separated, from {','.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda when available)",
    )
    parser.add_argument(
        "--keep-freed-memory", action="store_true", help="glibc: reuse freed memory (mallopt)"
    )
    parser.add_argument(
        "--warm-cache", action="store_true", help="reuse inductor's on-disk caches (default: cold)"
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
        if hasattr(os, "sched_setaffinity"):  # binds JAX's thread pool too (XLA_FLAGS do not)
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: opts.threads])
    device = torch.device(opts.device)
    # JAX is imported lazily, after this: it runs on the same kind of device as torch.
    os.environ.setdefault("JAX_PLATFORMS", "cuda" if device.type == "cuda" else "cpu")
    if device.type == "cuda":
        # float32 arithmetic in every variant: TF32 off in cuDNN (torch's matmuls already keep
        # it off) and in JAX's matmuls and convolutions; JAX allocates on demand, as torch does.
        torch.backends.cudnn.allow_tf32 = False
        os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    torch._dynamo.config.recompile_limit = 64
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    if opts.memory_child:
        memory_child(opts.memory_child, opts.quick, device)
        return
    cache_dir = None
    if not opts.warm_cache:  # a fresh cache for this run, shared with its subprocesses
        cache_dir = tempfile.mkdtemp(prefix="funcgrad-bench-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    try:
        run(opts, device)
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)


def run(opts: argparse.Namespace, device: torch.device) -> None:
    """Runs the chosen workloads and prints the tables and the targets."""
    default = QUICK_WORKLOADS if opts.quick else WORKLOADS
    chosen = [s.strip() for s in (opts.workloads or ",".join(default)).split(",") if s.strip()]
    unknown = set(chosen) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}")
    malloc = "default malloc"
    if opts.keep_freed_memory:
        malloc = "mallopt: freed memory kept" if keep_freed_memory() else "mallopt unavailable"
    use_jax = not opts.no_jax and have_jax()
    rounds = 3 if opts.quick else opts.rounds
    start = time.perf_counter()
    results = [run_train_step(make_workload(n, opts.quick, device), rounds, use_jax)
               for n in chosen if n in ("mlp", "cnn", "small-mlp")]  # fmt: skip
    per_example = run_per_example(device, rounds, use_jax) if "per-example" in chosen else None
    memory = run_memory(opts, device, use_jax) if "memory" in chosen else None

    jax_text = f"JAX {_jax_version()} ({jax_device()})" if use_jax else "no JAX"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"## Train step — {datetime.date.today()}, {_cpu_name()}, {os.cpu_count()} cores, "
        f"{where}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"{jax_text}, Python {sys.version.split()[0]}, {malloc}, {rounds} rounds, median per "
        f"step, {'warm' if opts.warm_cache else 'cold'} inductor cache"
        f"{', QUICK (smoke sizes)' if opts.quick else ''}; run took "
        f"{time.perf_counter() - start:.0f} s"
    )
    print()
    targets: list[tuple[str, float, float | None]] = []
    for res in results:
        w = res["workload"]
        title = f"{w.name}: {w.label} ({w.n_params() / 1e6:.2f}M parameters)"
        print_table(title, "ms/step", "eager Module + Adam(foreach)", res)
        targets += train_step_targets(res)
    if per_example is not None:
        title = "per-example: gradients of a 784-128-10 MLP for each of 64 examples"
        print_table(title, "ms/call", "the Python loop", per_example)
        targets += per_example_targets(per_example)
    if memory is not None:
        targets += print_memory(memory, device)
    if targets:
        print("### targets")
        print()
        print("| comparison | measured | target | status |")
        print("|---|---:|---:|---|")
        for label, value, target in targets:
            if target is None:
                print(f"| {label} | {value:.3f} | — | (context) |")
            else:
                status = "met" if value <= target else "over"
                print(f"| {label} | {value:.3f} | <= {target:.2f} | {status} |")


def _jax_version() -> str:
    import jax

    return str(jax.__version__)


if __name__ == "__main__":
    main()
