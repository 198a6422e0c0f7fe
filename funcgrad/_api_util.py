"""Argument normalisation, validation and the error messages shared by the transforms.

# NOTE [optree at the boundary]
# Every transform flattens its pytree arguments with optree (namespace "funcgrad") and hands
# flat tuples of tensors to torch.func. torch.func only understands torch's own pytree registry,
# so a node registered with funcgrad.tree.register_dataclass would otherwise be an opaque leaf to
# it: its tensors would not be wrapped for differentiation or batching, nor unwrapped on the way
# out. Outputs (and auxiliary data) are flattened inside the function that torch.func sees, and
# the structure travels back beside the tensors. Validation runs on the flat leaves (cheap); the
# tree paths for an error message are only computed once something is known to be wrong.
"""

from __future__ import annotations

import collections
import contextlib
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optree
import torch

from .tree import NAMESPACE, _same_structure

__all__: list[str] = []


def check_callable(fun: Any, name: str) -> None:
    if not callable(fun):
        raise TypeError(
            f"funcgrad.{name}: expected a callable as its first argument, got "
            f"{type(fun).__name__} ({fun!r})."
        )


def describe(x: Any) -> str:
    """A short description of a leaf for error messages: dtype and shape, or type and value."""
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list, dict)):
        return f"a {type(x).__name__} of length {len(x)}"
    text = repr(x)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(x).__name__} {text}"


def leaf_paths(tree: Any, root: str) -> list[str]:
    """Readable paths (``args[0]['w'].bias``) of the leaves of ``tree``, in flattening order."""
    accessors, _, _ = optree.tree_flatten_with_accessor(tree, namespace=NAMESPACE)
    return [a.codify(root) for a in accessors]


def flatten_args_with_paths(
    args: Sequence[Any], positions: Sequence[int], root: str = "args"
) -> tuple[list[Any], list[str]]:
    """Leaves and readable paths of ``args[p]`` for ``p`` in ``positions`` (error paths only)."""
    leaves: list[Any] = []
    paths: list[str] = []
    for p in positions:
        sub_leaves = optree.tree_leaves(args[p], namespace=NAMESPACE)
        leaves.extend(sub_leaves)
        paths.extend(leaf_paths(args[p], f"{root}[{p}]"))
    return leaves, paths


# --------------------------------------------------------------------------------------------
# argnums
# --------------------------------------------------------------------------------------------


def argnums_spec(argnums: Any, name: str) -> tuple[tuple[int, ...], bool]:
    """Validates ``argnums`` when the transform is created; returns ``(nums, is_single_int)``."""
    if isinstance(argnums, int) and not isinstance(argnums, bool):
        return (operator.index(argnums),), True
    if isinstance(argnums, (tuple, list)) and all(
        isinstance(a, int) and not isinstance(a, bool) for a in argnums
    ):
        if not argnums:
            raise ValueError(
                f"funcgrad.{name}: argnums is an empty tuple; give at least one argument "
                "position to differentiate, e.g. argnums=0."
            )
        if len(set(argnums)) != len(argnums):
            raise ValueError(
                f"funcgrad.{name}: argnums must not repeat a position, got {tuple(argnums)}. "
                "Differentiate each argument once."
            )
        return tuple(argnums), False
    raise TypeError(
        f"funcgrad.{name}: argnums must be an int or a tuple of ints, got "
        f"{type(argnums).__name__} ({argnums!r})."
    )


def resolve_argnums(nums: tuple[int, ...], nargs: int, name: str) -> tuple[int, ...]:
    """Turns negative positions into positive ones and checks them against ``nargs``."""
    if all(0 <= a < nargs for a in nums):
        return nums
    for a in nums:
        if not -nargs <= a < nargs:
            raise ValueError(
                f"funcgrad.{name}: argnums={a} is out of range for a call with {nargs} "
                f"positional argument{'s' if nargs != 1 else ''}. Differentiated arguments must "
                "be passed positionally; argnums counts from 0 (negative values count from the "
                "end)."
            )
    resolved = tuple(a % nargs for a in nums)
    if len(set(resolved)) != len(resolved):
        raise ValueError(
            f"funcgrad.{name}: argnums={nums} names the same position twice for a call with "
            f"{nargs} positional arguments (positions {resolved})."
        )
    return resolved


