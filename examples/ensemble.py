"""Train an ensemble of 8 MLPs at once: ``fg.vmap`` over stacked parameters and optimizer states.

Each member is an ``fg.nn.MLP`` built from its own key. ``fg.tree.stack`` turns the 8 models
into one model whose tensors have a leading axis of size 8, and the 8 Adam states into one
state the same way. The training step is written for a single model; ``fg.vmap`` maps it over
that axis, and ``fg.jit`` compiles the mapped step into one graph that updates all members in
place (donated arguments). Every member also sees the training data in its own order (one
``funcgrad.random.permutation`` per member, drawn under ``fg.vmap`` too), which makes them
differ more than their initialisations alone would. Nothing here knows it is an ensemble except
the ``vmap``.

Before training, the script checks that one ensemble step equals 8 separate steps, one per
member. After training it reports every member's test accuracy on the digits and the accuracy
of the ensemble (members' probabilities averaged).

    python examples/ensemble.py            # ~30 s on 2 CPU cores, 20-25 s of it compiling
    python examples/ensemble.py --smoke    # a quick check, for CI
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

import funcgrad as fg
from funcgrad import nn, optim, random
from funcgrad.data import datasets

Batch = dict[str, torch.Tensor]
Step = Callable[[nn.MLP, Any, Batch], tuple[nn.MLP, Any, torch.Tensor]]


def loss_fn(model: nn.MLP, batch: Batch) -> torch.Tensor:
    return nn.cross_entropy(model(batch["x"]), batch["y"])


def make_step(opt: optim.GradientTransformation) -> Step:
    """One training step of one model: written with no notion of an ensemble."""

    def step(model: nn.MLP, opt_state: Any, batch: Batch) -> tuple[nn.MLP, Any, torch.Tensor]:
        loss, grads = fg.value_and_grad(loss_fn)(model, batch)
        updates, opt_state = opt.update(grads, opt_state, model)
        return optim.apply_updates(model, updates), opt_state, loss

    return step


def member_batches(
    train: Batch, key: torch.Tensor, members: int, batch_size: int
) -> Iterator[Batch]:
    """One epoch of batches of shape ``(members, batch_size, ...)``: each member its own order."""
    n = len(train["y"])
    orders = fg.vmap(lambda k: random.permutation(k, n))(random.split(key, members))
    for i in range(n // batch_size):
        idx = orders[:, i * batch_size : (i + 1) * batch_size]
        yield {"x": train["x"][idx], "y": train["y"][idx]}


def check_one_step(
    step: Step, members: list[nn.MLP], opt: optim.GradientTransformation, batches: Batch
) -> float:
    """The largest difference between one ensemble step and the members' separate steps."""
    stacked, _, losses = fg.vmap(step)(
        fg.tree.stack(members), fg.tree.stack([opt.init(m) for m in members]), batches
    )
    separate = [step(m, opt.init(m), batch) for m, batch in zip(members, fg.tree.unstack(batches))]
    expected = fg.tree.stack([model for model, _, _ in separate])
    expected_losses = torch.stack([loss for _, _, loss in separate])
    diffs = fg.tree.map(lambda a, b: (a - b).abs().max(), stacked, expected)
    return max([*fg.tree.leaves(diffs), (losses - expected_losses).abs().max()]).item()


def evaluate(models: nn.MLP, test: Batch) -> tuple[torch.Tensor, float]:
    """Each member's test accuracy, and the ensemble's (averaged probabilities)."""
    logits = fg.vmap(lambda model: model(test["x"]))(models)  # (members, examples, classes)
    accs = torch.stack([nn.accuracy(member, test["y"]) for member in logits])
    probs = nn.softmax(logits).mean(0)
    return accs, nn.accuracy(probs, test["y"]).item()


