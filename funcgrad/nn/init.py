"""Parameter initialisers drawn from funcgrad PRNG keys.

Each initialiser is a pure function ``init(key, shape, *, ..., dtype=None, device=None)``
returning a new tensor: the same key gives the same tensor, on every device. The distributions
and arguments are those of :mod:`torch.nn.init` (without the trailing underscore: nothing is
filled in place), and fans follow PyTorch's weight layout ``(out_features, in_features,
*kernel_size)``: ``fan_in = shape[1] * prod(shape[2:])``, ``fan_out = shape[0] *
prod(shape[2:])``. ``dtype`` defaults to ``torch.get_default_dtype()``; ``device`` to the
key's device.

>>> import torch
>>> from funcgrad import nn, random
>>> w = nn.init.kaiming_uniform(random.key(0), (256, 128), nonlinearity="relu")
>>> w.shape, bool(w.abs().max() <= (6 / 128) ** 0.5)
(torch.Size([256, 128]), True)
>>> torch.equal(w, nn.init.kaiming_uniform(random.key(0), (256, 128), nonlinearity="relu"))
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .. import random

__all__ = [
    "calculate_gain",
    "kaiming_normal",
    "kaiming_uniform",
    "normal",
    "ones",
    "orthogonal",
    "truncated_normal",
    "uniform",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]

Shape = int | Sequence[int]

_LINEAR: tuple[str, ...] = ("linear", "conv1d", "conv2d", "conv3d", "sigmoid")
_LINEAR += ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


def _shape(name: str, shape: Shape) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, Sequence) or any(
        not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in shape
    ):
        raise TypeError(
            f"funcgrad.nn.init.{name}: shape must be an int or a sequence of non-negative ints, "
            f"got {shape!r}."
        )
    return tuple(shape)


def _finish(x: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    return x if device is None else x.to(device)


def _dtype(dtype: torch.dtype | None) -> torch.dtype:
    return torch.get_default_dtype() if dtype is None else dtype


def _fans(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2:
        raise ValueError(
            f"funcgrad.nn.init.{name}: fan_in and fan_out need a shape of at least 2 dimensions, "
            f"(out_features, in_features, *kernel_size), got {shape}."
        )
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity, as :func:`torch.nn.init.calculate_gain`.

    Args:
        nonlinearity: ``"linear"``, ``"conv1d"`` (and the other convolutions), ``"sigmoid"``,
            ``"tanh"``, ``"relu"``, ``"leaky_relu"`` or ``"selu"``.
        param: the negative slope of ``"leaky_relu"`` (default 0.01).

    >>> calculate_gain("relu")
    1.4142135623730951
    >>> calculate_gain("tanh")
    1.6666666666666667
    """
    if nonlinearity in _LINEAR:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(
                f"funcgrad.nn.init.calculate_gain: the negative slope must be a number, got "
                f"{slope!r}."
            )
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(
        f"funcgrad.nn.init.calculate_gain: unknown nonlinearity {nonlinearity!r}; expected one "
        f"of {[*_LINEAR, 'tanh', 'relu', 'leaky_relu', 'selu']}."
    )


