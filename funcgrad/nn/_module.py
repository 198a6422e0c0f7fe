"""The base of funcgrad.nn's layers, and the checks and defaults the layers share.

# NOTE [layers are frozen dataclass pytrees]
# A layer is a frozen dataclass registered with funcgrad.tree.register_dataclass: its tensors
# (parameters) are the pytree's leaves, and its configuration (sizes, strides, flags) is static
# metadata in the tree structure. So a layer *is* its parameters: fg.grad(loss)(model, x) returns
# a layer of gradients, an optimizer updates it like any pytree, fg.vmap maps over a stacked
# ensemble of layers, and the configuration is never traced. Each layer writes its own
# ``__init__`` (torch.nn's signature, plus a PRNG ``key``); unflattening bypasses it. Frozen
# means a method cannot rebind a field by mistake; ``Module.replace`` returns a changed copy.
# Layers compare by identity (``eq=False``): their tensors have no single truth value.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

__all__ = ["Module"]

_M = TypeVar("_M", bound="Module")

_KEY_HELP = "a torch.uint32 tensor of shape (2,) from funcgrad.random.key(seed) or split"

#: ``dataclasses.field`` metadata marking a configuration field (part of the tree structure).
STATIC = {"static": True}


_SHORT_DTYPES = {
    torch.float64: "f64",
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.bool: "bool",
}


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        dtype = _SHORT_DTYPES.get(value.dtype, str(value.dtype).removeprefix("torch."))
        return f"{dtype}[{','.join(str(n) for n in value.shape)}]"
    if isinstance(value, tuple) and any(isinstance(v, Module) for v in value):
        return "(" + ", ".join(_short(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if callable(value) and hasattr(value, "__name__") and not isinstance(value, Module):
        return str(value.__name__)
    return repr(value)


class Module:
    """The base class of funcgrad.nn's layers: frozen dataclasses registered as pytrees.

    A layer's tensors are its pytree leaves and its configuration is static, so a layer goes
    through :func:`funcgrad.grad`, :func:`funcgrad.vmap`, optimizers and
    :mod:`funcgrad.tree` like any other pytree. Subclass it, with the two decorators, to write
    a model out of layers; the repr then summarises tensors by dtype and shape.

    >>> import dataclasses, torch
    >>> import funcgrad as fg
    >>> from funcgrad import nn, random
    >>> @fg.tree.register_dataclass
    ... @dataclasses.dataclass(frozen=True, eq=False, repr=False)
    ... class TwoLayer(nn.Module):
    ...     hidden: nn.Linear
    ...     out: nn.Linear
    ...
    ...     def __call__(self, x: torch.Tensor) -> torch.Tensor:
    ...         return self.out(nn.relu(self.hidden(x)))
    >>> k1, k2 = random.split(random.key(0))
    >>> model = TwoLayer(nn.Linear(3, 8, key=k1), nn.Linear(8, 1, key=k2))
    >>> model
    TwoLayer(hidden=Linear(in_features=3, out_features=8, weight=f32[8,3], bias=f32[8]), out=Linear(in_features=8, out_features=1, weight=f32[1,8], bias=f32[1]))
    >>> grads = fg.grad(lambda m, x: m(x).sum())(model, torch.ones(5, 3))
    >>> grads.out.weight.shape
    torch.Size([1, 8])
    """

    def replace(self: _M, **changes: Any) -> _M:
        """Returns a copy with the given fields replaced (the layer itself is not changed).

        A tensor field must keep its shape, so that the copy still matches its configuration.

        >>> import torch
        >>> from funcgrad import nn, random
        >>> layer = nn.Linear(2, 1, key=random.key(0))
        >>> layer.replace(weight=torch.ones(1, 2))(torch.ones(2)) - layer.bias
        tensor([2.])

        Raises:
            TypeError: a name is not a field of the layer.
            ValueError: a tensor field would change its shape.
        """
        name = type(self).__name__
        fields = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise TypeError(
                f"funcgrad.nn.{name}.replace: {name} has no fields {unknown}; its fields are "
                f"{sorted(fields)}."
            )
        for field, value in changes.items():
            old = getattr(self, field)
            if (
                isinstance(old, torch.Tensor)
                and isinstance(value, torch.Tensor)
                and old.shape != value.shape
            ):
                raise ValueError(
                    f"funcgrad.nn.{name}.replace: {field} has shape {tuple(old.shape)}, got a "
                    f"tensor of shape {tuple(value.shape)}."
                )
        new = copy.copy(self)
        for field, value in changes.items():
            object.__setattr__(new, field, value)
        return new

    def __repr__(self) -> str:
        fields = sorted(
            dataclasses.fields(self),  # type: ignore[arg-type]
            key=lambda f: not f.metadata.get("static"),
        )
        items = [f"{f.name}={_short(getattr(self, f.name))}" for f in fields]
        return f"{type(self).__name__}({', '.join(items)})"

    def _set(self, **fields: Any) -> None:
        """Sets fields of a frozen dataclass from its ``__init__``."""
        for field, value in fields.items():
            object.__setattr__(self, field, value)


# --------------------------------------------------------------------------------------------
# Checks shared by the layers
# --------------------------------------------------------------------------------------------


def float_dtype(layer: str, dtype: torch.dtype | None) -> torch.dtype:
    """The layer's parameter dtype: ``dtype`` or the default dtype; must be floating point."""
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"funcgrad.nn.{layer}: dtype must be a floating-point torch.dtype, got {dtype!r}."
        )
    return dtype


