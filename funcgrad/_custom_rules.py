"""The torch.autograd.Functions behind custom_vjp and custom_jvp (in _custom.py, which
applies them): one call's non-tensor part (`_Call`), each Function's forward, setup_context,
backward and jvp, and the checks of what the user's rules return. The design is in NOTE [custom
rules as autograd.Function] and NOTE [custom rules under jit] in _custom.py.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import optree
import torch
import torch.func

from . import _api_util
from .tree import NAMESPACE

__all__: list[str] = []


# NOTE [custom_jvp on tangents]
# A custom_jvp rule may apply a custom_jvp function to its tangents (`return g(x), h(t)`). Its
# transposition runs the rule under torch.func.vjp, where h(t) would apply h's Function, whose
# backward transposes h's rule under a new vjp, which applies h's Function again: an endless
# recursion. JAX transposes a custom_jvp function applied to tangents through its primal
# function, so inside a transposition (recorded per thread with its functorch level; eager
# mode only, jit has its own rule in NOTE [nested transforms under jit]) a custom_jvp call on
# inputs that the transposition's level tracks runs as plain code. Calls on the primals (not
# tracked there) keep their rule for outer transforms.
_transpositions = threading.local()


# --------------------------------------------------------------------------------------------
# One call of a custom function: everything that is not a tensor input
# --------------------------------------------------------------------------------------------


class _Call:
    """The non-tensor part of one call, the first input of the autograd.Function."""

    rule: Any

    __slots__ = (
        "args",
        "compiling",
        "diff_pos",
        "in_def",
        "leaves",
        "name",
        "nondiff",
        "out_def",
        "res_def",
        "res_leaves",
        "rule",
        "tensor_idx",
    )

    def __init__(self, owner: Any, args: tuple[Any, ...], compiling: bool) -> None:
        self.name = owner.label
        self.rule = owner
        self.args = args
        self.compiling = compiling
        nondiff = owner.nondiff_argnums
        self.nondiff = tuple(args[i] for i in nondiff)
        self.diff_pos = tuple(i for i in range(len(args)) if i not in nondiff)
        diff = tuple(args[i] for i in self.diff_pos)
        leaves: list[Any]
        leaves, self.in_def = optree.tree_flatten(diff, namespace=NAMESPACE)  # type: ignore[arg-type]
        self.leaves = leaves
        self.tensor_idx = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
        self.out_def: Any = None
        self.res_def: Any = None
        self.res_leaves: list[Any] = []

    def tensors(self) -> list[torch.Tensor]:
        return [self.leaves[i] for i in self.tensor_idx]

    def diff_args(self, tensors: Sequence[Any]) -> tuple[Any, ...]:
        """The differentiable arguments rebuilt around ``tensors``."""
        full = list(self.leaves)
        for i, x in zip(self.tensor_idx, tensors):
            full[i] = x
        return tuple(self.in_def.unflatten(full))

    def full_args(self, tensors: Sequence[Any]) -> list[Any]:
        """All positional arguments, nondifferentiable ones in place, around ``tensors``."""
        args = list(self.args)
        for p, a in zip(self.diff_pos, self.diff_args(tensors)):
            args[p] = a
        return args

    def floating(self, tensors: Sequence[torch.Tensor]) -> list[bool]:
        return [x.is_floating_point() or x.is_complex() for x in tensors]


def _split_pair(call: _Call, out: Any, what: str, expected: str) -> tuple[Any, Any]:
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(
            f"funcgrad.{call.name}: the {what} rule must return a pair {expected}, but it "
            f"returned {_api_util.describe(out)}."
        )
    return out[0], out[1]


def _flat_out(call: _Call, out: Any) -> tuple[list[torch.Tensor], Any]:
    return _api_util.flatten_output(call.name, out)


def _no_grad(call: _Call) -> Any:
    """Inside a Function's forward: grad is off in eager mode already, but not where dynamo
    traces it, and a call of the custom function there (fwd returning ``f(x)``) must be plain."""
    return torch.no_grad() if call.compiling else contextlib.nullcontext()


def _zeros(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def _fresh(xs: Sequence[torch.Tensor], outs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``outs`` with views in place of inputs and repeats: a Function that overrides
    setup_context may not return (and save) an input, or one tensor twice, as it is."""
    seen = {id(x) for x in xs}
    result = []
    for o in outs:
        if id(o) in seen:
            o = o.view_as(o)
        seen.add(id(o))
        result.append(o)
    return tuple(result)


