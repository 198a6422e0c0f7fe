"""The errors of :func:`funcgrad.jit`: a call under an eager transform, and compile failures.

Private, used by ``_jit.py`` only: turns torch.compile's failures into funcgrad's messages that
say where the function cannot be compiled, why, and how to fix it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

__all__: list[str] = []


def _under_transform_error(fun: Callable[..., Any]) -> RuntimeError:
    name = _name(fun)
    return RuntimeError(
        f"funcgrad.jit({name}): called inside an eager funcgrad/torch.func transform (grad, "
        "vmap, jvp, jacrev, ...). torch.compile cannot compile a function under a transform "
        "that runs eagerly (pytorch/pytorch#128711). Jit the outer function instead, e.g. "
        f"fg.jit(fg.grad(loss)) where loss calls {name}, or call the plain function "
        "(the jitted function's .fun) inside the transform."
    )


def _name(fun: Any) -> str:
    return getattr(fun, "__qualname__", None) or getattr(fun, "__name__", None) or repr(fun)


_WHY = {
    "Data-dependent branching": (
        "Python control flow (if/while/and/or/bool()) on a tensor's value, or on .item() of it",
        "express the branch with torch.where or funcgrad.lax.cond; if the value is a Python "
        "setting, pass it as a static argument (static_argnums/static_argnames)",
    ),
    "Failed to trace builtin operator": (
        "a Python builtin that torch.compile cannot trace (print, input, ...)",
        "remove it from the jitted function, or return the value and use it outside",
    ),
}


# torch._dynamo is imported lazily: importing it costs over a second, and by the time a compiled
# function has raised, torch.compile has imported it.
def _dynamo_error(e: BaseException, kind: str = "TorchDynamoException") -> bool:
    """Whether ``e`` is torch.compile's ``kind`` of error (a torch._dynamo.exc class)."""
    exc = sys.modules.get("torch._dynamo.exc")
    return exc is not None and isinstance(e, getattr(exc, kind))


_OBSERVED = re.compile(r"raised exception (?P<type>\w+)\((?P<q>['\"])(?P<msg>.*?)(?P=q)\)", re.S)


def _compile_error(
    fun: Callable[..., Any], e: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> BaseException:
    """Turns a torch.compile failure into funcgrad's error (or the function's own error)."""
    name = _name(fun)
    gb_type = getattr(e, "gb_type", "")
    if gb_type == "Observed exception" or _dynamo_error(e, "TorchRuntimeError"):
        # The function raised while being traced: rerun it eagerly for its own error message.
        try:
            fun(*args, **kwargs)
        except Exception as eager:
            if hasattr(eager, "add_note"):
                eager.add_note(f"(raised by {name} while funcgrad.jit traced it)")
            return eager
    text = str(e).strip()
    where = _where(e)
    if "Could not guard on data-dependent expression" in text:  # e.g. ``if x.item() > 0``
        gb_type = "Data-dependent branching"
    why, fix = _WHY.get(
        gb_type,
        (
            (gb_type or type(e).__name__) + " (a torch.compile limitation, see below)",
            "rewrite that line with tensor operations, move it out of the jitted function",
        ),
    )
    raised = _OBSERVED.search(text) if gb_type == "Observed exception" else None
    if raised:  # raised only while traced (eager mode ran fine): a traced-only code path
        why = f"while torch.compile traced it, it raised {raised['type']}: {raised['msg'].rstrip('.')}"
        fix = "see that message"
    return RuntimeError(
        f"funcgrad.jit({name}): torch.compile cannot compile {name} as one graph "
        f"(fullgraph=True).\n  Where: {where}\n  Why: {why}.\n  Fix: {fix}; or pass "
        "fullgraph=False to let torch.compile split the graph there (slower).\n"
        f"torch.compile says:\n{text}"
    )


def _where(e: BaseException) -> str:
    frame = getattr(e, "innermost_user_frame_summary", None)
    if frame is None:
        stack = getattr(e, "real_stack", None)
        frame = stack[-1] if stack else None
    if frame is None:
        return "(unknown: see torch.compile's message below)"
    line = (frame.line or "").strip()
    return f'File "{frame.filename}", line {frame.lineno}, in {frame.name}: {line}'