def plot(
    path: Path, losses: torch.Tensor, member_accs: torch.Tensor, ens_accs: list[float]
) -> None:
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.semilogy(losses, linewidth=0.8)
    ax_loss.set(xlabel="step", ylabel="training loss", title="each member's loss")
    epochs = range(1, len(ens_accs) + 1)
    ax_acc.plot(epochs, member_accs, color="tab:gray", linewidth=0.8)
    ax_acc.plot(epochs, ens_accs, color="tab:red", linewidth=2, label="ensemble")
    ax_acc.plot([], [], color="tab:gray", label="members")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    ax_acc.legend()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--members", type=int, default=8, help="models in the ensemble (default: %(default)s)"
    )
    parser.add_argument(
        "--epochs", type=int, default=20, help="passes over the training set (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="examples per step and member (default: %(default)s)",
    )
    parser.add_argument(
        "--lr", type=float, default=1e-2, help="Adam learning rate (default: %(default)s)"
    )
    parser.add_argument(
        "--hidden", type=int, default=64, help="hidden units of each MLP (default: %(default)s)"
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
        help="seed of the models and the shuffling (default: %(default)s)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("runs/ensemble"),
        help="where the plot goes (default: %(default)s)",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run (seconds), for CI")
    opts = parser.parse_args()
    if opts.smoke:
        opts.epochs = 2
    backend = opts.backend or ("eager" if opts.smoke else "inductor")
    opts.out_dir.mkdir(parents=True, exist_ok=True)

    train, test = datasets.digits()
    train = {"x": train["image"].flatten(1), "y": train["label"]}
    test = {"x": test["image"].flatten(1), "y": test["label"]}
    key_models, key_data = random.split(random.key(opts.seed))
    members = [nn.MLP(64, [opts.hidden], 10, key=k) for k in random.split(key_models, opts.members)]
    opt = optim.adam(opts.lr)
    step = make_step(opt)

    first = next(member_batches(train, key_data, opts.members, opts.batch_size))
    difference = check_one_step(step, members, opt, first)
    print(
        f"one ensemble step vs {opts.members} separate steps: max abs difference {difference:.2e}"
    )

    models = fg.tree.stack(members)  # every leaf gains a leading axis of size `members`
    opt_state = fg.tree.stack([opt.init(m) for m in members])
    ensemble_step = fg.vmap(step)  # maps the models, optimizer states and batches
    if backend != "eager":  # donate the models and states: updated in their own memory
        ensemble_step = fg.jit(ensemble_step, donate_argnums=(0, 1), backend=backend)

    losses: list[torch.Tensor] = []
    member_accs: list[torch.Tensor] = []
    ens_accs: list[float] = []
    steps_per_epoch = len(train["y"]) // opts.batch_size
    start = time.perf_counter()
    with tqdm(total=opts.epochs * steps_per_epoch, desc="ensemble", unit="step") as bar:
        for _ in range(opts.epochs):
            key_data, key_epoch = random.split(key_data)
            for batch in member_batches(train, key_epoch, opts.members, opts.batch_size):
                models, opt_state, loss = ensemble_step(models, opt_state, batch)
                if not losses:
                    compile_s = time.perf_counter() - start
                losses.append(loss)
                bar.set_postfix(mean_loss=f"{loss.mean().item():.4f}", refresh=False)
                bar.update()
            accs, ens_acc = evaluate(models, test)
            member_accs.append(accs)
            ens_accs.append(ens_acc)
            bar.set_postfix(mean_loss=f"{loss.mean().item():.4f}", ensemble_acc=f"{ens_acc:.3f}")
    elapsed = time.perf_counter() - start
    per_step = (elapsed - compile_s) / max(len(losses) - 1, 1)

    path = opts.out_dir / "ensemble.png"
    all_losses = torch.stack(losses)
    plot(path, all_losses, torch.stack(member_accs), ens_accs)
    print(f"first step (compilation) {compile_s:.1f} s, then {per_step * 1e3:.2f} ms per step")
    print(f"trained {opts.members} models x {len(losses)} steps in {elapsed:.1f} s ({backend})")
    for i, acc in enumerate(member_accs[-1].tolist()):
        print(f"member {i}: test accuracy {acc:.4f}")
    print(f"plot: {path}")
    print(f"initial loss: {all_losses[0].mean().item():.4f}")
    print(
        f"final loss: {all_losses[-steps_per_epoch:].mean().item():.4f} (last epoch, all members)"
    )
    print(f"one-step check: {'passed' if difference < 1e-5 else 'FAILED'}")
    print(f"final mean member test accuracy: {member_accs[-1].mean().item():.4f}")
    print(f"final ensemble test accuracy: {ens_accs[-1]:.4f}")


if __name__ == "__main__":
    main()
