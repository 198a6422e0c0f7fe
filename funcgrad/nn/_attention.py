"""Multi-head attention on ``torch.nn.functional.scaled_dot_product_attention``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch._C import _functorch

from .. import random
from ..tree import register_dataclass
from . import init
from ._linear import Device
from ._module import STATIC, Module, check_key, float_dtype, positive_int, shape_error

__all__ = ["MultiheadAttention"]

_NAME = "MultiheadAttention"


def _under_vmap() -> bool:
    """Whether a vmap is running (eager mode).

    torch has no batching rule for CPU flash attention: under vmap it falls back to a loop and
    warns, so the layer writes the attention out instead (what sdpa's math backend computes).
    """
    if torch.compiler.is_compiling():
        return False
    stack = _functorch.get_interpreter_stack()
    return stack is not None and any(i.key() == _functorch.TransformType.Vmap for i in stack)


def _check_mask(mask: Any, arg: str, shapes: list[tuple[int, ...]], text: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) not in shapes:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"funcgrad.nn.{_NAME}: expected {arg} of shape {text}, got {got}.")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"funcgrad.nn.{_NAME}: {arg} must be a bool mask (True: not attended) or a float "
            f"mask (added to the scores), got {mask.dtype}."
        )
    return mask


def _merge_masks(masks: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor | None:
    """One mask in ``scaled_dot_product_attention``'s convention (bool True: attend; float:
    added) from masks in ``torch.nn.MultiheadAttention``'s (bool True: do *not* attend)."""
    if not masks:
        return None
    if all(m.dtype == torch.bool for m in masks):
        blocked = masks[0]
        for m in masks[1:]:
            blocked = blocked | m
        return ~blocked
    total: torch.Tensor | None = None
    for m in masks:
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, -math.inf)
        else:
            m = m.to(dtype)
        total = m if total is None else total + m
    return total


