"""The workloads of ``benchmarks/train_step.py`` and the steps it times.

Each workload is one model three ways (an ``nn.Module``, the same model as a pure function of a
dict of parameters, and in JAX) with a fixed batch; each step is a zero-argument callable that
carries its own state: ``nn.Module`` + ``torch.optim.Adam`` (eager or compiled), funcgrad's
functional step (eager, under ``fg.jit`` or a plain ``torch.compile``), ``jax.jit`` + optax,
and a plain call for the per-example gradients. Not a benchmark itself: ``nox -s bench`` skips
``_*.py``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import funcgrad as fg

LR = 1e-3


class Step:
    """A zero-argument training step that carries its own state."""

    def __call__(self) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        """Waits for the work queued so far (CUDA streams, JAX's asynchronous dispatch)."""

    def result(self) -> dict[str, torch.Tensor]:
        """The current parameters, as CPU tensors named as in the ``nn.Module``."""
        raise NotImplementedError


def cuda_sync(device: torch.device) -> None:
    """Waits for the work queued on ``device`` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        cuda_sync(self.device)

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


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class FuncgradStep(Step):
    """funcgrad's functional step, eager, under ``fg.jit`` or under a plain torch.compile."""

    def __init__(
        self, w: Workload, how: str, *, mode: str | None = None, cpu_matmul: str | None = None
    ) -> None:
        step, opt = funcgrad_step_fn(w)
        # FUNCGRAD_CPU_MATMUL for the first call, which compiles (NOTE [CPU matmuls on oneDNN])
        self.compile_env = {} if cpu_matmul is None else {"FUNCGRAD_CPU_MATMUL": cpu_matmul}
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
        if self.compile_env:
            with _environ(self.compile_env):
                self.params, self.state, _ = self.fn(self.params, self.state, self.x, self.y)
            self.compile_env = {}
            return
        self.params, self.state, _ = self.fn(self.params, self.state, self.x, self.y)

    def sync(self) -> None:
        cuda_sync(self.device)

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
