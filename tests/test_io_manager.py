"""funcgrad.io.CheckpointManager: rotation and steps, crash safety under SIGKILL in the middle
of a save, and bit-identical resume of training in a fresh process."""

from __future__ import annotations

import contextlib
import inspect
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
import torch

import funcgrad as fg
from funcgrad import io, optim


def assert_bitwise_equal(a: Any, b: Any) -> None:
    """One structure, the same non-tensor leaves, and tensors equal byte for byte."""
    la, ta = fg.tree.flatten(a)
    lb, tb = fg.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert type(x) is type(y)
        if isinstance(x, torch.Tensor):
            assert (x.dtype, x.shape) == (y.dtype, y.shape)
            assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))
        else:
            assert x == y


# --------------------------------------------------------------------------------------------
# CheckpointManager
# --------------------------------------------------------------------------------------------


def _tree(step: int) -> dict[str, Any]:
    return {"w": torch.arange(4.0) * step, "step": step}


def test_manager_keeps_the_newest_and_saves_every_n(tmp_path: Any) -> None:
    """every=N saves multiples of N (or forced steps), keep=K keeps the K highest steps."""
    m = io.CheckpointManager(tmp_path / "run", keep=2, every=5)
    assert (m.latest_step(), m.all_steps()) == (None, [])
    saved = [s for s in range(23) if m.save(s, _tree(s))]
    assert saved == [0, 5, 10, 15, 20]
    assert m.save(22, _tree(22), force=True)
    assert m.all_steps() == [20, 22]
    assert sorted(os.listdir(tmp_path / "run")) == [
        "ckpt_000000020.safetensors",
        "ckpt_000000022.safetensors",
    ]
    assert_bitwise_equal(m.restore(), _tree(22))
    assert_bitwise_equal(m.restore(20, like=_tree(0)), _tree(20))
    assert m.save(torch.tensor(25), _tree(25))
    assert io.CheckpointManager(tmp_path / "run", keep=None).latest_step() == 25


