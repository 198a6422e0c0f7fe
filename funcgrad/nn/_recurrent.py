"""Recurrent cells: ``GRUCell`` and ``LSTMCell`` (one time step; loop or scan over time)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from .. import random
from ..tree import register_dataclass
from . import init
from ._linear import Device
from ._module import STATIC, Module, check_key, float_dtype, positive_int, shape_error

__all__ = ["GRUCell", "LSTMCell"]


def _cell_weights(
    layer: str,
    gates: int,
    input_size: int,
    hidden_size: int,
    bias: bool,
    key: Any,
    dtype: torch.dtype | None,
    device: Device,
) -> dict[str, torch.Tensor | None]:
    """torch's RNN cell initialisation: every tensor from ``U(-1/sqrt(hidden), 1/sqrt(hidden))``."""
    positive_int(layer, "input_size", input_size)
    positive_int(layer, "hidden_size", hidden_size)
    dtype = float_dtype(layer, dtype)
    k = random.split(check_key(layer, key), 4)
    bound = 1 / math.sqrt(hidden_size)
    shapes = {
        "weight_ih": (gates * hidden_size, input_size),
        "weight_hh": (gates * hidden_size, hidden_size),
        "bias_ih": (gates * hidden_size,),
        "bias_hh": (gates * hidden_size,),
    }
    out: dict[str, torch.Tensor | None] = {}
    for i, (name, shape) in enumerate(shapes.items()):
        if name.startswith("bias") and not bias:
            out[name] = None
        else:
            out[name] = init.uniform(
                k[i], shape, minval=-bound, maxval=bound, dtype=dtype, device=device
            )
    return out


def _check_step(
    layer: str, x: Any, h: Any, input_size: int, hidden_size: int, arg: str = "h"
) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() not in (1, 2) or x.shape[-1] != input_size:
        raise shape_error(
            layer, f"an input of shape (N, input_size={input_size}) or ({input_size},)", x
        )
    expected = (*x.shape[:-1], hidden_size)
    if h is not None and (not isinstance(h, torch.Tensor) or tuple(h.shape) != expected):
        got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(
            f"funcgrad.nn.{layer}: expected {arg} of shape {expected} for an input of shape "
            f"{tuple(x.shape)}, got {got}."
        )


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class GRUCell(Module):
    """One step of a gated recurrent unit, as ``torch.nn.GRUCell``.

    ``r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)``, ``z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``; the
    ``weight_ih``/``weight_hh`` rows stack the ``r``, ``z``, ``n`` blocks, as in PyTorch.

    Args:
        input_size: the size of ``x``.
        hidden_size: the size of ``h``.
        bias: whether the cell has ``bias_ih`` and ``bias_hh``.
        key: the PRNG key: every tensor is drawn from ``U(-1/sqrt(hidden_size),
            1/sqrt(hidden_size))``, as in PyTorch.
        dtype: the parameters' dtype (default: ``torch.get_default_dtype()``).
        device: the parameters' device (default: the key's).

    Called as ``cell(x, h=None)`` with ``x`` of shape ``(N, input_size)`` or ``(input_size,)``
    and ``h`` of shape ``(N, hidden_size)`` or ``(hidden_size,)`` (``None``: zeros); returns
    the new ``h``.

    >>> import torch
    >>> from funcgrad import nn, random
    >>> cell = nn.GRUCell(3, 5, key=random.key(0))
    >>> h = None
    >>> for x in torch.ones(4, 2, 3):  # four time steps of a batch of 2
    ...     h = cell(x, h)
    >>> h.shape
    torch.Size([2, 5])
    """

    weight_ih: torch.Tensor
    weight_hh: torch.Tensor
    bias_ih: torch.Tensor | None
    bias_hh: torch.Tensor | None
    input_size: int = dataclasses.field(metadata=STATIC)
    hidden_size: int = dataclasses.field(metadata=STATIC)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        key: torch.Tensor,
        dtype: torch.dtype | None = None,
        device: Device = None,
    ) -> None:
        w = _cell_weights("GRUCell", 3, input_size, hidden_size, bias, key, dtype, device)
        self._set(**w, input_size=input_size, hidden_size=hidden_size)

    def __call__(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """One step: the new hidden state."""
        _check_step("GRUCell", x, h, self.input_size, self.hidden_size)
        if h is None:
            h = x.new_zeros((*x.shape[:-1], self.hidden_size))
        i_r, i_z, i_n = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, -1)
        h_r, h_z, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (h - n)


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class LSTMCell(Module):
    """One step of a long short-term memory cell, as ``torch.nn.LSTMCell``.

    ``i, f, g, o`` are ``sigmoid, sigmoid, tanh, sigmoid`` of ``W_ih x + b_ih + W_hh h + b_hh``
    (the weights' rows stack the four blocks in that order, as in PyTorch),
    ``c' = f * c + i * g`` and ``h' = o * tanh(c')``.

    Args:
        input_size: the size of ``x``.
        hidden_size: the size of ``h`` and ``c``.
        bias: whether the cell has ``bias_ih`` and ``bias_hh``.
        key: the PRNG key: every tensor is drawn from ``U(-1/sqrt(hidden_size),
            1/sqrt(hidden_size))``, as in PyTorch.
        dtype: the parameters' dtype (default: ``torch.get_default_dtype()``).
        device: the parameters' device (default: the key's).

    Called as ``cell(x, state=None)`` with ``state = (h, c)`` (``None``: zeros); returns the
    new ``(h, c)``.

    >>> import torch
    >>> from funcgrad import nn, random
    >>> cell = nn.LSTMCell(3, 5, key=random.key(0))
    >>> h, c = cell(torch.ones(2, 3))
    >>> h, c = cell(torch.ones(2, 3), (h, c))
    >>> h.shape, c.shape
    (torch.Size([2, 5]), torch.Size([2, 5]))
    """

    weight_ih: torch.Tensor
    weight_hh: torch.Tensor
    bias_ih: torch.Tensor | None
    bias_hh: torch.Tensor | None
    input_size: int = dataclasses.field(metadata=STATIC)
    hidden_size: int = dataclasses.field(metadata=STATIC)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        key: torch.Tensor,
        dtype: torch.dtype | None = None,
        device: Device = None,
    ) -> None:
        w = _cell_weights("LSTMCell", 4, input_size, hidden_size, bias, key, dtype, device)
        self._set(**w, input_size=input_size, hidden_size=hidden_size)

    def __call__(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: the new ``(h, c)``."""
        if state is None:
            _check_step("LSTMCell", x, None, self.input_size, self.hidden_size)
            h = c = x.new_zeros((*x.shape[:-1], self.hidden_size))
        elif not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(
                "funcgrad.nn.LSTMCell: state must be None or a pair (h, c), got "
                f"{type(state).__name__}."
            )
        else:
            h, c = state
            _check_step("LSTMCell", x, h, self.input_size, self.hidden_size)
            _check_step("LSTMCell", x, c, self.input_size, self.hidden_size, "c")
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(
            h, self.weight_hh, self.bias_hh
        )
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