# --------------------------------------------------------------------------------------------
# Cotangents returned by bwd: one per differentiable argument, None for zeros
# --------------------------------------------------------------------------------------------


def _match(call: _Call, arg: Any, ct: Any, path: str, out: list[Any]) -> None:
    """Appends one cotangent (or None) per leaf of ``arg``; ``ct`` may hold None subtrees."""
    if ct is None:
        out.extend([None] * optree.tree_structure(arg, namespace=NAMESPACE).num_leaves)
        return
    if optree.tree_is_leaf(arg, namespace=NAMESPACE):
        out.append(ct)
        return
    a_children, a_def = optree.tree_flatten(
        arg, is_leaf=lambda x: x is not arg, namespace=NAMESPACE
    )
    c_children, c_def = optree.tree_flatten(ct, is_leaf=lambda x: x is not ct, namespace=NAMESPACE)
    if a_def != c_def:
        raise ValueError(
            f"funcgrad.{call.name}: the bwd rule's cotangent at {path} must have the structure "
            f"{a_def} (that of the argument, or None for zeros), but got {c_def}."
        )
    accessors = optree.treespec_accessors(a_def)
    for acc, a, c in zip(accessors, a_children, c_children):
        _match(call, a, c, acc.codify(path), out)


def _cotangents(call: _Call, cts: Any) -> list[torch.Tensor | None]:
    """Checks bwd's result and returns one cotangent (or None) per tensor input."""
    n = len(call.diff_pos)
    if not isinstance(cts, (tuple, list)) or len(cts) != n:
        names = ", ".join(f"args[{p}]" for p in call.diff_pos)
        raise TypeError(
            f"funcgrad.{call.name}: the bwd rule must return a tuple with one cotangent per "
            f"differentiable positional argument ({n}: {names}), but it returned "
            f"{_api_util.describe(cts)}. Return a tuple (use None for a zero cotangent)."
        )
    per_leaf: list[Any] = []
    diff = call.in_def.unflatten(call.leaves)
    for p, a, c in zip(call.diff_pos, diff, cts):
        _match(call, a, c, f"args[{p}]", per_leaf)
    result: list[torch.Tensor | None] = []
    for i in call.tensor_idx:
        x, c = call.leaves[i], per_leaf[i]
        if c is None or not (x.is_floating_point() or x.is_complex()):
            result.append(None)
            continue
        if not isinstance(c, torch.Tensor) or c.shape != x.shape or c.dtype != x.dtype:
            path = _api_util.flatten_args_with_paths(call.args, call.diff_pos)[1][i]
            raise ValueError(
                f"funcgrad.{call.name}: the bwd rule's cotangent for {path} must be a "
                f"{x.dtype} tensor of shape {tuple(x.shape)} (that of the argument), but got "
                f"{_api_util.describe(c)}."
            )
        result.append(c)
    return result


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


# --------------------------------------------------------------------------------------------
# custom_vjp's Function
# --------------------------------------------------------------------------------------------


def _vjp_forward(call: _Call, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with _no_grad(call):
        out = call.rule.fwd(*call.full_args(xs))
    out, res = _split_pair(call, out, "fwd", "(output, residuals)")
    out_leaves, out_def = _flat_out(call, out)
    res_leaves, res_def = optree.tree_flatten(res, namespace=NAMESPACE)
    res_tensors = tuple(r for r in res_leaves if isinstance(r, torch.Tensor))
    if not call.compiling:  # while tracing, the structures are known beforehand (NOTE above)
        call.out_def, call.res_def, call.res_leaves = out_def, res_def, res_leaves
    return _fresh(xs, (*out_leaves, *res_tensors))


def _vjp_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    call: _Call = inputs[0]
    ctx.call = call
    ctx.n_in = len(inputs) - 1
    ctx.n_out = call.out_def.num_leaves
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs[1:], *output)
    ctx.mark_non_differentiable(*(o for o in output if not o.is_floating_point()))


