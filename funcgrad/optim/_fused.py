"""Eager Adam and AdamW through torch's fused Adam kernel, on buffers the update owns.

# NOTE [fused Adam in eager mode]
# A pure Adam update cannot overwrite the moments or the parameters as torch.optim does, and
# composed from foreach ops it makes ~9 passes over the parameters with 5 fresh results per
# leaf: 1.5x torch's foreach step on the CPU. torch's fused Adam kernel does the whole update
# in one pass, in place. The aliases `adam` and `adamw` therefore run it, in eager mode, on
# buffers the update allocates itself: copies of the two moments (the new state), and a zeroed
# buffer standing for the parameters. Starting from 0, the kernel's parameter update
# `p -= lr * m_hat / (sqrt(v_hat) + eps)` leaves exactly the update in that buffer (0 - x is -x
# exactly), with torch.optim's own arithmetic. `apply_updates` then adds it to the parameters.
# Decoupled weight decay (AdamW) needs the real parameters, so it is one more in-place foreach
# add into the same buffer: `u -= lr * wd * p`.
#
# The state has the exact layout of the composed chain (a saved state loads into either path),
# and the composed form runs wherever the fused one cannot: under torch.compile (inductor fuses
# the per-leaf form itself), inside torch.func transforms (the kernel has no autograd, batching
# or functorch rule: differentiating through the optimizer needs the composed ops), when any
# tensor requires grad, for tensor betas or eps (inject_hyperparams), nesterov, eps_root, and for
# leaves that are not dense contiguous float tensors on a CPU or CUDA device. Both forms follow
# torch.optim.Adam to rounding (tested); they are not bit-identical to each other. A kernel that
# raises (a device or build without it) sends that device and dtype to the composed chain.
#
# Measured (benchmarks/optim.py, 196 float32 leaves, 24.8M parameters, 2-core CPU, torch 2.13,
# quiet machine): 0.92-1.0x torch's foreach step over three runs (38.1 vs 39.0 ms in the last),
# 2.9x its fused step; the composed chain 1.5x foreach. What remains over fused is the copies a
# pure update must make (zeroed update, two moment copies, apply_updates' new parameters). On
# CUDA the same code passes float32 steps and learning rate on the device, as torch.optim does;
# not yet run on a GPU (tests/test_optim_fused.py has the GPU tests, skipped without one).
"""

from __future__ import annotations

from typing import Any

import torch

from ._base import (
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    _eager,
    flat_like,
    safe_increment,
)
from ._base import (
    flatten as _flatten,
)
from ._transforms import ScaleByAdamState, _mask_leaves, scalar_dtype

__all__: list[str] = []

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DEVICES = ("cpu", "cuda")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def fusable(
    composed: GradientTransformation,
    *,
    learning_rate: ScalarOrSchedule,
    lr_transform: GradientTransformation,
    b1: Any,
    b2: Any,
    eps: Any,
    eps_root: Any,
    nesterov: bool,
    l2: Any = 0.0,
    decoupled: Any = None,
    mask: Any = None,
) -> GradientTransformation:
    """``composed`` (``chain(decay?, scale_by_adam, decay?, scale_by_learning_rate)``) with a
    fused eager ``update`` (NOTE [fused Adam in eager mode]).

    ``l2`` is torch.optim.Adam's weight decay (added to the gradient, first in the chain);
    ``decoupled`` AdamW's (after ``scale_by_adam``, with ``mask``; None for Adam). The chain's
    state is ``(l2 state, adam state, lr state)`` for Adam, ``(adam state, decay state, lr
    state)`` for AdamW.
    """
    if (
        nesterov
        or not (_is_number(b1) and _is_number(b2) and _is_number(eps))
        or not _is_number(eps_root)
        or eps_root != 0.0
        or not _is_number(l2)
    ):
        return composed
    adamw = decoupled is not None
    adam_index = 0 if adamw else 1
    lr_is_number = _is_number(learning_rate)
    composed_update = composed.update
    lr_update = lr_transform.update

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        if (
            not _eager()  # the kernel has no autograd, batching or functorch rule
            or type(state) is not tuple
            or len(state) != 3
            or type(state[adam_index]) is not ScaleByAdamState
            or (params is None and (l2 or adamw))  # the chain raises its error
            or (isinstance(decoupled, torch.Tensor) and decoupled.requires_grad)
        ):
            return composed_update(updates, state, params)
        g, treedef = _flatten(updates)
        adam_state = state[adam_index]
        mu = flat_like(
            "scale_by_adam", "state's first moment (mu)", adam_state.mu, treedef, updates
        )
        nu = flat_like(
            "scale_by_adam", "state's second moment (nu)", adam_state.nu, treedef, updates
        )
        groups = _groups(g, mu, nu)
        if groups is None or not g:
            return composed_update(updates, state, params)
        p: list[torch.Tensor] = []
        if l2 or adamw:
            p = flat_like("add_decayed_weights", "params", params, treedef, updates)
            if not _plain(p):
                return composed_update(updates, state, params)
        if l2:
            g = list(torch._foreach_add(g, p, alpha=l2))
        lr_state = state[2]
        if lr_is_number:
            lr: float | torch.Tensor = float(learning_rate)  # type: ignore[arg-type]
        else:
            probe = torch.ones((), dtype=scalar_dtype(g), device=g[0].device)
            (negative_lr,), lr_state = lr_update([probe], lr_state)
            if negative_lr.requires_grad:
                return composed_update(updates, state, params)
            lr = -negative_lr.item() if negative_lr.device.type == "cpu" else -negative_lr
        count = safe_increment(adam_state.count)
        new_u = [torch.empty_like(x) for x in g]
        new_mu = [torch.empty_like(x) for x in mu]
        new_nu = [torch.empty_like(x) for x in nu]
        torch._foreach_zero_(new_u)
        torch._foreach_copy_(new_mu, mu)
        torch._foreach_copy_(new_nu, nu)
        try:
            for (_, dtype), device, index in groups:
                _kernel(new_u, g, new_mu, new_nu, index, count, device, dtype, lr, b1, b2, eps)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:
            # A device or build whose kernel refuses these tensors: the composed chain (the
            # kernel wrote only the fresh buffers, so nothing is half-updated). Not retried.
            _REFUSED.update(key for key, _, _ in groups)
            return composed_update(updates, state, params)
        new_adam = ScaleByAdamState(count, treedef.unflatten(new_mu), treedef.unflatten(new_nu))
        if adamw:
            _decay(new_u, p, lr, decoupled, mask, params)
            new_state = (new_adam, state[1], lr_state)
        else:
            new_state = (state[0], new_adam, lr_state)
        return treedef.unflatten(new_u), new_state

    return GradientTransformation(composed.init, update)


