"""Activations, losses and metrics: pure functions of tensors, equal to torch.nn.functional.

Losses follow PyTorch's layout: class scores along dimension 1 of ``(N, C, d1, ...)`` inputs
(dimension 0 of an unbatched ``(C,)`` input), and a ``reduction`` of ``"mean"``, ``"sum"`` or
``"none"``. The checks on shapes and arguments cost a few comparisons per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._module import shape_error

__all__ = [
    "accuracy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "gelu",
    "l2_loss",
    "log_softmax",
    "mse",
    "relu",
    "silu",
    "softmax",
]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"funcgrad.nn.{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}."
        )


def _check_tensor(name: str, arg: str, x: object, *, floating: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"funcgrad.nn.{name}: {arg} must be a tensor, got {type(x).__name__}.")
    if floating and not x.is_floating_point():
        raise TypeError(
            f"funcgrad.nn.{name}: {arg} must be a floating-point tensor, got {x.dtype}."
        )
    return x


def _class_dim(logits: torch.Tensor) -> int:
    return 0 if logits.dim() == 1 else 1


def _label_shape(logits: torch.Tensor) -> tuple[int, ...]:
    """The shape of integer labels for ``logits``: its shape without the class dimension."""
    shape = tuple(logits.shape)
    return () if len(shape) == 1 else shape[:1] + shape[2:]


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------


def relu(x: torch.Tensor) -> torch.Tensor:
    """The rectified linear unit, ``max(x, 0)``.

    >>> import torch
    >>> relu(torch.tensor([-1.0, 2.0]))
    tensor([0., 2.])
    """
    return torch.relu(x)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """The Gaussian error linear unit, ``x * Phi(x)``, as :func:`torch.nn.functional.gelu`.

    Args:
        x: the input.
        approximate: ``"none"`` (exact, with the error function; the default, unlike
            ``jax.nn.gelu``) or ``"tanh"`` (the tanh approximation).

    >>> import torch
    >>> gelu(torch.tensor([0.0, 1.0]))
    tensor([0.0000, 0.8413])
    >>> gelu(torch.tensor([1.0]), approximate="tanh")
    tensor([0.8412])
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(
            f"funcgrad.nn.gelu: approximate must be 'none' or 'tanh', got {approximate!r}."
        )
    return F.gelu(x, approximate=approximate)


def silu(x: torch.Tensor) -> torch.Tensor:
    """The sigmoid linear unit (swish), ``x * sigmoid(x)``.

    >>> import torch
    >>> silu(torch.tensor([0.0, 1.0]))
    tensor([0.0000, 0.7311])
    """
    return F.silu(x)


def softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """``exp(x) / sum(exp(x))`` along ``axis``, computed stably.

    >>> import torch
    >>> softmax(torch.tensor([0.0, 0.0, 0.0, 0.0]))
    tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """
    return torch.softmax(x, axis)


