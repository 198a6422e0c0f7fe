"""Tests for ``funcgrad/nn/_functionalize.py``: ``functionalize``.

The pure ``apply`` against the module itself: outputs and ``fg.grad`` gradients against the
module's own autograd, in evaluation and training (new buffers equal the running statistics the
module computes, and nothing given is modified), tied weights and buffers, buffers reassigned by
``forward``, strict key checks, ``fg.vmap`` (per-example gradients with BatchNorm in evaluation,
ensembles of stacked parameters) and ``torch.compile``; errors by message.
"""

from __future__ import annotations

import copy
from typing import Any

import helpers
import pytest
import torch
import torch.nn.functional as F

import funcgrad as fg
from funcgrad import nn
from funcgrad.testing import assert_trees_allclose

F64 = torch.float64


class Block(torch.nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False, dtype=F64)
        self.bn = torch.nn.BatchNorm2d(c, dtype=F64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn(self.conv(x)))


class SmallNet(torch.nn.Module):
    """A resnet-like module: conv stem, a residual block with BatchNorm, pooling, a head."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.stem = torch.nn.Conv2d(2, 4, 3, padding=1, dtype=F64)
            self.block = Block(4)
            self.head = torch.nn.Linear(4, 3, dtype=F64)
            with torch.no_grad():
                self.block.bn.weight.uniform_(0.5, 1.5)
                self.block.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        h = self.block(F.relu(self.stem(x)))
        return scale * self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


def module_grads(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    module.zero_grad(set_to_none=True)
    F.cross_entropy(module(x), y).backward()
    return {n: p.grad for n, p in module.named_parameters()}


def data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return helpers.t(6, 2, 5, 5, seed=seed), torch.arange(6) % 3


@pytest.mark.parametrize("train", [False, True])
def test_apply_matches_module_outputs_and_gradients(train: bool) -> None:
    """apply's output and fg.grad gradients equal the module's output and autograd gradients,
    in evaluation and in training."""
    module = SmallNet().train(train)
    reference = copy.deepcopy(module)
    apply, params, buffers = nn.functionalize(module)
    x, y = data()

    def loss(p: Any) -> tuple[torch.Tensor, Any]:
        out, new_buffers = apply(p, buffers, x)
        return F.cross_entropy(out, y), new_buffers

    grads, _ = fg.grad(loss, has_aux=True)(params)
    assert_trees_allclose(grads, module_grads(reference, x, y), rtol=1e-10, atol=1e-12)
    assert_trees_allclose(apply(params, buffers, x)[0], reference(x), rtol=1e-10, atol=1e-12)


def test_training_returns_new_buffers_and_modifies_nothing() -> None:
    """In training, new_buffers hold the statistics the module itself would have after the
    call; the params and buffers given, and the module's own tensors, are unchanged."""
    module = SmallNet().train()
    reference = copy.deepcopy(module)
    apply, params, buffers = nn.functionalize(module)
    before = copy.deepcopy((params, buffers, dict(module.state_dict())))
    x, _ = data()
    _out, new_buffers = apply(params, buffers, x)
    reference(x)
    assert_trees_allclose(new_buffers, dict(reference.named_buffers()), rtol=1e-12, atol=1e-14)
    assert int(new_buffers["block.bn.num_batches_tracked"]) == 1
    assert fg.tree.equal((params, buffers, dict(module.state_dict())), before)
    # Feeding the new buffers back continues the running averages, like a second call.
    _, newer = apply(params, new_buffers, x)
    reference(x)
    assert_trees_allclose(newer, dict(reference.named_buffers()), rtol=1e-12, atol=1e-14)


def test_eval_buffers_come_back_with_equal_values() -> None:
    """In evaluation new_buffers equal the buffers given (fresh tensors)."""
    apply, params, buffers = nn.functionalize(SmallNet().eval())
    _, new_buffers = apply(params, buffers, data()[0])
    assert fg.tree.equal(new_buffers, buffers)


def test_params_are_views_of_the_module_tensors() -> None:
    """params and buffers are detached, named like named_parameters/named_buffers, and share
    memory with the module (no copy)."""
    module = SmallNet()
    _, params, buffers = nn.functionalize(module)
    assert list(params) == [n for n, _ in module.named_parameters()]
    assert list(buffers) == [n for n, _ in module.named_buffers()]
    for name, p in module.named_parameters():
        assert not params[name].requires_grad
        assert params[name].data_ptr() == p.data_ptr()