def check_chunk_size(name: str, chunk_size: Any) -> None:
    if chunk_size is not None and (
        not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1
    ):
        raise ValueError(
            f"funcgrad.{name}: chunk_size must be None or a positive int, got {chunk_size!r}."
        )


# --------------------------------------------------------------------------------------------
# Pytree prefixes (vmap's in_axes/out_axes, optimizer masks)
# --------------------------------------------------------------------------------------------


def _is_none(x: Any) -> bool:
    return x is None


def _mismatch(prefix: Any, full: Any, path: str, what: str) -> str | None:
    """Where ``prefix`` stops being a pytree prefix of ``full``: a message, or ``None``."""
    if prefix is None or isinstance(prefix, (int, bool)):
        return None
    p_children, p_def = optree.tree_flatten(
        prefix, is_leaf=lambda x: x is not prefix, namespace=NAMESPACE
    )
    if p_def.num_nodes == 1:  # an unregistered object: not a valid axis spec either
        return f"at {path}, the {what} is {prefix!r}, which is neither a leaf value nor a container"
    f_children, f_def = optree.tree_flatten(
        full, is_leaf=lambda x: x is not full, namespace=NAMESPACE
    )
    if p_def != f_def:
        return f"at {path}, the {what} has structure {p_def} but the value has structure {f_def}"
    accessors = optree.treespec_accessors(p_def)
    for acc, p, f in zip(accessors, p_children, f_children):
        msg = _mismatch(p, f, acc.codify(path), what)
        if msg is not None:
            return msg
    return None


def broadcast_prefix(
    name: str,
    spec: Any,
    tree: Any,
    root: str,
    what: str,
    hint: str = "Use an int or None for a whole subtree, or mirror its structure exactly.",
) -> list[Any]:
    """Broadcasts a pytree prefix of ``tree`` (ints, bools, None as leaves) to one value per leaf.

    Raises a ValueError naming the first path where ``spec`` is not a prefix of ``tree``.
    """
    if spec is None or isinstance(spec, (int, bool)):
        return [spec] * optree.tree_structure(tree, namespace=NAMESPACE).num_leaves
    if torch.compiler.is_compiling():
        axes: list[Any] = []
        _broadcast_traced(name, spec, tree, root, what, axes)
        return axes
    spec_def = optree.tree_structure(spec, is_leaf=_is_none, namespace=NAMESPACE)
    try:
        subtrees = spec_def.flatten_up_to(tree)
    except (ValueError, TypeError):
        detail = _mismatch(spec, tree, root, what) or "the structures differ"
        raise ValueError(
            f"funcgrad.{name}: {what} must be a pytree prefix of the {root}, but {detail}. {hint}"
        ) from None
    axes = []
    for a, sub in zip(optree.tree_leaves(spec, is_leaf=_is_none, namespace=NAMESPACE), subtrees):
        axes.extend([a] * optree.tree_structure(sub, namespace=NAMESPACE).num_leaves)
    return axes


