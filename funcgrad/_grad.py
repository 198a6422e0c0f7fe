"""Reverse-mode gradients of scalar functions of pytrees: ``grad`` and ``value_and_grad``."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch.func
from torch._C import _functorch

from . import _api_util
from ._typing import ArgNums
from .tree import NAMESPACE

__all__ = ["grad", "value_and_grad"]


def value_and_grad(
    fun: Callable[..., Any], argnums: ArgNums = 0, *, has_aux: bool = False
) -> Callable[..., Any]:
    """Creates a function that evaluates ``fun`` and its gradient with respect to ``argnums``.

    Args:
        fun: a function whose arguments at ``argnums`` are pytrees of floating-point tensors and
            whose output is a real scalar tensor (shape ``()``), or ``(output, aux)`` with
            ``has_aux=True``.
        argnums: the position, or a tuple of positions, of the arguments to differentiate.
            Negative positions count from the end.
        has_aux: whether ``fun`` returns a pair ``(output, aux)``; ``aux`` is returned as is
            (its tensors detached from the differentiation).

    Returns:
        A function with the signature of ``fun`` returning ``(value, grads)``, or
        ``((value, aux), grads)`` with ``has_aux=True``. ``grads`` has the tree structure of the
        differentiated argument, or is a tuple of them when ``argnums`` is a tuple.

    >>> import torch, funcgrad as fg
    >>> def loss(params, x):
    ...     return ((params["w"] * x + params["b"]) ** 2).sum()
    >>> params = {"w": torch.tensor(2.0), "b": torch.tensor(1.0)}
    >>> value, grads = fg.value_and_grad(loss)(params, torch.tensor([1.0, 2.0]))
    >>> value
    tensor(34.)
    >>> grads
    {'w': tensor(26.), 'b': tensor(16.)}
    """
    _api_util.check_callable(fun, "value_and_grad")
    nums, single = _api_util.argnums_spec(argnums, "value_and_grad")
    return _value_and_grad(fun, nums, single, has_aux, "value_and_grad", return_value=True)


def grad(
    fun: Callable[..., Any], argnums: ArgNums = 0, *, has_aux: bool = False
) -> Callable[..., Any]:
    """Creates a function that evaluates the gradient of ``fun`` with respect to ``argnums``.

    ``fun`` must return a real scalar tensor. The gradient has the tree structure of the
    differentiated argument (a tuple of them when ``argnums`` is a tuple). Python control flow
    on concrete values works as in eager PyTorch, and ``grad`` nests and composes with every
    other transform: ``grad(grad(f))``, ``vmap(grad(f))``, ``jacfwd(grad(f))``.

    Args:
        fun: the function to differentiate.
        argnums: the position, or a tuple of positions, of the arguments to differentiate.
        has_aux: whether ``fun`` returns ``(output, aux)``; then ``(grads, aux)`` is returned.

    Returns:
        A function with the signature of ``fun`` returning the gradient (and ``aux``).

    >>> import torch, funcgrad as fg
    >>> fg.grad(lambda x: (x**3).sum())(torch.tensor([1.0, 2.0]))
    tensor([ 3., 12.])
    >>> fg.grad(fg.grad(lambda x: x**3))(torch.tensor(2.0))
    tensor(12.)
    >>> fg.grad(lambda x, y: (x * y).sum(), argnums=(0, 1))(torch.tensor(2.0), torch.tensor(3.0))
    (tensor(3.), tensor(2.))
    """
    _api_util.check_callable(fun, "grad")
    nums, single = _api_util.argnums_spec(argnums, "grad")
    return _value_and_grad(fun, nums, single, has_aux, "grad", return_value=False)


# NOTE [grad without torch's pytree]
# torch.func.grad_and_value spends a large part of a small model's gradient in torch's Python
# pytree: it wraps its arguments for a new grad level, marks them as requiring grad, flattens,
# unflattens and unwraps arguments and results, each with tree_map/tree_flatten (~30 walks per
# call; ~90 of ~325 us for a 64-128-128-10 MLP at batch 32, one thread). funcgrad already hands
# it one flat tuple (NOTE [lean calls into torch.func]), so in eager mode it runs those steps
# itself, on that tuple, with the functorch primitives torch.func is built from:
# _grad_increment_nesting, _wrap_for_grad, requires_grad_ under
# set_inplace_requires_grad_allowed, the function, torch.autograd.grad with create_graph=True,
# zeros for unused inputs, _unwrap_for_grad, _grad_decrement_nesting (the steps of
# torch._functorch.eager_transforms.grad_and_value_impl). The levels are torch's own, so nesting,
# composition with vmap/jvp, and torch's refusal of writes into captured tensors are unchanged.
# While dynamo traces (jit), torch.func.grad_and_value runs: dynamo handles it specially.
# One step differs: torch.func always runs the backward with create_graph=True, so that an
# enclosing transform or autograd can differentiate the gradient. Here that graph is built only
# where someone can use it: inside another transform (functorch's interpreter stack is not
# empty), or where the unwrapped output requires grad at the outer level (an argument or a
# captured tensor that torch.autograd tracks, as in meta-learning). Otherwise the backward runs
# with create_graph=False, which builds nothing and frees saved tensors as it goes: the same
# values (tests/test_grad_engine.py compares bits), ~8% less time for a small MLP's gradient.
# (Forward-mode AD outside is unaffected: torch's no-grad mode does not stop tangents.)
# Like torch.func, the backward runs with torch's compiled autograd off; unlike it, without
# importing torch._dynamo when nothing has (compiled autograd cannot be on then): a program's
# first gradient takes ~3 ms instead of the ~1.1 s of that import.
_LEVEL_PRIMITIVES = all(
    hasattr(_functorch, name)
    for name in (
        "_grad_increment_nesting",
        "_grad_decrement_nesting",
        "_wrap_for_grad",
        "_unwrap_for_grad",
        "get_inplace_requires_grad_allowed",
        "set_inplace_requires_grad_allowed",
    )
)
_HOOKS_MESSAGE = (
    "funcgrad's reverse-mode transforms (grad, value_and_grad, vjp) do not support saved tensor "
    "hooks (torch.func's do not either): call the function outside the hooks' context."
)


def _compiled_autograd_off() -> contextlib.AbstractContextManager[Any]:
    """Turns torch's compiled autograd off for the backward, as torch.func does. Compiled
    autograd can only be on once torch._dynamo is imported: before that, nothing to turn off,
    and no import (over a second) on a program's first gradient."""
    if "torch._dynamo" not in sys.modules:
        return contextlib.nullcontext()
    return torch._dynamo.compiled_autograd._disable()


