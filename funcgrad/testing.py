"""Testing utilities: tree comparison with readable failures, and gradient checks.

>>> import torch, funcgrad as fg
>>> fg.testing.assert_trees_allclose({"w": torch.ones(2)}, {"w": torch.ones(2) + 1e-9})
>>> fg.testing.check_grads(torch.sin, (torch.tensor([0.5, 1.0], dtype=torch.float64),), order=2)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from typing import Any

import optree
import torch

from . import _api_util
from ._jvp_vjp import jvp, vjp
from ._typing import PyTree, PyTreeDef
from .tree import NAMESPACE, dot

__all__ = ["assert_trees_allclose", "check_grads", "default_tolerance"]

# Default (rtol, atol) by dtype, used when a comparison does not give its own.
_TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-10),
    torch.complex128: (1e-7, 1e-10),
    torch.float32: (1e-5, 1e-6),
    torch.complex64: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}

_CHECK_GRADS = "funcgrad.testing.check_grads"
_MODES = ("fwd", "rev")

# NOTE [check_grads tolerances]
# The numerical side of check_grads is always computed in float64 (other dtypes are upcast): its
# error is the truncation error of central differences, eps**2 * |f'''| / 6 (about 1e-9 for
# eps=1e-4 and a well-scaled f), plus float64 rounding, about 1e-16 * |f| / eps. So the defaults
# bound the rounding of the *analytic* side, computed in the least precise dtype among the
# inputs and outputs, with a wide margin for badly scaled functions (float64: 1e-6).
_GRAD_TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-6, 1e-6),
    torch.float32: (1e-3, 1e-4),
    torch.float16: (3e-2, 3e-2),
    torch.bfloat16: (1e-1, 1e-1),
}
_GRAD_EPS = 1e-4


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """The default ``(rtol, atol)`` funcgrad's tests use for a dtype (exact for integers).

    >>> import torch
    >>> default_tolerance(torch.float32)
    (1e-05, 1e-06)
    >>> default_tolerance(torch.int64)
    (0.0, 0.0)
    """
    return _TOLERANCE.get(dtype, (0.0, 0.0))


# --------------------------------------------------------------------------------------------
# assert_trees_allclose
# --------------------------------------------------------------------------------------------


def _as_tensor(x: Any) -> Any:
    """Tensors stay; arrays (NumPy, JAX) become tensors; other leaves are left as they are."""
    if isinstance(x, torch.Tensor):
        return x
    if hasattr(x, "__array__") and not isinstance(x, (bool, int, float, complex, str)):
        # NumPy is not a dependency of funcgrad: it is only needed once an array is compared.
        import numpy as np

        return torch.from_numpy(np.array(x))
    return x


def _describe_node(spec: PyTreeDef) -> str:
    if spec.is_leaf():
        return "a leaf"
    if spec.num_children == 0 and spec.type is type(None):
        return "None"
    node = re.sub(r"^PyTreeSpec\((.*?)(, namespace='\w*')?\)$", r"\1", repr(spec.one_level()))
    return f"a {spec.type.__name__} node {node}"


def _structure_difference(a: PyTreeDef, d: PyTreeDef, path: str) -> str:
    """The path of the first node where two tree structures differ, and what differs there."""
    if a.is_leaf() or d.is_leaf() or a.one_level() != d.one_level():
        return f"at {path}: actual has {_describe_node(a)}, desired has {_describe_node(d)}"
    for acc, ca, cd in zip(a.one_level().accessors(), a.children(), d.children()):
        if ca != cd:
            return _structure_difference(ca, cd, path + acc.codify(""))
    return f"at {path}"  # pragma: no cover - unequal specs always differ at some node


def _value_difference(
    path: str, a: torch.Tensor, d: torch.Tensor, rtol: float, atol: float
) -> str | None:
    """``None`` if ``a`` and ``d`` (same shape) are close, else a description of the worst error."""
    common = torch.promote_types(a.dtype, d.dtype)
    a, d = a.detach().to(common), d.detach().to(device=a.device, dtype=common)
    if not (common.is_floating_point or common.is_complex):
        if torch.equal(a, d):
            return None
        bad = a != d
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        return (
            f"trees differ at {path}: {int(bad.sum())} of {a.numel()} elements differ; "
            f"first at index {idx}: actual {a[idx].item()!r}, desired {d[idx].item()!r}"
        )
    close = torch.isclose(a, d, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return None
    wide = torch.complex128 if common.is_complex else torch.float64
    a64, d64 = a.to(wide), d.to(wide)
    err = (a64 - d64).abs()
    finite = torch.isfinite(err)
    abs_err = err[finite].max().item() if finite.any() else float("nan")
    rel = err / d64.abs().clamp_min(torch.finfo(torch.float64).tiny)
    rel_err = rel[finite].max().item() if finite.any() else float("nan")
    # The worst element: a non-finite mismatch first, else the largest excess over the tolerance.
    score = torch.where(close, -1.0, err / (atol + rtol * d64.abs()).clamp_min(1e-300))
    score = torch.where(~close & ~finite, math.inf, score)
    flat = int(score.reshape(-1).argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
    return (
        f"trees differ at {path}: max abs error {abs_err:.3g}, max rel error {rel_err:.3g} "
        f"({int((~close).sum())} of {a.numel()} elements outside rtol={rtol:g}, atol={atol:g}); "
        f"worst element {idx}: actual {a64[idx].item():.8g}, desired {d64[idx].item():.8g}"
    )


def _leaf_tolerance(a: torch.Tensor, d: torch.Tensor) -> tuple[float, float]:
    """The looser default tolerance of the two dtypes (they differ only with check_dtype=False)."""
    ra, aa = default_tolerance(a.dtype)
    rd, ad = default_tolerance(d.dtype)
    return max(ra, rd), max(aa, ad)


def assert_trees_allclose(
    actual: PyTree,
    desired: PyTree,
    rtol: float | None = None,
    atol: float | None = None,
    *,
    check_dtype: bool = True,
) -> None:
    """Asserts that two trees have one structure and leafwise-close values.

    Leaves may be tensors or arrays (NumPy, JAX: compared as tensors) or other values
    (compared with ``==``). Floating and complex leaves are close when
    ``|actual - desired| <= atol + rtol * |desired|`` elementwise (NaNs in the same places are
    equal); integer and boolean leaves must be equal. Tolerances default to
    :func:`default_tolerance` of the leaf's dtype (the looser of the two dtypes when
    ``check_dtype=False``). The failure message names the tree path of the first bad leaf, the
    largest absolute and relative errors there, and the worst element.

    Args:
        actual: the tree computed by the code under test.
        desired: the reference tree.
        rtol: relative tolerance (default by dtype).
        atol: absolute tolerance (default by dtype).
        check_dtype: also require equal dtypes.

    Raises:
        AssertionError: on a difference in structure, shape, dtype or value.

    >>> import torch
    >>> assert_trees_allclose([torch.tensor(1.0)], [torch.tensor(1.5)])
    Traceback (most recent call last):
    ...
    AssertionError: trees differ at tree[0]: max abs error 0.5, max rel error 0.333...
    """
    a_acc, a_leaves, a_def = optree.tree_flatten_with_accessor(actual, namespace=NAMESPACE)
    d_leaves, d_def = optree.tree_flatten(desired, namespace=NAMESPACE)
    if a_def != d_def:
        where = _structure_difference(a_def, d_def, "tree")
        raise AssertionError(
            f"trees have different structures {where}\n  actual:  {a_def}\n  desired: {d_def}"
        )
    for acc, a, d in zip(a_acc, a_leaves, d_leaves):
        path = acc.codify("tree")
        a, d = _as_tensor(a), _as_tensor(d)
        if not isinstance(a, torch.Tensor) or not isinstance(d, torch.Tensor):
            if isinstance(a, torch.Tensor) or isinstance(d, torch.Tensor) or a != d:
                raise AssertionError(f"trees differ at {path}: {a!r} != {d!r}")
            continue
        if a.shape != d.shape:
            raise AssertionError(
                f"trees differ at {path}: shape {tuple(a.shape)} != {tuple(d.shape)}"
            )
        if check_dtype and a.dtype != d.dtype:
            raise AssertionError(f"trees differ at {path}: dtype {a.dtype} != {d.dtype}")
        default_rtol, default_atol = _leaf_tolerance(a, d)
        r = default_rtol if rtol is None else rtol
        t = default_atol if atol is None else atol
        message = _value_difference(path, a, d, r, t)
        if message is not None:
            raise AssertionError(message)


# --------------------------------------------------------------------------------------------
# check_grads
# --------------------------------------------------------------------------------------------


class _Settings:
    """What every level of a gradient check shares: tolerances, step and random stream."""

    def __init__(self, rtol: float, atol: float, eps: float, dtype: torch.dtype, seed: int):
        self.rtol, self.atol, self.eps, self.dtype = rtol, atol, eps, dtype
        self.generator = torch.Generator().manual_seed(seed)

    def describe(self) -> str:
        return (
            f"tolerances: rtol={self.rtol:g}, atol={self.atol:g}, eps={self.eps:g} (defaults "
            f"follow the least precise dtype, {self.dtype}; pass rtol=, atol=, eps= to change)"
        )


def _check_float_tree(tree: Any, root: str, what: str, fix: str) -> None:
    accessors, leaves, _ = optree.tree_flatten_with_accessor(tree, namespace=NAMESPACE)
    if not leaves:
        raise ValueError(
            f"{_CHECK_GRADS}: {what} has no tensor leaves, so there is nothing to check."
        )
    for acc, x in zip(accessors, leaves):
        if not _api_util.is_float_tensor(x):
            raise TypeError(
                f"{_CHECK_GRADS}: expected every leaf of {what} to be a real floating-point "
                f"tensor, but the leaf at {acc.codify(root)} is {_api_util.describe(x)}. {fix}"
            )


def _check_options(
    f: Any, args: Any, order: Any, modes: Any, rtol: Any, atol: Any, eps: Any, seed: Any
) -> tuple[str, ...]:
    if not callable(f):
        raise TypeError(f"{_CHECK_GRADS}: expected a callable f, got {_api_util.describe(f)}.")
    if not isinstance(args, tuple):
        raise TypeError(
            f"{_CHECK_GRADS}: expected args to be a tuple of f's positional arguments, got "
            f"{_api_util.describe(args)}. Wrap a single argument: check_grads(f, (x,), order=1)."
        )
    if not isinstance(order, int) or isinstance(order, bool):
        raise TypeError(f"{_CHECK_GRADS}: expected order to be an int, got {order!r}.")
    if order < 1:
        raise ValueError(f"{_CHECK_GRADS}: expected order >= 1, got {order}.")
    if isinstance(modes, str) or not isinstance(modes, Collection):
        raise TypeError(
            f"{_CHECK_GRADS}: expected modes to be a tuple of 'fwd' and/or 'rev', got "
            f"{modes!r}. Write modes=('fwd',) for a single mode."
        )
    unknown = [m for m in modes if m not in _MODES]
    if unknown or not modes:
        raise ValueError(
            f"{_CHECK_GRADS}: expected modes to be a non-empty tuple of 'fwd' (forward mode, "
            f"funcgrad.jvp) and 'rev' (reverse mode, funcgrad.vjp), got {tuple(modes)!r}."
        )
    for name, value in (("rtol", rtol), ("atol", atol), ("eps", eps)):
        ok = value is None or (isinstance(value, (int, float)) and math.isfinite(value))
        if not ok or (value is not None and (value <= 0 if name == "eps" else value < 0)):
            bound = "a positive" if name == "eps" else "a non-negative"
            raise ValueError(
                f"{_CHECK_GRADS}: expected {name} to be None or {bound} float, got {value!r}."
            )
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"{_CHECK_GRADS}: expected seed to be an int, got {seed!r}.")
    _check_float_tree(
        args,
        "args",
        "args",
        "check_grads differentiates every leaf: cast it (x.double()), or close over it "
        "(functools.partial) so that it is not an argument.",
    )
    return tuple(m for m in _MODES if m in modes)


def _least_precise(*trees: PyTree) -> torch.dtype:
    dtypes = {x.dtype for tree in trees for x in optree.tree_leaves(tree, namespace=NAMESPACE)}
    least: torch.dtype = max(dtypes, key=lambda d: (torch.finfo(d).eps, str(d)))
    return least


def _random_like(tree: PyTree, generator: torch.Generator) -> PyTree:
    """Standard normal directions, drawn on the CPU in float64 (so that they do not depend on
    the device), then moved to each leaf's device and dtype."""

    def draw(x: torch.Tensor) -> torch.Tensor:
        z = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        return z.to(device=x.device, dtype=x.dtype)

    return optree.tree_map(draw, tree, namespace=NAMESPACE)


