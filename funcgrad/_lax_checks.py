"""What funcgrad.lax's control-flow functions share: carry checks, predicates, errors.

# NOTE [lax strategies]
# torch's own control-flow operators (torch.cond, torch._higher_order_ops.scan and while_loop)
# are prototypes on torch 2.13: grad through scan fails with "Expected FakeTensor", torch.cond
# fails on aliasing when a branch contains ``x @ x.mT``, and under torch.compile while_loop
# composes with no torch.func transform (measured: grad and jvp fail with "Expected FakeTensor",
# vmap with "Cannot access storage of BatchedTensorImpl"). funcgrad.lax therefore runs its loops
# and branches as ordinary PyTorch code that every transform already understands, and picks a
# strategy per situation:
#
# - scan, map, fori_loop with Python-int bounds: a Python loop over the leading axis, in eager
#   mode and under every transform (grad, vjp, jvp, vmap record or batch each step like any
#   other code). Under fg.jit, dynamo traces the same loop, which unrolls it into one graph:
#   no graph break and full fusion, but compile time grows with the number of steps
#   (benchmarks/lax.py measures both). ``unroll`` is accepted for JAX compatibility and does
#   not change what runs.
# - cond and switch with a concrete predicate (a Python value, or a tensor that is not batched
#   by vmap, in eager mode, including under grad/jvp whose wrapped tensors support bool()): the
#   predicate is read and only the chosen branch runs, as in eager PyTorch. Then the branches'
#   outputs are not compared (only one exists): a mismatch shows once both branches run.
# - cond and switch with a predicate batched by vmap, or any tensor predicate under fg.jit:
#   masking. Every branch runs on every example and torch.where selects per example (JAX does
#   the same for a batched predicate). No graph break, and everything differentiates, but it
#   costs every branch, and a branch that produces inf or NaN on the examples it does not
#   select gives NaN gradients through the unselected side (0 * inf): guard such branches'
#   inputs (the "double where" trick), as in JAX.
# - while_loop with a concrete predicate: a Python while loop. Batched predicate (vmap): the
#   loop runs until every example is done (the physical predicate, under all vmap levels, is
#   reduced with any()); finished examples are frozen with torch.where, as JAX's batching rule
#   does. Reverse mode is refused (JAX's rule: the number of iterations is not static) by an
#   autograd.Function around the result whose backward raises, whose jvp passes tangents
#   through, and whose vmap rule is generated: forward mode and vmap keep working.
# - while_loop under fg.jit with a tensor predicate: a data-dependent trip count cannot be
#   unrolled, so torch._higher_order_ops.while_loop compiles it, forward only and only outside
#   torch.func transforms (the only combination measured to work); a predicate batched by vmap
#   raises a clear error naming fg.jit(fullgraph=False) and fori_loop with static bounds.
#   A cond_fun that returns a Python bool while tracing is unrolled like scan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch
from torch._C import _functorch

from . import _api_util
from .tree import NAMESPACE

__all__: list[str] = []

_NUMBER = (bool, int, float)


def fun_name(fun: Any) -> str:
    return str(getattr(fun, "__qualname__", None) or getattr(fun, "__name__", None) or fun)


def check_callable(api: str, fun: Any, what: str) -> None:
    if not callable(fun):
        raise TypeError(
            f"funcgrad.lax.{api}: {what} must be callable, got {_api_util.describe(fun)}."
        )


# --------------------------------------------------------------------------------------------
# Carries
# --------------------------------------------------------------------------------------------


class Carry:
    """The flat form of a loop's carry: leaves, structure and which leaves were Python numbers.

    Python numbers become tensors (``torch.as_tensor``); like JAX's weakly typed values, such a
    leaf takes the dtype the body gives it on its first step.
    """

    __slots__ = ("leaves", "treedef", "weak")

    def __init__(self, api: str, init: Any, what: str) -> None:
        leaves, self.treedef = optree.tree_flatten(init, namespace=NAMESPACE)
        device = next((x.device for x in leaves if isinstance(x, torch.Tensor)), None)
        self.weak: list[bool] | None = None
        for i, x in enumerate(leaves):
            if isinstance(x, torch.Tensor):
                continue
            if not isinstance(x, _NUMBER):
                path = _api_util.leaf_paths(init, what)[i]
                raise TypeError(
                    f"funcgrad.lax.{api}: every leaf of {what} must be a tensor or a Python "
                    f"number, but the leaf at {path} is {_api_util.describe(x)}. Make it a "
                    "tensor, or close over it in the function instead of carrying it."
                )
            if self.weak is None:
                self.weak = [False] * len(leaves)
            self.weak[i] = True
            leaves[i] = torch.as_tensor(x, device=device)
        self.leaves: list[torch.Tensor] = leaves

    def tree(self) -> Any:
        return self.treedef.unflatten(self.leaves)


def check_carry(
    api: str, fun: Any, carry: Carry, new: Any, what: str, fix: str
) -> list[torch.Tensor]:
    """Checks that ``new`` has the carry's structure, shapes and dtypes; returns its leaves.

    The first call adopts the body's dtype for weakly typed (Python number) leaves.
    """
    leaves, treedef = optree.tree_flatten(new, namespace=NAMESPACE)
    if treedef != carry.treedef:
        raise TypeError(
            f"funcgrad.lax.{api}: {fun_name(fun)} must return {what} with the same tree "
            f"structure as its input, but the input has structure {carry.treedef} and the "
            f"output has structure {treedef}. {fix}"
        )
    for i, (x, e) in enumerate(zip(leaves, carry.leaves)):
        if isinstance(x, torch.Tensor) and x.shape == e.shape and x.dtype == e.dtype:
            continue
        if carry.weak is not None and carry.weak[i]:
            if isinstance(x, _NUMBER):
                x = leaves[i] = torch.as_tensor(x, dtype=e.dtype, device=e.device)
            if isinstance(x, torch.Tensor) and x.shape == e.shape:
                carry.leaves[i] = e.to(x.dtype)
                carry.weak[i] = False
                continue
        path = _api_util.leaf_paths(new, what.split()[-1])[i]
        raise TypeError(
            f"funcgrad.lax.{api}: {fun_name(fun)} must return {what} with the same shapes and "
            f"dtypes as its input, but at {path} the input is {_api_util.describe(e)} and the "
            f"output is {_api_util.describe(x)}. {fix}"
        )
    if carry.weak is not None:
        carry.weak = None
    return leaves


def check_branches(api: str, funs: Sequence[Any], outs: Sequence[Any]) -> list[list[Any]]:
    """Checks that every branch returned the structure, shapes and dtypes of the first."""
    first_leaves, first_def = optree.tree_flatten(outs[0], namespace=NAMESPACE)
    all_leaves = [first_leaves]
    fix = (
        "Every branch must return the same tree structure, shapes and dtypes (JAX's rule): "
        "pad, cast or return placeholders (e.g. zeros) so that they agree."
    )
    for fun, out in zip(funs[1:], outs[1:]):
        leaves, treedef = optree.tree_flatten(out, namespace=NAMESPACE)
        if treedef != first_def:
            raise TypeError(
                f"funcgrad.lax.{api}: the branches must return the same tree structure, but "
                f"{fun_name(funs[0])} returned {first_def} and {fun_name(fun)} returned "
                f"{treedef}. {fix}"
            )
        for i, (a, b) in enumerate(zip(first_leaves, leaves)):
            if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
                a_t, b_t = torch.as_tensor(a), torch.as_tensor(b)
            else:
                a_t, b_t = a, b
            if a_t.shape != b_t.shape or a_t.dtype != b_t.dtype:
                path = _api_util.leaf_paths(outs[0], "output")[i]
                raise TypeError(
                    f"funcgrad.lax.{api}: the branches must return the same shapes and dtypes, "
                    f"but at {path} {fun_name(funs[0])} returned {_api_util.describe(a)} and "
                    f"{fun_name(fun)} returned {_api_util.describe(b)}. {fix}"
                )
        all_leaves.append(leaves)
    return all_leaves


def split_pair(api: str, fun: Any, out: Any) -> tuple[Any, Any]:
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        got = (
            f"a {type(out).__name__} of length {len(out)}"
            if isinstance(out, (tuple, list))
            else _api_util.describe(out)
        )
        raise TypeError(
            f"funcgrad.lax.{api}: {fun_name(fun)} must return a pair (carry, y), but it "
            f"returned {got}. Return (new_carry, y), with y=None when there is no output."
        )
    return out[0], out[1]


# --------------------------------------------------------------------------------------------
# Predicates
# --------------------------------------------------------------------------------------------


def check_scalar(api: str, what: str, value: Any, *, integer: bool = False) -> None:
    """Predicates and indices are Python scalars or tensors of shape ``()``, as in JAX."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0:
            raise TypeError(
                f"funcgrad.lax.{api}: {what} must be a scalar (shape ()), got "
                f"{_api_util.describe(value)}. Reduce it (e.g. .all() or .any()), or use "
                "torch.where for an elementwise choice, or funcgrad.vmap for a batch."
            )
        if integer and (value.is_floating_point() or value.is_complex()):
            raise TypeError(
                f"funcgrad.lax.{api}: {what} must be an integer, got "
                f"{_api_util.describe(value)}. Convert it (e.g. index.long())."
            )
        if value.is_complex():
            raise TypeError(f"funcgrad.lax.{api}: {what} must be real, got {value.dtype}.")
        return
    ok = isinstance(value, int) if integer else isinstance(value, _NUMBER)
    if not ok:
        kind = "an int" if integer else "a bool"
        raise TypeError(
            f"funcgrad.lax.{api}: {what} must be {kind} or a scalar tensor, got "
            f"{_api_util.describe(value)}."
        )


