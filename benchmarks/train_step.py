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
target; "fg.jit donated / torch.compile(same step)" is what ``fg.jit`` itself costs.

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
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import gc
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from optim import _cpu_name, _minor_faults, keep_freed_memory  # benchmarks/optim.py
from torch import nn

import funcgrad as fg

LR = 1e-3
WORKLOADS = ("mlp", "cnn", "small-mlp", "per-example", "memory")
QUICK_WORKLOADS = ("small-mlp", "per-example", "memory")
REF = "torch eager: Module + Adam(foreach)"
JIT_DONATED = "fg.jit(step), donated params & state"
JIT_PLAIN = "fg.jit(step), no donation"
RAW = "torch.compile(same functional step), no fg.jit"
JIT_CUDA_GRAPHS = "fg.jit(step), donated, reduce-overhead"


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


class Step:
    """A zero-argument training step that carries its own state."""

    def __call__(self) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        """Waits for the work queued so far (CUDA streams, JAX's asynchronous dispatch)."""

    def result(self) -> dict[str, torch.Tensor]:
        """The current parameters, as CPU tensors named as in the ``nn.Module``."""
        raise NotImplementedError


def _cuda_sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
# Models: the nn.Module, the same model as a pure function, and in JAX
# --------------------------------------------------------------------------------------------