def _f64(tree: PyTree) -> PyTree:
    return optree.tree_map(lambda x: x.detach().to(torch.float64), tree, namespace=NAMESPACE)


def _abs(tree: PyTree) -> PyTree:
    return optree.tree_map(torch.abs, tree, namespace=NAMESPACE)


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
    return optree.tree_map(lambda t, x: t.to(x.dtype), tree, like, namespace=NAMESPACE)


def _call64(f: Callable[..., Any], xs: tuple[Any, ...], name: str, upcast: bool) -> PyTree:
    if not upcast:
        return f(*xs)
    try:
        return f(*xs)
    except Exception as e:
        raise TypeError(
            f"{_CHECK_GRADS}: {name} raised {type(e).__name__} when called on float64 copies of "
            "its inputs (check_grads always takes finite differences in float64; it upcasts "
            "inputs of other dtypes). Make f work in float64 (e.g. cast closed-over tensors to "
            f"x.dtype), or pass float64 args. The error was: {e}"
        ) from e


def _numerical_jvp(
    f: Callable[..., Any], args: tuple[Any, ...], v: tuple[Any, ...], s: _Settings, name: str
) -> PyTree:
    """``(f(x + eps v) - f(x - eps v)) / (2 eps)`` in float64, as a float64 tree."""
    x64, v64 = _f64(args), _f64(v)
    arg_leaves: list[torch.Tensor] = optree.tree_leaves(args, namespace=NAMESPACE)  # type: ignore[arg-type]
    upcast = any(x.dtype != torch.float64 for x in arg_leaves)

    def shifted(sign: float) -> PyTree:
        xs = tuple(
            optree.tree_map(lambda x, t: x + sign * s.eps * t, x64, v64, namespace=NAMESPACE)
        )
        return _f64(_call64(f, xs, name, upcast))

    plus, minus = shifted(1.0), shifted(-1.0)
    return optree.tree_map(lambda p, m: (p - m) / (2 * s.eps), plus, minus, namespace=NAMESPACE)


