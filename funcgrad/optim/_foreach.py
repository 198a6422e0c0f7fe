"""Arithmetic on lists of tensors (an optimizer's flattened leaves), fast in every context.

# NOTE [foreach in the optimizers]
# Every transform works on the flat list of leaves of its updates and state. In eager mode a
# list op is one torch._foreach_* call: torch groups the tensors by device and dtype and runs
# one fused kernel per group (on CPU, one C++ loop), so an optimizer step costs no Python work
# per leaf. Inside a torch.func transform (grad through an update for meta-learning, vmap over
# an ensemble of optimizer states) the foreach kernels have no batching or functorch rules, so
# the same op is one plain torch op per leaf. Under torch.compile the per-leaf form is traced too
# and inductor fuses it (see fast()). Scalars may be Python numbers or 0-d tensors (a tensor learning rate
# never recompiles a jitted step); a tensor scalar is applied with a separate multiply, since
# some foreach kernels (addcdiv, addcmul, lerp) take only Python scalars under compile.
"""

from __future__ import annotations

import torch

from .._api_util import in_transform

Scalar = float | torch.Tensor
Tensors = list[torch.Tensor]

__all__: list[str] = []


def fast() -> bool:
    """Whether foreach kernels are used here: in eager mode outside torch.func transforms."""
    # Under torch.compile the per-leaf form is used: inductor fuses it into one loop over all the
    # leaves, where the foreach form lowers to slower code on the CPU (a jitted Adam step over
    # 196 leaves: 17.6 ms per-leaf, 31.0 ms foreach, torch 2.13). On CUDA the foreach lowering
    # (combo kernels) has not been measured against it yet.
    return not torch.compiler.is_compiling() and not in_transform()


def scale(xs: Tensors, s: Scalar) -> Tensors:
    """``s * x`` for each ``x``."""
    if xs and fast():
        return list(torch._foreach_mul(xs, s))
    return [x * s for x in xs]


def add(xs: Tensors, ys: Tensors, alpha: Scalar = 1.0) -> Tensors:
    """``x + alpha * y``."""
    if xs and fast():
        if isinstance(alpha, torch.Tensor):
            return list(torch._foreach_add(xs, torch._foreach_mul(ys, alpha)))
        return list(torch._foreach_add(xs, ys, alpha=alpha))
    if isinstance(alpha, torch.Tensor):
        return [x + alpha * y for x, y in zip(xs, ys)]
    return [torch.add(x, y, alpha=alpha) for x, y in zip(xs, ys)]


def sub(xs: Tensors, ys: Tensors) -> Tensors:
    """``x - y``."""
    if xs and fast():
        return list(torch._foreach_sub(xs, ys))
    return [x - y for x, y in zip(xs, ys)]


def mul(xs: Tensors, ys: Tensors) -> Tensors:
    """``x * y``."""
    if xs and fast():
        return list(torch._foreach_mul(xs, ys))
    return [x * y for x, y in zip(xs, ys)]


def div(xs: Tensors, ys: Tensors) -> Tensors:
    """``x / y``."""
    if xs and fast():
        return list(torch._foreach_div(xs, ys))
    return [x / y for x, y in zip(xs, ys)]


def add_scalar(xs: Tensors, s: Scalar) -> Tensors:
    """``x + s``."""
    if xs and fast():
        return list(torch._foreach_add(xs, s))
    return [x + s for x in xs]


def lerp(xs: Tensors, ys: Tensors, weight: Scalar) -> Tensors:
    """``x + weight * (y - x)``: an exponential moving average step."""
    if xs and fast() and not isinstance(weight, torch.Tensor):
        return list(torch._foreach_lerp(xs, ys, weight))
    if not isinstance(weight, torch.Tensor):
        return [torch.lerp(x, y, weight) for x, y in zip(xs, ys)]
    return add(xs, sub(ys, xs), weight)