def _broadcast_traced(
    name: str, spec: Any, tree: Any, root: str, what: str, out: list[Any]
) -> None:
    """broadcast_prefix while torch.compile traces: dynamo's stand-in for optree cannot flatten
    a dict of Python constants (an axis spec), so dicts are walked here by key."""
    if spec is None or optree.tree_is_leaf(spec, namespace=NAMESPACE):
        out.extend([spec] * len(optree.tree_leaves(tree, namespace=NAMESPACE)))
        return
    if isinstance(spec, dict):
        if type(tree) is not type(spec) or set(tree) != set(spec):
            raise ValueError(
                f"funcgrad.{name}: {what} must be a pytree prefix of the {root}, but the dict "
                f"keys differ: {sorted(map(repr, spec))} vs {sorted(map(repr, tree))}."
            )
        keys = list(spec) if isinstance(spec, collections.OrderedDict) else sorted(spec)
        for k in keys:
            _broadcast_traced(name, spec[k], tree[k], root, what, out)
        return
    if isinstance(spec, (tuple, list)):
        spec_children: Any = spec
        ok = type(tree) is type(spec) and len(tree) == len(spec)
        children: Any = tree
    else:
        spec_children, _, _, _ = optree.tree_flatten_one_level(spec, namespace=NAMESPACE)
        children, _, _, _ = optree.tree_flatten_one_level(tree, namespace=NAMESPACE)
        ok = type(tree) is type(spec) and len(children) == len(spec_children)
    if not ok:
        raise ValueError(
            f"funcgrad.{name}: {what} must be a pytree prefix of the {root}, but a "
            f"{type(spec).__name__} node of the {what} meets a {type(tree).__name__}."
        )
    for a, sub in zip(spec_children, children):
        _broadcast_traced(name, a, sub, root, what, out)


# --------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------


def is_float_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def check_differentiable(
    name: str,
    leaves: Sequence[Any],
    args: Sequence[Any],
    positions: Sequence[int],
    hint: str,
    root: str = "args",
) -> None:
    """Raises a clear error unless every leaf is a floating-point tensor."""
    for x in leaves:
        if not is_float_tensor(x):
            break
    else:
        if leaves:
            return
        raise ValueError(
            f"funcgrad.{name}: the differentiated arguments (positions {tuple(positions)}) "
            f"contain no tensors, so there is nothing to differentiate. {hint}"
        )
    all_leaves, paths = flatten_args_with_paths(args, positions, root)
    for x, path in zip(all_leaves, paths):
        if isinstance(x, torch.Tensor) and not x.is_floating_point():
            raise TypeError(
                f"funcgrad.{name}: can only differentiate floating-point tensors, but the leaf at "
                f"{path} is {describe(x)}. Cast it (e.g. x.float()), or pass it in an argument "
                f"that is not differentiated. {hint}"
            )
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"funcgrad.{name}: can only differentiate tensors, but the leaf at {path} is "
                f"{describe(x)}. Make it a tensor (torch.as_tensor), or pass it in an argument "
                f"that is not differentiated. {hint}"
            )


