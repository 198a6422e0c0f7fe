"""Tests for ``funcgrad/nn/_attention.py``: ``MultiheadAttention``.

Outputs, attention weights and gradients against ``torch.nn.MultiheadAttention(batch_first=True)``
with the same weights in float64, over self- and cross-attention, bool and float masks, key
padding, causal masking and unbatched inputs; dropout on the attention weights against the same
computation written out; default initialisation; errors by message.
"""

from __future__ import annotations

import math
from typing import Any

import helpers
import pytest
import torch

import funcgrad as fg
from funcgrad import nn, random
from funcgrad.testing import assert_trees_allclose

F64 = torch.float64
E, H, N, L, S = 8, 2, 3, 4, 5


def pair(bias: bool = True) -> tuple[nn.MultiheadAttention, torch.nn.MultiheadAttention]:
    module = helpers.torch_module(torch.nn.MultiheadAttention, E, H, bias=bias, batch_first=True)
    with torch.no_grad():  # torch starts the biases at zero: make them count
        for p in module.parameters():
            if p.dim() == 1:
                p.copy_(helpers.t(*p.shape, seed=7))
    layer = nn.MultiheadAttention(E, H, bias=bias, key=random.key(0), dtype=F64)
    return helpers.copy_weights(layer, module), module


def torch_call(**kwargs: Any) -> Any:
    return lambda m, *args: m(*args, **kwargs)


@pytest.mark.parametrize("bias", [True, False])
def test_self_attention_matches_torch(bias: bool) -> None:
    """mha(x) equals torch's mha(x, x, x) (output and gradients)."""
    layer, module = pair(bias)
    x = helpers.t(N, L, E, seed=1)
    helpers.check_layer_against_torch(
        layer,
        module,
        (x,),
        torch_call=lambda m, x: m(x, x, x, need_weights=False)[0],
    )


def test_cross_attention_matches_torch() -> None:
    """Distinct queries, keys and values equal torch's (gradients for all three)."""
    layer, module = pair()
    args = (helpers.t(N, L, E, seed=1), helpers.t(N, S, E, seed=2), helpers.t(N, S, E, seed=3))
    helpers.check_layer_against_torch(
        layer, module, args, torch_call=lambda m, q, k, v: m(q, k, v, need_weights=False)[0]
    )


def bool_attn_mask(shape: tuple[int, ...]) -> torch.Tensor:
    mask = helpers.t(*shape, seed=11) > 0.5
    mask[..., 0] = False  # every query attends to something
    return mask


MASKS: list[tuple[str, Any]] = [
    ("bool (L, S)", lambda: {"attn_mask": bool_attn_mask((L, S))}),
    ("bool (N*H, L, S)", lambda: {"attn_mask": bool_attn_mask((N * H, L, S))}),
    ("float (L, S)", lambda: {"attn_mask": helpers.t(L, S, seed=12)}),
    ("key padding bool", lambda: {"key_padding_mask": bool_attn_mask((N, S))}),
    ("key padding float", lambda: {"key_padding_mask": helpers.t(N, S, seed=13)}),
    (
        "bool attn and bool padding",
        lambda: {"attn_mask": bool_attn_mask((L, S)), "key_padding_mask": bool_attn_mask((N, S))},
    ),
    (
        "float attn and float padding",
        lambda: {
            "attn_mask": helpers.t(L, S, seed=12),
            "key_padding_mask": helpers.t(N, S, seed=13),
        },
    ),
]


@pytest.mark.parametrize("masks", [m for _, m in MASKS], ids=[n for n, _ in MASKS])
@pytest.mark.parametrize("need_weights", [False, True])
def test_masks_match_torch(masks: Any, need_weights: bool) -> None:
    """Masks in torch.nn.MultiheadAttention's convention give torch's output and gradients,
    through scaled_dot_product_attention and through the explicit path (need_weights)."""
    layer, module = pair()
    kwargs = masks()
    args = (helpers.t(N, L, E, seed=1), helpers.t(N, S, E, seed=2), helpers.t(N, S, E, seed=3))

    def call(m: nn.MultiheadAttention, q: Any, k: Any, v: Any) -> Any:
        return m(q, k, v, need_weights=need_weights, **kwargs)

    def ref(m: Any, q: Any, k: Any, v: Any) -> Any:
        out, w = m(q, k, v, need_weights=need_weights, **kwargs)
        return (out, w) if need_weights else out

    helpers.check_layer_against_torch(layer, module, args, call=call, torch_call=ref)


