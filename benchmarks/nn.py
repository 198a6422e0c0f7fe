"""Forward + backward of a small ResNet: functionalize + fg.grad, and fg.nn, against torch.

The model is a CIFAR-style ResNet (a 3x3 conv stem with BatchNorm, three stages of residual
blocks of two 3x3 convs with BatchNorm, strided 1x1 shortcuts, global average pooling, a linear
head) in training mode (BatchNorm uses and updates batch statistics), on a batch of 32x32
images; float32, eager. Timed side by side in one process, interleaved round by round (medians):

- torch: ``model.zero_grad(set_to_none=True)``, ``cross_entropy(model(x), y).backward()``;
- functionalize: ``apply, params, buffers = fg.nn.functionalize(model)`` and
  ``fg.grad(loss, has_aux=True)(params, buffers, x, y)`` (the new buffers carried);
- fg.nn: the same network written with ``fg.nn`` layers (weights copied from the torch model),
  ``fg.grad(loss, has_aux=True)(model, state, x, y)`` (the BatchNorm states carried);
- context: torch.func's own ``grad`` of ``torch.func.functional_call`` (what funcgrad builds on,
  without funcgrad; buffers copied inside, since BatchNorm writes them in place), and
  ``torch.autograd.grad`` through ``functional_call`` (the reparametrisation alone, without a
  functorch transform).

Target (issue 5): functionalize and fg.nn each <= 1.10x torch. Before timing, the gradients of
every variant are checked against torch's.

Timings are wall-clock medians and bests (the least disturbed sample) and CPU-time medians
over interleaved rounds; on a shared machine, CPU time with ``--threads 1`` is the steadiest
measure. As in optim.py, ``--keep-freed-memory`` asks glibc to keep freed memory: functorch's
transforms allocate differently from plain autograd, and glibc returning large blocks to the
kernel makes the next step pay page faults (the "page faults" column shows whether it did).

Run: ``python benchmarks/nn.py`` (``--quick``: a narrow model and a few rounds, a smoke run).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.func
import torch.nn.functional as F
from _common import cpu_name as _cpu_name

import funcgrad as fg
from funcgrad import nn, random


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where getrusage is unavailable)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time_per_call(fn: Callable[[], Any], calls: int) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (this process, all threads) and page faults per call."""
    faults = _minor_faults()
    cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    wall = time.perf_counter() - start
    return wall / calls, (time.process_time() - cpu) / calls, (_minor_faults() - faults) / calls


Timing = tuple[float, float, float, float]  # wall median, wall best, CPU median, faults median


def compare(
    candidates: dict[str, Callable[[], Any]], rounds: int, sample_s: float = 0.2
) -> dict[str, Timing]:
    """Wall time (median and best), CPU time (median) and page faults per call of each
    candidate, in interleaved rounds.

    As in optim.py: the order of the candidates alternates from round to round and each sample
    times enough back-to-back calls to last about ``sample_s``. On a shared machine the best
    sample and the CPU time are the least disturbed by other processes (CPU time counts only
    this process's work; with one torch thread it is the step's cost without waiting).
    """
    calls = {}
    for name, fn in candidates.items():  # warm up (allocator, caches), calibrate
        for _ in range(3):
            fn()
        calls[name] = max(1, round(sample_s / _time_per_call(fn, 2)[0]))
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name].append(_time_per_call(candidates[name], calls[name]))
    return {
        name: (
            statistics.median(w for w, _, _ in s),
            min(w for w, _, _ in s),
            statistics.median(c for _, c, _ in s),
            statistics.median(f for _, _, f in s),
        )
        for name, s in samples.items()
    }


