"""One Adam step over a transformer-sized pytree: funcgrad.optim against torch.optim.

The model is a list of ~200 float32 tensors (~25M parameters): token and position embeddings,
16 transformer blocks (attention and MLP weight matrices, their biases, two layer norms) and a
final layer norm. Gradients are random and set once. Timed, interleaved round by round:

- eager: ``fg.optim.adam`` (``update`` + ``apply_updates``; the state and parameters carried
  from step to step; torch's fused kernel on buffers of its own, NOTE [fused Adam in eager
  mode]) against ``torch.optim.Adam(foreach=True)``, ``fused=True`` and the single-tensor loop
  (``foreach=False``, for context) ``step()``; and, for context, the same Adam composed from
  its building blocks (foreach ops, what runs for options the fused kernel lacks);
- compiled: ``fg.jit`` (inductor, default mode) of a function doing funcgrad's ``update`` +
  ``apply_updates``, with the parameters and optimizer state donated (the outputs are written
  into them, as torch.optim's in-place step does) and without donation, against
  ``torch.compile``'d ``opt.step()``. Compile time (the
  first call) is reported separately from the steady-state step time;
- the memory floor: a compiled step that reads and writes the same bytes as an Adam step (the
  parameters, the gradients and both moments read, the parameters and moments written in
  place) with a multiply-add for arithmetic. A fused step that takes about as long is bound by
  memory bandwidth: no implementation of the same update can be much faster there.

Targets (issue 4): eager funcgrad <= 1.15x torch foreach; compiled funcgrad <= 1.0x the best
torch variant. Before timing, one step of each variant is checked against torch.optim.Adam.

A functional step allocates fresh results (~100 MB each here) where torch.optim writes in
place. On Linux, glibc's malloc may return large freed blocks to the kernel, and then the next
step pays for them again in page faults (the "page faults / step" column shows whether it did);
``--keep-freed-memory`` sets ``mallopt`` so that freed memory is always reused (what
jemalloc/tcmalloc or a caching allocator would do), to separate that cost from the arithmetic.

``--jit-foreach`` makes the jitted steps trace ``torch._foreach_*`` ops instead of one op per
leaf (an experiment for CUDA, where the foreach lowering has not been measured against it).

Run: ``python benchmarks/optim.py`` (``--quick``: a small model and a few rounds, a smoke run).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch._inductor.config
from _common import cpu_name as _cpu_name

import funcgrad as fg
from funcgrad import optim

LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8
_FLOOR = "memory floor: torch.compile'd step with Adam's reads and writes, no Adam arithmetic"


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where getrusage is unavailable)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


_DEVICE = torch.device("cpu")


def _sync() -> None:
    """Waits for the device's queued work (CUDA runs asynchronously), so timers read real time."""
    if _DEVICE.type == "cuda":
        torch.cuda.synchronize(_DEVICE)


