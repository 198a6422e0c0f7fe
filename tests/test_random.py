"""funcgrad.random against jax.random (CPU, default threefry, partitionable), plus laws
(vmap equals the loop, compiled equals eager, no global RNG), statistics and error messages."""

from __future__ import annotations

import math
import os

import helpers
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import _prng
from funcgrad import random as R

jax, jnp = helpers.require_jax()
jr = jax.random

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
JDTYPE = {
    torch.float32: jnp.float32,
    torch.float64: jnp.float64,
    torch.float16: jnp.float16,
    torch.bfloat16: jnp.bfloat16,
    torch.int8: jnp.int8,
    torch.int16: jnp.int16,
    torch.int32: jnp.int32,
    torch.int64: jnp.int64,
    torch.uint8: jnp.uint8,
    torch.uint16: jnp.uint16,
    torch.uint32: jnp.uint32,
    torch.uint64: jnp.uint64,
    torch.complex64: jnp.complex64,
}
SHAPES = [(), (0,), (7,), (3, 5), (2 * _prng._CHUNK + 13,)]  # the last one is chunked
SEEDS = [0, 1, 42, 2**31 + 5, -1, 2**40 + 3, -(2**63), 2**63 - 1]
any_seed = st.integers(-(2**63), 2**64 - 1)


def jkey(key: torch.Tensor):
    """The JAX key with the same key data."""
    return jr.wrap_key_data(jnp.asarray(key.numpy()))


def as_np(x: torch.Tensor) -> np.ndarray:
    """A tensor as NumPy, bit-exact (uint64 as int64 bits, bfloat16 as float32)."""
    if x.dtype == torch.uint64:
        return x.view(torch.int64).numpy()
    if x.dtype == torch.bfloat16:
        return x.float().numpy()
    return x.numpy()


def jax_np(x) -> np.ndarray:
    """A JAX array as NumPy, converted like ``as_np``."""
    a = np.asarray(x)
    if a.dtype == np.uint64:
        return a.view(np.int64)
    if a.dtype == jnp.bfloat16:
        return a.astype(np.float32)
    return a


def assert_same(got: torch.Tensor, expected, *, atol: float | None = None) -> None:
    """Equal value for value (NaNs equal), or within ``atol``; shapes always equal."""
    g, e = as_np(got), jax_np(expected)
    assert g.shape == e.shape, (g.shape, e.shape)
    if atol is None:
        np.testing.assert_array_equal(g, e)
    else:
        np.testing.assert_allclose(g.astype(np.float64), e.astype(np.float64), rtol=0, atol=atol)


# --------------------------------------------------------------------------------------------
# Keys, split, fold_in, bits: bit-identical to JAX
# --------------------------------------------------------------------------------------------


def test_jax_default_is_partitionable_threefry():
    """The reference configuration the exactness tests assume (NOTE in funcgrad/_prng.py)."""
    assert jax.config.jax_threefry_partitionable is True
    assert jax.config.jax_default_prng_impl == "threefry2x32"


@pytest.mark.parametrize("seed", [*SEEDS, 2**32, 2**32 - 1, -(2**31)])
def test_key_matches_jax(seed):
    """key(seed) is jax.random.key_data(jax.random.key(seed)) (64-bit seeds, as with x64)."""
    assert_same(R.key(seed), jr.key_data(jr.key(seed)))
    assert R.key(seed).dtype == torch.uint32


@settings(max_examples=20)
@given(seed=st.integers(-(2**63), 2**63 - 1))
def test_key_matches_jax_property(seed):
    """Any int64 seed gives JAX's key data."""
    assert_same(R.key(seed), jr.key_data(jr.key(seed)))


@pytest.mark.parametrize("seed", [-1, -(2**31), 2**32, 2**40 + 3, 2**63 - 1])
def test_seed_modulo_2_32_reproduces_jax_32_bit_mode(seed):
    """NOTE [seeds wider than 32 bits]: JAX without x64 keeps the low 32 bits of a seed."""
    with jax.enable_x64(False):
        expected = jr.key_data(jr.key(seed))
    assert_same(R.key(seed % 2**32), expected)


def test_key_of_unsigned_64_bit_seed_is_its_bit_pattern():
    """Seeds in [2**63, 2**64) are uint64 bit patterns (JAX: np.uint64 seeds)."""
    assert_same(R.key(2**64 - 2), jr.key_data(jr.key(np.uint64(2**64 - 2))))
    torch.testing.assert_close(R.key(2**64 - 1), R.key(-1), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("value", "dtype", "np_dtype"),
    [
        (-5, torch.int64, np.int64),
        (2**40 + 9, torch.int64, np.int64),
        (-5, torch.int32, np.int32),
        (7, torch.int32, np.int32),
        (-3, torch.int8, np.int8),
        (200, torch.uint8, np.uint8),
    ],
)
def test_key_from_tensor_seed_matches_jax(value, dtype, np_dtype):
    """Integer tensor seeds: 64-bit dtypes fill both words, narrower ones the low word."""
    expected = jr.key_data(jr.key(jnp.asarray(np.array(value, dtype=np_dtype))))
    assert_same(R.key(torch.tensor(value, dtype=dtype)), expected)


@pytest.mark.parametrize("num", [0, 1, 3, (2, 3), (0, 4)])
@pytest.mark.parametrize("seed", [0, -(2**63)])
def test_split_matches_jax(seed, num):
    """split(key, num) is jax.random.split, for ints and shapes."""
    key = R.key(seed)
    assert_same(R.split(key, num), jr.key_data(jr.split(jkey(key), num)))