def split_aux(name: str, out: Any) -> tuple[Any, Any]:
    """Splits ``(output, aux)`` for ``has_aux=True``."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        got = (
            f"a {type(out).__name__} of length {len(out)}"
            if isinstance(out, (tuple, list))
            else describe(out)
        )
        raise TypeError(
            f"funcgrad.{name}: with has_aux=True the function must return a pair "
            f"(output, aux), but it returned {got}. Return a 2-tuple, or set has_aux=False."
        )
    return out[0], out[1]


def check_scalar_output(name: str, out: Any, has_aux: bool) -> None:
    """``grad`` and ``value_and_grad`` need a real scalar tensor output."""
    if isinstance(out, torch.Tensor):
        if out.dim() == 0 and out.is_floating_point():
            return
        if out.dim() != 0:
            raise TypeError(
                f"funcgrad.{name}: gradients are only defined for functions with a scalar output "
                f"(shape ()), but the output has shape {tuple(out.shape)}. Reduce it with .sum() "
                "or .mean(), or use funcgrad.jacrev for the full Jacobian."
            )
        raise TypeError(
            f"funcgrad.{name}: the output must be a floating-point scalar tensor, got "
            f"{describe(out)}. Compute the loss in floating point (e.g. out.float())."
        )
    hint = ""
    if not has_aux and isinstance(out, (tuple, list)) and len(out) == 2:
        hint = " If the function returns (loss, aux), pass has_aux=True."
    raise TypeError(
        f"funcgrad.{name}: the function must return a scalar tensor, but it returned "
        f"{describe(out)}.{hint}"
    )


def flatten_output(
    name: str, out: Any, what: str = "output", *, floating: bool = False
) -> tuple[list[Any], Any]:
    """Flattens a function output whose leaves must all be (floating-point) tensors."""
    leaves, treedef = optree.tree_flatten(out, namespace=NAMESPACE)
    for x in leaves:
        if not isinstance(x, torch.Tensor) or (floating and not x.is_floating_point()):
            _bad_output(name, out, leaves, what, floating)
    return leaves, treedef


def _bad_output(name: str, out: Any, leaves: list[Any], what: str, floating: bool) -> None:
    for path, y in zip(leaf_paths(out, what), leaves):
        if not isinstance(y, torch.Tensor):
            raise TypeError(
                f"funcgrad.{name}: every leaf of the function's {what} must be a tensor, "
                f"but the leaf at {path} is {describe(y)}. Return torch tensors "
                "(torch.as_tensor), or move non-tensor values into aux with has_aux=True."
            )
        if floating and not y.is_floating_point():
            raise TypeError(
                f"funcgrad.{name}: every leaf of the function's {what} must be a "
                f"floating-point tensor to be differentiated, but the leaf at {path} is "
                f"{describe(y)}. Cast it (e.g. .float()), or move it into aux with has_aux=True."
            )


# --------------------------------------------------------------------------------------------
# Purity
# --------------------------------------------------------------------------------------------

# NOTE [peek_interpreter_stack under dynamo]
# torch._C._functorch.peek_interpreter_stack() says whether a torch.func transform is active. While
# dynamo traces, it evaluates the call at trace time but wraps the result, None included, in an
# object variable, so ``peek_interpreter_stack() is None`` is False under torch.compile even with
# no transform active (torch 2.13); ``type(...) is NoneType`` is right in both modes, also inside
# grad/vmap traced by dynamo. Use in_transform().
_NoneType: Any = type(None)


def in_transform() -> bool:
    """Whether a torch.func transform (grad, vjp, jvp, vmap, ...) is active, eager or traced."""
    return type(torch._C._functorch.peek_interpreter_stack()) is not _NoneType


#: torch's message when a function writes into a tensor that torch.func differentiates.
_LEAF_IN_PLACE = "a leaf Variable that requires grad is being used in an in-place operation"
#: ... and when it writes into a tensor from outside the transform (captured).
_CAPTURED_IN_PLACE = "that would mutate a captured Tensor"


def versions(leaves: Sequence[Any]) -> list[int]:
    """Version counters of the tensor leaves (-1 for other leaves), to detect in-place writes.

    Empty while torch.compile traces: the check runs in eager mode only (NOTE [transforms
    under jit] in _jit.py).
    """
    if torch.compiler.is_compiling():
        return []
    return [x._version if isinstance(x, torch.Tensor) else -1 for x in leaves]


def first_mutated(leaves: Sequence[Any], before: Sequence[int]) -> int | None:
    for i, (x, v) in enumerate(zip(leaves, before)):
        if v != -1 and x._version != v:
            return i
    return None


def purity_error(name: str, path: str | None = None, captured: bool = False) -> RuntimeError:
    """The error for a transformed function that writes into one of its inputs."""
    if captured:
        what = (
            "in place a tensor it did not create (a non-differentiated argument, or a tensor "
            "it closes over)"
        )
    elif path is None:
        what = "a differentiated input in place"
    else:
        what = f"its input at {path} in place, so the caller's tensor has changed"
    return RuntimeError(
        f"funcgrad.{name}: the function modified {what} (an operation such as x.mul_(...) or "
        "x[i] = ...). Transformed functions must be pure: compute a new tensor instead "
        "(x = x * 2, x.index_put(...))."
    )


def in_place_error(name: str, error: RuntimeError) -> RuntimeError | None:
    """funcgrad's purity error when ``error`` is torch.func refusing an in-place write (into a
    differentiated input, or into a tensor from outside the transform), else ``None``."""
    text = str(error)
    if _LEAF_IN_PLACE in text:
        return purity_error(name)
    if _CAPTURED_IN_PLACE in text:
        return purity_error(name, captured=True)
    return None


@contextlib.contextmanager
def pure_call(name: str, leaves: Sequence[Any], paths: Callable[[], list[str]]) -> Iterator[None]:
    """Turns in-place writes into ``leaves`` during the block into funcgrad's purity error.

    ``paths`` gives the leaves' readable paths (only called when there is an error).
    """
    before = versions(leaves)
    try:
        yield
    except RuntimeError as e:
        refused = in_place_error(name, e)
        if refused is not None:
            raise refused from None
        i = first_mutated(leaves, before)
        if i is not None:  # e.g. an inner vmap refused a write into a tangent built from these
            raise purity_error(name, paths()[i]) from None
        raise
    i = first_mutated(leaves, before)
    if i is not None:
        raise purity_error(name, paths()[i])


def differentiable_output(
    name: str, out: Any, has_aux: bool, box: Box, cell: list[Any]
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Inside a flat function: splits aux, checks and flattens the output for torch.func.

    Returns ``(output tensors, aux tensors)``; the output structure is appended to ``cell`` and
    the rest of ``aux`` goes into ``box`` (see NOTE [optree at the boundary]).
    """
    aux: tuple[torch.Tensor, ...] = ()
    if has_aux:
        out, aux_tree = split_aux(name, out)
        aux = pack_aux(aux_tree, box)
    out_leaves, out_def = flatten_output(name, out, floating=True)
    if not out_leaves:
        raise ValueError(
            f"funcgrad.{name}: the function returned no tensors (its output is {out_def}); "
            "there is nothing to differentiate."
        )
    cell.append(out_def)
    return tuple(out_leaves), aux