@pytest.mark.parametrize("average", [True, False])
def test_attention_weights_match_torch(average: bool) -> None:
    """need_weights returns torch's weights, averaged over heads or per head."""
    layer, module = pair()
    x = helpers.t(N, L, E, seed=1)
    out, w = layer(x, need_weights=True, average_attn_weights=average)
    ref_out, ref_w = module(x, x, x, need_weights=True, average_attn_weights=average)
    assert w.shape == ((N, L, L) if average else (N, H, L, L))
    assert_trees_allclose((out, w), (ref_out, ref_w), rtol=1e-10, atol=1e-12)


def test_causal_matches_torch_with_a_causal_mask() -> None:
    """is_causal=True equals torch with the explicit causal mask; it combines with padding."""
    layer, module = pair()
    x = helpers.t(N, L, E, seed=1)
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    padding = torch.zeros(N, L, dtype=torch.bool)
    padding[1, 2] = True
    helpers.check_layer_against_torch(
        layer,
        module,
        (x,),
        call=lambda m, x: m(x, is_causal=True, key_padding_mask=padding),
        torch_call=lambda m, x: m(x, x, x, attn_mask=causal, key_padding_mask=padding)[0],
    )


def test_unbatched_matches_torch() -> None:
    """(L, E) inputs with an (L, S) mask equal torch's unbatched call."""
    layer, module = pair()
    q, kv = helpers.t(L, E, seed=1), helpers.t(S, E, seed=2)
    mask = bool_attn_mask((L, S))
    helpers.check_layer_against_torch(
        layer,
        module,
        (q, kv),
        call=lambda m, q, kv: m(q, kv, attn_mask=mask, need_weights=True),
        torch_call=lambda m, q, kv: m(q, kv, kv, attn_mask=mask),
    )


