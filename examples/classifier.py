"""Train an image classifier the functional way: funcgrad layers, optimizer, jit and checkpoints.

The model is a pytree of ``fg.nn`` layers, the loss a pure function, and one jitted train step
(``fg.jit``, the parameters and optimizer state donated so they are updated in their own memory)
does forward, backward and an AdamW update with a warmup-cosine learning rate. Each epoch
shuffles (and, on the digits, augments) the training set with its own funcgrad key, evaluates on
the test set and saves a checkpoint, so ``--resume`` continues a run exactly where it stopped.

Data: scikit-learn's bundled 8x8 handwritten digits (no download), or Fashion-MNIST when
``--data-dir`` names a directory with its four IDX files (``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``, from
https://github.com/zalandoresearch/fashion-mnist).

    python examples/classifier.py                      # a CNN on digits: about a minute on a CPU
    python examples/classifier.py --model mlp --data-dir ~/data/fashion-mnist
    python examples/classifier.py --stop-after 10      # stop after epoch 10 of 30, then
    python examples/classifier.py --resume             # continue the run in --out-dir
    python examples/classifier.py --smoke              # seconds: a tiny model, for CI
    python examples/classifier.py --loader torch       # batches from a torch DataLoader

By default the batches come from ``fg.data.batches`` (the whole data set on the device, one
gather per batch, the epoch's shuffle and augmentation drawn from a funcgrad key). With
``--loader torch`` a ``torch.utils.data.DataLoader`` over a map-style ``Dataset`` makes them
instead: augmentation per image in worker processes (``--workers``), shuffling from a seeded
``torch.Generator``, and ``fg.data.prefetch`` moving each batch to the device ahead of the step.
The same jitted step consumes both: a batch is a dict of tensors, a pytree.

Writes ``<out-dir>/curves.png`` (loss and accuracy) and ``<out-dir>/checkpoints/``;
``--tensorboard DIR`` also logs to TensorBoard (``pip install tensorboard``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.data
from matplotlib.figure import Figure  # no pyplot: no window, no global state
from tqdm import tqdm

import funcgrad as fg
from funcgrad import nn, random
from funcgrad.data import datasets

# Defaults per data set: epochs, batch size, peak learning rate, augmentation. The digits are
# few (1437 training images) and their test split is hard (scikit-learn's SVC gets 95.8% on
# it): augmentation takes the CNN from about 95% to about 98%.
DEFAULTS = {
    "digits": {"epochs": 30, "batch_size": 64, "lr": 3e-3, "augment": True},
    "fashion-mnist": {"epochs": 5, "batch_size": 128, "lr": 2e-3, "augment": False},
}
WIDTH = {"mlp": 256, "cnn": 32}  # hidden units of the MLP, channels of the CNN's first conv
SMOKE_WIDTH = {"mlp": 32, "cnn": 8}
# Columns of the per-epoch metrics in the checkpoint and the plot.
METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", choices=("mlp", "cnn"), default="cnn", help="default: cnn")
    add("--data-dir", help="a directory with the Fashion-MNIST IDX files (default: the digits)")
    add("--epochs", type=positive, help="default: 30 on the digits, 5 on Fashion-MNIST")
    add("--batch-size", type=positive, help="default: 64 on the digits, 128 on Fashion-MNIST")
    add(
        "--lr",
        type=float,
        help="peak learning rate (default: 3e-3 on the digits, else 2e-3; 1e-2 with --smoke)",
    )
    add("--weight-decay", type=float, default=5e-2, help="AdamW's decay (default: 0.05)")
    add(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="random rotations, scalings and shifts of the training images each epoch "
        "(default: on for the digits, off for Fashion-MNIST)",
    )
    add("--width", type=positive, help="MLP hidden units or CNN channels (default: 256 / 32)")
    add(
        "--loader",
        choices=("funcgrad", "torch"),
        default="funcgrad",
        help="where the training batches come from: fg.data.batches, or a "
        "torch.utils.data.DataLoader with worker processes, through fg.data.prefetch "
        "(default: funcgrad)",
    )
    add(
        "--workers",
        type=count,
        default=2,
        help="worker processes of the DataLoader with --loader torch (default: 2)",
    )
    add("--seed", type=int, default=0, help="default: 0")
    add(
        "--out-dir",
        default="runs/classifier",
        help="where the plot and the checkpoints go; a new run replaces the checkpoints "
        "(default: runs/classifier)",
    )
    add("--resume", action="store_true", help="continue the run in --out-dir where it stopped")
    add(
        "--stop-after",
        type=positive,
        metavar="EPOCHS",
        help="stop once this many epochs are done (the learning-rate schedule still spans "
        "--epochs); continue later with --resume",
    )
    add("--tensorboard", metavar="DIR", help="also log to TensorBoard in DIR")
    add(
        "--backend",
        choices=("inductor", "aot_eager", "eager"),
        help="torch.compile backend of the jitted train step; eager: no fg.jit "
        "(default: inductor, aot_eager with --smoke)",
    )
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    add("--device", default=default_device, help=f"default: {default_device}")
    add(
        "--smoke",
        action="store_true",
        help="a check in seconds: a tiny model, 2 epochs, at most 2048 training images, "
        "backend aot_eager (compiling with inductor would take longer than the whole run)",
    )
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------


class Data(NamedTuple):
    name: str
    train: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]
    background: float  # the value of a blank pixel after standardisation


def load_data(opts: argparse.Namespace) -> Data:
    """The data set, standardised with the training images' mean and std, on the device."""
    if opts.data_dir is None:
        name, (train, test) = "digits", datasets.digits()
    else:
        name, (train, test) = "fashion-mnist", datasets.fashion_mnist(opts.data_dir)
    if opts.smoke:  # a few steps: at most 2048 training and 1024 test examples
        train = fg.tree.map(lambda x: x[:2048], train)
        test = fg.tree.map(lambda x: x[:1024], test)
    mean, std = train["image"].mean(), train["image"].std()

    def prepare(split: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = (split["image"] - mean) / std  # small data sets: kept on the device
        return {"image": images.to(opts.device), "label": split["label"].to(opts.device)}

    return Data(name, prepare(train), prepare(test), float(-mean / std))


def make_model(kind: str, width: int, image_shape: tuple[int, ...], key: torch.Tensor) -> Any:
    """An MLP (two hidden layers) or a small CNN (two conv + max-pool blocks) for 10 classes."""
    channels, height, breadth = image_shape
    if kind == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.MLP(channels * height * breadth, [width, width], 10, key=key)
        )
    k1, k2, k3, k4 = random.split(key, 4)
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1, key=k1),
        nn.relu,
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, key=k2),
        nn.relu,
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (height // 4) * (breadth // 4), 128, key=k3),
        nn.relu,
        nn.Linear(128, 10, key=k4),
    )


