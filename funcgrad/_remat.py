"""Rematerialisation (activation checkpointing): ``checkpoint``, alias ``remat``.

# NOTE [remat]
# checkpoint(fun) runs fun inside a torch.autograd.Function (with setup_context and
# generate_vmap_rule, as in NOTE [custom rules as autograd.Function] in _custom.py): the
# Function's forward runs with recording off at every autograd and torch.func level, so none of
# fun's intermediates are kept, and only the inputs are saved; backward runs fun again under
# torch.func.vjp and pulls the cotangents back through that recomputation. The recomputation
# is recorded by outer transforms, so grad-of-grad and vmap(grad) are exact; forward mode
# (jvp, jacfwd) uses torch.func.jvp of fun, with nothing to save.
#
# torch.utils.checkpoint is not an option under torch.func (checked on torch 2.13): with
# use_reentrant=False it raises "torch.func.{grad, vjp, jacrev, hessian} don't yet support saved
# tensor hooks", and the reentrant variant is an old-style autograd.Function without
# setup_context, which every torch.func transform refuses. tests/test_remat.py records both.
#
# The recomputation is deterministic where fun's randomness comes from funcgrad.random keys
# (arguments, hence saved inputs). torch's global RNG is not replayed: a function that draws
# from it would see different numbers in the recomputation (funcgrad code never does).
#
# Under jit the Function is traced as in NOTE [custom rules under jit] (inputs passed as views,
# the output structure found by a dead evaluation); AOTAutograd then sees the recomputation as
# ordinary backward operations, and whether the activations are recomputed or stored is its
# partitioner's choice (benchmarks/remat.py measures it). Under jit only one transform may
# surround it (jit(grad(f))); nested ones raise, but a checkpoint inside a checkpoint (or
# inside a custom_jvp rule's tangents) runs as plain code in the outer one's backward (NOTE
# [nested transforms under jit] in _custom_traced.py). In eager mode likewise: while a
# checkpoint's backward recomputes, a checkpoint called inside runs as plain code (the outer
# recomputation already holds only that block's intermediates, and applying the Function there
# hits a torch internal assert, "level <= current_level ... escaped?", on torch 2.13).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.func

from . import _api_util
from ._custom import (
    _Call,
    _flat_out,
    _fresh,
    _fun_name,
    _fwd_grad_enabled,
    _grad_enabled,
    _no_grad,
)
from ._custom_traced import plain_when_nested, traced_apply

__all__ = ["checkpoint", "remat"]

_peek_interpreter_stack: Callable[[], Any] = torch._C._functorch.peek_interpreter_stack


_recomputing = threading.local()  # depth of eager recomputations in this thread (NOTE [remat])


class _Remat:
    """What _Call needs of its owner: the function, static positions and a label."""

    __slots__ = ("fun", "label", "nondiff_argnums")

    def __init__(self, fun: Callable[..., Any], static: tuple[int, ...]) -> None:
        self.fun = fun
        self.nondiff_argnums = static
        self.label = f"checkpoint({_fun_name(fun)})"


def _forward(call: _Call, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with _no_grad(call):
        leaves, out_def = _flat_out(call, call.rule.fun(*call.full_args(xs)))
    if not call.compiling:
        call.out_def = out_def
    return _fresh(xs, leaves)


def _setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.call = inputs[0]
    ctx.save_for_backward(*inputs[1:])
    ctx.save_for_forward(*inputs[1:])
    ctx.mark_non_differentiable(*(o for o in output if not o.is_floating_point()))


def _split(call: _Call, xs: Sequence[torch.Tensor]) -> tuple[list[bool], Callable[..., Any]]:
    """Which inputs are differentiated, and fun as a function of those (flat outputs)."""
    floating = call.floating(xs)

    def flat(*d: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(d)
        full = [next(it) if f else x for x, f in zip(xs, floating)]
        return tuple(_flat_out(call, call.rule.fun(*call.full_args(full)))[0])

    return floating, flat


def _backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    xs = ctx.saved_tensors
    floating, flat = _split(ctx.call, xs)
    eager = not torch.compiler.is_compiling()  # traced, nesting is _custom_traced's business
    depth = getattr(_recomputing, "depth", 0) if eager else 0
    if eager:
        _recomputing.depth = depth + 1
    try:
        with torch.enable_grad():
            _, vjp_fn = torch.func.vjp(  # type: ignore[misc]
                flat, *(x for x, f in zip(xs, floating) if f)
            )
            pulled = iter(vjp_fn(tuple(grads)))
    finally:
        if eager:
            _recomputing.depth = depth
    return (None, *(next(pulled) if f else None for f in floating))


def _jvp(ctx: Any, _call_tangent: Any, *tangents: Any) -> tuple[torch.Tensor, ...]:
    xs = ctx.saved_tensors
    floating, flat = _split(ctx.call, xs)
    primals = tuple(x for x, f in zip(xs, floating) if f)
    ts = tuple(
        torch.zeros_like(x) if t is None else t for x, t, f in zip(xs, tangents, floating) if f
    )
    return torch.func.jvp(flat, primals, ts)[1]  # type: ignore[no-any-return]


class _RematFunction(torch.autograd.Function):
    generate_vmap_rule = True

    forward = staticmethod(_forward)
    setup_context = staticmethod(_setup)
    backward = staticmethod(_backward)
    jvp = staticmethod(_jvp)


class _TracedRematFunction(torch.autograd.Function):
    """_RematFunction without ``jvp``, which dynamo refuses (NOTE [custom rules under jit])."""

    generate_vmap_rule = True

    forward = staticmethod(_forward)
    setup_context = staticmethod(_setup)
    backward = staticmethod(_backward)


def _static_positions(static_argnums: Any) -> tuple[int, ...]:
    if isinstance(static_argnums, int) and not isinstance(static_argnums, bool):
        static_argnums = (static_argnums,)
    if not isinstance(static_argnums, (tuple, list)) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in static_argnums
    ):
        raise TypeError(
            "funcgrad.checkpoint: static_argnums must be an int or a tuple of non-negative "
            f"ints, got {static_argnums!r}."
        )
    return tuple(sorted(set(static_argnums)))


def checkpoint(
    fun: Callable[..., Any], *, static_argnums: int | Sequence[int] = ()
) -> Callable[..., Any]:
    """Makes ``fun`` rematerialised: its intermediates are recomputed in the backward pass.

    ``checkpoint(fun)`` computes the same values and derivatives as ``fun``, but reverse mode
    keeps only ``fun``'s inputs and runs ``fun`` again during the backward pass instead of
    storing its intermediate activations: memory for compute (like ``jax.checkpoint``). Apply
    it to each layer or block of a deep network. It composes with ``grad``, ``vjp``, ``jvp``,
    ``vmap`` and ``jit``, at any order. Randomness must come from ``funcgrad.random`` keys
    passed as arguments, so that the recomputation draws the same numbers (NOTE [remat]).

    Args:
        fun: a function of pytrees whose output is a pytree of tensors. Tensor leaves of the
            arguments are differentiated; non-tensor leaves are constants.
        static_argnums: positions of arguments passed through as they are (Python values
            such as a flag, a size or an activation function; never differentiated).

    Returns:
        ``fun`` rematerialised, with its name and docstring. Calling it as a decorator
        (``@functools.partial(checkpoint, static_argnums=...)``) also works.

    >>> import torch, funcgrad as fg
    >>> def layer(w, x):
    ...     return torch.tanh(x @ w)
    >>> def loss(ws, x):
    ...     for w in ws:
    ...         x = fg.checkpoint(layer)(w, x)
    ...     return x.sum()
    >>> ws, x = [torch.eye(2), 2 * torch.eye(2)], torch.ones(3, 2)
    >>> torch.allclose(fg.grad(loss)(ws, x)[0], fg.grad(lambda ws, x: torch.tanh(
    ...     torch.tanh(x @ ws[0]) @ ws[1]).sum())(ws, x)[0])
    True
    """
    _api_util.check_callable(fun, "checkpoint")
    owner = _Remat(fun, _static_positions(static_argnums))

    @functools.wraps(fun)
    def rematerialised(*args: Any, **kwargs: Any) -> Any:
        compiling = torch.compiler.is_compiling()
        if not _grad_enabled() and (compiling or not _fwd_grad_enabled()):
            return fun(*args, **kwargs)
        if kwargs:
            return checkpoint(functools.partial(fun, **kwargs), static_argnums=static_argnums)(
                *args
            )
        for i in owner.nondiff_argnums:
            if i >= len(args):
                raise ValueError(
                    f"funcgrad.{owner.label}: static_argnums contains {i}, but the function was "
                    f"called with {len(args)} positional arguments."
                )
        call = _Call(owner, args, compiling)
        tensors = call.tensors()
        if not compiling:
            if getattr(_recomputing, "depth", 0) or (
                _peek_interpreter_stack() is None and not any(x.requires_grad for x in tensors)
            ):
                return fun(*args)  # inside a checkpoint's recomputation, or not differentiated
            flat = _RematFunction.apply(call, *tensors)  # type: ignore[no-untyped-call]
        else:
            if plain_when_nested("checkpoint", owner.label, tensors):
                return fun(*args)  # NOTE [nested transforms under jit] in _custom_traced.py
            with torch.no_grad():  # the structure only: dead code in the graph
                call.out_def = _flat_out(call, fun(*args))[1]
            views = [x.view_as(x) for x in tensors]  # NOTE [custom rules under jit]
            flat = traced_apply("checkpoint", _TracedRematFunction, call, views)
        return call.out_def.unflatten(flat)

    return rematerialised


remat = checkpoint