def _differentiable(leaves: Sequence[torch.Tensor], level: int) -> list[torch.Tensor]:
    """``leaves`` wrapped for the grad ``level`` and marked as requiring grad (functorch's
    ``_create_differentiable``), for the eager engines here and in _jvp_vjp.py."""
    inputs = [_functorch._wrap_for_grad(x, level) for x in leaves]
    allowed = _functorch.get_inplace_requires_grad_allowed()
    _functorch.set_inplace_requires_grad_allowed(True)
    try:
        for x in inputs:
            x.requires_grad_()
    finally:
        _functorch.set_inplace_requires_grad_allowed(allowed)
    return inputs


def _dense(
    grads: Sequence[torch.Tensor | None], inputs: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``torch.autograd.grad(..., allow_unused=True)``'s result with zeros for unused inputs."""
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def _grad_and_value(
    flat_fun: Callable[[Any, _Call], Any], diff: Any, call: _Call, has_aux: bool
) -> tuple[Any, Any]:
    """``torch.func.grad_and_value(flat_fun, has_aux=has_aux)(diff, call)`` for a tensor or a
    tuple of tensors ``diff``, in eager mode (NOTE [grad without torch's pytree])."""
    bare = isinstance(diff, torch.Tensor)
    outermost = _functorch.peek_interpreter_stack() is None
    with torch.autograd.graph.disable_saved_tensors_hooks(_HOOKS_MESSAGE):
        level = _functorch._grad_increment_nesting()
        try:
            with torch.enable_grad():
                inputs = _differentiable((diff,) if bare else diff, level)
                out = flat_fun(inputs[0] if bare else tuple(inputs), call)
                aux: tuple[torch.Tensor, ...] = ()
                if has_aux:
                    out, aux = out
                value: Any = _functorch._unwrap_for_grad(out, level)
                grads: Sequence[torch.Tensor | None] = (None,) * len(inputs)
                if out.requires_grad:
                    # NOTE [grad without torch's pytree]: the backward graph is only built
                    # when something outside can differentiate the gradient.
                    create_graph = not outermost or value.requires_grad
                    with _compiled_autograd_off():
                        grads = torch.autograd.grad(
                            out, inputs, create_graph=create_graph, allow_unused=True
                        )
                unwrapped = [_functorch._unwrap_for_grad(g, level) for g in _dense(grads, inputs)]
                if has_aux:
                    value = (value, tuple(_functorch._unwrap_for_grad(a, level) for a in aux))
        finally:
            _functorch._grad_decrement_nesting()
    return (unwrapped[0] if bare else tuple(unwrapped)), value


class _Call:
    """Everything but the differentiated tensors, passed to torch.func as one opaque object."""

    __slots__ = ("aux", "bare", "kwargs", "positions", "rest", "treedef")

    def __init__(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], treedef: Any, positions: Sequence[int]
    ) -> None:
        self.rest = args
        self.kwargs = kwargs
        self.treedef = treedef
        self.positions = positions
        self.aux = _api_util.Box()
        self.bare = False


