"""A small GAN on a ring of 8 Gaussians: two parameter trees, two optimizers, no module state.

The generator maps 2-D Gaussian noise to points in the plane; the discriminator scores points
as real or generated. Both are ``fg.nn.MLP`` pytrees, each with its own ``fg.optim.adam`` state,
and one training step (a discriminator update, then a generator update against the updated
discriminator, with the non-saturating loss of Goodfellow et al., 2014) is a pure function of
``(generator, discriminator, their optimizer states, real points, noise)``, compiled with
``fg.jit``. Every random number comes from an explicit ``funcgrad.random`` key.

The data are 8 Gaussians (standard deviation 0.05) on a circle of radius 2. Progress is measured
the usual way for this toy problem: the generated points' distance to the nearest mode, the
fraction of "high-quality" points (within 3 standard deviations of a mode) and the number of
modes that received at least 1% of them. The plot shows generated points against the data.

    python examples/gan.py            # ~40 s on 2 CPU cores, 25-30 s of it compiling
    python examples/gan.py --smoke    # a quick check, for CI
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

import funcgrad as fg
from funcgrad import nn, optim, random

MODES, RADIUS, STD = 8, 2.0, 0.05
ANGLES = torch.arange(MODES) * (2 * math.pi / MODES)
CENTERS = RADIUS * torch.stack([ANGLES.cos(), ANGLES.sin()], 1)  # (8, 2)


def sample_data(key: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Points of the ring of Gaussians, of shape ``shape + (2,)``."""
    k_mode, k_noise = random.split(key)
    modes = random.randint(k_mode, shape, 0, MODES)
    return CENTERS[modes] + STD * random.normal(k_noise, (*shape, 2))


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return nn.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def d_loss(disc: nn.MLP, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss: real points are 1, generated ones 0."""
    return bce(disc(real), 1.0) + bce(disc(fake), 0.0)


def g_loss(gen: nn.MLP, disc: nn.MLP, z: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating loss: make the discriminator call its points real."""
    return bce(disc(gen(z)), 1.0)


def make_step(g_opt: optim.GradientTransformation, d_opt: optim.GradientTransformation) -> Any:
    def step(
        gen: nn.MLP, disc: nn.MLP, g_state: Any, d_state: Any, real: torch.Tensor, z: torch.Tensor
    ) -> tuple[nn.MLP, nn.MLP, Any, Any, torch.Tensor, torch.Tensor]:
        fake = fg.stop_gradient(gen(z))
        dl, d_grads = fg.value_and_grad(d_loss)(disc, real, fake)
        updates, d_state = d_opt.update(d_grads, d_state, disc)
        disc = optim.apply_updates(disc, updates)
        gl, g_grads = fg.value_and_grad(g_loss)(gen, disc, z)
        updates, g_state = g_opt.update(g_grads, g_state, gen)
        gen = optim.apply_updates(gen, updates)
        return gen, disc, g_state, d_state, dl, gl

    return step


def quality(points: torch.Tensor) -> dict[str, float]:
    """Distance to the nearest mode, fraction of high-quality points, modes covered."""
    dist, nearest = torch.cdist(points, CENTERS).min(1)
    good = dist < 3 * STD
    counts = torch.bincount(nearest[good], minlength=MODES)
    return {
        "distance": dist.mean().item(),
        "high_quality": good.float().mean().item(),
        "modes": int((counts >= 0.01 * len(points)).sum()),
    }


def plot(
    path: Path, history: dict[str, list[float]], data: torch.Tensor, fake: torch.Tensor
) -> None:
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_loss, ax_quality, ax_points = fig.subplots(1, 3)
    window = max(1, len(history["d_loss"]) // 100)
    for name in ("d_loss", "g_loss"):
        smooth = torch.tensor(history[name]).unfold(0, window, window).mean(1)
        ax_loss.plot(torch.arange(len(smooth)) * window, smooth, label=name.replace("_", " "))
    ax_loss.set(xlabel="step", ylabel="loss", title="losses (smoothed)")
    ax_loss.legend()
    ax_quality.plot(history["eval_step"], history["high_quality"], label="high-quality fraction")
    ax_quality.plot(
        history["eval_step"], [m / MODES for m in history["modes"]], label="modes covered / 8"
    )
    ax_quality.set(xlabel="step", ylim=(-0.05, 1.05), title="sample quality")
    ax_quality.legend()
    ax_points.scatter(*data.T, s=2, alpha=0.3, label="data")
    ax_points.scatter(*fake.T, s=2, alpha=0.3, label="generated")
    ax_points.set(aspect="equal", xlim=(-3, 3), ylim=(-3, 3), title="data vs generated")
    ax_points.legend(markerscale=5)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=3000,
        help="training steps (one D and one G update each) (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="real and generated points per step (default: %(default)s)",
    )
    parser.add_argument(
        "--hidden", type=int, default=128, help="hidden units of both MLPs (default: %(default)s)"
    )
    parser.add_argument(
        "--latent",
        type=int,
        default=2,
        help="dimension of the generator's noise (default: %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="Adam learning rate of both networks (b1 = 0.5) (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=100,
        help="steps between sample-quality measurements (default: %(default)s)",
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
        help="seed of the networks, data and noise (default: %(default)s)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("runs/gan"),
        help="where the plot goes (default: %(default)s)",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run (seconds), for CI")
    opts = parser.parse_args()
    if opts.smoke:
        opts.steps, opts.eval_every = 300, 50
    backend = opts.backend or ("eager" if opts.smoke else "inductor")
    opts.out_dir.mkdir(parents=True, exist_ok=True)

    key = random.key(opts.seed)
    k_gen, k_disc, k_data, k_z, k_eval, k_show = random.split(key, 6)
    gen = nn.MLP(opts.latent, [opts.hidden, opts.hidden], 2, key=k_gen)
    disc = nn.MLP(2, [opts.hidden, opts.hidden], 1, key=k_disc)
    g_opt = optim.adam(opts.lr, b1=0.5)
    d_opt = optim.adam(opts.lr, b1=0.5)
    g_state, d_state = g_opt.init(gen), d_opt.init(disc)
    step = make_step(g_opt, d_opt)
    if backend != "eager":  # donate both models and both states: updated in their own memory
        step = fg.jit(step, donate_argnums=(0, 1, 2, 3), backend=backend)

    # All the training randomness, drawn up front from two keys (a few MB).
    real = sample_data(k_data, (opts.steps, opts.batch_size))
    noise = random.normal(k_z, (opts.steps, opts.batch_size, opts.latent))
    eval_z = random.normal(k_eval, (2000, opts.latent))
    first = quality(gen(eval_z))
    history: dict[str, list[float]] = {k: [] for k in ("d_loss", "g_loss", "eval_step")}
    history |= {k: [v] for k, v in first.items()}
    history["eval_step"].append(0)

    start = time.perf_counter()
    for i in (bar := tqdm(range(opts.steps), desc="GAN", unit="step")):
        gen, disc, g_state, d_state, dl, gl = step(gen, disc, g_state, d_state, real[i], noise[i])
        if i == 0:
            compile_s = time.perf_counter() - start
        history["d_loss"].append(dl.item())
        history["g_loss"].append(gl.item())
        if (i + 1) % opts.eval_every == 0:
            for k, v in quality(gen(eval_z)).items():
                history[k].append(v)
            history["eval_step"].append(i + 1)
        modes = history["modes"][-1]
        d, g = history["d_loss"][-1], history["g_loss"][-1]
        bar.set_postfix(d_loss=f"{d:.3f}", g_loss=f"{g:.3f}", modes=modes, refresh=False)
    elapsed = time.perf_counter() - start
    per_step = (elapsed - compile_s) / max(opts.steps - 1, 1)

    final = quality(gen(eval_z))
    path = opts.out_dir / "gan.png"
    with torch.no_grad():
        plot(path, history, sample_data(k_show, (2000,)), gen(eval_z))
    print(f"first step (compilation) {compile_s:.1f} s, then {per_step * 1e3:.2f} ms per step")
    print(f"trained {opts.steps} steps in {elapsed:.1f} s (backend: {backend})")
    print(f"plot: {path}")
    print(f"mean distance to the nearest mode: initial {first['distance']:.3f}")
    print(f"final mean distance to the nearest mode: {final['distance']:.3f}")
    print(f"final high-quality samples: {final['high_quality']:.3f}")
    print(f"final modes covered: {final['modes']}/{MODES}")


if __name__ == "__main__":
    main()
