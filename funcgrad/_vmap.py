"""Vectorising map over pytrees: ``vmap``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch
from torch._C._functorch import is_batchedtensor, maybe_get_level
from torch._functorch import vmap as _functorch_vmap

from . import _api_util
from ._typing import AxisSpec
from .tree import NAMESPACE

__all__ = ["vmap"]

_RANDOMNESS = ("error", "different", "same")

# functorch's batching primitives, as torch.func.vmap's implementation uses them: these names
# are in torch._functorch.vmap's namespace in every torch this package supports (2.6 to 2.13;
# newer releases import them there from torch._functorch.predispatch). NOTE [vmap on
# functorch's primitives] below says why funcgrad does not go through torch.func.vmap.
_add_batch_dim: Callable[[torch.Tensor, int, int], torch.Tensor]
_add_batch_dim = _functorch_vmap._add_batch_dim  # type: ignore[attr-defined]
_remove_batch_dim: Callable[[torch.Tensor, int, int, int], torch.Tensor]
_remove_batch_dim = _functorch_vmap._remove_batch_dim  # type: ignore[attr-defined]
lazy_load_decompositions: Callable[[], None]
lazy_load_decompositions = _functorch_vmap.lazy_load_decompositions  # type: ignore[attr-defined]
vmap_increment_nesting = _functorch_vmap.vmap_increment_nesting


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

    # While torch.compile traces (``tracing``), tree structures are dynamo's stand-ins: no caching.
    def in_leaf_axes(args: tuple[Any, ...], treedef: Any, tracing: bool) -> list[int | None]:
        axes = None if tracing else in_cache.get(treedef)
        if axes is None:
            if isinstance(in_axes, tuple) and len(in_axes) != len(args):
                raise ValueError(
                    f"funcgrad.{name}: in_axes has {len(in_axes)} entries but the function was "
                    f"called with {len(args)} positional argument{'s' if len(args) != 1 else ''}; "
                    "give one entry per argument."
                )
            spec = in_axes if not isinstance(in_axes, tuple) else tuple(in_axes)
            axes = _api_util.broadcast_prefix(name, spec, args, "args", "in_axes")
            if not tracing:
                in_cache[treedef] = axes
        return axes

    def out_leaf_axes(out: Any, treedef: Any, tracing: bool) -> list[int | None]:
        axes = None if tracing else out_cache.get(treedef)
        if axes is None:
            axes = _api_util.broadcast_prefix(name, out_axes, out, "output", "out_axes")
            if not tracing:
                out_cache[treedef] = axes
        return axes

    @functools.wraps(fun)
    def vmapped(*args: Any, **kwargs: Any) -> Any:
        tracing = torch.compiler.is_compiling()
        leaves: list[Any]
        leaves, treedef = optree.tree_flatten(args, namespace=NAMESPACE)  # type: ignore[arg-type]
        axes = in_leaf_axes(args, treedef, tracing)
        n_pos = len(leaves)
        kw_def = None
        if kwargs:
            kw_leaves: list[Any]
            kw_leaves, kw_def = optree.tree_flatten(kwargs, namespace=NAMESPACE)  # type: ignore[arg-type]
            leaves = leaves + kw_leaves
            axes = axes + [0 if isinstance(x, torch.Tensor) else None for x in kw_leaves]
        mapped_idx: list[int] = []
        mapped: list[torch.Tensor] = []
        dims: list[int] = []
        size = None
        for i, (x, a) in enumerate(zip(leaves, axes)):
            if a is None:
                continue
            if not isinstance(x, torch.Tensor) or not -x.dim() <= a < x.dim():
                _bad_in_axis(name, args, kwargs, i, x, a)
            if size is None:
                size = x.shape[a]
            elif x.shape[a] != size:
                _size_mismatch(name, args, kwargs, leaves, axes)
            mapped_idx.append(i)
            mapped.append(x)
            dims.append(a % x.dim())
        if size is None:
            if axis_size is None:
                raise ValueError(
                    f"funcgrad.{name}: no argument is mapped (every in_axes is None and there "
                    "are no tensor keyword arguments), so the size of the mapped axis is "
                    "unknown. Pass axis_size=..., or map an argument."
                )
            size = axis_size
            # An empty placeholder is mapped, so that `randomness` still applies.
            device = next((x.device for x in leaves if isinstance(x, torch.Tensor)), None)
            mapped.append(torch.empty((size, 0), device=device))
            dims.append(0)
        elif axis_size is not None and axis_size != size:
            raise ValueError(
                f"funcgrad.{name}: axis_size={axis_size} but the mapped arguments have size "
                f"{size} along their mapped axes."
            )

        def run(batched: list[torch.Tensor]) -> tuple[list[torch.Tensor], Any, list[int | None]]:
            full = list(leaves)
            for i, x in zip(mapped_idx, batched):
                full[i] = x
            call_args = treedef.unflatten(full[:n_pos])
            call_kwargs: Any = {} if kw_def is None else kw_def.unflatten(full[n_pos:])
            out = fun(*call_args, **call_kwargs)
            out_leaves, out_def = _api_util.flatten_output(name, out)
            return out_leaves, out_def, out_leaf_axes(out, out_def, tracing)

        if tracing:
            out_leaves, out_def = _traced_call(run, mapped, dims, chunk_size, randomness)
            return out_def.unflatten(out_leaves)
        versions = _api_util.versions(leaves)
        if chunk_size is None or chunk_size >= size:
            out_leaves, out_def, _ = _batched_call(run, mapped, dims, size, randomness)
        else:
            out_leaves, out_def, _ = _chunked_call(run, mapped, dims, size, chunk_size, randomness)
        mutated = _api_util.first_mutated(leaves, versions)
        if mutated is not None:
            raise _api_util.purity_error(name, _in_paths(args, kwargs)[mutated])
        return out_def.unflatten(out_leaves)

    return vmapped


# NOTE [vmap on functorch's primitives]
# funcgrad.vmap drives functorch's batching primitives itself (increment the vmap level, add a
# batch dimension to each mapped tensor, run, remove it from each output), exactly the steps of
# torch.func.vmap's implementation, but on optree-flattened leaves. Going through the public
# torch.func.vmap instead costs a second, much slower flattening of inputs and outputs with
# torch's Python pytree (about 40% on a tiny function) and gets out_axes=None wrong when an
# output is batched at an *outer* level only: torch rejects it, which breaks vmap(jacfwd(f)).
# Here in_axes/out_axes go straight to _add_batch_dim/_remove_batch_dim (no movedim), and an
# output with out_axes None is only refused when it is batched at this vmap's own level.


# NOTE [vmap under jit]
# torch.compile cannot trace functorch's level queries (maybe_get_level) that the eager path
# above relies on, but it has a dedicated rule for torch.func.vmap. While dynamo traces, vmap
# therefore hands the flat function to torch.func.vmap with every output on axis 0 and moves
# axes afterwards (the output structure, hence out_axes per leaf, is only known after the call).
# An output with out_axes None comes back broadcast along axis 0 and is read at index 0; that
# it does not depend on the mapped axis is checked while tracing (is_batchedtensor is
# evaluated at trace time), as torch does: a leaf batched by an *outer* vmap only is refused
# here, where eager mode accepts it. Chunking and randomness are torch.func.vmap's.


def _traced_call(
    run: Callable[[list[torch.Tensor]], tuple[list[torch.Tensor], Any, list[int | None]]],
    mapped: Sequence[torch.Tensor],
    dims: Sequence[int],
    chunk_size: int | None,
    randomness: str,
) -> tuple[list[torch.Tensor], Any]:
    side: list[tuple[Any, list[int | None]]] = []

    def inner(*batched: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out_leaves, out_def, o_axes = run(list(batched))
        for i, (o, a) in enumerate(zip(out_leaves, o_axes)):
            if a is None and is_batchedtensor(o):
                _batched_none_output(out_def, o_axes, i)
        side.append((out_def, o_axes))
        return tuple(out_leaves)

    outs = torch.func.vmap(
        inner, in_dims=tuple(dims), out_dims=0, randomness=randomness, chunk_size=chunk_size
    )(*mapped)
    out_def, o_axes = side[-1]
    result = []
    for i, (o, a) in enumerate(zip(outs, o_axes)):
        if a is None:
            result.append(o[0])
            continue
        rank = o.dim() - 1
        if not -rank - 1 <= a <= rank:
            _out_axis_out_of_range(out_def, o_axes, i, a, o[0])
        result.append(o.movedim(0, a % (rank + 1)))
    return result, out_def


def _batched_call(
    run: Callable[[list[torch.Tensor]], tuple[list[torch.Tensor], Any, list[int | None]]],
    mapped: Sequence[torch.Tensor],
    dims: Sequence[int],
    size: int,
    randomness: str,
) -> tuple[list[torch.Tensor], Any, list[int | None]]:
    lazy_load_decompositions()
    with vmap_increment_nesting(size, randomness) as level:
        out_leaves, out_def, o_axes = run(
            [_add_batch_dim(x, d, level) for x, d in zip(mapped, dims)]
        )
        result = []
        for i, (o, a) in enumerate(zip(out_leaves, o_axes)):
            batched = is_batchedtensor(o) and maybe_get_level(o) == level
            if a is None:
                if batched:
                    _batched_none_output(out_def, o_axes, i)
                result.append(o)
                continue
            rank = o.dim()  # the rank of one example: the batch dimension is hidden here
            if not -rank - 1 <= a <= rank:
                _out_axis_out_of_range(out_def, o_axes, i, a, o)
            a %= rank + 1
            if batched:
                result.append(_remove_batch_dim(o, level, size, a))
            else:  # broadcast (torch's _remove_batch_dim mis-expands these when a != 0)
                result.append(o.unsqueeze(a).expand((*o.shape[:a], size, *o.shape[a:])))
    return result, out_def, o_axes


def _chunked_call(
    run: Callable[[list[torch.Tensor]], tuple[list[torch.Tensor], Any, list[int | None]]],
    mapped: Sequence[torch.Tensor],
    dims: Sequence[int],
    size: int,
    chunk_size: int,
    randomness: str,
) -> tuple[list[torch.Tensor], Any, list[int | None]]:
    # As torch.func.vmap does: with randomness="same", every chunk starts from one RNG state.
    cpu_state = torch.get_rng_state() if randomness == "same" else None
    same_cuda = randomness == "same" and torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    cuda_state = torch.cuda.get_rng_state_all() if same_cuda else None
    chunks = []
    for start in range(0, size, chunk_size):
        if cpu_state is not None:
            torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        length = min(chunk_size, size - start)
        pieces = [x.narrow(d, start, length) for x, d in zip(mapped, dims)]
        chunks.append(_batched_call(run, pieces, dims, length, randomness))
    _, out_def, o_axes = chunks[-1]
    out_leaves = []
    for i, a in enumerate(o_axes):
        parts = [c[0][i] for c in chunks]
        if a is None:
            out_leaves.append(parts[0])
        else:
            out_leaves.append(torch.cat(parts, dim=a % parts[0].dim()))
    return out_leaves, out_def, o_axes


def _output_path(out_def: Any, n: int, i: int) -> str:
    return _api_util.leaf_paths(out_def.unflatten([0] * n), "output")[i]


def _batched_none_output(out_def: Any, o_axes: Sequence[int | None], i: int) -> None:
    raise ValueError(
        f"funcgrad.vmap: out_axes is None for the output at {_output_path(out_def, len(o_axes), i)}, "
        "but it depends on the mapped axis. Give it an int out_axes, or make sure it does not "
        "depend on the mapped arguments."
    )


def _out_axis_out_of_range(
    out_def: Any, o_axes: Sequence[int | None], i: int, a: int, o: torch.Tensor
) -> None:
    raise ValueError(
        f"funcgrad.vmap: out_axes={a} is out of range for the output at "
        f"{_output_path(out_def, len(o_axes), i)}, which has shape {tuple(o.shape)} per example "
        f"(valid out_axes: {-o.dim() - 1} to {o.dim()})."
    )


def _in_paths(args: Any, kwargs: dict[str, Any]) -> list[str]:
    return _api_util.leaf_paths(args, "args") + _api_util.leaf_paths(kwargs, "kwargs")


def _bad_in_axis(name: str, args: Any, kwargs: dict[str, Any], i: int, x: Any, a: int) -> None:
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