def test_attention_dropout() -> None:
    """In training, dropout applies funcgrad.random.dropout to the attention weights (the
    computation written out); in evaluation the layer equals torch's eval mode."""
    layer, module = pair()
    layer = nn.MultiheadAttention(E, H, dropout=0.3, key=random.key(0), dtype=F64)
    layer = helpers.copy_weights(layer, module)
    x = helpers.t(N, L, E, seed=1)
    ref = module(x, x, x, need_weights=False)[0]
    assert_trees_allclose(layer(x, train=False), ref, rtol=1e-10, atol=1e-12)
    out, w = layer(x, train=True, key=random.key(3), need_weights=True, average_attn_weights=False)
    q, k, v = torch.nn.functional.linear(x, layer.in_proj_weight, layer.in_proj_bias).chunk(3, -1)
    q, k, v = (z.reshape(N, L, H, E // H).transpose(1, 2) for z in (q, k, v))
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(E // H), -1)
    dropped = random.dropout(random.key(3), probs, 0.3)
    expected = (dropped @ v).transpose(1, 2).reshape(N, L, E)
    expected = torch.nn.functional.linear(expected, layer.out_proj_weight, layer.out_proj_bias)
    assert_trees_allclose((out, w), (expected, dropped), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(out, ref)


def test_mixed_bool_and_float_masks() -> None:
    """A bool mask combined with a float one acts as -inf where True (torch warns on the mix;
    here it is defined): equal to the all-float masks."""
    layer, _ = pair()
    q, kv = helpers.t(N, L, E, seed=1), helpers.t(N, S, E, seed=2)
    blocked = bool_attn_mask((L, S))
    padding = helpers.t(N, S, seed=13)
    as_float = torch.zeros(L, S, dtype=F64).masked_fill(blocked, -math.inf)
    assert_trees_allclose(
        layer(q, kv, attn_mask=blocked, key_padding_mask=padding, need_weights=True),
        layer(q, kv, attn_mask=as_float, key_padding_mask=padding, need_weights=True),
        rtol=0,
        atol=0,
    )


def test_attention_default_init_follows_torch() -> None:
    """in_proj is Xavier-uniform, out_proj Linear's default, biases zero (torch's defaults)."""
    mha = nn.MultiheadAttention(64, 4, key=random.key(0))
    bound_in = math.sqrt(6 / (64 + 3 * 64))
    helpers.assert_distributed(mha.in_proj_weight, helpers.uniform_cdf(-bound_in, bound_in))
    bound_out = 1 / math.sqrt(64)
    helpers.assert_distributed(mha.out_proj_weight, helpers.uniform_cdf(-bound_out, bound_out))
    assert mha.in_proj_bias is not None
    assert mha.out_proj_bias is not None
    assert not mha.in_proj_bias.any()
    assert not mha.out_proj_bias.any()
    ref = helpers.torch_module(torch.nn.MultiheadAttention, 64, 4).in_proj_weight.detach()
    helpers.assert_distributed(ref, helpers.uniform_cdf(-bound_in, bound_in))


def test_attention_under_vmap_and_grad() -> None:
    """Per-example gradients of a self-attention loss under fg.vmap equal the loop."""
    layer, _ = pair()
    xs = helpers.t(N, L, E, seed=1)

    def loss(m: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
        return m(x, is_causal=True).square().sum()

    per_example = fg.vmap(fg.grad(loss), in_axes=(None, 0))(layer, xs)
    assert_trees_allclose(per_example, fg.tree.stack([fg.grad(loss)(layer, x) for x in xs]))


def test_attention_errors() -> None:
    """Feature sizes, mismatched lengths, mask shapes and dtypes, and dropout without a mode
    or key are named."""
    mha = nn.MultiheadAttention(E, H, key=random.key(0))
    x = torch.ones(N, L, E)
    with pytest.raises(
        ValueError,
        match=r"nn\.MultiheadAttention: expected a query of shape \(N, L, E=8\) or \(L, E=8\), got an input of shape \(3, 4, 6\)",
    ):
        mha(torch.ones(N, L, 6))
    with pytest.raises(
        ValueError,
        match=r"expected keys of shape \(N, S, E=8\) or \(S, E=8\), batched like the query \(3, 4, 8\), got \(5, 8\)",
    ):
        mha(x, torch.ones(S, E))
    with pytest.raises(
        ValueError,
        match=r"keys \(3, 5, 8\) and values \(3, 6, 8\) must have the same batch size and length",
    ):
        mha(x, torch.ones(N, S, E), torch.ones(N, 6, E))
    with pytest.raises(
        ValueError,
        match=r"expected attn_mask of shape \(L, S\) = \(4, 4\) or \(N \* num_heads, L, S\) = \(6, 4, 4\), got \(4, 5\)",
    ):
        mha(x, attn_mask=torch.zeros(L, S, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"key_padding_mask must be a bool mask .* got torch.int64"):
        mha(x, key_padding_mask=torch.zeros(N, L, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"nn\.MultiheadAttention: num_heads \(3\) must divide embed_dim \(8\)"
    ):
        nn.MultiheadAttention(E, 3, key=random.key(0))
    with pytest.raises(
        ValueError, match=r"nn\.MultiheadAttention: dropout must be in \[0, 1\), got 1.0"
    ):
        nn.MultiheadAttention(E, H, dropout=1.0, key=random.key(0))
    dropping = nn.MultiheadAttention(E, H, dropout=0.1, key=random.key(0))
    with pytest.raises(
        ValueError, match=r"has dropout=0.1, so train=True or train=False is required"
    ):
        dropping(x)
    with pytest.raises(ValueError, match=r"train=True with dropout=0.1 needs a PRNG key"):
        dropping(x, train=True)
