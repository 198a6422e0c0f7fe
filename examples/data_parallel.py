"""Data-parallel training on several processes: ``funcgrad.distributed`` over torch.distributed.

Every process (one per GPU, or a few on a CPU) runs the same jitted train step on its own slice
of each global batch and averages the gradients with ``distributed.pmean`` inside the step, so
all processes keep the same parameters, and those follow single-process training on the same
global batches. ``--check`` verifies that: after training, rank 0 trains again alone on the
global batches and compares the final parameters. ``--zero`` shards the AdamW state across the
processes (ZeRO-1, ``distributed.shard_optimizer``); the result is the same.

Data: scikit-learn's bundled 8x8 digits (no download); the model: an MLP.

    torchrun --nproc_per_node=2 examples/data_parallel.py             # 2 processes, gloo on a CPU
    torchrun --nproc_per_node=2 examples/data_parallel.py --check     # and compare with 1 process
    torchrun --nproc_per_node=2 examples/data_parallel.py --smoke --check   # seconds, for CI
    python examples/data_parallel.py                                  # one process works too

(``python -m torch.distributed.run`` is ``torchrun``.) Rank 0 shows the progress, prints the
metrics and writes ``<out-dir>/curves.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure  # no pyplot: no window, no global state
from tqdm import tqdm

import funcgrad as fg
from funcgrad import distributed, nn, optim, random
from funcgrad.data import datasets

Batch = dict[str, torch.Tensor]


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--epochs", type=positive, help="default: 20 (2 with --smoke)")
    add(
        "--batch-size",
        type=positive,
        default=64,
        help="the global batch size, split between the processes (default: 64)",
    )
    add("--lr", type=float, help="peak learning rate (default: 3e-3, 1e-2 with --smoke)")
    add("--width", type=positive, help="hidden units of the MLP (default: 256, 32 with --smoke)")
    add("--seed", type=int, default=0, help="default: 0")
    add("--zero", action="store_true", help="shard the optimizer state across the processes")
    add(
        "--check",
        action="store_true",
        help="after training, rank 0 trains alone on the same global batches and compares the "
        "final parameters",
    )
    add(
        "--backend",
        choices=("inductor", "aot_eager", "eager"),
        help="torch.compile backend of the train step; eager: no fg.jit "
        "(default: inductor, aot_eager with --smoke)",
    )
    add("--out-dir", default="runs/data_parallel", help="default: runs/data_parallel")
    add("--smoke", action="store_true", help="seconds: a small MLP, 2 epochs, 512 images")
    return parser.parse_args(argv)


def load_data(smoke: bool, device: torch.device) -> tuple[Batch, Batch]:
    """The digits as flat, standardised images; every process loads all of them."""
    train, test = datasets.digits()
    if smoke:
        train = fg.tree.map(lambda x: x[:512], train)
    mean, std = train["image"].mean(), train["image"].std()

    def prepare(split: Batch) -> Batch:
        images = ((split["image"] - mean) / std).flatten(1)
        return {"image": images.to(device), "label": split["label"].to(device)}

    return prepare(train), prepare(test)


def loss_fn(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(batch["image"])
    return nn.cross_entropy(logits, batch["label"]), nn.accuracy(logits, batch["label"])


def make_step(opt: optim.GradientTransformation, parallel: bool, backend: str) -> Any:
    """``step(model, opt_state, batch) -> (model, opt_state, loss, accuracy)``; with
    ``parallel``, gradients and metrics are averaged over the processes (the only change)."""

    def step(model: Any, opt_state: Any, batch: Batch) -> Any:
        (loss, accuracy), grads = fg.value_and_grad(loss_fn, has_aux=True)(model, batch)
        if parallel:
            grads, loss, accuracy = distributed.pmean((grads, loss, accuracy))
        updates, opt_state = opt.update(grads, opt_state, model)
        return optim.apply_updates(model, updates), opt_state, loss, accuracy

    if backend == "eager":
        return step
    return fg.jit(step, donate_argnums=(0, 1), backend=backend)


def train(
    opts: argparse.Namespace, train_set: Batch, parallel: bool, progress: bool
) -> tuple[Any, list[float]]:
    """Trains from the seed's initialisation; returns the model and the loss of every step."""
    init_key, data_key = random.split(random.key(opts.seed))
    model = nn.MLP(64, [opts.width, opts.width], 10, key=init_key)
    model = fg.tree.map(lambda x: x.to(train_set["image"].device), model)
    if parallel:
        model = distributed.broadcast(model)  # the same start everywhere, whatever the seed
    steps = opts.epochs * (len(train_set["label"]) // opts.batch_size)
    schedule = optim.warmup_cosine_decay(0.0, opts.lr, max(1, steps // 20), steps)
    opt = optim.adamw(schedule, weight_decay=1e-2)
    if parallel and opts.zero:
        opt = distributed.shard_optimizer(opt)
    opt_state = opt.init(model)
    step = make_step(opt, parallel, opts.backend)
    make_batches = distributed.batches if parallel else fg.data.batches
    losses: list[torch.Tensor] = []
    for epoch in range(opts.epochs):
        key = random.fold_in(data_key, epoch)  # the same key on every process
        batches = make_batches(train_set, opts.batch_size, key=key, drop_last=True)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{opts.epochs}", disable=not progress)
        for batch in bar:
            model, opt_state, loss, _ = step(model, opt_state, batch)
            losses.append(loss)
    return model, torch.stack(losses).tolist()


@torch.no_grad()
def evaluate(model: Any, test: Batch) -> tuple[float, float]:
    """Test loss and accuracy: each process scores its slice of the test set, and psum adds
    the sums up (the slices are equal: the test set is cut to a multiple of the world size)."""
    n = len(test["label"]) // distributed.world_size() * distributed.world_size()
    mine = distributed.shard(fg.tree.map(lambda x: x[:n], test))
    logits = model(mine["image"])
    loss = nn.cross_entropy(logits, mine["label"], reduction="sum")
    correct = (logits.argmax(-1) == mine["label"]).sum()
    loss, correct = distributed.psum((loss.double(), correct))
    return loss.item() / n, correct.item() / n


def check(opts: argparse.Namespace, train_set: Batch, model: Any) -> bool:
    """Rank 0: trains one process on the global batches and compares the final parameters."""
    print("--check: training one process on the same global batches...", flush=True)
    # Eagerly: a reference needs no compiling (and the backends differ by rounding only).
    reference, _ = train(
        argparse.Namespace(**{**vars(opts), "backend": "eager"}),
        train_set,
        parallel=False,
        progress=False,
    )
    worst = 0.0
    for ours, theirs in zip(fg.tree.leaves(model), fg.tree.leaves(reference)):
        scale = theirs.abs().max().clamp_min(1e-3)
        worst = max(worst, ((ours - theirs).abs().max() / scale).item())
    ok = worst < 1e-3  # float32 rounding of two summation orders, through every step
    verdict = "equal to float tolerance" if ok else "DIFFERENT"
    print(
        f"check: final parameters vs one process on the global batches: largest difference "
        f"{worst:.2e} of the leaf's scale, {verdict}"
    )
    return ok


def plot(path: Path, losses: list[float], steps_per_epoch: int, n: int) -> None:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot([(i + 1) / steps_per_epoch for i in range(len(losses))], losses)
    ax.set(
        xlabel="epoch",
        ylabel="cross-entropy (global batch)",
        yscale="log",
        title=f"data-parallel training on {n} process{'es' * (n > 1)}",
    )
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    start = time.perf_counter()
    opts = parse_args(argv)
    opts.epochs = opts.epochs or (2 if opts.smoke else 20)
    opts.width = opts.width or (32 if opts.smoke else 256)
    opts.lr = opts.lr or (1e-2 if opts.smoke else 3e-3)
    opts.backend = opts.backend or ("aot_eager" if opts.smoke else "inductor")
    distributed.init()  # torchrun's environment; without it, one process
    n, main_process = distributed.world_size(), distributed.is_main()
    if opts.batch_size % n:
        sys.exit(f"--batch-size {opts.batch_size} must be a multiple of the {n} processes")
    train_set, test_set = load_data(opts.smoke, distributed.device())
    steps_per_epoch = len(train_set["label"]) // opts.batch_size
    if main_process:
        backend = torch.distributed.get_backend() if n > 1 else "none"
        print(
            f"{n} process{'es' * (n > 1)} (backend {backend}), global batch {opts.batch_size} "
            f"({opts.batch_size // n} per process), {steps_per_epoch} steps/epoch, "
            f"{opts.epochs} epochs, optimizer state {'sharded' if opts.zero else 'replicated'}"
        )
    model, losses = train(opts, train_set, parallel=True, progress=main_process)
    test_loss, test_accuracy = evaluate(model, test_set)
    ok = True
    if main_process:
        print(f"final train loss: {losses[-1]:.4f}")
        print(f"final test loss: {test_loss:.4f}")
        print(f"final test accuracy: {test_accuracy:.4f}")
        out_dir = Path(opts.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        plot(out_dir / "curves.png", losses, steps_per_epoch, n)
        if opts.check:
            ok = check(opts, train_set, model)
        print(f"time: {time.perf_counter() - start:.1f} s; wrote {out_dir / 'curves.png'}")
    distributed.psum(torch.zeros(()))  # the others wait here while rank 0 checks
    distributed.shutdown()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
