"""Linear regression with ``fg.grad`` and SGD: recover known weights from noisy data.

The first autograd example. The parameters are a plain dict of tensors, the loss is a pure
function of them, ``fg.value_and_grad`` differentiates it, and an SGD step is a tree map:
``params = params - lr * grads``. Data come from a known linear model plus noise, drawn with
``funcgrad.random`` keys, and mini-batches come from ``funcgrad.data.batches``. At the end the
script prints the recovered weights next to the true ones and checks they agree.

A step here costs microseconds, so this example does not ``fg.jit`` it (a compile would take
longer than the whole run); the other examples do.

    python examples/linear_regression.py            # ~5 s on 2 CPU cores, mostly imports
    python examples/linear_regression.py --smoke    # a quick check, for CI
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

import funcgrad as fg
from funcgrad import data, random

Params = dict[str, torch.Tensor]


def make_data(key: torch.Tensor, n: int, dim: int, noise: float) -> tuple[Params, Params]:
    """A known linear model ``y = x @ w + b + noise`` and ``n`` examples drawn from it."""
    k_w, k_b, k_x, k_noise = random.split(key, 4)
    true = {"w": random.normal(k_w, (dim,)), "b": random.normal(k_b, ())}
    x = random.normal(k_x, (n, dim))
    y = x @ true["w"] + true["b"] + noise * random.normal(k_noise, (n,))
    return true, {"x": x, "y": y}


def predict(params: Params, x: torch.Tensor) -> torch.Tensor:
    return x @ params["w"] + params["b"]


def loss_fn(params: Params, batch: Params) -> torch.Tensor:
    """Mean squared error of the linear model on a batch."""
    return (predict(params, batch["x"]) - batch["y"]).square().mean()


def plot(path: Path, losses: list[float], history: list[torch.Tensor], true: Params) -> None:
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_w = fig.subplots(1, 2)
    ax_loss.semilogy(losses)
    ax_loss.set(xlabel="step", ylabel="mini-batch MSE", title="training loss")
    traj = torch.stack(history)
    for i in range(traj.shape[1]):
        (line,) = ax_w.plot(traj[:, i], label=f"w[{i}]")
        ax_w.axhline(float(true["w"][i]), color=line.get_color(), linestyle="--", linewidth=0.8)
    ax_w.set(xlabel="step", ylabel="value", title="weights (dashed: true values)")
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--examples", type=int, default=4096, help="training examples (default: %(default)s)"
    )
    parser.add_argument("--dim", type=int, default=8, help="input features (default: %(default)s)")
    parser.add_argument(
        "--noise",
        type=float,
        default=0.1,
        help="standard deviation of the label noise (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs", type=int, default=10, help="passes over the data (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="examples per SGD step (default: %(default)s)"
    )
    parser.add_argument(
        "--lr", type=float, default=0.05, help="SGD learning rate (default: %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the data and the shuffling (default: %(default)s)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("runs/linear_regression"),
        help="where the plot goes (default: %(default)s)",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run (seconds), for CI")
    opts = parser.parse_args()
    if opts.smoke:
        opts.examples, opts.epochs = 512, 10
    opts.out_dir.mkdir(parents=True, exist_ok=True)

    key_data, key_shuffle = random.split(random.key(opts.seed))
    true, train = make_data(key_data, opts.examples, opts.dim, opts.noise)
    params = {"w": torch.zeros(opts.dim), "b": torch.zeros(())}
    loss_and_grad = fg.value_and_grad(loss_fn)

    initial_loss = loss_fn(params, train).item()
    losses: list[float] = []
    history = [params["w"]]
    start = time.perf_counter()
    steps = opts.epochs * len(data.batches(train, opts.batch_size))
    with tqdm(total=steps, desc="linear regression", unit="step") as bar:
        for _ in range(opts.epochs):
            key_shuffle, key_epoch = random.split(key_shuffle)
            for batch in data.batches(train, opts.batch_size, key=key_epoch):
                loss, grads = loss_and_grad(params, batch)
                params = fg.tree.map(lambda p, g: p - opts.lr * g, params, grads)
                losses.append(loss.item())
                history.append(params["w"])
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                bar.update()
    elapsed = time.perf_counter() - start

    final_loss = loss_fn(params, train).item()
    error = max(
        (params["w"] - true["w"]).abs().max().item(), (params["b"] - true["b"]).abs().item()
    )
    torch.set_printoptions(precision=3, sci_mode=False)
    print(f"true w:      {true['w']}   true b:      {true['b'].item():.3f}")
    print(f"recovered w: {params['w']}   recovered b: {params['b'].item():.3f}")
    print(f"trained {steps} steps in {elapsed:.1f} s")
    plot(opts.out_dir / "linear_regression.png", losses, history, true)
    print(f"plot: {opts.out_dir / 'linear_regression.png'}")
    # Least squares recovers the weights up to about noise / sqrt(examples) per coefficient.
    tolerance = 5 * opts.noise / opts.examples**0.5 + 0.01
    print(f"initial loss: {initial_loss:.4f}")
    print(f"final loss: {final_loss:.4f} (the noise variance is {opts.noise**2:.4f})")
    print(f"max weight error: {error:.4f} (tolerance {tolerance:.4f})")
    print(f"check: {'passed' if error < tolerance else 'FAILED'}")


if __name__ == "__main__":
    main()