def addcmul(
    xs: Tensors,
    ys: Tensors,
    zs: Tensors,
    value: Scalar = 1.0,
) -> Tensors:
    """``x + value * y * z``."""
    if xs and fast() and not isinstance(value, torch.Tensor):
        return list(torch._foreach_addcmul(xs, ys, zs, value=value))
    if not isinstance(value, torch.Tensor):
        return [torch.addcmul(x, y, z, value=value) for x, y, z in zip(xs, ys, zs)]
    return add(xs, mul(ys, zs), value)


def addcdiv(
    xs: Tensors,
    ys: Tensors,
    zs: Tensors,
    value: Scalar = 1.0,
) -> Tensors:
    """``x + value * y / z``."""
    if xs and fast() and not isinstance(value, torch.Tensor):
        return list(torch._foreach_addcdiv(xs, ys, zs, value=value))
    if not isinstance(value, torch.Tensor):
        return [torch.addcdiv(x, y, z, value=value) for x, y, z in zip(xs, ys, zs)]
    return add(xs, div(ys, zs), value)


def sqrt(xs: Tensors) -> Tensors:
    if xs and fast():
        return list(torch._foreach_sqrt(xs))
    return [x.sqrt() for x in xs]


def abs(xs: Tensors) -> Tensors:
    if xs and fast():
        return list(torch._foreach_abs(xs))
    return [x.abs() for x in xs]


def sign(xs: Tensors) -> Tensors:
    if xs and fast():
        return list(torch._foreach_sign(xs))
    return [x.sign() for x in xs]


def maximum(xs: Tensors, ys: Tensors) -> Tensors:
    if xs and fast():
        return list(torch._foreach_maximum(xs, ys))
    return [torch.maximum(x, y) for x, y in zip(xs, ys)]


def clamp(xs: Tensors, low: float, high: float) -> Tensors:
    if xs and fast():
        return list(torch._foreach_clamp_max(torch._foreach_clamp_min(xs, low), high))
    return [x.clamp(low, high) for x in xs]


def zeros_like(xs: Tensors) -> Tensors:
    return [torch.zeros_like(x) for x in xs]


def sum_of_squares(xs: Tensors) -> torch.Tensor:
    """``sum_i ||x_i||^2`` over all leaves as a 0-d tensor (in the first leaf's dtype)."""
    if not xs:
        return torch.zeros(())
    norms = list(torch._foreach_norm(xs)) if fast() else [torch.linalg.vector_norm(x) for x in xs]
    device = xs[0].device
    return torch.stack([n.to(device) for n in norms]).square().sum()


def norms(xs: Tensors) -> Tensors:
    """The L2 norm of each ``x`` over all its elements: 0-d tensors in its dtype and device."""
    if xs and fast():
        return list(torch._foreach_norm(xs))
    return [torch.linalg.vector_norm(x) for x in xs]


# In-place forms, for temporaries the caller created itself (never for inputs: transforms are
# pure). Outside the fast path they compute out of place; callers always use the result.


def scale_(xs: Tensors, s: Scalar) -> Tensors:
    """``x *= s`` on the caller's own temporaries."""
    if xs and fast():
        torch._foreach_mul_(xs, s)
        return xs
    return [x * s for x in xs]


def add_scalar_(xs: Tensors, s: Scalar) -> Tensors:
    """``x += s`` on the caller's own temporaries."""
    if xs and fast():  # eager only: a 0-d tensor goes in whole (one fused kernel on CUDA)
        torch._foreach_add_(xs, s)
        return xs
    return [x + s for x in xs]


def div_(xs: Tensors, ys: Tensors) -> Tensors:
    """``x /= y`` on the caller's own temporaries."""
    if xs and fast():
        torch._foreach_div_(xs, ys)
        return xs
    return [x / y for x, y in zip(xs, ys)]


def addcmul_(xs: Tensors, ys: Tensors, zs: Tensors, value: float) -> Tensors:
    """``x += value * y * z`` on the caller's own temporaries."""
    if xs and fast():
        torch._foreach_addcmul_(xs, ys, zs, value=value)
        return xs
    return [torch.addcmul(x, y, z, value=value) for x, y, z in zip(xs, ys, zs)]
