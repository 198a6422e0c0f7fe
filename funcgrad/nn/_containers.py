"""Layers made of layers: ``Sequential`` (with ``Lambda`` for plain functions) and ``MLP``.

# NOTE [how Sequential calls its layers]
# Sequential threads the input through its layers and, for the few layers that need more than
# the input, passes what they need: a BatchNorm (or a Sequential holding one) gets its entry of
# the ``state`` tuple and ``train``, and returns its new state; a Dropout or a
# MultiheadAttention gets ``train`` and its own key, split from the ``key`` given to Sequential
# (``random.split(key, len(layers))``, entry ``i`` for layer ``i``). Every other layer is called
# as ``layer(x)``. ``state`` is a tuple with one entry per layer (``None`` for stateless ones),
# as ``init_state()`` builds it, so it is a pytree that checkpoints and vmaps like parameters.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

import torch

from .. import random
from ..tree import register_dataclass, structure
from ._attention import MultiheadAttention
from ._functional import relu
from ._linear import Device, Dropout, Linear
from ._module import STATIC, Module, check_key, positive_int
from ._norm import BatchNorm

__all__ = ["Lambda", "MLP", "Sequential"]  # noqa: RUF022 (plain sorted order)


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class Lambda(Module):
    """A parameter-free function as a layer; the function is static (part of the structure).

    :class:`Sequential` wraps plain functions in it by itself.

    >>> import torch
    >>> from funcgrad import nn
    >>> nn.Lambda(torch.tanh)
    Lambda(fn=tanh)
    >>> nn.Lambda(torch.tanh)(torch.zeros(2))
    tensor([0., 0.])
    """

    fn: Callable[[torch.Tensor], torch.Tensor] = dataclasses.field(metadata=STATIC)

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if not callable(fn):
            raise TypeError(f"funcgrad.nn.Lambda: expected a callable, got {type(fn).__name__}.")
        self._set(fn=fn)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Returns ``fn(x)``."""
        return self.fn(x)


def _is_stateful(layer: Any) -> bool:
    return isinstance(layer, BatchNorm) or (isinstance(layer, Sequential) and layer.stateful)


