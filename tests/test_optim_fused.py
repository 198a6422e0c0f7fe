"""Tests for eager ``adam``/``adamw`` on torch's fused kernel (``funcgrad/optim/_fused.py``).

NOTE [fused Adam in eager mode]: in eager mode the aliases run ``torch._fused_adam_`` on
buffers they allocate; everywhere else, and for options the kernel lacks, the composed chain.
Checked here: which path runs where (a spy on the kernel), that both paths agree with each
other and with ``torch.optim.Adam`` (bit for bit with its fused step in float32), the state
layout, purity, and mixed dtypes (one kernel call per dtype group).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import helpers
import pytest
import torch

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

F64 = torch.float64


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of torch._fused_adam_ (each records how many tensors it updated)."""
    calls: list[int] = []
    original = torch._fused_adam_

    def spy(params: list[torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        calls.append(len(params))
        return original(params, *args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", spy)
    return calls


def _params(dtype: torch.dtype = F64) -> dict[str, torch.Tensor]:
    return {
        "w": helpers.t(3, 4, seed=1).to(dtype),
        "b": helpers.t(4, seed=2).to(dtype),
        "s": helpers.t(seed=3).to(dtype),
        "empty": torch.zeros(0, dtype=dtype),
    }


def _grad_fn(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A gradient that depends on the parameters, so trajectories feed back."""
    return {k: torch.sin(3.0 * v) + 0.5 * v for k, v in params.items()}


def _run(opt: optim.GradientTransformation, params: Any, steps: int) -> list[Any]:
    state = opt.init(params)
    outs = []
    for _ in range(steps):
        updates, state = opt.update(_grad_fn(params), state, params)
        params = optim.apply_updates(params, updates)
        outs.append((updates, state, params))
    return outs


def _schedule(count: torch.Tensor) -> torch.Tensor:
    return 0.02 / (1.0 + count.to(F64))


def _no_bias(params: Any) -> dict[str, bool]:
    return {k: k != "b" for k in params}


# alias config -> (fused alias, the composed chain with the same state layout)
CONFIGS: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "adam": (
        lambda: optim.adam(0.01),
        lambda: optim.chain(
            optim.identity(), optim.scale_by_adam(), optim.scale_by_learning_rate(0.01)
        ),
    ),
    "adam_l2": (
        lambda: optim.adam(0.01, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1),
        lambda: optim.chain(
            optim.add_decayed_weights(0.1),
            optim.scale_by_adam(0.8, 0.99, 1e-6),
            optim.scale_by_learning_rate(0.01),
        ),
    ),
    "adam_tensor_lr": (
        lambda: optim.adam(torch.tensor(0.01, dtype=F64)),
        lambda: optim.chain(
            optim.identity(),
            optim.scale_by_adam(),
            optim.scale_by_learning_rate(torch.tensor(0.01, dtype=F64)),
        ),
    ),
    "adam_schedule": (
        lambda: optim.adam(_schedule),
        lambda: optim.chain(
            optim.identity(), optim.scale_by_adam(), optim.scale_by_learning_rate(_schedule)
        ),
    ),
    "adamw_mask": (
        lambda: optim.adamw(0.01, weight_decay=0.1, mask=_no_bias),
        lambda: optim.chain(
            optim.scale_by_adam(),
            optim.add_decayed_weights(0.1, _no_bias),
            optim.scale_by_learning_rate(0.01),
        ),
    ),
    "adamw_tensors": (
        lambda: optim.adamw(torch.tensor(0.01, dtype=F64), weight_decay=torch.tensor(0.1)),
        lambda: optim.chain(
            optim.scale_by_adam(),
            optim.add_decayed_weights(torch.tensor(0.1)),
            optim.scale_by_learning_rate(torch.tensor(0.01, dtype=F64)),
        ),
    ),
    "adamw_schedule_no_decay": (
        lambda: optim.adamw(_schedule, weight_decay=0.0),
        lambda: optim.chain(
            optim.scale_by_adam(),
            optim.add_decayed_weights(0.0),
            optim.scale_by_learning_rate(_schedule),
        ),
    ),
}


# --------------------------------------------------------------------------------------------
# Where the kernel runs, and that both paths agree
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", list(CONFIGS))
def test_eager_alias_runs_fused_kernel_and_equals_composed_chain(
    config: str, kernel_calls: list[int]
) -> None:
    """Eagerly, each step is one kernel call over all the leaves; 40 steps in float64 equal
    the composed chain's to rounding, updates, states and parameters alike."""
    fused, composed = CONFIGS[config]
    got = _run(fused(), _params(), 40)
    assert kernel_calls == [4] * 40
    expected = _run(composed(), _params(), 40)
    assert len(kernel_calls) == 40  # the composed chain never calls the kernel
    assert_trees_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_state_layout_is_the_composed_chains() -> None:
    """The fused path's state has the structure and dtypes of the chain's, so a state saved
    by one path continues in the other."""
    for fused, composed in CONFIGS.values():
        params = _params()
        _, state, _ = _run(fused(), params, 2)[-1]
        _, reference, _ = _run(composed(), params, 2)[-1]
        assert fg.tree.structure(state) == fg.tree.structure(reference)
        assert [x.dtype for x in fg.tree.leaves(state)] == [
            x.dtype for x in fg.tree.leaves(reference)
        ]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _alongside_torch(
    opt: optim.GradientTransformation,
    make_torch: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    params: dict[str, torch.Tensor],
    steps: int,
) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Steps ``opt`` and a torch.optim optimizer (made from a copy of the parameters), each on
    the gradients at its own parameters; yields both parameter dicts after every step."""
    torch_params = [torch.nn.Parameter(v.clone()) for v in params.values()]
    torch_opt = make_torch(torch_params)
    state = opt.init(params)
    for _ in range(steps):
        updates, state = opt.update(_grad_fn(params), state, params)
        params = optim.apply_updates(params, updates)
        current = {k: p.detach() for k, p in zip(params, torch_params)}
        for p, g in zip(torch_params, _grad_fn(current).values()):
            p.grad = g
        torch_opt.step()
        yield params, {k: p.detach() for k, p in zip(params, torch_params)}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_bit_identical_to_torch_optim_fused_adam_in_float32(device: str) -> None:
    """p + (0 - x) is p - x exactly: 30 float32 steps equal torch.optim.Adam(fused=True)'s
    in-place steps bit for bit, with the same gradients."""
    params = fg.tree.map(lambda x: x.to(device), _params(torch.float32))
    fused = functools.partial(torch.optim.Adam, lr=0.01, fused=True)
    for ours, theirs in _alongside_torch(optim.adam(0.01), fused, params, 30):
        for k in ours:
            assert torch.equal(ours[k], theirs[k])


@pytest.mark.parametrize("alias", ["adam", "adamw"])
def test_follows_torch_optim_in_float64(alias: str) -> None:
    """60 float64 steps follow torch.optim.Adam / AdamW (foreach) to rtol 1e-10."""
    make = {"adam": (optim.adam, torch.optim.Adam), "adamw": (optim.adamw, torch.optim.AdamW)}
    ours, theirs = make[alias]
    torch_opt = functools.partial(theirs, lr=0.01, weight_decay=0.05, foreach=True)
    *_, (got, expected) = _alongside_torch(ours(0.01, weight_decay=0.05), torch_opt, _params(), 60)
    assert_trees_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_mixed_dtypes_one_kernel_call_per_group(kernel_calls: list[int]) -> None:
    """float32 and float64 leaves go in two kernel calls; each leaf equals its own run."""
    params = {"a": helpers.t(3, seed=1).float(), "b": helpers.t(2, 2, seed=2)}
    _, _, got = _run(optim.adam(0.01), params, 5)[-1]
    assert sorted(kernel_calls) == sorted([1, 1] * 5)
    _, _, a = _run(optim.adam(0.01), {"a": params["a"]}, 5)[-1]
    _, _, b = _run(optim.adam(0.01), {"b": params["b"]}, 5)[-1]
    assert torch.equal(got["a"], a["a"])
    assert torch.equal(got["b"], b["b"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_follows_float32(dtype: torch.dtype, kernel_calls: list[int]) -> None:
    """Half-precision leaves take the kernel and stay within their rounding of float32."""
    _, _, low = _run(optim.adam(0.01), _params(dtype), 10)[-1]
    _, _, full = _run(optim.adam(0.01), _params(torch.float32), 10)[-1]
    assert len(kernel_calls) == 20
    assert_trees_allclose(fg.tree.map(lambda x: x.float(), low), full, rtol=0.03, atol=0.03)


def test_update_is_pure(kernel_calls: list[int]) -> None:
    """Inputs keep their values and version counters: the kernel writes only fresh buffers."""
    opt = optim.adamw(0.01, weight_decay=0.1)
    params = _params()
    state = opt.update(_grad_fn(params), opt.init(params), params)[1]
    grads = _grad_fn(params)
    inputs = fg.tree.leaves((grads, state, params))
    values, versions = [x.clone() for x in inputs], [x._version for x in inputs]
    opt.update(grads, state, params)
    assert kernel_calls == [4, 4]
    assert_trees_allclose(inputs, values, rtol=0, atol=0)
    assert [x._version for x in inputs] == versions


# --------------------------------------------------------------------------------------------
# Where the composed chain runs instead
# --------------------------------------------------------------------------------------------


def _steps_in(transform: Callable[[Callable[..., Any]], Callable[..., Any]], opt: Any) -> Any:
    def steps(params: Any) -> Any:
        return _run(opt, params, 3)[-1][2]

    return transform(steps)


@pytest.mark.parametrize(
    "case",
    ["vmap", "grad", "jit", "requires_grad", "nesterov", "eps_root", "inject", "transposed"],
)
def test_composed_chain_where_the_kernel_cannot_run(case: str, kernel_calls: list[int]) -> None:
    """Inside transforms and jit, with autograd tracking, and for options or leaves the kernel
    lacks, the composed ops run (no kernel call) and give the composed chain's results."""
    params = _params()
    opt = optim.adam(0.01)
    reference = optim.chain(
        optim.identity(), optim.scale_by_adam(), optim.scale_by_learning_rate(0.01)
    )
    if case == "vmap":
        got = fg.vmap(_steps_in(lambda f: f, opt))(fg.tree.map(lambda x: x[None], params))
        got = fg.tree.map(lambda x: x[0], got)
    elif case == "grad":
        got = fg.grad(lambda p: _run(opt, p, 3)[-1][2]["w"].sum())(params)
        reference_grad = fg.grad(lambda p: _run(reference, p, 3)[-1][2]["w"].sum())(params)
        assert kernel_calls == []
        assert_trees_allclose(got, reference_grad, rtol=1e-12, atol=1e-15)
        return
    elif case == "jit":
        got = fg.jit(_steps_in(lambda f: f, opt), backend="aot_eager")(params)
    elif case == "requires_grad":
        leaf = {k: v.clone().requires_grad_() for k, v in params.items()}
        got = fg.tree.map(lambda x: x.detach(), _run(opt, leaf, 3)[-1][2])
    elif case in ("nesterov", "eps_root"):
        kw = {"nesterov": True} if case == "nesterov" else {"eps_root": 1e-8}
        opt = optim.adam(0.01, **kw)
        reference = optim.chain(
            optim.identity(), optim.scale_by_adam(**kw), optim.scale_by_learning_rate(0.01)
        )
        got = _run(opt, params, 3)[-1][2]
    elif case == "inject":  # every hyperparameter a tensor, betas included
        opt = optim.inject_hyperparams(optim.adam)(learning_rate=0.01)
        got = _run(opt, params, 3)[-1][2]
    else:  # a non-contiguous leaf
        params = {"w": helpers.t(4, 3, seed=1).t(), "b": helpers.t(4, seed=2)}
        got = _run(opt, params, 3)[-1][2]
    assert kernel_calls == []
    expected = _run(reference, params, 3)[-1][2]
    assert_trees_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_bad_input_gets_the_composed_chains_errors() -> None:
    """Errors are those of the chain's transformations: a state of another shape, AdamW without
    params, a mask that is not a prefix."""
    params = _params()
    opt = optim.adamw(0.01, weight_decay=0.1)
    with pytest.raises(ValueError, match=r"optim\.chain: expected the state of 3"):
        opt.update(_grad_fn(params), (), params)
    with pytest.raises(ValueError, match=r"add_decayed_weights: this transformation needs"):
        opt.update(_grad_fn(params), opt.init(params), None)
    for decay in (0.1, 0.0):  # a zero decay still needs params and a valid mask, as eagerly
        no_decay = optim.adamw(0.01, weight_decay=decay)
        with pytest.raises(ValueError, match=r"add_decayed_weights: this transformation needs"):
            no_decay.update(_grad_fn(params), no_decay.init(params))
        bad = optim.adamw(0.01, weight_decay=decay, mask={"w": True})
        with pytest.raises(ValueError, match=r"mask"):
            bad.update(_grad_fn(params), bad.init(params), params)
    state = opt.init({"w": params["w"]})
    with pytest.raises(ValueError, match=r"scale_by_adam: the state's first moment \(mu\)"):
        opt.update(_grad_fn(params), state, params)


def test_kernel_refusal_falls_back_to_the_composed_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where torch's kernel raises (a device or build without it), the step is the composed
    chain's, and that device and dtype are not tried again."""
    from funcgrad.optim import _fused

    calls: list[int] = []

    def refuse(params: list[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        calls.append(len(params))
        raise RuntimeError("not implemented for this device")

    monkeypatch.setattr(torch, "_fused_adam_", refuse)
    monkeypatch.setattr(_fused, "_REFUSED", set())
    fused, composed = CONFIGS["adamw_mask"]
    got = _run(fused(), _params(), 3)
    assert calls == [4]
    refused = _fused._REFUSED
    assert refused == {("cpu", F64)}
    assert_trees_allclose(got, _run(composed(), _params(), 3), rtol=0, atol=0)


def _cuda_configs() -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """CONFIGS with their tensor hyperparameters on the GPU."""
    configs = {k: v for k, v in CONFIGS.items() if "tensor" not in k}
    if torch.cuda.is_available():
        lr = torch.tensor(0.01, dtype=F64, device="cuda")
        configs["adam_tensor_lr"] = (
            lambda: optim.adam(lr),
            lambda: optim.chain(
                optim.identity(), optim.scale_by_adam(), optim.scale_by_learning_rate(lr)
            ),
        )
    return configs


@CUDA
@pytest.mark.parametrize("config", sorted(_cuda_configs()))
def test_cuda_kernel_equals_composed_chain(config: str, kernel_calls: list[int]) -> None:
    """On a GPU (steps and a tensor learning rate go to the kernel as device tensors): every
    step is one kernel call, and 20 float64 steps equal the composed chain's."""
    fused, composed = _cuda_configs()[config]
    params = fg.tree.map(lambda x: x.cuda(), _params())
    got = _run(fused(), params, 20)
    assert kernel_calls == [4] * 20
    expected = _run(composed(), params, 20)
    assert_trees_allclose(got, expected, rtol=1e-12, atol=1e-15)
