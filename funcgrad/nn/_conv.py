"""Convolutions and pooling: ``Conv1d``, ``Conv2d``, ``MaxPool2d``, ``AvgPool2d``,
``AdaptiveAvgPool2d``. Channels come first (``(N, C, *spatial)``), as in PyTorch."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..tree import register_dataclass
from ._linear import Device, linear_default
from ._module import STATIC, Module, check_key, float_dtype, positive_int, shape_error, tuple_of

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "Conv1d", "Conv2d", "MaxPool2d"]


def _spatial_input(layer: str, x: Any, n: int, channels: int | None) -> None:
    """``x`` must be ``(N, C, *spatial)`` or ``(C, *spatial)`` with ``n`` spatial dimensions."""
    if (
        not isinstance(x, torch.Tensor)
        or x.dim() not in (n + 1, n + 2)
        or (channels is not None and x.shape[-n - 1] != channels)
    ):
        dims = {1: "L", 2: "H, W"}[n]
        c = "C" if channels is None else f"C_in={channels}"
        raise shape_error(layer, f"an input of shape (N, {c}, {dims}) or ({c}, {dims})", x)


@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class _ConvNd(Module):
    weight: torch.Tensor
    bias: torch.Tensor | None
    in_channels: int = dataclasses.field(metadata=STATIC)
    out_channels: int = dataclasses.field(metadata=STATIC)
    kernel_size: tuple[int, ...] = dataclasses.field(metadata=STATIC)
    stride: tuple[int, ...] = dataclasses.field(metadata=STATIC)
    padding: tuple[int, ...] | str = dataclasses.field(metadata=STATIC)
    dilation: tuple[int, ...] = dataclasses.field(metadata=STATIC)
    groups: int = dataclasses.field(metadata=STATIC)

    _n: ClassVar[int]
    _conv: ClassVar[Callable[..., torch.Tensor]]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        *,
        bias: bool = True,
        key: torch.Tensor,
        dtype: torch.dtype | None = None,
        device: Device = None,
    ) -> None:
        name, n = type(self).__name__, self._n
        positive_int(name, "in_channels", in_channels)
        positive_int(name, "out_channels", out_channels)
        positive_int(name, "groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"funcgrad.nn.{name}: in_channels ({in_channels}) and out_channels "
                f"({out_channels}) must both be divisible by groups ({groups})."
            )
        kernel = tuple_of(name, "kernel_size", kernel_size, n)
        strides = tuple_of(name, "stride", stride, n)
        dilations = tuple_of(name, "dilation", dilation, n)
        pad: tuple[int, ...] | str
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    f"funcgrad.nn.{name}: padding must be an int, a tuple of {n} ints, 'same' or "
                    f"'valid', got {padding!r}."
                )
            if padding == "same" and any(s != 1 for s in strides):
                raise ValueError(
                    f"funcgrad.nn.{name}: padding='same' needs stride 1 (the output keeps the "
                    f"input's size), got stride={strides}."
                )
            pad = padding
        else:
            pad = tuple_of(name, "padding", padding, n, minimum=0)
        dtype = float_dtype(name, dtype)
        shape = (out_channels, in_channels // groups, *kernel)
        fan_in = (in_channels // groups) * math.prod(kernel)
        w, b = linear_default(check_key(name, key), shape, fan_in, bias, dtype, device)
        self._set(
            weight=w,
            bias=b,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernel,
            stride=strides,
            padding=pad,
            dilation=dilations,
            groups=groups,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Convolves ``x`` of shape ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``."""
        _spatial_input(type(self).__name__, x, self._n, self.in_channels)
        conv = type(self)._conv
        return conv(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


_CONV_DOC = """A {n}-d convolution (a cross-correlation), as ``torch.nn.Conv{n}d``.

    Args:
        in_channels: the input's channels.
        out_channels: the output's channels.
        kernel_size: an int or a tuple of {n} ints.
        stride: an int or a tuple of {n} ints.
        padding: zero padding, an int or a tuple of {n} ints on each side, or ``"valid"`` (none)
            or ``"same"`` (the output keeps the input's size; stride 1 only).
        dilation: the spacing between kernel elements.
        groups: splits the channels into this many independent groups.
        bias: whether the layer has a bias.
        key: the PRNG key: ``weight`` of shape ``(out_channels, in_channels // groups,
            *kernel_size)`` and ``bias`` of shape ``(out_channels,)`` are drawn from
            ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, ``fan_in = in_channels // groups *
            prod(kernel_size)``, as in PyTorch.
        dtype: the parameters' dtype (default: ``torch.get_default_dtype()``).
        device: the parameters' device (default: the key's).

    Called on ``(N, C_in, {dims})`` or unbatched ``(C_in, {dims})``.
"""


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class Conv1d(_ConvNd):
    __doc__ = (
        _CONV_DOC.format(n=1, dims="L")
        + """
    >>> import torch
    >>> from funcgrad import nn, random
    >>> conv = nn.Conv1d(2, 4, 3, padding="same", key=random.key(0))
    >>> conv(torch.ones(8, 2, 10)).shape
    torch.Size([8, 4, 10])
    """
    )
    _n = 1
    _conv = F.conv1d


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class Conv2d(_ConvNd):
    __doc__ = (
        _CONV_DOC.format(n=2, dims="H, W")
        + """
    >>> import torch
    >>> from funcgrad import nn, random
    >>> conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, key=random.key(0))
    >>> conv
    Conv2d(in_channels=3, out_channels=8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=1, weight=f32[8,3,3,3], bias=f32[8])
    >>> conv(torch.ones(4, 3, 32, 32)).shape
    torch.Size([4, 8, 16, 16])
    """
    )
    _n = 2
    _conv = F.conv2d


# --------------------------------------------------------------------------------------------
# Pooling (no parameters: every field is static)
# --------------------------------------------------------------------------------------------


def _pool_args(
    name: str, kernel_size: Any, stride: Any, padding: Any
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    kernel = tuple_of(name, "kernel_size", kernel_size, 2)
    strides = kernel if stride is None else tuple_of(name, "stride", stride, 2)
    pad = tuple_of(name, "padding", padding, 2, minimum=0)
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        raise ValueError(
            f"funcgrad.nn.{name}: padding must be at most half the kernel size, got "
            f"padding={pad} for kernel_size={kernel}."
        )
    return kernel, strides, pad  # type: ignore[return-value]


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class MaxPool2d(Module):
    """The maximum over ``kernel_size`` windows, as ``torch.nn.MaxPool2d``.

    ``stride`` defaults to ``kernel_size``; ``padding`` pads with ``-inf``. Called on
    ``(N, C, H, W)`` or ``(C, H, W)``.

    >>> import torch
    >>> from funcgrad import nn
    >>> nn.MaxPool2d(2)(torch.arange(16.0).reshape(1, 4, 4))
    tensor([[[ 5.,  7.],
             [13., 15.]]])
    """

    kernel_size: tuple[int, int] = dataclasses.field(metadata=STATIC)
    stride: tuple[int, int] = dataclasses.field(metadata=STATIC)
    padding: tuple[int, int] = dataclasses.field(metadata=STATIC)
    dilation: tuple[int, int] = dataclasses.field(metadata=STATIC)
    ceil_mode: bool = dataclasses.field(metadata=STATIC)

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        ceil_mode: bool = False,
    ) -> None:
        kernel, strides, pad = _pool_args("MaxPool2d", kernel_size, stride, padding)
        dil = tuple_of("MaxPool2d", "dilation", dilation, 2)
        self._set(
            kernel_size=kernel, stride=strides, padding=pad, dilation=dil, ceil_mode=ceil_mode
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Pools ``x``."""
        _spatial_input("MaxPool2d", x, 2, None)
        return F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class AvgPool2d(Module):
    """The mean over ``kernel_size`` windows, as ``torch.nn.AvgPool2d``.

    ``stride`` defaults to ``kernel_size``; ``count_include_pad`` says whether the zero
    padding counts in the mean. Called on ``(N, C, H, W)`` or ``(C, H, W)``.

    >>> import torch
    >>> from funcgrad import nn
    >>> nn.AvgPool2d(2)(torch.arange(16.0).reshape(1, 4, 4))
    tensor([[[ 2.5000,  4.5000],
             [10.5000, 12.5000]]])
    """

    kernel_size: tuple[int, int] = dataclasses.field(metadata=STATIC)
    stride: tuple[int, int] = dataclasses.field(metadata=STATIC)
    padding: tuple[int, int] = dataclasses.field(metadata=STATIC)
    ceil_mode: bool = dataclasses.field(metadata=STATIC)
    count_include_pad: bool = dataclasses.field(metadata=STATIC)

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> None:
        kernel, strides, pad = _pool_args("AvgPool2d", kernel_size, stride, padding)
        self._set(
            kernel_size=kernel,
            stride=strides,
            padding=pad,
            ceil_mode=ceil_mode,
            count_include_pad=count_include_pad,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Pools ``x``."""
        _spatial_input("AvgPool2d", x, 2, None)
        return F.avg_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad
        )


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class AdaptiveAvgPool2d(Module):
    """Averages over windows chosen so that the output is ``output_size``, as
    ``torch.nn.AdaptiveAvgPool2d``. ``AdaptiveAvgPool2d(1)`` is global average pooling.

    ``output_size`` is an int or an ``(H, W)`` pair; ``None`` in the pair keeps that size.

    >>> import torch
    >>> from funcgrad import nn
    >>> nn.AdaptiveAvgPool2d(1)(torch.ones(8, 16, 7, 7)).shape
    torch.Size([8, 16, 1, 1])
    """

    output_size: tuple[int | None, int | None] = dataclasses.field(metadata=STATIC)

    def __init__(self, output_size: int | tuple[int | None, int | None]) -> None:
        if isinstance(output_size, int) and not isinstance(output_size, bool):
            size: tuple[Any, ...] = (output_size, output_size)
        else:
            size = tuple(output_size) if isinstance(output_size, (tuple, list)) else ()
        if len(size) != 2 or any(
            s is not None and (not isinstance(s, int) or isinstance(s, bool) or s < 1) for s in size
        ):
            raise ValueError(
                f"funcgrad.nn.AdaptiveAvgPool2d: output_size must be a positive int or a pair "
                f"of positive ints or None, got {output_size!r}."
            )
        self._set(output_size=size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Pools ``x``."""
        _spatial_input("AdaptiveAvgPool2d", x, 2, None)
        return F.adaptive_avg_pool2d(x, self.output_size)
