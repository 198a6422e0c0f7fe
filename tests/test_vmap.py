"""Tests for ``funcgrad.vmap``.

Every case is checked two ways: against ``jax.vmap`` (float64, CPU) on the same function written
once for both libraries (each function takes the array module ``m``: ``torch`` or ``jax.numpy``),
and against the Python loop that ``vmap`` replaces, ``stack([f(x) for x in xs])``.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from helpers import Point, require_jax, seeds, shapes, t, to_jax
from hypothesis import given
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad.testing import assert_trees_allclose


def both(fun: Any) -> tuple[Any, Any]:
    """``fun(m, ...)`` specialised to torch and to jax.numpy."""
    _, jnp = require_jax()
    return functools.partial(fun, torch), functools.partial(fun, jnp)


def _is_none(x: Any) -> bool:
    return x is None


def loop_vmap(
    fun: Any, in_axes: Any, out_axes: Any, args: tuple[Any, ...], size: int, **kwargs: Any
) -> Any:
    """The loop vmap replaces: slice every mapped leaf, call ``fun``, stack along ``out_axes``.

    Keyword arguments are sliced along axis 0 when they are tensors, as vmap maps them.
    """
    specs = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)

    def take(spec: Any, arg: Any, i: int) -> Any:
        return fg.tree.map(
            lambda a, sub: sub if a is None else fg.tree.map(lambda x: x.select(a, i), sub),
            spec,
            arg,
            is_leaf=_is_none,
        )

    outs = []
    for i in range(size):
        sliced = tuple(take(s, a, i) for s, a in zip(specs, args))
        kw = {k: v.select(0, i) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        outs.append(fun(*sliced, **kw))

    def stack(a: Any, *subs: Any) -> Any:
        if a is None:
            for s in subs[1:]:  # an unmapped output is the same in every iteration
                assert_trees_allclose(s, subs[0])
            return subs[0]
        return fg.tree.map(lambda *xs: torch.stack(xs).movedim(0, a), *subs)

    return fg.tree.map(stack, out_axes, *outs, is_leaf=_is_none)


# --------------------------------------------------------------------------------------------
# Functions written once for torch and jax.numpy
# --------------------------------------------------------------------------------------------


def one_arg(m: Any, x: Any) -> Any:
    return m.sin(x) * x.sum()


def matmul(m: Any, x: Any, w: Any) -> Any:
    return m.tanh(x @ w)


def elementwise(m: Any, a: Any, b: Any) -> Any:
    return m.sin(a) * b + a**2


def weighted_sum(m: Any, a: Any, w: Any) -> Any:
    return (m.exp(a) * w).sum()


def dict_arg(m: Any, p: Any) -> Any:
    return {"y": p["a"] * p["b"], "s": (p["a"] ** 2).sum()}


def namedtuple_arg(m: Any, p: Any) -> Any:
    return Point(p.x * p.y, m.cos(p.x).sum())


def nested_arg(m: Any, p: Any, x: Any) -> Any:
    w0, w1 = p["w"]
    return ((w0 + w1 + p["b"]) * x).sum(-1), [m.tanh(x)]


def dict_of_two(m: Any, p: Any) -> Any:
    return {"ab": p["a"].sum() * p["b"], "a": m.sin(p["a"])}


def vec_and_mat(m: Any, x: Any) -> Any:
    return {"v": m.sin(x), "mat": x[:, None] * x[None, :]}


def with_constant(m: Any, x: Any, w: Any) -> Any:
    return x * w, {"w2": w**2, "ws": w.sum()}


# name: (fun, in_axes, out_axes, args, size)
CASES: dict[str, tuple[Any, Any, Any, Any, int]] = {
    "default": (one_arg, 0, 0, lambda: (t(4, 3, seed=1),), 4),
    "int_over_all_args": (elementwise, 0, 0, lambda: (t(4, 3, seed=1), t(4, 3, seed=2)), 4),
    "tuple_with_none": (matmul, (0, None), 0, lambda: (t(4, 3, seed=1), t(3, 2, seed=2)), 4),
    "axes_other_than_0": (elementwise, (1, 0), 0, lambda: (t(3, 4, seed=1), t(4, 3, seed=2)), 4),
    "axis_2": (one_arg, 2, 0, lambda: (t(2, 3, 5, seed=1),), 5),
    "negative_axis": (weighted_sum, (-1, None), 0, lambda: (t(3, 4, seed=1), t(3, seed=2)), 4),
    "negative_first_axis": (
        elementwise,
        (-2, -1),
        0,
        lambda: (t(4, 3, seed=1), t(3, 4, seed=2)),
        4,
    ),
    "dict_prefix": (
        dict_arg,
        ({"a": 0, "b": None},),
        0,
        lambda: ({"a": t(4, 3, seed=1), "b": t(3, seed=2)},),
        4,
    ),
    "dict_prefix_axis_1": (
        dict_arg,
        ({"a": 1, "b": 0},),
        0,
        lambda: ({"a": t(3, 4, seed=1), "b": t(4, 3, seed=2)},),
        4,
    ),
    "namedtuple_prefix": (
        namedtuple_arg,
        (Point(1, None),),
        0,
        lambda: (Point(t(3, 4, seed=1), t(3, seed=2)),),
        4,
    ),
    "nested_prefix": (
        nested_arg,
        ({"w": (0, -1), "b": None}, 0),
        0,
        lambda: ({"w": (t(4, 2, seed=1), t(2, 4, seed=2)), "b": t(2, seed=3)}, t(4, 2, seed=4)),
        4,
    ),
    "int_for_whole_tree": (
        dict_of_two,
        1,
        0,
        lambda: ({"a": t(2, 5, seed=1), "b": t(3, 5, seed=2)},),
        5,
    ),
    "out_axes_1": (matmul, (0, None), 1, lambda: (t(4, 3, seed=1), t(3, 2, seed=2)), 4),
    "out_axes_negative": (vec_and_mat, 0, -1, lambda: (t(4, 3, seed=1),), 4),
    "out_axes_prefix": (vec_and_mat, 0, {"v": 1, "mat": -2}, lambda: (t(4, 3, seed=1),), 4),
    "out_axes_none": (
        with_constant,
        (0, None),
        (1, None),
        lambda: (t(4, 3, seed=1), t(3, seed=2)),
        4,
    ),
    "out_axes_none_in_prefix": (
        with_constant,
        (0, None),
        (0, {"w2": None, "ws": 0}),
        lambda: (t(4, 3, seed=1), t(3, seed=2)),
        4,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_jax_and_loop(case: str) -> None:
    """in_axes/out_axes (ints, None, negative, pytree prefixes) act as in jax.vmap and the loop."""
    jax, _ = require_jax()
    fun, in_axes, out_axes, make_args, size = CASES[case]
    f_torch, f_jax = both(fun)
    args = make_args()
    got = fg.vmap(f_torch, in_axes, out_axes)(*args)
    assert_trees_allclose(got, jax.vmap(f_jax, in_axes, out_axes)(*to_jax(args)))
    assert_trees_allclose(got, loop_vmap(f_torch, in_axes, out_axes, args, size))


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 100])
@pytest.mark.parametrize("case", ["tuple_with_none", "nested_prefix", "out_axes_none"])
def test_chunk_size_equals_unchunked(case: str, chunk_size: int) -> None:
    """Chunked equals unchunked, for chunks dividing the size or not, and with out_axes None."""
    fun, in_axes, out_axes, make_args, size = CASES[case]
    f_torch, _ = both(fun)
    args = make_args()
    got = fg.vmap(f_torch, in_axes, out_axes, chunk_size=chunk_size)(*args)
    assert_trees_allclose(got, fg.vmap(f_torch, in_axes, out_axes)(*args))
    assert_trees_allclose(got, loop_vmap(f_torch, in_axes, out_axes, args, size))


def test_keyword_arguments() -> None:
    """Tensor keyword arguments are mapped over axis 0; non-tensor ones pass through unchanged."""
    jax, _ = require_jax()

    def fun(m: Any, x: Any, *, scale: Any, mode: str = "plain", power: int = 1) -> Any:
        y = m.sin(x) * scale**power
        return y * 2 if mode == "double" else y

    f_torch, f_jax = both(fun)
    xs, scales = t(5, 3, seed=1), t(5, seed=2)
    got = fg.vmap(f_torch)(xs, scale=scales, mode="double", power=3)
    expected = loop_vmap(f_torch, 0, 0, (xs,), 5, scale=scales, mode="double", power=3)
    assert_trees_allclose(got, expected)
    f_jax_double = functools.partial(f_jax, mode="double", power=3)
    assert_trees_allclose(got, jax.vmap(f_jax_double)(*to_jax((xs,)), scale=to_jax(scales)))


def test_keyword_arguments_with_unmapped_positional() -> None:
    """Keyword arguments alone set the mapped size when every positional in_axes is None."""
    jax, _ = require_jax()
    f_torch, f_jax = both(matmul)
    x, ws = t(2, 3, seed=1), t(4, 3, 2, seed=2)
    got = fg.vmap(f_torch, in_axes=(None,))(x, w=ws)
    assert_trees_allclose(got, jax.vmap(f_jax, in_axes=(None,))(to_jax(x), w=to_jax(ws)))
    assert_trees_allclose(got, loop_vmap(f_torch, (None,), 0, (x,), 4, w=ws))


@pytest.mark.parametrize("out_axes", [0, 1, -1])
def test_axis_size_when_nothing_is_mapped(out_axes: int) -> None:
    """With every in_axes None, axis_size gives the size and the outputs are broadcast."""
    jax, _ = require_jax()
    f_torch, f_jax = both(matmul)
    args = (t(2, 3, seed=1), t(3, 2, seed=2))
    got = fg.vmap(f_torch, in_axes=None, out_axes=out_axes, axis_size=3)(*args)
    expected = jax.vmap(f_jax, in_axes=None, out_axes=out_axes, axis_size=3)(*to_jax(args))
    assert_trees_allclose(got, expected)
    assert_trees_allclose(got, loop_vmap(f_torch, None, out_axes, args, 3))


def test_axis_size_when_nothing_is_mapped_with_out_axes_none() -> None:
    """Nothing mapped: out_axes None returns the output once, other outputs are broadcast."""
    jax, _ = require_jax()
    f_torch, f_jax = both(with_constant)
    args = (t(3, seed=1), t(3, seed=2))
    got = fg.vmap(f_torch, in_axes=(None, None), out_axes=(0, None), axis_size=2)(*args)
    expected = jax.vmap(f_jax, in_axes=(None, None), out_axes=(0, None), axis_size=2)(*to_jax(args))
    assert_trees_allclose(got, expected)


def test_axis_size_equal_to_mapped_size() -> None:
    """An axis_size that agrees with the mapped arguments is accepted."""
    jax, _ = require_jax()
    f_torch, f_jax = both(one_arg)
    x = t(4, 3, seed=1)
    got = fg.vmap(f_torch, axis_size=4)(x)
    assert_trees_allclose(got, jax.vmap(f_jax, axis_size=4)(to_jax(x)))


def test_empty_mapped_axis() -> None:
    """A mapped axis of size 0 gives outputs with a leading 0, as in JAX."""
    jax, _ = require_jax()
    f_torch, f_jax = both(matmul)
    args = (torch.zeros(0, 3, dtype=torch.float64), t(3, 2, seed=1))
    got = fg.vmap(f_torch, in_axes=(0, None))(*args)
    assert_trees_allclose(got, jax.vmap(f_jax, in_axes=(0, None))(*to_jax(args)))


def test_keeps_metadata() -> None:
    """The vmapped function keeps the name and docstring of the original."""

    def energy(x: torch.Tensor) -> torch.Tensor:
        """The energy."""
        return x**2

    mapped = fg.vmap(energy)
    assert (mapped.__name__, mapped.__doc__) == ("energy", "The energy.")


# --------------------------------------------------------------------------------------------
# Randomness
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("draw", [torch.randn, torch.rand])
def test_randomness_error(draw: Any) -> None:
    """The default randomness="error" refuses random operations inside the function."""
    with pytest.raises(RuntimeError, match=r"randomness error mode"):
        fg.vmap(lambda x: x + draw(3, dtype=x.dtype))(t(4, 3))


def test_randomness_error_when_nothing_is_mapped() -> None:
    """randomness="error" also holds when no argument is mapped (axis_size gives the size)."""
    with pytest.raises(RuntimeError, match=r"randomness error mode"):
        fg.vmap(lambda x: x + torch.randn(3, dtype=x.dtype), in_axes=None, axis_size=4)(t(3))


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_randomness_different(chunk_size: int | None) -> None:
    """randomness="different": every slice draws its own standard normal numbers."""
    n = 2000
    with torch.random.fork_rng():
        torch.manual_seed(0)
        out = fg.vmap(
            lambda x: x + torch.randn(2, dtype=x.dtype),
            randomness="different",
            chunk_size=chunk_size,
        )(torch.zeros(n, 2, dtype=torch.float64))
    assert out.shape == (n, 2)
    assert torch.unique(out).numel() == 2 * n  # no two draws coincide
    # Mean 0 and variance 1 within about 5 standard errors.
    assert out.mean().abs() < 5 / (2 * n) ** 0.5
    assert (out.var() - 1).abs() < 5 * (2 / (2 * n)) ** 0.5


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_randomness_same(chunk_size: int | None) -> None:
    """randomness="same": every slice sees the same random numbers, also across chunks."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        out = fg.vmap(
            lambda x, s: x + s * torch.randn(3, dtype=x.dtype),
            randomness="same",
            chunk_size=chunk_size,
        )(torch.zeros(8, 3, dtype=torch.float64), torch.ones(8, dtype=torch.float64))
    assert torch.unique(out[0]).numel() == 3  # a real draw, not a constant
    assert_trees_allclose(out, out[:1].expand(8, 3))