@settings(max_examples=15)
@given(seed=any_seed)
def test_split_matches_jax_property(seed):
    """Any key splits as in JAX."""
    key = R.key(seed)
    assert_same(R.split(key, 4), jr.key_data(jr.split(jkey(key), 4)))


@pytest.mark.parametrize("data", [0, 1, 12345, 2**31 - 1, 2**31, 2**32 - 1])
@pytest.mark.parametrize("seed", [0, 7, 2**63 - 1])
def test_fold_in_matches_jax(seed, data):
    """fold_in(key, data) is jax.random.fold_in for every 32-bit data value."""
    key = R.key(seed)
    assert_same(R.fold_in(key, data), jr.key_data(jr.fold_in(jkey(key), data)))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (torch.tensor(-1, dtype=torch.int32), 2**32 - 1),
        (torch.tensor(2**33 + 5), 5),
        (torch.tensor(3, dtype=torch.uint8), 3),
        (torch.tensor(2**32 - 2, dtype=torch.int64).to(torch.uint32), 2**32 - 2),
    ],
)
def test_fold_in_tensor_data_is_taken_modulo_2_32(data, expected):
    """Tensor data converts like astype(uint32)."""
    key = R.key(3)
    torch.testing.assert_close(R.fold_in(key, data), R.fold_in(key, expected), rtol=0, atol=0)


def test_fold_in_equals_split_element():
    """In the partitionable layout fold_in(key, i) == split(key, n)[i]."""
    key = R.key(11)
    keys = R.split(key, 9)
    for i in range(9):
        torch.testing.assert_close(R.fold_in(key, i), keys[i], rtol=0, atol=0)


BIG = (2 * _prng._CHUNK + 13,)
DTYPE_CASES = [(s, d) for s in SHAPES for d in FLOATS[:1]] + [(BIG, d) for d in FLOATS[1:]]


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [(s, torch.uint32) for s in SHAPES]
    + [(BIG, d) for d in (torch.uint8, torch.uint16, torch.uint64)],
)
def test_bits_matches_jax(shape, dtype):
    """bits is jax.random.bits for every unsigned width, incl. empty and chunked sizes."""
    key = R.key(5)
    got = R.bits(key, shape, dtype)
    assert got.dtype == dtype
    assert_same(got, jr.bits(jkey(key), shape, JDTYPE[dtype]))


@settings(max_examples=15)
@given(seed=any_seed)
def test_bits_matches_jax_property(seed):
    """Any key's bits are JAX's."""
    key = R.key(seed)
    assert_same(R.bits(key, (3, 33)), jr.bits(jkey(key), (3, 33), jnp.uint32))


def test_key_data_and_wrap_key_data_round_trip():
    """key_data returns the keys; wrap_key_data takes any integer dtype (and NumPy/JAX)."""
    keys = R.split(R.key(1), 3)
    assert R.key_data(keys) is keys
    wrapped = R.wrap_key_data(keys.to(torch.int64))
    torch.testing.assert_close(wrapped, keys, rtol=0, atol=0)
    from_jax = R.wrap_key_data(np.asarray(jr.key_data(jr.split(jr.key(1), 3))))
    torch.testing.assert_close(from_jax, keys, rtol=0, atol=0)
    torch.testing.assert_close(
        R.wrap_key_data(torch.tensor([-1, 2**32 + 3])), R.key(-(2**32) + 3), rtol=0, atol=0
    )


# --------------------------------------------------------------------------------------------
# Samplers against JAX
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "dtype"), DTYPE_CASES)
def test_uniform_matches_jax_bit_for_bit(shape, dtype):
    """uniform in [0, 1) is bit-identical to JAX in every float dtype."""
    key = R.key(9)
    got = R.uniform(key, shape, dtype)
    assert got.dtype == dtype
    assert_same(got, jr.uniform(jkey(key), shape, JDTYPE[dtype]))


UNIFORM_RANGES = [
    (-2.5, 3.7),
    (0.1, 0.3),
    (-7.0, -6.9),
    (1e-30, 1e-29),
    (0.0, math.inf),
    (-1e4, 1e-5),
]


@pytest.mark.parametrize("dtype", FLOATS)
def test_uniform_range_matches_jax_bit_for_bit(dtype):
    """Scaled uniforms too (a row per range): XLA's fused multiply-add in float32 and float64,
    emulated exactly; float16 and bfloat16 round twice, as XLA does."""
    key = R.key(10)
    lo = torch.tensor([[a] for a, _ in UNIFORM_RANGES], dtype=dtype)
    hi = torch.tensor([[b] for _, b in UNIFORM_RANGES], dtype=dtype)
    shape = (len(UNIFORM_RANGES), 1001)
    got = R.uniform(key, shape, dtype, lo, hi)
    assert_same(got, jr.uniform(jkey(key), shape, JDTYPE[dtype], as_np(lo), as_np(hi)))


def test_uniform_tensor_bounds_broadcast_like_jax():
    """Tensor bounds broadcast into the shape, as in JAX."""
    key = R.key(12)
    lo, hi = torch.tensor([[-1.0], [2.0]]), torch.tensor([0.5, 1.0, 8.0])
    got = R.uniform(key, (2, 3), torch.float32, lo, hi)
    expected = jr.uniform(jkey(key), (2, 3), jnp.float32, lo.numpy(), hi.numpy())
    assert_same(got, expected)


