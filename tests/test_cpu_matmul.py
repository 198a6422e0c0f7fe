"""fg.jit's float32 CPU matrix products on oneDNN (NOTE [CPU matmuls on oneDNN]).

The op against float64 products for every operand layout; which products the post-grad pass
rewrites, on graphs traced with fake tensors and then run for real; the environment variable and
the measured decision; and one inductor compilation of a train step, read back from the
generated code.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._inductor.utils import run_and_get_code
from torch.fx.experimental.proxy_tensor import make_fx

import funcgrad as fg
from funcgrad import _cpu_matmul

pytestmark = pytest.mark.skipif(
    not _cpu_matmul.available(), reason="this torch build has no oneDNN (mkldnn)"
)

OP = torch.ops.funcgrad.onednn_mm.default


def _layout(rows: int, cols: int, row_major: bool, gen: torch.Generator) -> torch.Tensor:
    if row_major:
        return torch.randn(rows, cols, generator=gen)
    return torch.randn(cols, rows, generator=gen).t()


@pytest.mark.parametrize("a_row_major", [True, False])
@pytest.mark.parametrize("b_row_major", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_op_equals_the_product_for_every_layout(
    a_row_major: bool, b_row_major: bool, with_bias: bool
) -> None:
    gen = torch.Generator().manual_seed(0)
    a = _layout(70, 90, a_row_major, gen)
    b = _layout(90, 50, b_row_major, gen)
    bias = torch.randn(50, generator=gen) if with_bias else None
    got = OP(a, b, bias)
    want = a.double() @ b.double() + (0 if bias is None else bias.double())
    assert got.dtype == torch.float32
    assert got.is_contiguous()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # what inductor plans with: the fake kernel's shape, dtype and strides
    with torch._subclasses.FakeTensorMode() as mode:
        fake = OP(mode.from_tensor(a), mode.from_tensor(b), None)
    assert (fake.shape, fake.dtype, fake.stride()) == (got.shape, got.dtype, got.stride())


_BIASES = {
    "contiguous": lambda n, gen: torch.randn(n, generator=gen),
    "strided": lambda n, gen: torch.randn(2 * n, generator=gen)[::2],
    "expanded": lambda n, gen: torch.randn((), generator=gen).expand(n),
}
_OPERANDS = {
    "row-major": lambda r, c, gen: torch.randn(r, c, generator=gen),
    "column-major": lambda r, c, gen: torch.randn(c, r, generator=gen).t(),
    "padded rows": lambda r, c, gen: torch.randn(r, c + 7, generator=gen)[:, :c],
    "every other column": lambda r, c, gen: torch.randn(r, 2 * c, generator=gen)[:, ::2],
    "expanded rows": lambda r, c, gen: torch.randn(1, c, generator=gen).expand(r, c),
    "expanded columns": lambda r, c, gen: torch.randn(r, 1, generator=gen).expand(r, c),
}


@pytest.mark.parametrize("bias", sorted(_BIASES))
@pytest.mark.parametrize("a_layout", sorted(_OPERANDS))
@pytest.mark.parametrize("b_layout", ["row-major", "column-major", "expanded rows"])
def test_op_on_any_strides(bias: str, a_layout: str, b_layout: str) -> None:
    """Views with gaps, stride-0 (expanded) operands and biases: oneDNN alone reads a strided
    or expanded bias wrongly (NaN), so the op makes the bias contiguous."""
    gen = torch.Generator().manual_seed(4)
    a = _OPERANDS[a_layout](60, 50, gen)
    b = _OPERANDS[b_layout](50, 40, gen)
    c = _BIASES[bias](40, gen)
    want = a.double() @ b.double() + c.double()
    torch.testing.assert_close(OP(a, b, c).double(), want, rtol=1e-5, atol=1e-4)


def test_op_on_an_offset_view() -> None:
    gen = torch.Generator().manual_seed(1)
    big = torch.randn(400, 300, generator=gen)
    a = big[5:305, 50:250]
    b = torch.randn(200, 100, generator=gen)
    torch.testing.assert_close(
        OP(a, b, None).double(), a.double() @ b.double(), rtol=1e-5, atol=1e-4
    )


def _t(*shape: int, row_major: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if row_major:
        return torch.empty(shape, dtype=dtype)
    return torch.empty(tuple(reversed(shape)), dtype=dtype).t()


@pytest.mark.parametrize(
    ("a", "b", "bias", "expected"),
    [
        (_t(256, 128), _t(128, 64), None, True),  # exactly 2**21 multiply-adds
        (_t(256, 128), _t(128, 63), None, False),  # below the threshold
        (_t(128, 128), _t(128, 64), None, False),  # 2**20
        (_t(256, 256), _t(256, 256, row_major=False), _t(256), True),
        (_t(256, 256, dtype=torch.float64), _t(256, 256, dtype=torch.float64), None, False),
        (_t(256, 256, row_major=False), _t(256, 256), None, True),  # transposed, dims >= 64
        (_t(32, 2048, row_major=False), _t(2048, 512), None, False),  # transposed, m = 32
        (_t(32, 2048), _t(2048, 512), None, True),
        (_t(256, 256), _t(256, 256), _t(1, 256), False),  # a 2-d bias
        (_t(256, 256), _t(256, 256), _t(255), False),
        (_t(256, 256), _t(256, 256), _t(256, dtype=torch.float64), False),
        (_t(4, 256, 256), _t(256, 256), None, False),
    ],
)
def test_which_products_are_eligible(a: Any, b: Any, bias: Any, expected: bool) -> None:
    assert _cpu_matmul.eligible(a, b, bias) is expected


def _mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    h = torch.nn.functional.linear(x, w1, b1).relu()
    small = h[:8, :8] @ h[:8, :8]  # too small: stays on BLAS
    scaled = torch.addmm(b1, x, w1.t(), alpha=0.5)  # alpha != 1: stays
    return (h @ w2).sum() + small.sum() + scaled.sum()


def test_rewrite_replaces_the_eligible_products_and_keeps_the_values() -> None:
    gen = torch.Generator().manual_seed(2)
    args = (
        torch.randn(256, 200, generator=gen),
        torch.randn(128, 200, generator=gen),
        torch.randn(128, generator=gen),
        torch.randn(128, 96, generator=gen),
    )
    gm = make_fx(_mlp, tracing_mode="fake")(*args)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.aten.addmm.default) == 2
    assert targets.count(torch.ops.aten.mm.default) == 2
    assert _cpu_matmul.rewrite(gm.graph) == 2  # linear (addmm) and h @ w2 (mm)
    gm.recompile()
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(OP) == 2
    assert targets.count(torch.ops.aten.addmm.default) == 1  # alpha=0.5
    assert targets.count(torch.ops.aten.mm.default) == 1  # 8x8
    torch.testing.assert_close(gm(*args), _mlp(*args), rtol=1e-5, atol=1e-2)


@settings(max_examples=20, deadline=None)
@given(
    m=st.integers(1, 300),
    k=st.integers(1, 300),
    n=st.integers(1, 300),
    a_layout=st.sampled_from(sorted(_OPERANDS)),
    b_layout=st.sampled_from(sorted(_OPERANDS)),
    bias=st.sampled_from([None, *sorted(_BIASES)]),
)
def test_the_rewrite_keeps_every_product(
    m: int, k: int, n: int, a_layout: str, b_layout: str, bias: str | None
) -> None:
    """Law: the graph after the pass computes what it did before (a float64 product), and the
    pass rewrites exactly the eligible products."""
    gen = torch.Generator().manual_seed(m * 1_000_000 + k * 1000 + n)
    a = _OPERANDS[a_layout](m, k, gen)
    b = _OPERANDS[b_layout](k, n, gen)
    args: tuple[torch.Tensor, ...] = (a, b)
    with_bias = bias is not None
    if bias is not None:
        args += (_BIASES[bias](n, gen),)

    def f(a: torch.Tensor, b: torch.Tensor, *bias: torch.Tensor) -> torch.Tensor:
        return torch.addmm(bias[0], a, b) if bias else torch.mm(a, b)

    gm = make_fx(f, tracing_mode="fake")(*args)
    expected = _cpu_matmul.eligible(a, b, args[2] if with_bias else None)
    assert _cpu_matmul.rewrite(gm.graph) == int(expected)
    gm.recompile()
    want = a.double() @ b.double() + (args[2].double() if with_bias else 0)
    torch.testing.assert_close(gm(*args).double(), want, rtol=1e-4, atol=1e-4 * k**0.5)


def test_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_cpu_matmul.ENV_VAR, " OneDNN ")
    assert _cpu_matmul.choice() == "onednn"
    assert isinstance(_cpu_matmul.post_grad_pass(), _cpu_matmul.OneDNNMatmulPass)
    monkeypatch.setenv(_cpu_matmul.ENV_VAR, "torch")
    assert _cpu_matmul.post_grad_pass() is None
    monkeypatch.delenv(_cpu_matmul.ENV_VAR)
    assert _cpu_matmul.choice() == "auto"
    monkeypatch.setenv(_cpu_matmul.ENV_VAR, "mkl")
    with pytest.raises(
        ValueError, match=r"FUNCGRAD_CPU_MATMUL must be one of auto, onednn, torch, got 'mkl'"
    ):
        _cpu_matmul.post_grad_pass()


def test_auto_follows_the_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_cpu_matmul.ENV_VAR, "auto")
    monkeypatch.setattr(_cpu_matmul, "_measured", False)
    assert _cpu_matmul.post_grad_pass() is None
    monkeypatch.setattr(_cpu_matmul, "_measured", True)
    assert _cpu_matmul.post_grad_pass() is not None
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # the user turned oneDNN off
    assert _cpu_matmul.post_grad_pass() is None


def test_the_measurement_enables_only_a_faster_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(a: torch.Tensor, b: torch.Tensor, bias: Any) -> torch.Tensor:
        time.sleep(0.01)
        return a @ b

    monkeypatch.setattr(_cpu_matmul, "_measured", None)
    monkeypatch.setattr(_cpu_matmul, "_onednn_mm", slow)
    assert _cpu_matmul.measure() is False
    assert _cpu_matmul.measure() is False  # measured once per process
    monkeypatch.setattr(_cpu_matmul, "_measured", None)
    monkeypatch.setattr(_cpu_matmul, "_onednn_mm", lambda a, b, bias: a)
    assert _cpu_matmul.measure() is True


def test_an_existing_post_grad_pass_still_runs() -> None:
    seen = []

    class Other(_cpu_matmul.CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            seen.append(graph)

        def uuid(self) -> Any:
            return "other"

    with torch._inductor.config.patch(post_grad_custom_post_pass=Other()):
        chained = _cpu_matmul.OneDNNMatmulPass(
            then=torch._inductor.config.post_grad_custom_post_pass
        )
    graph = torch.fx.Graph()
    chained(graph)
    assert seen == [graph]
    assert "other" in chained.uuid()
    assert chained.uuid() != _cpu_matmul.OneDNNMatmulPass().uuid()


def test_a_jitted_train_step_runs_its_products_on_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    """One inductor compilation: forward and backward products rewritten, values as eager."""
    monkeypatch.setenv(_cpu_matmul.ENV_VAR, "onednn")
    gen = torch.Generator().manual_seed(3)
    params = {
        "w1": torch.randn(128, 256, generator=gen) / 16,
        "b1": torch.zeros(128),
        "w2": torch.randn(64, 128, generator=gen) / 11,
    }
    x = torch.randn(256, 256, generator=gen)
    y = torch.randn(256, 64, generator=gen)

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        h = torch.nn.functional.linear(x, p["w1"], p["b1"]).tanh()
        return ((h @ p["w2"].t() - y) ** 2).mean()

    def step(p: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        value, g = fg.value_and_grad(loss)(p)
        return fg.tree.map(lambda w, d: w - 0.1 * d, p, g), value

    jstep = fg.jit(step)
    (new, value), codes = run_and_get_code(jstep, params)
    ref, ref_value = step(params)
    fg.testing.assert_trees_allclose((new, value), (ref, ref_value), rtol=1e-5, atol=1e-6)
    # forward: x @ w1.T (+b1), h @ w2.T; backward: dh = g @ w2, dw2 = g.T @ h, dw1 = dh.T @ x
    assert sum(code.count("torch.ops.funcgrad.onednn_mm.default(") for code in codes) == 5
    assert jstep.compile_count == 1
