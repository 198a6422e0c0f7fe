"""funcgrad.debug: NaN/Inf checks (forward and backward, under every transform and jit), print.

References: whether an operation makes a NaN is checked against eager torch and against JAX's
jax_debug_nans; printed text against Python's str.format of the same values computed eagerly.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import helpers
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

import funcgrad as fg
from funcgrad import debug
from funcgrad.testing import assert_trees_allclose

AOT = "aot_eager"
FPE = FloatingPointError


def line_of(fn: Callable[..., Any], text: str) -> str:
    """``file", line N`` of the line of ``fn``'s source holding ``text``, and that line."""
    lines, start = inspect.getsourcelines(fn)
    (i,) = [i for i, line in enumerate(lines) if text in line]
    return f'{inspect.getsourcefile(fn)}", line {start + i}, in {fn.__name__}\n    {text}'


def log_sum(x: torch.Tensor) -> torch.Tensor:
    y = torch.log(x)
    return y.sum()


def sqrt_sum(x: torch.Tensor) -> torch.Tensor:
    y = torch.sqrt(x)
    return (y * 2.0).sum()


def pow_sum(x: torch.Tensor) -> torch.Tensor:
    y = x**1.5
    return y.sum()


def x_sqrt_x(x: Any) -> Any:
    return (x * (x**0.5)).sum()


def expect(fn: Callable[..., Any], text: str, op: str, what: str, backward: str = "") -> str:
    """The regex an error for ``op`` at ``text`` in ``fn`` must match."""
    phase = (
        f"in the backward pass \\({backward}\\) of the operation at"
        if backward
        else "in the forward pass at"
    )
    return (
        f"funcgrad.debug.nans: {re.escape(op)} produced {what} \\(of \\d+ elements?\\) from "
        f'finite inputs {phase}:\n  File "{re.escape(line_of(fn, text))}'
    )


@pytest.fixture(autouse=True)
def _checks_off() -> Any:
    """Every test starts and ends with the checks off and nothing installed."""
    assert not debug.nan_checks_enabled()
    yield
    assert not debug.nan_checks_enabled()
    assert _get_current_dispatch_mode_stack() == []
    assert not torch.is_anomaly_enabled()


# --------------------------------------------------------------------------------------------
# nans: the forward pass
# --------------------------------------------------------------------------------------------

ZERO_ONE = torch.tensor([0.0, 1.0])

FORWARD = {
    "eager": lambda f: f(ZERO_ONE),
    "grad": lambda f: fg.grad(f)(ZERO_ONE),
    "vjp": lambda f: fg.vjp(f, ZERO_ONE)[0],
    "jvp": lambda f: fg.jvp(f, (ZERO_ONE,), (torch.ones(2),)),
    "vmap": lambda f: fg.vmap(f)(ZERO_ONE[:, None]),
    "jacrev": lambda f: fg.jacrev(f)(ZERO_ONE),
    "jit": lambda f: fg.jit(f, backend=AOT)(ZERO_ONE),
    "jit(vmap(grad))": lambda f: fg.jit(fg.vmap(fg.grad(f)), backend=AOT)(ZERO_ONE[:, None]),
    "torch.autograd": lambda f: f(ZERO_ONE.clone().requires_grad_()).backward(),
}


@pytest.mark.parametrize("transform", list(FORWARD))
def test_forward_op_is_named_with_the_user_line(transform: str) -> None:
    """log(0) raises at the forward op, naming aten.log and the line calling it."""
    with (
        debug.nans(),
        pytest.raises(FPE, match=expect(log_sum, "y = torch.log(x)", "aten.log.default", "1 inf")),
    ):
        FORWARD[transform](log_sum)


# --------------------------------------------------------------------------------------------
# nans: the backward pass
# --------------------------------------------------------------------------------------------

BACKWARD = {
    "grad": lambda f, x: fg.grad(f)(x),
    "value_and_grad": lambda f, x: fg.value_and_grad(f)(x),
    "vjp": lambda f, x: fg.vjp(f, x)[1](torch.tensor(1.0)),
    "jacrev": lambda f, x: fg.jacrev(f)(x),
    "vmap(grad)": lambda f, x: fg.vmap(fg.grad(f))(x[:, None]),
    "grad(vmap)": lambda f, x: fg.grad(lambda x: fg.vmap(f)(x[:, None]).sum())(x),
    "jit(grad)": lambda f, x: fg.jit(fg.grad(f), backend=AOT)(x),
    "torch.autograd.grad": lambda f, x: torch.autograd.grad(f(x.clone().requires_grad_()), x),
    "backward": lambda f, x: f(x.clone().requires_grad_()).backward(),
}


