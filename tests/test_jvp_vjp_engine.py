"""funcgrad's eager jvp and vjp engines (NOTE [jvp without torch's pytree] and NOTE [vjp
without torch's pytree] in ``funcgrad/_jvp_vjp.py``).

In eager mode ``jvp``, ``vjp`` and ``linearize`` run torch.func's steps themselves on flat
tuples. The law: every result is *bitwise* what ``torch.func.jvp``/``torch.func.vjp`` give (the
same operations in the same order), alone and composed with the other transforms (torch.func's
included, nested either way), whatever the grad and inference modes when ``vjp_fn`` is called;
saved tensor hooks are refused as torch.func refuses them, and an error leaves no transform
level behind. The numbers themselves are checked against JAX in ``test_jvp_vjp.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import _api_util, _grad, _jvp_vjp


def _equal(a: Any, b: Any) -> None:
    la, ta = fg.tree.flatten(a)
    lb, tb = fg.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert isinstance(x, torch.Tensor)
        assert isinstance(y, torch.Tensor)
        assert x.requires_grad == y.requires_grad
        assert torch.equal(x, y)


def _data(seed: int, n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, dtype=torch.float64, generator=g) for _ in range(n)]


def _f(x: torch.Tensor, y: torch.Tensor, unused: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.sin(x) * torch.exp(y), (x * y).sum(), torch.ones(2, dtype=x.dtype)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_vjp_is_bitwise_torch_func(seed: int) -> None:
    """Several primals and outputs, an output that needs no gradient, an unused primal (zeros),
    and vjp_fn called twice: the same bits as torch.func."""
    x, y, unused = _data(seed)
    ct = (*_data(seed + 1, 1), torch.tensor(0.5, dtype=torch.float64), torch.ones(2).double())
    out, vjp_fn = fg.vjp(_f, x, y, unused)
    ref_out, ref_fn = torch.func.vjp(_f, x, y, unused)
    _equal(out, ref_out)
    for _ in range(2):
        _equal(vjp_fn(ct), ref_fn(ct))
    assert torch.equal(vjp_fn(ct)[2], torch.zeros(4, dtype=torch.float64))


def test_has_aux_is_bitwise_torch_func() -> None:
    x, y, _ = _data(1)

    def f(x: torch.Tensor, y: torch.Tensor) -> Any:
        h = torch.tanh(x * y)
        return h.exp(), {"h": h, "tag": "aux"}

    out, vjp_fn, aux = fg.vjp(f, x, y, has_aux=True)
    ref_out, ref_fn, ref_h = torch.func.vjp(
        lambda x, y: (f(x, y)[0], f(x, y)[1]["h"]), x, y, has_aux=True
    )
    _equal(
        (out, aux["h"], vjp_fn(torch.ones(4).double())),
        (ref_out, ref_h, ref_fn(torch.ones(4).double())),
    )
    assert aux["tag"] == "aux"


def _vjp_sum(vjp: Any) -> Any:
    def g(x: torch.Tensor) -> torch.Tensor:
        _, fn = vjp(lambda x: torch.sin(x) * x, x)
        return fn(torch.cos(x))[0].sum()

    return g


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        pytest.param(fg.grad, torch.func.grad, id="grad(vjp)"),
        pytest.param(fg.jacrev, torch.func.jacrev, id="jacrev(vjp)"),
        pytest.param(fg.jacfwd, torch.func.jacfwd, id="jacfwd(vjp)"),
    ],
)
def test_composed_with_other_transforms_is_bitwise_torch_func(ours: Any, theirs: Any) -> None:
    x = _data(2, 1)[0]
    _equal(ours(_vjp_sum(fg.vjp))(x), theirs(_vjp_sum(torch.func.vjp))(x))


def test_vmap_of_vjp_fn_is_bitwise_torch_func() -> None:
    x = _data(3, 1)[0]
    cts = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    _, fn = fg.vjp(lambda x: torch.sin(x) * x, x)
    _, ref_fn = torch.func.vjp(lambda x: torch.sin(x) * x, x)
    _equal(fg.vmap(fn)(cts), torch.func.vmap(ref_fn)(cts))


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
def test_vjp_fn_under_each_mode_is_bitwise_torch_func(mode: str) -> None:
    """vjp_fn builds a graph when grad mode is on at call time (as torch.func's does), none under
    no_grad, and runs under inference mode."""
    x = _data(5, 1)[0].requires_grad_()
    ct = torch.ones(4, dtype=torch.float64)
    _, fn = fg.vjp(lambda x: torch.exp(x) * x, x)
    _, ref_fn = torch.func.vjp(lambda x: torch.exp(x) * x, x)
    ctx = {
        "grad": torch.enable_grad,
        "no_grad": torch.no_grad,
        "inference_mode": torch.inference_mode,
    }
    with ctx[mode]():
        got, ref = fn(ct), ref_fn(ct)
    _equal(got, ref)
    assert got[0].requires_grad == (mode == "grad")


def test_linearize_is_bitwise_the_torch_func_transposition() -> None:
    """linearize transposes torch.func.vjp twice (NOTE [linearize by transposing twice])."""
    x = _data(6, 1)[0]
    t = _data(7, 1)[0]
    f = lambda x: torch.sin(x) * x.exp()  # noqa: E731
    out, jvp_fn = fg.linearize(f, x)
    ref_out, ref_vjp = torch.func.vjp(f, x)
    _, transposed = torch.func.vjp(lambda u: ref_vjp(u)[0], torch.zeros_like(ref_out))
    _equal((out, jvp_fn(t)), (ref_out, transposed(t)[0]))


def test_saved_tensor_hooks_are_refused() -> None:
    x = torch.ones(3, dtype=torch.float64)
    with (
        torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t),
        pytest.raises(RuntimeError, match=r"do not support saved tensor hooks"),
    ):
        fg.vjp(lambda x: x * x, x)


def test_an_error_leaves_no_transform_level_behind() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        fg.vjp(f, torch.ones(2))
    assert not _api_util.in_transform()
    _, fn = fg.vjp(lambda x: x * x, torch.ones(2))
    assert torch.equal(fn(torch.ones(2))[0], torch.full((2,), 2.0))


def test_without_the_level_primitives_torch_func_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, unused = _data(8)
    ct = (torch.ones(4).double(), torch.tensor(1.0).double(), torch.ones(2).double())
    out, fn = fg.vjp(_f, x, y, unused)
    fast = (out, fn(ct))
    monkeypatch.setattr(_grad, "_LEVEL_PRIMITIVES", False)
    monkeypatch.setattr(_jvp_vjp, "_LEVEL_PRIMITIVES", False)
    out, fn = fg.vjp(_f, x, y, unused)
    _equal((out, fn(ct)), fast)


# --------------------------------------------------------------------------------------------
# jvp
# --------------------------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_jvp_is_bitwise_torch_func(seed: int) -> None:
    """Several primals and outputs, an output independent of the inputs (zero tangent)."""
    x, y, unused = _data(seed)
    tx, ty, tu = _data(seed + 1)
    got = fg.jvp(_f, (x, y, unused), (tx, ty, tu))
    ref = torch.func.jvp(_f, (x, y, unused), (tx, ty, tu))
    _equal(got, ref)
    assert torch.equal(got[1][2], torch.zeros(2, dtype=torch.float64))


def test_jvp_has_aux_is_bitwise_torch_func() -> None:
    x, y, _ = _data(9)

    def f(x: torch.Tensor, y: torch.Tensor) -> Any:
        h = torch.tanh(x * y)
        return h.exp(), {"h": h, "tag": "aux"}

    out, t_out, aux = fg.jvp(f, (x, y), (y, x), has_aux=True)
    ref = torch.func.jvp(lambda x, y: (f(x, y)[0], f(x, y)[1]["h"]), (x, y), (y, x), has_aux=True)
    _equal((out, t_out, aux["h"]), ref)
    assert aux["tag"] == "aux"


def _second_derivative(jvp: Any, inner: Any) -> Any:
    def g(x: torch.Tensor) -> torch.Tensor:
        return inner(lambda x: torch.sin(x) * x.exp(), (x,), (torch.ones_like(x),))[1]

    return lambda x: jvp(g, (x,), (torch.ones_like(x),))[1]


@pytest.mark.parametrize(
    ("outer", "inner"),
    [
        pytest.param(fg.jvp, fg.jvp, id="fg(fg)"),
        pytest.param(torch.func.jvp, fg.jvp, id="torch.func(fg)"),
        pytest.param(fg.jvp, torch.func.jvp, id="fg(torch.func)"),
    ],
)
def test_nested_jvp_is_bitwise_torch_func(outer: Any, inner: Any) -> None:
    """jvp of jvp, with either engine outside: the nesting count is torch's own."""
    x = _data(10, 1)[0]
    got = _second_derivative(outer, inner)(x)
    _equal(got, _second_derivative(torch.func.jvp, torch.func.jvp)(x))
    assert not _api_util.in_transform()


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        pytest.param(fg.vmap, torch.func.vmap, id="vmap(jvp)"),
        pytest.param(fg.jacrev, torch.func.jacrev, id="jacrev(jvp)"),
    ],
)
def test_jvp_composed_is_bitwise_torch_func(ours: Any, theirs: Any) -> None:
    xs = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(11))

    def tangent_of(jvp: Any) -> Any:
        return lambda x: jvp(lambda x: torch.sin(x) * x, (x,), (torch.cos(x),))[1]

    _equal(ours(tangent_of(fg.jvp))(xs), theirs(tangent_of(torch.func.jvp))(xs))


def test_grad_of_jvp_is_bitwise_torch_func() -> None:
    x = _data(12, 1)[0]

    def loss(jvp: Any) -> Any:
        return lambda x: jvp(lambda x: torch.exp(x) * x, (x,), (x.cos(),))[1].sum()

    _equal(fg.grad(loss(fg.jvp))(x), torch.func.grad(loss(torch.func.jvp))(x))


def test_a_jvp_error_leaves_no_level_behind() -> None:
    from torch._functorch import eager_transforms

    nesting = eager_transforms.JVP_NESTING

    def f(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        fg.jvp(f, (torch.ones(2),), (torch.ones(2),))
    assert nesting == eager_transforms.JVP_NESTING
    assert not _api_util.in_transform()
    _equal(
        fg.jvp(torch.sin, (torch.zeros(2),), (torch.ones(2),)),
        (torch.zeros(2), torch.ones(2)),
    )


def test_jvp_without_the_primitives_torch_func_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, unused = _data(13)
    primals, tangents = (x, y, unused), tuple(_data(14))
    fast = fg.jvp(_f, primals, tangents)
    monkeypatch.setattr(_jvp_vjp, "_JVP_PRIMITIVES", False)
    _equal(fg.jvp(_f, primals, tangents), fast)
