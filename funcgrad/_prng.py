"""The threefry2x32 counter-based generator in torch ops, and the helpers under funcgrad.random.

# NOTE [keys are raw uint32 tensors]
# A key is a plain ``torch.uint32`` tensor of shape ``(2,)``: the two 32-bit words of threefry
# key data, laid out exactly like JAX's legacy raw keys (``jax.random.PRNGKey``, or
# ``jax.random.key_data(jax.random.key(seed))``). ``split(key, n)`` returns shape ``(n, 2)``. Being
# data, keys vmap (a batch of keys is shape ``(B, 2)`` mapped over axis 0), pass through
# ``torch.compile`` as ordinary inputs, save with the rest of a pytree and move with ``.to()``.
# torch's uint32 has no arithmetic (no add, no shifts, no comparisons), so every computation
# reinterprets the words as int32 with ``.view(torch.int32)`` (a bit cast, no copy) and works in
# int32, where add and left shift wrap modulo 2**32 exactly like uint32. Right shifts are
# arithmetic in int32, so each logical shift masks off the sign bits it copied in.
#
# NOTE [threefry2x32 as JAX runs it]
# Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
# SC 2011), the rotation constants, key schedule and injection order of
# ``jax._src.random.threefry2x32._threefry2x32_lowering``. funcgrad follows JAX's default
# ``jax_threefry_partitionable=True`` (the default since JAX 0.5.0; checked on JAX 0.10.2): the
# i-th value of an output of size n hashes the 64-bit counter i, split into (high, low) 32-bit
# words, and
#   split(key, shape)[i] = threefry(key, (hi(i), lo(i)))            (both output words)
#   bits(key, shape)[i]  = x0 ^ x1 of threefry(key, (hi(i), lo(i)))  (32-bit values)
#                        = x0 << 32 | x1                             (64-bit values)
#   fold_in(key, d)      = threefry(key, (0, d))
# so ``fold_in(key, i) == split(key, n)[i]``. With the older non-partitionable layout
# (``jax_threefry_partitionable=False``) JAX hashes pairs of counters instead, and every value
# differs: set that flag back to its default to compare.
#
# NOTE [the key schedule is its own buffer]
# The third key word ``k0 ^ k1 ^ 0x1BD11BDA`` is built with ``torch.cat`` into a small int32
# tensor. Under torch.compile, a load of the uint32 key inside the main kernel stops inductor's
# C++ backend from vectorizing that kernel (uint32 is not among its vector dtypes), which made the
# hash ~8x slower; the cat realizes the schedule as a separate three-element buffer first.
#
# NOTE [eager chunking]
# Eagerly, each of the ~130 integer ops of the hash is one pass over memory. On the CPU, outputs
# larger than ``_CHUNK`` values are generated chunk by chunk (a Python loop over chunks, never
# over elements) so that the intermediates stay in cache, and finished chunks (bits, floats,
# normals) are concatenated; ops are in place. Under torch.compile, and on other devices, the
# whole output is one expression: the compiler fuses it into one kernel.
#
# NOTE [seeds wider than 32 bits]
# ``key(seed)`` bit-casts a 64-bit seed to its (high, low) 32-bit words, as JAX documents and
# does with jax_enable_x64: ``key(-1)`` is ``[0xFFFFFFFF, 0xFFFFFFFF]``. JAX in its default 32-bit
# mode keeps only the low 32 bits of a Python int seed, so ``key(seed % 2**32)`` reproduces it
# for negative seeds and seeds of 2**32 and up; seeds in [0, 2**32) agree in both modes.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Callable, Sequence
from typing import TypeAlias

import torch

from ._api_util import describe

__all__ = ["bits", "fold_in", "key", "key_data", "split", "wrap_key_data"]

MASK32 = 0xFFFFFFFF
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA
_CHUNK = 1 << 15  # values per chunk of an eager CPU stream: NOTE [eager chunking]
_INT32_COUNTS = 1 << 31  # outputs up to this size count with an int32 arange

#: ``shape`` arguments: an int or a sequence of ints.
Shape: TypeAlias = int | Sequence[int]
#: Turns the two int32 output words of the hash into a finished (flat) chunk.
Finish: TypeAlias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_UINT_DTYPES = (torch.uint8, torch.uint16, torch.uint32, torch.uint64)

KEY_HELP = "a key is a torch.uint32 tensor of shape (2,) from funcgrad.random.key(seed) or split"


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def is_int(x: object) -> bool:
    """A Python int, not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def check_key(name: str, key: object) -> torch.Tensor:
    """Checks that ``key`` is one key; returns it."""
    if not isinstance(key, torch.Tensor):
        raise TypeError(
            f"funcgrad.random.{name}: expected a key as its first argument ({KEY_HELP}), got "
            f"{describe(key)}."
        )
    if key.dtype != torch.uint32:
        raise TypeError(
            f"funcgrad.random.{name}: expected a key ({KEY_HELP}), got {describe(key)}. Make one "
            "with funcgrad.random.key(seed), or turn raw key data into one with "
            "funcgrad.random.wrap_key_data(data)."
        )
    if key.shape != (2,):
        if key.ndim >= 2 and key.shape[-1] == 2:
            raise ValueError(
                f"funcgrad.random.{name}: accepts a single key, but was given a batch of keys of "
                f"shape {tuple(key.shape)}. Map over the batch with funcgrad.vmap (or "
                "torch.func.vmap), or pick one key, e.g. keys[0]."
            )
        raise ValueError(
            f"funcgrad.random.{name}: expected a key of shape (2,) ({KEY_HELP}), got "
            f"{describe(key)}."
        )
    return key