@settings(max_examples=15)
@given(seed=any_seed, lo=st.floats(-1e6, 1e6), width=st.floats(1e-3, 1e6))
def test_uniform_matches_jax_property(seed, lo, width):
    """Any key and float32 range."""
    key = R.key(seed)
    lo32, hi32 = np.float32(lo), np.float32(lo + width)
    got = R.uniform(key, (64,), torch.float32, float(lo32), float(hi32))
    assert_same(got, jr.uniform(jkey(key), (64,), jnp.float32, lo32, hi32))


@pytest.mark.parametrize(
    ("dtype", "atol", "exact_fraction"),
    [
        (torch.float32, 1e-6, 0.97),
        (torch.float64, 1e-9, 0.0),
        (torch.float16, 4e-3, 0.9),
        (torch.bfloat16, 3e-2, 0.9),
    ],
)
def test_normal_matches_jax(dtype, atol, exact_fraction):
    """normal is within 1e-6 of JAX in float32, mostly bit-identical (XLA's erfinv; only
    XLA's log1p differs); NOTE [where funcgrad.random differs from JAX] gives the rest."""
    key, shape = R.key(13), BIG
    got = R.normal(key, shape, dtype)
    expected = jr.normal(jkey(key), shape, JDTYPE[dtype])
    assert_same(got, expected, atol=atol)
    assert (as_np(got) == jax_np(expected)).mean() >= exact_fraction


@pytest.mark.parametrize("shape", [(), (0,), (3, 7)])
def test_normal_shapes_match_jax(shape):
    """Scalar, empty and 2-D shapes."""
    key = R.key(13)
    assert_same(R.normal(key, shape), jr.normal(jkey(key), shape, jnp.float32), atol=1e-6)


@settings(max_examples=10)
@given(seed=any_seed)
def test_normal_matches_jax_property(seed):
    """Any key: float32 normals within 1e-6 of JAX."""
    key = R.key(seed)
    assert_same(R.normal(key, (2000,)), jr.normal(jkey(key), (2000,), jnp.float32), atol=1e-6)


def test_complex_normal_matches_jax():
    """Complex dtypes: independent real and imaginary parts scaled by 1/sqrt(2), as in JAX."""
    key = R.key(14)
    got = R.normal(key, (500,), torch.complex64)
    expected = np.asarray(jr.normal(jkey(key), (500,), jnp.complex64))
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)


TN_BOUNDS = [(-2.0, 2.0), (0.5, 3.0), (-math.inf, 0.0), (-1.0, math.inf), (5.0, 6.0), (-0.1, 0.1)]


@pytest.mark.parametrize(
    ("dtype", "atol"),
    [(torch.float32, 1e-6), (torch.float64, 1e-9), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)],
)
def test_truncated_normal_matches_jax(dtype, atol):
    """truncated_normal follows JAX's inverse-CDF algorithm (XLA's erf, exactly) and stays in
    the open interval (a row per pair of bounds)."""
    key = R.key(15)
    lo = torch.tensor([[a] for a, _ in TN_BOUNDS], dtype=dtype)
    hi = torch.tensor([[b] for _, b in TN_BOUNDS], dtype=dtype)
    shape = (len(TN_BOUNDS), 1001)
    got = R.truncated_normal(key, lo, hi, shape, dtype)
    expected = jr.truncated_normal(jkey(key), as_np(lo), as_np(hi), shape, JDTYPE[dtype])
    assert_same(got, expected, atol=atol)
    assert bool(((got > lo) & (got < hi)).all())


def test_truncated_normal_tensor_bounds_and_default_shape():
    """shape=None broadcasts the bounds."""
    key = R.key(16)
    lo, hi = torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([[1.0], [2.0]])
    got = R.truncated_normal(key, lo, hi)
    expected = jr.truncated_normal(jkey(key), lo.numpy(), hi.numpy(), dtype=jnp.float32)
    assert_same(got, expected, atol=1e-6)


# (minval, maxval) pairs: small spans, empty ranges, the full int32 and int64 ranges, spans
# past 2**31 and 2**63, bounds outside narrow dtypes. One row of draws each (the bounds
# broadcast), so each dtype is one JAX call.
RANDINT_RANGES = [
    (0, 10),
    (-5, 17),
    (3, 3),
    (5, 2),
    (-200, 300),
    (-(2**31), 2**31),
    (0, 2**31),
    (-(2**40), 2**40 + 7),
    (-(2**63), 2**63 - 1),
    (0, 2**62 + 12345),
    (-3, 2**63 - 1),
]


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8])
def test_randint_matches_jax(dtype):
    """randint is JAX's: double-width modulus, empty ranges give minval, out-of-range bounds
    clip (maxval may be one past the dtype's maximum)."""
    key = R.key(17)
    lo = torch.tensor([[a] for a, _ in RANDINT_RANGES])
    hi = torch.tensor([[b] for _, b in RANDINT_RANGES])
    shape = (len(RANDINT_RANGES), 300)
    got = R.randint(key, shape, lo, hi, dtype)
    assert got.dtype == dtype
    assert_same(got, jr.randint(jkey(key), shape, lo.numpy(), hi.numpy(), JDTYPE[dtype]))