def uniform(
    key: torch.Tensor,
    shape: Shape,
    *,
    minval: float = 0.0,
    maxval: float = 1.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Samples ``U(minval, maxval)``.

    >>> from funcgrad import nn, random
    >>> x = nn.init.uniform(random.key(0), (1000,), minval=-2.0, maxval=2.0)
    >>> bool(x.min() >= -2.0 and x.max() < 2.0)
    True
    """
    shape = _shape("uniform", shape)
    x = random.uniform(key, shape, dtype=_dtype(dtype), minval=minval, maxval=maxval)
    return _finish(x, device)


def normal(
    key: torch.Tensor,
    shape: Shape,
    *,
    mean: float = 0.0,
    std: float = 1.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Samples ``N(mean, std**2)``.

    >>> from funcgrad import nn, random
    >>> x = nn.init.normal(random.key(0), (10000,), mean=1.0, std=0.5)
    >>> round(x.mean().item(), 1), round(x.std().item(), 1)
    (1.0, 0.5)
    """
    shape = _shape("normal", shape)
    return _finish(mean + std * random.normal(key, shape, dtype=_dtype(dtype)), device)


def truncated_normal(
    key: torch.Tensor,
    shape: Shape,
    *,
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Samples ``N(mean, std**2)`` conditioned on ``[a, b]`` (as ``torch.nn.init.trunc_normal_``).

    ``a`` and ``b`` are absolute bounds, not multiples of ``std``.

    >>> from funcgrad import nn, random
    >>> x = nn.init.truncated_normal(random.key(0), (1000,), std=0.02, a=-0.04, b=0.04)
    >>> bool(x.abs().max() <= 0.04)
    True
    """
    shape = _shape("truncated_normal", shape)
    if not a < b:
        raise ValueError(
            f"funcgrad.nn.init.truncated_normal: the bounds must satisfy a < b, got a={a!r}, "
            f"b={b!r}."
        )
    lower, upper = (a - mean) / std, (b - mean) / std
    z = random.truncated_normal(key, lower, upper, shape, dtype=_dtype(dtype))
    return _finish((mean + std * z).clamp(a, b), device)


def xavier_uniform(
    key: torch.Tensor,
    shape: Shape,
    *,
    gain: float = 1.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Glorot/Xavier uniform: ``U(-bound, bound)``, ``bound = gain * sqrt(6 / (fan_in + fan_out))``.

    >>> from funcgrad import nn, random
    >>> w = nn.init.xavier_uniform(random.key(0), (30, 20))
    >>> bool(w.abs().max() <= (6 / 50) ** 0.5)
    True
    """
    fan_in, fan_out = _fans("xavier_uniform", _shape("xavier_uniform", shape))
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform(key, shape, minval=-bound, maxval=bound, dtype=dtype, device=device)


def xavier_normal(
    key: torch.Tensor,
    shape: Shape,
    *,
    gain: float = 1.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Glorot/Xavier normal: ``N(0, std**2)``, ``std = gain * sqrt(2 / (fan_in + fan_out))``.

    >>> from funcgrad import nn, random
    >>> w = nn.init.xavier_normal(random.key(0), (300, 200))
    >>> round(w.std().item() / (2 / 500) ** 0.5, 1)
    1.0
    """
    fan_in, fan_out = _fans("xavier_normal", _shape("xavier_normal", shape))
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return normal(key, shape, std=std, dtype=dtype, device=device)


def _kaiming_std(name: str, shape: Shape, a: float, mode: str, nonlinearity: str) -> float:
    fan_in, fan_out = _fans(name, _shape(name, shape))
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(
            f"funcgrad.nn.init.{name}: mode must be 'fan_in' or 'fan_out', got {mode!r}."
        )
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform(
    key: torch.Tensor,
    shape: Shape,
    *,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """He/Kaiming uniform: ``U(-bound, bound)``, ``bound = gain * sqrt(3 / fan)``.

    Args:
        key: the PRNG key.
        shape: the shape, ``(out_features, in_features, *kernel_size)``.
        a: the negative slope of the rectifier after this layer (``"leaky_relu"`` only).
        mode: ``"fan_in"`` (preserves the forward pass's variance) or ``"fan_out"`` (the
            backward pass's).
        nonlinearity: see :func:`calculate_gain`. ``torch.nn.Linear``'s default initialisation
            is ``a=math.sqrt(5)`` with ``"leaky_relu"``: ``bound = 1 / sqrt(fan_in)``.
        dtype: the dtype (default: ``torch.get_default_dtype()``).
        device: the device (default: the key's).

    >>> import math
    >>> from funcgrad import nn, random
    >>> w = nn.init.kaiming_uniform(random.key(0), (64, 16), a=math.sqrt(5))
    >>> bool(w.abs().max() <= 1 / 4)
    True
    """
    bound = math.sqrt(3.0) * _kaiming_std("kaiming_uniform", shape, a, mode, nonlinearity)
    return uniform(key, shape, minval=-bound, maxval=bound, dtype=dtype, device=device)


def kaiming_normal(
    key: torch.Tensor,
    shape: Shape,
    *,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """He/Kaiming normal: ``N(0, std**2)``, ``std = gain / sqrt(fan)`` (see
    :func:`kaiming_uniform` for the arguments).

    >>> from funcgrad import nn, random
    >>> w = nn.init.kaiming_normal(random.key(0), (400, 200), nonlinearity="relu")
    >>> round(w.std().item() / (2 / 200) ** 0.5, 1)
    1.0
    """
    std = _kaiming_std("kaiming_normal", shape, a, mode, nonlinearity)
    return normal(key, shape, std=std, dtype=dtype, device=device)


def orthogonal(
    key: torch.Tensor,
    shape: Shape,
    *,
    gain: float = 1.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A (semi-)orthogonal matrix scaled by ``gain``, as ``torch.nn.init.orthogonal_``.

    The shape is viewed as ``(shape[0], prod(shape[1:]))``; its rows (or columns, whichever
    are fewer) are orthonormal. Drawn as the Q factor of a Gaussian matrix, with the signs of
    R's diagonal folded in so that the distribution is uniform (Haar).

    >>> import torch
    >>> from funcgrad import nn, random
    >>> q = nn.init.orthogonal(random.key(0), (3, 5), dtype=torch.float64)
    >>> torch.allclose(q @ q.T, torch.eye(3, dtype=torch.float64))
    True
    """
    shape = _shape("orthogonal", shape)
    if len(shape) < 2:
        raise ValueError(
            f"funcgrad.nn.init.orthogonal: needs a shape of at least 2 dimensions, got {shape}."
        )
    rows, cols = shape[0], math.prod(shape[1:])
    if rows * cols == 0:
        return zeros(key, shape, dtype=dtype, device=device)
    dtype = _dtype(dtype)
    flat = random.normal(key, (max(rows, cols), min(rows, cols)), dtype=dtype)
    q, r = torch.linalg.qr(flat)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    if rows < cols:
        q = q.transpose(-2, -1)
    return _finish(gain * q.reshape(shape), device)


def zeros(
    key: torch.Tensor | None,
    shape: Shape,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Zeros; ``key`` is not used (it keeps the signature of the other initialisers).

    >>> from funcgrad import nn
    >>> nn.init.zeros(None, (2,))
    tensor([0., 0.])
    """
    shape = _shape("zeros", shape)
    if device is None and key is not None:
        device = key.device
    return torch.zeros(shape, dtype=_dtype(dtype), device=device)


def ones(
    key: torch.Tensor | None,
    shape: Shape,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Ones; ``key`` is not used (it keeps the signature of the other initialisers).

    >>> from funcgrad import nn
    >>> nn.init.ones(None, 2)
    tensor([1., 1.])
    """
    shape = _shape("ones", shape)
    if device is None and key is not None:
        device = key.device
    return torch.ones(shape, dtype=_dtype(dtype), device=device)