def _as_layer(i: int, layer: Any) -> Any:
    if isinstance(layer, torch.nn.Module):
        raise TypeError(
            f"funcgrad.nn.Sequential: layer {i} is a torch.nn.Module ({type(layer).__name__}); "
            "use the funcgrad.nn layer of the same name, or funcgrad.nn.functionalize for a "
            "whole torch module."
        )
    if not callable(layer):
        raise TypeError(
            f"funcgrad.nn.Sequential: layer {i} is not callable: {type(layer).__name__} "
            f"({layer!r})."
        )
    # A function (a leaf of the pytree) would otherwise be a leaf of the parameters.
    return Lambda(layer) if structure(layer).is_leaf() else layer


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class Sequential(Module):
    """Layers applied one after the other, as ``torch.nn.Sequential``.

    Layers are funcgrad.nn layers, your own pytree layers, or plain functions (wrapped in
    :class:`Lambda`). Called as ``seq(x)``, or, when a layer needs more than the input (NOTE
    [how Sequential calls its layers] in the source): ``seq(x, train=..., key=...)`` for
    Dropout, and ``y, state = seq(x, state, train=...)`` with ``state = seq.init_state()``
    for BatchNorm. Indexing gives a layer, slicing a Sequential.

    >>> import torch
    >>> from funcgrad import nn, random
    >>> k1, k2 = random.split(random.key(0))
    >>> seq = nn.Sequential(nn.Linear(4, 8, key=k1), nn.relu, nn.Dropout(0.1), nn.Linear(8, 2, key=k2))
    >>> seq(torch.ones(3, 4), train=False).shape
    torch.Size([3, 2])
    >>> seq(torch.ones(3, 4), train=True, key=random.key(1)).shape
    torch.Size([3, 2])
    >>> bn_seq = nn.Sequential(nn.Linear(4, 8, key=k1), nn.BatchNorm(8), nn.relu)
    >>> state = bn_seq.init_state()
    >>> y, state = bn_seq(torch.randn(16, 4), state, train=True)
    >>> state[1].num_batches_tracked
    tensor(1)
    """

    layers: tuple[Any, ...]

    def __init__(self, *layers: Any) -> None:
        self._set(layers=tuple(_as_layer(i, layer) for i, layer in enumerate(layers)))

    @property
    def stateful(self) -> bool:
        """Whether a layer keeps running state (then calls take and return ``state``)."""
        return any(_is_stateful(layer) for layer in self.layers)

    def init_state(self) -> tuple[Any, ...]:
        """The initial state: one entry per layer, ``None`` for layers without state."""
        return tuple(layer.init_state() if _is_stateful(layer) else None for layer in self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __bool__(self) -> bool:
        # A model is always true, also empty; and truth never looks at ``layers``: older dynamo
        # (torch 2.11) tests the truth of a Sequential while unflattening it, before ``layers``
        # is set, which made ``__len__`` raise AttributeError inside every jitted step.
        return True

    def __iter__(self) -> Iterator[Any]:
        return iter(self.layers)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> Sequential: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    def __call__(
        self,
        x: Any,
        state: tuple[Any, ...] | None = None,
        *,
        train: bool | None = None,
        key: torch.Tensor | None = None,
    ) -> Any:
        """Applies the layers; returns ``y``, or ``(y, new_state)`` when ``state`` is given."""
        if state is not None and (not isinstance(state, tuple) or len(state) != len(self.layers)):
            raise ValueError(
                f"funcgrad.nn.Sequential: state must be a tuple with one entry per layer "
                f"({len(self.layers)}), as init_state() returns it, got {type(state).__name__}"
                + (f" of length {len(state)}" if isinstance(state, tuple) else "")
                + "."
            )
        keys = None if key is None else random.split(check_key("Sequential", key), len(self.layers))
        new_state: list[Any] = []
        for i, layer in enumerate(self.layers):
            k = None if keys is None else keys[i]
            s = None
            if _is_stateful(layer):
                if state is None:
                    raise ValueError(
                        f"funcgrad.nn.Sequential: layer {i} ({type(layer).__name__}) keeps running "
                        "statistics; call seq(x, state, train=...) with state = seq.init_state() "
                        "(and keep the state it returns)."
                    )
                _need_train(i, layer, train)
                if isinstance(layer, Sequential):
                    x, s = layer(x, state[i], train=train, key=k)
                else:
                    x, s = layer(x, state[i], train=bool(train))
            elif isinstance(layer, Sequential):
                x = layer(x, train=train, key=k)
            elif isinstance(layer, Dropout) or (
                isinstance(layer, MultiheadAttention) and layer.dropout > 0
            ):
                _need_train(i, layer, train)
                x = layer(x, train=bool(train), key=k)
            else:
                x = layer(x)
            new_state.append(s)
        return x if state is None else (x, tuple(new_state))


def _need_train(i: int, layer: Any, train: bool | None) -> None:
    if train is None:
        raise ValueError(
            f"funcgrad.nn.Sequential: layer {i} ({type(layer).__name__}) behaves differently in "
            "training and evaluation; pass train=True or train=False."
        )


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class MLP(Module):
    """A multi-layer perceptron: :class:`Linear` layers with an activation between them.

    ``MLP(in_features, [h1, h2], out_features)`` is ``Linear(in, h1)``, activation,
    ``Linear(h1, h2)``, activation, ``Linear(h2, out)`` (no activation after the last layer),
    each initialised as ``torch.nn.Linear`` from its own key split from ``key``.

    Args:
        in_features: the input's last dimension.
        hidden_features: the widths of the hidden layers (possibly empty).
        out_features: the output's last dimension.
        activation: a function applied after each hidden layer (default :func:`relu`).
        bias: whether the layers have biases.
        key: the PRNG key.
        dtype: the parameters' dtype (default: ``torch.get_default_dtype()``).
        device: the parameters' device (default: the key's).

    >>> import torch
    >>> from funcgrad import nn, random
    >>> mlp = nn.MLP(784, [256, 256], 10, key=random.key(0))
    >>> mlp(torch.ones(32, 784)).shape
    torch.Size([32, 10])
    >>> [layer.weight.shape for layer in mlp.layers]
    [torch.Size([256, 784]), torch.Size([256, 256]), torch.Size([10, 256])]
    """

    layers: tuple[Linear, ...]
    activation: Callable[[torch.Tensor], torch.Tensor] = dataclasses.field(metadata=STATIC)

    def __init__(
        self,
        in_features: int,
        hidden_features: Sequence[int],
        out_features: int,
        *,
        activation: Callable[[torch.Tensor], torch.Tensor] = relu,
        bias: bool = True,
        key: torch.Tensor,
        dtype: torch.dtype | None = None,
        device: Device = None,
    ) -> None:
        if isinstance(hidden_features, int) or not isinstance(hidden_features, Sequence):
            raise TypeError(
                "funcgrad.nn.MLP: hidden_features must be a sequence of widths (e.g. [64, 64]; "
                f"[] for none), got {hidden_features!r}."
            )
        sizes = [in_features, *hidden_features, out_features]
        positive_int("MLP", "in_features", in_features)
        positive_int("MLP", "out_features", out_features)
        for n in hidden_features:
            positive_int("MLP", "each of hidden_features", n)
        if not callable(activation):
            raise TypeError(
                f"funcgrad.nn.MLP: activation must be callable, got {type(activation).__name__}."
            )
        keys = random.split(check_key("MLP", key), len(sizes) - 1)
        layers = tuple(
            Linear(a, b, bias=bias, key=keys[i], dtype=dtype, device=device)
            for i, (a, b) in enumerate(itertools.pairwise(sizes))
        )
        self._set(layers=layers, activation=activation)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the layers to ``x`` of shape ``(*, in_features)``."""
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)
