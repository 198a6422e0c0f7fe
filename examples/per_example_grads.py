"""Per-example gradients with ``fg.vmap(fg.grad(...))``: DP-SGD-style clipping on the digits.

Differentially private SGD (Abadi et al., 2016, https://arxiv.org/abs/1607.00133) needs the
gradient of every example on its own: each is clipped to norm ``C``, the clipped gradients are
summed, Gaussian noise of scale ``sigma * C`` is added, and the sum is averaged over the batch.
PyTorch's autograd sums over the batch, so the usual way is a Python loop over the examples.
In funcgrad the per-example gradient is the gradient of a one-example loss, vectorised over the
batch: ``fg.vmap(fg.grad(example_loss), in_axes=(None, 0, 0))``. The whole private step
(per-example gradients, clipping, noising, the optimizer update) is one ``fg.jit``-compiled
function; the noise is drawn from ``funcgrad.random`` keys.

The script first times the per-example gradients of one batch computed with a Python loop and
with ``vmap`` (and checks they agree), then trains a small MLP privately and reports its test
accuracy. (It does not compute a privacy budget: that needs a privacy accountant.)

    python examples/per_example_grads.py            # ~35 s on 2 CPU cores, 20 s of it compiling
    python examples/per_example_grads.py --smoke    # a quick check, for CI
"""

from __future__ import annotations

import argparse
import statistics
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

Batch = dict[str, torch.Tensor]