def log_softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """``x - logsumexp(x)`` along ``axis``: the log of :func:`softmax`, computed stably.

    >>> import torch
    >>> log_softmax(torch.tensor([0.0, 0.0])).exp()
    tensor([0.5000, 0.5000])
    """
    return torch.log_softmax(x, axis)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The cross-entropy between ``softmax(logits)`` and the labels.

    Equal to :func:`torch.nn.functional.cross_entropy`, whose conventions it keeps.

    Args:
        logits: unnormalised scores, ``(N, C)``, ``(N, C, d1, ...)`` or unbatched ``(C,)``.
        labels: class indices (an integer tensor of the shape of ``logits`` without the class
            dimension), or class probabilities (a floating tensor of the shape of ``logits``).
        weight: optional per-class weights, shape ``(C,)``.
        ignore_index: integer labels equal to it add nothing, and ``"mean"`` does not count
            them.
        reduction: ``"mean"`` (weighted by ``weight`` with integer labels), ``"sum"`` or
            ``"none"``.
        label_smoothing: in ``[0, 1]``; mixes the target with the uniform distribution.

    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    >>> cross_entropy(logits, torch.tensor([0, 0]))
    tensor(1.1269)
    >>> cross_entropy(logits, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    tensor(1.1269)
    >>> cross_entropy(logits, torch.tensor([0, -100]))
    tensor(0.1269)
    """
    name = "cross_entropy"
    _check_tensor(name, "logits", logits)
    _check_tensor(name, "labels", labels, floating=False)
    _check_reduction(name, reduction)
    if logits.dim() == 0:
        raise shape_error(name, "logits of shape (C,), (N, C) or (N, C, d1, ...)", logits)
    if labels.is_floating_point():
        if labels.shape != logits.shape:
            raise ValueError(
                f"funcgrad.nn.{name}: probability labels must have the shape of the logits, "
                f"{tuple(logits.shape)}, got {tuple(labels.shape)}."
            )
    elif labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(
            f"funcgrad.nn.{name}: labels must be integer class indices or floating-point "
            f"probabilities, got {labels.dtype}."
        )
    elif tuple(labels.shape) != _label_shape(logits):
        raise ValueError(
            f"funcgrad.nn.{name}: integer labels must have the shape of the logits without the "
            f"class dimension, {_label_shape(logits)} for logits of shape "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}."
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(
            f"funcgrad.nn.{name}: label_smoothing must be in [0, 1], got {label_smoothing!r}."
        )
    return F.cross_entropy(
        logits,
        labels,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


def _check_same_shape(name: str, a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"funcgrad.nn.{name}: {what} must have the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}; broadcasting is not applied (reshape one explicitly)."
        )


def mse(
    predictions: torch.Tensor, targets: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """The mean squared error ``(predictions - targets) ** 2`` (as ``F.mse_loss``).

    >>> import torch
    >>> mse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))
    tensor(5.)
    >>> mse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]), reduction="none")
    tensor([1., 9.])
    """
    _check_tensor("mse", "predictions", predictions)
    _check_tensor("mse", "targets", targets)
    _check_reduction("mse", reduction)
    _check_same_shape("mse", predictions, targets, "predictions and targets")
    return F.mse_loss(predictions, targets, reduction=reduction)


def binary_cross_entropy_with_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The binary cross-entropy of ``sigmoid(logits)`` against labels in ``[0, 1]``.

    Computed stably from the logits, as ``F.binary_cross_entropy_with_logits``.

    Args:
        logits: any shape.
        labels: floating-point targets in ``[0, 1]``, the shape of ``logits``.
        weight: optional weights broadcast against the elementwise losses.
        pos_weight: optional weight of the positive term, broadcast along the last dimension.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    >>> import torch
    >>> binary_cross_entropy_with_logits(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]))
    tensor(0.6931)
    """
    name = "binary_cross_entropy_with_logits"
    _check_tensor(name, "logits", logits)
    _check_tensor(name, "labels", labels)
    _check_reduction(name, reduction)
    _check_same_shape(name, logits, labels, "logits and labels")
    return F.binary_cross_entropy_with_logits(
        logits, labels, weight=weight, pos_weight=pos_weight, reduction=reduction
    )


def l2_loss(predictions: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise ``0.5 * (predictions - targets) ** 2``, unreduced (as ``optax.l2_loss``).

    With ``targets=None`` it is ``0.5 * predictions ** 2``. For an L2 penalty on a whole
    parameter tree use ``0.5 * funcgrad.tree.norm(params, squared=True)``.

    >>> import torch
    >>> l2_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]))
    tensor([0.5000, 2.0000])
    """
    _check_tensor("l2_loss", "predictions", predictions)
    if targets is None:
        return 0.5 * predictions.square()
    _check_tensor("l2_loss", "targets", targets)
    _check_same_shape("l2_loss", predictions, targets, "predictions and targets")
    return 0.5 * (predictions - targets).square()


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The fraction of examples whose highest score is the labelled class, as a 0-d tensor.

    Takes the layout of :func:`cross_entropy`: integer labels, or probabilities (then the
    label is their argmax). Ties go to the first highest score, as in :func:`torch.argmax`.
    Not differentiable (it is a metric).

    >>> import torch
    >>> accuracy(torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]]), torch.tensor([0, 0, 0]))
    tensor(0.6667)
    """
    _check_tensor("accuracy", "logits", logits)
    _check_tensor("accuracy", "labels", labels, floating=False)
    if logits.dim() == 0:
        raise shape_error("accuracy", "logits of shape (C,), (N, C) or (N, C, d1, ...)", logits)
    dim = _class_dim(logits)
    if labels.is_floating_point():
        _check_same_shape("accuracy", logits, labels, "logits and probability labels")
        labels = labels.argmax(dim)
    elif tuple(labels.shape) != _label_shape(logits):
        raise ValueError(
            f"funcgrad.nn.accuracy: integer labels must have the shape of the logits without "
            f"the class dimension, {_label_shape(logits)}, got {tuple(labels.shape)}."
        )
    dtype = logits.dtype
    return (logits.argmax(dim) == labels).to(dtype).mean()