def positive_int(layer: str, arg: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"funcgrad.nn.{layer}: {arg} must be a positive int, got {value!r}.")
    return value


def check_key(layer: str, key: Any) -> torch.Tensor:
    """A PRNG key argument: one ``torch.uint32`` tensor of shape ``(2,)``."""
    if not isinstance(key, torch.Tensor):
        raise TypeError(
            f"funcgrad.nn.{layer}: key must be a PRNG key ({_KEY_HELP}), got "
            f"{type(key).__name__} ({key!r})."
        )
    if key.dtype != torch.uint32 or key.shape != (2,):
        hint = ""
        if key.dtype == torch.uint32 and key.dim() >= 2 and key.shape[-1] == 2:
            hint = (
                " That is a batch of keys: pass one key, or build an ensemble with "
                "funcgrad.vmap over the keys."
            )
        raise ValueError(
            f"funcgrad.nn.{layer}: key must be a PRNG key ({_KEY_HELP}), got a {key.dtype} "
            f"tensor of shape {tuple(key.shape)}.{hint}"
        )
    return key


def tuple_of(layer: str, arg: str, value: Any, n: int, *, minimum: int = 1) -> tuple[int, ...]:
    """An int or a sequence of ``n`` ints, each ``>= minimum``, as an ``n``-tuple."""
    if isinstance(value, int) and not isinstance(value, bool):
        out: tuple[int, ...] = (value,) * n
    elif isinstance(value, Sequence) and len(value) == n:
        out = tuple(value)
    else:
        out = ()
    if len(out) != n or any(
        not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in out
    ):
        raise ValueError(
            f"funcgrad.nn.{layer}: {arg} must be an int >= {minimum} or a sequence of {n} such "
            f"ints, got {value!r}."
        )
    return out


def shape_error(layer: str, expected: str, x: Any) -> ValueError | TypeError:
    """The error for an input a layer cannot take: what it expects, and the shape it got.

    ``expected`` completes "expected ...", e.g. ``"an input of shape (*, in_features=3)"``.
    """
    if not isinstance(x, torch.Tensor):
        return TypeError(
            f"funcgrad.nn.{layer}: expected a tensor input, got {type(x).__name__} ({x!r})."
        )
    return ValueError(
        f"funcgrad.nn.{layer}: expected {expected}, got an input of shape {tuple(x.shape)}."
    )
