"""The example scripts run end to end (smoke mode) and learn something."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import funcgrad as fg

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLASSIFIER = EXAMPLES / "classifier.py"
# One line per epoch; the time in parentheses at its end varies from run to run.
EPOCH_LINE = re.compile(
    r"^epoch +(\d+)/(\d+) +train loss ([0-9.]+) acc ([0-9.]+) +test loss ([0-9.]+) "
    r"acc ([0-9.]+)",
    re.MULTILINE,
)


def run_classifier(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Runs examples/classifier.py with ``args`` and asserts that it succeeded (within
    ``timeout`` seconds: subprocess.run kills it and raises TimeoutExpired after that)."""
    for module in ("sklearn", "tqdm", "matplotlib"):  # the examples extra
        pytest.importorskip(module, reason="the classifier example needs the examples extra")
    proc = subprocess.run(
        [sys.executable, str(CLASSIFIER), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_classifier_smoke(tmp_path: Path) -> None:
    """Two smoke epochs (jitted, backend aot_eager): the loss goes down, the accuracy beats
    chance (10%) by far, the train step compiles once, and the checkpoints and plot exist."""
    stdout = run_classifier("--smoke", "--out-dir", str(tmp_path)).stdout
    epochs = EPOCH_LINE.findall(stdout)
    assert [(e[0], e[1]) for e in epochs] == [("1", "2"), ("2", "2")], stdout
    (_, _, train1, _, test1, _), (_, _, train2, _, test2, acc2) = epochs
    assert float(train2) < float(train1)
    assert float(test2) < float(test1)
    match = re.search(r"^final test accuracy: ([0-9.]+)$", stdout, re.MULTILINE)
    assert match, stdout
    assert match[1] == acc2
    assert float(match[1]) > 0.5
    assert "train step: 1 graph compiled" in stdout  # drop_last: one batch shape, one graph
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "ckpt_000000001.safetensors",
        "ckpt_000000002.safetensors",
    ]
    state = fg.io.load(tmp_path / "checkpoints" / "ckpt_000000002.safetensors")
    assert state["epoch"] == 2
    step_loss = state["history"]["step_loss"]  # the loss of every step, also down
    assert not step_loss.isnan().any()
    assert step_loss[-5:].mean() < step_loss[:5].mean()
    assert f"{state['history']['epoch'][-1, -1].item():.4f}" == acc2
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classifier_torch_loader_smoke(tmp_path: Path) -> None:
    """--loader torch: a torch DataLoader (2 worker processes, augmenting each image) through
    fg.data.prefetch feeds the same jitted step: the loss goes down, the accuracy beats chance
    by far, the step compiles once, and the run, its workers included, ends in bounded time."""
    stdout = run_classifier(
        "--smoke", "--loader", "torch", "--out-dir", str(tmp_path), timeout=180
    ).stdout
    loader = "loader: torch.utils.data.DataLoader, 2 worker processes, through fg.data.prefetch"
    assert loader in stdout, stdout
    epochs = EPOCH_LINE.findall(stdout)
    assert [(e[0], e[1]) for e in epochs] == [("1", "2"), ("2", "2")], stdout
    (_, _, train1, _, test1, _), (_, _, train2, _, test2, acc2) = epochs
    assert float(train2) < float(train1)
    assert float(test2) < float(test1)
    assert float(acc2) > 0.5
    assert "train step: 1 graph compiled" in stdout  # drop_last: one batch shape, one graph
    state = fg.io.load(tmp_path / "checkpoints" / "ckpt_000000002.safetensors")
    assert state["config"]["loader"] == "torch"
    assert state["config"]["workers"] == 2
    assert not state["history"]["step_loss"].isnan().any()  # 2 x 22 steps: every batch came


def test_classifier_torch_loader_reproducible(tmp_path: Path) -> None:
    """With --loader torch, the DataLoader's seeded generator makes a run reproducible: the
    shuffles and the workers' augmentations repeat, so two runs with the same seed print the
    same metrics (without fg.jit: seconds)."""
    args = ("--smoke", "--loader", "torch", "--backend", "eager", "--epochs", "1")

    def metrics(*extra: str) -> list[tuple[str, ...]]:
        stdout = run_classifier(*args, *extra, timeout=120).stdout
        return EPOCH_LINE.findall(stdout)

    first = metrics("--out-dir", str(tmp_path / "a"))
    assert len(first) == 1
    assert metrics("--out-dir", str(tmp_path / "b")) == first


def test_classifier_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stopped after epoch 1 and resumed, a run ends exactly where the uninterrupted run ends:
    the same epoch-2 metrics and, bit for bit, the same checkpoint. In this process and
    without fg.jit (resuming involves neither), so that it takes seconds."""
    for module in ("sklearn", "tqdm", "matplotlib"):
        pytest.importorskip(module, reason="the classifier example needs the examples extra")
    main = runpy.run_path(str(CLASSIFIER))["main"]
    full, part = tmp_path / "full", tmp_path / "part"
    smoke = ["--smoke", "--backend", "eager"]

    def run(*args: str | Path) -> str:
        main([*smoke, *map(str, args)])
        return capsys.readouterr().out

    with pytest.raises(SystemExit, match=r"--resume: no checkpoint in .*part"):
        run("--resume", "--out-dir", part)
    with pytest.raises(SystemExit, match=r"^2$"):  # argparse: usage error
        run("--stop-after", "0", "--out-dir", part)
    assert "--stop-after: expected a positive integer, got 0" in capsys.readouterr().err
    full_stdout = run("--out-dir", full)
    first = run("--stop-after", "1", "--out-dir", part)
    assert [e[0] for e in EPOCH_LINE.findall(first)] == ["1"]
    assert "stopped after epoch 1 of 2; continue with --resume" in first
    assert (part / "curves.png").exists()
    with pytest.raises(SystemExit, match=r"other settings: seed 0 \(now 1\)\."):
        run("--resume", "--seed", "1", "--out-dir", part)
    second = run("--resume", "--out-dir", part)
    assert "after epoch 1" in second
    assert EPOCH_LINE.findall(second) == EPOCH_LINE.findall(full_stdout)[1:]
    final = re.compile("^final .*$", re.MULTILINE)
    assert final.findall(second) == final.findall(full_stdout)
    name = "ckpt_000000002.safetensors"
    fg.testing.assert_trees_allclose(
        fg.io.load(part / "checkpoints" / name),
        fg.io.load(full / "checkpoints" / name),
        rtol=0,
        atol=0,
    )


def run_example(name: str, out: Path) -> str:
    """Runs ``examples/<name>.py --smoke`` writing to ``out``; returns its stdout.

    Asserts that it succeeded and wrote its plot. The run is single-threaded: on a small
    machine shared with other tests, torch's thread pool stalls waiting for busy cores.
    """
    for module in ("sklearn", "tqdm", "matplotlib"):  # the examples extra
        pytest.importorskip(module, reason="the examples need the examples extra")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--smoke", "--out-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return proc.stdout


def metric(stdout: str, label: str) -> float:
    """The number after ``label`` at the start of a line of ``stdout``."""
    match = re.search(rf"^{re.escape(label)} ?([-+0-9.e]+)", stdout, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{stdout}"
    return float(match[1])


def test_linear_regression_smoke(tmp_path: Path) -> None:
    """SGD on fg.grad recovers the true weights: the loss falls to the noise level."""
    stdout = run_example("linear_regression", tmp_path)
    assert metric(stdout, "final loss:") < 0.02 < metric(stdout, "initial loss:")
    assert metric(stdout, "max weight error:") < 0.05
    assert "check: passed" in stdout


def test_autograd_basics_smoke(tmp_path: Path) -> None:
    """Every derivative matches calculus, finite differences and torch.autograd in float64."""
    stdout = run_example("autograd_basics", tmp_path)
    assert metric(stdout, "max error:") < 1e-8
    assert "FAILED" not in stdout
    assert "check: passed" in stdout


def test_per_example_grads_smoke(tmp_path: Path) -> None:
    """DP-SGD learns (loss down, accuracy far above chance) and vmap beats the Python loop."""
    stdout = run_example("per_example_grads", tmp_path)
    assert metric(stdout, "final loss:") < metric(stdout, "initial loss:")
    assert metric(stdout, "final test accuracy:") > 0.5
    assert "they agree to 1e-5" in stdout
    assert metric(stdout, "vmap speedup over the Python loop:") > 1.0


def test_ensemble_smoke(tmp_path: Path) -> None:
    """One vmapped step equals the members' separate steps; every member and the ensemble
    learn."""
    stdout = run_example("ensemble", tmp_path)
    assert "one-step check: passed" in stdout
    assert metric(stdout, "one ensemble step vs 8 separate steps: max abs difference") < 1e-5
    assert metric(stdout, "final loss:") < metric(stdout, "initial loss:")
    assert len(re.findall(r"^member \d: test accuracy", stdout, re.MULTILINE)) == 8
    assert metric(stdout, "final mean member test accuracy:") > 0.5
    assert metric(stdout, "final ensemble test accuracy:") > 0.5


def test_maml_sine_smoke(tmp_path: Path) -> None:
    """After one inner step on held-out tasks, the meta-trained init beats the baseline."""
    stdout = run_example("maml_sine", tmp_path)
    assert metric(stdout, "final loss:") < metric(stdout, "initial loss:")
    match = re.search(r"^after 1 inner step: MAML ([0-9.]+), baseline ([0-9.]+)", stdout, re.M)
    assert match, stdout
    assert float(match[1]) < float(match[2])
    assert "check: passed" in stdout


def test_gan_smoke(tmp_path: Path) -> None:
    """The generator's points move from noise onto the ring: the distance to the nearest mode
    falls several-fold."""
    stdout = run_example("gan", tmp_path)
    initial = metric(stdout, "mean distance to the nearest mode: initial")
    assert metric(stdout, "final mean distance to the nearest mode:") < initial / 2


def test_from_torch_module_smoke(tmp_path: Path) -> None:
    """The functionally trained weights, loaded back with load_state_dict, give the module's
    own forward the functional model's outputs, and the model learned."""
    stdout = run_example("from_torch_module", tmp_path)
    assert metric(stdout, "module forward vs functional apply: max abs difference") < 1e-5
    assert metric(stdout, "module outputs changed by load_state_dict: max") > 0
    assert metric(stdout, "final loss:") < metric(stdout, "initial loss:")
    assert metric(stdout, "final test accuracy:") > 0.5
    assert "check: passed" in stdout


def test_rnn_smoke(tmp_path: Path) -> None:
    """A GRU trained with fg.lax.scan under fg.jit continues sine waves better than predicting
    zeros, both one step ahead and running free."""
    stdout = run_example("rnn", tmp_path)
    match = re.search(r"^test free-running mse over \d+ steps: ([0-9.]+) \(predicting zeros: "
                      r"([0-9.]+)\)", stdout, re.M)  # fmt: skip
    assert match, stdout
    assert float(match[1]) < float(match[2]) / 2
    assert metric(stdout, "test next-step mse:") < float(match[2]) / 4
    assert "1 graph compiled" in stdout