@register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, repr=False, init=False)
class MultiheadAttention(Module):
    """Multi-head scaled dot-product attention, as ``torch.nn.MultiheadAttention`` with
    ``batch_first=True``.

    The queries, keys and values are projected by the rows of ``in_proj_weight`` (``(3 *
    embed_dim, embed_dim)``, stacking the three projections), split into ``num_heads`` heads,
    attended with :func:`torch.nn.functional.scaled_dot_product_attention`, and projected back
    by ``out_proj_weight``. Keys and values have ``embed_dim`` features (no ``kdim``/``vdim``).

    Args:
        embed_dim: the model dimension ``E``.
        num_heads: the number of heads; must divide ``embed_dim``.
        dropout: the dropout rate on the attention weights in training.
        bias: whether the projections have biases.
        key: the PRNG key: ``in_proj_weight`` is Xavier-uniform, ``out_proj_weight`` has
            ``torch.nn.Linear``'s default, the biases start at zero (as in PyTorch).
        dtype: the parameters' dtype (default: ``torch.get_default_dtype()``).
        device: the parameters' device (default: the key's).

    Called as ``mha(query, keys=query, values=keys, *, attn_mask=None, key_padding_mask=None,
    is_causal=False, need_weights=False, average_attn_weights=True, train=None, key=None)``
    with ``query`` of shape ``(N, L, E)`` or ``(L, E)`` and keys/values ``(N, S, E)`` or
    ``(S, E)``; returns the output ``(N, L, E)``, or ``(output, weights)`` with
    ``need_weights=True`` (weights ``(N, L, S)``, or ``(N, num_heads, L, S)`` when not
    averaged). Masks keep PyTorch's ``MultiheadAttention`` convention: a bool ``True`` means
    *not* attended, a float mask is added to the scores. ``attn_mask`` is ``(L, S)`` or
    ``(N * num_heads, L, S)``; ``key_padding_mask`` is ``(N, S)``; ``is_causal=True`` masks
    the future (combined with the other masks). ``train`` is required when ``dropout > 0``,
    and then ``key`` too.

    >>> import torch
    >>> from funcgrad import nn, random
    >>> mha = nn.MultiheadAttention(8, 2, key=random.key(0))
    >>> x = torch.ones(3, 5, 8)
    >>> mha(x).shape
    torch.Size([3, 5, 8])
    >>> out, weights = mha(x, is_causal=True, need_weights=True)
    >>> weights[0, 1]
    tensor([0.5000, 0.5000, 0.0000, 0.0000, 0.0000])
    """

    in_proj_weight: torch.Tensor
    in_proj_bias: torch.Tensor | None
    out_proj_weight: torch.Tensor
    out_proj_bias: torch.Tensor | None
    embed_dim: int = dataclasses.field(metadata=STATIC)
    num_heads: int = dataclasses.field(metadata=STATIC)
    dropout: float = dataclasses.field(metadata=STATIC)

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        *,
        key: torch.Tensor,
        dtype: torch.dtype | None = None,
        device: Device = None,
    ) -> None:
        positive_int(_NAME, "embed_dim", embed_dim)
        positive_int(_NAME, "num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(
                f"funcgrad.nn.{_NAME}: num_heads ({num_heads}) must divide embed_dim ({embed_dim})."
            )
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, (int, float))
            or not (0 <= dropout < 1)
        ):
            raise ValueError(f"funcgrad.nn.{_NAME}: dropout must be in [0, 1), got {dropout!r}.")
        dtype = float_dtype(_NAME, dtype)
        k_in, k_out = random.split(check_key(_NAME, key))
        e = embed_dim
        w_in = init.xavier_uniform(k_in, (3 * e, e), dtype=dtype, device=device)
        w_out = init.kaiming_uniform(k_out, (e, e), a=math.sqrt(5), dtype=dtype, device=device)
        b_in = init.zeros(k_in, 3 * e, dtype=dtype, device=device) if bias else None
        b_out = init.zeros(k_in, e, dtype=dtype, device=device) if bias else None
        self._set(
            in_proj_weight=w_in,
            in_proj_bias=b_in,
            out_proj_weight=w_out,
            out_proj_bias=b_out,
            embed_dim=e,
            num_heads=num_heads,
            dropout=float(dropout),
        )

    def _inputs(
        self, query: Any, keys: Any, values: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = self.embed_dim
        if not isinstance(query, torch.Tensor) or query.dim() not in (2, 3) or query.shape[-1] != e:
            raise shape_error(_NAME, f"a query of shape (N, L, E={e}) or (L, E={e})", query)
        keys = query if keys is None else keys
        values = keys if values is None else values
        for arg, x in (("keys", keys), ("values", values)):
            if not isinstance(x, torch.Tensor) or x.dim() != query.dim() or x.shape[-1] != e:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(
                    f"funcgrad.nn.{_NAME}: expected {arg} of shape (N, S, E={e}) or (S, E={e}), "
                    f"batched like the query {tuple(query.shape)}, got {got}."
                )
        if keys.shape[:-1] != values.shape[:-1] or keys.shape[:-2] != query.shape[:-2]:
            raise ValueError(
                f"funcgrad.nn.{_NAME}: keys {tuple(keys.shape)} and values "
                f"{tuple(values.shape)} must have the same batch size and length, and the "
                f"batch size of the query {tuple(query.shape)}."
            )
        return query, keys, values

    def __call__(
        self,
        query: torch.Tensor,
        keys: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        /,
        *,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        average_attn_weights: bool = True,
        train: bool | None = None,
        key: torch.Tensor | None = None,
    ) -> Any:
        """Attends from ``query`` to ``keys``/``values``; see the class docstring."""
        query, keys, values = self._inputs(query, keys, values)
        drop = self._dropout_rate(train, key)
        batched = query.dim() == 3
        self_attention = keys is query and values is query
        if not batched:
            query, keys, values = query[None], keys[None], values[None]
        n, lq, e = query.shape
        s, h = keys.shape[1], self.num_heads
        d = e // h
        if self_attention:  # one projection
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, -1)
        else:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
            b_q = b_k = b_v = None
            if self.in_proj_bias is not None:
                b_q, b_k, b_v = self.in_proj_bias.chunk(3)
            q, k, v = (
                F.linear(query, w_q, b_q),
                F.linear(keys, w_k, b_k),
                F.linear(values, w_v, b_v),
            )
        q = q.reshape(n, lq, h, d).transpose(1, 2)
        k = k.reshape(n, s, h, d).transpose(1, 2)
        v = v.reshape(n, s, h, d).transpose(1, 2)
        masks = self._masks(attn_mask, key_padding_mask, is_causal, n, lq, s, batched, q)
        mask = _merge_masks(masks, q.dtype)
        weights = None
        if need_weights or drop > 0 or _under_vmap():
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)
            if mask is not None:
                scores = (
                    scores.masked_fill(~mask, -math.inf)
                    if mask.dtype == torch.bool
                    else scores + mask
                )
            weights = torch.softmax(scores, -1)
            if drop > 0:
                assert key is not None
                weights = random.dropout(key, weights, drop)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = F.linear(
            out.transpose(1, 2).reshape(n, lq, e), self.out_proj_weight, self.out_proj_bias
        )
        if not batched:
            out = out[0]
        if not need_weights:
            return out
        assert weights is not None
        if average_attn_weights:
            weights = weights.mean(1)
        return out, (weights if batched else weights[0])

    def _dropout_rate(self, train: bool | None, key: Any) -> float:
        if self.dropout == 0.0:
            return 0.0
        if train is None:
            raise ValueError(
                f"funcgrad.nn.{_NAME}: this layer has dropout={self.dropout}, so train=True or "
                "train=False is required."
            )
        if not train:
            return 0.0
        if key is None:
            raise ValueError(
                f"funcgrad.nn.{_NAME}: train=True with dropout={self.dropout} needs a PRNG key: "
                "pass key=..., or train=False for evaluation."
            )
        check_key(_NAME, key)
        return self.dropout

    def _masks(
        self,
        attn_mask: Any,
        key_padding_mask: Any,
        is_causal: bool,
        n: int,
        lq: int,
        s: int,
        batched: bool,
        q: torch.Tensor,
    ) -> list[torch.Tensor]:
        """The masks as ``(N or 1, H or 1, L, S)`` tensors, in torch.nn's convention."""
        h = self.num_heads
        masks = []
        if attn_mask is not None:
            shapes = [(lq, s), (n * h, lq, s)] if batched else [(lq, s), (h, lq, s)]
            text = f"(L, S) = {(lq, s)} or (N * num_heads, L, S) = {(n * h, lq, s)}"
            m = _check_mask(attn_mask, "attn_mask", shapes, text)
            masks.append(m.reshape(1, 1, lq, s) if m.dim() == 2 else m.reshape(n, h, lq, s))
        if key_padding_mask is not None:
            shape = (n, s) if batched else (s,)
            m = _check_mask(key_padding_mask, "key_padding_mask", [shape], str(shape))
            masks.append(m.reshape(n, 1, 1, s))
        if is_causal:
            causal = torch.ones(lq, s, dtype=torch.bool, device=q.device).triu(1)
            masks.append(causal.reshape(1, 1, lq, s))
        return masks