def _vjp_backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    call: _Call = ctx.call
    saved = ctx.saved_tensors
    xs, outs, res = saved[: ctx.n_in], saved[ctx.n_in : ctx.n_in + ctx.n_out], saved[ctx.n_in :]
    res = res[ctx.n_out :]
    g_out, g_res = grads[: ctx.n_out], grads[ctx.n_out :]
    cts: list[torch.Tensor | None] = [None] * len(xs)
    if any(g is not None for g in g_out):
        g_tree = call.out_def.unflatten(
            [_zeros(o) if g is None else g for g, o in zip(g_out, outs)]
        )
        it = iter(res)
        res_tree = call.res_def.unflatten(
            [next(it) if isinstance(r, torch.Tensor) else r for r in call.res_leaves]
        )
        cts = _cotangents(call, call.rule.bwd(*call.nondiff, res_tree, g_tree))
    # Higher order, through fwd's residuals; not under jit (NOTE [custom rules under jit]).
    if not call.compiling and any(g is not None for g in g_res):
        cts = [_add(a, b) for a, b in zip(cts, _residual_vjp(call, xs, g_res))]
    return (None, *cts)


def _residual_vjp(
    call: _Call, xs: Sequence[torch.Tensor], g_res: Sequence[torch.Tensor | None]
) -> list[torch.Tensor | None]:
    floating = call.floating(xs)
    diff = [x for x, f in zip(xs, floating) if f]
    keep = [i for i, g in enumerate(g_res) if g is not None]

    def residuals(*d: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(d)
        full = [next(it) if f else x for x, f in zip(xs, floating)]
        _, res = call.rule.fwd(*call.full_args(full))
        leaves = [r for r in optree.tree_leaves(res, namespace=NAMESPACE) if torch.is_tensor(r)]
        return tuple(leaves[i] for i in keep)

    with torch.enable_grad():
        _, vjp_fn = torch.func.vjp(residuals, *diff)  # type: ignore[misc]
        pulled = iter(vjp_fn(tuple(g_res[i] for i in keep)))
    return [next(pulled) if f else None for f in floating]


def _jvp_of_custom_vjp(call: _Call) -> TypeError:
    return TypeError(
        f"funcgrad.{call.name}: can't apply forward-mode autodiff (jvp, jacfwd, hessian) to a "
        "custom_vjp function, as in JAX: its rule only says how to pull cotangents back. Use "
        "reverse mode (grad, vjp, jacrev), or define the rule with funcgrad.custom_jvp, which "
        "supports both modes."
    )


class _VjpFunction(torch.autograd.Function):
    generate_vmap_rule = True

    forward = staticmethod(_vjp_forward)
    setup_context = staticmethod(_vjp_setup)
    backward = staticmethod(_vjp_backward)

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        raise _jvp_of_custom_vjp(ctx.call)


class _TracedVjpFunction(torch.autograd.Function):
    """_VjpFunction without ``jvp``, which dynamo refuses (NOTE [custom rules under jit])."""

    generate_vmap_rule = True

    forward = staticmethod(_vjp_forward)
    setup_context = staticmethod(_vjp_setup)
    backward = staticmethod(_vjp_backward)


# --------------------------------------------------------------------------------------------
# custom_jvp's Function
# --------------------------------------------------------------------------------------------


def _tangent_tree(call: _Call, xs: Sequence[torch.Tensor], ts: Sequence[Any]) -> tuple[Any, ...]:
    """The tangents as the rule sees them: one tree per differentiable argument."""
    ts = [_zeros(x) if t is None else t for x, t in zip(xs, ts)]
    full: list[Any] = [None] * len(call.leaves)
    for i, t in zip(call.tensor_idx, ts):
        full[i] = t
    return tuple(call.in_def.unflatten(full))


def _rule_tangents(
    call: _Call, xs: Sequence[torch.Tensor], ts: Sequence[Any]
) -> tuple[torch.Tensor, ...]:
    """The rule's output tangent leaves, checked against the output."""
    primals = call.diff_args(xs)
    out = call.rule.jvp(*call.nondiff, primals, _tangent_tree(call, xs, ts))
    p_out, t_out = _split_pair(call, out, "jvp", "(primal_out, tangent_out)")
    leaves, t_def = optree.tree_flatten(t_out, namespace=NAMESPACE)
    if t_def != call.out_def:
        raise ValueError(
            f"funcgrad.{call.name}: the jvp rule's tangent_out must have the structure of the "
            f"function's output, {call.out_def}, but got {t_def}."
        )
    p_leaves = optree.tree_leaves(p_out, namespace=NAMESPACE)
    for k, (t, p) in enumerate(zip(leaves, p_leaves)):
        if not isinstance(t, torch.Tensor) or t.shape != getattr(p, "shape", None):
            path = _api_util.leaf_paths(t_out, "tangent_out")[k]
            raise ValueError(
                f"funcgrad.{call.name}: the jvp rule's tangent at {path} must be a tensor with "
                f"the shape of the primal output there, {tuple(getattr(p, 'shape', ()))}, but "
                f"got {_api_util.describe(t)}."
            )
    return tuple(leaves)


def _jvp_forward(call: _Call, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with _no_grad(call):
        leaves, out_def = _flat_out(call, call.rule.fun(*call.full_args(xs)))
    if not call.compiling:
        call.out_def = out_def
    return _fresh(xs, leaves)


def _jvp_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.call = inputs[0]
    ctx.save_for_backward(*inputs[1:])
    ctx.save_for_forward(*inputs[1:])
    ctx.mark_non_differentiable(*(o for o in output if not o.is_floating_point()))


def _jvp_jvp(ctx: Any, _call_tangent: Any, *tangents: Any) -> tuple[torch.Tensor, ...]:
    return _rule_tangents(ctx.call, ctx.saved_tensors, tangents)


@contextlib.contextmanager
def _transposing(call: _Call) -> Any:
    """Records the level of an eager transposition (NOTE [custom_jvp on tangents])."""
    if call.compiling:
        yield
        return
    levels = _transpositions.__dict__.setdefault("levels", [])
    levels.append(torch._C._functorch.peek_interpreter_stack().level())
    try:
        yield
    finally:
        levels.pop()


def _jvp_backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    call: _Call = ctx.call
    xs = ctx.saved_tensors
    floating = call.floating(xs)

    def tangent_map(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(ts)
        with _transposing(call):
            return _rule_tangents(call, xs, [next(it) if f else None for f in floating])

    zeros = [_zeros(x) for x, f in zip(xs, floating) if f]
    with torch.enable_grad():
        _, transpose = torch.func.vjp(tangent_map, *zeros)  # type: ignore[misc]
        pulled = iter(transpose(tuple(grads)))
    return (None, *(next(pulled) if f else None for f in floating))


class _JvpFunction(torch.autograd.Function):
    generate_vmap_rule = True

    forward = staticmethod(_jvp_forward)
    setup_context = staticmethod(_jvp_setup)
    backward = staticmethod(_jvp_backward)
    jvp = staticmethod(_jvp_jvp)


class _TracedJvpFunction(torch.autograd.Function):
    """_JvpFunction without ``jvp``, which dynamo refuses (NOTE [custom rules under jit])."""

    generate_vmap_rule = True

    forward = staticmethod(_jvp_forward)
    setup_context = staticmethod(_jvp_setup)
    backward = staticmethod(_jvp_backward)