@pytest.mark.parametrize(
    ("shape", "minval", "maxval", "dtype"),
    [((), 0, 1000, torch.int64), ((0,), 0, 5, torch.int64), ((9,), 0, 256, torch.uint8)],
)
def test_randint_scalar_bounds_match_jax(shape, minval, maxval, dtype):
    """Python-int bounds and scalar or empty shapes."""
    key = R.key(17)
    got = R.randint(key, shape, minval, maxval, dtype)
    assert_same(got, jr.randint(jkey(key), shape, minval, maxval, JDTYPE[dtype]))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_randint_tensor_bounds_match_jax(dtype):
    """Tensor bounds broadcast (each entry its own range)."""
    key = R.key(18)
    lo, hi = torch.tensor([0, -10, 100]), torch.tensor([[5], [1000]])
    got = R.randint(key, (2, 3), lo, hi, dtype)
    assert_same(got, jr.randint(jkey(key), (2, 3), lo.numpy(), hi.numpy(), JDTYPE[dtype]))


@settings(max_examples=15)
@given(seed=any_seed, lo=st.integers(-(2**62), 2**62), span=st.integers(1, 2**62))
def test_randint_matches_jax_property(seed, lo, span):
    """Any key and int64 range."""
    key = R.key(seed)
    got = R.randint(key, (16,), lo, lo + span)
    assert_same(got, jr.randint(jkey(key), (16,), lo, lo + span, jnp.int64))


@pytest.mark.parametrize("p", [0.5, 0.1, 0.0, 1.0, 0.999])
def test_bernoulli_matches_jax(p):
    """bernoulli: uniform < p with p in float32 for a Python float."""
    key = R.key(19)
    got = R.bernoulli(key, p, (1000,))
    assert got.dtype == torch.bool
    assert_same(got, jr.bernoulli(jkey(key), jnp.float32(p), (1000,)))


@pytest.mark.parametrize("shape", [None, (4, 3)])
def test_bernoulli_tensor_p_matches_jax(shape):
    """A tensor p keeps its dtype and broadcasts."""
    key = R.key(20)
    p = torch.tensor([0.2, 0.7, 0.9], dtype=torch.float64)
    assert_same(R.bernoulli(key, p, shape), jr.bernoulli(jkey(key), p.numpy(), shape))


@pytest.mark.parametrize(
    ("dtype", "atol"),
    [(torch.float32, 2e-6), (torch.float64, 1e-13), (torch.float16, 1e-2)],
)
def test_gumbel_matches_jax(dtype, atol):
    """gumbel is -log(-log(u)) of JAX's uniform (log differs from XLA's in the last ulp)."""
    key = R.key(21)
    got = R.gumbel(key, (5000,), dtype)
    assert_same(got, jr.gumbel(jkey(key), (5000,), JDTYPE[dtype]), atol=atol)


LOGITS = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("axis", "prefix"), [(-1, None), (1, (3,)), (0, (2, 5))])
def test_categorical_matches_jax(axis, prefix):
    """categorical draws JAX's indices (Gumbel-max), with extra leading sample dimensions."""
    key = R.key(22)
    batch = tuple(np.delete(np.array(LOGITS.shape), axis))
    shape = None if prefix is None else prefix + batch
    got = R.categorical(key, LOGITS, axis, shape)
    assert got.dtype == torch.int64
    assert_same(got, jr.categorical(jkey(key), LOGITS.numpy(), axis, shape))


@pytest.mark.parametrize("axis", [-1, 0])
def test_categorical_without_replacement_matches_jax(axis):
    """replace=False: the Gumbel top-k trick, distinct categories per batch entry."""
    key = R.key(23)
    batch = tuple(np.delete(np.array(LOGITS.shape), axis))
    k = 3
    got = R.categorical(key, LOGITS, axis, (k, *batch), replace=False)
    expected = jr.categorical(jkey(key), LOGITS.numpy(), axis, (k, *batch), replace=False)
    assert_same(got, expected)


@pytest.mark.parametrize("n", [0, 1, 10, 1625, 1626])
def test_permutation_of_int_matches_jax(n):
    """permutation(key, n): JAX's repeated stable sorts (one round up to 1625, then two)."""
    key = R.key(24)
    got = R.permutation(key, n)
    assert_same(got, jr.permutation(jkey(key), n))
    assert sorted(got.tolist()) == list(range(n))


@pytest.mark.parametrize(("axis", "independent"), [(0, False), (1, False), (-1, True)])
def test_permutation_of_tensor_matches_jax(axis, independent):
    """Slices along an axis, or each slice independently."""
    key = R.key(25)
    x = torch.arange(24).reshape(4, 6)
    assert_same(
        R.permutation(key, x, axis, independent),
        jr.permutation(jkey(key), x.numpy(), axis, independent),
    )


P4 = torch.tensor([0.125, 0.25, 0.5, 0.125])  # dyadic: cumulative sums are exact either way
X46 = torch.arange(24).reshape(4, 6)


