"""Explicit PRNG keys: JAX's ``jax.random``, bit for bit, in torch ops.

A key is a ``torch.uint32`` tensor of shape ``(2,)`` (NOTE [keys are raw uint32 tensors] in
``funcgrad/_prng.py``). Every sampler is a pure function of its key, eagerly, under ``vmap`` and
under ``torch.compile``, on any device, and torch's global generator is never read. Split a key
(``split``, ``fold_in``) instead of reusing it.

>>> import torch
>>> from funcgrad import random
>>> key = random.key(0)
>>> key, sub = random.split(key)
>>> random.uniform(sub, (3,))
tensor([0.0073, 0.0209, 0.5814])

# NOTE [where funcgrad.random differs from JAX]
# Checked against JAX 0.10.2 on the CPU with its defaults (threefry2x32,
# jax_threefry_partitionable=True). XLA's CPU arithmetic is reproduced where it matters: fused
# multiply-adds (NOTE [fused multiply-adds] in _prng.py), division by a constant as a
# multiplication by its rounded reciprocal (_RSQRT2 below), and its float32 erf and erfinv.
# - key, key_data, split, fold_in, bits, uniform (any range, every float dtype), bernoulli,
#   randint, permutation, categorical (given equal Gumbel noise), choice, dropout (flax's):
#   bit-identical. XLA flushes subnormal floats to zero on the CPU; funcgrad keeps them.
# - normal: float32 uses XLA's erfinv, not torch.special.erfinv (which is more accurate but
#   differs from JAX by up to 2e-5). What remains is XLA's log1p against torch's: about 1 value
#   in 100 differs by one ulp (<= 4.8e-7). float64 uses torch.special.erfinv: JAX's float64
#   polynomial differs from it by up to ~1e-10. float16/bfloat16 compute in float32, as XLA does.
# - truncated_normal: XLA's erf exactly, then normal's erfinv (one ulp, about 1 value in 100).
#   gumbel: torch's log against XLA's (one ulp, about 1 value in 5 in float32).
# - An ulp of Gumbel noise could flip a near-tie in categorical. choice with ``p`` sums ``p``
#   in order (torch.cumsum), XLA with a parallel scan: a draw within an ulp of a cumulative sum
#   may land on the neighbouring entry.
# - Defaults follow torch: floats are float32 (JAX's default mode) and randint's dtype is int64
#   (JAX's with jax_enable_x64). randint's draws depend on the dtype: pass dtype=torch.int32 to
#   reproduce JAX's default 32-bit mode; choice(key, n) draws like randint with int64. A Python
#   float ``p`` in bernoulli is float32.
# - Within funcgrad: bits, uniform and the integer samplers are bit-identical eagerly, under
#   torch.compile and on every device; values through log, log1p or erf (normal, gumbel, ...)
#   may differ by an ulp between eager and compiled kernels or between CPU and CUDA, since those
#   functions are torch's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._api_util import describe
from ._prng import (
    FLOAT_LAYOUT,
    MASK32,
    Shape,
    broadcast_shapes,
    canonical_shape,
    check_key,
    check_shape,
    erf,
    erfinv,
    floats01,
    fma,
    is_int,
    join_words,
    stream,
    xor_words,
)
from ._prng import bits as bits
from ._prng import fold_in as fold_in
from ._prng import key as key
from ._prng import key_data as key_data
from ._prng import split as split
from ._prng import wrap_key_data as wrap_key_data

__all__ = [
    "bernoulli",
    "bits",
    "categorical",
    "choice",
    "dropout",
    "fold_in",
    "gumbel",
    "key",
    "key_data",
    "normal",
    "permutation",
    "randint",
    "split",
    "truncated_normal",
    "uniform",
    "wrap_key_data",
]

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_COMPLEX = {torch.complex64: torch.float32, torch.complex128: torch.float64}
# sqrt(2) and 1 / sqrt(2) rounded to each dtype, as Python floats (computed once, eagerly).
# XLA divides by a constant as a multiplication by its rounded reciprocal: so does funcgrad.
_SQRT2 = {dt: float(torch.tensor(math.sqrt(2.0), dtype=dt)) for dt in FLOAT_LAYOUT}
_RSQRT2 = {dt: float(1 / torch.tensor(_SQRT2[dt], dtype=dt)) for dt in FLOAT_LAYOUT}


def _check_float_dtype(name: str, dtype: object, complex_ok: bool = False) -> torch.dtype:
    if dtype in FLOAT_LAYOUT or (complex_ok and dtype in _COMPLEX):
        return dtype
    kinds = "float16, bfloat16, float32 or float64" + (" (or complex)" if complex_ok else "")
    raise ValueError(f"funcgrad.random.{name}: dtype must be {kinds}, got {dtype!r}.")


def _param(
    name: str, what: str, value: object, dtype: torch.dtype, key: torch.Tensor
) -> torch.Tensor:
    """A float parameter (``minval``, ``p``, ...) as a tensor of ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(value, dtype=dtype, device=key.device)
    raise TypeError(
        f"funcgrad.random.{name}: {what} must be a number or a tensor, got {describe(value)}."
    )