def canonical_shape(name: str, shape: object, what: str = "shape") -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative ints (an int ``n`` means ``(n,)``)."""
    dims = (shape,) if _is_index(shape) else shape
    if isinstance(dims, (tuple, list, torch.Size)) and all(_is_index(d) for d in dims):
        out = tuple(operator.index(d) for d in dims)
        if all(d >= 0 for d in out):
            return out
    raise ValueError(
        f"funcgrad.random.{name}: {what} must be a tuple of non-negative ints, got {shape!r}."
    )


def _is_index(x: object) -> bool:
    return hasattr(x, "__index__") and not isinstance(x, (bool, torch.Tensor))


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    """``torch.broadcast_shapes`` as a tuple (raises RuntimeError if they do not broadcast)."""
    return tuple(torch.broadcast_shapes(*shapes))  # type: ignore[no-untyped-call]


def check_shape(name: str, shape: tuple[int, ...], *param_shapes: Sequence[int]) -> None:
    """Checks that the parameter shapes broadcast to exactly ``shape`` (JAX's rule)."""
    if not param_shapes:
        return
    try:
        result = broadcast_shapes(shape, *param_shapes)
    except RuntimeError:
        result = None
    if result != shape:
        params = ", ".join(str(tuple(s)) for s in param_shapes)
        raise ValueError(
            f"funcgrad.random.{name}: parameter shapes {params} must broadcast to the shape "
            f"argument {shape}, but broadcasting them with it gives "
            f"{'an error' if result is None else result}. Pass shape=None (where allowed) or a "
            "shape they broadcast to."
        )


# --------------------------------------------------------------------------------------------
# The hash
# --------------------------------------------------------------------------------------------


def key_schedule(key: torch.Tensor) -> torch.Tensor:
    """The three int32 key words of threefry: NOTE [the key schedule is its own buffer]."""
    k = key.view(torch.int32)
    return torch.cat([k, (k[0:1] ^ k[1:2]) ^ _PARITY])


def threefry2x32(
    ks: torch.Tensor, x0: torch.Tensor | None, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Threefry-2x32 (20 rounds) of the counter words ``(x0, x1)`` under the schedule ``ks``.

    ``x0=None`` stands for a zero high word. Returns two new int32 tensors; the arguments are not
    modified. NOTE [threefry2x32 as JAX runs it].
    """
    k0, k1, k2 = ks.unbind()
    keys = (k0, k1, k2)
    x1 = x1 + k1
    x0 = x1 + (k0 if x0 is None else x0 + k0)  # the first round's x0 += x1, fused
    for i in range(5):
        for j, r in enumerate(_ROTATIONS[i % 2]):
            if i or j:
                x0.add_(x1)
            high = x1 << r  # rotate left by r: a logical right shift masks the sign copies
            x1.bitwise_right_shift_(32 - r).bitwise_and_((1 << r) - 1)
            x1.bitwise_or_(high).bitwise_xor_(x0)
        x0.add_(keys[(i + 1) % 3])
        x1.add_(keys[(i + 2) % 3] + (i + 1))
    return x0, x1


def _iota(start: int, stop: int, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Counters ``start..stop-1`` as (high, low) int32 words; ``None`` for an all-zero high."""
    if stop <= _INT32_COUNTS:
        return None, torch.arange(start, stop, dtype=torch.int32, device=device)
    i = torch.arange(start, stop, dtype=torch.int64, device=device)
    high = (i >> 32).to(torch.int32) if stop > 1 << 32 else None
    return high, i.to(torch.int32)  # int64 -> int32 keeps the low 32 bits


def stream(key: torch.Tensor, n: int, finish: Finish) -> torch.Tensor:
    """``finish`` applied to the hash of counters ``0..n-1``: a flat tensor of ``n`` values."""
    ks = key_schedule(key)
    device = ks.device
    if n <= _CHUNK or device.type != "cpu" or torch.compiler.is_compiling():
        return finish(*threefry2x32(ks, *_iota(0, n, device)))
    chunks = [
        finish(*threefry2x32(ks, *_iota(start, min(start + _CHUNK, n), device)))
        for start in range(0, n, _CHUNK)
    ]  # NOTE [eager chunking]
    return torch.cat(chunks)


def xor_words(b0: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
    """32 random bits per value (int32): the partitionable layout's ``x0 ^ x1``."""
    return b0.bitwise_xor_(b1)


def join_words(b0: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
    """64 random bits per value (int64): ``x0 << 32 | x1``."""
    return (b0.to(torch.int64) << 32).bitwise_or_(b1.to(torch.int64).bitwise_and_(MASK32))


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def key(seed: int | torch.Tensor, *, device: torch.device | str | None = None) -> torch.Tensor:
    """A key from an integer seed: ``jax.random.key_data(jax.random.key(seed))``.

    Args:
        seed: a Python int in [-2**63, 2**64), or an integer tensor of shape ``()`` (a 64-bit
            dtype gives both words; narrower dtypes leave the high word 0). NOTE [seeds wider
            than 32 bits] in funcgrad/_prng.py says how JAX's default 32-bit mode differs.
        device: where the key lives (default: the seed tensor's device, else the CPU).

    Returns:
        A ``torch.uint32`` tensor of shape ``(2,)``.

    >>> from funcgrad import random
    >>> random.key(42)
    tensor([ 0, 42], dtype=torch.uint32)
    >>> random.key(2**32 + 7)
    tensor([1, 7], dtype=torch.uint32)
    """
    if is_int(seed):
        s = int(seed)
        if not -(2**63) <= s < 2**64:
            raise ValueError(
                f"funcgrad.random.key: seed must fit in 64 bits ([-2**63, 2**64)), got {s}. "
                "Reduce it first, e.g. seed % 2**64."
            )
        s %= 2**64
        return torch.tensor([s >> 32, s & MASK32], dtype=torch.uint32, device=device)
    if not isinstance(seed, torch.Tensor) or seed.dtype == torch.bool or seed.is_floating_point():
        raise TypeError(
            f"funcgrad.random.key: seed must be an int or an integer tensor, got {describe(seed)}."
        )
    if seed.ndim != 0:
        raise ValueError(
            f"funcgrad.random.key: seed must be a scalar, got {describe(seed)}. Map over a batch "
            "of seeds with funcgrad.vmap."
        )
    wide = seed.to(torch.int64)
    low = wide & MASK32
    high = (wide >> 32) & MASK32 if seed.dtype.itemsize == 8 else torch.zeros_like(low)
    data = torch.stack([high, low]).to(torch.int32).view(torch.uint32)
    return data if device is None else data.to(device)


def key_data(keys: torch.Tensor) -> torch.Tensor:
    """The raw key data of ``keys`` (one key or a batch, shape ``(..., 2)``).

    Keys are their data in funcgrad, so this checks ``keys`` and returns them unchanged; it
    exists so that JAX code reads the same.

    >>> from funcgrad import random
    >>> random.key_data(random.split(random.key(0), 2))
    tensor([[1797259609, 2579123966],
            [ 928981903, 3453687069]], dtype=torch.uint32)
    """
    if not (
        isinstance(keys, torch.Tensor)
        and keys.dtype == torch.uint32
        and keys.ndim >= 1
        and keys.shape[-1] == 2
    ):
        raise TypeError(
            "funcgrad.random.key_data: expected keys, a torch.uint32 tensor of shape (..., 2), "
            f"got {describe(keys)}. Turn raw key data into keys with "
            "funcgrad.random.wrap_key_data(data)."
        )
    return keys


def wrap_key_data(key_bits_array: object) -> torch.Tensor:
    """Keys from raw key data of any integer dtype and shape ``(..., 2)``.

    Values are taken modulo 2**32, like ``astype(uint32)``. Use it to bring JAX keys over:
    ``wrap_key_data(np.asarray(jax.random.key_data(k)))``.

    >>> import torch
    >>> from funcgrad import random
    >>> random.wrap_key_data(torch.tensor([0, 42]))
    tensor([ 0, 42], dtype=torch.uint32)
    """
    data = key_bits_array
    if not isinstance(data, torch.Tensor):
        try:
            data = torch.tensor(data)  # a copy: NumPy and JAX arrays may be read-only
        except (TypeError, ValueError, RuntimeError):
            data = None
    if (
        not isinstance(data, torch.Tensor)
        or data.dtype == torch.bool
        or data.is_floating_point()
        or data.is_complex()
        or data.ndim == 0
        or data.shape[-1] != 2
    ):
        raise TypeError(
            "funcgrad.random.wrap_key_data: expected integer key data of shape (..., 2), got "
            f"{describe(data if data is not None else key_bits_array)}."
        )
    if data.dtype == torch.uint32:
        return data
    return (data.to(torch.int64) & MASK32).to(torch.int32).view(torch.uint32)


def split(key: torch.Tensor, num: int | Sequence[int] = 2) -> torch.Tensor:
    """Splits ``key`` into ``num`` new keys (``num`` may be a shape): shape ``(*num, 2)``.

    >>> from funcgrad import random
    >>> random.split(random.key(0), 3)
    tensor([[1797259609, 2579123966],
            [ 928981903, 3453687069],
            [4146024105, 2718843009]], dtype=torch.uint32)
    """
    key = check_key("split", key)
    shape = canonical_shape("split", num, "num")
    ks = key_schedule(key)
    n = math.prod(shape)
    x0, x1 = threefry2x32(ks, None, torch.arange(n, dtype=torch.int32, device=ks.device))
    return torch.stack([x0, x1], dim=-1).view(torch.uint32).reshape(*shape, 2)


def fold_in(key: torch.Tensor, data: int | torch.Tensor) -> torch.Tensor:
    """A new key from ``key`` and 32-bit ``data`` (a step number, a layer index, ...).

    ``data`` is an int in [0, 2**32) or an integer tensor of shape ``()`` (taken modulo 2**32).
    ``fold_in(key, i)`` equals ``split(key, n)[i]``.

    >>> from funcgrad import random
    >>> random.fold_in(random.key(0), 1)
    tensor([ 928981903, 3453687069], dtype=torch.uint32)
    """
    key = check_key("fold_in", key)
    ks = key_schedule(key)
    if is_int(data):
        d = int(data)
        if not 0 <= d < 2**32:
            raise ValueError(
                f"funcgrad.random.fold_in: data must be in [0, 2**32), got {d}. Reduce it "
                "first, e.g. data % 2**32."
            )
        word = torch.tensor(d - 2**32 if d >= 2**31 else d, dtype=torch.int32, device=ks.device)
    elif (
        isinstance(data, torch.Tensor)
        and data.ndim == 0
        and not (data.dtype == torch.bool or data.is_floating_point() or data.is_complex())
    ):
        word = data.view(torch.int32) if data.dtype == torch.uint32 else data.to(torch.int32)
    else:
        raise TypeError(
            "funcgrad.random.fold_in: data must be an int or an integer tensor of shape (), "
            f"got {describe(data)}. Map over a batch of data with funcgrad.vmap."
        )
    x0, x1 = threefry2x32(ks, None, word)
    return torch.stack([x0, x1]).view(torch.uint32)


def bits(key: torch.Tensor, shape: Shape = (), dtype: torch.dtype = torch.uint32) -> torch.Tensor:
    """Uniform random bits as unsigned integers (uint8, uint16, uint32 or uint64).

    >>> from funcgrad import random
    >>> random.bits(random.key(0), (2,))
    tensor([4070199207, 4202968722], dtype=torch.uint32)
    """
    key = check_key("bits", key)
    shape = canonical_shape("bits", shape)
    if dtype not in _UINT_DTYPES:
        raise ValueError(
            "funcgrad.random.bits: dtype must be an unsigned int dtype (torch.uint8, uint16, "
            f"uint32 or uint64), got {dtype!r}."
        )
    n = math.prod(shape)
    if dtype == torch.uint64:
        return stream(key, n, join_words).reshape(shape).view(torch.uint64)
    out = stream(key, n, xor_words).reshape(shape)
    return out.view(torch.uint32) if dtype == torch.uint32 else out.to(dtype)


# --------------------------------------------------------------------------------------------
# Floats
# --------------------------------------------------------------------------------------------

# dtype: (random bits drawn, mantissa bits, int dtype of the same width, bits of 1.0)
FLOAT_LAYOUT: dict[torch.dtype, tuple[int, int, torch.dtype, int]] = {
    torch.float16: (16, 10, torch.int16, 0x3C00),
    torch.bfloat16: (8, 7, torch.int16, 0x3F80),
    torch.float32: (32, 23, torch.int32, 0x3F800000),
    torch.float64: (64, 52, torch.int64, 0x3FF0000000000000),
}


def floats01(b0: torch.Tensor, b1: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Floats in [0, 1) from the hash words, bit for bit as ``jax.random.uniform``.

    The top mantissa-many random bits fill the mantissa of a float in [1, 2); 1 is subtracted.
    """
    rng_bits, nmant, int_dtype, one = FLOAT_LAYOUT[dtype]
    if rng_bits == 64:
        bits = join_words(b0, b1).bitwise_right_shift_(12).bitwise_and_((1 << 52) - 1)
    else:
        bits = xor_words(b0, b1)
        if rng_bits < 32:
            bits = bits.bitwise_and_((1 << rng_bits) - 1)
        bits = bits.bitwise_right_shift_(rng_bits - nmant).bitwise_and_((1 << nmant) - 1)
    bits = bits.bitwise_or_(one)
    if bits.dtype != int_dtype:
        bits = bits.to(int_dtype)
    return bits.view(dtype).sub_(1.0)


# NOTE [fused multiply-adds]
# XLA's CPU backend rounds a multiply followed by an add once (a fused multiply-add) in float32
# and float64: uniform's ``floats * (maxval - minval) + minval``, the Horner steps of erf and
# erfinv. torch has no fma (inductor compiles with -ffp-contract=off), so ``fma`` emulates it
# exactly: in float32 the product is exact in float64 and the float64 sum is rounded to odd,
# which makes the final rounding correct; in float64, Dekker's exact product and Boldo and
# Melquiond's emulated fma ("Emulation of FMA and correctly rounded sums: proved algorithms
# using rounding to odd", IEEE Trans. Computers, 2008). erfinv skips the round-to-odd fix-up
# (a double rounding once in ~2**29, far below XLA's log1p differences). float16 and bfloat16
# round after each operation, in XLA and here. Bit tricks have no derivatives: ``with_grad_of``
# gives the exact values the plain formula's derivatives.
def _two_sum(a: torch.Tensor, b: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """``s + e == a + b`` exactly, with ``s = fl(a + b)`` (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _add_round_to_odd(a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
    """``a + b`` rounded to odd: the exact sum if representable, else its odd neighbour."""
    s, e = _two_sum(a, b)
    bits = s.view(torch.int64)
    even_inexact = (e != 0) & ((bits & 1) == 0) & torch.isfinite(s)
    step = torch.where((e > 0) == (s > 0), 1, -1)  # +1 moves away from zero
    return torch.where(even_inexact, bits + step, bits).view(torch.float64)


def _two_product(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``p + e == a * b`` exactly, without an fma (Dekker, with Veltkamp's splitting)."""

    def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Veltkamp: x * (2**27 + 1) overflows above 2**996; split x * 2**-28 there instead.
        big = x.abs() > 2.0**995
        y = torch.where(big, x * 2.0**-28, x)
        t = y * 134217729.0
        high = t - (t - y)
        high = torch.where(big, high * 2.0**28, high)
        return high, x - high

    p = a * b
    ah, al = halves(a)
    bh, bl = halves(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def with_grad_of(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value`` (bit for bit) with the derivatives of ``surrogate``, which approximates it:
    ``value + (s - detached s)`` adds exactly 0 and differentiates like ``s`` in every mode."""
    if not torch.is_grad_enabled():
        return value
    return value + torch.where(torch.isfinite(surrogate), surrogate - surrogate.detach(), 0.0)


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * b + c`` as XLA computes it on the CPU: NOTE [fused multiply-adds]."""
    plain = a * b + c
    if a.dtype not in (torch.float32, torch.float64):
        return plain
    a, b, c = a.detach(), b.detach(), c.detach()
    if a.dtype == torch.float32:
        out = _add_round_to_odd(a.double() * b.double(), c.double()).float()  # exact product
    else:
        ph, pl = _two_product(a, b)
        th, tl = _two_sum(c, ph)
        out = th + _add_round_to_odd(tl, pl)
        out = torch.where(torch.isfinite(out), out, plain.detach())  # infinities and nans
    return with_grad_of(out, plain)


def _f32(x: float) -> float:
    """``x`` rounded to float32 (as a Python float)."""
    return float(struct.unpack("f", struct.pack("f", x))[0])


# Coefficients of JAX's (XLA's) single-precision erfinv (M. Giles, "Approximating the erfinv
# function", GPU Computing Gems, 2011), for w = -log1p(-x*x) below 5 and from 5 on.
_ERFINV_SMALL = tuple(
    _f32(c)
    for c in (
        2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
        -0.00125372503, -0.00417768164, 0.246640727, 1.50140941,
    )
)  # fmt: skip
_ERFINV_LARGE = tuple(
    _f32(c)
    for c in (
        -0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
        -0.0076224613, 0.00943887047, 1.00167406, 2.83297682,
    )
)  # fmt: skip


def _erfinv32(x: torch.Tensor) -> torch.Tensor:
    """XLA's float32 erfinv, with its Horner steps as fused multiply-adds (see ``fma``)."""
    w = torch.log1p(x * -x).neg_()
    small = w < 5.0
    w = torch.where(small, w - 2.5, torch.sqrt(w) - 3.0).double()
    lo = torch.tensor(_ERFINV_SMALL, dtype=torch.float64, device=x.device)
    hi = torch.tensor(_ERFINV_LARGE, dtype=torch.float64, device=x.device)
    p = torch.where(small, lo[0], hi[0])
    for i in range(1, len(_ERFINV_SMALL)):
        p = p.mul_(w).add_(torch.where(small, lo[i], hi[i])).float().double()
    out = p.float() * x
    return torch.where(x.abs() == 1.0, torch.copysign(torch.full_like(x, math.inf), x), out)


def erfinv(x: torch.Tensor) -> torch.Tensor:
    """The inverse error function as ``jax.lax.erf_inv`` computes it (float64: torch's)."""
    if x.dtype == torch.float64:
        out: torch.Tensor = torch.special.erfinv(x)
        return out
    if x.dtype == torch.float32:
        return _erfinv32(x)
    return _erfinv32(x.float()).to(x.dtype)  # XLA computes float16/bfloat16 in float32


# XLA's float32 erf: Eigen's rational interpolant, odd numerator over even denominator in
# x**2, Horner steps as fused multiply-adds, +-1 from |x| >= 3.8325 on.
_ERF_NUMERATOR = tuple(
    _f32(c)
    for c in (0.00022905065861350646, 0.0034082910107109506, 0.050955695062380861,
              0.18520832239976145, 1.128379143519084)
)  # fmt: skip
_ERF_DENOMINATOR = tuple(
    _f32(c)
    for c in (-1.1791602954361697e-7, 0.000023547966471313185, 0.0010179625278914885,
              0.014070470171167667, 0.11098505178285362, 0.49746925110067538, 1.0)
)  # fmt: skip


def _horner32(x2: torch.Tensor, coefficients: tuple[float, ...]) -> torch.Tensor:
    """A float32 polynomial in ``x2`` (float64 holding float32 values), exact fma per step."""
    p = torch.full_like(x2, coefficients[0])
    for c in coefficients[1:]:
        p = _add_round_to_odd(x2 * p, c).float().double()
    return p


def erf(x: torch.Tensor) -> torch.Tensor:
    """The error function as XLA computes it on the CPU (float64: torch's); differentiable."""
    if x.dtype == torch.float64:
        out: torch.Tensor = torch.special.erf(x)
        return out
    x32 = x.detach().float()
    x2 = (x32 * x32).double()
    ratio = (x32 * _horner32(x2, _ERF_NUMERATOR).float()) / _horner32(x2, _ERF_DENOMINATOR).float()
    out = torch.where(
        x32.abs() >= 3.832506856900711, torch.copysign(torch.ones_like(x32), x32), ratio
    )
    return with_grad_of(out.to(x.dtype), torch.special.erf(x))
