"""Train a GRU to continue sine waves: ``fg.nn.GRUCell`` looped over time by ``fg.lax.scan``.

Each training sequence is a sine wave with a random frequency, phase and amplitude plus a little
noise; the model reads it one value at a time (a ``GRUCell`` with a linear read-out, looped with
``fg.lax.scan``) and predicts the next value at every step (mean squared error). One jitted
train step (``fg.jit``, parameters and optimizer state donated) does forward, backward through
the scan and an Adam update. At the end the model continues held-out waves on its own: after
reading a prefix, ``fg.lax.scan`` with ``xs=None`` feeds each prediction back as the next input.

    python examples/rnn.py              # about a minute on a CPU
    python examples/rnn.py --steps 2000 --hidden 64
    python examples/rnn.py --smoke      # seconds, for CI

Writes ``<out-dir>/rnn.png`` (training loss, and continued test waves against the truth).

Under ``fg.jit`` the scan is unrolled into one graph, so compile time grows with the sequence
length (benchmarks/lax.py measures it): the default backend is ``aot_eager``, which compiles a
40-step scan in seconds; ``--backend inductor`` fuses more and compiles for minutes.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure  # no pyplot: no window, no global state
from tqdm import tqdm

import funcgrad as fg
from funcgrad import lax, nn, random


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--steps", type=positive, help="training steps (default: 400; 30 with --smoke)")
    add("--length", type=positive, help="sequence length (default: 40; 8 with --smoke)")
    add("--hidden", type=positive, default=32, help="GRU hidden size (default: 32)")
    add("--batch-size", type=positive, default=64, help="default: 64")
    add("--lr", type=float, default=1e-2, help="Adam's learning rate (default: 1e-2)")
    add("--seed", type=int, default=0, help="default: 0")
    add("--out-dir", default="runs/rnn", help="where the plot goes (default: runs/rnn)")
    add(
        "--backend",
        choices=("aot_eager", "inductor", "eager"),
        default="aot_eager",
        help="torch.compile backend of the jitted train step; eager: no fg.jit "
        "(default: aot_eager, see above)",
    )
    add("--smoke", action="store_true", help="a check in seconds: short sequences, 30 steps")
    return parser.parse_args(argv)


def waves(key: torch.Tensor, n: int, length: int, noise: float = 0.02) -> torch.Tensor:
    """``n`` noisy sine waves of ``length`` samples, shaped ``(length, n, 1)`` (time first)."""
    k_freq, k_phase, k_amp, k_noise = random.split(key, 4)
    freq = random.uniform(k_freq, (1, n), minval=0.1, maxval=0.4)
    phase = random.uniform(k_phase, (1, n), minval=0.0, maxval=2 * math.pi)
    amp = random.uniform(k_amp, (1, n), minval=0.5, maxval=1.0)
    t = torch.arange(length, dtype=torch.float32)[:, None]
    clean = amp * torch.sin(freq * t + phase)
    return (clean + noise * random.normal(k_noise, clean.shape))[..., None]


def make_model(hidden: int, key: torch.Tensor) -> dict[str, Any]:
    k_cell, k_head = random.split(key)
    return {"cell": nn.GRUCell(1, hidden, key=k_cell), "head": nn.Linear(hidden, 1, key=k_head)}


def read(model: dict[str, Any], xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads ``xs`` (time, batch, 1): the last hidden state and the prediction at each step."""

    def step(h: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = model["cell"](x, h)
        return h, model["head"](h)

    h0 = xs.new_zeros(xs.shape[1], model["cell"].hidden_size)
    return lax.scan(step, h0, xs)


def loss_fn(model: dict[str, Any], seqs: torch.Tensor) -> torch.Tensor:
    """Next-value prediction error over every step."""
    _, predictions = read(model, seqs[:-1])
    return nn.mse(predictions, seqs[1:])


def make_train_step(optimizer: fg.optim.GradientTransformation, backend: str) -> Any:
    def train_step(model: Any, opt_state: Any, seqs: torch.Tensor) -> Any:
        loss, grads = fg.value_and_grad(loss_fn)(model, seqs)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        return fg.optim.apply_updates(model, updates), opt_state, loss

    if backend == "eager":
        return train_step
    return fg.jit(train_step, donate_argnums=(0, 1), backend=backend)


@torch.no_grad()
def continue_waves(model: dict[str, Any], prefix: torch.Tensor, horizon: int) -> torch.Tensor:
    """After reading ``prefix``, predicts ``horizon`` more values, each fed back as input."""
    h, predictions = read(model, prefix)

    def step(carry: Any, _: None) -> tuple[Any, torch.Tensor]:
        h, x = carry
        h = model["cell"](x, h)
        y = model["head"](h)
        return (h, y), y

    _, future = lax.scan(step, (h, predictions[-1]), None, length=horizon)
    return torch.cat([predictions[-1:], future[:-1]])


def plot(
    path: Path, losses: list[float], truth: torch.Tensor, guess: torch.Tensor, start: int
) -> None:
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_wave = fig.subplots(1, 2)
    ax_loss.plot(range(1, len(losses) + 1), losses, color="tab:blue")
    ax_loss.set(xlabel="step", ylabel="mean squared error", yscale="log", title="training loss")
    t = torch.arange(truth.shape[0])
    for i in range(min(3, truth.shape[1])):
        (line,) = ax_wave.plot(t, truth[:, i, 0], alpha=0.5, label=f"wave {i + 1}")
        ax_wave.plot(t[start:], guess[:, i, 0], "--", color=line.get_color())
    ax_wave.axvline(start - 0.5, color="gray", lw=1)
    ax_wave.set(
        xlabel="time step", title="test waves (solid) and free-running continuation (dashed)"
    )
    for ax in (ax_loss, ax_wave):
        ax.grid(alpha=0.3)
    ax_wave.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    start_time = time.perf_counter()
    opts = parse_args(argv)
    steps = opts.steps or (30 if opts.smoke else 400)
    length = opts.length or (8 if opts.smoke else 40)
    init_key, data_key, test_key = random.split(random.key(opts.seed), 3)
    model = make_model(opts.hidden, init_key)
    optimizer = fg.optim.adam(fg.optim.cosine_decay(opts.lr, steps, alpha=0.05))
    opt_state = optimizer.init(model)
    train_step = make_train_step(optimizer, opts.backend)
    n_params = sum(x.numel() for x in fg.tree.leaves(model))
    print(
        f"GRU({opts.hidden}) + linear read-out, {n_params:,} parameters; sequences of "
        f"{length}, batch {opts.batch_size}, {steps} Adam steps, backend {opts.backend}"
    )

    compile_s = 0.0
    if opts.backend != "eager":
        tic = time.perf_counter()
        print(f"compiling the train step (fg.jit, backend {opts.backend})...", end=" ", flush=True)
        train_step.lower(model, opt_state, waves(data_key, opts.batch_size, length))
        compile_s = time.perf_counter() - tic
        print(f"{compile_s:.1f} s")

    losses: list[float] = []
    bar = tqdm(range(steps), desc="training", disable=None)
    for i in bar:
        seqs = waves(random.fold_in(data_key, i), opts.batch_size, length)
        model, opt_state, loss = train_step(model, opt_state, seqs)
        losses.append(loss.item())
        if i % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    bar.close()

    test = waves(test_key, 256, length + length // 2, noise=0.0)
    guess = continue_waves(model, test[:length], length // 2)
    one_step = loss_fn(model, test).item()
    free_running = nn.mse(guess, test[length:]).item()
    baseline = nn.mse(torch.zeros_like(test[length:]), test[length:]).item()
    out = Path(opts.out_dir) / "rnn.png"
    plot(out, losses, test, guess, length)
    print(f"final train loss: {sum(losses[-10:]) / len(losses[-10:]):.4f}")
    print(f"test next-step mse: {one_step:.4f}")
    print(
        f"test free-running mse over {length // 2} steps: {free_running:.4f} "
        f"(predicting zeros: {baseline:.4f})"
    )
    if compile_s:  # one batch shape: one graph for every step
        n = train_step.compile_count
        print(f"train step: {n} graph{'s' * (n != 1)} compiled, in {compile_s:.1f} s")
    print(
        f"time: {time.perf_counter() - start_time:.1f} s in all ({compile_s:.1f} s compiling); "
        f"wrote {out}"
    )


if __name__ == "__main__":
    main()
