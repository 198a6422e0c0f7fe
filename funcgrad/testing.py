"""Testing utilities: tree comparison with readable failures, and gradient checks.

>>> import torch, funcgrad as fg
>>> fg.testing.assert_trees_allclose({"w": torch.ones(2)}, {"w": torch.ones(2) + 1e-9})
"""

from __future__ import annotations

from typing import Any

import optree
import torch

from ._typing import PyTree
from .tree import NAMESPACE

__all__ = ["assert_trees_allclose", "default_tolerance"]

# Default (rtol, atol) by dtype, used when a comparison does not give its own.
_TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-10),
    torch.complex128: (1e-7, 1e-10),
    torch.float32: (1e-5, 1e-6),
    torch.complex64: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """The default ``(rtol, atol)`` funcgrad's tests use for a dtype (exact for integers).

    >>> import torch
    >>> default_tolerance(torch.float32)
    (1e-05, 1e-06)
    >>> default_tolerance(torch.int64)
    (0.0, 0.0)
    """
    return _TOLERANCE.get(dtype, (0.0, 0.0))


def _as_tensor(x: Any) -> Any:
    """Tensors stay; arrays (NumPy, JAX) become tensors; other leaves are left as they are."""
    if isinstance(x, torch.Tensor):
        return x
    if hasattr(x, "__array__") and not isinstance(x, (bool, int, float, complex, str)):
        import numpy as np

        return torch.from_numpy(np.array(x))
    return x


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
    (compared with ``==``). Tolerances default to :func:`default_tolerance` of the actual
    leaf's dtype. The failure message names the tree path of the first bad leaf and the
    largest absolute and relative errors there.

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
        raise AssertionError(
            f"trees have different structures:\n  actual:  {a_def}\n  desired: {d_def}"
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
        default_rtol, default_atol = default_tolerance(a.dtype)
        r = default_rtol if rtol is None else rtol
        t = default_atol if atol is None else atol
        d = d.to(device=a.device, dtype=a.dtype)
        if torch.allclose(a, d, rtol=r, atol=t, equal_nan=True):
            continue
        a64 = a.detach().to(torch.complex128 if a.is_complex() else torch.float64)
        d64 = d.detach().to(a64.dtype)
        err = (a64 - d64).abs()
        finite = torch.isfinite(err)
        abs_err = err[finite].max().item() if finite.any() else float("nan")
        rel = err / d64.abs().clamp_min(torch.finfo(torch.float64).tiny)
        rel_err = rel[finite].max().item() if finite.any() else float("nan")
        bad = int((~torch.isclose(a, d, rtol=r, atol=t, equal_nan=True)).sum())
        raise AssertionError(
            f"trees differ at {path}: max abs error {abs_err:.3g}, max rel error {rel_err:.3g} "
            f"({bad} of {a.numel()} elements outside rtol={r:g}, atol={t:g})"
        )