# (device type, dtype) pairs whose kernel raised: they take the composed chain from then on.
_REFUSED: set[tuple[str, torch.dtype]] = set()


def _kernel(
    u: list[torch.Tensor],
    g: list[torch.Tensor],
    mu: list[torch.Tensor],
    nu: list[torch.Tensor],
    index: list[int] | None,
    count: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
    lr: float | torch.Tensor,
    b1: float,
    b2: float,
    eps: float,
) -> None:
    """One fused Adam kernel over the leaves ``index`` (all of them for None), in place on the
    fresh buffers ``u``, ``mu``, ``nu``. Steps and a tensor learning rate go in as float32
    tensors on the leaves' device, as torch.optim passes them; for float64 leaves a tensor
    learning rate goes in as a Python float (float32 would round it)."""
    if index is not None:
        u, g, mu, nu = ([x[i] for i in index] for x in (u, g, mu, nu))
    if isinstance(lr, torch.Tensor):
        lr = lr.item() if dtype == torch.float64 else lr.to(device=device, dtype=torch.float32)
    step = count.to(device=device, dtype=torch.float32)
    torch._fused_adam_(
        u,
        g,
        mu,
        nu,
        [],
        [step] * len(u),
        lr=lr,
        beta1=float(b1),
        beta2=float(b2),
        weight_decay=0.0,
        eps=float(eps),
        amsgrad=False,
        maximize=False,
    )


def _has_decoupled(decoupled: Any) -> bool:
    """Whether AdamW's decay term is there (a tensor always is: inject_hyperparams)."""
    return isinstance(decoupled, torch.Tensor) or bool(decoupled)


def _plain(xs: list[Any]) -> bool:
    """Dense contiguous float tensors on CPU/CUDA, none requiring grad where grad is on."""
    grad = torch.is_grad_enabled()
    for x in xs:
        if (
            not isinstance(x, torch.Tensor)
            or type(x) not in (torch.Tensor, torch.nn.Parameter)
            or x.dtype not in _FLOATS
            or x.device.type not in _DEVICES
            or x.layout is not torch.strided
            or not x.is_contiguous()
            or (grad and x.requires_grad)
        ):
            return False
    return True


def _groups(
    g: list[Any], mu: list[Any], nu: list[Any]
) -> list[tuple[tuple[str, torch.dtype], torch.device, list[int] | None]] | None:
    """The leaves grouped by device and dtype (index None: all of them, the usual case), or
    None where the kernel does not apply: a leaf that is not a plain float tensor, moments
    whose dtype, device or shape differ from the gradient's, or a kernel that refused before."""
    if not (_plain(g) and _plain(mu) and _plain(nu)):
        return None
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, (x, m, v) in enumerate(zip(g, mu, nu)):
        if not (m.dtype == v.dtype == x.dtype and m.device == v.device == x.device):
            return None
        if not (m.shape == v.shape == x.shape):
            return None
        groups.setdefault((x.device, x.dtype), []).append(i)
    if any((device.type, dtype) in _REFUSED for device, dtype in groups):
        return None
    return [
        ((device.type, dtype), device, None if len(groups) == 1 else index)
        for (device, dtype), index in groups.items()
    ]


def _decay(
    u: list[torch.Tensor],
    p: list[torch.Tensor],
    lr: float | torch.Tensor,
    weight_decay: Any,
    mask: Any,
    params: Params,
) -> None:
    """``u -= lr * weight_decay * p`` in place, on the leaves the mask selects. The mask is
    checked even for a zero decay, as the composed chain's add_decayed_weights does."""
    if mask is not None:
        keep = _mask_leaves("add_decayed_weights", mask, params)
        index = [i for i, k in enumerate(keep) if k]
        u, p = [u[i] for i in index], [p[i] for i in index]
    if not u or not _has_decoupled(weight_decay):
        return
    if isinstance(weight_decay, torch.Tensor):
        # lr * wd in float64 (a float32 tensor times a Python float stays float32), as the
        # composed chain's product with float64 leaves computes it.
        weight_decay = weight_decay.to(torch.promote_types(weight_decay.dtype, torch.float64))
    factor = lr * weight_decay
    if isinstance(factor, torch.Tensor):
        if factor.device.type == "cpu" and u[0].device.type == "cpu":
            torch._foreach_add_(u, p, alpha=-factor.item())
        else:
            torch._foreach_sub_(u, torch._foreach_mul(p, factor.to(u[0].device)))
    else:
        torch._foreach_add_(u, p, alpha=-factor)