# --------------------------------------------------------------------------------------------
# Augmentation, the train step (one pure function, jitted) and the evaluation
# --------------------------------------------------------------------------------------------


def augment(key: torch.Tensor, images: torch.Tensor, background: float) -> torch.Tensor:
    """Each image rotated (up to 15 degrees), scaled (up to 10%) and shifted (up to 1/8 of its
    size) at random: one affine resampling, drawn from ``key``.

    Run eagerly on the whole training set once per epoch: inside the jitted step it would more
    than double inductor's compilation time (the random draws and ``grid_sample`` become many
    kernels) and save almost nothing."""
    n = images.shape[0]
    k_angle, k_scale, k_shift = random.split(key, 3)
    angle = random.uniform(k_angle, (n,), minval=-15.0, maxval=15.0) * (math.pi / 180)
    scale = random.uniform(k_scale, (n,), minval=0.9, maxval=1.1)
    shift = random.uniform(k_shift, (n, 2), minval=-0.25, maxval=0.25)  # of the half-size
    return affine(images, angle, scale, shift, background)


def affine(
    images: torch.Tensor,
    angle: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    background: float,
) -> torch.Tensor:
    """``images`` (n, c, h, w) rotated by ``angle`` (n,) radians, scaled by ``scale`` (n,) and
    shifted by ``shift`` (n, 2), in units of half the image size; ``background`` fills in."""
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images - background, grid, align_corners=False) + background


