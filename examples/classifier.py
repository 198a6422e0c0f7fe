"""Train an MLP classifier on scikit-learn's handwritten digits, the functional way.

Parameters are a plain dict of tensors, the loss is a pure function, ``fg.value_and_grad``
differentiates it, and the update is a tree map: no ``nn.Module`` state, no ``torch.optim``.

    python examples/classifier.py            # a few seconds on a CPU
    python examples/classifier.py --smoke    # one quick epoch, for CI
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import torch
from sklearn.datasets import load_digits

import funcgrad as fg

Params = dict[str, torch.Tensor]


def init_params(sizes: list[int], generator: torch.Generator) -> Params:
    """He-initialised weights and zero biases for an MLP with the given layer sizes."""
    params = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        params[f"w{i}"] = torch.randn(n_in, n_out, generator=generator) * math.sqrt(2.0 / n_in)
        params[f"b{i}"] = torch.zeros(n_out)
    return params


def predict(params: Params, x: torch.Tensor) -> torch.Tensor:
    n_layers = len(params) // 2
    for i in range(n_layers):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        if i < n_layers - 1:
            x = torch.relu(x)
    return x


def loss_fn(params: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = predict(params, x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    return loss, (logits.argmax(-1) == y).float().mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="one epoch, for a quick check")
    opts = parser.parse_args()
    epochs = 1 if opts.smoke else opts.epochs

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    gen = torch.Generator().manual_seed(opts.seed)
    order = torch.randperm(len(x), generator=gen)
    n_test = len(x) // 5
    test_idx, train_idx = order[:n_test], order[n_test:]

    params = init_params([64, opts.hidden, 10], gen)
    step_grad = fg.value_and_grad(loss_fn, has_aux=True)

    start = time.perf_counter()
    for epoch in range(epochs):
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for i in range(0, len(perm), opts.batch_size):
            batch = perm[i : i + opts.batch_size]
            (loss, _), grads = step_grad(params, x[batch], y[batch])
            params = fg.tree.map(lambda p, g: p - opts.lr * g, params, grads)
        test_loss, test_acc = loss_fn(params, x[test_idx], y[test_idx])
        print(
            f"epoch {epoch + 1:3d}  train loss {loss.item():.4f}  "
            f"test loss {test_loss.item():.4f}  test accuracy {test_acc.item():.4f}"
        )
    print(f"trained {epochs} epochs in {time.perf_counter() - start:.1f} s")
    print(f"final test accuracy: {test_acc.item():.4f}")


if __name__ == "__main__":
    main()