@pytest.mark.parametrize(
    ("a", "shape", "replace", "p", "axis"),
    [
        (10, (7,), True, None, 0),
        (10, (2, 3), False, None, 0),
        (10, (), True, None, 0),
        (X46, (2,), True, None, 1),
        (X46, (3,), False, None, 1),
        (X46, (2, 2), False, None, 0),
        (4, (50,), True, P4, 0),
        (4, (3,), False, P4, 0),
        (X46, (5,), True, P4, 0),
    ],
)
def test_choice_matches_jax(a, shape, replace, p, axis):
    """choice: randint / permutation / inverse CDF / Gumbel top-k, as JAX chooses them."""
    key = R.key(26)
    got = R.choice(key, a, shape, replace, p, axis)
    ja = a if isinstance(a, int) else a.numpy()
    jp = None if p is None else p.numpy()
    assert_same(got, jr.choice(jkey(key), ja, shape, replace, jp, axis))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_matches_flax_formula(rate):
    """dropout is flax.linen.Dropout: bernoulli(key, 1 - rate) in float32 and x / keep_prob
    (which XLA computes as x times the float32 reciprocal)."""
    key = R.key(27)
    x = helpers.t(1000, seed=1, dtype=torch.float32)
    keep = 1.0 - rate
    with jax.enable_x64(False):  # flax's default mode: its Python-float p is float32

        @jax.jit
        def flax_dropout(inputs):
            mask = jr.bernoulli(jkey(key), p=keep, shape=inputs.shape)
            return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))

        expected = flax_dropout(jnp.asarray(x.numpy()))
    assert_same(R.dropout(key, x, rate), expected)


# --------------------------------------------------------------------------------------------
# Edge cases and properties
# --------------------------------------------------------------------------------------------


