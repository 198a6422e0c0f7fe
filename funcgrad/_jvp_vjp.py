"""Forward and reverse mode on pytrees: ``jvp``, ``vjp`` and ``linearize``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optree
import torch
import torch._functorch.eager_transforms as _eager_transforms
import torch.autograd.forward_ad as fwad
import torch.func
from torch._C import _functorch

from . import _api_util
from ._grad import (
    _HOOKS_MESSAGE,
    _LEVEL_PRIMITIVES,
    _compiled_autograd_off,
    _dense,
    _differentiable,
)
from .tree import NAMESPACE

__all__ = ["jvp", "linearize", "vjp"]


def _flat_primals(name: str, primals: Sequence[Any]) -> tuple[list[torch.Tensor], Any]:
    leaves: list[torch.Tensor]
    leaves, treedef = optree.tree_flatten(tuple(primals), namespace=NAMESPACE)  # type: ignore[arg-type]
    _api_util.check_differentiable(
        name,
        leaves,
        primals,
        range(len(primals)),
        "Close over non-differentiable values instead, e.g. with functools.partial.",
        root="primals",
    )
    return leaves, treedef


def _primal_paths(primals: Sequence[Any]) -> list[str]:
    return _api_util.flatten_args_with_paths(primals, range(len(primals)), "primals")[1]


def _flat_fun(
    name: str,
    fun: Callable[..., Any],
    treedef: Any,
    has_aux: bool,
    cell: list[Any],
    box: _api_util.Box,
) -> Callable[..., Any]:
    """``fun`` as a function of flat tensors returning ``(flat outputs, aux tensors)``.

    The output structure is appended to ``cell`` and the rest of ``aux`` goes into ``box``
    (see NOTE [optree at the boundary]).
    """

    def flat_fun(*leaves: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], Any]:
        return _api_util.differentiable_output(
            name, fun(*treedef.unflatten(leaves)), has_aux, box, cell
        )

    return flat_fun


def jvp(
    fun: Callable[..., Any],
    primals: Sequence[Any],
    tangents: Sequence[Any],
    *,
    has_aux: bool = False,
) -> tuple[Any, ...]:
    """Evaluates ``fun(*primals)`` and its Jacobian-vector product with ``tangents`` (forward mode).

    Args:
        fun: a function of pytrees of floating-point tensors returning a pytree of tensors
            (or ``(output, aux)`` with ``has_aux=True``).
        primals: a tuple or list of the positional arguments.
        tangents: a tuple or list with the structure of ``primals``; every tangent leaf has the
            shape and dtype of its primal leaf.
        has_aux: whether ``fun`` returns ``(output, aux)``.

    Returns:
        ``(primals_out, tangents_out)``, or ``(primals_out, tangents_out, aux)``.

    >>> import torch, funcgrad as fg
    >>> x = torch.tensor([0.0, 1.0])
    >>> fg.jvp(torch.sin, (x,), (torch.ones(2),))
    (tensor([0.0000, 0.8415]), tensor([1.0000, 0.5403]))
    """
    name = "jvp"
    _api_util.check_callable(fun, name)
    for what, value in (("primals", primals), ("tangents", tangents)):
        if not isinstance(value, (tuple, list)):
            raise TypeError(
                f"funcgrad.{name}: {what} must be a tuple or list of the function's positional "
                f"arguments, got {type(value).__name__}. Wrap a single argument: ({what[:-1]},)."
            )
    if len(primals) != len(tangents):
        raise ValueError(
            f"funcgrad.{name}: primals and tangents must have the same length, got "
            f"{len(primals)} primals and {len(tangents)} tangents."
        )
    leaves, treedef = _flat_primals(name, primals)
    t_leaves = _check_tangents(name, leaves, treedef, tuple(tangents), "tangents")
    cell: list[Any] = []
    box = _api_util.Box()
    flat_fun = _flat_fun(name, fun, treedef, has_aux, cell, box)
    with _api_util.pure_call(name, leaves, lambda: _primal_paths(primals)):
        out, t_out, aux = _torch_jvp(flat_fun, leaves, t_leaves)
    out_def = cell[-1]
    result = (out_def.unflatten(out), out_def.unflatten(t_out))
    return (*result, _api_util.unpack_aux(box, aux)) if has_aux else result


# NOTE [jvp without torch's pytree]
# Eager jvp likewise runs the steps of torch.func.jvp (eager_transforms._jvp_with_argnums) on
# funcgrad's flat tuples: a jvp level entered and left through torch's own enter_jvp_nesting /
# exit_jvp_nesting (they keep the module's JVP_NESTING count that torch.func.jvp reads, so the two
# nest), forward-mode AD enabled, a dual level for the outermost jvp only, one dual per primal,
# the function, each output unpacked (a tangent-less output gets zeros) and unwrapped, as is aux.
# While dynamo traces (jit), or on a torch without those functions, torch.func.jvp runs.
_JVP_PRIMITIVES = _LEVEL_PRIMITIVES and all(
    hasattr(_eager_transforms, name)
    for name in ("enter_jvp_nesting", "exit_jvp_nesting", "JVP_NESTING")
)

# torch's forward-AD helpers, typed (torch leaves them unannotated).
_make_dual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = fwad.make_dual
_unpack_dual: Callable[[torch.Tensor], Any] = fwad.unpack_dual


def _torch_jvp(
    flat_fun: Callable[..., tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]],
    leaves: Sequence[torch.Tensor],
    t_leaves: Sequence[torch.Tensor],
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """``torch.func.jvp(flat_fun, leaves, t_leaves, has_aux=True)`` (NOTE [jvp without torch's
    pytree])."""
    if not _JVP_PRIMITIVES or torch.compiler.is_compiling():
        return torch.func.jvp(  # type: ignore[return-value]
            flat_fun, tuple(leaves), tuple(t_leaves), has_aux=True
        )
    level = _eager_transforms.enter_jvp_nesting()
    try:
        with fwad._set_fwd_grad_enabled(True):
            outermost = _eager_transforms.JVP_NESTING == 1
            with fwad.dual_level() if outermost else contextlib.nullcontext():
                duals = [_make_dual(p, t) for p, t in zip(leaves, t_leaves)]
                out, aux = flat_fun(*duals)
                primals_out, tangents_out = [], []
                for dual in out:
                    primal, tangent = _unpack_dual(dual)
                    if tangent is None:
                        tangent = torch.zeros_like(primal)
                    primals_out.append(_functorch._unwrap_for_grad(primal, level))
                    tangents_out.append(_functorch._unwrap_for_grad(tangent, level))
                aux = tuple(_functorch._unwrap_for_grad(a, level) for a in aux)
    finally:
        _eager_transforms.exit_jvp_nesting()
    return tuple(primals_out), tuple(tangents_out), aux


def _check_tangents(
    name: str, leaves: Sequence[torch.Tensor], treedef: Any, tangents: Any, root: str
) -> list[torch.Tensor]:
    return _api_util.check_like(
        name,
        "tangent",
        leaves,
        treedef,
        tangents,
        root,
        "Tangents must match the primals in structure, shape and dtype "
        "(e.g. build them with funcgrad.tree.map(torch.ones_like, primals)).",
    )


# NOTE [vjp without torch's pytree]
# As for grad (NOTE [grad without torch's pytree] in _grad.py), eager vjp runs the steps of
# torch.func.vjp (torch._functorch.eager_transforms._vjp_with_argnums) itself on funcgrad's flat
# tuples, with functorch's level primitives: a grad level, the primals wrapped and marked as
# requiring grad, the function, the outputs and aux unwrapped, the level closed. The returned
# function runs torch.autograd.grad later on the level's wrapped tensors, exactly as torch.func's
# does: retain_graph=True, create_graph=torch.is_grad_enabled() at call time, inference mode
# lifted for the call, outputs that do not require grad left out, zeros for unused primals.
# While dynamo traces (jit), torch.func.vjp runs.


def _torch_vjp(
    flat_fun: Callable[..., tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]],
    leaves: Sequence[torch.Tensor],
) -> tuple[tuple[torch.Tensor, ...], Callable[[tuple[torch.Tensor, ...]], Any], Any]:
    """``torch.func.vjp(flat_fun, *leaves, has_aux=True)`` (NOTE [vjp without torch's pytree])."""
    if not _LEVEL_PRIMITIVES or torch.compiler.is_compiling():
        return torch.func.vjp(flat_fun, *leaves, has_aux=True)  # type: ignore[return-value]
    with torch.autograd.graph.disable_saved_tensors_hooks(_HOOKS_MESSAGE):
        level = _functorch._grad_increment_nesting()
        try:
            with torch.enable_grad():
                primals = _differentiable(leaves, level)
                out, aux = flat_fun(*primals)
                results = tuple(_functorch._unwrap_for_grad(o, level) for o in out)
                aux = tuple(_functorch._unwrap_for_grad(a, level) for a in aux)
        finally:
            _functorch._grad_decrement_nesting()

    def vjp_fn(cotangents: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        create_graph = torch.is_grad_enabled()
        pairs = [(o, c) for o, c in zip(out, cotangents) if o.requires_grad]
        if not pairs:
            return tuple(torch.zeros_like(p) for p in primals)
        with _inference_mode_off(), _compiled_autograd_off():
            grads = torch.autograd.grad(
                [o for o, _ in pairs],
                primals,
                [c for _, c in pairs],
                retain_graph=True,
                create_graph=create_graph,
                allow_unused=True,
            )
        return tuple(_dense(grads, primals))

    return results, vjp_fn, aux


@contextlib.contextmanager
def _inference_mode_off() -> Iterator[None]:
    """Lifts inference mode (vjp_fn may be called under it) without touching the grad modes."""
    if not torch.is_inference_mode_enabled():
        yield
        return
    grad, fw_grad = torch.is_grad_enabled(), torch._C._is_fwd_grad_enabled()
    with torch.inference_mode(False):
        torch._C._set_grad_enabled(grad)
        torch._C._set_fwd_grad_enabled(fw_grad)
        yield


def vjp(fun: Callable[..., Any], *primals: Any, has_aux: bool = False) -> tuple[Any, ...]:
    """Evaluates ``fun(*primals)`` and returns a function for its vector-Jacobian products.

    Args:
        fun: a function of pytrees of floating-point tensors returning a pytree of tensors
            (or ``(output, aux)`` with ``has_aux=True``).
        *primals: the positional arguments.
        has_aux: whether ``fun`` returns ``(output, aux)``.

    Returns:
        ``(output, vjp_fn)`` or ``(output, vjp_fn, aux)``. ``vjp_fn(cotangent)`` takes a pytree
        with the structure, shapes and dtypes of ``output`` and returns a tuple with one
        cotangent per primal. It may be called many times.

    >>> import torch, funcgrad as fg
    >>> out, vjp_fn = fg.vjp(lambda x, y: x * y, torch.tensor(2.0), torch.tensor(3.0))
    >>> vjp_fn(torch.tensor(1.0))
    (tensor(3.), tensor(2.))
    """
    name = "vjp"
    _api_util.check_callable(fun, name)
    leaves, treedef = _flat_primals(name, primals)
    cell: list[Any] = []
    box = _api_util.Box()
    flat_fun = _flat_fun(name, fun, treedef, has_aux, cell, box)
    with _api_util.pure_call(name, leaves, lambda: _primal_paths(primals)):
        out, torch_vjp_fn, aux = _torch_vjp(flat_fun, leaves)
    out_def = cell[-1]

    def vjp_fn(cotangent: Any) -> tuple[Any, ...]:
        ct = _api_util.check_like(
            "vjp",
            "cotangent",
            out,
            out_def,
            cotangent,
            "cotangent",
            "Give vjp_fn one cotangent with the structure, shapes and dtypes of the output.",
        )
        return treedef.unflatten(torch_vjp_fn(tuple(ct)))  # type: ignore[no-any-return]

    result = (out_def.unflatten(out), vjp_fn)
    return (*result, _api_util.unpack_aux(box, aux)) if has_aux else result


def linearize(fun: Callable[..., Any], *primals: Any) -> tuple[Any, Callable[..., Any]]:
    """Evaluates ``fun(*primals)`` once and returns its Jacobian-vector product as a function.

    ``jvp_fn(*tangents)`` equals ``jvp(fun, primals, tangents)[1]`` without evaluating
    ``fun`` again: each call costs one backward pass through the recorded computation.

    Returns:
        ``(output, jvp_fn)``; ``jvp_fn`` takes one tangent per primal, each with the structure,
        shapes and dtypes of that primal.

    >>> import torch, funcgrad as fg
    >>> out, jvp_fn = fg.linearize(lambda x: x**2, torch.tensor([1.0, 3.0]))
    >>> jvp_fn(torch.tensor([1.0, 1.0]))
    tensor([2., 6.])
    """
    # NOTE [linearize by transposing twice]
    # torch.func.linearize traces the function with make_fx, so data-dependent Python control
    # flow breaks it. Instead: the VJP u -> J^T u is linear in u, so the VJP of *that* function,
    # evaluated at any u (zeros), maps v -> J v. Both graphs are recorded eagerly once; each
    # jvp_fn call is one backward pass through the second graph and never re-runs ``fun``.
    name = "linearize"
    _api_util.check_callable(fun, name)
    leaves, treedef = _flat_primals(name, primals)
    cell: list[Any] = []
    flat_fun = _flat_fun(name, fun, treedef, False, cell, _api_util.Box())
    with _api_util.pure_call(name, leaves, lambda: _primal_paths(primals)):
        out, torch_vjp_fn, _ = _torch_vjp(flat_fun, leaves)
    out_def = cell[-1]
    zeros = tuple(torch.zeros_like(o) for o in out)
    _, transposed, _ = _torch_vjp(lambda *u: (torch_vjp_fn(u), ()), zeros)

    def jvp_fn(*tangents: Any) -> Any:
        if len(tangents) != len(primals):
            raise TypeError(
                f"funcgrad.{name}: jvp_fn takes one tangent per primal ({len(primals)}), got "
                f"{len(tangents)}."
            )
        t_leaves = _check_tangents(name, leaves, treedef, tangents, "tangents")
        return out_def.unflatten(transposed(tuple(t_leaves)))

    return out_def.unflatten(out), jvp_fn
