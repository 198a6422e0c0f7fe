"""funcgrad.distributed: collectives, sharded batches, ZeRO-1, failures and the torchrun example.

Multi-process tests start 2 processes on 127.0.0.1 (gloo on the CPU) running
``tests/_dist_worker.py``, each job bounded by a timeout after which its processes are killed
and the test fails; each worker checks its results against single-process references it
computes itself, and the collectives' results are also compared here with JAX's collectives
(``jax.lax.psum`` etc. under ``jax.vmap`` with an axis name). The other tests run in this
process, without a process group (NOTE [one process] in funcgrad/_distributed_collectives.py)
or with a group of one process.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _dist_worker  # the inputs of the collectives job
import helpers
import pytest
import torch
from hypothesis import given, settings

import funcgrad as fg
from funcgrad import distributed, optim
from funcgrad.testing import assert_trees_allclose

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "_dist_worker.py"
EXAMPLE = TESTS.parent / "examples" / "data_parallel.py"
JOB_TIMEOUT_S = 240.0  # a whole job; a hung job is killed and fails the test
AOT = "aot_eager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_job(job: str, tmp_path: Path, **env: str) -> list[tuple[int, str]]:
    """Runs ``job`` on 2 processes; returns each one's (exit code, stdout + stderr)."""
    port = str(free_port())
    procs, logs = [], []
    for rank in range(2):
        log = open(tmp_path / f"rank{rank}.log", "w+")  # noqa: SIM115 (closed below; not pipes)
        environ = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "FG_TEST_OUT": str(tmp_path),
            **env,
        }
        cmd = [sys.executable, "-W", "error", str(WORKER), job]
        procs.append(subprocess.Popen(cmd, env=environ, stdout=log, stderr=subprocess.STDOUT))
        logs.append(log)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {job!r} job did not finish within {JOB_TIMEOUT_S:g} s:\n{read(logs)}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [(p.returncode, read([log])) for p, log in zip(procs, logs)]
    for log in logs:
        log.close()
    return results


def read(logs: list[Any]) -> str:
    text = []
    for log in logs:
        log.seek(0)
        text.append(log.read())
    return "\n----\n".join(text)


# --------------------------------------------------------------------------------------------
# Two processes
# --------------------------------------------------------------------------------------------


def test_two_processes_collectives_data_zero(tmp_path: Path) -> None:
    """On 2 processes: psum, pmean, all_gather and broadcast of a float64/float32/bfloat16/int64
    tree equal their single-process equivalents, eagerly and under fg.jit, keep the dtypes and
    make one collective call per dtype (not per leaf); batches and shard slice the global batches
    of funcgrad.data.batches; data-parallel training (with MultiSteps accumulation) equals one
    process on the global batches; shard_optimizer's updates equal the unsharded optimizer's.
    Here: the results also match JAX's collectives."""
    results = run_job("collectives", tmp_path)
    for rank, (code, out) in enumerate(results):
        assert code == 0, out
        assert f"ok collectives rank {rank}" in out, out
    jax, _ = helpers.require_jax()
    trees = [_dist_worker.tree_for(r) for r in range(2)]
    stacked = helpers.to_jax(fg.tree.stack([fg.tree.map(lambda x: x.double(), t) for t in trees]))

    def collectives(tree: Any) -> Any:
        floats = {k: v for k, v in tree.items() if k != "i64"}
        return (
            jax.lax.psum(tree, "i"),
            jax.lax.pmean(floats, "i"),
            jax.lax.all_gather(tree, "i"),
            jax.tree.map(lambda x: jax.lax.all_gather(x, "i")[1], tree),  # broadcast(src=1)
        )

    want = helpers.to_torch(jax.vmap(collectives, axis_name="i")(stacked))
    for rank in range(2):
        got = fg.io.load(tmp_path / f"rank{rank}.safetensors")
        desired = fg.tree.map(lambda w, g, r=rank: w[r].to(g.dtype), want, got)
        assert_trees_allclose(got, desired)