def test_manager_ignores_and_removes_crash_temporaries(tmp_path: Any) -> None:
    """Temporaries of an interrupted save are neither steps nor left behind."""
    m = io.CheckpointManager(tmp_path, keep=3)
    m.save(1, _tree(1))
    leftover = tmp_path / ".ckpt_000000002.safetensors.0123abcd.tmp"
    leftover.write_bytes(b"half a file")
    (tmp_path / "notes.txt").write_text("kept")
    assert m.all_steps() == [1]
    io.CheckpointManager(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["ckpt_000000001.safetensors", "notes.txt"]


def test_manager_errors(tmp_path: Any) -> None:
    """Bad arguments and missing checkpoints are clear errors."""
    m = io.CheckpointManager(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoints in"):
        m.restore()
    m.save(3, _tree(3))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 4 .* steps saved are \[3\]"):  # fmt: skip
        m.restore(4)
    with pytest.raises(TypeError, match=r"step must be an int, got 1\.5"):
        m.save(1.5, _tree(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        m.save(-1, _tree(1))
    for kw in ({"keep": 0}, {"every": 0}, {"keep": 1.5}):
        with pytest.raises(ValueError, match="must be a positive int or None"):
            io.CheckpointManager(tmp_path, **kw)


# --------------------------------------------------------------------------------------------
# Crash safety: SIGKILL in the middle of saving
# --------------------------------------------------------------------------------------------


def _kill_tree(step: int) -> dict[str, Any]:
    """A ~4 MB tree whose every value depends on the step."""
    return {
        "w": torch.arange(1_000_000, dtype=torch.float32) + step,
        "b": torch.full((1000,), step, dtype=torch.int64),
        "step": step,
        "tag": f"step-{step}",
    }


# One process imports torch once and forks a saver per trial; the test SIGKILLs the saver
# after a random delay. Forking from a single-threaded process that has not run torch ops is
# safe, and costs milliseconds instead of an import of torch per trial.
_ZYGOTE = """
import os, sys
import torch
torch.set_num_threads(1)
from typing import Any
from funcgrad import io
{source}
print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        manager, step = io.CheckpointManager(sys.argv[1], keep=2), int(line)
        while True:
            manager.save(step, _kill_tree(step))
            step += 1
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(os.WIFSIGNALED(status) and os.WTERMSIG(status), flush=True)
"""


def _line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the saver process did not answer"
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_during_save_leaves_every_checkpoint_intact(tmp_path: Any) -> None:
    """Killed at random moments while saving in a loop, the run's checkpoints always load
    exactly; the manager ignores and removes the half-written temporaries."""
    source = textwrap.dedent(inspect.getsource(_kill_tree))
    script = _ZYGOTE.format(source=source)
    rng = random.Random(0)
    temporaries = 0
    with subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        pid = None
        try:
            assert _line(proc) == "ready"
            io.CheckpointManager(tmp_path, keep=2).save(0, _kill_tree(0))
            for _ in range(20):
                start = io.CheckpointManager(tmp_path).latest_step() + 1  # type: ignore[operator]
                assert proc.stdin is not None
                proc.stdin.write(f"{start}\n")
                proc.stdin.flush()
                pid = int(_line(proc))
                time.sleep(rng.uniform(0.0, 0.06))
                os.kill(pid, signal.SIGKILL)
                assert _line(proc) == str(int(signal.SIGKILL))
                temporaries += sum(name.endswith(".tmp") for name in os.listdir(tmp_path))
                manager = io.CheckpointManager(tmp_path, keep=2)
                assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))
                steps = manager.all_steps()  # > keep if a kill fell between save and prune
                assert steps[-1] >= start - 1
                for step in steps:
                    assert_bitwise_equal(manager.restore(step), _kill_tree(step))
        finally:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
    assert temporaries > 0, "no kill landed inside a save: the test did not test anything"


# --------------------------------------------------------------------------------------------
# Exact resume in a fresh process
# --------------------------------------------------------------------------------------------

RESUME_STEPS, RESUME_AT, RESUME_SEED = 20, 10, 1234


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    return x, torch.tanh(x @ torch.randn(5, 2, generator=g))


def _train(run: dict[str, Any], until: int) -> dict[str, Any]:
    """Adam on a 2-layer MLP; the minibatch of step k is drawn from (seed, k) alone."""
    x, y = _data()
    opt = optim.adam(1e-2)

    def loss(p: Any, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(xb @ p["w1"] + p["b1"])
        return ((h @ p["w2"] - yb) ** 2).mean()

    params, state = run["params"], run["opt_state"]
    for k in range(run["step"], until):
        g = torch.Generator().manual_seed(run["seed"] * 100_003 + k)
        idx = torch.randperm(64, generator=g)[:16]
        _, grads = fg.value_and_grad(loss)(params, x[idx], y[idx])
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    return {"params": params, "opt_state": state, "step": until, "seed": run["seed"]}


def _fresh_run() -> dict[str, Any]:
    g = torch.Generator().manual_seed(7)
    params = {
        "w1": torch.randn(5, 16, generator=g) * 0.5,
        "b1": torch.zeros(16),
        "w2": torch.randn(16, 2, generator=g) * 0.5,
    }
    return {"params": params, "opt_state": optim.adam(1e-2).init(params), "step": 0, "seed": RESUME_SEED}  # fmt: skip


_RESUME_IMPORTS = """
from typing import Any
import torch
import funcgrad as fg
from funcgrad import io, optim
"""


def _resume_child(directory: str) -> None:
    """Run in a new process: restore the latest checkpoint, finish training, save the end."""
    manager = io.CheckpointManager(directory)
    run = manager.restore()
    manager.save(RESUME_STEPS, _train(run, RESUME_STEPS))


def test_resume_in_a_fresh_process_is_bit_identical(tmp_path: Any) -> None:
    """20 steps straight equal 10 steps, a checkpoint, and 10 more in a new process, bit for
    bit (parameters and optimizer state)."""
    straight = _train(_fresh_run(), RESUME_STEPS)
    manager = io.CheckpointManager(tmp_path)
    manager.save(RESUME_AT, _train(_fresh_run(), RESUME_AT))
    functions = "\n\n".join(inspect.getsource(f) for f in (_data, _train, _resume_child))
    constants = f"RESUME_STEPS, RESUME_AT, RESUME_SEED = {RESUME_STEPS}, {RESUME_AT}, {RESUME_SEED}"
    code = f"{_RESUME_IMPORTS}\n{constants}\n{functions}\n_resume_child({str(tmp_path)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert manager.all_steps() == [RESUME_AT, RESUME_STEPS]
    resumed = manager.restore(like=straight)
    assert_bitwise_equal(resumed, straight)
    assert not torch.equal(resumed["params"]["w1"], _fresh_run()["params"]["w1"])