@pytest.mark.parametrize("transform", list(BACKWARD))
def test_backward_op_is_named_with_the_forward_line(transform: str) -> None:
    """sqrt's gradient at 0 is inf: the backward division is named, at sqrt's forward line."""
    x = ZERO_ONE.clone()
    if transform == "torch.autograd.grad":
        x.requires_grad_()
    pattern = expect(sqrt_sum, "y = torch.sqrt(x)", "aten.div.Tensor", "1 inf", "SqrtBackward0")
    with debug.nans(), pytest.raises(FPE, match=pattern):
        BACKWARD[transform](sqrt_sum, x)


@pytest.mark.parametrize("second", [fg.hessian, lambda f: fg.grad(lambda x: fg.grad(f)(x).sum())])
def test_second_order_backward_names_the_original_forward_line(second: Any) -> None:
    """x**1.5 at 0: the second derivative is inf, traced back through the first backward."""
    pattern = expect(pow_sum, "y = x**1.5", "aten.pow.Tensor_Scalar", "1 inf", "PowBackward0")
    with debug.nans(), pytest.raises(FPE, match=pattern):
        second(pow_sum)(ZERO_ONE)


def test_backward_of_a_forward_run_without_checks() -> None:
    """A graph built outside nans(): the forward line is unknown, the backward call is named."""
    x = ZERO_ONE.clone().requires_grad_()
    y = sqrt_sum(x)
    with (
        debug.nans(),
        pytest.raises(
            FPE,
            match=r"ran while the checks were off\)\nbackward pass started at:\n.*test_debug.py.*\n    y.backward\(\)",
        ),
    ):
        y.backward()


def test_no_anomaly_warning_is_printed(capfd: pytest.CaptureFixture[str]) -> None:
    """Raising in the backward pass does not make autograd print the forward stack too."""
    with debug.nans(), pytest.raises(FPE):
        fg.grad(sqrt_sum)(ZERO_ONE)
    assert "Error detected in" not in capfd.readouterr().err


# --------------------------------------------------------------------------------------------
# nans: which operations are flagged
# --------------------------------------------------------------------------------------------


def test_operations_that_pass_on_or_build_non_finite_values_are_not_flagged() -> None:
    """NaN inputs, -inf fill values and integer ops pass; results equal eager ones."""
    nan = torch.tensor([float("nan"), 1.0])
    mask = torch.tensor([True, False])
    cases = [
        lambda: nan + 1.0,
        lambda: torch.ones(2).masked_fill(mask, float("-inf")).softmax(0),
        lambda: torch.full((2,), float("inf")) * 0.5,
        lambda: torch.tensor([float("inf")]),
        lambda: torch.arange(4) * 3 // 2,
        lambda: fg.grad(lambda x: torch.where(x > 0, x, 0.0).sum())(ZERO_ONE),
    ]
    expected = [c() for c in cases]
    with debug.nans():
        got = [c() for c in cases]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, equal_nan=True)


@pytest.mark.parametrize(
    ("op", "name"),
    [
        (lambda: torch.tensor([0.0]).log_(), "aten.log_.default"),
        (lambda: torch.log(torch.zeros(1), out=torch.full((1,), float("nan"))), "aten.log.out"),
        (lambda: torch.zeros(1) / torch.zeros(1), "aten.div.Tensor"),
        (lambda: torch.tensor([1, 2]) / torch.tensor([0, 1]), "aten.div.Tensor"),
        (lambda: torch.tensor([1.0 + 0j]) / 0, "aten.div.Tensor"),
    ],
)
def test_in_place_out_integer_and_complex_ops_are_flagged(op: Any, name: str) -> None:
    """In-place ops (inputs seen before they run), out= (not an input), int → float, complex."""
    with debug.nans(), pytest.raises(FPE, match=re.escape(name) + " produced"):
        op()


def test_infs_false_flags_nans_only() -> None:
    """With infs=False, log(0) = -inf passes, sqrt(-1) and 0 * inf (NaN from an Inf) raise."""
    with debug.nans(infs=False):
        assert torch.log(torch.zeros(1)).item() == float("-inf")
        with pytest.raises(FPE, match=r"aten.sqrt.default produced 1 nan \(of 1 element\)"):
            torch.sqrt(-torch.ones(1))
        inf = torch.log(torch.zeros(1)).neg()
        with pytest.raises(FPE, match=r"aten.mul.Tensor produced 1 nan"):
            inf * 0.0


