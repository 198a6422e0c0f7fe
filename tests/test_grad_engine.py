"""funcgrad's eager gradient engine (NOTE [grad without torch's pytree] in ``funcgrad/_grad.py``).

In eager mode ``grad``/``value_and_grad`` run torch.func's steps themselves on a flat tuple. The
law: every result is *bitwise* what ``torch.func.grad_and_value`` gives (the same operations in the
same order), alone and composed with the other transforms; torch's level machinery still refuses
writes into captured tensors, saved tensor hooks are refused as torch.func refuses them, and an
error leaves no transform level behind. The numbers themselves are checked against JAX in
``test_grad.py``.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import _api_util, _grad


def _problem(seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = {
        "w1": torch.randn(5, 4, generator=g, dtype=torch.float64),
        "b1": torch.randn(4, generator=g, dtype=torch.float64),
        "w2": torch.randn(4, generator=g, dtype=torch.float64),
        "unused": torch.randn(3, generator=g, dtype=torch.float64),
    }
    return params, torch.randn(7, 5, generator=g, dtype=torch.float64)


def _loss(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]).square().mean()


def _loss_aux(p: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    h = torch.tanh(x @ p["w1"] + p["b1"])
    return (h @ p["w2"]).square().mean(), {"h": h, "n": 3, "tag": "aux"}


def _equal(a: Any, b: Any) -> None:
    la, ta = fg.tree.flatten(a)
    lb, tb = fg.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor)
            assert x.requires_grad == y.requires_grad
            assert torch.equal(x, y)
        else:
            assert x == y


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), argnums=st.sampled_from([0, 1, (0, 1), (1, 0)]))
def test_value_and_grad_is_bitwise_torch_func(seed: int, argnums: Any) -> None:
    """Single and tuple argnums, an unused leaf (zeros): the same bits as torch.func."""
    p, x = _problem(seed)
    got = fg.value_and_grad(_loss, argnums)(p, x)
    value, grads = torch.func.grad_and_value(_loss, argnums)(p, x)[::-1]
    _equal(got, (value, grads))
    if argnums == 0:
        assert torch.equal(got[1]["unused"], torch.zeros(3, dtype=torch.float64))


def test_has_aux_is_bitwise_torch_func() -> None:
    p, x = _problem(1)
    (value, aux), grads = fg.value_and_grad(_loss_aux, has_aux=True)(p, x)

    def tensors_only(p: Any, x: Any) -> Any:
        out, aux = _loss_aux(p, x)
        return out, aux["h"]

    ref_grads, (ref_value, ref_h) = torch.func.grad_and_value(tensors_only, has_aux=True)(p, x)
    _equal((value, aux["h"], grads), (ref_value, ref_h, ref_grads))
    assert (aux["n"], aux["tag"]) == (3, "aux")


def test_a_constant_output_has_zero_gradients() -> None:
    x = torch.randn(3, dtype=torch.float64)
    value, g = fg.value_and_grad(lambda x: torch.tensor(2.0, dtype=torch.float64))(x)
    assert torch.equal(g, torch.zeros(3, dtype=torch.float64))
    assert float(value) == 2.0


def _sum_of(g: Any) -> Any:
    return lambda x: g(x).sum()


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        pytest.param(lambda g: g, lambda g: g, id="grad"),
        pytest.param(
            lambda g: fg.grad(_sum_of(g)), lambda g: torch.func.grad(_sum_of(g)), id="grad(grad)"
        ),
        pytest.param(fg.vmap, torch.func.vmap, id="vmap(grad)"),
        pytest.param(fg.jacfwd, torch.func.jacfwd, id="jacfwd(grad)"),
        pytest.param(fg.jacrev, torch.func.jacrev, id="jacrev(grad)"),
    ],
)
def test_composed_with_other_transforms_is_bitwise_torch_func(ours: Any, theirs: Any) -> None:
    """The engine's levels nest with torch.func's as torch.func's own grad does."""
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def f(x: torch.Tensor) -> torch.Tensor:
        return (torch.sin(x) * x.cos()).sum() ** 2

    _equal(ours(fg.grad(f))(x), theirs(torch.func.grad(f))(x))


def test_outer_autograd_sees_the_gradient() -> None:
    """A gradient of an input that requires grad stays differentiable (a Hessian-vector product
    through torch.autograd), as with torch.func."""
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (torch.exp(x) * w).sum() ** 2

    v = torch.randn(3, dtype=torch.float64)
    got = torch.autograd.grad((fg.grad(f)(x) * v).sum(), (x, w))
    ref = torch.autograd.grad((torch.func.grad(f)(x) * v).sum(), (x, w))
    _equal(got, ref)