def test_keyword_arguments_pass_through() -> None:
    """Keyword arguments reach forward."""
    module = SmallNet().eval()
    apply, params, buffers = nn.functionalize(module)
    x, _ = data()
    assert_trees_allclose(apply(params, buffers, x, scale=2.0)[0], module(x, scale=2.0))


class Tied(torch.nn.Module):
    """An encoder and decoder sharing one weight, and two names for one buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(3, 4, bias=False, dtype=F64)
        self.decoder = torch.nn.Linear(4, 3, bias=False, dtype=F64)
        self.decoder.weight = self.encoder.weight  # type: ignore[assignment]
        self.register_buffer("shift", torch.ones(3, dtype=F64))
        self.decoder.register_buffer("shift", self.shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.encoder(x), self.decoder.weight.T) + self.shift + self.decoder.shift


def test_tied_weights_stay_tied() -> None:
    """A tied weight appears once; a new value reaches every use, and its gradient sums
    both uses (as the module's own autograd)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = Tied()
    apply, params, buffers = nn.functionalize(module)
    assert list(params) == ["encoder.weight"]
    assert list(buffers) == ["shift"]
    x = helpers.t(2, 3, seed=1)
    new = {"encoder.weight": helpers.t(4, 3, seed=2)}
    w = new["encoder.weight"]
    expected = (x @ w.T) @ w + 2 * torch.ones(3, dtype=F64)
    assert_trees_allclose(apply(new, buffers, x)[0], expected)
    assert_trees_allclose(apply(params, {"shift": torch.zeros(3, dtype=F64)}, x)[0], module(x) - 2)
    grads = fg.grad(lambda p: apply(p, buffers, x)[0].square().sum())(params)
    module.zero_grad()
    module(x).square().sum().backward()
    assert_trees_allclose(grads, {"encoder.weight": module.encoder.weight.grad})


class Counter(torch.nn.Module):
    """Reassigns a buffer in forward (no in-place write)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls = self.calls + 1
        return x * self.calls


def test_reassigned_buffers_are_returned() -> None:
    """A buffer that forward rebinds comes back in new_buffers; the module keeps its own."""
    module = Counter()
    apply, params, buffers = nn.functionalize(module)
    out, new_buffers = apply(params, buffers, torch.ones(2))
    assert float(new_buffers["calls"]) == 1.0
    out, new_buffers = apply(params, new_buffers, torch.ones(2))
    assert_trees_allclose(out, torch.full((2,), 2.0))
    assert float(module.calls) == 0.0
    assert float(buffers["calls"]) == 0.0


def test_parametrized_modules() -> None:
    """Modules with parametrizations (weight_norm; spectral_norm, which updates its power
    iteration buffers in place during training) give the module's gradients and buffers."""
    parametrizations = torch.nn.utils.parametrizations
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = torch.nn.Sequential(
            parametrizations.weight_norm(torch.nn.Linear(3, 4, dtype=F64)),
            parametrizations.spectral_norm(torch.nn.Linear(4, 2, dtype=F64)),
        )
    reference = copy.deepcopy(module)
    apply, params, buffers = nn.functionalize(module)
    assert "0.parametrizations.weight.original0" in params
    assert "1.parametrizations.weight.0._u" in buffers
    x = helpers.t(5, 3, seed=1)

    def loss(p: Any) -> tuple[torch.Tensor, Any]:
        out, new_buffers = apply(p, buffers, x)
        return out.square().sum(), new_buffers

    grads, new_buffers = fg.grad(loss, has_aux=True)(params)
    reference(x).square().sum().backward()
    expected = {n: p.grad for n, p in reference.named_parameters()}
    assert_trees_allclose(grads, expected, rtol=1e-10, atol=1e-12)
    assert_trees_allclose(new_buffers, dict(reference.named_buffers()), rtol=1e-10, atol=1e-12)
    assert not torch.equal(
        new_buffers["1.parametrizations.weight.0._u"], buffers["1.parametrizations.weight.0._u"]
    )
    assert fg.tree.equal(dict(module.named_buffers()), buffers)


def test_strict_key_errors_name_the_keys() -> None:
    """Missing and unexpected keys of params and buffers are listed by name."""
    apply, params, buffers = nn.functionalize(SmallNet())
    x, _ = data()
    bad = {k: v for k, v in params.items() if k != "head.bias"} | {"head.b": params["head.bias"]}
    with pytest.raises(
        ValueError,
        match=r"nn\.functionalize: the params given to apply do not match the params of the SmallNet: missing keys \['head\.bias'\]; unexpected keys \['head\.b'\]\. Pass the params that functionalize returned",
    ):
        apply(bad, buffers, x)
    with pytest.raises(
        ValueError,
        match=r"the buffers given to apply .* missing keys \['block\.bn\.num_batches_tracked', 'block\.bn\.running_mean', 'block\.bn\.running_var'\]\.",
    ):
        apply(params, {}, x)
    with pytest.raises(
        TypeError,
        match=r"nn\.functionalize: apply's params must be a dict of tensors by name .* got list",
    ):
        apply(list(params.values()), buffers, x)
    with pytest.raises(
        TypeError, match=r"nn\.functionalize: expected a torch\.nn\.Module, got function"
    ):
        nn.functionalize(lambda x: x)  # type: ignore[arg-type]


def test_non_strict_takes_missing_tensors_from_the_module() -> None:
    """strict=False: params and buffers left out come from the module, whose buffers still
    do not change in training; new_buffers covers every buffer."""
    module = SmallNet().train()
    reference = copy.deepcopy(module)
    apply, params, _buffers = nn.functionalize(module, strict=False)
    before = copy.deepcopy(dict(module.state_dict()))
    x, _ = data()
    out, new_buffers = apply({"head.bias": params["head.bias"] + 1}, {}, x)
    assert_trees_allclose(out, reference(x) + 1, rtol=1e-10, atol=1e-12)
    assert_trees_allclose(new_buffers, dict(reference.named_buffers()), rtol=1e-12, atol=1e-14)
    assert fg.tree.equal(dict(module.state_dict()), before)


def test_per_example_gradients_with_batch_norm_in_eval() -> None:
    """fg.vmap(fg.grad) over examples (each a batch of one, BatchNorm in evaluation) equals
    the module's autograd gradient of each example alone."""
    module = SmallNet().eval()
    apply, params, buffers = nn.functionalize(module)
    x, y = data()

    def loss(p: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(apply(p, buffers, x[None])[0], y[None])

    per_example = fg.vmap(fg.grad(loss), in_axes=(None, 0, 0))(params, x, y)
    loop = [module_grads(module, x[i : i + 1], y[i : i + 1]) for i in range(len(x))]
    assert_trees_allclose(per_example, fg.tree.stack(loop), rtol=1e-10, atol=1e-12)


def test_ensemble_of_functionalized_modules() -> None:
    """Stacked params and buffers of three modules under fg.vmap(apply), in training, equal
    each module's own call (outputs and new buffers)."""
    modules = [SmallNet(seed=s).train() for s in range(3)]
    trees = [nn.functionalize(m)[1:] for m in modules]
    apply = nn.functionalize(modules[0])[0]
    params = fg.tree.stack([p for p, _ in trees])
    buffers = fg.tree.stack([b for _, b in trees])
    x, _ = data()
    out, new_buffers = fg.vmap(apply, in_axes=(0, 0, None))(params, buffers, x)
    references = [copy.deepcopy(m) for m in modules]
    assert_trees_allclose(out, torch.stack([m(x) for m in references]), rtol=1e-10, atol=1e-12)
    expected = fg.tree.stack([dict(m.named_buffers()) for m in references])
    assert_trees_allclose(new_buffers, expected, rtol=1e-12, atol=1e-14)


def test_apply_under_jit() -> None:
    """A train step through apply jits (aot_eager, one graph) and equals eager."""
    module = SmallNet().train()
    apply, params, buffers = nn.functionalize(module)
    x, y = data()

    def step(p: Any, b: Any) -> Any:
        def loss(p: Any) -> Any:
            out, new = apply(p, b, x)
            return F.cross_entropy(out, y), new

        return fg.grad(loss, has_aux=True)(p)

    jitted = fg.jit(step, backend="aot_eager")
    assert_trees_allclose(jitted(params, buffers), step(params, buffers), rtol=1e-10, atol=1e-12)
    jitted(params, buffers)
    assert jitted.compile_count == 1