def _value_and_grad(
    fun: Callable[..., Any],
    nums: tuple[int, ...],
    single: bool,
    has_aux: bool,
    name: str,
    *,
    return_value: bool,
) -> Callable[..., Any]:
    hint = f"(argnums={nums[0] if single else nums})"

    def flat_fun(diff_leaves: Any, call: _Call) -> Any:
        if call.bare:
            diff_leaves = (diff_leaves,)
        args = list(call.rest)
        for p, a in zip(call.positions, call.treedef.unflatten(diff_leaves)):
            args[p] = a
        out = fun(*args, **call.kwargs)
        if has_aux:
            out, aux_tree = _api_util.split_aux(name, out)
            _api_util.check_scalar_output(name, out, has_aux)
            return out, _api_util.pack_aux(aux_tree, call.aux)
        _api_util.check_scalar_output(name, out, has_aux)
        return out

    # NOTE [lean calls into torch.func]
    # torch.func walks every argument it is given with torch's Python pytree (tens of
    # microseconds for a handful of nodes). The torch.func transform is therefore built once,
    # and called with exactly two arguments: the flat tuple of differentiated tensors and one
    # opaque object carrying everything else. Tensors reached through that object are closed
    # over, which torch.func supports as it does for closures. A single tensor goes bare, not in
    # a 1-tuple: one pytree node fewer on each of torch.func's several walks.
    torch_value_and_grad = torch.func.grad_and_value(flat_fun, argnums=0, has_aux=has_aux)

    @functools.wraps(fun)
    def value_and_grad_fun(*args: Any, **kwargs: Any) -> Any:
        positions = _api_util.resolve_argnums(nums, len(args), name)
        diff = tuple(args[p] for p in positions)
        leaves: list[Any]
        leaves, treedef = optree.tree_flatten(diff, namespace=NAMESPACE)  # type: ignore[arg-type]
        _api_util.check_differentiable(name, leaves, args, positions, hint)
        call = _Call(args, kwargs, treedef, positions)
        call.bare = len(leaves) == 1
        diff_leaves = leaves[0] if call.bare else tuple(leaves)
        try:
            if _LEVEL_PRIMITIVES and not torch.compiler.is_compiling():
                grads, value = _grad_and_value(flat_fun, diff_leaves, call, has_aux)
            else:
                grads, value = torch_value_and_grad(diff_leaves, call)
        except RuntimeError as e:
            refused = _api_util.in_place_error(name, e)
            if refused is not None:
                raise refused from None
            raise
        g = treedef.unflatten((grads,) if call.bare else grads)
        if single:
            g = g[0]
        if has_aux:
            value, aux = value
            aux = _api_util.unpack_aux(call.aux, aux)
            return ((value, aux), g) if return_value else (g, aux)
        return (value, g) if return_value else g

    return value_and_grad_fun