def test_randomness_different_when_nothing_is_mapped() -> None:
    """randomness="different" with nothing mapped still draws different numbers per slice."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        out = fg.vmap(
            lambda x: x + torch.randn((), dtype=x.dtype),
            in_axes=None,
            axis_size=50,
            randomness="different",
        )(torch.zeros((), dtype=torch.float64))
    assert torch.unique(out).numel() == 50


# --------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------


def pair_dist(m: Any, x: Any, y: Any) -> Any:
    return m.sqrt(((x - y) ** 2).sum() + 1.0)


@pytest.mark.parametrize(
    ("inner_axes", "outer_axes", "inner_out", "outer_out", "shapes_xy"),
    [
        ((0, None), (None, 0), 0, 0, ((4, 3), (5, 3))),
        ((None, 1), (1, None), 0, 1, ((3, 4), (3, 5))),
        ((0, 0), (-1, None), -1, -1, ((5, 3, 2), (5, 3))),
    ],
)
def test_nested_vmap_matches_jax(
    inner_axes: Any, outer_axes: Any, inner_out: int, outer_out: int, shapes_xy: Any
) -> None:
    """vmap(vmap(f)) with different in_axes/out_axes at each level equals JAX's."""
    jax, _ = require_jax()
    f_torch, f_jax = both(pair_dist)
    x, y = t(*shapes_xy[0], seed=1), t(*shapes_xy[1], seed=2)

    def nest(vmap: Any, f: Any) -> Any:
        return vmap(vmap(f, inner_axes, inner_out), outer_axes, outer_out)

    got = nest(fg.vmap, f_torch)(x, y)
    assert_trees_allclose(got, nest(jax.vmap, f_jax)(*to_jax((x, y))))


