"""Vectorising map over pytrees: ``vmap``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch
import torch.func

from . import _api_util
from ._typing import AxisSpec
from .tree import NAMESPACE

__all__ = ["vmap"]

_RANDOMNESS = ("error", "different", "same")


def _is_none(x: Any) -> bool:
    return x is None


def _check_axis_spec(name: str, spec: Any, what: str) -> None:
    leaves = optree.tree_leaves(spec, is_leaf=_is_none, namespace=NAMESPACE)
    for a in leaves:
        if a is not None and (not isinstance(a, int) or isinstance(a, bool)):
            raise TypeError(
                f"funcgrad.{name}: every leaf of {what} must be an int or None, got "
                f"{type(a).__name__} ({a!r}) in {what}={spec!r}."
            )


def _mismatch(prefix: Any, full: Any, path: str) -> str | None:
    """Where ``prefix`` stops being a pytree prefix of ``full``: a message, or ``None``."""
    if prefix is None or isinstance(prefix, int):
        return None
    p_children, p_def = optree.tree_flatten(
        prefix, is_leaf=lambda x: x is not prefix, namespace=NAMESPACE
    )
    if p_def.num_nodes == 1:  # an unregistered object: not a valid axis spec either
        return (
            f"at {path} the axis spec is {prefix!r}, which is neither an int, None nor a container"
        )
    f_children, f_def = optree.tree_flatten(
        full, is_leaf=lambda x: x is not full, namespace=NAMESPACE
    )
    if p_def != f_def:
        return f"at {path} the axis spec has structure {p_def} but the value has structure {f_def}"
    accessors = optree.treespec_accessors(p_def)
    for acc, p, f in zip(accessors, p_children, f_children):
        msg = _mismatch(p, f, acc.codify(path))
        if msg is not None:
            return msg
    return None


def _leaf_axes(name: str, spec: Any, tree: Any, root: str, what: str) -> list[int | None]:
    """Broadcasts an axis-spec prefix to one axis per leaf of ``tree``."""
    if spec is None or isinstance(spec, int):
        return [spec] * optree.tree_structure(tree, namespace=NAMESPACE).num_leaves
    spec_def = optree.tree_structure(spec, is_leaf=_is_none, namespace=NAMESPACE)
    try:
        subtrees = spec_def.flatten_up_to(tree)
    except (ValueError, TypeError):
        detail = _mismatch(spec, tree, root) or "the structures differ"
        raise ValueError(
            f"funcgrad.{name}: {what} must be a pytree prefix of the {root}, but {detail}. "
            f"Use an int or None for a whole subtree, or mirror its structure exactly."
        ) from None
    axes: list[int | None] = []
    for a, sub in zip(optree.tree_leaves(spec, is_leaf=_is_none, namespace=NAMESPACE), subtrees):
        axes.extend([a] * optree.tree_structure(sub, namespace=NAMESPACE).num_leaves)
    return axes


def vmap(
    fun: Callable[..., Any],
    in_axes: AxisSpec = 0,
    out_axes: AxisSpec = 0,
    *,
    axis_size: int | None = None,
    chunk_size: int | None = None,
    randomness: str = "error",
) -> Callable[..., Any]:
    """Vectorises ``fun`` over an axis of its arguments, as if mapped over each slice.

    ``vmap(f)(xs)`` equals ``torch.stack([f(x) for x in xs])`` but runs as batched tensor
    operations. Keyword arguments are mapped over their axis 0 (tensors only), as in JAX.

    Args:
        fun: a function of pytrees returning a pytree of tensors.
        in_axes: an int, ``None``, or a tuple with one entry per positional argument, each a
            pytree prefix of that argument whose leaves are ints (the mapped axis, negative
            counting from the end) or ``None`` (not mapped).
        out_axes: where the mapped axis goes in the outputs, a pytree prefix of the output with
            int or ``None`` leaves (``None``: the output does not depend on the mapped axis).
        axis_size: the size of the mapped axis; required when no argument is mapped.
        chunk_size: map this many slices at a time to bound memory (``None``: all at once).
        randomness: ``"error"`` (random operations raise), ``"different"`` (each slice draws
            its own numbers) or ``"same"`` (all slices share them), for torch's global RNG.

    >>> import torch, funcgrad as fg
    >>> xs, w = torch.ones(4, 3), torch.arange(3.0)
    >>> fg.vmap(lambda x, w: (x * w).sum(), in_axes=(0, None))(xs, w)
    tensor([3., 3., 3., 3.])
    >>> out = fg.vmap(lambda p: {"s": p["a"].sum()}, in_axes=({"a": 1},))({"a": torch.ones(2, 5)})
    >>> out["s"].shape
    torch.Size([5])
    """
    name = "vmap"
    _api_util.check_callable(fun, name)
    if isinstance(in_axes, list):
        raise TypeError(
            f"funcgrad.{name}: in_axes must be an int, None or a tuple with one entry per "
            f"positional argument, got the list {in_axes!r}. Use a tuple."
        )
    _check_axis_spec(name, in_axes, "in_axes")
    _check_axis_spec(name, out_axes, "out_axes")
    if randomness not in _RANDOMNESS:
        raise ValueError(
            f"funcgrad.{name}: randomness must be one of {_RANDOMNESS}, got {randomness!r}."
        )
    _api_util.check_chunk_size(name, chunk_size)
    if axis_size is not None and (
        not isinstance(axis_size, int) or isinstance(axis_size, bool) or axis_size < 0
    ):
        raise ValueError(
            f"funcgrad.{name}: axis_size must be None or a non-negative int, got {axis_size!r}."
        )
    in_cache: dict[Any, list[int | None]] = {}
    out_cache: dict[Any, list[int | None]] = {}

    def in_leaf_axes(args: tuple[Any, ...], treedef: Any) -> list[int | None]:
        axes = in_cache.get(treedef)
        if axes is None:
            if isinstance(in_axes, tuple) and len(in_axes) != len(args):
                raise ValueError(
                    f"funcgrad.{name}: in_axes has {len(in_axes)} entries but the function was "
                    f"called with {len(args)} positional argument{'s' if len(args) != 1 else ''}; "
                    "give one entry per argument."
                )
            spec = in_axes if not isinstance(in_axes, tuple) else tuple(in_axes)
            axes = _leaf_axes(name, spec, args, "args", "in_axes")
            in_cache[treedef] = axes
        return axes

    def out_leaf_axes(out: Any, treedef: Any) -> list[int | None]:
        axes = out_cache.get(treedef)
        if axes is None:
            axes = _leaf_axes(name, out_axes, out, "output", "out_axes")
            out_cache[treedef] = axes
        return axes

    @functools.wraps(fun)
    def vmapped(*args: Any, **kwargs: Any) -> Any:
        leaves: list[Any]
        leaves, treedef = optree.tree_flatten(args, namespace=NAMESPACE)  # type: ignore[arg-type]
        axes = in_leaf_axes(args, treedef)
        n_pos = len(leaves)
        if kwargs:
            kw_leaves: list[Any]
            kw_leaves, kw_def = optree.tree_flatten(kwargs, namespace=NAMESPACE)  # type: ignore[arg-type]
            leaves = leaves + kw_leaves
            axes = axes + [0 if isinstance(x, torch.Tensor) else None for x in kw_leaves]
        mapped_idx: list[int] = []
        moved: list[torch.Tensor] = []
        size = None
        for i, (x, a) in enumerate(zip(leaves, axes)):
            if a is None:
                continue
            if not isinstance(x, torch.Tensor) or not -x.dim() <= a < x.dim():
                _bad_in_axis(name, args, kwargs, i, n_pos, x, a)
            if size is None:
                size = x.shape[a]
            elif x.shape[a] != size:
                _size_mismatch(name, args, kwargs, leaves, axes, n_pos)
            mapped_idx.append(i)
            moved.append(x if a == 0 else x.movedim(a, 0))
        if size is None:
            if axis_size is None:
                raise ValueError(
                    f"funcgrad.{name}: no argument is mapped (every in_axes is None and there "
                    "are no tensor keyword arguments), so the size of the mapped axis is "
                    "unknown. Pass axis_size=..., or map an argument."
                )
            size = axis_size
        elif axis_size is not None and axis_size != size:
            raise ValueError(
                f"funcgrad.{name}: axis_size={axis_size} but the mapped arguments have size "
                f"{size} along their mapped axes."
            )
        call = _Call(leaves, mapped_idx, treedef, n_pos, kw_def if kwargs else None)
        if not moved:
            # Nothing is mapped: an empty placeholder of the right size is, so that torch.func
            # still applies `randomness` and broadcasts the outputs.
            device = next((x.device for x in leaves if isinstance(x, torch.Tensor)), None)
            moved.append(torch.empty((size, 0), device=device))
        call.bare = len(moved) == 1
        result = batched_fun(moved[0] if call.bare else tuple(moved), call)
        batched = (result,) if isinstance(result, torch.Tensor) else result
        out_def, o_axes = call.out
        return _assemble(name, out_def, o_axes, batched, call.unbatched)

    def run(mapped: Any, call: _Call) -> Any:
        full = list(call.leaves)
        if call.bare:
            if call.mapped_idx:
                full[call.mapped_idx[0]] = mapped
        else:
            for i, x in zip(call.mapped_idx, mapped):
                full[i] = x
        call_args = call.treedef.unflatten(full[: call.n_pos])
        call_kwargs = {} if call.kw_def is None else call.kw_def.unflatten(full[call.n_pos :])
        out = fun(*call_args, **call_kwargs)
        out_leaves, out_def = _api_util.flatten_output(name, out)
        o_axes = out_leaf_axes(out, out_def)
        call.out = (out_def, o_axes)
        if any_unbatched:
            batched = [o for o, a in zip(out_leaves, o_axes) if a is not None]
            call.unbatched = [o for o, a in zip(out_leaves, o_axes) if a is None]
            _check_unbatched(name, out_def, o_axes, call.unbatched)
            out_leaves = batched
        return out_leaves[0] if len(out_leaves) == 1 else tuple(out_leaves)

    # NOTE [lean calls into torch.func] applies: the torch.func.vmap wrapper is built once and
    # called with the mapped tensors (bare when there is one) and one opaque _Call.
    # NOTE [out_axes None]
    # torch.func.vmap refuses out_dims=None for a tensor batched at *any* level, which breaks
    # vmap(jacfwd(f)) (jacfwd maps with out_axes None for its primal output). Outputs with
    # out_axes None therefore leave through the _Call, after a check that they are not batched
    # at this vmap's own level; every output torch.func sees has out_dims=0. That also lets
    # torch.func do the chunking, with its handling of randomness="same" across chunks.
    any_unbatched = None in optree.tree_leaves(out_axes, is_leaf=_is_none, namespace=NAMESPACE)
    batched_fun = torch.func.vmap(
        run, in_dims=(0, None), out_dims=0, randomness=randomness, chunk_size=chunk_size
    )

    return vmapped


class _Call:
    """The unmapped context of one vmapped call, passed to torch.func as one opaque object."""

    __slots__ = ("bare", "kw_def", "leaves", "mapped_idx", "n_pos", "out", "treedef", "unbatched")

    def __init__(
        self, leaves: list[Any], mapped_idx: list[int], treedef: Any, n_pos: int, kw_def: Any
    ) -> None:
        self.leaves = leaves
        self.mapped_idx = mapped_idx
        self.treedef = treedef
        self.n_pos = n_pos
        self.kw_def = kw_def
        self.bare = False
        self.out: Any = None
        self.unbatched: list[torch.Tensor] = []


def _check_unbatched(
    name: str, out_def: Any, o_axes: Sequence[int | None], unbatched: Sequence[torch.Tensor]
) -> None:
    """Outputs with out_axes None must not be batched at the current vmap level."""
    level = torch._C._functorch.current_level()
    for j, o in enumerate(unbatched):
        if (
            torch._C._functorch.is_batchedtensor(o)
            and torch._C._functorch.maybe_get_level(o) == level
        ):
            paths = _api_util.leaf_paths(out_def.unflatten([0] * len(o_axes)), "output")
            path = [p for p, a in zip(paths, o_axes) if a is None][j]
            raise ValueError(
                f"funcgrad.vmap: out_axes is None for the output at {path}, but it depends on "
                "the mapped axis. Give it an int out_axes, or make sure it does not depend on "
                "the mapped arguments."
            )


def _assemble(
    name: str,
    out_def: Any,
    o_axes: Sequence[int | None],
    batched: Sequence[torch.Tensor],
    unbatched: Sequence[torch.Tensor],
) -> Any:
    it_b, it_u = iter(batched), iter(unbatched)
    result = []
    for a in o_axes:
        if a is None:
            result.append(next(it_u))
            continue
        x = next(it_b)
        if a != 0:
            if not -x.dim() <= a < x.dim():
                i = len(result)
                path = _api_util.leaf_paths(out_def.unflatten([0] * len(o_axes)), "output")[i]
                raise ValueError(
                    f"funcgrad.{name}: out_axes={a} is out of range for the output at {path}, "
                    f"which has shape {tuple(x.shape[1:])} per example (valid out_axes: "
                    f"{-x.dim()} to {x.dim() - 1})."
                )
            x = x.movedim(0, a)
        result.append(x)
    return out_def.unflatten(result)


def _in_paths(args: Any, kwargs: dict[str, Any]) -> list[str]:
    return _api_util.leaf_paths(args, "args") + _api_util.leaf_paths(kwargs, "kwargs")


def _bad_in_axis(
    name: str, args: Any, kwargs: dict[str, Any], i: int, n_pos: int, x: Any, a: int
) -> None:
    path = _in_paths(args, kwargs)[i]
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"funcgrad.{name}: in_axes maps the leaf at {path} along axis {a}, but it is "
            f"{_api_util.describe(x)}; only tensors can be mapped. Give it in_axes None "
            "(e.g. in_axes=(0, None))."
        )
    raise ValueError(
        f"funcgrad.{name}: in_axes={a} is out of range for the leaf at {path}, which is "
        f"{_api_util.describe(x)} (valid axes: {-x.dim()} to {x.dim() - 1})."
    )


def _size_mismatch(
    name: str,
    args: Any,
    kwargs: dict[str, Any],
    leaves: Sequence[Any],
    axes: Sequence[int | None],
    n_pos: int,
) -> None:
    paths = _in_paths(args, kwargs)
    sizes = [
        f"{p} has size {x.shape[a]} along axis {a}"
        for p, x, a in zip(paths, leaves, axes)
        if a is not None
    ]
    raise ValueError(
        f"funcgrad.{name}: the mapped axes must all have the same size, but "
        + "; ".join(sizes)
        + ". Check in_axes, or pass arguments that are not mapped with in_axes None."
    )