def test_counts_name_both_nans_and_infs() -> None:
    """The message counts the NaNs and Infs of the offending output."""
    x = torch.tensor([0.0, -1.0, -2.0, 1.0])
    with debug.nans(), pytest.raises(FPE, match=r"produced 2 nan and 1 inf \(of 4 elements\)"):
        torch.log(x)


FUNCTIONS = {"log_sum": log_sum, "sqrt_sum": sqrt_sum, "x_sqrt_x": x_sqrt_x}


@settings(max_examples=12)
@given(
    name=st.sampled_from(sorted(FUNCTIONS)),
    values=st.lists(st.sampled_from([-1.0, 0.0, 0.25, 2.0]), min_size=1, max_size=3),
)
def test_raises_exactly_when_jax_debug_nans_does(name: str, values: list[float]) -> None:
    """grad under nans(infs=False) raises iff jax.grad under jax_debug_nans does; else equal."""
    jax, jnp = helpers.require_jax()
    fun = FUNCTIONS[name]
    jfun = {
        "log_sum": lambda x: jnp.log(x).sum(),
        "sqrt_sum": lambda x: (jnp.sqrt(x) * 2.0).sum(),
        "x_sqrt_x": lambda x: (x * x**0.5).sum(),
    }[name]
    x = torch.tensor(values, dtype=torch.float64)
    try:
        with jax.debug_nans(True):
            expected = jax.grad(jfun)(jnp.asarray(values))
    except FloatingPointError:
        expected = None
    if expected is None:
        with debug.nans(infs=False), pytest.raises(FPE, match=r"produced \d+ nan"):
            fg.grad(fun)(x)
    else:
        with debug.nans(infs=False):
            got = fg.grad(fun)(x)
        assert_trees_allclose(got, helpers.to_torch(expected))


# --------------------------------------------------------------------------------------------
# nans: switching on and off
# --------------------------------------------------------------------------------------------


def test_nothing_is_installed_outside_and_state_is_restored() -> None:
    """Inside: one dispatch mode, anomaly mode, force_eager; after: all as before."""
    from torch._dynamo import eval_frame

    assert _get_current_dispatch_mode_stack() == []
    with debug.nans():
        assert debug.nan_checks_enabled()
        assert len(_get_current_dispatch_mode_stack()) == 1
        assert torch.is_anomaly_enabled()
        assert not torch.is_anomaly_check_nan_enabled()
        assert eval_frame._stance.stance == "force_eager"
    assert _get_current_dispatch_mode_stack() == []
    assert eval_frame._stance.stance == "default"
    with torch.autograd.set_detect_anomaly(True, check_nan=True), debug.nans():
        pass
    assert torch.is_anomaly_enabled() is False


def test_nested_blocks_and_turning_off_inside() -> None:
    """nans(False) inside nans() checks nothing; the outer checks come back after it."""
    zero = torch.zeros(1)
    with debug.nans():
        with debug.nans(False):
            assert not debug.nan_checks_enabled()
            assert torch.log(zero).item() == float("-inf")
            with debug.nans(infs=False):
                assert torch.log(zero).item() == float("-inf")
        assert debug.nan_checks_enabled()
        with pytest.raises(FPE):
            torch.log(zero)


def test_global_switch() -> None:
    """enable_nan_checks turns the checks on until turned off; repeated calls are harmless."""
    try:
        debug.enable_nan_checks(True)
        debug.enable_nan_checks(True)
        assert debug.nan_checks_enabled()
        with pytest.raises(FPE, match=r"aten\.log\.default"):
            torch.log(torch.zeros(1))
        debug.enable_nan_checks(True, infs=False)
        assert torch.log(torch.zeros(1)).item() == float("-inf")
        with debug.nans(False):
            torch.sqrt(-torch.ones(1))
    finally:
        debug.enable_nan_checks(False)
    debug.enable_nan_checks(False)
    assert torch.log(torch.zeros(1)).item() == float("-inf")