def is_batched(t: torch.Tensor) -> bool:
    """Whether ``t`` is batched by some funcgrad.vmap level (under grad/jvp wrappers too)."""
    if torch.compiler.is_compiling():
        return bool(_functorch.is_batchedtensor(t))
    while _functorch.is_functorch_wrapped_tensor(t):
        if _functorch.is_batchedtensor(t):
            return True
        t = _functorch.get_unwrapped(t)
    return False


def physical(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor under every functorch wrapper (batch dimensions included)."""
    while _functorch.is_functorch_wrapped_tensor(t):
        t = _functorch.get_unwrapped(t)
    return t


def concrete(value: Any) -> bool | None:
    """The predicate's value when it can be read (see NOTE [lax strategies]), else ``None``."""
    if not isinstance(value, torch.Tensor):
        return bool(value)
    if torch.compiler.is_compiling() or is_batched(value):
        return None
    return bool(value)


def as_mask(pred: torch.Tensor) -> torch.Tensor:
    return pred if pred.dtype == torch.bool else pred != 0


# --------------------------------------------------------------------------------------------
# while_loop is not reverse-differentiable
# --------------------------------------------------------------------------------------------

NO_REVERSE = (
    "funcgrad.lax.while_loop: reverse-mode differentiation (grad, vjp, jacrev, backward) does "
    "not work through while_loop, as in JAX: its number of iterations is only known at run "
    "time, so its intermediate values are not kept. Use funcgrad.lax.scan, or "
    "funcgrad.lax.fori_loop with Python-int bounds (a static trip count, which runs as a "
    "scan); forward mode (jvp, jacfwd) works through while_loop."
)


class _NoReverse(torch.autograd.Function):
    """The identity, whose backward refuses reverse mode (NOTE [lax strategies])."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        raise ValueError(NO_REVERSE)

    @staticmethod
    def jvp(ctx: Any, *tangents: torch.Tensor) -> Any:
        return tangents


def no_reverse(leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """``leaves``, with reverse mode through the floating-point ones refused."""
    if not torch.is_grad_enabled():
        return leaves
    idx = [i for i, x in enumerate(leaves) if x.is_floating_point() or x.is_complex()]
    if not idx:
        return leaves
    outs = _NoReverse.apply(*(leaves[i] for i in idx))  # type: ignore[no-untyped-call]
    result = list(leaves)
    for i, o in zip(idx, outs):
        result[i] = o
    return result


def where_tree(mask: torch.Tensor, a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
    return [torch.where(mask, x, y) for x, y in zip(a, b)]


Fun = Callable[..., Any]
