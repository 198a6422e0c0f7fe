"""Structured control flow on pytrees, as in ``jax.lax``: ``scan``, ``cond``, ``switch``,
``while_loop``, ``fori_loop`` and ``map``.

Each works in eager mode and under every funcgrad transform (``grad``, ``vjp``, ``jvp``,
``vmap``, ``jit``), with JAX's semantics: a loop's carry keeps its tree structure, shapes and
dtypes from step to step, branches return the same structure, a predicate batched by ``vmap``
selects per example, and ``while_loop`` is differentiable in forward mode only. How each runs
under each transform is NOTE [lax strategies] in ``funcgrad/_lax_checks.py``.

>>> import torch, funcgrad as fg
>>> def step(total, x):
...     total = total + x
...     return total, total
>>> fg.lax.scan(step, torch.tensor(0.0), torch.arange(1.0, 5.0))
(tensor(10.), tensor([ 1.,  3.,  6., 10.]))
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch
from torch._higher_order_ops.while_loop import while_loop as _torch_while_loop

from . import _api_util
from . import _lax_checks as _c
from ._typing import PyTree
from ._vmap import vmap
from .tree import NAMESPACE

__all__ = ["cond", "fori_loop", "map", "scan", "switch", "while_loop"]

_CARRY_FIX = (
    "The carry must keep its tree structure, shapes and dtypes from step to step: cast with "
    ".to(dtype), and initialise it with the shapes the body produces."
)


def _leading_length(api: str, xs: Any, leaves: list[Any], length: int | None) -> int:
    for i, x in enumerate(leaves):
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            path = _api_util.leaf_paths(xs, "xs")[i]
            raise TypeError(
                f"funcgrad.lax.{api}: every leaf of xs must be a tensor with a leading axis to "
                f"loop over, but the leaf at {path} is {_api_util.describe(x)}. Close over "
                "constants instead of passing them in xs."
            )
    sizes = {x.shape[0] for x in leaves}
    if len(sizes) > 1:
        paths = _api_util.leaf_paths(xs, "xs")
        detail = ", ".join(f"{p} has {x.shape[0]}" for p, x in zip(paths, leaves))
        raise ValueError(
            f"funcgrad.lax.{api}: every leaf of xs must have the same leading axis size, but "
            f"{detail}. Slice or pad them to one length."
        )
    if length is not None:
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise TypeError(
                f"funcgrad.lax.{api}: length must be None or a non-negative int, got {length!r}."
            )
        if sizes and length != next(iter(sizes)):
            raise ValueError(
                f"funcgrad.lax.{api}: length={length} but the leaves of xs have leading axis "
                f"size {next(iter(sizes))}. Leave length out, or make them agree."
            )
        return length
    if not sizes:
        raise ValueError(
            f"funcgrad.lax.{api}: xs has no tensors (it is {xs!r}), so the number of steps is "
            "unknown. Pass length=..."
        )
    return int(sizes.pop())


def _check_unroll(unroll: Any) -> None:
    if isinstance(unroll, bool):
        return
    if not isinstance(unroll, int) or unroll < 1:
        raise TypeError(
            f"funcgrad.lax.scan: unroll must be a positive int or a bool, got {unroll!r}."
        )


def scan(
    f: Callable[[Any, Any], tuple[Any, Any]],
    init: PyTree,
    xs: PyTree = None,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
) -> tuple[PyTree, PyTree]:
    """Loops ``f`` over the leading axis of ``xs``, carrying a state: ``jax.lax.scan``.

    Equivalent to this Python (with ``xs`` and ``ys`` pytrees whose leaves are stacked on
    axis 0)::

        carry, ys = init, []
        for x in xs:                      # reversed(xs) with reverse=True
            carry, y = f(carry, x)
            ys.append(y)
        return carry, stack(ys)           # ys[i] belongs to xs[i], also with reverse=True

    It runs as that loop in eager mode and under ``grad``/``vjp``/``jvp``/``vmap``; under
    ``funcgrad.jit`` the loop is unrolled into one graph (compile time grows with ``length``).
    See NOTE [lax strategies] in ``funcgrad/_lax_checks.py``.

    Args:
        f: ``f(carry, x) -> (carry, y)``. The new carry must have the tree structure, shapes
            and dtypes of ``init`` (a Python number in ``init`` takes the dtype ``f`` gives
            it); ``y`` is any pytree of tensors (``None`` for no output).
        init: the initial carry, a pytree of tensors (or Python numbers).
        xs: a pytree of tensors sharing their leading axis size, or ``None`` (then ``x`` is
            ``None`` and ``length`` says how many steps to run).
        length: the number of steps; must agree with ``xs`` when both are given.
        reverse: loop from the last slice to the first.
        unroll: accepted for JAX compatibility (int or bool); it does not change the result,
            nor what runs: eager mode always loops step by step and ``jit`` always unrolls.

    Returns:
        ``(final carry, ys)``: ``ys`` has the structure of ``y`` with each leaf stacked
        along a new leading axis of size ``length``.

    Raises:
        TypeError: when ``f`` changes the carry's tree structure, a shape or a dtype (the
            message names ``f``, the leaf's path, what was expected and what was got).

    >>> import torch, funcgrad as fg
    >>> W = torch.tensor([[0.5, 0.0], [0.1, 0.5]])
    >>> def rnn(h, x):
    ...     h = torch.tanh(h @ W + x)
    ...     return h, h.sum()
    >>> h, ys = fg.lax.scan(rnn, torch.zeros(2), torch.ones(3, 2))
    >>> ys
    tensor([1.5232, 1.7782, 1.8054])
    >>> fg.grad(lambda h0: fg.lax.scan(rnn, h0, torch.ones(3, 2))[1].sum())(torch.zeros(2))
    tensor([0.2322, 0.2871])
    """
    name = "scan"
    _c.check_callable(name, f, "f")
    _check_unroll(unroll)
    xs_leaves: list[Any]
    xs_leaves, xs_def = optree.tree_flatten(xs, namespace=NAMESPACE)
    n = _leading_length(name, xs, xs_leaves, length)
    carry = _c.Carry(name, init, "init")
    slices = [x.unbind(0) for x in xs_leaves]
    order = range(n - 1, -1, -1) if reverse else range(n)
    ys: list[list[torch.Tensor]] = []
    y_def = None
    carry_tree = carry.tree()
    for i in order:
        x = xs_def.unflatten([s[i] for s in slices])
        new, y = _c.split_pair(name, f, f(carry_tree, x))
        carry.leaves = _c.check_carry(name, f, carry, new, "a carry", _CARRY_FIX)
        carry_tree = carry.tree()
        y_leaves, treedef = _api_util.flatten_output(f"lax.{name}", y, "y")
        if y_def is None:
            y_def = treedef
        elif treedef != y_def:
            raise TypeError(
                f"funcgrad.lax.{name}: {_c.fun_name(f)} must return y with the same tree "
                f"structure at every step, got {y_def} and then {treedef}."
            )
        ys.append(y_leaves)
    if n == 0:
        return carry.tree(), _empty_ys(name, f, carry, xs_def, xs_leaves)
    if reverse:
        ys.reverse()
    stacked = [torch.stack(parts) for parts in zip(*ys)]
    assert y_def is not None
    return carry.tree(), y_def.unflatten(stacked)


def _empty_ys(name: str, f: Any, carry: _c.Carry, xs_def: Any, xs_leaves: list[Any]) -> Any:
    """The ``ys`` of a scan of length 0: ``f`` runs once on zeros, for the shapes of ``y``."""
    x = xs_def.unflatten([s.new_zeros(s.shape[1:]) for s in xs_leaves])
    with torch.no_grad():
        new, y = _c.split_pair(name, f, f(carry.tree(), x))
    _c.check_carry(name, f, carry, new, "a carry", _CARRY_FIX)
    y_leaves, y_def = _api_util.flatten_output(f"lax.{name}", y, "y")
    return y_def.unflatten([t.new_empty((0, *t.shape)) for t in y_leaves])


def cond(
    pred: bool | torch.Tensor,
    true_fun: Callable[..., Any],
    false_fun: Callable[..., Any],
    *operands: Any,
) -> Any:
    """``true_fun(*operands)`` if ``pred`` else ``false_fun(*operands)``: ``jax.lax.cond``.

    With a concrete predicate (a Python bool, or a tensor in eager mode, including under
    ``grad`` and ``jvp``) only the chosen branch runs. With a predicate batched by ``vmap``,
    or a tensor predicate under ``jit`` (which compiles it without a graph break), both
    branches run and ``torch.where`` selects each example's result; a branch that makes inf
    or NaN where it is not selected then gives NaN gradients, as in JAX. See NOTE [lax
    strategies] in ``funcgrad/_lax_checks.py``.

    Args:
        pred: a Python bool or number, or a tensor of shape ``()`` (bool or numeric: nonzero
            is true).
        true_fun: called as ``true_fun(*operands)``.
        false_fun: called as ``false_fun(*operands)``; returns the tree structure, shapes and
            dtypes ``true_fun`` returns (checked whenever both run).
        *operands: the branches' arguments (pytrees).

    Returns:
        The chosen branch's output.

    >>> import torch, funcgrad as fg
    >>> def f(x):
    ...     return fg.lax.cond(x.sum() > 0, lambda x: x * 2, lambda x: -x, x)
    >>> f(torch.tensor([1.0, 2.0]))
    tensor([2., 4.])
    >>> fg.vmap(f)(torch.tensor([[1.0, 2.0], [-1.0, -2.0]]))  # selects per example
    tensor([[2., 4.],
            [1., 2.]])
    """
    name = "cond"
    _c.check_callable(name, true_fun, "true_fun")
    _c.check_callable(name, false_fun, "false_fun")
    _c.check_scalar(name, "pred", pred)
    chosen = _c.concrete(pred)
    if chosen is not None:
        return (true_fun if chosen else false_fun)(*operands)
    assert isinstance(pred, torch.Tensor)
    outs = [true_fun(*operands), false_fun(*operands)]
    (t_leaves, f_leaves) = _c.check_branches(name, [true_fun, false_fun], outs)
    mask = _c.as_mask(pred)
    treedef = optree.tree_structure(outs[0], namespace=NAMESPACE)
    return treedef.unflatten(_c.where_tree(mask, t_leaves, f_leaves))


def switch(
    index: int | torch.Tensor, branches: Sequence[Callable[..., Any]], *operands: Any
) -> Any:
    """``branches[index](*operands)``, with ``index`` clamped to the branches: ``jax.lax.switch``.

    As :func:`cond`: a concrete index runs one branch; an index batched by ``vmap``, or a
    tensor index under ``jit``, runs every branch and selects each example's result with
    ``torch.where``.

    Args:
        index: a Python int or an integer tensor of shape ``()``; values below 0 select the
            first branch and values past the end the last one, as in JAX.
        branches: a non-empty sequence of functions returning the same tree structure,
            shapes and dtypes.
        *operands: the branches' arguments.

    >>> import torch, funcgrad as fg
    >>> branches = [torch.sin, torch.cos, torch.exp]
    >>> fg.lax.switch(torch.tensor(2), branches, torch.tensor(0.0))
    tensor(1.)
    >>> fg.vmap(lambda i, x: fg.lax.switch(i, branches, x))(torch.tensor([0, 1, 7]), torch.zeros(3))
    tensor([0., 1., 1.])
    """
    name = "switch"
    if not isinstance(branches, Sequence) or len(branches) == 0:
        raise TypeError(
            f"funcgrad.lax.{name}: branches must be a non-empty sequence of functions, got "
            f"{_api_util.describe(branches)}."
        )
    for i, b in enumerate(branches):
        _c.check_callable(name, b, f"branches[{i}]")
    _c.check_scalar(name, "index", index, integer=True)
    last = len(branches) - 1
    if not isinstance(index, torch.Tensor):
        return branches[min(max(index, 0), last)](*operands)
    if last == 0:
        return branches[0](*operands)
    if not torch.compiler.is_compiling() and not _c.is_batched(index):
        return branches[min(max(int(index), 0), last)](*operands)
    outs = [b(*operands) for b in branches]
    leaves = _c.check_branches(name, branches, outs)
    idx = index.clamp(0, last)
    result = leaves[last]
    for i in range(last - 1, -1, -1):
        result = _c.where_tree(idx == i, leaves[i], result)
    return optree.tree_structure(outs[0], namespace=NAMESPACE).unflatten(result)


def while_loop(
    cond_fun: Callable[[Any], Any], body_fun: Callable[[Any], Any], init_val: PyTree
) -> PyTree:
    """Runs ``body_fun`` while ``cond_fun`` holds: ``jax.lax.while_loop``.

    Equivalent to::

        val = init_val
        while cond_fun(val):
            val = body_fun(val)
        return val

    Differentiable in forward mode only (``jvp``, ``jacfwd``), as in JAX: reverse mode
    (``grad``, ``vjp``) raises a ValueError that points to :func:`scan` and :func:`fori_loop`
    with static bounds. Under ``vmap`` a batched predicate keeps the loop running until every
    example is done; finished examples keep their values. Under ``jit`` a tensor predicate
    compiles into torch's ``while_loop`` operator, outside other transforms only (see NOTE [lax
    strategies] in ``funcgrad/_lax_checks.py``).

    Args:
        cond_fun: ``cond_fun(val)``, a Python bool or a tensor of shape ``()``.
        body_fun: ``body_fun(val)``, returning the tree structure, shapes and dtypes of
            ``val``.
        init_val: the initial value, a pytree of tensors (or Python numbers).

    >>> import torch, funcgrad as fg
    >>> fg.lax.while_loop(lambda v: v[0] < 5, lambda v: (v[0] + 1, v[1] * 2), (0, torch.ones(2)))
    (tensor(5), tensor([32., 32.]))
    >>> steps = fg.vmap(lambda n: fg.lax.while_loop(lambda i: i < n, lambda i: i + 1, 0))
    >>> steps(torch.tensor([1, 3, 0]))
    tensor([1, 3, 0])
    """
    name = "while_loop"
    _c.check_callable(name, cond_fun, "cond_fun")
    _c.check_callable(name, body_fun, "body_fun")
    carry = _c.Carry(name, init_val, "init_val")
    if torch.compiler.is_compiling():
        return _traced_while(cond_fun, body_fun, carry)
    while True:
        pred = cond_fun(carry.tree())
        _c.check_scalar(name, "the result of cond_fun", pred)
        if isinstance(pred, torch.Tensor) and _c.is_batched(pred):
            mask = _c.as_mask(pred)
            if not bool(_c.physical(mask).any()):
                break
            new = _c.check_carry(name, body_fun, carry, body_fun(carry.tree()), "val", _CARRY_FIX)
            carry.leaves = _c.where_tree(mask, new, carry.leaves)
        elif bool(pred):
            new = _c.check_carry(name, body_fun, carry, body_fun(carry.tree()), "val", _CARRY_FIX)
            carry.leaves = new
        else:
            break
    carry.leaves = _c.no_reverse(carry.leaves)
    return carry.tree()


_TRACED_WHILE_FIX = (
    "a while_loop whose predicate is a tensor has a data-dependent number of steps, which "
    "funcgrad.jit can only compile outside vmap, grad, vjp and jvp (torch's while_loop "
    "operator composes with none of them). Use "
    "funcgrad.lax.fori_loop with Python-int bounds or funcgrad.lax.scan (a static number of "
    "steps), or fg.jit(..., fullgraph=False) with the loop outside the jitted function."
)


def _traced_while(cond_fun: Any, body_fun: Any, carry: _c.Carry) -> Any:
    """while_loop while torch.compile traces (NOTE [lax strategies])."""
    name = "while_loop"
    pred = cond_fun(carry.tree())
    _c.check_scalar(name, "the result of cond_fun", pred)
    if not isinstance(pred, torch.Tensor):  # a Python predicate: unrolled
        while pred:
            carry.leaves = _c.check_carry(
                name, body_fun, carry, body_fun(carry.tree()), "val", _CARRY_FIX
            )
            pred = cond_fun(carry.tree())
        return carry.tree()
    if _api_util.in_transform():  # any transform, not just vmap
        raise NotImplementedError(f"funcgrad.lax.{name} under funcgrad.jit: {_TRACED_WHILE_FIX}")
    # The carry is checked once, on a trial step, so that errors name the user's function.
    _c.check_carry(name, body_fun, carry, body_fun(carry.tree()), "val", _CARRY_FIX)
    treedef = carry.treedef

    def cond_flat(*leaves: torch.Tensor) -> torch.Tensor:
        return _c.as_mask(torch.as_tensor(cond_fun(treedef.unflatten(leaves))))

    def body_flat(*leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        new = optree.tree_leaves(body_fun(treedef.unflatten(leaves)), namespace=NAMESPACE)
        # torch's operator refuses outputs that alias its inputs.
        return tuple(n.clone() if builtins.any(n is x for x in leaves) else n for n in new)

    init = tuple(x.clone() for x in carry.leaves)
    out = _torch_while_loop(cond_flat, body_flat, init)  # type: ignore[no-untyped-call]
    return treedef.unflatten(list(out))


def fori_loop(
    lower: int | torch.Tensor,
    upper: int | torch.Tensor,
    body_fun: Callable[[Any, Any], Any],
    init_val: PyTree,
) -> PyTree:
    """``val = body_fun(i, val)`` for ``i`` from ``lower`` to ``upper - 1``: ``jax.lax.fori_loop``.

    With Python-int bounds this is a :func:`scan` (reverse-differentiable, unrolled under
    ``jit``); with a tensor bound it is a :func:`while_loop` (forward-mode differentiable
    only), as in JAX. ``i`` is a 0-d int64 tensor (the bounds' dtype for tensor bounds).

    Args:
        lower: the first index, a Python int or an integer tensor of shape ``()``.
        upper: one past the last index.
        body_fun: ``body_fun(i, val) -> val`` with the tree structure, shapes and dtypes of
            ``val``.
        init_val: the initial value (a pytree of tensors or Python numbers).

    >>> import torch, funcgrad as fg
    >>> fg.lax.fori_loop(0, 4, lambda i, x: x * 2 + i, torch.tensor(1.0))
    tensor(27.)
    >>> fg.grad(lambda x: fg.lax.fori_loop(0, 3, lambda i, x: x * x, x))(torch.tensor(1.5))
    tensor(136.6875)
    """
    name = "fori_loop"
    _c.check_callable(name, body_fun, "body_fun")
    for what, b in (("lower", lower), ("upper", upper)):
        _c.check_scalar(name, what, b, integer=True)
    if not isinstance(lower, torch.Tensor) and not isinstance(upper, torch.Tensor):
        first = next(
            (x for x in optree.tree_leaves(init_val, namespace=NAMESPACE) if torch.is_tensor(x)),
            None,
        )
        device = first.device if first is not None else None
        steps = torch.arange(lower, max(lower, upper), device=device)

        def step(val: Any, i: torch.Tensor) -> tuple[Any, None]:
            return body_fun(i, val), None

        step.__qualname__ = _c.fun_name(body_fun)
        return scan(step, init_val, steps)[0]
    lo = torch.as_tensor(lower)
    hi = torch.as_tensor(upper, dtype=lo.dtype, device=lo.device)
    lo = lo.to(torch.promote_types(lo.dtype, hi.dtype))

    def keep_going(val: tuple[torch.Tensor, Any]) -> torch.Tensor:
        return val[0] < hi

    def body(val: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor, Any]:
        return val[0] + 1, body_fun(val[0], val[1])

    body.__qualname__ = _c.fun_name(body_fun)
    return while_loop(keep_going, body, (lo, init_val))[1]


def map(f: Callable[[Any], Any], xs: PyTree, *, batch_size: int | None = None) -> PyTree:
    """``f`` applied to each slice of ``xs`` along its leading axis, stacked: ``jax.lax.map``.

    Without ``batch_size`` the slices are processed one after the other (a :func:`scan`
    without carry: memory for one slice at a time). With ``batch_size``, ``funcgrad.vmap(f)``
    runs on chunks of that many slices, the last chunk holding the remainder.

    Args:
        f: a function of one slice (a pytree), returning a pytree of tensors.
        xs: a pytree of tensors sharing their leading axis size.
        batch_size: how many slices to vectorise over at once (``None``: one at a time).

    >>> import torch, funcgrad as fg
    >>> fg.lax.map(lambda x: x.sum(), torch.arange(6.0).reshape(3, 2))
    tensor([1., 5., 9.])
    >>> fg.lax.map(lambda x: {"sq": x**2}, torch.arange(5.0), batch_size=2)
    {'sq': tensor([ 0.,  1.,  4.,  9., 16.])}
    """
    name = "map"
    _c.check_callable(name, f, "f")
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise TypeError(
            f"funcgrad.lax.{name}: batch_size must be None or a positive int, got {batch_size!r}."
        )
    leaves, xs_def = optree.tree_flatten(xs, namespace=NAMESPACE)
    n = _leading_length(name, xs, leaves, None)
    if batch_size is None or n == 0:

        def step(carry: tuple[()], x: Any) -> tuple[tuple[()], Any]:
            return carry, f(x)

        step.__qualname__ = _c.fun_name(f)
        return scan(step, (), xs)[1]
    batched = vmap(f)
    chunks = [
        batched(xs_def.unflatten([x[s : s + batch_size] for x in leaves]))
        for s in range(0, n, batch_size)
    ]
    return optree.tree_map(lambda *parts: torch.cat(parts), *chunks, namespace=NAMESPACE)