def test_dead_peer_is_a_clear_error_within_the_timeout(tmp_path: Path) -> None:
    """When rank 1 is killed, rank 0's next psum raises an error naming the collective, the rank
    and the likely causes, well within the timeout, instead of hanging."""
    (code0, out0), (code1, _) = run_job("kill", tmp_path, FG_TEST_TIMEOUT="20")
    assert code1 == -9  # SIGKILL
    assert code0 == 0, out0
    seconds = float(re.search(r"error after ([0-9.]+) s", out0)[1])  # type: ignore[index]
    assert seconds < 20


def test_hung_peer_is_an_error_after_the_timeout(tmp_path: Path) -> None:
    """When rank 1 is alive but never reaches the collective, rank 0's all_gather raises after
    the timeout given to init (2 s here), and the message says so."""
    (code0, out0), (code1, out1) = run_job("hang", tmp_path, FG_TEST_TIMEOUT="2")
    assert code0 == 0, out0
    assert code1 == 0, out1
    seconds = float(re.search(r"error after ([0-9.]+) s", out0)[1])  # type: ignore[index]
    assert 1.5 < seconds < 15


def test_torchrun_example_smoke(tmp_path: Path) -> None:
    """examples/data_parallel.py under torchrun with 2 processes (gloo), ZeRO-1 and --check:
    it trains, and its final parameters equal one process's trained on the global batches."""
    for module in ("sklearn", "tqdm", "matplotlib"):  # the examples extra
        pytest.importorskip(module, reason="the example needs the examples extra")
    cmd = [
        sys.executable,
        "-W",
        "error",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(EXAMPLE),
        "--smoke",
        "--check",
        "--zero",
        "--out-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_TIMEOUT_S, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "2 processes (backend gloo)" in out
    assert "equal to float tolerance" in out
    accuracy = re.search(r"^final test accuracy: ([0-9.]+)$", proc.stdout, re.MULTILINE)
    assert accuracy, out
    assert float(accuracy[1]) > 0.3  # ten classes: chance is 0.1
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# One process: identities, the same data, the same optimizer
# --------------------------------------------------------------------------------------------


@settings(max_examples=15)
@given(helpers.nonempty_trees())
def test_one_process_collectives_are_identities(tree: Any) -> None:
    """Without a process group, psum, pmean and broadcast return their argument itself, and
    all_gather stacks it along a new axis of size 1 (JAX over an axis of size 1)."""
    assert distributed.psum(tree) is tree
    assert distributed.pmean(tree) is tree
    assert distributed.broadcast(tree, src=0) is tree
    assert_trees_allclose(distributed.all_gather(tree), fg.tree.stack([tree]))


def test_one_process_under_jit() -> None:
    """Inside fg.jit without a process group the collectives are identities as well."""
    tree = {"a": helpers.t(2, 3, seed=1), "n": torch.tensor([1, 2])}
    f = fg.jit(
        lambda t: (distributed.psum(t), distributed.all_gather(t), distributed.pmean(t["a"])),
        backend=AOT,
    )
    assert_trees_allclose(f(tree), (tree, fg.tree.stack([tree]), tree["a"]))


def test_one_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """With torchrun's variables for a world of one process, init creates a gloo group; the
    collectives are identities; a second init is an error; shutdown destroys the group."""
    port = str(free_port())
    for name, value in [("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", port)]:
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.init(backend="gloo", timeout=30)
    try:
        assert torch.distributed.is_initialized()
        assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
        x = {"x": torch.ones(2)}
        assert distributed.psum(x) is x
        with pytest.raises(RuntimeError, match=r"already initialised; call .*shutdown"):
            distributed.init()
    finally:
        distributed.shutdown()
    assert not torch.distributed.is_initialized()
    distributed.shutdown()  # a no-op now


def test_init_without_torchrun_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without RANK and WORLD_SIZE, init does nothing: one process, rank 0, on the CPU here."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    distributed.init()
    assert not torch.distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert distributed.device().type == expected


@pytest.mark.parametrize(("batch_size", "drop_last"), [(4, False), (4, True), (10, False)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_one_process_batches_are_data_batches(
    batch_size: int, drop_last: bool, shuffle: bool
) -> None:
    """With one process, distributed.batches yields funcgrad.data.batches' batches, and shard
    is the identity."""
    tree = {"x": helpers.t(10, 2, seed=3), "y": torch.arange(10)}
    key = fg.random.key(1) if shuffle else None
    ours = distributed.batches(tree, batch_size, key=key, drop_last=drop_last)
    theirs = fg.data.batches(tree, batch_size, key=key, drop_last=drop_last)
    assert len(ours) == len(theirs)
    assert repr(ours) == f"ShardedBatches(batches={len(theirs)}, rank=0, world_size=1)"
    assert_trees_allclose(list(ours), list(theirs))
    assert distributed.shard(tree) is tree


def test_one_process_shard_optimizer_is_the_optimizer() -> None:
    """With one process, shard_optimizer(adam) gives adam's updates and state, step by step."""
    params = {"w": helpers.t(3, 2, seed=4), "b": helpers.t(2, seed=5)}
    grads = helpers.gradient_sequence(params, 3)
    inner = optim.adam(0.1)
    sharded = distributed.shard_optimizer(inner)
    assert distributed.owned_leaves(params) is params
    assert_trees_allclose(
        helpers.run_updates(sharded, grads, params), helpers.run_updates(inner, grads, params)
    )


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["psum", "pmean", "all_gather", "broadcast"])
def test_non_tensor_leaf_is_an_error(name: str) -> None:
    """A leaf that is not a tensor is an error naming its path."""
    with pytest.raises(
        TypeError,
        match=rf"distributed.{name}: every leaf must be a tensor, "
        r"but tree\['lr'\] is float 0.1",
    ):
        getattr(distributed, name)({"w": torch.ones(2), "lr": 0.1})


def test_pmean_of_integers_is_an_error() -> None:
    """pmean keeps dtypes, so it refuses integer leaves and points to psum."""
    with pytest.raises(TypeError, match=r"pmean: .* but tree\[1\] is a torch.int64 .*Use psum"):
        distributed.pmean([torch.ones(2), torch.tensor([1, 2])])


@pytest.mark.parametrize("transform", ["grad", "vmap"])
def test_collectives_inside_transforms_are_an_error(transform: str) -> None:
    """Collectives inside grad or vmap raise and say to apply them to the results."""
    x = helpers.t(3, seed=6)
    if transform == "grad":
        fn = fg.grad(lambda x: distributed.psum(x).sum())
    else:
        fn = fg.vmap(distributed.psum)
    with pytest.raises(RuntimeError, match=r"psum: cannot run inside grad, vmap.*grads = psum"):
        fn(x)


@pytest.mark.parametrize(
    ("src", "error", "match"),
    [(1, ValueError, r"0 <= src < world_size\(\) = 1, got 1"), ("0", TypeError, "src must be")],
)
def test_broadcast_bad_src(src: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        distributed.broadcast([torch.ones(1)], src=src)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"backend": 3}, TypeError, "backend must be a string"),
        ({"backend": "glo"}, ValueError, "unknown backend 'glo'"),
        ({"timeout": 0}, ValueError, "timeout must be positive, got 0"),
        ({"timeout": "10"}, TypeError, "timeout must be a number of seconds"),
    ],
)
def test_init_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        distributed.init(**kwargs)


@pytest.mark.parametrize(
    ("tree", "error", "match"),
    [
        ({"x": torch.tensor(1.0)}, TypeError, r"shard: .*tree\['x'\] is a torch.float32 tensor"),
        ({"x": torch.ones(2), "y": torch.ones(3)}, ValueError, r"the sizes \[2, 3\]"),
    ],
)
def test_shard_bad_batches(tree: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        distributed.shard(tree)


def test_batches_errors_name_distributed_batches() -> None:
    """distributed.batches runs funcgrad.data.batches' checks under its own name."""
    with pytest.raises(ValueError, match=r"^funcgrad.distributed.batches: batch_size must be"):
        distributed.batches({"x": torch.ones(4)}, 0)
    with pytest.raises(TypeError, match=r"^funcgrad.distributed.batches: key must be"):
        distributed.batches({"x": torch.ones(4)}, 2, key=1)


def test_shard_optimizer_needs_a_gradient_transformation() -> None:
    with pytest.raises(TypeError, match=r"not optim.adam\)"):
        distributed.shard_optimizer(optim.adam)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got MultiSteps. Pass multi_steps.gradient_transf"):
        distributed.shard_optimizer(optim.MultiSteps(optim.sgd(0.1), 2))  # type: ignore[arg-type]
