"""Debugging: stop at the first NaN or Inf (``nans``), and ``print`` that works under transforms.

>>> import torch, funcgrad as fg
>>> with fg.debug.nans():
...     fg.grad(lambda x: torch.sqrt(x).sum())(torch.tensor([0.0, 1.0]))
Traceback (most recent call last):
...
FloatingPointError: funcgrad.debug.nans: aten.div.Tensor produced 1 inf (of 2 elements) from finite inputs in the backward pass (SqrtBackward0) of the operation at:
...

# NOTE [how nans checks]
# A TorchDispatchMode sees every aten operation after torch.func's transforms and autograd have
# done their work: under vmap it sees the batched (physical) tensors, under grad and in
# torch.autograd's backward pass it sees the operations of the backward formulas, run by the
# autograd engine, which carries the mode over to its worker threads. After each operation the
# mode looks at the floating-point and complex outputs; only when one holds a NaN (or an Inf,
# with infs=True) does it look at the inputs, and it raises only if every input was finite:
# tensors, and Python numbers too, so that ``torch.full(s, -inf)`` or
# ``x.masked_fill(m, -inf)`` pass, and a NaN is reported once, where it appears, not again by
# every operation it flows through. (JAX's jax_debug_nans flags any operation with a NaN
# output.) Operations that return uninitialised memory (``empty``, ...) are never flagged, and
# for in-place operations the inputs are examined before they run; ``out=`` arguments are not
# inputs. Integer and boolean outputs cannot hold NaN and are skipped, as are tensor subclasses
# (fake, functional, distributed tensors).
#
# The error names the operation and the user's source line: the innermost stack frame outside
# torch, optree and funcgrad. For an operation of the backward pass that is the forward line
# that created the autograd node being differentiated: while the checks are on, autograd's
# anomaly mode is on too (without its own NaN check), which records the forward stack of every
# node it creates; the mode asks the engine which node runs (torch._C._current_autograd_node)
# and reads that record, following the chain of parents for higher-order gradients. Just
# before raising in the backward pass, anomaly mode is switched off (and on again at the next
# operation), so that the engine does not also print the forward stack as a warning.
#
# The mode exists only while the checks are on; when they are off nothing of this runs.
# Dispatch modes are per thread, so the global switch applies to the thread that set it (and to
# autograd's threads while they work for it).
#
# NOTE [nans under jit]
# torch.compile does not trace code while a dispatch mode is active, and under fullgraph=True
# it would then refuse to run. While the checks are on, funcgrad sets torch.compile's stance to
# "force_eager": every compiled function, funcgrad.jit's included, runs its Python code eagerly,
# operation by operation, so the checks see every operation of the forward and backward passes,
# and results are those of eager mode. Nothing is compiled in the meantime and already compiled
# graphs are left in their cache: the first call after the checks are off compiles as usual (or
# reuses the cache). JAX instead runs the optimised function and, on a NaN, runs it again
# de-optimised to find the operation.
#
# NOTE [debug.print ordering]
# In eager mode ``print`` prints at once. Under jit it is torch's ``print`` higher-order
# operator (torch._higher_order_ops.print): an operation of the compiled graph with an ordered
# effect, threaded through the graph with effect tokens, so the compiler never removes it and
# never reorders it against another print. Hence, under jit:
# - prints appear while the compiled function runs, before it returns, in program order
#   relative to each other and once per call (none while torch.compile traces);
# - each shows the values its arguments had at that point of the program: the graph is
#   functional, so a later in-place update does not change what is printed;
# - other computations that the printed values do not depend on may run before or after a
#   print: a print says nothing about how far the rest of the graph has run.
# funcgrad registers the rules for torch.func's transforms on that operator (only where torch
# has none): under vmap a print shows the whole batched value, its vmapped dimensions first
# (outermost vmap first), on one line per call, where JAX prints one line per example; under
# grad, jvp, jacrev, ... it shows the primal values, printed when the forward computation runs.
# Format specs apply to the value printed: "{:.3f}" formats a 0-d tensor in eager mode but not
# under vmap, where the value has a batch dimension.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import linecache
import os
import re
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

import optree
import torch
from torch._C._functorch import (
    TransformType,
    _unwrap_for_grad,
    get_unwrapped,
    is_batchedtensor,
    is_functorch_wrapped_tensor,
    maybe_get_bdim,
    maybe_get_level,
)
from torch.utils._python_dispatch import (
    TorchDispatchMode,
    _get_current_dispatch_mode,
    _get_current_dispatch_mode_stack,
)

from .tree import NAMESPACE

# torch's print operator (recent torch); without it, print works in eager mode only.
_hop_print: Any
try:
    _hop_print = importlib.import_module("torch._higher_order_ops.print").print
except ImportError:  # pragma: no cover - depends on the torch version
    _hop_print = None

__all__ = ["enable_nan_checks", "nan_checks_enabled", "nans", "print"]

_ENV_VAR = "FUNCGRAD_DEBUG_NANS"
_NAME = "funcgrad.debug.nans"

# Operations whose outputs are uninitialised memory (NOTE [how nans checks]).
_UNINITIALISED = frozenset(
    {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "resize_"}
)
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_INTERNAL_DIRS = tuple(  # torch's, optree's and funcgrad's directories
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (torch.__file__, optree.__file__, __file__)
)
_FRAME_RE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<name>[^\n]*)')


# --------------------------------------------------------------------------------------------
# nans
# --------------------------------------------------------------------------------------------


def _checked(t: Any) -> bool:
    """Whether ``t`` is a tensor whose values the checks look at."""
    return (
        type(t) in _PLAIN
        and (t.is_floating_point() or t.is_complex())
        and t.layout == torch.strided
        and t.device.type != "meta"
        and t.numel() > 0
    )


def _bad_counts(t: torch.Tensor, infs: bool) -> tuple[int, int]:
    """``(number of NaNs, number of Infs)`` in ``t`` (Infs counted only when ``infs``)."""
    if infs:
        if bool(torch.isfinite(t).all()):
            return 0, 0
        return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    return (int(torch.isnan(t).sum()), 0) if bool(torch.isnan(t).any()) else (0, 0)


def _finite_inputs(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], infs: bool) -> bool:
    """Whether every tensor and Python number among the inputs is free of NaN (and Inf)."""
    schema = getattr(func, "_schema", None)
    outs = {a.name for a in schema.arguments if a.is_out} if schema is not None else set()
    inputs: Any = (args, {k: v for k, v in kwargs.items() if k not in outs})
    leaves: list[Any] = optree.tree_leaves(inputs, none_is_leaf=True)
    for x in leaves:
        if isinstance(x, torch.Tensor):
            if _checked(x) and _bad_counts(x, infs) != (0, 0):
                return False
        elif isinstance(x, (float, complex)):
            z = complex(x)
            if z != z or (infs and (abs(z.real) == float("inf") or abs(z.imag) == float("inf"))):
                return False
    return True


def _is_internal(filename: str) -> bool:
    return filename.startswith(_INTERNAL_DIRS) or filename.startswith("<frozen")


def _format_frame(filename: str, lineno: int, name: str, code: str) -> str:
    text = f'  File "{filename}", line {lineno}, in {name}'
    return text + (f"\n    {code.strip()}" if code.strip() else "")


def _user_frame() -> str:
    """The innermost frame of the current stack outside torch, optree and funcgrad."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and _is_internal(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return "  (no frame outside torch and funcgrad)"
    code = frame.f_code
    line = linecache.getline(code.co_filename, frame.f_lineno, frame.f_globals)
    return _format_frame(code.co_filename, frame.f_lineno, code.co_name, line)


