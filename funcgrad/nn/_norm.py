"""Normalisation layers: ``LayerNorm``, ``RMSNorm`` and ``BatchNorm`` (with explicit state).

# NOTE [BatchNorm's state]
# torch.nn.BatchNorm keeps its running statistics in buffers it updates in place. Here they are
# a separate pytree, a BatchNormState NamedTuple (the buffers' names: running_mean, running_var,
# num_batches_tracked) from ``bn.init_state()``, passed in and returned:
# ``y, state = bn(x, state, train=True)``. The layer itself holds only the affine parameters,
# so ``fg.grad`` of a loss with respect to the model never sees the statistics, and an optimizer
# never updates them. In training the new statistics are computed by torch's own fused kernel
# on fresh copies of the old ones (so they equal torch.nn.BatchNorm's bit for bit); the state
# given is never modified. In evaluation the state is returned unchanged (the same tensors).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..tree import register_dataclass
from ._linear import Device
from ._module import STATIC, Module, float_dtype, positive_int, shape_error

__all__ = ["BatchNorm", "BatchNormState", "LayerNorm", "RMSNorm"]


def _normalized_shape(layer: str, shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if (
        not isinstance(shape, Sequence)
        or not shape
        or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in shape)
    ):
        raise ValueError(
            f"funcgrad.nn.{layer}: normalized_shape must be a positive int or a non-empty "
            f"sequence of positive ints, got {shape!r}."
        )
    return tuple(shape)


def _check_trailing(layer: str, x: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(x, torch.Tensor) or tuple(x.shape[x.dim() - len(shape) :]) != shape:
        dims = ", ".join(str(n) for n in shape)
        raise shape_error(layer, f"an input of shape (*, {dims}) (normalized_shape)", x)


def _eps(layer: str, eps: Any) -> float | None:
    if eps is None:
        return None
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"funcgrad.nn.{layer}: eps must be a non-negative number, got {eps!r}.")
    return float(eps)


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class LayerNorm(Module):
    """Normalises over the trailing ``normalized_shape`` dimensions, as ``torch.nn.LayerNorm``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the (biased) mean and variance
    over the last ``len(normalized_shape)`` dimensions. ``weight`` starts at ones and ``bias``
    at zeros (no key is needed); ``elementwise_affine=False`` drops both, ``bias=False`` the
    bias.

    >>> import torch
    >>> from funcgrad import nn
    >>> norm = nn.LayerNorm(4)
    >>> norm(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    tensor([[-1.3416, -0.4472,  0.4472,  1.3416]])
    """

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    normalized_shape: tuple[int, ...] = dataclasses.field(metadata=STATIC)
    eps: float = dataclasses.field(metadata=STATIC)

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        dtype: torch.dtype | None = None,
        device: Device = None,
    ) -> None:
        shape = _normalized_shape("LayerNorm", normalized_shape)
        dtype = float_dtype("LayerNorm", dtype)
        w = torch.ones(shape, dtype=dtype, device=device) if elementwise_affine else None
        b = torch.zeros(shape, dtype=dtype, device=device) if elementwise_affine and bias else None
        self._set(weight=w, bias=b, normalized_shape=shape, eps=_eps("LayerNorm", eps))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalises ``x`` of shape ``(*, *normalized_shape)``."""
        _check_trailing("LayerNorm", x, self.normalized_shape)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class RMSNorm(Module):
    """Root-mean-square normalisation over the trailing dimensions, as ``torch.nn.RMSNorm``.

    ``y = x / sqrt(mean(x**2) + eps) * weight``; ``eps=None`` uses the dtype's machine epsilon
    (PyTorch's default). ``weight`` starts at ones.

    >>> import torch
    >>> from funcgrad import nn
    >>> nn.RMSNorm(2)(torch.tensor([3.0, 4.0]))
    tensor([0.8485, 1.1314])
    """

    weight: torch.Tensor | None
    normalized_shape: tuple[int, ...] = dataclasses.field(metadata=STATIC)
    eps: float | None = dataclasses.field(metadata=STATIC)

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        *,
        dtype: torch.dtype | None = None,
        device: Device = None,
    ) -> None:
        shape = _normalized_shape("RMSNorm", normalized_shape)
        dtype = float_dtype("RMSNorm", dtype)
        w = torch.ones(shape, dtype=dtype, device=device) if elementwise_affine else None
        self._set(weight=w, normalized_shape=shape, eps=_eps("RMSNorm", eps))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalises ``x`` of shape ``(*, *normalized_shape)``."""
        _check_trailing("RMSNorm", x, self.normalized_shape)
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class BatchNormState(NamedTuple):
    """The running statistics of a :class:`BatchNorm`: a pytree passed in and returned.

    The fields are named after ``torch.nn.BatchNorm``'s buffers, so a state dict maps over.

    >>> from funcgrad import nn
    >>> nn.BatchNorm(2).init_state()
    BatchNormState(running_mean=tensor([0., 0.]), running_var=tensor([1., 1.]), num_batches_tracked=tensor(0))
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class BatchNorm(Module):
    """Batch normalisation over ``(N, C, *spatial)`` inputs (``torch.nn.BatchNorm1d/2d/3d``).

    The running statistics are explicit state (NOTE [BatchNorm's state] in the source): create
    it with :meth:`init_state` and call ``y, state = bn(x, state, train=...)``. In training the
    output is normalised with the batch's statistics (the mean and biased variance over every
    dimension but 1) and the new state folds them into the running ones:
    ``running = (1 - momentum) * running + momentum * batch`` with the *unbiased* batch
    variance; ``momentum=None`` takes the cumulative average instead. In evaluation the running
    statistics normalise and the state comes back unchanged.

    Args:
        num_features: the number of channels, ``C``.
        eps: added to the variance.
        momentum: the weight of each new batch in the running statistics, or ``None``.
        affine: whether the layer has ``weight`` (ones) and ``bias`` (zeros).
        dtype: the dtype of the parameters and the state (default:
            ``torch.get_default_dtype()``).
        device: the device of the parameters.

    >>> import torch
    >>> from funcgrad import nn
    >>> bn = nn.BatchNorm(2)
    >>> state = bn.init_state()
    >>> x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    >>> y, state = bn(x, state, train=True)
    >>> y
    tensor([[-1.0000, -1.0000],
            [ 1.0000,  1.0000]])
    >>> state.running_mean, state.num_batches_tracked
    (tensor([0.1000, 0.2000]), tensor(1))
    >>> bn(x, state, train=False)[0].shape
    torch.Size([2, 2])
    """

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    num_features: int = dataclasses.field(metadata=STATIC)
    eps: float = dataclasses.field(metadata=STATIC)
    momentum: float | None = dataclasses.field(metadata=STATIC)
    dtype: torch.dtype = dataclasses.field(metadata=STATIC)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        *,
        dtype: torch.dtype | None = None,
        device: Device = None,
    ) -> None:
        positive_int("BatchNorm", "num_features", num_features)
        if momentum is not None and (
            isinstance(momentum, bool)
            or not isinstance(momentum, (int, float))
            or not 0 <= momentum <= 1
        ):
            raise ValueError(
                f"funcgrad.nn.BatchNorm: momentum must be in [0, 1] or None, got {momentum!r}."
            )
        dtype = float_dtype("BatchNorm", dtype)
        w = torch.ones(num_features, dtype=dtype, device=device) if affine else None
        b = torch.zeros(num_features, dtype=dtype, device=device) if affine else None
        self._set(
            weight=w,
            bias=b,
            num_features=num_features,
            eps=_eps("BatchNorm", eps),
            momentum=None if momentum is None else float(momentum),
            dtype=dtype,
        )

    def init_state(
        self, *, dtype: torch.dtype | None = None, device: Device = None
    ) -> BatchNormState:
        """The initial running statistics: means 0, variances 1, no batches seen.

        ``dtype`` and ``device`` default to the weight's (with ``affine=False``: the layer's
        ``dtype`` and the CPU).
        """
        if self.weight is not None:
            dtype = self.weight.dtype if dtype is None else dtype
            device = self.weight.device if device is None else device
        dtype = float_dtype("BatchNorm", self.dtype if dtype is None else dtype)
        c = self.num_features
        return BatchNormState(
            torch.zeros(c, dtype=dtype, device=device),
            torch.ones(c, dtype=dtype, device=device),
            torch.zeros((), dtype=torch.long, device=device),
        )

    def __call__(
        self, x: torch.Tensor, state: BatchNormState, *, train: bool
    ) -> tuple[torch.Tensor, BatchNormState]:
        """Normalises ``x`` of shape ``(N, C, *spatial)``; returns ``(y, new_state)``."""
        c = self.num_features
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[1] != c:
            raise shape_error(
                "BatchNorm", f"an input of shape (N, C={c}, *spatial) (a batch is needed)", x
            )
        if not isinstance(state, BatchNormState):
            raise TypeError(
                "funcgrad.nn.BatchNorm: state must be the BatchNormState from bn.init_state() "
                f"(or returned by a previous call), got {type(state).__name__}."
            )
        if not train:
            mean, var = state.running_mean, state.running_var
            y = F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)
            return y, state
        count = state.num_batches_tracked + 1
        if self.momentum is not None:
            # torch's kernel updates fresh copies in place: the same numbers as torch.nn.
            mean, var = state.running_mean.clone(), state.running_var.clone()
            y = F.batch_norm(x, mean, var, self.weight, self.bias, True, self.momentum, self.eps)
            return y, BatchNormState(mean, var, count)
        # Cumulative average: momentum 1 writes the batch statistics into zeroed buffers.
        batch_mean = torch.zeros_like(state.running_mean)
        batch_var = torch.zeros_like(state.running_var)
        y = F.batch_norm(x, batch_mean, batch_var, self.weight, self.bias, True, 1.0, self.eps)
        factor = 1.0 / count.to(batch_mean.dtype)
        mean = factor * batch_mean + (1 - factor) * state.running_mean
        var = factor * batch_var + (1 - factor) * state.running_var
        return y, BatchNormState(mean, var, count)
