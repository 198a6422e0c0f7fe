"""Train an existing ``torch.nn.Module`` (with BatchNorm) the functional way, then hand it back.

``fg.nn.functionalize(module)`` turns any module into ``apply(params, buffers, *inputs) ->
(outputs, new_buffers)`` plus two dicts of tensors, keyed by the module's own parameter and
buffer names. Training is then funcgrad as usual: ``fg.value_and_grad`` of a pure loss
(``has_aux=True`` carries BatchNorm's updated running statistics out), an ``fg.optim.adamw``
state, and an ``fg.jit``-compiled step that donates the parameters, buffers and optimizer state.
The module is never mutated while training: the running statistics travel as data.

At the end the trained parameters and buffers go back into the module with its own
``load_state_dict``, and the module's ordinary ``forward`` (in eval mode, with the running
statistics) gives the same outputs as the functional model: the module can be saved, exported
or served as if it had been trained with ``torch.optim``.

    python examples/from_torch_module.py            # ~40 s on 2 CPU cores, 30 s compiling
    python examples/from_torch_module.py --smoke    # a quick check, for CI
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

import funcgrad as fg
from funcgrad import data, nn, optim, random
from funcgrad.data import datasets

Tensors = dict[str, torch.Tensor]


class SmallCNN(torch.nn.Module):
    """An ordinary PyTorch model, written with no thought of funcgrad."""

    def __init__(self, channels: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, channels, 3, padding=1),
            torch.nn.BatchNorm2d(channels),
            torch.nn.ReLU(),
            torch.nn.Conv2d(channels, 2 * channels, 3, padding=1),
            torch.nn.BatchNorm2d(2 * channels),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
        )
        self.head = torch.nn.Linear(8 * channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def make_step(apply: Callable[..., Any], opt: optim.GradientTransformation) -> Any:
    def loss_fn(params: Tensors, buffers: Tensors, batch: Tensors) -> tuple[torch.Tensor, Any]:
        logits, new_buffers = apply(params, buffers, batch["image"])
        return nn.cross_entropy(logits, batch["label"]), new_buffers

    def step(
        params: Tensors, buffers: Tensors, opt_state: Any, batch: Tensors
    ) -> tuple[Tensors, Tensors, Any, torch.Tensor]:
        (loss, buffers), grads = fg.value_and_grad(loss_fn, has_aux=True)(params, buffers, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optim.apply_updates(params, updates), buffers, opt_state, loss

    return step


def plot(path: Path, losses: list[float], accs: list[float]) -> None:
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.semilogy(losses)
    ax_loss.set(xlabel="step", ylabel="training loss", title="training loss")
    ax_acc.plot(range(1, len(accs) + 1), accs, marker="o")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy (functional, eval)")
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=10, help="passes over the training set (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="examples per step (default: %(default)s)"
    )
    parser.add_argument(
        "--lr", type=float, default=3e-3, help="AdamW learning rate (default: %(default)s)"
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=32,
        help="channels of the first convolution (default: %(default)s)",
    )
    parser.add_argument(
        "--backend",
        choices=["inductor", "aot_eager", "eager"],
        default=None,
        help="torch.compile backend of fg.jit; eager: no fg.jit "
        "(default: inductor; eager with --smoke: compiling takes longer than a smoke run)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the module's initialisation and the shuffling (default: %(default)s)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("runs/from_torch_module"),
        help="where the plot goes (default: %(default)s)",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run (seconds), for CI")
    opts = parser.parse_args()
    if opts.smoke:
        opts.epochs = 2
    backend = opts.backend or ("eager" if opts.smoke else "inductor")
    opts.out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(opts.seed)  # the module initialises itself from torch's global RNG
    module = SmallCNN(opts.channels)
    apply, params, buffers = nn.functionalize(module)
    # functionalize's tensors share memory with the module's. Copy them: the jitted step
    # donates them (writes the new values into their memory), and the module is to be left as
    # it was until load_state_dict below.
    params, buffers = fg.tree.map(torch.clone, (params, buffers))
    train, test = datasets.digits()

    opt = optim.adamw(opts.lr, weight_decay=1e-4)
    opt_state = opt.init(params)
    step = make_step(apply, opt)
    if backend != "eager":
        step = fg.jit(step, donate_argnums=(0, 1, 2), backend=backend)

    def test_accuracy() -> float:
        module.eval()  # apply runs the module's code, in the module's mode
        logits, _ = apply(params, buffers, test["image"])
        module.train()
        return nn.accuracy(logits, test["label"]).item()

    module.train()
    losses: list[float] = []
    accs: list[float] = []
    key = random.key(opts.seed)
    steps_per_epoch = len(data.batches(train, opts.batch_size, drop_last=True))
    start = time.perf_counter()
    with tqdm(total=opts.epochs * steps_per_epoch, desc="functional training", unit="step") as bar:
        for _ in range(opts.epochs):
            key, key_epoch = random.split(key)
            for batch in data.batches(train, opts.batch_size, key=key_epoch, drop_last=True):
                params, buffers, opt_state, loss = step(params, buffers, opt_state, batch)
                if not losses:
                    compile_s = time.perf_counter() - start
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                bar.update()
            accs.append(test_accuracy())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", test_acc=f"{accs[-1]:.3f}")
    elapsed = time.perf_counter() - start
    per_step = (elapsed - compile_s) / max(len(losses) - 1, 1)

    # Back into the module: its own forward, in eval mode, against the functional model.
    module.eval()
    with torch.no_grad():
        before = module(test["image"])  # still the initial weights: nothing touched the module
        module.load_state_dict({**params, **buffers})
        after = module(test["image"])
        functional, _ = apply(params, buffers, test["image"])
    difference = (after - functional).abs().max().item()
    changed = (before - after).abs().max().item()
    accuracy = nn.accuracy(after, test["label"]).item()

    path = opts.out_dir / "from_torch_module.png"
    plot(path, losses, accs)
    print(f"first step (compilation) {compile_s:.1f} s, then {per_step * 1e3:.2f} ms per step")
    print(f"trained {len(losses)} steps in {elapsed:.1f} s (backend: {backend})")
    print(f"running mean of the first BatchNorm: {module.features[1].running_mean[:4]} ...")
    print(f"module outputs changed by load_state_dict: max {changed:.3f}")
    print(f"module forward vs functional apply: max abs difference {difference:.2e}")
    print(f"plot: {path}")
    print(f"initial loss: {losses[0]:.4f}")
    print(f"final loss: {sum(losses[-steps_per_epoch:]) / steps_per_epoch:.4f} (last epoch)")
    print(f"final test accuracy: {accuracy:.4f} (the module's own forward)")
    print(f"check: {'passed' if difference < 1e-5 and changed > 0 else 'FAILED'}")


if __name__ == "__main__":
    main()