def _axis(name: str, axis: object, ndim: int) -> int:
    if is_int(axis) and -ndim <= axis < ndim:  # type: ignore[operator]
        return axis % ndim  # type: ignore[operator]
    raise ValueError(
        f"funcgrad.random.{name}: axis {axis!r} is out of range for an argument with {ndim} "
        f"dimension{'s' if ndim != 1 else ''}."
    )


def _floats(key: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return stream(key, math.prod(shape), lambda b0, b1: floats01(b0, b1, dtype)).reshape(shape)


# --------------------------------------------------------------------------------------------
# Continuous samplers
# --------------------------------------------------------------------------------------------


def uniform(
    key: torch.Tensor,
    shape: Shape = (),
    dtype: torch.dtype = torch.float32,
    minval: float | torch.Tensor = 0.0,
    maxval: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Uniform values in ``[minval, maxval)`` (bounds broadcast to ``shape``).

    >>> from funcgrad import random
    >>> random.uniform(random.key(0), (2, 2), minval=-1.0, maxval=1.0)
    tensor([[ 0.8953,  0.9572],
            [-0.3354, -0.0627]])
    """
    key = check_key("uniform", key)
    shape = canonical_shape("uniform", shape)
    dtype = _check_float_dtype("uniform", dtype)
    if type(minval) in (int, float) and type(maxval) in (int, float) and (minval, maxval) == (0, 1):
        return _floats(key, shape, dtype)  # exactly JAX's floats * 1 + 0
    lo = _param("uniform", "minval", minval, dtype, key)
    hi = _param("uniform", "maxval", maxval, dtype, key)
    check_shape("uniform", shape, lo.shape, hi.shape)
    return torch.maximum(lo, fma(_floats(key, shape, dtype), hi - lo, lo))


def _normal_real(key: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    # JAX: sqrt(2) * erfinv(uniform(minval=nextafter(-1, 0), maxval=1)). In every float dtype
    # maxval - minval rounds to exactly 2, so the scaling is exact and needs no fma.
    lo = -(1.0 - 2.0 ** -(FLOAT_LAYOUT[dtype][1] + 1))
    sqrt2 = _SQRT2[dtype]

    def finish(b0: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
        return erfinv(floats01(b0, b1, dtype).mul_(2.0).add_(lo)).mul_(sqrt2)

    return stream(key, math.prod(shape), finish).reshape(shape)


def normal(
    key: torch.Tensor, shape: Shape = (), dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normal values (complex dtypes: unit variance, independent parts).

    >>> from funcgrad import random
    >>> random.normal(random.key(0), (3,))
    tensor([ 1.6226,  2.0253, -0.4336])
    """
    key = check_key("normal", key)
    shape = canonical_shape("normal", shape)
    dtype = _check_float_dtype("normal", dtype, complex_ok=True)
    if dtype in _COMPLEX:
        real = _COMPLEX[dtype]
        k_re, k_im = split(key).unbind()
        half = _RSQRT2[real]  # JAX: (re + 1j * im) / sqrt2, see _RSQRT2
        return torch.complex(
            _normal_real(k_re, shape, real).mul_(half), _normal_real(k_im, shape, real).mul_(half)
        )
    return _normal_real(key, shape, dtype)


def truncated_normal(
    key: torch.Tensor,
    lower: float | torch.Tensor,
    upper: float | torch.Tensor,
    shape: Shape | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal values conditioned on the open interval ``(lower, upper)``.

    The shape defaults to the broadcast shape of ``lower`` and ``upper``.

    >>> from funcgrad import random
    >>> random.truncated_normal(random.key(0), -2.0, 2.0, (3,))
    tensor([ 1.4560,  1.7147, -0.4127])
    """
    key = check_key("truncated_normal", key)
    dtype = _check_float_dtype("truncated_normal", dtype)
    lo = _param("truncated_normal", "lower", lower, dtype, key)
    hi = _param("truncated_normal", "upper", upper, dtype, key)
    if shape is None:
        try:
            out_shape = broadcast_shapes(lo.shape, hi.shape)
        except RuntimeError:
            raise ValueError(
                f"funcgrad.random.truncated_normal: lower of shape {tuple(lo.shape)} and upper "
                f"of shape {tuple(hi.shape)} do not broadcast together."
            ) from None
    else:
        out_shape = canonical_shape("truncated_normal", shape)
        check_shape("truncated_normal", out_shape, lo.shape, hi.shape)
    sqrt2 = _SQRT2[dtype]
    a = erf(lo * _RSQRT2[dtype])  # JAX: erf(lower / sqrt2), see _RSQRT2
    b = erf(hi * _RSQRT2[dtype])
    u = torch.maximum(a, fma(_floats(key, out_shape, dtype), b - a, a))
    out = erfinv(u).mul_(sqrt2)
    inf = torch.tensor(math.inf, dtype=dtype, device=lo.device)
    return torch.clamp(out, torch.nextafter(lo, inf), torch.nextafter(hi, -inf))


def gumbel(
    key: torch.Tensor, shape: Shape = (), dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard Gumbel values, ``-log(-log(u))`` (JAX's default ``mode="low"``).

    >>> from funcgrad import random
    >>> random.gumbel(random.key(0), (3,))
    tensor([ 2.9234,  3.8326, -0.0969])
    """
    key = check_key("gumbel", key)
    shape = canonical_shape("gumbel", shape)
    dtype = _check_float_dtype("gumbel", dtype)
    tiny = torch.finfo(dtype).tiny

    def finish(b0: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
        # JAX draws u from uniform(minval=tiny, maxval=1): 1 - tiny rounds to 1, so u is
        # floats + tiny, rounded once (in float32 and float64 that is floats, or tiny for 0).
        u = floats01(b0, b1, dtype).add_(tiny)
        return u.log_().neg_().log_().neg_()

    return stream(key, math.prod(shape), finish).reshape(shape)


# --------------------------------------------------------------------------------------------
# Discrete samplers
# --------------------------------------------------------------------------------------------


def bernoulli(
    key: torch.Tensor, p: float | torch.Tensor = 0.5, shape: Shape | None = None
) -> torch.Tensor:
    """Boolean values that are True with probability ``p`` (shape defaults to ``p``'s).

    >>> from funcgrad import random
    >>> random.bernoulli(random.key(0), 0.3, (8,))
    tensor([False, False, False, False, False,  True, False, False])
    """
    key = check_key("bernoulli", key)
    if isinstance(p, torch.Tensor) and not p.is_floating_point():
        raise TypeError(
            f"funcgrad.random.bernoulli: p must have a floating dtype, got {describe(p)}."
        )
    dtype = p.dtype if isinstance(p, torch.Tensor) else torch.float32
    prob = _param("bernoulli", "p", p, dtype, key)
    if shape is None:
        out_shape = tuple(prob.shape)
    else:
        out_shape = canonical_shape("bernoulli", shape)
        check_shape("bernoulli", out_shape, prob.shape)
    return _floats(key, out_shape, dtype) < prob


def _int_param(what: str, value: object, key: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor) and value.dtype != torch.bool and not value.is_complex():
        return value.to(torch.int64)  # float tensors truncate, like JAX's astype(int)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        v = int(value)
        if -(2**63) <= v < 2**63:
            return torch.tensor(v, dtype=torch.int64, device=key.device)
    raise TypeError(
        f"funcgrad.random.randint: {what} must be an int in int64's range or an integer tensor, "
        f"got {describe(value)}."
    )


# NOTE [randint in unsigned arithmetic]
# JAX's randint draws two words of the sampling width w (32 for int32 and narrower, 64 for
# int64) and reduces them in unsigned w-bit arithmetic that wraps around:
#   span = uint(maxval - minval), mult = (2**(w/2) % span)**2 % span  (= 2**w % span),
#   offset = ((hi % span) * mult + lo % span) % span,  with XLA's x % 0 = x.
# torch has no 32- or 64-bit unsigned arithmetic. For w = 32 the words live in int64 and are
# masked back to 32 bits after every op that wraps; for w = 64 they are uint64 bit patterns in
# int64, whose add and multiply wrap identically, and _urem64 is an overflow-free unsigned
# remainder.


def _low32(b0: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
    """32 random bits per value as non-negative int64 (randint's working type)."""
    return xor_words(b0, b1).to(torch.int64).bitwise_and_(MASK32)


def _urem32(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Unsigned ``x % s`` of values in [0, 2**32) held in int64; ``x % 0 = x`` as in XLA."""
    zero = s == 0
    return torch.where(zero, x, torch.remainder(x, torch.where(zero, 1, s)))


def _urem64(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Unsigned ``x % s`` of uint64 bit patterns held in int64 (no overflow anywhere)."""
    zero, big = s == 0, s < 0  # big: s >= 2**63, so x % s is x or x - s
    big_rem = torch.where((x ^ -(2**63)) >= (s ^ -(2**63)), x - s, x)
    ss = torch.where(s > 0, s, 1)
    # x = 2q + b with q = x >> 1 (logical), so x % s = (2 (q % s) + b) % s, in [0, 2s).
    t = torch.remainder((x >> 1) & (2**63 - 1), ss)
    d = t - (ss - t) + (x & 1)
    small_rem = torch.where(d < 0, d + ss, d)
    return torch.where(zero, x, torch.where(big, big_rem, small_rem))


def randint(
    key: torch.Tensor,
    shape: Shape,
    minval: int | torch.Tensor,
    maxval: int | torch.Tensor,
    dtype: torch.dtype = torch.int64,
) -> torch.Tensor:
    """Uniform integers in ``[minval, maxval)`` (``minval`` where ``maxval <= minval``).

    JAX's algorithm: two draws of the dtype's width reduced modulo the span, with JAX's
    clipping of out-of-range bounds (``maxval`` may be one past the dtype's maximum). Narrow
    dtypes are drawn as int32. NOTE [where funcgrad.random differs from JAX] on the dtype.

    >>> from funcgrad import random
    >>> random.randint(random.key(0), (6,), 0, 10)
    tensor([5, 1, 5, 7, 3, 5])
    """
    key = check_key("randint", key)
    shape = canonical_shape("randint", shape)
    if dtype not in _INT_DTYPES:
        raise TypeError(
            "funcgrad.random.randint: dtype must be torch.int8, int16, int32, int64 or uint8, "
            f"got {dtype!r}."
        )
    lo, hi = _int_param("minval", minval, key), _int_param("maxval", maxval, key)
    check_shape("randint", shape, lo.shape, hi.shape)
    info = torch.iinfo(dtype)
    if info.bits < 32:  # JAX samples narrow dtypes as int32
        lo = lo.to(torch.int32).clamp(info.min, info.max).to(torch.int64)
        hi = hi.to(torch.int32).clamp(info.min, info.max + 1).to(torch.int64)
    k1, k2 = split(key).unbind()
    n = math.prod(shape)
    if dtype == torch.int64:
        higher = stream(k1, n, join_words).reshape(shape)
        lower = stream(k2, n, join_words).reshape(shape)
        span = torch.where(hi <= lo, 1, hi - lo)  # uint64 arithmetic on int64 bit patterns
        mult = _urem64(torch.full_like(span, 1 << 32), span)
        mult = _urem64(mult * mult, span)
        offset = _urem64(_urem64(higher, span) * mult + _urem64(lower, span), span)
        return lo + offset
    higher = stream(k1, n, _low32).reshape(shape)
    lower = stream(k2, n, _low32).reshape(shape)
    out_of_range = hi > 2**31 - 1
    lo, hi = lo.clamp(-(2**31), 2**31 - 1), hi.clamp(-(2**31), 2**31 - 1)
    span = torch.where(hi <= lo, 1, (hi - lo) & MASK32)
    span = torch.where(out_of_range & (hi > lo), (span + 1) & MASK32, span)
    mult = _urem32(torch.full_like(span, 1 << 16), span)
    mult = _urem32((mult * mult) & MASK32, span)
    offset = (_urem32(higher, span) * mult) & MASK32
    offset = _urem32((offset + _urem32(lower, span)) & MASK32, span)
    return (lo + offset).to(torch.int32).to(dtype)  # int32 wraps, as JAX's add does


def categorical(
    key: torch.Tensor,
    logits: torch.Tensor,
    axis: int = -1,
    shape: Shape | None = None,
    replace: bool = True,
) -> torch.Tensor:
    """Indices drawn from ``softmax(logits, axis)`` (the Gumbel-max trick), as int64.

    ``shape`` defaults to ``logits``' shape without ``axis``; leading extra dimensions draw
    more samples. ``replace=False`` draws without replacement (the Gumbel top-k trick).

    >>> from funcgrad import random
    >>> random.categorical(random.key(0), torch.tensor([0.0, 1.0, 2.0]), shape=(5,))
    tensor([1, 1, 2, 1, 2])
    """
    key = check_key("categorical", key)
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.ndim == 0:
        raise TypeError(
            "funcgrad.random.categorical: logits must be a floating tensor with at least one "
            f"dimension, got {describe(logits)}."
        )
    a = _axis("categorical", axis, logits.ndim)
    batch_shape = tuple(logits.shape[:a] + logits.shape[a + 1 :])
    if shape is None:
        out_shape = batch_shape
    else:
        out_shape = canonical_shape("categorical", shape)
        check_shape("categorical", out_shape, batch_shape)
    prefix = out_shape[: len(out_shape) - len(batch_shape)]
    if replace:
        noise_shape = list(out_shape[len(prefix) :])
        noise_shape.insert(a, logits.shape[a])
        noise = gumbel(key, (*prefix, *noise_shape), logits.dtype)
        return torch.argmax(noise + logits, dim=a - logits.ndim)
    k = math.prod(prefix)
    if k > logits.shape[a]:
        raise ValueError(
            f"funcgrad.random.categorical: cannot draw {k} samples without replacement from "
            f"{logits.shape[a]} categories."
        )
    noisy = logits + gumbel(key, tuple(logits.shape), logits.dtype)
    top = torch.topk(noisy.movedim(a, -1), k).indices
    return top.movedim(-1, 0).reshape(out_shape)


def _shuffle(key: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """JAX's shuffle: repeated stable sorts of ``x`` along ``axis`` by fresh 32-bit keys."""
    n = x.numel()
    rounds = math.ceil(3 * math.log(max(1, n)) / math.log(MASK32))  # tjablin@'s bound, as JAX
    for _ in range(rounds):
        key, sub = split(key).unbind()
        # Flipping the sign bit makes int32 order equal uint32 order.
        sort_keys = stream(sub, n, xor_words).reshape(x.shape).bitwise_xor_(-(2**31))
        x = torch.take_along_dim(x, torch.argsort(sort_keys, dim=axis, stable=True), dim=axis)
    return x


def permutation(
    key: torch.Tensor, x: int | torch.Tensor, axis: int = 0, independent: bool = False
) -> torch.Tensor:
    """A random permutation of ``range(x)``, or of ``x``'s slices along ``axis``.

    ``independent=True`` shuffles each 1-D slice along ``axis`` on its own.

    >>> from funcgrad import random
    >>> random.permutation(random.key(0), 6)
    tensor([0, 1, 5, 4, 3, 2])
    """
    key = check_key("permutation", key)
    if is_int(x):
        if x < 0:
            raise ValueError(f"funcgrad.random.permutation: x must be non-negative, got {x}.")
        _axis("permutation", axis, 1)
        return _shuffle(key, torch.arange(x, device=key.device), 0)  # type: ignore[arg-type]
    if not isinstance(x, torch.Tensor) or x.ndim == 0:
        raise TypeError(
            "funcgrad.random.permutation: x must be an int or a tensor with at least one "
            f"dimension, got {describe(x)}. For a 0-d integer tensor pass int(x)."
        )
    a = _axis("permutation", axis, x.ndim)
    if independent or x.ndim == 1:
        return _shuffle(key, x, a)
    order = _shuffle(key, torch.arange(x.shape[a], device=x.device), 0)
    return torch.index_select(x, a, order)


def _probabilities(p: object) -> torch.Tensor:
    t = p if isinstance(p, torch.Tensor) else torch.as_tensor(p)
    return t if t.is_floating_point() else t.to(torch.float32)


def choice(
    key: torch.Tensor,
    a: int | torch.Tensor,
    shape: Shape = (),
    replace: bool = True,
    p: torch.Tensor | Sequence[float] | None = None,
    axis: int = 0,
) -> torch.Tensor:
    """Samples from ``range(a)`` or from ``a``'s slices along ``axis``.

    With ``p`` (probabilities of the ``a.shape[axis]`` entries), samples follow ``p``; without
    replacement every entry is drawn at most once. The result has shape ``shape`` for an int
    ``a``, else ``a.shape[:axis] + shape + a.shape[axis + 1:]``.

    >>> from funcgrad import random
    >>> random.choice(random.key(0), 10, (4,), replace=False)
    tensor([0, 1, 8, 5])
    """
    key = check_key("choice", key)
    out = canonical_shape("choice", shape)
    arr: torch.Tensor | None = None
    if is_int(a):
        n_inputs = int(a)
        ax = 0
    elif isinstance(a, torch.Tensor) and a.ndim > 0:
        arr, ax = a, _axis("choice", axis, a.ndim)
        n_inputs = a.shape[ax]
    else:
        raise TypeError(
            "funcgrad.random.choice: a must be an int or a tensor with at least one dimension, "
            f"got {describe(a)}. For a 0-d integer tensor pass int(a)."
        )
    final = out if arr is None else (*arr.shape[:ax], *out, *arr.shape[ax + 1 :])
    n_draws = math.prod(out)
    if n_draws == 0:
        return torch.zeros(
            final, dtype=torch.int64 if arr is None else arr.dtype, device=key.device
        )
    if n_inputs <= 0:
        raise ValueError("funcgrad.random.choice: a must be positive unless no samples are taken.")
    if not replace and n_draws > n_inputs:
        raise ValueError(
            f"funcgrad.random.choice: cannot take a larger sample (size {n_draws}) than the "
            f"population (size {n_inputs}) when replace=False."
        )
    if p is None:
        if not replace:
            perm = permutation(key, n_inputs if arr is None else arr, ax)
            return perm.narrow(ax, 0, n_draws).reshape(final)
        ind = randint(key, out, 0, n_inputs)
    else:
        probs = _probabilities(p).to(key.device)
        if tuple(probs.shape) != (n_inputs,):
            raise ValueError(
                "funcgrad.random.choice: p must be None or a 1-D tensor with the same size as "
                f"a.shape[axis]; p has shape {tuple(probs.shape)} and a.shape[axis] is "
                f"{n_inputs}."
            )
        if replace:
            cum = torch.cumsum(probs, 0)
            r = cum[-1] * (1 - uniform(key, out, dtype=probs.dtype))
            ind = torch.searchsorted(cum, r)
        else:
            noisy = gumbel(key, (n_inputs,), probs.dtype) + torch.log(probs)
            ind = torch.topk(noisy, n_draws).indices
    if arr is None:
        return ind.reshape(final)
    return torch.index_select(arr, ax, ind.reshape(-1)).reshape(final)


def dropout(key: torch.Tensor, x: torch.Tensor, rate: float) -> torch.Tensor:
    """Inverted dropout: zeroes each entry with probability ``rate``, scales the rest by
    ``1 / (1 - rate)``, as ``flax.linen.Dropout`` does with the same key.

    ``rate=0`` returns ``x``; ``rate=1`` returns zeros.

    >>> from funcgrad import random
    >>> random.dropout(random.key(0), torch.ones(6), 0.5)
    tensor([0., 0., 2., 2., 0., 2.])
    """
    key = check_key("dropout", key)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"funcgrad.random.dropout: x must be a floating tensor, got {describe(x)}.")
    if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 <= rate <= 1):
        raise ValueError(
            f"funcgrad.random.dropout: rate must be a number in [0, 1], got {rate!r}. It is the "
            "probability of zeroing an entry (keep probability 1 - rate)."
        )
    if rate == 0:
        return x
    if rate == 1:
        return torch.zeros_like(x)
    keep = 1.0 - rate
    mask = bernoulli(key, keep, tuple(x.shape))
    # flax divides by keep: XLA multiplies by its reciprocal rounded to x's dtype (_RSQRT2).
    scale = 1 / torch.tensor(keep, dtype=x.dtype, device=x.device)
    return torch.where(mask, x * scale, 0.0)