def test_dropout_rate_zero_and_one():
    """rate 0 returns x itself; rate 1 returns zeros; gradients flow through kept entries."""
    key, x = R.key(0), helpers.t(50, seed=2)
    assert R.dropout(key, x, 0.0) is x
    torch.testing.assert_close(R.dropout(key, x, 1.0), torch.zeros_like(x), rtol=0, atol=0)
    g = fg.grad(lambda x: R.dropout(key, x, 0.25).sum())(x)
    kept = R.bernoulli(key, 0.75, (50,))
    torch.testing.assert_close(g, torch.where(kept, 1 / 0.75, 0.0).double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_differentiates_in_its_bounds(dtype):
    """uniform = floats * (maxval - minval) + minval: d/dminval = 1 - floats, d/dmaxval =
    floats (the exact fma keeps the plain formula's derivatives), in both modes."""
    key, lo, hi = R.key(40), torch.tensor(-0.5, dtype=dtype), torch.tensor(2.0, dtype=dtype)
    floats = R.uniform(key, (6,), dtype)
    g_lo, g_hi = fg.grad(lambda a, b: R.uniform(key, (6,), dtype, a, b).sum(), (0, 1))(lo, hi)
    torch.testing.assert_close(g_lo, (1 - floats).sum())
    torch.testing.assert_close(g_hi, floats.sum())
    _, tangent = fg.jvp(lambda a: R.uniform(key, (6,), dtype, a, hi), (lo,), (torch.ones_like(lo),))
    torch.testing.assert_close(tangent, 1 - floats)


def test_truncated_normal_gradients_match_finite_differences():
    """Derivatives in the bounds (through XLA's erf and erfinv) against finite differences."""
    key = R.key(41)
    bounds = (torch.tensor(-1.0, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64))
    fg.testing.check_grads(
        lambda a, b: R.truncated_normal(key, a, b, (5,), torch.float64), bounds, order=1
    )


def test_empty_outputs():
    """Zero-size shapes give empty results of the right shape and dtype."""
    key = R.key(0)
    assert R.normal(key, (2, 0)).shape == (2, 0)
    assert R.randint(key, (0, 3), 0, 5).shape == (0, 3)
    assert R.permutation(key, 0).shape == (0,)
    assert R.choice(key, 5, (0,)).shape == (0,)
    assert R.choice(key, X46, (0,), axis=1).shape == (4, 0)
    assert R.split(key, 0).shape == (0, 2)


@pytest.mark.parametrize("chunk", [64, 1000])
def test_eager_chunking_does_not_change_values(monkeypatch, chunk):
    """NOTE [eager chunking]: chunked and whole-tensor generation agree bit for bit."""
    key = R.key(31)
    expected = (R.bits(key, (5000,)), R.uniform(key, (5000,)), R.normal(key, (77, 65)))
    monkeypatch.setattr(_prng, "_CHUNK", chunk)
    got = (R.bits(key, (5000,)), R.uniform(key, (5000,)), R.normal(key, (77, 65)))
    fg.testing.assert_trees_allclose(got, expected, rtol=0, atol=0)


def test_vmap_over_chunked_outputs_equals_loop():
    """Chunked eager generation also vmaps (each chunk is batched, then concatenated)."""
    keys = R.split(R.key(30), 2)
    n = _prng._CHUNK + 77
    expected = torch.stack([R.uniform(k, (n,)) for k in keys])
    got = fg.vmap(lambda k: R.uniform(k, (n,)))(keys)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_int64_counters_agree_with_int32_counters(monkeypatch):
    """Outputs past 2**31 values count in int64; the low words must wrap like uint32."""
    key = R.key(32)
    expected = R.bits(key, (3000,))
    monkeypatch.setattr(_prng, "_INT32_COUNTS", 0)
    torch.testing.assert_close(R.bits(key, (3000,)), expected, rtol=0, atol=0)


def test_never_reads_or_advances_torch_global_rng():
    """Pure functions: torch's global generator state is untouched and irrelevant."""
    key = R.key(33)

    def draw():
        return (
            R.uniform(key, (5,)),
            R.normal(key, (5,)),
            R.randint(key, (5,), 0, 9),
            R.permutation(key, 5),
            R.choice(key, 5, (3,), replace=False),
            R.categorical(key, LOGITS),
            R.dropout(key, torch.ones(5), 0.5),
        )

    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = draw()
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    fg.testing.assert_trees_allclose(draw(), first, rtol=0, atol=0)


def test_results_live_on_the_key_device():
    """Outputs are created where the key is (CPU here; the same code runs on CUDA)."""
    key = R.key(0, device="cpu")
    for out in (R.normal(key, (3,)), R.split(key), R.randint(key, (2,), 0, 3)):
        assert out.device == key.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():  # pragma: no cover - no GPU on the CI machines
    """Same key, same bits and uniforms on CUDA; normals within an ulp (torch's log1p)."""
    key = R.key(34)
    gk = key.cuda()
    torch.testing.assert_close(R.bits(gk, (999,)).cpu(), R.bits(key, (999,)), rtol=0, atol=0)
    torch.testing.assert_close(R.uniform(gk, (999,)).cpu(), R.uniform(key, (999,)), rtol=0, atol=0)
    torch.testing.assert_close(
        R.normal(gk, (999,)).cpu(), R.normal(key, (999,)), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(R.permutation(gk, 50).cpu(), R.permutation(key, 50), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# vmap equals the loop; compiled equals eager
# --------------------------------------------------------------------------------------------

SAMPLERS = {
    "split": lambda k: R.split(k, 3),
    "fold_in": lambda k: R.fold_in(k, 7),
    "bits": lambda k: R.bits(k, (5,)),
    "uniform": lambda k: R.uniform(k, (2, 3), minval=-1.0, maxval=2.0),
    "normal": lambda k: R.normal(k, (4,)),
    "truncated_normal": lambda k: R.truncated_normal(k, -1.0, 2.0, (4,)),
    "gumbel": lambda k: R.gumbel(k, (4,)),
    "randint": lambda k: R.randint(k, (6,), -3, 1000),
    "randint32": lambda k: R.randint(k, (6,), -3, 1000, torch.int32),
    "bernoulli": lambda k: R.bernoulli(k, 0.3, (6,)),
    "categorical": lambda k: R.categorical(k, LOGITS, shape=(2, 4)),
    "permutation": lambda k: R.permutation(k, 8),
    "permutation_rows": lambda k: R.permutation(k, X46, 1),
    "choice": lambda k: R.choice(k, 10, (3,), replace=False),
    "choice_p": lambda k: R.choice(k, 4, (3,), p=P4),
    "dropout": lambda k: R.dropout(k, torch.ones(6), 0.5),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
@settings(max_examples=5)
@given(seed=helpers.seeds, batch=st.integers(1, 4))
def test_vmap_over_keys_equals_loop(name, seed, batch):
    """vmap over a batch of keys gives what a loop over the keys gives."""
    fn = SAMPLERS[name]
    keys = R.split(R.key(seed), batch)
    expected = torch.stack([fn(k) for k in keys])
    fg.testing.assert_trees_allclose(fg.vmap(fn)(keys), expected, rtol=0, atol=0)
    fg.testing.assert_trees_allclose(torch.func.vmap(fn)(keys), expected, rtol=0, atol=0)


def test_vmap_over_seeds_and_fold_in_data():
    """key and fold_in vmap over their integer arguments too."""
    seeds = torch.tensor([0, -1, 2**40 + 3, 7])
    expected = torch.stack([R.key(int(s)) for s in seeds])
    torch.testing.assert_close(fg.vmap(R.key)(seeds), expected, rtol=0, atol=0)
    key, data = R.key(3), torch.arange(5, dtype=torch.int32)
    expected = torch.stack([R.fold_in(key, int(d)) for d in data])
    got = fg.vmap(R.fold_in, in_axes=(None, 0))(key, data)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _pipeline(key: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    k1, k2, k3 = R.split(key, 3).unbind()
    return (
        R.normal(k1, (257,)),
        R.randint(k2, (33,), -(2**40), 2**62),
        R.permutation(k3, 20),
        R.dropout(k3, x, 0.3),
    )


def test_compiled_equals_eager_aot_eager():
    """Under fg.jit (fullgraph, no graph breaks) the values are the eager ones."""
    key, x = R.key(35), helpers.t(64, seed=3, dtype=torch.float32)
    compiled = fg.jit(_pipeline, backend="aot_eager")
    fg.testing.assert_trees_allclose(compiled(key, x), _pipeline(key, x), rtol=0, atol=0)
    other = R.key(36)  # a new key value reuses the graph and gives that key's numbers
    fg.testing.assert_trees_allclose(compiled(other, x), _pipeline(other, x), rtol=0, atol=0)
    assert compiled.compile_count == 1


@pytest.mark.skipif(
    not os.environ.get("FUNCGRAD_INDUCTOR_TESTS"),
    reason="a cold inductor compile of the hash takes 15-40 s; set FUNCGRAD_INDUCTOR_TESTS=1",
)
def test_compiled_equals_eager_inductor():
    """inductor's generated C++ kernel (int32 wrap-around, shifts, vector loop and scalar tail;
    NOTE [the key schedule is its own buffer]) gives the eager uniforms bit for bit. One small
    graph: inductor compiles are slow."""
    key = R.key(37)
    compiled = fg.jit(lambda k: R.uniform(k, (1001,)))
    torch.testing.assert_close(compiled(key), R.uniform(key, (1001,)), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Statistics (fixed keys)
# --------------------------------------------------------------------------------------------

N = 100_000


def _check_moments(x: torch.Tensor, mean: float, var: float, sigmas: float = 6.0) -> None:
    x = x.double()
    n = x.numel()
    assert abs(x.mean().item() - mean) < sigmas * math.sqrt(var / n)
    assert abs(x.var().item() - var) < sigmas * var * math.sqrt(2.0 / n) * 2


def test_uniform_normal_gumbel_moments():
    """Means and variances of uniform (1/2, 1/12), scaled uniform, normal (0, 1), gumbel
    (Euler's gamma, pi**2 / 6)."""
    k1, k2, k3, k4 = R.split(R.key(100), 4).unbind()
    _check_moments(R.uniform(k1, (N,)), 0.5, 1 / 12)
    _check_moments(R.uniform(k2, (N,), minval=-3.0, maxval=5.0), 1.0, 64 / 12)
    _check_moments(R.normal(k3, (N,), torch.float64), 0.0, 1.0)
    _check_moments(R.gumbel(k4, (N,)), 0.5772156649, math.pi**2 / 6)


def test_truncated_normal_moments():
    """Mean and variance of the standard normal truncated to (-1, 2)."""
    a, b = -1.0, 2.0
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    mass = (math.erf(b / math.sqrt(2)) - math.erf(a / math.sqrt(2))) / 2
    mean = (pdf(a) - pdf(b)) / mass
    var = 1 + (a * pdf(a) - b * pdf(b)) / mass - mean**2
    _check_moments(R.truncated_normal(R.key(101), a, b, (N,)), mean, var)


def _chi_square(counts: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((counts.double() - expected) ** 2 / expected).sum())


# Upper 1e-4 quantiles of the chi-square distribution (degrees of freedom: value).
CHI2_1E4 = {3: 21.11, 5: 25.74, 9: 33.72, 16: 44.26}


def test_randint_chi_square():
    """randint over 10 values is uniform (chi-square, 9 degrees of freedom, p = 1e-4)."""
    draws = R.randint(R.key(102), (N,), 3, 13)
    assert int(draws.min()) == 3
    assert int(draws.max()) == 12
    counts = torch.bincount(draws - 3, minlength=10)
    assert _chi_square(counts, torch.full((10,), N / 10)) < CHI2_1E4[9]


def test_categorical_and_choice_frequencies():
    """categorical follows softmax(logits); choice with p follows p (chi-square)."""
    logits = torch.tensor([0.0, 1.0, -1.0, 2.0])
    draws = R.categorical(R.key(103), logits, shape=(N,))
    expected = torch.softmax(logits.double(), 0) * N
    assert _chi_square(torch.bincount(draws, minlength=4), expected) < CHI2_1E4[3]
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    draws = R.choice(R.key(104), 4, (N,), p=p)
    assert _chi_square(torch.bincount(draws, minlength=4), p.double() * N) < CHI2_1E4[3]


def test_permutations_are_uniform():
    """All 3! = 6 orders of range(3) are equally likely across keys (chi-square)."""
    keys = R.split(R.key(105), 12_000)
    perms = fg.vmap(lambda k: R.permutation(k, 3))(keys)
    codes = perms[:, 0] * 9 + perms[:, 1] * 3 + perms[:, 2]
    counts = torch.bincount(codes, minlength=27)
    counts = counts[counts > 0]
    assert counts.numel() == 6
    assert _chi_square(counts, torch.full((6,), 2000.0)) < CHI2_1E4[5]


def test_bernoulli_and_dropout_rates():
    """bernoulli's mean is p; dropout zeroes a `rate` fraction and keeps the mean."""
    draws = R.bernoulli(R.key(106), 0.3, (N,)).double()
    assert abs(draws.mean().item() - 0.3) < 6 * math.sqrt(0.3 * 0.7 / N)
    out = R.dropout(R.key(107), torch.ones(N), 0.25)
    assert abs((out == 0).double().mean().item() - 0.25) < 6 * math.sqrt(0.25 * 0.75 / N)
    assert abs(out.double().mean().item() - 1.0) < 6 * math.sqrt(0.25 / 0.75 / N)


def test_split_keys_give_independent_streams():
    """Uniforms from sibling keys are uncorrelated, and differ from the parent's."""
    k0, k1 = R.split(R.key(108)).unbind()
    a, b = R.uniform(k0, (N,)).double(), R.uniform(k1, (N,)).double()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr) < 6 / math.sqrt(N)
    assert not torch.equal(R.uniform(R.key(108), (10,)), R.uniform(k0, (10,)))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

BAD_KEYS = [
    (
        torch.tensor([0, 42]),
        TypeError,
        r"normal: expected a key .*torch\.int64 tensor.*wrap_key_data",
    ),
    (torch.zeros(3, dtype=torch.uint32), ValueError, r"normal: expected a key of shape \(2,\)"),
    (
        R.split(R.key(0), 4),
        ValueError,
        r"normal: accepts a single key, but was given a batch of keys of shape \(4, 2\)\. Map "
        r"over the batch with funcgrad\.vmap",
    ),
    (0, TypeError, r"normal: expected a key as its first argument .* got int 0"),
]


@pytest.mark.parametrize(("bad", "error", "match"), BAD_KEYS)
def test_bad_key_errors(bad, error, match):
    """A key of the wrong type, dtype or shape names the function and the fix."""
    with pytest.raises(error, match=match):
        R.normal(bad, (3,))


@pytest.mark.parametrize("name", ["split", "fold_in", "bits", "uniform", "randint", "dropout"])
def test_every_sampler_checks_its_key(name):
    """The check runs everywhere, with the function's own name."""
    calls = {
        "split": lambda k: R.split(k),
        "fold_in": lambda k: R.fold_in(k, 1),
        "bits": lambda k: R.bits(k),
        "uniform": lambda k: R.uniform(k),
        "randint": lambda k: R.randint(k, (2,), 0, 3),
        "dropout": lambda k: R.dropout(k, torch.ones(2), 0.5),
    }
    with pytest.raises(TypeError, match=rf"funcgrad\.random\.{name}: expected a key"):
        calls[name](torch.tensor([1, 2], dtype=torch.int32))


ERRORS = [
    (lambda: R.key(2**64), ValueError, r"key: seed must fit in 64 bits .* seed % 2\*\*64"),
    (lambda: R.key(1.5), TypeError, r"key: seed must be an int or an integer tensor, got float"),
    (lambda: R.key(torch.tensor([1, 2])), ValueError, r"key: seed must be a scalar"),
    (lambda: R.fold_in(R.key(0), -1), ValueError, r"fold_in: data must be in \[0, 2\*\*32\)"),
    (lambda: R.fold_in(R.key(0), torch.tensor(1.0)), TypeError, r"fold_in: data must be an int"),
    (lambda: R.split(R.key(0), -2), ValueError, r"split: num must be a tuple of non-negative"),
    (lambda: R.uniform(R.key(0), (2, -1)), ValueError, r"uniform: shape must be a tuple of non"),
    (lambda: R.normal(R.key(0), "3"), ValueError, r"normal: shape must be a tuple"),
    (lambda: R.uniform(R.key(0), (2,), torch.int32), ValueError, r"uniform: dtype must be float16"),
    (lambda: R.bits(R.key(0), (2,), torch.int32), ValueError, r"bits: dtype must be an unsigned"),
    (
        lambda: R.uniform(R.key(0), (3,), minval=torch.zeros(4)),
        ValueError,
        r"uniform: parameter shapes \(4,\), \(\) must broadcast to the shape argument \(3,\)",
    ),
    (lambda: R.uniform(R.key(0), minval="a"), TypeError, r"uniform: minval must be a number"),
    (lambda: R.randint(R.key(0), (2,), 0, 5, torch.float32), TypeError, r"randint: dtype must be"),
    (lambda: R.randint(R.key(0), (2,), 0, 2**63), TypeError, r"randint: maxval must be an int"),
    (
        lambda: R.randint(R.key(0), (2,), torch.zeros(3, dtype=torch.int64), 5),
        ValueError,
        r"randint: parameter shapes \(3,\), \(\) must broadcast",
    ),
    (lambda: R.bernoulli(R.key(0), torch.tensor(1)), TypeError, r"bernoulli: p must have a float"),
    (lambda: R.normal(R.key(0), (2,), torch.int64), ValueError, r"normal: dtype must be .*complex"),
    (lambda: R.categorical(R.key(0), torch.tensor([1, 2])), TypeError, r"categorical: logits must"),
    (lambda: R.categorical(R.key(0), LOGITS, axis=2), ValueError, r"categorical: axis 2 is out"),
    (
        lambda: R.categorical(R.key(0), LOGITS, shape=(9, 4), replace=False),
        ValueError,
        r"categorical: cannot draw 9 samples without replacement from 6 categories",
    ),
    (lambda: R.permutation(R.key(0), torch.tensor(3)), TypeError, r"permutation: x must be an int"),
    (lambda: R.permutation(R.key(0), -1), ValueError, r"permutation: x must be non-negative"),
    (
        lambda: R.choice(R.key(0), 3, (4,), replace=False),
        ValueError,
        r"choice: cannot take a larger sample \(size 4\) than the population \(size 3\)",
    ),
    (lambda: R.choice(R.key(0), 0, (2,)), ValueError, r"choice: a must be positive"),
    (
        lambda: R.choice(R.key(0), 4, (2,), p=torch.ones(3) / 3),
        ValueError,
        r"choice: p must be None or a 1-D tensor .* p has shape \(3,\) and a.shape\[axis\] is 4",
    ),
    (
        lambda: R.dropout(R.key(0), torch.ones(3), 1.5),
        ValueError,
        r"dropout: rate must be .*\[0, 1\]",
    ),
    (lambda: R.dropout(R.key(0), torch.ones(3), -0.1), ValueError, r"dropout: rate must be"),
    (lambda: R.dropout(R.key(0), torch.ones(3, dtype=torch.int64), 0.5), TypeError, r"dropout: x"),
    (lambda: R.wrap_key_data(torch.zeros(3)), TypeError, r"wrap_key_data: expected integer key"),
    (lambda: R.key_data(torch.zeros(2)), TypeError, r"key_data: expected keys"),
    (
        lambda: R.truncated_normal(R.key(0), torch.zeros(2), torch.zeros(3)),
        ValueError,
        r"truncated_normal: lower of shape \(2,\) and upper of shape \(3,\) do not broadcast",
    ),
]


@pytest.mark.parametrize(("call", "error", "match"), ERRORS)
def test_error_messages(call, error, match):
    """Bad arguments raise errors that name the function, what was expected and what came."""
    with pytest.raises(error, match=rf"^funcgrad\.random\.{match}"):
        call()


def test_randint_empty_range_returns_minval_as_in_jax():
    """JAX does not raise for maxval <= minval: it returns minval (so does funcgrad)."""
    out = R.randint(R.key(0), (4,), 5, 5)
    torch.testing.assert_close(out, torch.full((4,), 5), rtol=0, atol=0)
