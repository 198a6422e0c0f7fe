"""Basic layers: ``Linear``, ``Embedding``, ``Dropout`` and ``Flatten``."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from .. import random
from ..tree import register_dataclass
from . import init
from ._module import STATIC, Module, check_key, float_dtype, positive_int, shape_error

__all__ = ["Dropout", "Embedding", "Flatten", "Linear"]

Device = torch.device | str | None


def linear_default(
    key: torch.Tensor,
    shape: tuple[int, ...],
    fan_in: int,
    bias: bool,
    dtype: torch.dtype,
    device: Device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch.nn.Linear's and ConvNd's default initialisation: weight and bias from
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (kaiming_uniform with ``a=sqrt(5)``)."""
    wkey, bkey = random.split(key)
    weight = init.kaiming_uniform(wkey, shape, a=math.sqrt(5), dtype=dtype, device=device)
    if not bias:
        return weight, None
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    b = init.uniform(bkey, (shape[0],), minval=-bound, maxval=bound, dtype=dtype, device=device)
    return weight, b


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class Linear(Module):
    """An affine map ``x @ weight.T + bias``, as ``torch.nn.Linear``.

    Args:
        in_features: the size of the input's last dimension.
        out_features: the size of the output's last dimension.
        bias: whether the layer has a bias.
        key: the PRNG key of the initialisation: ``weight`` of shape ``(out_features,
            in_features)`` and ``bias`` of shape ``(out_features,)`` are drawn from
            ``U(-1/sqrt(in_features), 1/sqrt(in_features))``, as in PyTorch.
        dtype: the parameters' dtype (default: ``torch.get_default_dtype()``).
        device: the parameters' device (default: the key's).

    Called on ``x`` of shape ``(*, in_features)``, it returns ``(*, out_features)``.

    >>> import torch
    >>> from funcgrad import nn, random
    >>> layer = nn.Linear(3, 2, key=random.key(0))
    >>> layer
    Linear(in_features=3, out_features=2, weight=f32[2,3], bias=f32[2])
    >>> layer(torch.ones(5, 3)).shape
    torch.Size([5, 2])
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    in_features: int = dataclasses.field(metadata=STATIC)
    out_features: int = dataclasses.field(metadata=STATIC)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        key: torch.Tensor,
        dtype: torch.dtype | None = None,
        device: Device = None,
    ) -> None:
        positive_int("Linear", "in_features", in_features)
        positive_int("Linear", "out_features", out_features)
        dtype = float_dtype("Linear", dtype)
        shape = (out_features, in_features)
        w, b = linear_default(check_key("Linear", key), shape, in_features, bias, dtype, device)
        self._set(weight=w, bias=b, in_features=in_features, out_features=out_features)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the layer to ``x`` of shape ``(*, in_features)``."""
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != self.in_features:
            raise shape_error("Linear", f"an input of shape (*, in_features={self.in_features})", x)
        return F.linear(x, self.weight, self.bias)


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class Embedding(Module):
    """A lookup table of ``num_embeddings`` vectors, as ``torch.nn.Embedding``.

    Args:
        num_embeddings: the number of vectors (valid indices are ``0 .. num_embeddings - 1``).
        embedding_dim: the size of each vector.
        padding_idx: an index whose vector starts at zero and gets no gradient.
        key: the PRNG key: ``weight`` is drawn from ``N(0, 1)``, as in PyTorch.
        dtype: the parameters' dtype (default: ``torch.get_default_dtype()``).
        device: the parameters' device (default: the key's).

    Called on integer indices of any shape, it returns ``(*indices.shape, embedding_dim)``.

    >>> import torch
    >>> from funcgrad import nn, random
    >>> emb = nn.Embedding(10, 4, padding_idx=0, key=random.key(0))
    >>> emb(torch.tensor([[0, 3], [9, 0]])).shape
    torch.Size([2, 2, 4])
    >>> emb(torch.tensor(0))
    tensor([0., 0., 0., 0.])
    """

    weight: torch.Tensor
    num_embeddings: int = dataclasses.field(metadata=STATIC)
    embedding_dim: int = dataclasses.field(metadata=STATIC)
    padding_idx: int | None = dataclasses.field(metadata=STATIC)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        key: torch.Tensor,
        dtype: torch.dtype | None = None,
        device: Device = None,
    ) -> None:
        positive_int("Embedding", "num_embeddings", num_embeddings)
        positive_int("Embedding", "embedding_dim", embedding_dim)
        if padding_idx is not None:
            if not isinstance(padding_idx, int) or not (
                -num_embeddings <= padding_idx < num_embeddings
            ):
                raise ValueError(
                    f"funcgrad.nn.Embedding: padding_idx must be None or an int in "
                    f"[-{num_embeddings}, {num_embeddings}), got {padding_idx!r}."
                )
            padding_idx %= num_embeddings
        dtype = float_dtype("Embedding", dtype)
        shape = (num_embeddings, embedding_dim)
        w = init.normal(check_key("Embedding", key), shape, dtype=dtype, device=device)
        if padding_idx is not None:
            w = w.index_fill(0, torch.tensor([padding_idx], device=w.device), 0.0)
        self._set(
            weight=w,
            num_embeddings=num_embeddings,
            embedding_dim=embedding_dim,
            padding_idx=padding_idx,
        )

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        """Looks up ``indices`` (an integer tensor of any shape)."""
        if (
            not isinstance(indices, torch.Tensor)
            or indices.is_floating_point()
            or (indices.dtype.is_complex or indices.dtype == torch.bool)
        ):
            got = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise TypeError(
                f"funcgrad.nn.Embedding: expected an integer tensor of indices, got {got}."
            )
        return F.embedding(indices, self.weight, self.padding_idx)


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class Dropout(Module):
    """Zeroes each element with probability ``rate`` in training, scaling the rest by
    ``1 / (1 - rate)``; the identity in evaluation. Randomness comes from an explicit key.

    Args:
        rate: the probability of zeroing an element, in ``[0, 1)``.

    Called as ``dropout(x, train=..., key=...)``: ``train`` is required (there is no global
    mode), and ``key`` is required when ``train`` is true and ``rate > 0``. The layer has no
    parameters.

    >>> import torch
    >>> from funcgrad import nn, random
    >>> drop = nn.Dropout(0.5)
    >>> drop(torch.ones(4), train=False)
    tensor([1., 1., 1., 1.])
    >>> y = drop(torch.ones(1000), train=True, key=random.key(0))
    >>> sorted(set(y.tolist()))
    [0.0, 2.0]
    """

    rate: float = dataclasses.field(metadata=STATIC)

    def __init__(self, rate: float = 0.5) -> None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"funcgrad.nn.Dropout: rate must be in [0, 1), got {rate!r}.")
        self._set(rate=float(rate))

    def __call__(
        self, x: torch.Tensor, *, train: bool, key: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Applies dropout to ``x`` when ``train`` is true (``key`` then required)."""
        if not train or self.rate == 0.0:
            return x
        if key is None:
            raise ValueError(
                "funcgrad.nn.Dropout: train=True needs a PRNG key: pass key=... (split a fresh "
                "one for each step), or train=False for evaluation."
            )
        return random.dropout(check_key("Dropout", key), x, self.rate)


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class Flatten(Module):
    """Flattens dimensions ``start_dim`` to ``end_dim`` into one, as ``torch.nn.Flatten``.

    >>> import torch
    >>> from funcgrad import nn
    >>> nn.Flatten()(torch.ones(2, 3, 4)).shape
    torch.Size([2, 12])
    """

    start_dim: int = dataclasses.field(metadata=STATIC)
    end_dim: int = dataclasses.field(metadata=STATIC)

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        self._set(start_dim=start_dim, end_dim=end_dim)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Flattens ``x``."""
        dims = x.dim() if isinstance(x, torch.Tensor) else 0
        if not (-dims <= self.start_dim < dims and -dims <= self.end_dim < dims):
            need = max(self.start_dim + 1, -self.start_dim, self.end_dim + 1, -self.end_dim)
            raise shape_error(
                "Flatten",
                f"an input with at least {need} dimensions (start_dim={self.start_dim}, "
                f"end_dim={self.end_dim})",
                x,
            )
        return torch.flatten(x, self.start_dim, self.end_dim)