def mlp_module(sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (m, n) in enumerate(itertools.pairwise(sizes)):
        layers += [nn.Linear(m, n)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def mlp_apply(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``mlp_module`` as a pure function of its parameters (named as in the module)."""
    n = len(params) // 2
    for i in range(n):
        x = F.linear(x, params[f"{2 * i}.weight"], params[f"{2 * i}.bias"])
        if i < n - 1:
            x = F.relu(x)
    return x


def cnn_module(c1: int, c2: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 7 * 7, 10),
    )  # fmt: skip


def cnn_apply(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = F.max_pool2d(F.relu(F.conv2d(x, params["0.weight"], params["0.bias"], padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, params["3.weight"], params["3.bias"], padding=1)), 2)
    return F.linear(h.flatten(1), params["7.weight"], params["7.bias"])


def jax_apply(kind: str) -> Callable[[Any, Any], Any]:
    import jax
    import jax.numpy as jnp

    def mlp(params: Any, x: Any) -> Any:
        n = len(params) // 2
        for i in range(n):
            x = x @ params[f"{2 * i}.weight"].T + params[f"{2 * i}.bias"]
            if i < n - 1:
                x = jax.nn.relu(x)
        return x

    def conv_relu_pool(h: Any, w: Any, b: Any) -> Any:
        h = jax.lax.conv_general_dilated(
            h, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        h = jax.nn.relu(h + b[None, :, None, None])
        return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def cnn(params: Any, x: Any) -> Any:
        h = conv_relu_pool(x, params["0.weight"], params["0.bias"])
        h = conv_relu_pool(h, params["3.weight"], params["3.bias"])
        return h.reshape(h.shape[0], -1) @ params["7.weight"].T + params["7.bias"]

    return mlp if kind == "mlp" else cnn


class Workload:
    """A model (as a Module, a pure function and a JAX function), its batch and its name."""

    def __init__(self, name: str, label: str, kind: str, module: nn.Module, x_shape: tuple[int, ...],
                 classes: int, device: torch.device) -> None:  # fmt: skip
        self.name, self.label, self.kind = name, label, kind
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        self.module = module
        self.start = {k: v.detach().clone() for k, v in module.named_parameters()}
        self.x = torch.randn(x_shape, generator=g).to(device)
        self.y = torch.randint(0, classes, (x_shape[0],), generator=g).to(device)
        self.apply = mlp_apply if kind == "mlp" else cnn_apply
        self.device = device

    def loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> Any:
        return F.cross_entropy(self.apply(params, x), y)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.start.values())


def make_workload(name: str, quick: bool, device: torch.device) -> Workload:
    if name == "cnn":
        c1, c2, batch = (4, 8, 8) if quick else (16, 32, 64)
        label = f"CNN conv(1->{c1})-pool-conv({c1}->{c2})-pool-linear(->10), 28x28, batch {batch}"
        return Workload(name, label, "cnn", cnn_module(c1, c2), (batch, 1, 28, 28), 10, device)
    sizes, batch = {
        "mlp": ((784, 32, 32, 10), 16) if quick else ((784, 512, 512, 10), 256),
        "small-mlp": ((64, 128, 128, 10), 32),
        "memory": ((64, 128, 128, 10), 32) if quick else ((3584,) * 5, 64),
    }[name]
    label = f"MLP {'-'.join(map(str, sizes))}, batch {batch}"
    return Workload(name, label, "mlp", mlp_module(sizes), (batch, sizes[0]), sizes[-1], device)


# --------------------------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------------------------


class TorchStep(Step):
    """``nn.Module`` + ``torch.optim.Adam``: eager, or compiled as PyTorch's docs show."""

    def __init__(self, w: Workload, *, fused: bool, compile_model: bool = False,
                 compile_step: bool = False, mode: str | None = None) -> None:  # fmt: skip
        self.model = copy.deepcopy(w.module).to(w.device)
        self.opt = torch.optim.Adam(
            self.model.parameters(), LR, foreach=None if fused else True, fused=fused or None
        )
        self.x, self.y, self.device = w.x, w.y, w.device
        self.forward: Callable[..., Any] = self.model
        if compile_model:
            self.forward = torch.compile(self.model, mode=mode)
        self.opt_step: Callable[[], Any] = self.opt.step
        if compile_step:  # the recipe of PyTorch's "compiling the optimizer" tutorial

            @torch.compile(fullgraph=False, mode=mode)
            def opt_step() -> None:
                self.opt.step()

            self.opt_step = opt_step
        self.reduce_overhead = mode == "reduce-overhead"

    def __call__(self) -> None:
        if self.reduce_overhead:
            torch.compiler.cudagraph_mark_step_begin()
        loss = F.cross_entropy(self.forward(self.x), self.y)
        loss.backward()
        self.opt_step()
        self.opt.zero_grad()

    def sync(self) -> None:
        _cuda_sync(self.device)

    def result(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.named_parameters()}


def funcgrad_step_fn(w: Workload) -> tuple[Callable[..., Any], Any]:
    """The functional step ``(params, state, x, y) -> (params, state, loss)`` and its adam."""
    opt = fg.optim.adam(LR)
    loss = w.loss

    def step(params: Any, state: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
        value, grads = fg.value_and_grad(loss)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return fg.optim.apply_updates(params, updates), state, value

    return step, opt


class FuncgradStep(Step):
    """funcgrad's functional step, eager, under ``fg.jit`` or under a plain torch.compile."""

    def __init__(self, w: Workload, how: str, *, mode: str | None = None) -> None:
        step, opt = funcgrad_step_fn(w)
        self.params = {k: v.clone().to(w.device) for k, v in w.start.items()}
        self.state = opt.init(self.params)
        self.x, self.y, self.device = w.x, w.y, w.device
        if how == "eager":
            self.fn = step
        elif how == "jit":
            self.fn = fg.jit(step, mode=mode)
        elif how == "jit-donated":
            self.fn = fg.jit(step, donate_argnums=(0, 1), mode=mode)
        else:  # "torch.compile": the same step function, no fg.jit wrapper
            self.fn = torch.compile(step, fullgraph=True, mode=mode)
        self.reduce_overhead = mode == "reduce-overhead"

    def __call__(self) -> None:
        if self.reduce_overhead:
            torch.compiler.cudagraph_mark_step_begin()
        self.params, self.state, _ = self.fn(self.params, self.state, self.x, self.y)

    def sync(self) -> None:
        _cuda_sync(self.device)

    def result(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.params.items()}


class JaxStep(Step):
    """``jax.jit`` of ``value_and_grad`` + optax's adam, parameters and state donated."""

    def __init__(self, w: Workload) -> None:
        import jax
        import optax

        apply = jax_apply(w.kind)
        opt = optax.adam(LR)

        def loss(params: Any, x: Any, y: Any) -> Any:
            return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(params: Any, state: Any, x: Any, y: Any) -> Any:
            value, grads = jax.value_and_grad(loss)(params, x, y)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state, value

        self.jax = jax
        self.params = {k: jax.numpy.asarray(v.numpy()) for k, v in w.start.items()}
        self.state = opt.init(self.params)
        self.x = jax.numpy.asarray(w.x.cpu().numpy())
        self.y = jax.numpy.asarray(w.y.cpu().numpy())
        self.fn = step

    def __call__(self) -> None:
        self.params, self.state, _ = self.fn(self.params, self.state, self.x, self.y)

    def sync(self) -> None:
        self.jax.block_until_ready(self.params)

    def result(self) -> dict[str, torch.Tensor]:
        import numpy as np

        return {k: torch.from_numpy(np.array(v)) for k, v in self.params.items()}


def have_jax() -> bool:
    try:
        import jax  # noqa: F401
        import optax  # noqa: F401
    except ImportError:
        return False
    return True


def jax_device() -> str:
    import jax

    return jax.devices()[0].platform


# --------------------------------------------------------------------------------------------
# Train-step workloads
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
    tensor may differ by more than ``1e-6 + 1e-4 * |p|``, and none by more than ``2 * lr``; a
    real error (a wrong sign, scale, bias correction or a missing update) shows in every element.
    """
    if sorted(got) != sorted(ref):
        raise AssertionError(f"parameter names differ: {sorted(got)} vs {sorted(ref)}")
    for k, d in ref.items():
        a = got[k].to(torch.float64)
        if a.shape != d.shape or not bool(torch.isfinite(a).all()):
            raise AssertionError(f"{k}: shape {tuple(a.shape)} vs {tuple(d.shape)} or not finite")
        err = (a - d.to(torch.float64)).abs()
        bad = float((err > 1e-6 + 1e-4 * d.abs()).to(torch.float64).mean())
        if bad > 1e-3 or float(err.max()) > 2 * LR:
            raise AssertionError(
                f"{k}: {bad:.2%} of the elements differ beyond float32 tolerance, "
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
    against.append(("torch.compile(same step) (fg.jit's own cost)", RAW, None))
    rows = [(f"{w.name}: fg.jit donated / {label}", times[JIT_DONATED] / times[n], target)
            for label, n, target in against]  # fmt: skip
    if JIT_CUDA_GRAPHS in times:
        ratio = times[JIT_CUDA_GRAPHS] / times[best]
        rows.append((f"{w.name}: {JIT_CUDA_GRAPHS} / best torch.compile ({best})", ratio, 1.0))
    return rows


# --------------------------------------------------------------------------------------------
# Per-example gradients
# --------------------------------------------------------------------------------------------


class CallStep(Step):
    """Calls ``fn(*args)`` and keeps the result."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], sync: Callable[[Any], None],
                 to_torch: Callable[[Any], dict[str, torch.Tensor]]) -> None:  # fmt: skip
        self.fn, self.args, self._sync, self._to_torch = fn, args, sync, to_torch
        self.out: Any = None

    def __call__(self) -> None:
        self.out = self.fn(*self.args)

    def sync(self) -> None:
        self._sync(self.out)

    def result(self) -> dict[str, torch.Tensor]:
        return self._to_torch(self.out)


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
    sync = lambda _: _cuda_sync(device)  # noqa: E731
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