def test_nested_vmap_matches_loop() -> None:
    """Pairwise distances by vmap(vmap(f)) equal the double loop."""
    f_torch, _ = both(pair_dist)
    x, y = t(4, 3, seed=1), t(5, 3, seed=2)
    got = fg.vmap(fg.vmap(f_torch, (None, 0)), (0, None))(x, y)
    expected = torch.stack([torch.stack([f_torch(a, b) for b in y]) for a in x])
    assert_trees_allclose(got, expected)


@pytest.mark.parametrize("in_axes", [(0, 0), (None, 0), (0, None)])
def test_vmap_of_jvp_matches_jax(in_axes: Any) -> None:
    """vmap(jvp): batches of primals and/or tangents, as in JAX."""
    jax, _ = require_jax()
    f_torch, f_jax = both(vec_and_mat)
    xs, ts = t(4, 3, seed=1), t(4, 3, seed=2)
    x = xs[0]
    args = (xs if in_axes[0] == 0 else x, ts if in_axes[1] == 0 else ts[0])
    got = fg.vmap(lambda p, v: fg.jvp(f_torch, (p,), (v,)), in_axes)(*args)
    jargs = to_jax(args)
    expected = jax.vmap(lambda p, v: jax.jvp(f_jax, (p,), (v,)), in_axes)(*jargs)
    assert_trees_allclose(got, expected)