def keep_freed_memory() -> bool:
    """Asks glibc never to return freed memory to the kernel (as optim.py does)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(
        libc.mallopt(m_trim_threshold, 2**30) and libc.mallopt(m_mmap_threshold, 32 * 2**20)
    )


# --------------------------------------------------------------------------------------------
# The model, in torch.nn and in fg.nn (same attribute names, so weights map over by name)
# --------------------------------------------------------------------------------------------


class TorchBlock(torch.nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.shortcut: torch.nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class TorchResNet(torch.nn.Module):
    def __init__(self, width: int, blocks: int, classes: int = 10) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(width)
        layers: list[torch.nn.Module] = []
        cin = width
        for stage, cout in enumerate([width, 2 * width, 4 * width]):
            for b in range(blocks):
                layers.append(TorchBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.layers = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(F.relu(self.bn(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


@fg.tree.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Block(nn.Module):
    conv1: nn.Conv2d
    bn1: nn.BatchNorm
    conv2: nn.Conv2d
    bn2: nn.BatchNorm
    shortcut: nn.Sequential | None

    def __call__(self, x: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        out, s1 = self.bn1(self.conv1(x), state["bn1"], train=True)
        out, s2 = self.bn2(self.conv2(nn.relu(out)), state["bn2"], train=True)
        new = {"bn1": s1, "bn2": s2, "shortcut": None}
        if self.shortcut is not None:
            x, new["shortcut"] = self.shortcut(x, state["shortcut"], train=True)
        return nn.relu(out + x), new


@fg.tree.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ResNet(nn.Module):
    stem: nn.Conv2d
    bn: nn.BatchNorm
    layers: tuple[Block, ...]
    fc: nn.Linear

    def __call__(self, x: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        h, bn = self.bn(self.stem(x), state["bn"], train=True)
        h = nn.relu(h)
        blocks = []
        for block, s in zip(self.layers, state["layers"]):
            h, s = block(h, s)
            blocks.append(s)
        out = self.fc(nn.AdaptiveAvgPool2d(1)(h).flatten(1))
        return out, {"bn": bn, "layers": tuple(blocks)}

    def init_state(self) -> dict[str, Any]:
        def block_state(b: Block) -> dict[str, Any]:
            sc = None if b.shortcut is None else b.shortcut.init_state()
            return {"bn1": b.bn1.init_state(), "bn2": b.bn2.init_state(), "shortcut": sc}

        return {"bn": self.bn.init_state(), "layers": tuple(block_state(b) for b in self.layers)}


def fg_resnet(torch_model: TorchResNet, device: torch.device) -> ResNet:
    """The fg.nn ResNet with the torch model's weights (built from a key, then replaced)."""
    keys = iter(random.split(random.key(0), 64))

    def conv(m: torch.nn.Conv2d) -> nn.Conv2d:
        layer = nn.Conv2d(
            m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,  # type: ignore[arg-type]
            bias=False, key=next(keys), device=device,
        )  # fmt: skip
        return layer.replace(weight=m.weight.detach().clone())

    def bn(m: torch.nn.BatchNorm2d) -> nn.BatchNorm:
        layer = nn.BatchNorm(m.num_features, device=device)
        return layer.replace(weight=m.weight.detach().clone(), bias=m.bias.detach().clone())

    blocks = []
    for b in torch_model.layers:
        assert isinstance(b, TorchBlock)
        sc = None
        if b.shortcut is not None:
            sc = nn.Sequential(conv(b.shortcut[0]), bn(b.shortcut[1]))  # type: ignore[index, arg-type]
        blocks.append(Block(conv(b.conv1), bn(b.bn1), conv(b.conv2), bn(b.bn2), sc))
    fc = nn.Linear(torch_model.fc.in_features, torch_model.fc.out_features, key=next(keys))
    fc = fc.replace(
        weight=torch_model.fc.weight.detach().clone(), bias=torch_model.fc.bias.detach().clone()
    )
    return ResNet(conv(torch_model.stem), bn(torch_model.bn), tuple(blocks), fc)


def fg_named_grads(grads: ResNet) -> dict[str, torch.Tensor]:
    """The fg.nn gradients under the torch model's parameter names."""
    out = {"stem.weight": grads.stem.weight, "fc.weight": grads.fc.weight, "fc.bias": grads.fc.bias}
    out["bn.weight"], out["bn.bias"] = grads.bn.weight, grads.bn.bias  # type: ignore[assignment]
    for i, b in enumerate(grads.layers):
        p = f"layers.{i}."
        out[p + "conv1.weight"], out[p + "conv2.weight"] = b.conv1.weight, b.conv2.weight
        for name in ("bn1", "bn2"):
            layer = getattr(b, name)
            out[p + name + ".weight"], out[p + name + ".bias"] = layer.weight, layer.bias
        if b.shortcut is not None:
            out[p + "shortcut.0.weight"] = b.shortcut[0].weight
            out[p + "shortcut.1.weight"] = b.shortcut[1].weight
            out[p + "shortcut.1.bias"] = b.shortcut[1].bias
    return out


# --------------------------------------------------------------------------------------------
# The candidates: zero-argument steps that carry their own buffers or state
# --------------------------------------------------------------------------------------------