def test_global_switch_cannot_turn_off_under_a_later_mode() -> None:
    """Turning the global checks off while a later dispatch mode is active is an error."""
    debug.enable_nan_checks(True)
    try:
        with (
            TorchDispatchMode(),
            pytest.raises(
                RuntimeError,
                match=r"cannot change the checks while TorchDispatchMode, a dispatch mode entered after",
            ),
        ):
            debug.enable_nan_checks(False)
    finally:
        debug.enable_nan_checks(False)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: debug.nans(1).__enter__(),
            r"funcgrad.debug.nans: enabled must be a bool, got int \(1\)",
        ),
        (
            lambda: debug.nans(infs="no").__enter__(),
            r"funcgrad.debug.nans: infs must be a bool, got str",
        ),
        (
            lambda: debug.enable_nan_checks(None),
            r"enable_nan_checks: enabled must be a bool, got NoneType",
        ),
        (lambda: debug.enable_nan_checks(True, infs=0), r"enable_nan_checks: infs must be a bool"),
    ],
)
def test_flags_must_be_bools(call: Any, match: str) -> None:
    """Non-bool flags raise TypeError naming the API and the value."""
    with pytest.raises(TypeError, match=match):
        call()


@pytest.mark.parametrize(
    ("value", "on"),
    [(None, False), ("", False), ("0", False), ("off", False), ("1", True), (" TRUE ", True)],
)
def test_environment_flag_values(value: str | None, on: bool) -> None:
    """FUNCGRAD_DEBUG_NANS accepts the usual spellings of on and off."""
    assert debug._env_flag(value) is on


def test_environment_flag_rejects_other_values() -> None:
    """Any other value is an error naming the variable."""
    with pytest.raises(
        ValueError,
        match=r"FUNCGRAD_DEBUG_NANS must be 1/true/yes/on or 0/false/no/off, got 'maybe'",
    ):
        debug._env_flag("maybe")