def _time_per_call(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    """Seconds and minor page faults per call over ``calls`` back-to-back calls."""
    _sync()
    faults = _minor_faults()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync()
    return (time.perf_counter() - start) / calls, (_minor_faults() - faults) / calls


def compare(
    candidates: dict[str, Callable[[], Any]], rounds: int, sample_s: float = 0.05
) -> dict[str, tuple[float, float]]:
    """Median seconds and page faults per call of each candidate, in interleaved rounds.

    As in overhead.py, each sample times enough back-to-back calls of one candidate to last
    about ``sample_s``, and the order of the candidates alternates from round to round.
    """
    calls = {}
    for name, fn in candidates.items():  # warm up (allocator, caches), calibrate
        for _ in range(3):
            fn()
        calls[name] = max(1, round(sample_s / _time_per_call(fn, 2)[0]))
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            samples[name].append(_time_per_call(candidates[name], calls[name]))
    return {
        name: (statistics.median(t for t, _ in s), statistics.median(f for _, f in s))
        for name, s in samples.items()
    }


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def transformer_params(d: int, layers: int, vocab: int, context: int) -> list[torch.Tensor]:
    """A transformer's parameter list: 12 tensors per block, embeddings, final norm."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g) * 0.02

    params = [randn(vocab, d), randn(context, d)]
    for _ in range(layers):
        params += [
            torch.ones(d), torch.zeros(d),  # layer norm 1
            randn(d, 3 * d), torch.zeros(3 * d),  # qkv projection
            randn(d, d), torch.zeros(d),  # attention output
            torch.ones(d), torch.zeros(d),  # layer norm 2
            randn(d, 4 * d), torch.zeros(4 * d),  # MLP in
            randn(4 * d, d), torch.zeros(d),  # MLP out
        ]  # fmt: skip
    params += [torch.ones(d), torch.zeros(d)]
    return [p.to(_DEVICE) for p in params]


def random_grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(p.shape, generator=g).to(_DEVICE) for p in params]


# --------------------------------------------------------------------------------------------
# The candidates: each is a zero-argument step that carries its own state
# --------------------------------------------------------------------------------------------


class FuncgradStep:
    """funcgrad's functional step: ``params, state <- apply_updates(update(grads, state))``."""

    def __init__(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        mode: str = "eager",
        composed: bool = False,
    ):
        """``mode``: "eager", "jit" (``fg.jit``) or "jit-donate" (params and state donated).
        ``composed``: Adam as the chain of its building blocks (foreach ops), not the alias
        (which runs torch's fused kernel eagerly: NOTE [fused Adam in eager mode])."""
        self.opt = optim.adam(LR, B1, B2, EPS)
        if composed:
            self.opt = optim.chain(
                optim.scale_by_adam(B1, B2, EPS), optim.scale_by_learning_rate(LR)
            )
        self.params = [p.clone() for p in params]
        self.state = self.opt.init(self.params)
        self.grads = grads
        self.fn: Callable[..., Any] = self._step
        if mode == "jit":
            self.fn = fg.jit(self._step)
        elif mode == "jit-donate":
            self.fn = fg.jit(self._step, donate_argnums=(0, 1))

    def _step(self, params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = self.opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state

    def __call__(self) -> None:
        self.params, self.state = self.fn(self.params, self.state, self.grads)


class TorchStep:
    """torch.optim.Adam's in-place ``step()`` with gradients set once."""

    def __init__(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], compiled: bool, **kw: Any
    ):
        self.params = [torch.nn.Parameter(p.clone()) for p in params]
        for p, g in zip(self.params, grads):
            p.grad = g.clone()
        self.opt = torch.optim.Adam(self.params, LR, betas=(B1, B2), eps=EPS, **kw)
        self.fn = self.opt.step
        if compiled:  # the recipe of PyTorch's "compiling the optimizer" tutorial

            def step() -> None:
                self.opt.step()

            self.fn = torch.compile(step, backend="inductor")

    def __call__(self) -> None:
        self.fn()

    def current(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.params]


def _adam_traffic(
    params: list[torch.Tensor],
    mu: list[torch.Tensor],
    nu: list[torch.Tensor],
    grads: list[torch.Tensor],
) -> None:
    """Per leaf, reads the parameter, gradient and both moments and writes the parameter and
    both moments in place, as an Adam step does, with a multiply-add where Adam has its
    arithmetic (no square root, no division)."""
    for p, m, v, g in zip(params, mu, nu, grads):
        new_m = m * B1 + g
        new_v = v * B2 + g * g
        new_p = p - LR * new_m * new_v
        m.copy_(new_m)
        v.copy_(new_v)
        p.copy_(new_p)


class MemoryFloor:
    """``torch.compile`` of :func:`_adam_traffic` on copies of the model: what any Adam step
    costs at least on this device (the same bytes read and written, next to no arithmetic).
    When torch's fused step takes about as long, the step is bound by memory bandwidth and no
    implementation of the same update can be much faster. Not an Adam step: not checked."""

    def __init__(self, params: list[torch.Tensor], grads: list[torch.Tensor]):
        self.params = [p.clone() for p in params]
        self.mu = [torch.zeros_like(p) for p in params]
        self.nu = [torch.zeros_like(p) for p in params]
        self.grads = grads
        self.fn = torch.compile(_adam_traffic, backend="inductor")

    def __call__(self) -> None:
        self.fn(self.params, self.mu, self.nu, self.grads)


def first_call(step: Callable[[], Any]) -> float:
    """Seconds the first call of ``step`` takes (a compiled one compiles)."""
    _sync()
    t0 = time.perf_counter()
    step()
    _sync()
    return time.perf_counter() - t0


def check_one_step(
    steps: dict[str, Any], start: list[torch.Tensor], grads: list[torch.Tensor]
) -> dict[str, float]:
    """Runs one step of each candidate (compiling the compiled ones); checks it against a
    float64 Adam step; returns the seconds the first call took."""
    ref = TorchStep([p.double() for p in start], [g.double() for g in grads], False, foreach=True)
    ref()
    expected = [p.float() for p in ref.current()]
    first = {}
    for name, step in steps.items():
        first[name] = first_call(step)
        got = step.params if isinstance(step, FuncgradStep) else step.current()
        fg.testing.assert_trees_allclose(list(got), expected, rtol=1e-5, atol=1e-6)
    return first


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def keep_freed_memory() -> bool:
    """Asks glibc never to return freed memory to the kernel (no mmap, no trimming)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    max_threshold = 2**30  # mmap threshold is capped at 32 MB on 64-bit glibc: use the trim
    return bool(
        libc.mallopt(m_trim_threshold, max_threshold) and libc.mallopt(m_mmap_threshold, 32 * 2**20)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds")
    parser.add_argument("--quick", action="store_true", help="small model, few rounds (smoke)")
    parser.add_argument("--no-compile", action="store_true", help="eager variants only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda when available)",
    )
    parser.add_argument(
        "--keep-freed-memory", action="store_true", help="glibc: reuse freed memory (mallopt)"
    )
    parser.add_argument(
        "--jit-foreach",
        action="store_true",
        help="experiment: jitted steps trace torch._foreach_* ops instead of per-leaf ops",
    )
    parser.add_argument(
        "--warm-cache", action="store_true", help="reuse inductor's on-disk caches (default: cold)"
    )
    opts = parser.parse_args()
    cache_dir = None
    if not opts.warm_cache:  # compile times are cold compiles: a fresh cache, no FX graph cache
        cache_dir = tempfile.mkdtemp(prefix="funcgrad-bench-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        torch._inductor.config.fx_graph_cache = False
    try:
        run(opts)
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)


def run(opts: argparse.Namespace) -> None:
    """Builds the model and the candidates, times them and prints the tables."""
    global _DEVICE
    _DEVICE = torch.device(opts.device)
    malloc = "default malloc"
    if opts.jit_foreach:
        # Under torch.compile funcgrad's optimizers trace one op per leaf (inductor fuses them;
        # on the CPU that beat the foreach lowering, 17.6 vs 31.0 ms). On CUDA the foreach
        # lowering (combo kernels) is unmeasured: this swaps the choice for the whole run.
        from funcgrad import _api_util
        from funcgrad.optim import _foreach

        _foreach.fast = lambda: not _api_util.in_transform()  # type: ignore[method-assign]
        malloc += ", jitted steps traced with foreach ops"
    if opts.keep_freed_memory:
        malloc = "mallopt: freed memory kept" if keep_freed_memory() else "mallopt unavailable"
    if opts.threads:
        torch.set_num_threads(opts.threads)
    rounds = 3 if opts.quick else opts.rounds
    d, layers, vocab, context = (64, 4, 256, 64) if opts.quick else (352, 16, 2048, 512)
    start = transformer_params(d, layers, vocab, context)
    grads = random_grads(start)
    n_params = sum(p.numel() for p in start)

    eager: dict[str, Any] = {
        "funcgrad adam (update + apply_updates)": FuncgradStep(start, grads),
        "torch Adam(foreach=True).step()": TorchStep(start, grads, False, foreach=True),
        "torch Adam(fused=True).step()": TorchStep(start, grads, False, fused=True),
        "torch Adam(foreach=False).step() (context)": TorchStep(start, grads, False, foreach=False),
        "funcgrad chain(scale_by_adam, scale_by_learning_rate), foreach ops (context)": (
            FuncgradStep(start, grads, composed=True)
        ),
    }
    compiled: dict[str, Any] = {}
    if not opts.no_compile:
        compiled = {
            "fg.jit(update + apply_updates), donated": FuncgradStep(start, grads, "jit-donate"),
            "fg.jit(update + apply_updates), not donated": FuncgradStep(start, grads, "jit"),
            "torch.compile(Adam(foreach=True).step())": TorchStep(start, grads, True, foreach=True),
        }
    floor: dict[str, Any] = {}
    if not opts.no_compile:
        floor = {_FLOOR: MemoryFloor(start, grads)}
    first = check_one_step({**eager, **compiled}, start, grads)
    for name, step in floor.items():  # compiled, timed, not an Adam step: not checked
        first[name] = first_call(step)
    timings = compare({**eager, **compiled, **floor}, rounds)
    med = {name: t for name, (t, _) in timings.items()}

    where = _cpu_name()
    if _DEVICE.type == "cuda":
        where = f"{torch.cuda.get_device_name(_DEVICE)} (host: {where})"
    print(
        f"# funcgrad.optim.adam vs torch.optim.Adam — {datetime.date.today()}, {where}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, torch threads "
        f"{torch.get_num_threads()}, {malloc}, {rounds} rounds, median per step, "
        f"{'warm' if opts.warm_cache else 'cold'} inductor cache"
    )
    print(
        f"# model: {len(start)} float32 tensors, {n_params / 1e6:.1f}M parameters "
        f"(d={d}, {layers} blocks); gradients set once"
    )
    print()
    print("| variant | step (ms) | page faults / step | first call, incl. compile (s) |")
    print("|---|---:|---:|---:|")
    for name, (seconds, faults) in timings.items():
        print(f"| {name} | {seconds * 1e3:.2f} | {faults:.0f} | {first[name]:.2f} |")
    print()
    print("| comparison | ratio | target |")
    print("|---|---:|---:|")
    names = list(eager)
    fg_eager, foreach, fused = (med[n] for n in names[:3])
    rows = [
        ("eager funcgrad / torch foreach", fg_eager / foreach, 1.15),
        ("eager funcgrad / torch fused", fg_eager / fused, None),
    ]
    if compiled:
        fg_jit, fg_jit_plain, torch_jit = (med[n] for n in compiled)
        best_name, best = min(
            [("foreach", foreach), ("fused", fused), ("compiled step", torch_jit)],
            key=lambda kv: kv[1],
        )
        rows.append((f"jitted funcgrad, donated / best torch ({best_name})", fg_jit / best, 1.0))
        rows.append(("jitted funcgrad, donated / compiled torch step", fg_jit / torch_jit, None))
        rows.append(("jitted funcgrad, not donated / best torch", fg_jit_plain / best, None))
        rows.append(("memory floor / torch fused", med[_FLOOR] / fused, None))
        rows.append(("jitted funcgrad, donated / memory floor", fg_jit / med[_FLOOR], None))
    for label, ratio, target in rows:
        flag = "" if target is None or ratio <= target else " (over)"
        target_text = f"<= {target:.2f}" if target is not None else "—"
        print(f"| {label} | {ratio:.3f}{flag} | {target_text} |")


if __name__ == "__main__":
    main()
