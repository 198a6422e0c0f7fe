"""Jacobians and Hessians of functions of pytrees: ``jacfwd``, ``jacrev``, ``hessian``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch
import torch.func

from . import _api_util
from ._jvp_vjp import _torch_jvp, _torch_vjp
from ._typing import ArgNums
from ._vmap import vmap
from .tree import NAMESPACE

__all__ = ["hessian", "jacfwd", "jacrev"]


def _flat_problem(
    name: str,
    fun: Callable[..., Any],
    nums: tuple[int, ...],
    has_aux: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    cell: list[Any],
    box: _api_util.Box,
) -> tuple[list[torch.Tensor], Any, Callable[..., Any]]:
    """The differentiated leaves, their structure and ``fun`` as a function of those leaves.

    The flat function returns ``(tuple of output leaves, aux tensors)``, appends the output
    structure to ``cell`` and puts the rest of ``aux`` in ``box`` (NOTE [optree at the
    boundary]).
    """
    positions = _api_util.resolve_argnums(nums, len(args), name)
    diff = tuple(args[p] for p in positions)
    leaves: list[torch.Tensor]
    leaves, treedef = optree.tree_flatten(diff, namespace=NAMESPACE)  # type: ignore[arg-type]
    hint = f"(argnums={nums[0] if len(nums) == 1 else nums})"
    _api_util.check_differentiable(name, leaves, args, positions, hint)

    def flat_fun(*diff_leaves: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], Any]:
        full = list(args)
        for p, a in zip(positions, treedef.unflatten(diff_leaves)):
            full[p] = a
        return _api_util.differentiable_output(name, fun(*full, **kwargs), has_aux, box, cell)

    return leaves, treedef, flat_fun


def _arg_paths(args: tuple[Any, ...], nums: tuple[int, ...]) -> list[str]:
    positions = _api_util.resolve_argnums(nums, len(args), "jacobian")
    return _api_util.flatten_args_with_paths(args, positions)[1]


def _assemble(
    out_def: Any, blocks: Sequence[Sequence[torch.Tensor]], treedef: Any, single: bool
) -> Any:
    """``blocks[i][j]`` is d out_i / d in_j; nests input structures inside the output structure."""
    rows = []
    for row in blocks:
        per_arg = treedef.unflatten(row)
        rows.append(per_arg[0] if single else per_arg)
    return out_def.unflatten(rows)


def jacrev(
    fun: Callable[..., Any],
    argnums: ArgNums = 0,
    *,
    has_aux: bool = False,
    chunk_size: int | None = None,
) -> Callable[..., Any]:
    """Creates a function that computes the Jacobian of ``fun`` in reverse mode.

    Reverse mode costs one backward pass per output element, so it suits functions with fewer
    outputs than inputs. The result has the structure of the output; each output leaf is
    replaced by the structure of the differentiated argument(s), whose leaves are the blocks
    ``d out / d in`` of shape ``out.shape + in.shape`` (as in JAX).

    Args:
        fun: a function of pytrees of floating-point tensors returning a pytree of tensors.
        argnums: the position, or a tuple of positions, of the arguments to differentiate.
        has_aux: whether ``fun`` returns ``(output, aux)``; then ``(jacobian, aux)`` is returned.
        chunk_size: compute this many rows of the Jacobian at a time to bound memory
            (``None``: all at once).

    >>> import torch, funcgrad as fg
    >>> jac = fg.jacrev(lambda p: p["a"] * p["b"])({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)})
    >>> jac["a"]
    tensor([[3., 0.],
            [0., 3.]])
    >>> jac["b"]
    tensor([1., 2.])
    """
    _api_util.check_callable(fun, "jacrev")
    nums, single = _api_util.argnums_spec(argnums, "jacrev")
    _api_util.check_chunk_size("jacrev", chunk_size)
    return _jacrev(fun, nums, single, has_aux, chunk_size, "jacrev")


def _jacrev(
    fun: Callable[..., Any],
    nums: tuple[int, ...],
    single: bool,
    has_aux: bool,
    chunk_size: int | None,
    name: str,
) -> Callable[..., Any]:
    @functools.wraps(fun)
    def jacrev_fun(*args: Any, **kwargs: Any) -> Any:
        cell: list[Any] = []
        box = _api_util.Box()
        leaves, treedef, flat_fun = _flat_problem(name, fun, nums, has_aux, args, kwargs, cell, box)
        with _api_util.pure_call(name, leaves, lambda: _arg_paths(args, nums)):
            if chunk_size is None and not torch.compiler.is_compiling():
                jac, aux = _jacrev_eager(flat_fun, leaves)
            else:
                jac, aux = torch.func.jacrev(
                    flat_fun, argnums=tuple(range(len(leaves))), has_aux=True, chunk_size=chunk_size
                )(*leaves)
        result = _assemble(cell[-1], jac, treedef, single)
        return (result, _api_util.unpack_aux(box, aux)) if has_aux else result

    return jacrev_fun


# NOTE [jacrev on funcgrad's vjp]
# torch.func.jacrev spends most of a small Jacobian in torch's Python pytree (its vjp, its vmap
# and the splitting of the result each walk the arguments several times). In eager mode without
# chunking, jacrev is therefore built here from the same pieces on flat tuples: one vjp on
# funcgrad's engine (NOTE [vjp without torch's pytree]), funcgrad's vmap of its vjp_fn over the
# standard basis of the outputs (one one-hot cotangent per output element, as torch.func builds
# it), and row blocks cut into d out_i / d in_j. Under jit, and with a chunk_size (torch.func
# chunks, or loops for chunks of one), torch.func.jacrev runs. (Inputs and outputs are real
# floating-point tensors here: funcgrad refuses others before.)
# jacfwd below is the mirror image: funcgrad's vmap of one jvp (on funcgrad's engine, NOTE [jvp
# without torch's pytree]) over the standard basis of the inputs.


def _jacrev_eager(
    flat_fun: Callable[..., tuple[tuple[torch.Tensor, ...], Any]], leaves: Sequence[torch.Tensor]
) -> tuple[list[list[torch.Tensor]], Any]:
    """``torch.func.jacrev(flat_fun, argnums=all, has_aux=True)(*leaves)`` (NOTE [jacrev on
    funcgrad's vjp]): ``blocks[i][j]`` is d out_i / d leaf_j."""
    out, vjp_fn, aux = _torch_vjp(flat_fun, leaves)
    total, basis = _standard_basis(out)
    if total == 0:
        rows: Sequence[torch.Tensor] = [x.new_zeros((0, *x.shape)) for x in leaves]
    else:
        rows = vmap(lambda *cotangents: vjp_fn(cotangents))(*basis)
    blocks = []
    offset = 0
    for o in out:
        n = o.numel()
        blocks.append([r.narrow(0, offset, n).reshape((*o.shape, *r.shape[1:])) for r in rows])
        offset += n
    return blocks, aux


def _standard_basis(leaves: Sequence[torch.Tensor]) -> tuple[int, list[torch.Tensor]]:
    """One basis vector per element of ``leaves`` (jacfwd: the inputs, jacrev: the outputs): leaf
    ``j``'s slice of an ``N x N`` identity, reshaped."""
    total = sum(x.numel() for x in leaves)
    basis = []
    offset = 0
    for x in leaves:
        b = torch.zeros((total, x.numel()), dtype=x.dtype, device=x.device)
        b.diagonal(-offset).fill_(1)
        basis.append(b.view((total, *x.shape)))
        offset += x.numel()
    return total, basis


def _split_columns(
    jac_out: torch.Tensor, out_shape: torch.Size, leaves: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Splits a batch of JVPs ``(N, *out_shape)`` into blocks ``out_shape + in_shape``."""
    blocks = []
    offset = 0
    moved = jac_out.movedim(0, -1)
    for x in leaves:
        block = moved.narrow(-1, offset, x.numel())
        blocks.append(block.reshape((*out_shape, *x.shape)))
        offset += x.numel()
    return blocks


def jacfwd(
    fun: Callable[..., Any],
    argnums: ArgNums = 0,
    *,
    has_aux: bool = False,
    chunk_size: int | None = None,
) -> Callable[..., Any]:
    """Creates a function that computes the Jacobian of ``fun`` in forward mode.

    Forward mode costs one JVP per input element (batched with ``vmap``), so it suits functions
    with fewer inputs than outputs. The result is laid out as for :func:`funcgrad.jacrev`.

    Args:
        fun: a function of pytrees of floating-point tensors returning a pytree of tensors.
        argnums: the position, or a tuple of positions, of the arguments to differentiate.
        has_aux: whether ``fun`` returns ``(output, aux)``; then ``(jacobian, aux)`` is returned.
        chunk_size: push this many tangents through at a time to bound memory
            (``None``: all at once).

    >>> import torch, funcgrad as fg
    >>> fg.jacfwd(lambda x: x**2)(torch.tensor([1.0, 2.0]))
    tensor([[2., 0.],
            [0., 4.]])
    """
    _api_util.check_callable(fun, "jacfwd")
    nums, single = _api_util.argnums_spec(argnums, "jacfwd")
    _api_util.check_chunk_size("jacfwd", chunk_size)
    return _jacfwd(fun, nums, single, has_aux, chunk_size, "jacfwd")


def _jacfwd(
    fun: Callable[..., Any],
    nums: tuple[int, ...],
    single: bool,
    has_aux: bool,
    chunk_size: int | None,
    name: str,
) -> Callable[..., Any]:
    @functools.wraps(fun)
    def jacfwd_fun(*args: Any, **kwargs: Any) -> Any:
        cell: list[Any] = []
        box = _api_util.Box()
        leaves, treedef, flat_fun = _flat_problem(name, fun, nums, has_aux, args, kwargs, cell, box)
        total, basis = _standard_basis(leaves)

        def push(*tangents: torch.Tensor) -> tuple[Any, Any]:
            out, t_out, aux = _torch_jvp(flat_fun, leaves, tangents)
            return t_out, (out, aux)

        if total == 0:
            out, aux = flat_fun(*leaves)
            jac_rows = tuple(o.new_zeros((0, *o.shape)) for o in out)
        else:
            # The primal output and aux do not depend on the tangents: out_dims None.
            with _api_util.pure_call(name, leaves, lambda: _arg_paths(args, nums)):
                if torch.compiler.is_compiling():  # NOTE [vmap under jit]: no out_axes None
                    jac_rows, (out, aux) = vmap(push, chunk_size=chunk_size)(*basis)
                    out, aux = tuple(o[0] for o in out), tuple(a[0] for a in aux)
                else:
                    jac_rows, (out, aux) = vmap(push, out_axes=(0, None), chunk_size=chunk_size)(
                        *basis
                    )
        blocks = [_split_columns(j, o.shape, leaves) for j, o in zip(jac_rows, out)]
        result = _assemble(cell[-1], blocks, treedef, single)
        return (result, _api_util.unpack_aux(box, aux)) if has_aux else result

    return jacfwd_fun


def hessian(
    fun: Callable[..., Any], argnums: ArgNums = 0, *, has_aux: bool = False
) -> Callable[..., Any]:
    """Creates a function that computes the Hessian of a scalar function: ``jacfwd(jacrev(fun))``.

    For a dict of parameters the result is a dict of dicts: ``H[k1][k2]`` has shape
    ``p[k1].shape + p[k2].shape``.

    >>> import torch, funcgrad as fg
    >>> H = fg.hessian(lambda p: (p["x"] ** 2 * p["y"]).sum())(
    ...     {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor(3.0)})
    >>> H["x"]["x"]
    tensor([[6., 0.],
            [0., 6.]])
    >>> H["x"]["y"]
    tensor([2., 4.])
    """
    name = "hessian"
    _api_util.check_callable(fun, name)
    nums, single = _api_util.argnums_spec(argnums, name)
    inner = _jacrev(fun, nums, single, has_aux, None, name)
    forward_over_reverse = _jacfwd(inner, nums, single, has_aux, None, name)
    reverse_over_reverse = _jacrev(inner, nums, single, has_aux, None, name)

    # Forward-over-reverse is the cheaper composition, but torch.compile (2.13) fails to trace it
    # under vmap and leaves its tracer in a state where later compilations fail too; under jit the
    # Hessian is therefore reverse-over-reverse, which traces (same values, up to rounding).
    @functools.wraps(fun)
    def hessian_fun(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return reverse_over_reverse(*args, **kwargs)
        return forward_over_reverse(*args, **kwargs)

    return hessian_fun