def example_loss(model: nn.MLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss of one example: ``x`` of shape ``(64,)``, ``y`` a 0-d label."""
    return nn.cross_entropy(model(x), y)


#: Per-example losses and gradients of a batch: the model is shared, x and y are mapped.
per_example_grads = fg.vmap(fg.value_and_grad(example_loss), in_axes=(None, 0, 0))


def loop_grads(model: nn.MLP, x: torch.Tensor, y: torch.Tensor) -> Any:
    """The same per-example gradients, one ``fg.grad`` call per example."""
    grad = fg.grad(example_loss)
    return fg.tree.stack([grad(model, x[i], y[i]) for i in range(len(x))])


def private_grads(
    model: nn.MLP, batch: Batch, gaussian: torch.Tensor, clip: float, noise: float
) -> tuple[torch.Tensor, nn.MLP, torch.Tensor]:
    """Clipped, summed, noised and averaged per-example gradients (DP-SGD).

    ``gaussian`` holds one standard normal draw per parameter, flat.
    """
    losses, grads = per_example_grads(model, batch["x"], batch["y"])
    leaves, treedef = fg.tree.flatten(grads)
    norms = torch.stack([g.flatten(1).square().sum(1) for g in leaves]).sum(0).sqrt()
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)  # scale each example to norm <= clip
    sizes = [g[0].numel() for g in leaves]
    noisy = [
        (torch.tensordot(factor, g, dims=1) + noise * clip * z.view(g.shape[1:])) / len(factor)
        for g, z in zip(leaves, gaussian.split(sizes))
    ]
    return losses.mean(), fg.tree.unflatten(treedef, noisy), norms


def make_step(
    opt: optim.GradientTransformation, clip: float, noise: float
) -> Callable[..., tuple[nn.MLP, Any, torch.Tensor, torch.Tensor]]:
    def step(
        model: nn.MLP, opt_state: Any, batch: Batch, gaussian: torch.Tensor
    ) -> tuple[nn.MLP, Any, torch.Tensor, torch.Tensor]:
        loss, grads, norms = private_grads(model, batch, gaussian, clip, noise)
        updates, opt_state = opt.update(grads, opt_state, model)
        return optim.apply_updates(model, updates), opt_state, loss, norms

    return step


def time_it(fn: Callable[[], Any], repeats: int) -> float:
    """The median wall time of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_speedup(model: nn.MLP, batch: Batch, repeats: int) -> float:
    x, y = batch["x"], batch["y"]
    looped = loop_grads(model, x, y)
    _, vmapped = per_example_grads(model, x, y)
    fg.testing.assert_trees_allclose(vmapped, looped, rtol=1e-5, atol=1e-6)
    t_loop = time_it(lambda: loop_grads(model, x, y), repeats)
    t_vmap = time_it(lambda: per_example_grads(model, x, y), repeats)
    print(
        f"per-example gradients of {len(x)} examples: Python loop {t_loop * 1e3:.1f} ms, "
        f"vmap {t_vmap * 1e3:.2f} ms (they agree to 1e-5)"
    )
    return t_loop / t_vmap


def plot(
    path: Path, losses: list[float], accs: list[float], norms: dict[str, Any], clip: float
) -> None:
    fig = Figure(figsize=(12, 4), layout="constrained")
    ax_loss, ax_acc, ax_norm = fig.subplots(1, 3)
    ax_loss.plot(losses)
    ax_loss.set(xlabel="step", ylabel="mean per-example loss", title="training loss")
    ax_acc.plot(range(1, len(accs) + 1), accs, marker="o")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    bins = torch.logspace(-3, 2, 60).numpy()
    for label, values in norms.items():
        ax_norm.hist(values, bins=bins, alpha=0.6, label=label)
    ax_norm.set_xscale("log")
    ax_norm.axvline(clip, color="k", linestyle="--", label=f"clip norm {clip}")
    ax_norm.set(xlabel="per-example gradient norm", ylabel="examples", title="before clipping")
    ax_norm.legend()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=30, help="passes over the training set (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=128, help="examples per step (default: %(default)s)"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=0.2,
        help="SGD learning rate, with momentum 0.9 (default: %(default)s)",
    )
    parser.add_argument(
        "--hidden", type=int, default=128, help="hidden units of the MLP (default: %(default)s)"
    )
    parser.add_argument(
        "--clip",
        type=float,
        default=1.0,
        help="per-example gradient norm bound C (default: %(default)s)",
    )
    parser.add_argument(
        "--noise", type=float, default=1.0, help="noise multiplier sigma (default: %(default)s)"
    )
    parser.add_argument(
        "--timing-repeats",
        type=int,
        default=20,
        help="repetitions of the loop-vs-vmap timing (default: %(default)s)",
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
        help="seed of the model, the shuffling and the noise (default: %(default)s)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("runs/per_example_grads"),
        help="where the plot goes (default: %(default)s)",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run (seconds), for CI")
    opts = parser.parse_args()
    if opts.smoke:
        opts.epochs, opts.timing_repeats = 2, 3
    backend = opts.backend or ("eager" if opts.smoke else "inductor")
    opts.out_dir.mkdir(parents=True, exist_ok=True)

    train, test = datasets.digits()
    train = {"x": train["image"].flatten(1), "y": train["label"]}
    test = {"x": test["image"].flatten(1), "y": test["label"]}
    key_model, key_data, key_noise = random.split(random.key(opts.seed), 3)
    model = nn.MLP(64, [opts.hidden], 10, key=key_model)
    opt = optim.sgd(opts.lr, momentum=0.9)
    opt_state = opt.init(model)
    num_params = sum(p.numel() for p in fg.tree.leaves(model))

    first = next(iter(data.batches(train, opts.batch_size)))
    speedup = measure_speedup(model, first, opts.timing_repeats)

    step = make_step(opt, opts.clip, opts.noise)
    if backend != "eager":  # donate the model and optimizer state: updated in their own memory
        step = fg.jit(step, donate_argnums=(0, 1), backend=backend)
    losses: list[float] = []
    accs: list[float] = []
    norms: dict[str, Any] = {}
    steps_per_epoch = len(data.batches(train, opts.batch_size, drop_last=True))
    start = time.perf_counter()
    with tqdm(total=opts.epochs * steps_per_epoch, desc="DP-SGD", unit="step") as bar:
        for epoch in range(opts.epochs):
            key_data, key_epoch = random.split(key_data)
            epoch_norms = []
            for batch in data.batches(train, opts.batch_size, key=key_epoch, drop_last=True):
                # The noise is drawn outside the compiled step: funcgrad.random's integer
                # hashing is ~200 small ops, which inductor takes tens of seconds to compile on
                # a CPU, while eagerly they cost well under a millisecond per step.
                key_noise, key_step = random.split(key_noise)
                gaussian = random.normal(key_step, (num_params,))
                model, opt_state, loss, batch_norms = step(model, opt_state, batch, gaussian)
                if not losses:
                    compile_s = time.perf_counter() - start
                losses.append(loss.item())
                epoch_norms.append(batch_norms)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                bar.update()
            if epoch in (0, opts.epochs - 1):
                norms[f"epoch {epoch + 1}"] = torch.cat(epoch_norms).numpy()
            accs.append(nn.accuracy(model(test["x"]), test["y"]).item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", test_acc=f"{accs[-1]:.3f}")
    elapsed = time.perf_counter() - start
    per_step = (elapsed - compile_s) / max(len(losses) - 1, 1)

    path = opts.out_dir / "per_example_grads.png"
    plot(path, losses, accs, norms, opts.clip)
    print(f"first step (compilation) {compile_s:.1f} s, then {per_step * 1e3:.2f} ms per step")
    print(f"trained {len(losses)} private steps in {elapsed:.1f} s (backend: {backend})")
    print(f"plot: {path}")
    print(f"initial loss: {losses[0]:.4f}")
    print(f"final loss: {statistics.mean(losses[-steps_per_epoch:]):.4f} (mean of the last epoch)")
    print(f"final test accuracy: {accs[-1]:.4f}")
    print(f"vmap speedup over the Python loop: {speedup:.1f}x")


if __name__ == "__main__":
    main()