class Box:
    """A mutable slot that torch.func passes through untouched (it is not a container)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = None


def pack_aux(aux: Any, box: Box) -> tuple[torch.Tensor, ...]:
    """Returns the tensors of ``aux`` for torch.func to unwrap; the rest goes into ``box``.

    torch.func only accepts tensors in auxiliary outputs (see the NOTE above).
    """
    leaves, treedef = optree.tree_flatten(aux, namespace=NAMESPACE)
    box.value = (leaves, treedef)
    return tuple(x for x in leaves if isinstance(x, torch.Tensor))


def unpack_aux(box: Box, tensors: Sequence[torch.Tensor]) -> Any:
    """Rebuilds the ``aux`` given to :func:`pack_aux` from its unwrapped tensors."""
    leaves, treedef = box.value
    it = iter(tensors)
    return treedef.unflatten([next(it) if isinstance(x, torch.Tensor) else x for x in leaves])


def check_like(
    name: str,
    what: str,
    expected_leaves: Sequence[torch.Tensor],
    expected_def: Any,
    got_tree: Any,
    root: str,
    hint: str,
) -> list[torch.Tensor]:
    """Checks ``got_tree`` against an expected structure, shapes and dtypes; returns its leaves."""
    leaves, treedef = optree.tree_flatten(got_tree, namespace=NAMESPACE)
    if not _same_structure(treedef, expected_def):
        raise ValueError(
            f"funcgrad.{name}: the {what} must have the structure {expected_def}, but got "
            f"{treedef}. {hint}"
        )
    for i, (e, g) in enumerate(zip(expected_leaves, leaves)):
        if not isinstance(g, torch.Tensor) or g.shape != e.shape or g.dtype != e.dtype:
            path = leaf_paths(got_tree, root)[i]
            expected = f"a {e.dtype} tensor of shape {tuple(e.shape)}"
            raise ValueError(
                f"funcgrad.{name}: the {what} leaf at {path} must be {expected}, but got "
                f"{describe(g)}. {hint}"
            )
    return leaves