class Steps:
    def __init__(self, model: TorchResNet, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.x, self.y = model.train(), x, y
        self.apply, self.params, self.buffers = nn.functionalize(model)
        self.fg_model = fg_resnet(model, x.device)
        self.fg_state = self.fg_model.init_state()
        self.last: dict[str, dict[str, torch.Tensor]] = {}

        def functional_loss(params: Any, buffers: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
            out, new_buffers = self.apply(params, buffers, x)
            return F.cross_entropy(out, y), new_buffers

        def fg_loss(model: ResNet, state: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
            out, new_state = model(x, state)
            return nn.cross_entropy(out, y), new_state

        def raw_loss(params: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # BatchNorm updates its buffers in place: inside a torch.func transform they must
            # be created inside the function (a captured tensor may not be mutated).
            buffers = {n: b.clone() for n, b in self.buffers.items()}
            out = torch.func.functional_call(model, (params, buffers), (x,))
            return F.cross_entropy(out, y)

        self.functional_grad = fg.grad(functional_loss, has_aux=True)
        self.fg_grad = fg.grad(fg_loss, has_aux=True)
        self.raw_grad = torch.func.grad(raw_loss)
        self.raw_loss = raw_loss

    def torch(self) -> None:
        self.model.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.last["torch"] = {n: p.grad for n, p in self.model.named_parameters()}  # type: ignore[misc]

    def functionalize(self) -> None:
        grads, self.buffers = self.functional_grad(self.params, self.buffers, self.x, self.y)
        self.last["functionalize"] = grads

    def fg_nn(self) -> None:
        grads, self.fg_state = self.fg_grad(self.fg_model, self.fg_state, self.x, self.y)
        self.last["fg.nn"] = fg_named_grads(grads)

    def torch_func(self) -> None:
        self.last["torch.func"] = self.raw_grad(self.params, self.x, self.y)

    def functional_call_autograd(self) -> None:
        params = {n: p.detach().requires_grad_() for n, p in self.params.items()}
        grads = torch.autograd.grad(self.raw_loss(params, self.x, self.y), list(params.values()))
        self.last["functional_call"] = dict(zip(params, grads))


def check_gradients(steps: Steps, candidates: dict[str, Callable[[], None]]) -> None:
    """One call of each candidate from the same starting buffers; gradients equal torch's."""
    saved = {n: b.clone() for n, b in steps.model.named_buffers()}
    for fn in candidates.values():
        with torch.no_grad():
            for n, b in steps.model.named_buffers():
                b.copy_(saved[n])
        steps.buffers = {n: b.clone() for n, b in saved.items()}
        steps.fg_state = steps.fg_model.init_state()
        fn()
    expected = steps.last["torch"]
    for grads in steps.last.values():
        fg.testing.assert_trees_allclose(
            {k: grads[k] for k in expected}, expected, rtol=2e-4, atol=2e-5
        )


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds")
    parser.add_argument("--quick", action="store_true", help="narrow model, few rounds (smoke)")
    parser.add_argument("--width", type=int, default=32, help="channels of the first stage")
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks per stage")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--keep-freed-memory", action="store_true", help="glibc: reuse freed memory (mallopt)"
    )
    opts = parser.parse_args()
    malloc = "default malloc"
    if opts.keep_freed_memory:
        malloc = "mallopt: freed memory kept" if keep_freed_memory() else "mallopt unavailable"
    if opts.threads:
        torch.set_num_threads(opts.threads)
    rounds, width, batch = (3, 8, 8) if opts.quick else (opts.rounds, opts.width, opts.batch)
    device = torch.device(opts.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TorchResNet(width, opts.blocks).to(device)
        x = torch.randn(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
    steps = Steps(model, x, y)
    candidates: dict[str, Callable[[], None]] = {
        "torch: loss.backward()": steps.torch,
        "funcgrad: functionalize + fg.grad": steps.functionalize,
        "funcgrad: fg.nn + fg.grad": steps.fg_nn,
        "torch.func.grad(functional_call) (context)": steps.torch_func,
        "autograd.grad(functional_call) (context)": steps.functional_call_autograd,
    }
    check_gradients(steps, candidates)

    def synced(fn: Callable[[], None]) -> Callable[[], None]:
        if device.type != "cuda":
            return fn

        def run() -> None:
            fn()
            torch.cuda.synchronize(device)

        return run

    timings = compare({name: synced(fn) for name, fn in candidates.items()}, rounds)
    med = {name: t[0] for name, t in timings.items()}
    best = {name: t[1] for name, t in timings.items()}
    cpu = {name: t[2] for name, t in timings.items()}
    n_params = sum(p.numel() for p in model.parameters())
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{_cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(
        f"# ResNet forward + backward, training mode — {datetime.date.today()}, {where}, "
        f"torch {torch.__version__}, {malloc}, {rounds} rounds{load}"
    )
    print(
        f"# model: width {width}, {opts.blocks} block(s) per stage, {n_params / 1e3:.0f}K "
        f"parameters; batch {batch}x3x32x32 float32 on {device}"
    )
    print()
    print("| variant | wall, median (ms) | wall, best (ms) | CPU, median (ms) | page faults |")
    print("|---|---:|---:|---:|---:|")
    for name, (seconds, fastest, cpu_seconds, faults) in timings.items():
        print(
            f"| {name} | {seconds * 1e3:.2f} | {fastest * 1e3:.2f} | {cpu_seconds * 1e3:.2f} "
            f"| {faults:.0f} |"
        )
    print()
    print("| comparison (/ torch) | wall, medians | wall, bests | CPU, medians | target |")
    print("|---|---:|---:|---:|---:|")
    names = list(candidates)
    base = names[0]
    for name, target in [(names[1], 1.10), (names[2], 1.10), (names[3], None), (names[4], None)]:
        ratios = [t[name] / t[base] for t in (med, best, cpu)]
        flag = "" if target is None or ratios[0] <= target else " (over)"
        target_text = f"<= {target:.2f}" if target is not None else "—"
        print(
            f"| {name.split(' (')[0]} | {ratios[0]:.3f}{flag} | {ratios[1]:.3f} | "
            f"{ratios[2]:.3f} | {target_text} |"
        )


if __name__ == "__main__":
    main()
