"""custom_vjp, custom_jvp and checkpoint while funcgrad.jit traces: how many transforms may
surround them, and when a call runs as plain code.

# NOTE [nested transforms under jit]
# Under jit, a custom Function (custom_vjp, custom_jvp, checkpoint) is correct inside one
# torch.func transform only (jit(grad(f)), jit(vjp), jit(vmap)). Applied at functorch level 2
# or more, torch 2.13 returns silent zeros in every case checked: jit(grad(grad(f))),
# jit(hessian(f)), jit(jacrev(jacrev(f))), jit(grad(vmap(f))), and even
# jit(grad(x -> grad(y -> y * f(x))(1))), where the inner transform does not track x at all:
# dynamo's autograd_function_apply, applied at level 2, is differentiated by level 2 only.
# (Levels count from 1 inside jit, which refuses to run under an eager transform.) So while
# compiling, every call at level 2 or more raises, checked at the call: the level is traceable
# (`retrieve_current_functorch_interpreter().level()`), and no Function is ever applied there.
#
# One exception is needed: our own backward passes run one level up. custom_jvp's transposition
# calls the rule under torch.func.vjp (level 2), and a rule usually calls the function itself
# on the primals (JAX's `return f(x), ...`); checkpoint's backward re-runs fun under
# torch.func.vjp, and fun may hold another checkpoint or custom function. Dynamo traces a
# Function's backward at the time the Function is applied (it speculates it into
# autograd_function_apply), so `traced_apply` records in a module global, around the apply,
# which kind of Function's backward may be traced; dynamo replays the write and the restore as
# side effects, and reads the pending value inside the speculated backward (checked). At level
# exactly 2 inside such a backward (which no transform differentiates again, all higher levels
# being refused):
# - a call whose inputs the level-2 transform does not track (the primals, constants of the
#   transposition) runs as plain code: only its value is used. Whether a transform tracks a
#   tensor is traceable as `x.view_as(x).requires_grad` (the tensor's own requires_grad is
#   stale under dynamo, a view's is computed by the innermost level: checked against eager);
# - a call on tracked inputs (the tangents or the recomputation's activations) runs as plain
#   code for checkpoint (same values and derivatives, the memory saving is moot inside a
#   backward) and for custom_jvp inside custom_jvp's transposition (JAX transposes a custom_jvp
#   function applied to tangents through its primal function too, and applying the Function
#   there would recurse without end);
# - a custom_vjp call on tracked inputs inside checkpoint's backward (a straight-through
#   estimator in a rematerialised block) applies its Function at level 2: only that level
#   tracks its inputs, nothing differentiates it further, and the result is correct (checked
#   against eager mode in tests/test_remat.py). A custom_jvp function there fails inside
#   torch, so it raises our error instead; anything else raises too.
# If a torch release stops speculating backward at the apply, the global reads None there and
# those calls raise: never a silent wrong answer. Outside jit none of this applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

from . import _api_util

__all__ = ["nested_error", "plain_when_nested", "top_transform", "traced_apply"]


# While dynamo traces a custom Function's apply (and so its backward): the Function's kind.
_tracing_backward_of: str | None = None


def traced_apply(kind: str, function: Any, call: Any, tensors: Sequence[torch.Tensor]) -> Any:
    """``function.apply(call, *tensors)`` with ``kind`` recorded for the calls that its
    backward makes (NOTE [nested transforms under jit])."""
    global _tracing_backward_of
    outer = _tracing_backward_of
    _tracing_backward_of = kind
    out = function.apply(call, *tensors)
    _tracing_backward_of = outer
    return out


def _level() -> int:
    if not _api_util.in_transform():  # not `is None` (NOTE [peek_interpreter_stack under dynamo])
        return 0
    return int(retrieve_current_functorch_interpreter().level())


def plain_when_nested(kind: str, name: str, tensors: Sequence[torch.Tensor]) -> bool:
    """While compiling: whether a call of a custom function of ``kind`` runs as plain code
    (True) or through its Function (False); raises where neither is correct (NOTE [nested
    transforms under jit])."""
    level = _level()
    if level < 2:
        return False
    inside = _tracing_backward_of
    if inside is not None and level == 2:
        tracked = any(
            x.view_as(x).requires_grad for x in tensors if x.is_floating_point() or x.is_complex()
        )
        if not tracked or kind == "checkpoint" or kind == inside == "custom_jvp":
            return True
        if kind == "custom_vjp" and inside == "checkpoint":
            return False  # applied where only this level tracks it: correct (checked)
    raise nested_error(name)


def nested_error(name: str) -> NotImplementedError:
    return NotImplementedError(
        f"funcgrad.{name}: inside funcgrad.jit, custom_vjp, custom_jvp and checkpoint "
        "support one transform around them (jit(grad(f)), jit(vjp(...)), jit(vmap(f))); "
        "torch.compile cannot differentiate or vmap them at a second level (grad of grad, "
        "hessian, grad of vmap would come back as zeros). Apply the outer transforms outside "
        "jit, or call the function without jit (NOTE [nested transforms under jit] in "
        "funcgrad/_custom_traced.py)."
    )


def top_transform() -> Any:
    """The innermost active torch.func transform (traceable by dynamo, unlike ``.key()`` of
    torch._C._functorch.peek_interpreter_stack()'s result)."""
    if not _api_util.in_transform():
        return None
    return retrieve_current_functorch_interpreter().key()