def mse_loss(m: Any, params: Any, x: Any, y: Any) -> Any:
    pred = m.tanh(x @ params["w"] + params["b"])
    return ((pred - y) ** 2).sum()


def test_per_example_grads_match_jax_and_autograd() -> None:
    """vmap(grad(loss), in_axes=(None, 0, 0)) gives per-example gradients, as in JAX."""
    jax, _ = require_jax()
    f_torch, f_jax = both(mse_loss)
    params = {"w": t(3, 2, seed=1), "b": t(2, seed=2)}
    xs, ys = t(6, 3, seed=3), t(6, 2, seed=4)
    got = fg.vmap(fg.grad(f_torch), in_axes=(None, 0, 0))(params, xs, ys)
    expected = jax.vmap(jax.grad(f_jax), in_axes=(None, 0, 0))(*to_jax((params, xs, ys)))
    assert_trees_allclose(got, expected)

    def autograd_grad(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        p = {k: v.clone().requires_grad_() for k, v in params.items()}
        gw, gb = torch.autograd.grad(f_torch(p, x, y), (p["w"], p["b"]))
        return {"w": gw, "b": gb}

    assert_trees_allclose(got, loop_vmap(autograd_grad, 0, 0, (xs, ys), 6))


@pytest.mark.parametrize("name", ["jacrev", "jacfwd"])
def test_jacobian_inside_vmap_matches_jax(name: str) -> None:
    """vmap(jacrev(f)) and vmap(jacfwd(f)) give per-example Jacobians, as in JAX."""
    jax, _ = require_jax()
    f_torch, f_jax = both(vec_and_mat)
    xs = t(4, 3, seed=1)
    got = fg.vmap(getattr(fg, name)(f_torch))(xs)
    assert_trees_allclose(got, jax.vmap(getattr(jax, name)(f_jax))(to_jax(xs)))


def test_hessian_inside_vmap_matches_jax() -> None:
    """vmap(hessian(f)) gives per-example Hessians of a dict of params, as in JAX."""
    jax, _ = require_jax()
    f_torch, f_jax = both(mse_loss)
    params = {"w": t(3, 2, seed=1), "b": t(2, seed=2)}
    xs, ys = t(4, 3, seed=3), t(4, 2, seed=4)
    got = fg.vmap(fg.hessian(f_torch), in_axes=(None, 0, 0))(params, xs, ys)
    expected = jax.vmap(jax.hessian(f_jax), in_axes=(None, 0, 0))(*to_jax((params, xs, ys)))
    assert_trees_allclose(got, expected)


def test_inner_out_axes_none_depending_on_outer_axis_matches_jax() -> None:
    """An inner out_axes None output may depend on the outer vmap's axis (only not the inner's)."""
    jax, _ = require_jax()

    def inner(m: Any, s: Any, x: Any) -> Any:
        return s * m.sin(x), m.cos(x).sum()

    f_torch, f_jax = both(inner)
    ss, xs = t(2, seed=1), t(4, 3, seed=2)

    def nest(vmap: Any, f: Any, ss: Any, xs: Any) -> Any:
        return vmap(lambda x: vmap(f, (0, None), (0, None))(ss, x))(xs)

    got = nest(fg.vmap, f_torch, ss, xs)
    assert_trees_allclose(got, nest(jax.vmap, f_jax, *to_jax((ss, xs))))


def test_jacrev_of_vmap_matches_jax() -> None:
    """jacrev(vmap(f, in_axes=(0, None)), argnums=1) differentiates through the batch."""
    jax, _ = require_jax()
    f_torch, f_jax = both(matmul)
    xs, w = t(4, 3, seed=1), t(3, 2, seed=2)
    got = fg.jacrev(fg.vmap(f_torch, (0, None)), argnums=1)(xs, w)
    expected = jax.jacrev(jax.vmap(f_jax, (0, None)), argnums=1)(*to_jax((xs, w)))
    assert_trees_allclose(got, expected)


# --------------------------------------------------------------------------------------------
# Hypothesis laws
# --------------------------------------------------------------------------------------------


@st.composite
def mapped_problems(draw: st.DrawFn) -> tuple[tuple[Any, ...], tuple[Any, ...], int, Any]:
    """1-3 tensor arguments, each mapped along a random axis (or not), of one batch size."""
    size = draw(st.integers(1, 4))
    args, axes = [], []
    for _ in range(draw(st.integers(1, 3))):
        shape = draw(shapes(max_dims=2, max_side=3))
        axis = draw(st.one_of(st.none(), st.integers(-len(shape) - 1, len(shape))))
        if axis is not None:
            position = axis % (len(shape) + 1)
            shape = (*shape[:position], size, *shape[position:])
        args.append(t(*shape, seed=draw(seeds)))
        axes.append(axis)
    chunk = draw(st.one_of(st.none(), st.integers(1, size + 1)))
    return tuple(args), tuple(axes), size, chunk


def mix(*args: torch.Tensor) -> Any:
    """Couples every argument with every other and returns a tree of differently shaped outputs."""
    s = sum((torch.sin(a) * a).sum() for a in args)
    return [torch.tanh(a) * s for a in args], {"s": s}


@given(mapped_problems())
def test_vmap_equals_loop(problem: Any) -> None:
    """vmap(f, in_axes)(*xs) == stack([f(*slices) for each index]), chunked or not."""
    args, axes, size, chunk = problem
    nothing_mapped = all(a is None for a in axes)
    mapped = fg.vmap(mix, axes, axis_size=size if nothing_mapped else None, chunk_size=chunk)
    assert_trees_allclose(mapped(*args), loop_vmap(mix, axes, 0, args, size))


@given(shapes(max_dims=3, max_side=3), st.integers(1, 4), seeds, st.data())
def test_out_axes_equals_stack_dim(
    shape: tuple[int, ...], size: int, seed: int, data: st.DataObject
) -> None:
    """vmap(f, out_axes=d)(xs) == torch.stack([f(x) for x in xs], dim=d) for every valid d."""
    out_axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    xs = t(size, *shape, seed=seed)
    got = fg.vmap(lambda x: torch.sin(x) * x.sum(), out_axes=out_axis)(xs)
    expected = torch.stack([torch.sin(x) * x.sum() for x in xs], dim=out_axis)
    assert_trees_allclose(got, expected)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_not_callable() -> None:
    """A non-callable first argument is rejected when vmap is called."""
    with pytest.raises(TypeError, match=r"funcgrad\.vmap: expected a callable .* got int \(3\)"):
        fg.vmap(3)


@pytest.mark.parametrize(
    ("in_axes", "args", "match"),
    [
        (
            ({"a": 0, "c": None},),
            ({"a": t(3), "b": t(3)},),
            r"at args\[0\], the (in|out)_axes has structure PyTreeSpec\(\{'a': \*, 'c': \*\}\) but the "
            r"value has structure PyTreeSpec\(\{'a': \*, 'b': \*\}\)",
        ),
        (
            ({"a": (0, 1), "b": None},),
            ({"a": t(3), "b": t(3)},),
            r"at args\[0\]\['a'\], the (in|out)_axes has structure PyTreeSpec\(\(\*, \*\)\)",
        ),
        (
            (0, Point(0, None)),
            (t(3), (t(3), t(3))),
            r"at args\[1\], the (in|out)_axes has structure PyTreeSpec\(Point\(x=\*, y=\*\)\) but the "
            r"value has structure PyTreeSpec\(\(\*, \*\)\)",
        ),
        (
            {"a": 0},
            ({"a": t(3)},),
            r"at args, the (in|out)_axes has structure PyTreeSpec\(\{'a': \*\}\)",
        ),
    ],
)
def test_in_axes_not_a_prefix(in_axes: Any, args: Any, match: str) -> None:
    """An in_axes that is not a pytree prefix of the arguments names the first mismatching path."""
    with pytest.raises(
        ValueError,
        match=r"funcgrad\.vmap: in_axes must be a pytree prefix of the args, but " + match,
    ):
        fg.vmap(lambda *a: a[0], in_axes)(*args)


def test_in_axes_list() -> None:
    """in_axes must be a tuple at the top level, as in JAX; a list is refused with the fix."""
    with pytest.raises(TypeError, match=r"in_axes must be .* a tuple .* got the list \[0, None\]"):
        fg.vmap(lambda x, y: x, in_axes=[0, None])


@pytest.mark.parametrize(("in_axes", "n"), [((0, None, 0), "3 entries"), ((0,), "1 entries")])
def test_in_axes_wrong_number_of_entries(in_axes: Any, n: str) -> None:
    """A tuple in_axes needs one entry per positional argument."""
    with pytest.raises(
        ValueError,
        match=rf"in_axes has {n} but the function was called with 2 positional arguments",
    ):
        fg.vmap(lambda x, y: x, in_axes)(t(3), t(3))


@pytest.mark.parametrize(
    ("kwarg", "spec", "got"),
    [
        ("in_axes", (0, "a"), r"str \('a'\)"),
        ("in_axes", (0, 1.0), r"float \(1\.0\)"),
        ("in_axes", ({"a": True},), r"bool \(True\)"),
        ("out_axes", {"a": "x"}, r"str \('x'\)"),
        ("out_axes", 0.0, r"float \(0\.0\)"),
    ],
)
def test_axis_spec_leaves_must_be_int_or_none(kwarg: str, spec: Any, got: str) -> None:
    """Every leaf of in_axes and out_axes is an int or None (bools are refused)."""
    with pytest.raises(
        TypeError, match=rf"funcgrad\.vmap: every leaf of {kwarg} must be an int or None, got {got}"
    ):
        fg.vmap(lambda x: x, **{kwarg: spec})


def test_mapped_sizes_differ() -> None:
    """Mapped axes of different sizes: the message lists every mapped path with size and axis."""
    with pytest.raises(
        ValueError,
        match=r"mapped axes must all have the same size, but args\[0\]\['a'\] has size 3 along "
        r"axis 0; args\[1\] has size 4 along axis 1; kwargs\['s'\] has size 5 along axis 0",
    ):
        fg.vmap(lambda p, x, s: x, in_axes=({"a": 0, "b": None}, 1))(
            {"a": t(3, 2), "b": t(7)}, t(2, 4), s=t(5)
        )


@pytest.mark.parametrize("axis", [2, -3])
def test_in_axis_out_of_range(axis: int) -> None:
    """An in_axes beyond the leaf's rank names the leaf, its shape and the valid range."""
    with pytest.raises(
        ValueError,
        match=rf"in_axes={axis} is out of range for the leaf at args\[1\]\['w'\], which is a "
        r"torch\.float64 tensor of shape \(3, 4\) \(valid axes: -2 to 1\)",
    ):
        fg.vmap(lambda x, p: x, in_axes=(0, {"w": axis}))(t(4), {"w": t(3, 4)})


@pytest.mark.parametrize("axis", [2, -3])
def test_out_axis_out_of_range(axis: int) -> None:
    """An out_axes beyond the output's rank gives the valid range."""
    with pytest.raises(
        ValueError,
        match=rf"out_axes={axis} is out of range for the output at output, which has shape "
        rf"\(3,\) per example \(valid out_axes: -2 to 1\)",
    ):
        fg.vmap(lambda x: x * 2, out_axes=axis)(t(4, 3))


def test_out_axes_not_a_prefix() -> None:
    """An out_axes that is not a pytree prefix of the output names the mismatch."""
    with pytest.raises(
        ValueError,
        match=r"out_axes must be a pytree prefix of the output, but at output, the out_axes has "
        r"structure PyTreeSpec\(\(\*, \*, \*\)\)",
    ):
        fg.vmap(lambda x: (x, x), out_axes=(0, 0, 0))(t(4))


@pytest.mark.parametrize("value", [1.0, "text"])
def test_mapping_a_non_tensor_leaf(value: Any) -> None:
    """A mapped leaf that is not a tensor is refused, with the in_axes None fix."""
    with pytest.raises(
        TypeError,
        match=r"in_axes maps the leaf at args\[1\]\[0\] along axis 0, but it is "
        + type(value).__name__
        + r".*only tensors can be mapped",
    ):
        fg.vmap(lambda x, c: x)(t(3), [value])


def test_nothing_mapped_without_axis_size() -> None:
    """With every in_axes None and no axis_size the size is unknown."""
    with pytest.raises(ValueError, match=r"no argument is mapped .* Pass axis_size=\.\.\."):
        fg.vmap(lambda x: x, in_axes=None)(t(3))


def test_axis_size_disagrees() -> None:
    """An axis_size that disagrees with the mapped arguments is refused."""
    with pytest.raises(
        ValueError, match=r"axis_size=4 but the mapped arguments have size 3 along their mapped"
    ):
        fg.vmap(lambda x: x, axis_size=4)(t(3, 2))


@pytest.mark.parametrize("axis_size", [-1, 1.5, True])
def test_bad_axis_size(axis_size: Any) -> None:
    """axis_size must be None or a non-negative int."""
    with pytest.raises(ValueError, match=r"axis_size must be None or a non-negative int, got"):
        fg.vmap(lambda x: x, axis_size=axis_size)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_out_axes_none_for_batched_output(chunk_size: int | None) -> None:
    """out_axes None for an output that depends on the mapped axis names that output."""
    with pytest.raises(
        ValueError,
        match=r"out_axes is None for the output at output\['s'\], but it depends on the "
        r"mapped axis",
    ):
        fg.vmap(
            lambda x: {"y": x, "s": x.sum()}, out_axes={"y": 0, "s": None}, chunk_size=chunk_size
        )(t(4, 3))


def test_bad_randomness() -> None:
    """randomness is one of "error", "different", "same"."""
    with pytest.raises(
        ValueError,
        match=r"randomness must be one of \('error', 'different', 'same'\), got 'random'",
    ):
        fg.vmap(lambda x: x, randomness="random")


@pytest.mark.parametrize("chunk_size", [0, -2, 1.5, True])
def test_bad_chunk_size(chunk_size: Any) -> None:
    """chunk_size must be None or a positive int."""
    with pytest.raises(
        ValueError,
        match=r"funcgrad\.vmap: chunk_size must be None or a positive int, got "
        + repr(chunk_size).replace(".", r"\."),
    ):
        fg.vmap(lambda x: x, chunk_size=chunk_size)


@pytest.mark.parametrize("in_axes", [0, None])
def test_non_tensor_output(in_axes: Any) -> None:
    """Every output leaf must be a tensor; the message names the path (mapped or not)."""
    with pytest.raises(
        TypeError,
        match=r"every leaf of the function's output must be a tensor, but the leaf at "
        r"output\[1\]\['n'\] is int 3",
    ):
        fg.vmap(lambda x: (x, {"n": 3}), in_axes=in_axes, axis_size=4)(t(4))


@pytest.mark.parametrize("in_axes", [0, None])
def test_in_place_mutation_of_an_input_is_an_error(in_axes: int | None) -> None:
    """A function that writes into its (mapped or unmapped) input raises instead of passing."""
    x = t(4, 3)
    before = x.clone()

    def f(x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return x.sum()

    with pytest.raises(
        RuntimeError, match=r"funcgrad\.vmap: the function modified its input at args\[0\] in place"
    ):
        fg.vmap(f, in_axes=in_axes, axis_size=4)(x)
    # The error cannot undo the write; it makes it loud.
    assert torch.equal(x, before * 2)


def test_in_place_on_a_local_copy_is_fine() -> None:
    """In-place operations on tensors the function created itself are allowed."""
    x = t(4, 3)

    def f(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y.mul_(2)
        return y

    assert_trees_allclose(fg.vmap(f)(x), x * 2)