def _forward_frame(node: Any) -> str | None:
    """The user's frame that created autograd ``node`` in the forward pass (anomaly record)."""
    metadata = getattr(node, "metadata", None)
    while isinstance(metadata, dict) and "parent_" in metadata:  # created by a backward pass
        metadata = getattr(metadata["parent_"], "metadata", None)
    stack = metadata.get("traceback_") if isinstance(metadata, dict) else None
    for entry in reversed(stack or []):
        match = _FRAME_RE.search(entry)
        if match is not None and not _is_internal(match["file"]):
            code = entry[match.end() :].strip()
            return _format_frame(match["file"], int(match["line"]), match["name"], code)
    return None


def _describe(nan: int, inf: int, numel: int) -> str:
    parts = ([f"{nan} nan"] if nan else []) + ([f"{inf} inf"] if inf else [])
    return f"{' and '.join(parts)} (of {numel} element{'s' if numel != 1 else ''})"


class _NanMode(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Checks every operation's outputs (NOTE [how nans checks])."""

    supports_higher_order_operators = True

    def __init__(self, infs: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.infs = infs
        self.enabled = True
        self.reenable_anomaly = False

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if not self.enabled:
            return func(*args, **kwargs)
        if self.reenable_anomaly:
            self.reenable_anomaly = False
            torch.autograd.set_detect_anomaly(True, check_nan=False)
        packet = getattr(func, "_overloadpacket", None)
        name = getattr(packet, "__name__", "")
        if name in _UNINITIALISED:
            return func(*args, **kwargs)
        schema = getattr(func, "_schema", None)
        finite_before = (
            _finite_inputs(func, args, kwargs, self.infs)
            if schema is not None and schema.is_mutable
            else None
        )
        out = func(*args, **kwargs)
        for t in optree.tree_leaves(out, none_is_leaf=True):
            if not _checked(t):
                continue
            nan, inf = _bad_counts(t, self.infs)
            if (nan or inf) and (
                finite_before
                if finite_before is not None
                else _finite_inputs(func, args, kwargs, self.infs)
            ):
                raise self._error(func, _describe(nan, inf, t.numel()))
        return out

    def _error(self, func: Any, what: str) -> FloatingPointError:
        op = str(func) if hasattr(func, "_overloadpacket") else getattr(func, "_name", str(func))
        node: Any = torch._C._current_autograd_node()  # None in the forward pass
        if node is None:
            where = f"in the forward pass at:\n{_user_frame()}"
        else:
            forward = _forward_frame(node)
            if forward is None:
                forward = (
                    "  (unknown: the forward pass ran while the checks were off)\n"
                    f"backward pass started at:\n{_user_frame()}"
                )
            where = f"in the backward pass ({node.name()}) of the operation at:\n{forward}"
            # Keep the engine from printing the forward stack as a warning (NOTE [how nans
            # checks]); the next operation switches anomaly mode back on.
            torch.autograd.set_detect_anomaly(False, check_nan=False)
            self.reenable_anomaly = True
        return FloatingPointError(f"{_NAME}: {op} produced {what} from finite inputs {where}")


class _Session:
    """One activation of the checks: the mode, anomaly mode and the compiler's stance."""

    def __init__(self, infs: bool) -> None:
        self.mode = _NanMode(infs)
        self.stance: Any = None
        self.anomaly = (False, False)

    def start(self) -> None:
        self.anomaly = (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled())
        # NOTE [nans under jit]: compiled functions run eagerly while the checks are on.
        self.stance = torch.compiler.set_stance("force_eager")
        torch.autograd.set_detect_anomaly(True, check_nan=False)
        self.mode.__enter__()  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        self.mode.__exit__(None, None, None)  # type: ignore[no-untyped-call]
        torch.autograd.set_detect_anomaly(*self.anomaly)
        self.stance.__exit__(None, None, None)


_global: _Session | None = None


def _our_modes() -> list[_NanMode]:
    return [m for m in _get_current_dispatch_mode_stack() if isinstance(m, _NanMode)]


def _check_flag(value: Any, what: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, got {type(value).__name__} ({value!r}).")


@contextlib.contextmanager
def nans(enabled: bool = True, *, infs: bool = True) -> Iterator[None]:
    """Within this block, the first operation that makes a NaN or Inf raises an error.

    Every operation is checked, in the forward pass and in the backward pass, eagerly and under
    every transform (``grad``, ``vjp``, ``vmap``, ``jacrev``, ..., and ``torch.autograd``). The
    first operation whose inputs were all finite and whose output holds a NaN (or an Inf, with
    ``infs=True``) raises :class:`FloatingPointError` naming the aten operation and your source
    line; for an operation of the backward pass, the forward line whose gradient it computes.
    Operations that merely pass on a NaN they received are not flagged (JAX's
    ``jax_debug_nans`` flags them too), nor are constants such as ``torch.full(s, -inf)``.

    Functions compiled with :func:`funcgrad.jit` or ``torch.compile`` run eagerly inside the
    block (nothing is compiled; results are eager mode's), so that every operation is checked.
    Checking costs a device synchronisation per operation: use it to debug, not to train.
    Outside the block, nothing is checked and nothing costs anything.

    Args:
        enabled: ``False`` turns the checks off inside the block (they come back after it).
        infs: whether an Inf is an error too; ``False`` looks for NaNs only.

    >>> import torch, funcgrad as fg
    >>> with fg.debug.nans():
    ...     torch.log(torch.tensor([1.0, 0.0]))
    Traceback (most recent call last):
    ...
    FloatingPointError: funcgrad.debug.nans: aten.log.default produced 1 inf (of 2 elements) from finite inputs in the forward pass at:
    ...
    >>> with fg.debug.nans(infs=False):  # an Inf is fine now, a NaN is not
    ...     torch.log(torch.tensor([1.0, 0.0]))
    tensor([0., -inf])
    """
    _check_flag(enabled, f"{_NAME}: enabled")
    _check_flag(infs, f"{_NAME}: infs")
    outer = _our_modes()
    saved = [m.enabled for m in outer]
    for m in outer:  # one mode checks at a time: the innermost block's
        m.enabled = False
    session = _Session(infs) if enabled else None
    if session is not None:
        session.start()
    try:
        yield
    finally:
        if session is not None:
            session.stop()
        for m, flag in zip(outer, saved):
            m.enabled = flag


def enable_nan_checks(enabled: bool = True, *, infs: bool = True) -> None:
    """Turns the checks of :func:`nans` on or off for the rest of the program (this thread).

    The global form of :func:`nans`, like JAX's ``jax.config.update("jax_debug_nans", True)``.
    Setting the environment variable ``FUNCGRAD_DEBUG_NANS=1`` before importing funcgrad turns
    the checks on from the start. The checks apply to the thread that turned them on (and to
    autograd's threads while they run its backward passes).

    Args:
        enabled: ``True`` turns the checks on, ``False`` turns them off.
        infs: whether an Inf is an error too; ``False`` looks for NaNs only.

    Raises:
        RuntimeError: when turning the checks off while a dispatch mode entered after they were
            turned on (a :func:`nans` block, a ``TorchDispatchMode``) is still active.

    >>> import torch, funcgrad as fg
    >>> fg.debug.enable_nan_checks(True)
    >>> fg.debug.nan_checks_enabled()
    True
    >>> fg.debug.enable_nan_checks(False)
    >>> fg.debug.nan_checks_enabled()
    False
    """
    global _global
    _check_flag(enabled, "funcgrad.debug.enable_nan_checks: enabled")
    _check_flag(infs, "funcgrad.debug.enable_nan_checks: infs")
    if _global is not None:
        if enabled and _global.mode.infs == infs:
            return
        top = _get_current_dispatch_mode()
        if top is not _global.mode:
            raise RuntimeError(
                "funcgrad.debug.enable_nan_checks: cannot change the checks while "
                f"{type(top).__name__}, a dispatch mode entered after they were turned on, is "
                "still active; leave that block (funcgrad.debug.nans, TorchDispatchMode) first."
            )
        _global.stop()
        _global = None
    if enabled:
        session = _Session(infs)
        session.start()
        _global = session


def nan_checks_enabled() -> bool:
    """Whether :func:`nans` checks are on in this thread (a block, or the global switch).

    >>> import funcgrad as fg
    >>> fg.debug.nan_checks_enabled()
    False
    >>> with fg.debug.nans():
    ...     fg.debug.nan_checks_enabled()
    True
    """
    return any(m.enabled for m in _our_modes())


def _env_flag(value: str | None) -> bool:
    """Reads ``FUNCGRAD_DEBUG_NANS``: unset, ``0``/``false``/``no``/``off`` or ``1``/``true``/..."""
    text = (value or "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ValueError(
        f"funcgrad.debug: the environment variable {_ENV_VAR} must be 1/true/yes/on or "
        f"0/false/no/off, got {value!r}."
    )


# --------------------------------------------------------------------------------------------
# print
# --------------------------------------------------------------------------------------------

_PRINTABLE = (torch.Tensor, bool, int, float, complex, str, type(None))


def print(fmt: str, /, *args: Any, **kwargs: Any) -> None:
    """Prints ``fmt.format(*args, **kwargs)``, also from jitted, vmapped and differentiated code.

    Tensors print with their values, not as tracers: inside :func:`funcgrad.jit` without a graph
    break, and under :func:`funcgrad.vmap` as the whole batched tensor, its vmapped dimensions
    first (JAX prints one line per example instead). Under ``grad`` and other derivative
    transforms the primal values print, when the forward computation runs. Under ``jit``,
    prints run in program order relative to each other while the compiled function runs, each
    showing the values at its place in the program (NOTE [debug.print ordering] in the source).

    Args:
        fmt: a :meth:`str.format` format string.
        *args: tensors, Python numbers, strings or ``None``: the positional fields' values.
        **kwargs: the same, for named fields.

    >>> import torch, funcgrad as fg
    >>> def f(x):
    ...     y = torch.sin(x)
    ...     fg.debug.print("y = {y}, n = {}", 3, y=y)
    ...     return y.sum()
    >>> _ = fg.jit(f, backend="aot_eager")(torch.zeros(2))
    y = tensor([0., 0.]), n = 3
    >>> _ = fg.vmap(f)(torch.zeros(2, 3))
    y = tensor([[0., 0., 0.],
            [0., 0., 0.]]), n = 3
    """
    if not isinstance(fmt, str):
        raise TypeError(
            f"funcgrad.debug.print: the format must be a str, got {type(fmt).__name__}."
        )
    for i, a in enumerate(args):
        _check_printable(a, f"argument {i}")
    for k, v in kwargs.items():
        _check_printable(v, f"keyword argument {k!r}")
    if "format_str" in kwargs:  # torch's print operator's own parameter
        raise ValueError(
            "funcgrad.debug.print: 'format_str' cannot be a field name; rename the field."
        )
    if _hop_print is None:  # pragma: no cover - depends on the torch version
        _print_without_operator(fmt, args, kwargs)
    else:
        _hop_print(fmt, *args, **kwargs)


def _check_printable(x: Any, what: str) -> None:
    if not isinstance(x, _PRINTABLE) and not isinstance(
        x, (torch.SymInt, torch.SymFloat, torch.SymBool)
    ):
        raise TypeError(
            f"funcgrad.debug.print: {what} is {type(x).__name__}; pass tensors, Python numbers, "
            "strings or None, one field each (for a pytree: "
            "fg.debug.print('{} {}', *fg.tree.leaves(tree)))."
        )


def _print_without_operator(fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Eager-only ``print`` for a torch without its print operator."""
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "funcgrad.debug.print: this torch has no torch._higher_order_ops.print, so "
            "funcgrad.debug.print cannot run under funcgrad.jit; upgrade torch or print outside."
        )
    tree: Any = (args, kwargs)
    with torch._C._DisableFuncTorch():  # plain operations, not lifted into the transforms
        new_args, new_kwargs = optree.tree_map(_unwrap_all, tree, namespace=NAMESPACE)
    builtins.print(fmt.format(*new_args, **new_kwargs))


def _unwrap_all(x: Any) -> Any:
    """A functorch-wrapped tensor as a plain tensor, vmapped dimensions first (outermost first)."""
    if not isinstance(x, torch.Tensor) or not is_functorch_wrapped_tensor(x):
        return x
    inner = get_unwrapped(x)
    outer_dims = 0  # vmapped dimensions of levels below this one, which _unwrap_all puts first
    probe = inner
    while isinstance(probe, torch.Tensor) and is_functorch_wrapped_tensor(probe):
        outer_dims += int(is_batchedtensor(probe))
        probe = get_unwrapped(probe)
    full = _unwrap_all(inner)
    if is_batchedtensor(x):
        return full.movedim(maybe_get_bdim(x) + outer_dims, outer_dims)
    return full


def _vmap_rule(interpreter: Any, fmt: str, *args: Any, **kwargs: Any) -> None:
    """torch.func.vmap's rule for torch's print: the whole batched values, batch dims first."""
    level = interpreter.level()

    def unwrap(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and is_batchedtensor(x) and maybe_get_level(x) == level:
            return get_unwrapped(x).movedim(maybe_get_bdim(x), 0)
        return x

    tree: Any = (args, kwargs)
    new_args, new_kwargs = optree.tree_map(unwrap, tree, namespace=NAMESPACE)
    with interpreter.lower():
        _hop_print(fmt, *new_args, **new_kwargs)


def _primal_rule(interpreter: Any, fmt: str, *args: Any, **kwargs: Any) -> None:
    """grad's and jvp's rule for torch's print: the primal values."""
    level = interpreter.level()

    def unwrap(x: Any) -> Any:
        return _unwrap_for_grad(x, level) if isinstance(x, torch.Tensor) else x

    tree: Any = (args, kwargs)
    new_args, new_kwargs = optree.tree_map(unwrap, tree, namespace=NAMESPACE)
    with interpreter.lower():
        _hop_print(fmt, *new_args, **new_kwargs)


if _hop_print is not None:  # rules only where torch has none (NOTE [debug.print ordering])
    for _transform, _rule in (
        (TransformType.Vmap, _vmap_rule),
        (TransformType.Grad, _primal_rule),
        (TransformType.Jvp, _primal_rule),
    ):
        if _transform not in _hop_print.functorch_table:
            _hop_print.py_impl(_transform)(_rule)

if _env_flag(os.environ.get(_ENV_VAR)):
    enable_nan_checks(True)