def test_environment_variable_turns_checks_on_at_import() -> None:
    """FUNCGRAD_DEBUG_NANS=1 at import: the first NaN raises in a fresh interpreter."""
    code = (
        "import torch, funcgrad.debug as d\n"
        "assert d.nan_checks_enabled()\n"
        "try:\n    torch.log(torch.zeros(1))\nexcept FloatingPointError as e:\n    print(e)\n"
    )
    env = {**os.environ, "FUNCGRAD_DEBUG_NANS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "aten.log.default produced 1 inf" in out.stdout
    assert '  File "<string>", line 4, in <module>' in out.stdout


# --------------------------------------------------------------------------------------------
# nans under jit (NOTE [nans under jit])
# --------------------------------------------------------------------------------------------


def test_jit_runs_eagerly_inside_and_compiles_after() -> None:
    """Inside nans() a jitted function compiles nothing and equals eager; after, it compiles."""
    x = torch.tensor([0.5, 2.0], dtype=torch.float64)
    f = fg.jit(fg.value_and_grad(log_sum), backend=AOT)
    with debug.nans():
        inside = f(x)
    assert f.compile_count == 0
    assert_trees_allclose(inside, (torch.log(x).sum(), 1 / x))
    assert_trees_allclose(f(x), inside)
    assert f.compile_count == 1


def test_jit_compiled_before_is_checked_inside() -> None:
    """A function compiled before nans() still raises inside it (not a silent inf)."""
    f = fg.jit(fg.grad(sqrt_sum), backend=AOT)
    f(torch.ones(2))
    with debug.nans(), pytest.raises(FPE, match="SqrtBackward0"):
        f(ZERO_ONE)
    assert f.compile_count == 1
    assert f(ZERO_ONE)[0].item() == float("inf")


# --------------------------------------------------------------------------------------------
# print
# --------------------------------------------------------------------------------------------

X = torch.arange(6.0, dtype=torch.float64).reshape(2, 3) / 4


def printing(x: torch.Tensor) -> torch.Tensor:
    y = torch.sin(x)
    debug.print("y = {y}; {} {:.2f}", "s", 1.5, y=y)
    z = y * 2
    debug.print("z.sum = {}", z.sum())
    return z.sum()


def printed(y: torch.Tensor, zsum: torch.Tensor) -> str:
    return f"{'y = {y}; {} {:.2f}'.format('s', 1.5, y=y)}\n{f'z.sum = {zsum}'}\n"


def eager_lines(x: torch.Tensor) -> str:
    """What printing prints on ``x`` in plain eager mode, by Python's own formatting."""
    y = torch.sin(x)
    return printed(y, (y * 2).sum())


PRINT_CASES: dict[str, tuple[Callable[[], Any], Callable[[], str]]] = {
    "eager": (lambda: printing(X), lambda: eager_lines(X)),
    "grad": (lambda: fg.grad(printing)(X), lambda: eager_lines(X)),
    "jvp": (lambda: fg.jvp(printing, (X,), (torch.ones_like(X),)), lambda: eager_lines(X)),
    "vmap": (
        lambda: fg.vmap(printing)(X),
        lambda: printed(torch.sin(X), (torch.sin(X) * 2).sum(1)),
    ),
    "vmap(in_axes=1)": (
        lambda: fg.vmap(printing, in_axes=1)(X),
        lambda: printed(torch.sin(X.T), (torch.sin(X) * 2).sum(0)),
    ),
    "vmap(vmap)": (
        lambda: fg.vmap(fg.vmap(printing))(X),
        lambda: printed(torch.sin(X), torch.sin(X) * 2),
    ),
    "vmap(grad)": (
        lambda: fg.vmap(fg.grad(printing))(X),
        lambda: printed(torch.sin(X), (torch.sin(X) * 2).sum(1)),
    ),
}


@pytest.mark.parametrize("case", list(PRINT_CASES))
@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_print_shows_values_under_transforms(
    case: str, jitted: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Printed text equals str.format of the eager values (batched values whole, batch first)."""
    run, expected = PRINT_CASES[case]
    if jitted:
        f = fg.jit(lambda: run(), backend=AOT)
        for _ in range(2):
            f()
            assert capsys.readouterr().out == expected()
        assert f.compile_count == 1
    else:
        run()
        assert capsys.readouterr().out == expected()


def test_print_under_jit_shows_values_before_later_in_place_updates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Prints keep program order and show the value at their point of the program."""

    def f(x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        debug.print("before {}", y)
        y.add_(1)
        debug.print("after {}", y)
        return y

    x = torch.tensor([1.0, 2.0])
    jf = fg.jit(f, backend=AOT)
    assert_trees_allclose(jf(x), x * 2 + 1)
    assert capsys.readouterr().out == f"before {x * 2}\nafter {x * 2 + 1}\n"
    assert jf.compile_count == 1
    assert "print" in jf.lower(x).as_text()


def test_print_inside_jit_with_torch_autograd(capsys: pytest.CaptureFixture[str]) -> None:
    """A jitted function that prints can be differentiated by torch.autograd; prints once."""
    x = X.clone().requires_grad_()
    jf = fg.jit(printing, backend=AOT)
    jf(x).backward()
    assert capsys.readouterr().out == eager_lines(X)
    assert_trees_allclose(x.grad, 2 * torch.cos(X))


def test_print_with_inductor(capsys: pytest.CaptureFixture[str]) -> None:
    """The default backend keeps the prints too, compiled once with no graph break."""
    jf = fg.jit(fg.vmap(printing))
    out = jf(X)
    assert capsys.readouterr().out == printed(torch.sin(X), (torch.sin(X) * 2).sum(1))
    assert_trees_allclose(out, (torch.sin(X) * 2).sum(1))
    assert jf.compile_count == 1


def test_print_under_nans(capsys: pytest.CaptureFixture[str]) -> None:
    """print passes through the NaN checks, also under vmap."""
    with debug.nans():
        fg.vmap(printing)(X)
    assert capsys.readouterr().out == printed(torch.sin(X), (torch.sin(X) * 2).sum(1))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: debug.print(1),
            TypeError,
            r"funcgrad.debug.print: the format must be a str, got int",
        ),
        (
            lambda: debug.print("{}", [X]),
            TypeError,
            r"argument 0 is list; pass tensors, Python numbers, strings or None",
        ),
        (
            lambda: debug.print("{a}", a={"w": X}),
            TypeError,
            r"keyword argument 'a' is dict; .*fg.tree.leaves",
        ),
        (
            lambda: debug.print("{format_str}", format_str=X),
            ValueError,
            r"'format_str' cannot be a field name",
        ),
    ],
)
def test_print_errors(call: Any, error: type[Exception], match: str) -> None:
    """Non-string formats, containers and the reserved field name are clear errors."""
    with pytest.raises(error, match=match):
        call()


def test_print_container_error_under_jit() -> None:
    """Under jit the same error surfaces (jit re-runs the function eagerly for it)."""
    with pytest.raises(TypeError, match="argument 0 is list"):
        fg.jit(lambda x: debug.print("{}", [x]), backend=AOT)(X)


def test_print_without_torch_operator(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a torch without its print operator: eager and vmap work, jit is a clear error."""
    monkeypatch.setattr(debug, "_hop_print", None)
    fg.vmap(fg.vmap(fg.grad(printing)))(X[None])
    y = torch.sin(X)[None]
    assert capsys.readouterr().out == printed(y, (y * 2).sum(-1))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with pytest.raises(RuntimeError, match=r"has no torch\._higher_order_ops\.print"):
        debug.print("{}", X)