def test_a_captured_tensor_that_requires_grad_keeps_the_gradient_differentiable() -> None:
    """Only a closed-over tensor is tracked by torch.autograd (the input is not): the backward
    graph must still be built, as with torch.func."""
    x = torch.randn(3, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (torch.exp(x) * w).sum() ** 2

    got = fg.grad(f)(x)
    assert got.requires_grad
    _equal(torch.autograd.grad(got.sum(), w), torch.autograd.grad(torch.func.grad(f)(x).sum(), w))


def test_forward_mode_outside_sees_the_gradient() -> None:
    """A dual tensor (torch.autograd.forward_ad) in: the gradient's tangent is the
    Hessian-vector product, as with torch.func, though no backward graph is built."""
    import torch.autograd.forward_ad as fwad

    x = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    v = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def f(x: torch.Tensor) -> torch.Tensor:
        return (torch.sin(x) * x).sum() ** 2

    def tangent(grad: Any) -> Any:
        with fwad.dual_level():
            return fwad.unpack_dual(grad(f)(fwad.make_dual(x, v))).tangent

    got, ref = tangent(fg.grad), tangent(torch.func.grad)
    assert got is not None
    _equal(got, ref)
    hessian = torch.autograd.functional.hessian(f, x)
    torch.testing.assert_close(got, hessian @ v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("case", "expected"),
    [("top level", False), ("input requires grad", True), ("captured requires grad", True),
     ("under vmap", True), ("under grad", True)],
)  # fmt: skip
def test_the_backward_graph_is_built_only_when_it_can_be_used(
    case: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOTE [grad without torch's pytree]: create_graph=True only where something outside can
    differentiate the gradient."""
    seen: list[bool] = []
    real = torch.autograd.grad

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["create_graph"])
        return real(*args, **kwargs)

    w = torch.randn(3, dtype=torch.float64, requires_grad=case == "captured requires grad")
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=case == "input requires grad")

    def f(x: torch.Tensor) -> torch.Tensor:
        return (torch.exp(x) * w).sum() ** 2

    monkeypatch.setattr(torch.autograd, "grad", spy)
    if case == "under vmap":
        fg.vmap(fg.grad(f))(x)
    elif case == "under grad":
        torch.func.grad(lambda x: fg.grad(f)(x).sum())(x)
    else:
        fg.grad(f)(x)
    assert seen[:1] == [expected]


def test_writing_into_a_captured_tensor_is_still_refused() -> None:
    c = torch.ones(3, dtype=torch.float64)
    x = torch.ones(3, dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        c.add_(1)
        return (x * c).sum()

    with pytest.raises(RuntimeError, match=r"funcgrad\.grad: the function modified in place"):
        fg.grad(f)(x)
    assert torch.equal(c, torch.ones(3, dtype=torch.float64))


def test_saved_tensor_hooks_are_refused() -> None:
    x = torch.ones(3, dtype=torch.float64)
    with (
        torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t),
        pytest.raises(RuntimeError, match=r"do not support saved tensor hooks"),
    ):
        fg.grad(lambda x: (x * x).sum())(x)


def test_an_error_leaves_no_transform_level_behind() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        fg.grad(f)(torch.ones(2))
    assert not _api_util.in_transform()
    assert torch.equal(fg.grad(lambda x: (x * x).sum())(torch.ones(2)), torch.full((2,), 2.0))


def test_compiled_autograd_does_not_take_the_backward() -> None:
    """With torch's compiled autograd on, the gradient's backward still runs eagerly (as in
    torch.func): a plain backward goes to the compiler, funcgrad's does not."""
    import torch._dynamo.compiled_autograd as compiled_autograd

    graphs: list[Any] = []

    def compiler(gm: Any) -> Any:
        graphs.append(gm)
        return gm

    x = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    f = lambda x: (torch.sin(x) * x).sum()  # noqa: E731
    x_tracked = x.clone().requires_grad_()
    with compiled_autograd._enable(compiler):
        with warnings.catch_warnings():  # compiled autograd's own tracing reads a non-leaf .grad
            warnings.simplefilter("ignore", UserWarning)
            f(x_tracked).backward()  # on: a plain backward is compiled
        assert len(graphs) == 1
        got = fg.grad(f)(x)
    assert len(graphs) == 1
    _equal(got, torch.func.grad(f)(x))


def test_the_first_gradient_does_not_import_dynamo() -> None:
    """Eager gradients never need torch.compile: a program's first one costs milliseconds, not
    the second it takes to import torch._dynamo."""
    code = (
        "import sys, torch, funcgrad as fg\n"
        "g = fg.grad(lambda x: (x * x).sum())(torch.arange(3.0))\n"
        "assert g.tolist() == [0.0, 2.0, 4.0], g\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False"


def test_without_the_level_primitives_torch_func_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback (a torch without the primitives): torch.func.grad_and_value itself."""
    p, x = _problem(3)
    fast = fg.value_and_grad(_loss)(p, x)
    monkeypatch.setattr(_grad, "_LEVEL_PRIMITIVES", False)
    _equal(fg.value_and_grad(_loss)(p, x), fast)