def _worst_leaf(analytic: PyTree, numerical: PyTree, s: _Settings) -> str | None:
    """``None`` if the trees agree within tolerance, else a report on the worst element."""
    accessors, a_leaves, a_def = optree.tree_flatten_with_accessor(analytic, namespace=NAMESPACE)
    n_leaves, n_def = optree.tree_flatten(numerical, namespace=NAMESPACE)
    if a_def != n_def:
        return f"the analytic result has structure {a_def} but the numerical one has {n_def}"
    worst: tuple[float, str] | None = None
    for acc, a, n in zip(accessors, a_leaves, n_leaves):
        a64 = a.detach().to(torch.float64)
        n64 = n.detach().to(device=a.device, dtype=torch.float64)
        err = (a64 - n64).abs()
        tol = s.atol + s.rtol * n64.abs()
        score = (err / tol.clamp_min(1e-300)).nan_to_num(nan=math.inf)
        if score.numel() == 0 or score.max().item() <= 1.0:
            continue
        flat = int(score.reshape(-1).argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
        report = (
            f"at {acc.codify('out')}, element {idx}: analytic {a64[idx].item():.8g}, "
            f"numerical {n64[idx].item():.8g}, abs error {err[idx].item():.3g} > "
            f"atol + rtol * |numerical| = {tol[idx].item():.3g} "
            f"({int((score > 1).sum())} of {a.numel()} elements of this leaf are off)"
        )
        if worst is None or score[idx].item() > worst[0]:
            worst = (score[idx].item(), report)
    return None if worst is None else worst[1]


def _fail(mode: str, level: int, what: str, detail: str, s: _Settings) -> AssertionError:
    kind = {"fwd": "forward mode (fwd, funcgrad.jvp)", "rev": "reverse mode (rev, funcgrad.vjp)"}
    return AssertionError(
        f"{_CHECK_GRADS}: {kind[mode]} check failed at order {level} ({what}):\n"
        f"  {detail}\n  {s.describe()}"
    )


def _derivative_name(label: str, name: str) -> str:
    return f"{label} of {name}" if name == "f" else f"{label} of ({name})"


def _check_primal(mode: str, out: PyTree, y: PyTree, level: int, what: str, s: _Settings) -> None:
    bad = _worst_leaf(out, y, s)
    if bad is not None:
        transform = "funcgrad.jvp" if mode == "fwd" else "funcgrad.vjp"
        detail = f"the primal output of {transform} differs from calling the function {bad}"
        raise _fail(mode, level, what, detail, s)


def _check_fwd(
    f: Callable[..., Any], args: tuple[Any, ...], y: PyTree, level: int, name: str, s: _Settings
) -> Callable[..., Any]:
    """Checks ``jvp`` of ``f`` against finite differences; returns ``x -> jvp(f, x, v)[1]``."""
    what = _derivative_name("JVP", name)
    v = _random_like(args, s.generator)
    out, t_out = jvp(f, args, v)
    _check_primal("fwd", out, y, level, what, s)
    bad = _worst_leaf(t_out, _numerical_jvp(f, args, v, s, name), s)
    if bad is not None:
        raise _fail("fwd", level, what, f"jvp differs from central finite differences {bad}", s)

    def f_jvp(*xs: Any) -> Any:
        return jvp(f, xs, _cast_like(v, xs))[1]

    return f_jvp


def _one_hot_tree(tree: PyTree, keep: int) -> PyTree:
    leaves, treedef = optree.tree_flatten(tree, namespace=NAMESPACE)
    return treedef.unflatten(
        [x if i == keep else torch.zeros_like(x) for i, x in enumerate(leaves)]
    )


def _localize_vjp(
    f: Callable[..., Any],
    args: tuple[Any, ...],
    vjp_fn: Any,
    uv: tuple[Any, Any],
    jv: PyTree,
    name: str,
    s: _Settings,
) -> str:
    """After a failed reverse-mode check: the output leaf and the input leaf that err most."""
    u, v = uv
    u64, v64 = _f64(u), _f64(v)
    per_out = []
    for i, path in enumerate(_api_util.leaf_paths(u, "out")):
        ui = _one_hot_tree(u, i)
        a, n = dot(_f64(vjp_fn(ui)), v64).item(), dot(_f64(ui), jv).item()
        per_out.append((abs(a - n), path, a, n))
    per_in = []
    ct = _f64(vjp_fn(u))
    for k, path in enumerate(_api_util.leaf_paths(args, "args")):
        vk = _one_hot_tree(v, k)
        a = dot(ct, _f64(vk)).item()
        n = dot(u64, _numerical_jvp(f, args, vk, s, name)).item()
        per_in.append((abs(a - n), path, a, n))
    (_, o_path, o_a, o_n), (_, i_path, i_a, i_n) = max(per_out), max(per_in)
    return (
        f"the error is largest for the output leaf {o_path} (analytic {o_a:.8g}, numerical "
        f"{o_n:.8g}) and for the input leaf {i_path} (analytic {i_a:.8g}, numerical {i_n:.8g})"
    )


def _check_rev(
    f: Callable[..., Any], args: tuple[Any, ...], y: PyTree, level: int, name: str, s: _Settings
) -> Callable[..., Any]:
    """Checks ``vjp`` of ``f`` against finite differences; returns ``x -> vjp(f, *x)[1](u)``."""
    what = _derivative_name("VJP", name)
    v = _random_like(args, s.generator)
    u = _random_like(y, s.generator)
    out, vjp_fn = vjp(f, *args)
    _check_primal("rev", out, y, level, what, s)
    jv = _numerical_jvp(f, args, v, s, name)
    u64 = _f64(u)
    analytic = dot(_f64(vjp_fn(u)), _f64(v)).item()
    numerical = dot(u64, jv).item()
    # An inner product's rounding error scales with sum |u_i (J v)_i|, not with its value.
    scale = dot(_abs(u64), _abs(jv)).item()
    tol = s.atol + s.rtol * scale
    if not abs(analytic - numerical) <= tol:  # also fails on NaN
        detail = (
            f"<vjp(u), v> = {analytic:.8g} but <u, J v> = {numerical:.8g} by central finite "
            f"differences, for random u and v: abs error {abs(analytic - numerical):.3g} > "
            f"atol + rtol * sum|u * J v| = {tol:.3g};\n  "
            + _localize_vjp(f, args, vjp_fn, (u, v), jv, name, s)
        )
        raise _fail("rev", level, what, detail, s)

    def f_vjp(*xs: Any) -> Any:
        out, vjp_fn = vjp(f, *xs)
        return vjp_fn(_cast_like(u, out))

    return f_vjp


def _check_level(
    f: Callable[..., Any],
    args: tuple[Any, ...],
    y: PyTree,
    order: int,
    modes: tuple[str, ...],
    level: int,
    name: str,
    s: _Settings,
) -> None:
    """Checks ``f`` (whose output at ``args`` is ``y``) in every mode, then its derivatives."""
    for mode in modes:
        derivative = (_check_fwd if mode == "fwd" else _check_rev)(f, args, y, level, name, s)
        if level < order:
            what = _derivative_name("JVP" if mode == "fwd" else "VJP", name)
            _check_level(derivative, args, derivative(*args), order, modes, level + 1, what, s)


def check_grads(
    f: Callable[..., PyTree],
    args: tuple[PyTree, ...],
    order: int,
    modes: Collection[str] = ("fwd", "rev"),
    *,
    atol: float | None = None,
    rtol: float | None = None,
    eps: float | None = None,
    seed: int = 0,
) -> None:
    """Checks funcgrad's derivatives of ``f`` against central finite differences.

    Along a random tangent ``v`` (with the structure, shapes and dtypes of ``args``):

    - ``"fwd"`` compares ``funcgrad.jvp(f, args, v)`` with
      ``(f(x + eps v) - f(x - eps v)) / (2 eps)`` leaf by leaf;
    - ``"rev"`` compares ``<vjp_fn(u), v>`` from ``funcgrad.vjp(f, *args)`` with
      ``<u, (f(x + eps v) - f(x - eps v)) / (2 eps)>`` for a random cotangent ``u``, within
      ``atol + rtol * sum|u * J v|`` (the scale of an inner product's rounding error).

    Each check also compares the primal output of ``jvp``/``vjp`` with ``f(*args)``. With
    ``order > 1`` the derivative functions ``x -> jvp(f, x, v)[1]`` and
    ``x -> vjp(f, *x)[1](u)`` are checked in turn, in every mode, up to ``order`` nested
    derivatives (like ``jax.test_util.check_grads``).

    The finite differences are always taken in float64: inputs of other dtypes are upcast, so
    ``f`` must accept float64 copies of its arguments (it must not, for instance, multiply them
    with a closed-over float32 matrix). The analytic derivatives are computed in the inputs' own
    dtypes and compared in float64. Random directions are standard normal, drawn on the CPU
    from a :class:`torch.Generator` seeded with ``seed`` (never the global RNG) and moved to
    each leaf's device and dtype, so a seed gives the same directions on every device.

    Defaults, by the least precise floating dtype among the inputs and outputs:

    ===========  ========  ========
    dtype        rtol      atol
    ===========  ========  ========
    float64      1e-6      1e-6
    float32      1e-3      1e-4
    float16      3e-2      3e-2
    bfloat16     1e-1      1e-1
    ===========  ========  ========

    ``eps`` defaults to ``1e-4`` for every dtype, since the differences are taken in float64.

    Args:
        f: a function of ``len(args)`` positional pytrees of floating-point tensors returning a
            pytree of floating-point tensors.
        args: a tuple of the positional arguments; every leaf must be a real floating-point
            tensor (``None`` nodes are allowed).
        order: how many nested derivatives to check (``1``: first derivatives; ``2``: also the
            derivatives of the derivative functions; and so on).
        modes: the modes to check, ``"fwd"`` and/or ``"rev"``.
        atol: absolute tolerance (default by dtype, see above).
        rtol: relative tolerance (default by dtype, see above).
        eps: finite-difference step (default ``1e-4``).
        seed: seed of the random directions.

    Raises:
        AssertionError: when a derivative does not match; the message names the mode, the
            order, the function checked (e.g. ``JVP of f``), the tree path of the worst leaf,
            the analytic and numerical values and the tolerances.
        TypeError: when ``f`` is not callable, ``args`` is not a tuple, a leaf of ``args`` or of
            the output is not a floating-point tensor, ``order``/``seed`` is not an int, or
            ``f`` fails on the float64 copies of lower-precision inputs.
        ValueError: when ``order < 1``, a mode is unknown, a tolerance is negative, ``eps`` is
            not positive, or ``args`` or the output has no tensor leaves.

    >>> import torch, funcgrad as fg
    >>> def f(params, x):
    ...     return {"y": torch.tanh(params["w"] @ x + params["b"]), "norm": (x**2).sum()}
    >>> w = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64).reshape(2, 3)
    >>> params = {"w": w, "b": torch.zeros(2, dtype=torch.float64)}
    >>> fg.testing.check_grads(f, (params, torch.ones(3, dtype=torch.float64)), order=2)

    A function whose value is ``sin(x)`` but whose derivative is ``2`` instead of ``cos(x)``:

    >>> def bad(x):
    ...     return torch.sin(x).detach() + 2 * (x - x.detach())
    >>> fg.testing.check_grads(bad, (torch.zeros(3, dtype=torch.float64),), order=1)
    Traceback (most recent call last):
    ...
    AssertionError: funcgrad.testing.check_grads: forward mode (fwd, funcgrad.jvp) check failed at
    order 1 (JVP of f): jvp differs from central finite differences at out, element (...):
    analytic ..., numerical ...
    """
    checked = _check_options(f, args, order, modes, rtol, atol, eps, seed)
    y = f(*args)
    _check_float_tree(
        y,
        "out",
        "the output of f",
        "check_grads needs a differentiable output: return floating-point tensors only.",
    )
    dtype = _least_precise(args, y)
    default_rtol, default_atol = _GRAD_TOLERANCE.get(dtype, _GRAD_TOLERANCE[torch.bfloat16])
    s = _Settings(
        default_rtol if rtol is None else float(rtol),
        default_atol if atol is None else float(atol),
        _GRAD_EPS if eps is None else float(eps),
        dtype,
        seed,
    )
    _check_level(f, args, y, order, checked, 1, "f", s)