class TrainImages(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """The training set as a map-style ``Dataset`` for ``--loader torch``: example ``i`` as a
    dict, rotated, scaled and shifted at random (the ranges of :func:`augment`) when
    ``augment``.

    The random numbers come from torch's global generator, which the ``DataLoader`` seeds in
    each worker process from its own ``generator``: a run is reproducible for a given
    ``--seed`` and ``--workers``."""

    def __init__(self, train: dict[str, torch.Tensor], background: float, augment: bool) -> None:
        self.images, self.labels = train["image"].cpu(), train["label"].cpu()
        self.background, self.augment = background, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.images[i]
        if self.augment:
            angle = (torch.rand(1) * 30 - 15) * (math.pi / 180)
            scale = torch.rand(1) * 0.2 + 0.9
            shift = torch.rand(1, 2) * 0.5 - 0.25
            image = affine(image[None], angle, scale, shift, self.background)[0]
        return {"image": image, "label": self.labels[i]}


def make_loader(
    data: Data, opts: argparse.Namespace, epochs_done: int
) -> torch.utils.data.DataLoader[dict[str, torch.Tensor]]:
    """A ``DataLoader`` over :class:`TrainImages`: the batches collate to ``{"image": (b, c,
    h, w), "label": (b,)}``, the pytree the train step takes. ``drop_last``: one batch shape,
    so one compiled graph. Its workers live as long as the loader (``persistent_workers``)."""
    seed = opts.seed + epochs_done  # a resumed run: reproducible, not the uninterrupted run's
    torch.manual_seed(seed)  # the augmentations' random numbers with --workers 0
    return torch.utils.data.DataLoader(
        TrainImages(data.train, data.background, opts.augment),
        batch_size=opts.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=opts.workers,
        persistent_workers=opts.workers > 0,
        pin_memory=torch.device(opts.device).type == "cuda",  # prefetch copies asynchronously
        generator=torch.Generator().manual_seed(seed),
    )


def loss_fn(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(batch["image"])
    return nn.cross_entropy(logits, batch["label"]), logits


def make_train_step(optimizer: fg.optim.GradientTransformation, backend: str) -> Any:
    """``step(model, opt_state, batch) -> (model, opt_state, loss, accuracy)``: forward,
    backward and update, in one graph."""

    def train_step(model: Any, opt_state: Any, batch: dict[str, torch.Tensor]) -> Any:
        (loss, logits), grads = fg.value_and_grad(loss_fn, has_aux=True)(model, batch)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        model = fg.optim.apply_updates(model, updates)
        return model, opt_state, loss, nn.accuracy(logits, batch["label"])

    if backend == "eager":
        return train_step
    # Donated: the new parameters and optimizer state are written into the old ones' memory.
    return fg.jit(train_step, donate_argnums=(0, 1), backend=backend)


def train_epoch(
    train_step: Any,
    model: Any,
    opt_state: Any,
    data: Data,
    opts: argparse.Namespace,
    key: torch.Tensor,
    epoch: int,
    loader: torch.utils.data.DataLoader[dict[str, torch.Tensor]] | None = None,
) -> tuple[Any, Any, torch.Tensor, list[float]]:
    """One epoch: ``(model, opt_state, loss of each step, [train loss, train accuracy, test
    loss, test accuracy])``. ``key`` is the epoch's own: its shuffle and augmentation are the
    same whenever (and however often) the epoch runs. With a ``loader`` (``--loader torch``)
    the batches come from it instead, moved to the device ahead of use by
    ``fg.data.prefetch``."""
    if loader is not None:
        batches: Any = fg.data.prefetch(loader, opts.device)
    else:
        shuffle_key, augment_key = random.split(key)
        train = data.train
        if opts.augment:  # the whole epoch at once, eagerly: a few operations
            train = {**train, "image": augment(augment_key, train["image"], data.background)}
        batches = fg.data.batches(train, opts.batch_size, key=shuffle_key, drop_last=True)
    losses, accuracies = [], []
    steps = len(data.train["label"]) // opts.batch_size
    bar = tqdm(
        batches, desc=f"epoch {epoch + 1}/{opts.epochs}", total=steps, leave=False, disable=None
    )
    for i, batch in enumerate(bar):
        model, opt_state, loss, accuracy = train_step(model, opt_state, batch)
        losses.append(loss)
        accuracies.append(accuracy)
        if i % 10 == 0:  # .item() waits for the device: not at every step
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    bar.close()
    step_loss = torch.stack(losses).float().cpu()
    row = [step_loss.mean().item(), torch.stack(accuracies).mean().item()]
    return model, opt_state, step_loss, row + list(evaluate(model, data.test))


@torch.no_grad()
def evaluate(model: Any, data: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Mean loss and accuracy over ``data``, in batches of 1000 (eager: it runs once per
    epoch, so compiling it would cost more time than it saves)."""
    loss, correct = 0.0, 0
    for batch in fg.data.batches(data, 1000):
        logits = model(batch["image"])
        loss += nn.cross_entropy(logits, batch["label"], reduction="sum").item()
        correct += int((logits.argmax(-1) == batch["label"]).sum())
    n = len(data["label"])
    return loss / n, correct / n


# --------------------------------------------------------------------------------------------
# Checkpoints, TensorBoard and the plot
# --------------------------------------------------------------------------------------------


def run_config(opts: argparse.Namespace, dataset: str) -> dict[str, Any]:
    """What a resumed run must share with the run it continues."""
    keys = ("model", "width", "epochs", "batch_size", "lr", "weight_decay", "augment", "seed")
    config = {"dataset": dataset, "smoke": opts.smoke, **{k: getattr(opts, k) for k in keys}}
    config["loader"] = opts.loader
    if opts.loader == "torch":  # its augmentations depend on the number of workers too
        config["workers"] = opts.workers
    return config


def restore(manager: fg.io.CheckpointManager, template: dict[str, Any]) -> dict[str, Any]:
    """The latest checkpoint, loaded into the structure of ``template`` (tensors keep the
    template's devices)."""
    if manager.latest_step() is None:
        sys.exit(f"--resume: no checkpoint in {manager.directory}; run without --resume first.")
    try:
        state: dict[str, Any] = manager.restore(like=template)
    except ValueError:  # another model, say: read the file as it is to name the settings
        state = manager.restore()
        if state.get("config") == template["config"]:
            raise
    theirs, ours = state["config"], template["config"]
    if theirs != ours:
        keys = [*ours, *(k for k in theirs if k not in ours)]
        diff = ", ".join(
            f"{k} {theirs.get(k)!r} (now {ours.get(k)!r})"
            for k in keys
            if ours.get(k) != theirs.get(k)
        )
        sys.exit(f"--resume: the run in {manager.directory} had other settings: {diff}.")
    return state


def remove_checkpoints(manager: fg.io.CheckpointManager) -> None:
    """A fresh run replaces an old run's checkpoints, so --resume never mixes two runs."""
    for step in manager.all_steps():
        os.remove(os.path.join(manager.directory, f"ckpt_{step:09d}.safetensors"))


def open_tensorboard(log_dir: str | None, first_step: int) -> Any:
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        sys.exit("--tensorboard needs the tensorboard package: pip install tensorboard")
    return SummaryWriter(log_dir, purge_step=first_step)  # a resumed run overwrites the rest


def log_epoch(
    writer: Any, epoch: int, step_loss: torch.Tensor, row: list[float], schedule: Any
) -> None:
    """An epoch's step losses, metrics and last learning rate, by global step."""
    steps = len(step_loss)
    for j, value in enumerate(step_loss.tolist()):
        writer.add_scalar("train/step_loss", value, epoch * steps + j + 1)
    last_step = (epoch + 1) * steps
    for name, value in zip(METRICS, row):
        writer.add_scalar(name.replace("_", "/", 1), value, last_step)
    writer.add_scalar("train/learning_rate", schedule(torch.tensor(last_step)), last_step)


def plot(path: Path, history: dict[str, torch.Tensor], steps_per_epoch: int, done: int) -> None:
    """Loss (each step and per epoch) and accuracy curves of the epochs done so far."""
    step_loss = history["step_loss"][: done * steps_per_epoch]
    epochs = torch.arange(1, done + 1)
    metrics = dict(zip(METRICS, history["epoch"][:done].T))
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    steps = torch.arange(1, len(step_loss) + 1) / steps_per_epoch
    ax_loss.plot(steps, step_loss, color="tab:blue", alpha=0.3, label="train (each step)")
    ax_loss.plot(epochs, metrics["train_loss"], "o-", color="tab:blue", label="train (epoch)")
    ax_loss.plot(epochs, metrics["test_loss"], "s-", color="tab:orange", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.plot(epochs, metrics["train_accuracy"], "o-", label="train")
    ax_acc.plot(epochs, metrics["test_accuracy"], "s-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def fill_defaults(opts: argparse.Namespace, dataset: str) -> None:
    defaults = DEFAULTS[dataset]
    opts.epochs = opts.epochs or (2 if opts.smoke else defaults["epochs"])
    opts.batch_size = opts.batch_size or defaults["batch_size"]
    opts.lr = opts.lr or (1e-2 if opts.smoke else defaults["lr"])
    opts.augment = defaults["augment"] if opts.augment is None else opts.augment
    opts.width = opts.width or (SMOKE_WIDTH if opts.smoke else WIDTH)[opts.model]
    opts.backend = opts.backend or ("aot_eager" if opts.smoke else "inductor")


def main(argv: list[str] | None = None) -> None:
    start = time.perf_counter()
    opts = parse_args(argv)
    data = load_data(opts)
    fill_defaults(opts, data.name)
    image_shape = tuple(data.train["image"].shape[1:])
    print(
        f"data: {data.name}, {len(data.train['label'])} train / {len(data.test['label'])} test "
        f"images of {'x'.join(map(str, image_shape))}, on {opts.device}"
    )

    # Keys: one for the initialisation, one from which each epoch's keys are folded.
    init_key, data_key = random.split(random.key(opts.seed, device=opts.device))
    model = make_model(opts.model, opts.width, image_shape, init_key)
    steps_per_epoch = len(data.train["label"]) // opts.batch_size  # drop_last: one graph
    total_steps = opts.epochs * steps_per_epoch
    warmup = max(1, total_steps // 20)
    schedule = fg.optim.warmup_cosine_decay(0.0, opts.lr, warmup, total_steps)
    optimizer = fg.optim.adamw(schedule, weight_decay=opts.weight_decay)
    print(
        f"model: {opts.model}, {sum(x.numel() for x in fg.tree.leaves(model)):,} parameters; "
        f"adamw, lr {opts.lr:g} (warmup {warmup} steps, cosine to 0 at step {total_steps}), "
        f"batch {opts.batch_size} ({steps_per_epoch} steps/epoch), "
        f"augmentation {'on' if opts.augment else 'off'}"
    )

    # A checkpoint holds everything the run needs to continue exactly.
    state: dict[str, Any] = {
        "model": model,
        "opt_state": optimizer.init(model),
        "epoch": 0,  # epochs done
        "key": data_key,
        "history": {
            "step_loss": torch.full((total_steps,), math.nan),
            "epoch": torch.full((opts.epochs, len(METRICS)), math.nan, dtype=torch.float64),
        },
        "config": run_config(opts, data.name),
    }
    out_dir = Path(opts.out_dir)
    manager = fg.io.CheckpointManager(out_dir / "checkpoints", keep=2)
    if opts.resume:
        state = restore(manager, state)
        print(f"resumed from {manager.directory} after epoch {state['epoch']}")
    else:
        remove_checkpoints(manager)
    model, opt_state, history = state["model"], state["opt_state"], state["history"]
    stop = min(opts.epochs, opts.stop_after or opts.epochs)
    writer = open_tensorboard(opts.tensorboard, state["epoch"] * steps_per_epoch + 1)

    loader = None
    if opts.loader == "torch":
        loader = make_loader(data, opts, state["epoch"])
        print(
            f"loader: torch.utils.data.DataLoader, {opts.workers} worker processes, "
            f"through fg.data.prefetch to {opts.device}"
        )
    train_step = make_train_step(optimizer, opts.backend)
    compile_s = 0.0
    if opts.backend != "eager" and state["epoch"] < stop:
        tic = time.perf_counter()
        print(f"compiling the train step (fg.jit, backend {opts.backend})...", end=" ", flush=True)
        first = next(iter(fg.data.batches(data.train, opts.batch_size)))
        train_step.lower(model, opt_state, first)  # on copies of the arguments
        compile_s = time.perf_counter() - tic
        print(f"{compile_s:.1f} s")

    train_s = 0.0
    for epoch in range(state["epoch"], stop):
        tic = time.perf_counter()
        model, opt_state, step_loss, row = train_epoch(
            train_step,
            model,
            opt_state,
            data,
            opts,
            random.fold_in(state["key"], epoch),
            epoch,
            loader,
        )
        history["step_loss"][epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch] = step_loss
        history["epoch"][epoch] = torch.tensor(row, dtype=torch.float64)
        state = {**state, "model": model, "opt_state": opt_state, "epoch": epoch + 1}
        manager.save(epoch + 1, state)
        seconds = time.perf_counter() - tic
        train_s += seconds
        print(
            f"epoch {epoch + 1:2d}/{opts.epochs}  train loss {row[0]:.4f} acc {row[1]:.4f}  "
            f"test loss {row[2]:.4f} acc {row[3]:.4f}  ({seconds:.1f} s)"
        )
        if writer is not None:
            log_epoch(writer, epoch, step_loss, row, schedule)

    if writer is not None:
        writer.close()
    done = state["epoch"]
    plot(out_dir / "curves.png", history, steps_per_epoch, done)
    if done < opts.epochs:
        print(f"stopped after epoch {done} of {opts.epochs}; continue with --resume")
    if compile_s:  # drop_last: one batch shape, so one graph for every step
        n = train_step.compile_count
        print(f"train step: {n} graph{'s' * (n != 1)} compiled, in {compile_s:.1f} s")
    final = dict(zip(METRICS, history["epoch"][done - 1].tolist()))
    print(f"final train loss: {final['train_loss']:.4f}")
    print(f"final test loss: {final['test_loss']:.4f}")
    print(f"final test accuracy: {final['test_accuracy']:.4f}")
    print(
        f"time: {time.perf_counter() - start:.1f} s in all ({compile_s:.1f} s compiling, "
        f"{train_s:.1f} s training, evaluating and checkpointing)"
    )
    print(f"wrote {out_dir / 'curves.png'} and {manager.directory}/ckpt_{done:09d}.safetensors")


if __name__ == "__main__":
    main()
