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

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import optree
import torch
from torch._C._functorch import TransformType

from . import _api_util
from ._custom_rules import _Call as _Call
from ._custom_rules import _flat_out as _flat_out
from ._custom_rules import _fresh as _fresh
from ._custom_rules import (
    _jvp_of_custom_vjp,
    _JvpFunction,
    _split_pair,
    _TracedJvpFunction,
    _TracedVjpFunction,
    _transpositions,
    _VjpFunction,
)
from ._custom_rules import _no_grad as _no_grad
from ._custom_traced import plain_when_nested, top_transform, traced_apply
from ._typing import PyTree
from .tree import NAMESPACE

# _Call, _flat_out, _fresh and _no_grad are imported `as` themselves: _remat.py imports them
# from here.

__all__ = ["custom_jvp", "custom_vjp", "stop_gradient"]

F = TypeVar("F", bound=Callable[..., Any])

_peek_interpreter_stack: Callable[[], Any] = torch._C._functorch.peek_interpreter_stack
_grad_enabled: Callable[[], bool] = torch.is_grad_enabled
_fwd_grad_enabled: Callable[[], bool] = torch._C._is_fwd_grad_enabled


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
        """Raises unless the rule is defined (each subclass overrides this)."""
        raise NotImplementedError

    def _plain(self, call: _Call) -> bool:
        """Whether nothing differentiates this call (then ``fun`` runs as it is)."""
        if _peek_interpreter_stack() is not None:
            return False
        return not any(x.requires_grad for x in call.tensors())

    def _on_tangents(self, call: _Call) -> bool:
        """Whether this is a custom_jvp call on tangents in a transposition (NOTE [custom_jvp
        on tangents] in _custom_rules.py)."""
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
        """Checks and records what tracing under jit needs (each subclass overrides this)."""
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
