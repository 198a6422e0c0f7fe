"""Control over differentiation: ``custom_vjp``, ``custom_jvp`` and ``stop_gradient``.

# NOTE [custom rules as autograd.Function]
# A custom rule runs as a torch.autograd.Function on the flat tensor leaves of the differentiable
# arguments, with `setup_context` (which torch.func requires) and `generate_vmap_rule`, so that
# torch.func's grad, vjp, jvp and vmap all dispatch to it at every nesting level. Everything
# that is not a tensor (the rules, nondifferentiable arguments, tree structures, non-tensor
# leaves) travels in one `_Call` object, the Function's first input.
#
# custom_vjp: `forward` runs the user's fwd and returns the output leaves *and the residual
# tensors* (torch.func needs every tensor that backward uses to be an input or an output of
# the Function, or vmap and nested grad see stale tensors); `backward` calls bwd. Higher order
# follows JAX: an outer derivative goes through bwd (its operations are recorded) and through
# the residuals, i.e. through fwd. At the outer level the residual outputs receive cotangents
# (they are None at first order, `set_materialize_grads(False)`), and backward pulls them back
# through fwd's residual computation with torch.func.vjp, which re-runs fwd once. One
# difference remains: torch.func applies the Function at every level, so an outer derivative of
# the *output* uses the rule again, where JAX differentiates fwd's own computation of the
# output. The two agree when fwd computes its output by calling the custom function, JAX's
# usual `return f(x), residuals` (inside fwd that call costs nothing extra here).
#
# custom_jvp: `forward` runs the primal function, `jvp` (forward mode) calls the rule, and
# `backward` (reverse mode) transposes the rule as JAX does: the rule is linear in the tangents,
# so the VJP of `t -> rule(primals, t)[1]` (taken with torch.func.vjp at zero tangents) is its
# transpose. The primals are constants of that inner VJP but stay differentiable for outer
# transforms, so grad-of-grad differentiates the rule itself, as in JAX.
#
# NOTE [custom rules under jit]
# torch 2.13's dynamo inlines an autograd.Function's forward as plain code, silently dropping
# its backward, when none of the tensors it is called with is known to dynamo to require grad;
# inside torch.func.grad that is the case for the differentiated arguments themselves
# (pytorch/pytorch#193279: compiled grad returns the derivative of the forward's operations).
# A view of such a tensor is seen to require grad, so while dynamo traces each tensor input is
# passed as `x.view_as(x)` (free): dynamo then traces forward and backward into its
# autograd_function_apply operator, which AOTAutograd differentiates correctly. Dynamo also
# refuses Functions that define `jvp`, and side effects inside forward, so while tracing:
# the Function classes without `jvp` are used, the output and residual structures are found by
# evaluating the rule once outside the Function (dead code that the compiler removes), and
# forward mode is refused with a clear error (dynamo would drop the rule silently). One more
# difference: under dynamo every output gradient reaches backward materialised (zeros where
# eager mode passes None), so backward cannot tell a higher-order call from a first-order one;
# pulling zeros back through fwd would cost a recomputation and turn 0 * inf into NaN, so under
# jit custom_vjp would treat fwd's residuals as constants at higher order. That case is refused
# anyway: under jit a custom rule may sit inside one transform only, checked at the call, with
# the exceptions that our own backward passes need (NOTE [nested transforms under jit] in
# _custom_traced.py).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import optree
import torch
import torch.func
from torch._C._functorch import TransformType

from . import _api_util
from ._custom_traced import plain_when_nested, top_transform, traced_apply
from ._typing import PyTree
from .tree import NAMESPACE

__all__ = ["custom_jvp", "custom_vjp", "stop_gradient"]

F = TypeVar("F", bound=Callable[..., Any])

_peek_interpreter_stack: Callable[[], Any] = torch._C._functorch.peek_interpreter_stack
_grad_enabled: Callable[[], bool] = torch.is_grad_enabled
_fwd_grad_enabled: Callable[[], bool] = torch._C._is_fwd_grad_enabled

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


def _fun_name(fun: Any) -> str:
    if inspect.isbuiltin(fun):
        return getattr(fun, "__name__", None) or repr(fun)
    return getattr(fun, "__qualname__", None) or getattr(fun, "__name__", None) or repr(fun)


def _stop(x: Any) -> Any:
    return x.detach() if isinstance(x, torch.Tensor) else x


def stop_gradient(tree: PyTree) -> PyTree:
    """Returns ``tree`` with every tensor leaf treated as a constant by all transforms.

    The values are unchanged; derivatives (forward and reverse mode, at every nesting level)
    through the result are zero. Non-tensor leaves pass through.

    >>> import torch, funcgrad as fg
    >>> fg.grad(lambda x: x * fg.stop_gradient(x))(torch.tensor(3.0))
    tensor(3.)
    """
    return optree.tree_map(_stop, tree, namespace=NAMESPACE)


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


# --------------------------------------------------------------------------------------------
# The public wrappers
# --------------------------------------------------------------------------------------------


def _check_nondiff(name: str, nondiff_argnums: Any) -> tuple[int, ...]:
    if isinstance(nondiff_argnums, int) and not isinstance(nondiff_argnums, bool):
        nondiff_argnums = (nondiff_argnums,)
    if not isinstance(nondiff_argnums, (tuple, list)) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in nondiff_argnums
    ):
        raise TypeError(
            f"funcgrad.{name}: nondiff_argnums must be a tuple of non-negative ints, got "
            f"{nondiff_argnums!r}."
        )
    return tuple(sorted(set(nondiff_argnums)))


class _Custom(Generic[F]):
    """What custom_vjp and custom_jvp share: argument handling and dispatch."""

    kind = ""

    def __init__(self, fun: F, nondiff_argnums: Sequence[int] | int = ()) -> None:
        _api_util.check_callable(fun, self.kind)
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.nondiff_argnums = _check_nondiff(self.kind, nondiff_argnums)
        self.label = f"{self.kind}({_fun_name(fun)})"
        try:
            self._signature: inspect.Signature | None = inspect.signature(fun)
        except (TypeError, ValueError):
            self._signature = None

    def _positional(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """Keyword arguments resolved to positions, as JAX does."""
        if not kwargs:
            return args
        if self._signature is None:
            raise TypeError(
                f"funcgrad.{self.label}: keyword arguments need a function with an inspectable "
                "signature; pass the arguments positionally."
            )
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if bound.kwargs:
            raise TypeError(
                f"funcgrad.{self.label}: keyword-only arguments {sorted(bound.kwargs)} are not "
                "supported; pass them positionally or close over them (functools.partial)."
            )
        return tuple(bound.args)

    def _check_rule(self) -> None:
        raise NotImplementedError

    def _plain(self, call: _Call) -> bool:
        """Whether nothing differentiates this call (then ``fun`` runs as it is)."""
        if _peek_interpreter_stack() is not None:
            return False
        return not any(x.requires_grad for x in call.tensors())

    def _on_tangents(self, call: _Call) -> bool:
        """Whether this is a custom_jvp call on tangents in a transposition (NOTE [custom_jvp
        on tangents])."""
        levels: list[int] = getattr(_transpositions, "levels", [])
        if self.kind != "custom_jvp" or not levels or _peek_interpreter_stack() is None:
            return False
        if torch._C._functorch.peek_interpreter_stack().level() != levels[-1]:
            return False
        return any(x.view_as(x).requires_grad for x in call.tensors() if x.is_floating_point())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._check_rule()
        args = self._positional(args, kwargs)
        for i in self.nondiff_argnums:
            if i >= len(args):
                raise ValueError(
                    f"funcgrad.{self.label}: nondiff_argnums contains {i}, but the function "
                    f"was called with {len(args)} positional arguments."
                )
        compiling = torch.compiler.is_compiling()
        if not _grad_enabled() and (compiling or not _fwd_grad_enabled()):
            # Nothing differentiates here, e.g. inside the Function's own forward when fwd calls
            # this function as in JAX (under vmap it would otherwise recurse). Under jit, forward
            # mode is refused below, so reverse mode decides.
            return self.fun(*args)
        call = _Call(self, args, compiling)
        if not compiling and (self._plain(call) or self._on_tangents(call)):
            return self.fun(*args)
        tensors = call.tensors()
        if compiling:
            if plain_when_nested(
                self.kind, call.name, call.tensors()
            ):  # NOTE [nested transforms under jit]
                return self.fun(*args)
            self._prepare_traced(call)
            tensors = [x.view_as(x) for x in tensors]  # NOTE [custom rules under jit]
            flat = traced_apply(self.kind, self._traced_function, call, tensors)
        else:
            flat = self._function.apply(call, *tensors)
        return call.out_def.unflatten(flat[: call.out_def.num_leaves])

    def _prepare_traced(self, call: _Call) -> None:
        raise NotImplementedError

    _function: Any
    _traced_function: Any

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else functools.partial(self, obj)

    def __repr__(self) -> str:
        return f"<funcgrad.{self.label}>"


class custom_vjp(_Custom[F]):
    """A function with a custom reverse-mode derivative rule, with JAX's conventions.

    ``f = custom_vjp(fun)`` (or ``@custom_vjp``) followed by ``f.defvjp(fwd, bwd)``:

    - ``fwd(*args)`` returns ``(output, residuals)``: the output of ``fun(*args)`` and any
      pytree of values that ``bwd`` needs;
    - ``bwd(*nondiff_args, residuals, cotangent)`` returns a tuple with one cotangent per
      differentiable positional argument, each with that argument's tree structure, shapes and
      dtypes; ``None`` (for a whole argument or any subtree) stands for zeros.

    ``f`` works under ``grad``, ``vjp``, ``vmap`` (the rules are vectorised automatically) and
    ``jit``; higher-order derivatives differentiate through ``fwd`` and ``bwd``. As in JAX,
    forward mode (``jvp``, ``jacfwd``) raises a TypeError: use :class:`custom_jvp` for that.
    Arguments at ``nondiff_argnums`` (hashable Python values such as a clipping threshold or a
    function) are passed first to ``bwd`` and are not differentiated. Keyword arguments are
    resolved to positions with ``fun``'s signature. Without any derivative being taken,
    calling ``f`` calls ``fun``.

    Args:
        fun: the function; its differentiable arguments are pytrees whose tensor leaves are
            differentiated (non-tensor leaves are constants), its output a pytree of tensors.
        nondiff_argnums: positions of arguments that are not differentiated.

    >>> import torch, funcgrad as fg
    >>> @fg.custom_vjp
    ... def clip_gradient(x, bound):
    ...     return x
    >>> def fwd(x, bound):
    ...     return x, bound
    >>> def bwd(bound, g):
    ...     return g.clamp(-bound, bound), None
    >>> clip_gradient.defvjp(fwd, bwd)
    >>> fg.grad(lambda x: (3 * clip_gradient(x, torch.tensor(1.0))).sum())(torch.ones(2))
    tensor([1., 1.])
    """

    kind = "custom_vjp"

    def __init__(self, fun: F, nondiff_argnums: Sequence[int] | int = ()) -> None:
        super().__init__(fun, nondiff_argnums)
        self.fwd: Callable[..., Any] | None = None
        self.bwd: Callable[..., Any] | None = None

    def defvjp(self, fwd: Callable[..., Any], bwd: Callable[..., Any]) -> None:
        """Sets the rule: ``fwd(*args) -> (output, residuals)`` and
        ``bwd(*nondiff_args, residuals, cotangent) -> tuple of cotangents``.

        >>> import torch, funcgrad as fg
        >>> f = fg.custom_vjp(torch.sin)
        >>> f.defvjp(lambda x: (torch.sin(x), torch.cos(x)), lambda cos, g: (2 * cos * g,))
        >>> fg.grad(f)(torch.tensor(0.0))
        tensor(2.)
        """
        _api_util.check_callable(fwd, f"{self.label}.defvjp")
        _api_util.check_callable(bwd, f"{self.label}.defvjp")
        self.fwd, self.bwd = fwd, bwd

    def _check_rule(self) -> None:
        if self.fwd is None or self.bwd is None:
            raise AttributeError(
                f"funcgrad.{self.label}: no rule defined; call .defvjp(fwd, bwd) before using "
                "the function."
            )

    def _prepare_traced(self, call: _Call) -> None:
        if top_transform() == TransformType.Jvp:
            raise _jvp_of_custom_vjp(call)
        assert self.fwd is not None
        # Evaluated for its structure only: dead code in the graph (NOTE [custom rules under jit]).
        with torch.no_grad():
            out = self.fwd(*call.args)
        out, res = _split_pair(call, out, "fwd", "(output, residuals)")
        call.out_def = _flat_out(call, out)[1]
        call.res_leaves, call.res_def = optree.tree_flatten(res, namespace=NAMESPACE)

    _function = _VjpFunction
    _traced_function = _TracedVjpFunction


class custom_jvp(_Custom[F]):
    """A function with a custom forward-mode derivative rule, with JAX's conventions.

    ``f = custom_jvp(fun)`` (or ``@custom_jvp``) followed by ``f.defjvp(rule)`` (or
    ``@f.defjvp``), where ``rule(*nondiff_args, primals, tangents)`` takes two tuples (the
    differentiable arguments and their tangents, with the same structures) and returns
    ``(primal_out, tangent_out)``. The rule must be linear in the tangents, as in JAX: reverse
    mode (``grad``, ``vjp``, ``jacrev``) transposes it, so both modes use it; higher-order
    derivatives differentiate the rule. Tangents of non-floating tensor leaves are zeros of their
    dtype; non-tensor leaves get ``None``. Works under ``vmap`` and ``jit`` (reverse mode only:
    see NOTE [custom rules under jit]). Without any derivative being taken, calling ``f`` calls
    ``fun``.

    Args:
        fun: the function; its differentiable arguments are pytrees whose tensor leaves are
            differentiated (non-tensor leaves are constants), its output a pytree of tensors.
        nondiff_argnums: positions of arguments that are not differentiated; they are passed
            first to the rule.

    >>> import torch, funcgrad as fg
    >>> @fg.custom_jvp
    ... def log1pexp(x):
    ...     return torch.log1p(torch.exp(x))
    >>> @log1pexp.defjvp
    ... def log1pexp_jvp(primals, tangents):
    ...     (x,), (t,) = primals, tangents
    ...     return log1pexp(x), t * torch.sigmoid(x)
    >>> fg.grad(log1pexp)(torch.tensor(100.0))
    tensor(1.)
    """

    kind = "custom_jvp"

    def __init__(self, fun: F, nondiff_argnums: Sequence[int] | int = ()) -> None:
        super().__init__(fun, nondiff_argnums)
        self.jvp: Callable[..., Any] | None = None

    def defjvp(self, jvp: Callable[..., Any]) -> Callable[..., Any]:
        """Sets the rule ``jvp(*nondiff_args, primals, tangents) -> (primal_out, tangent_out)``
        and returns it (so it works as a decorator).

        >>> import torch, funcgrad as fg
        >>> f = fg.custom_jvp(torch.sin)
        >>> _ = f.defjvp(lambda p, t: (torch.sin(p[0]), 2 * torch.cos(p[0]) * t[0]))
        >>> fg.jvp(f, (torch.tensor(0.0),), (torch.tensor(1.0),))
        (tensor(0.), tensor(2.))
        """
        _api_util.check_callable(jvp, f"{self.label}.defjvp")
        self.jvp = jvp
        return jvp

    def _check_rule(self) -> None:
        if self.jvp is None:
            raise AttributeError(
                f"funcgrad.{self.label}: no rule defined; call .defjvp(rule) before using the "
                "function."
            )

    def _prepare_traced(self, call: _Call) -> None:
        if top_transform() == TransformType.Jvp:
            raise NotImplementedError(
                f"funcgrad.{call.name}: forward mode (jvp, jacfwd) of a custom_jvp function "
                "inside funcgrad.jit is not supported on this torch: torch.compile would drop "
                "the rule silently (NOTE [custom rules under jit] in funcgrad/_custom.py). "
                "Use reverse mode (grad, vjp, jacrev) inside jit, or jvp outside it."
            )
        with torch.no_grad():
            call.out_def = _flat_out(call, self.fun(*call.args))[1]

    _function = _JvpFunction
    _traced_function = _TracedJvpFunction
