"""Tests for ``funcgrad.jacfwd``, ``funcgrad.jacrev`` and ``funcgrad.hessian``.

Numbers are checked against JAX (float64, CPU) on the same functions written once for both
libraries (each function takes the array module ``m``: ``torch`` or ``jax.numpy``), and against
``torch.autograd.functional.jacobian`` on flattened trees for the hypothesis laws.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from helpers import Point, require_jax, seeds, shapes, t, to_jax, trees
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad.testing import assert_trees_allclose

TRANSFORMS = ["jacfwd", "jacrev"]


def both(fun: Any) -> tuple[Any, Any]:
    """``fun(m, ...)`` specialised to torch and to jax.numpy."""
    _, jnp = require_jax()
    return functools.partial(fun, torch), functools.partial(fun, jnp)


def jac_pair(name: str) -> tuple[Any, Any]:
    """The funcgrad transform called ``name`` and its JAX counterpart."""
    jax, _ = require_jax()
    return getattr(fg, name), getattr(jax, name)


# --------------------------------------------------------------------------------------------
# Functions written once for torch and jax.numpy
# --------------------------------------------------------------------------------------------


def vec_to_vec(m: Any, x: Any) -> Any:
    return m.sin(x) * x[m.asarray([3, 0, 2, 1])] + x.sum() ** 2


def mat_to_vec(m: Any, x: Any) -> Any:
    return m.tanh(x @ x.T).sum(0) + x[:, 0] ** 3


def scalar_to_scalar(m: Any, x: Any) -> Any:
    return m.exp(m.sin(x)) * x**2


def scalar_to_vec(m: Any, x: Any) -> Any:
    return m.cos(x * m.arange(1.0, 4.0, dtype=x.dtype)) * x


def vec_to_scalar(m: Any, x: Any) -> Any:
    return (m.sin(x) ** 2).sum() * x[0]


def dict_to_scalar(m: Any, p: Any) -> Any:
    h = m.tanh(p["x"] @ p["w"] + p["b"])
    return (h**2).sum() + (p["w"] ** 3).sum() * p["b"][0]


def dict_to_tree(m: Any, p: Any) -> Any:
    h = m.tanh(p["x"] @ p["w"] + p["b"])
    return {"h": h, "stats": (h.sum(), (p["w"] ** 2).mean(0))}


def namedtuple_to_dict(m: Any, p: Any) -> Any:
    return {"r": m.sqrt(p.x**2 + p.y**2), "prod": (p.x * p.y).sum()}


def nested_to_namedtuple(m: Any, p: Any) -> Any:
    a, (b, c) = p["a"], p["bc"]
    u = m.sin(a).sum() * b + c["z"] ** 2
    return Point(u, [a * c["z"].sum(), m.exp(b).mean()])


def two_args(m: Any, p: Any, x: Any) -> Any:
    return {"y": m.tanh(x @ p["w"]) * p["s"], "n": (x**2).sum() * p["s"]}


def three_args(m: Any, a: Any, b: Any, c: Any) -> Any:
    return (m.sin(a) * b).sum() * c + a[0] * b


def dict_params() -> dict[str, torch.Tensor]:
    return {"x": t(2, 3, seed=1), "w": t(3, 4, seed=2), "b": t(4, seed=3)}


CASES = {
    "vec_to_vec": (vec_to_vec, lambda: (t(4, seed=4),)),
    "mat_to_vec": (mat_to_vec, lambda: (t(3, 2, seed=5),)),
    "scalar_to_scalar": (scalar_to_scalar, lambda: (t(seed=6),)),
    "scalar_to_vec": (scalar_to_vec, lambda: (t(seed=7),)),
    "vec_to_scalar": (vec_to_scalar, lambda: (t(5, seed=8),)),
    "dict_to_scalar": (dict_to_scalar, lambda: (dict_params(),)),
    "dict_to_tree": (dict_to_tree, lambda: (dict_params(),)),
    "namedtuple_to_dict": (namedtuple_to_dict, lambda: (Point(t(3, seed=9), t(3, seed=10)),)),
    "nested_to_namedtuple": (
        nested_to_namedtuple,
        lambda: ({"a": t(2, seed=11), "bc": (t(3, seed=12), {"z": t(3, seed=13)})},),
    ),
}


# --------------------------------------------------------------------------------------------
# Numerics against JAX
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", TRANSFORMS)
def test_matches_jax(name: str, case: str) -> None:
    """Values and layout (output tree outside, input inside, out.shape + in.shape) are JAX's."""
    fg_jac, jax_jac = jac_pair(name)
    fun, make_args = CASES[case]
    f_torch, f_jax = both(fun)
    args = make_args()
    assert_trees_allclose(fg_jac(f_torch)(*args), jax_jac(f_jax)(*to_jax(args)))


@pytest.mark.parametrize(
    ("fun", "argnums"),
    [
        (two_args, 0),
        (two_args, 1),
        (two_args, -1),
        (two_args, -2),
        (two_args, (0, 1)),
        (two_args, (1, 0)),
        (two_args, (-1,)),
        (three_args, (0, 2)),
        (three_args, (2, -3)),
        (three_args, (-1, 1, 0)),
    ],
)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_argnums_matches_jax(name: str, fun: Any, argnums: Any) -> None:
    """int, tuple and negative argnums pick and order the blocks as in JAX."""
    fg_jac, jax_jac = jac_pair(name)
    f_torch, f_jax = both(fun)
    if fun is two_args:
        args: tuple[Any, ...] = ({"w": t(3, 2, seed=1), "s": t(seed=2)}, t(4, 3, seed=3))
    else:
        args = (t(3, seed=4), t(3, seed=5), t(seed=6))
    expected = jax_jac(f_jax, argnums=argnums)(*to_jax(args))
    assert_trees_allclose(fg_jac(f_torch, argnums=argnums)(*args), expected)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_non_differentiated_args_and_kwargs_pass_through(name: str) -> None:
    """Integer and non-tensor arguments outside argnums, and keyword arguments, are constants."""
    fg_jac, jax_jac = jac_pair(name)

    def fun(m: Any, x: Any, idx: Any, power: int, *, scale: Any) -> Any:
        return x[idx] ** power * scale

    f_torch, f_jax = both(fun)
    x, idx, scale = t(5, seed=1), torch.tensor([4, 0, 2]), t(3, seed=2)
    got = fg_jac(f_torch)(x, idx, 3, scale=scale)
    expected = jax_jac(f_jax)(*to_jax((x, idx)), 3, scale=to_jax(scale))
    assert_trees_allclose(got, expected)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_has_aux(name: str) -> None:
    """has_aux returns (jacobian, aux); aux keeps its tree, tensor values and non-tensor leaves."""
    fg_jac, jax_jac = jac_pair(name)

    def fun(m: Any, p: Any) -> Any:
        out = dict_to_tree(m, p)
        return out, {"h": out["h"], "norm": (p["w"] ** 2).sum()}

    f_torch, f_jax = both(fun)
    p = dict_params()
    jac, aux = fg_jac(f_torch, has_aux=True)(p)
    jac_expected, aux_expected = jax_jac(f_jax, has_aux=True)(to_jax(p))
    assert_trees_allclose(jac, jac_expected)
    assert_trees_allclose(aux, aux_expected)

    def with_static_aux(x: torch.Tensor) -> Any:
        return torch.sin(x), {"tag": "label", "count": 3, "sum": x.sum()}

    x = t(3, seed=1)
    jac, aux = fg_jac(with_static_aux, has_aux=True)(x)
    assert_trees_allclose(jac, torch.diag(torch.cos(x)))
    assert_trees_allclose(aux, {"tag": "label", "count": 3, "sum": x.sum()})


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 1000])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_chunk_size_equals_unchunked(name: str, chunk_size: int) -> None:
    """Chunked Jacobians (chunks smaller than, not dividing, and larger than the size) are equal."""
    fg_jac, jax_jac = jac_pair(name)
    f_torch, f_jax = both(two_args)
    args = ({"w": t(3, 2, seed=1), "s": t(seed=2)}, t(4, 3, seed=3))
    for argnums in (0, (0, 1)):
        chunked = fg_jac(f_torch, argnums=argnums, chunk_size=chunk_size)(*args)
        assert_trees_allclose(chunked, fg_jac(f_torch, argnums=argnums)(*args))
        assert_trees_allclose(chunked, jax_jac(f_jax, argnums=argnums)(*to_jax(args)))


@pytest.mark.parametrize("chunk_size", [1, 2, 1000])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_chunk_size_with_has_aux(name: str, chunk_size: int) -> None:
    """chunk_size and has_aux together: the same Jacobian and aux as without chunks."""
    fg_jac = getattr(fg, name)

    def fun(x: torch.Tensor) -> Any:
        return torch.sin(x) * x.sum(), {"s": x.sum()}

    x = t(5, seed=1)
    got = fg_jac(fun, has_aux=True, chunk_size=chunk_size)(x)
    assert_trees_allclose(got, fg_jac(fun, has_aux=True)(x))
    assert_trees_allclose(got[0], torch.autograd.functional.jacobian(lambda y: fun(y)[0], x))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_empty_input_matches_jax(name: str) -> None:
    """A zero-element input gives empty blocks of shape out.shape + (0,), as in JAX."""
    fg_jac, jax_jac = jac_pair(name)

    def fun(m: Any, x: Any, y: Any) -> Any:
        return m.sin(y) * x.sum()

    f_torch, f_jax = both(fun)
    args = (torch.zeros(0, dtype=torch.float64), t(3, seed=1))
    got = fg_jac(f_torch, argnums=(0, 1))(*args)
    assert_trees_allclose(got, jax_jac(f_jax, argnums=(0, 1))(*to_jax(args)))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_keeps_metadata(name: str) -> None:
    """The transformed function keeps the name and docstring of the original."""

    def energy(x: torch.Tensor) -> torch.Tensor:
        """The energy."""
        return x**2

    jac = getattr(fg, name)(energy)
    assert (jac.__name__, jac.__doc__) == ("energy", "The energy.")
    assert fg.hessian(energy).__name__ == "energy"


# --------------------------------------------------------------------------------------------
# Hessians and nested Jacobians
# --------------------------------------------------------------------------------------------


def test_hessian_of_dict_params_matches_jax() -> None:
    """hessian of a function of a dict of params is a dict of dicts of p[k1].shape + p[k2].shape."""
    jax, _ = require_jax()
    f_torch, f_jax = both(dict_to_scalar)
    p = dict_params()
    H = fg.hessian(f_torch)(p)
    assert_trees_allclose(H, jax.hessian(f_jax)(to_jax(p)))
    assert H["x"]["w"].shape == (2, 3, 3, 4)


@pytest.mark.parametrize("argnums", [0, 1, (0, 1), (1, -2)])
def test_hessian_argnums_matches_jax(argnums: Any) -> None:
    """hessian with int, tuple and negative argnums nests blocks as jax.hessian does."""
    jax, _ = require_jax()

    def fun(m: Any, p: Any, x: Any) -> Any:
        return (m.tanh(x @ p["w"]) * p["s"]).sum() ** 2

    f_torch, f_jax = both(fun)
    args = ({"w": t(3, 2, seed=1), "s": t(seed=2)}, t(4, 3, seed=3))
    got = fg.hessian(f_torch, argnums=argnums)(*args)
    assert_trees_allclose(got, jax.hessian(f_jax, argnums=argnums)(*to_jax(args)))


def test_hessian_has_aux_matches_jax() -> None:
    """hessian(has_aux=True) returns (hessian, aux) like jax.hessian."""
    jax, _ = require_jax()

    def fun(m: Any, x: Any) -> Any:
        return (m.sin(x) ** 3).sum(), {"x2": x**2}

    f_torch, f_jax = both(fun)
    x = t(4, seed=1)
    assert_trees_allclose(
        fg.hessian(f_torch, has_aux=True)(x), jax.hessian(f_jax, has_aux=True)(to_jax(x))
    )


@pytest.mark.parametrize("outer", TRANSFORMS)
@pytest.mark.parametrize("inner", TRANSFORMS)
def test_nested_jacobians_match_jax(outer: str, inner: str) -> None:
    """jacfwd(jacrev(f)) and every other pairing give JAX's third-order tensor on a pytree."""
    fg_outer, jax_outer = jac_pair(outer)
    fg_inner, jax_inner = jac_pair(inner)
    f_torch, f_jax = both(namedtuple_to_dict)
    p = Point(t(3, seed=1), t(3, seed=2))
    got = fg_outer(fg_inner(f_torch))(p)
    assert_trees_allclose(got, jax_outer(jax_inner(f_jax))(to_jax(p)))


def test_hessian_equals_jacfwd_of_jacrev_of_scalar_function() -> None:
    """On a scalar input the Hessian is a scalar and equals the second derivative."""
    jax, _ = require_jax()
    f_torch, f_jax = both(scalar_to_scalar)
    x = t(seed=3)
    H = fg.hessian(f_torch)(x)
    assert H.shape == ()
    assert_trees_allclose(H, jax.grad(jax.grad(f_jax))(to_jax(x)))
    assert_trees_allclose(H, fg.jacfwd(fg.jacrev(f_torch))(x))


# --------------------------------------------------------------------------------------------
# Hypothesis laws
# --------------------------------------------------------------------------------------------

small_tensors = st.tuples(shapes(max_dims=2, max_side=3), seeds).map(lambda s: t(*s[0], seed=s[1]))
small_trees = trees(small_tensors, max_leaves=4).filter(lambda tree: len(fg.tree.leaves(tree)) > 0)


def tree_fun(tree: Any) -> Any:
    """Couples every leaf with every other; returns a tree of the input's structure and a scalar."""
    s = sum((torch.sin(x) * x).sum() for x in fg.tree.leaves(tree))
    return fg.tree.map(lambda x: torch.tanh(x) * s + x**2, tree), s


def flat_jacobian(fun: Any, tree: Any) -> list[torch.Tensor]:
    """Blocks d out_i / d in_j in (i, j) order, from torch.autograd on the flattened tree."""
    leaves, treedef = fg.tree.flatten(tree)
    sizes = [x.numel() for x in leaves]

    def flat(v: torch.Tensor) -> torch.Tensor:
        parts = [p.reshape(x.shape) for p, x in zip(v.split(sizes), leaves)]
        outs = fg.tree.leaves(fun(fg.tree.unflatten(treedef, parts)))
        return torch.cat([o.reshape(-1) for o in outs])

    full = torch.autograd.functional.jacobian(flat, torch.cat([x.reshape(-1) for x in leaves]))
    outs = fg.tree.leaves(fun(tree))
    rows = full.split([o.numel() for o in outs], dim=0)
    return [
        block.reshape((*o.shape, *x.shape))
        for row, o in zip(rows, outs)
        for block, x in zip(row.split(sizes, dim=1), leaves)
    ]


@settings(max_examples=20)
@given(small_trees)
def test_jacfwd_equals_jacrev_on_random_trees(tree: Any) -> None:
    """jacfwd(f) == jacrev(f) == torch.autograd's Jacobian, blocks nested output-outside."""
    fwd = fg.jacfwd(tree_fun)(tree)
    rev = fg.jacrev(tree_fun)(tree)
    assert_trees_allclose(fwd, rev)
    # The result has the output's structure with every output leaf replaced by the input's tree.
    out_def = fg.tree.structure(tree_fun(tree))
    in_def = fg.tree.structure(tree)
    assert fg.tree.structure(fwd) == out_def.compose(in_def)
    assert_trees_allclose(fg.tree.leaves(fwd), flat_jacobian(tree_fun, tree))


@settings(max_examples=15)
@given(small_trees)
def test_hessian_is_symmetric_on_random_trees(tree: Any) -> None:
    """H[i][j] equals H[j][i] with its input and output axes swapped, and matches autograd."""

    def scalar(tr: Any) -> torch.Tensor:
        leaves = fg.tree.leaves(tr)
        s = sum(torch.sin(x).sum() for x in leaves)
        return s**2 + sum((x**3).sum() for x in leaves)

    leaves = fg.tree.leaves(tree)
    n = len(leaves)
    blocks = fg.tree.leaves(fg.hessian(scalar)(tree))
    assert len(blocks) == n * n
    for i, xi in enumerate(leaves):
        for j, xj in enumerate(leaves):
            hij, hji = blocks[i * n + j], blocks[j * n + i]
            swapped = hji.permute((*range(xj.dim(), xj.dim() + xi.dim()), *range(xj.dim())))
            assert_trees_allclose(hij, swapped)
    reference = flat_jacobian(lambda tr: fg.grad(scalar)(tr), tree)
    assert_trees_allclose(blocks, reference)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*TRANSFORMS, "hessian"])
def test_not_callable(name: str) -> None:
    """A non-callable first argument is rejected when the transform is built."""
    with pytest.raises(TypeError, match=rf"funcgrad\.{name}: expected a callable .* got int \(3\)"):
        getattr(fg, name)(3)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_integer_input(name: str) -> None:
    """Integer leaves cannot be differentiated; the message names the path and dtype."""
    with pytest.raises(
        TypeError,
        match=rf"funcgrad\.{name}: can only differentiate floating-point tensors, but the leaf at "
        r"args\[0\]\['i'\] is a torch\.int64 tensor of shape \(3,\)\. Cast it",
    ):
        getattr(fg, name)(lambda p: p["i"] * p["x"])({"i": torch.arange(3), "x": t(3)})


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: fg.hessian(lambda x: x.sum(), argnums=()), ValueError, "argnums is an empty"),
        (
            lambda: fg.hessian(lambda x: (x**2).sum())(torch.arange(3)),
            TypeError,
            r"can only differentiate floating-point tensors, but the leaf at args\[0\]",
        ),
    ],
    ids=["empty_argnums", "integer_input"],
)
def test_hessian_errors_name_hessian(make: Any, error: type, match: str) -> None:
    """Errors raised through hessian name funcgrad.hessian, the API the user called."""
    with pytest.raises(error, match=rf"funcgrad\.hessian: {match}"):
        make()


@pytest.mark.parametrize("name", TRANSFORMS)
def test_non_tensor_input(name: str) -> None:
    """A Python number in a differentiated argument is rejected with its path."""
    with pytest.raises(
        TypeError,
        match=rf"funcgrad\.{name}: can only differentiate tensors, but the leaf at args\[0\]\[1\] "
        r"is float 1\.0",
    ):
        getattr(fg, name)(lambda p: p[0] * p[1])((t(3), 1.0))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_no_tensors_to_differentiate(name: str) -> None:
    """A differentiated argument without leaves is an error, not an empty Jacobian."""
    with pytest.raises(ValueError, match=r"positions \(0,\)\) contain no tensors"):
        getattr(fg, name)(lambda p, x: x * 2)((), t(3))


@pytest.mark.parametrize(
    ("argnums", "error", "match"),
    [
        ("a", TypeError, r"argnums must be an int or a tuple of ints, got str \('a'\)"),
        (1.5, TypeError, r"argnums must be an int or a tuple of ints, got float \(1\.5\)"),
        (True, TypeError, r"argnums must be an int or a tuple of ints, got bool \(True\)"),
        ((0, "1"), TypeError, r"argnums must be an int or a tuple of ints"),
        ((), ValueError, r"argnums is an empty tuple"),
        ((0, 0), ValueError, r"argnums must not repeat a position, got \(0, 0\)"),
    ],
)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_bad_argnums_at_creation(name: str, argnums: Any, error: type, match: str) -> None:
    """argnums of the wrong type, empty or repeated are rejected when the transform is built."""
    with pytest.raises(error, match=rf"funcgrad\.{name}: {match}"):
        getattr(fg, name)(lambda x, y: x * y, argnums=argnums)


@pytest.mark.parametrize(
    ("argnums", "match"),
    [
        (2, r"argnums=2 is out of range for a call with 2 positional arguments"),
        (-3, r"argnums=-3 is out of range for a call with 2 positional arguments"),
        ((0, -2), r"argnums=\(0, -2\) names the same position twice .* \(positions \(0, 0\)\)"),
    ],
)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_bad_argnums_at_call(name: str, argnums: Any, match: str) -> None:
    """argnums out of range, or naming one position twice, is caught with the call's arity."""
    with pytest.raises(ValueError, match=rf"funcgrad\.{name}: {match}"):
        getattr(fg, name)(lambda x, y: x * y, argnums=argnums)(t(2), t(2))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_argnums_of_keyword_argument(name: str) -> None:
    """A differentiated argument passed by keyword is not positional: the hint says so."""
    with pytest.raises(ValueError, match=r"must be passed positionally"):
        getattr(fg, name)(lambda x, y: x * y, argnums=1)(t(2), y=t(2))


@pytest.mark.parametrize("chunk_size", [0, -1, 1.5, True, "2"])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_bad_chunk_size(name: str, chunk_size: Any) -> None:
    """chunk_size must be None or a positive int."""
    with pytest.raises(
        ValueError,
        match=rf"funcgrad\.{name}: chunk_size must be None or a positive int, got "
        + repr(chunk_size).replace(".", r"\."),
    ):
        getattr(fg, name)(lambda x: x, chunk_size=chunk_size)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_non_tensor_output(name: str) -> None:
    """Every output leaf must be a tensor; the message names the offending path."""
    with pytest.raises(
        TypeError,
        match=rf"funcgrad\.{name}: every leaf of the function's output must be a tensor, but the "
        r"leaf at output\['n'\] is int 3",
    ):
        getattr(fg, name)(lambda x: {"n": 3, "x": x})(t(3))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_integer_output(name: str) -> None:
    """An integer output has no Jacobian (as in JAX); both modes reject it with funcgrad's error.

    jacrev fails inside torch.func with torch's message and jacfwd returns integer zeros, so the
    two modes disagree; see the report to the lead.
    """
    with pytest.raises(TypeError, match=rf"funcgrad\.{name}: .*output.*torch\.int64"):
        getattr(fg, name)(lambda x: (x > 0).long())(t(3))


@pytest.mark.parametrize(
    ("returned", "got"),
    [(lambda x: x, r"a torch\.float64 tensor of shape \(3,\)"), (lambda x: (x, x, x), "length 3")],
)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_has_aux_needs_a_pair(name: str, returned: Any, got: str) -> None:
    """has_aux=True with a function that does not return a pair says what it returned."""
    with pytest.raises(
        TypeError, match=rf"funcgrad\.{name}: with has_aux=True .* pair \(output, aux\), .*{got}"
    ):
        getattr(fg, name)(returned, has_aux=True)(t(3))


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("jacrev", "a differentiated input"),
        ("jacfwd", r"its input at args\[0\] in place, so the caller's tensor has changed"),
        ("hessian", "a differentiated input"),
    ],
)
def test_in_place_write_into_an_input_is_an_error(name: str, where: str) -> None:
    """Every Jacobian transform names itself when the function writes into its input."""

    def f(x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return x.sum() if name == "hessian" else x

    with pytest.raises(RuntimeError, match=rf"funcgrad\.{name}: the function modified {where}"):
        getattr(fg, name)(f)(torch.ones(3, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# jacrev on funcgrad's vjp (NOTE [jacrev on funcgrad's vjp]): bitwise torch.func.jacrev
# --------------------------------------------------------------------------------------------


def _bitwise(a: Any, b: Any) -> None:
    la, ta = fg.tree.flatten(a)
    lb, tb = fg.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype
        assert x.shape == y.shape
        assert torch.equal(x, y)


def _several(x: torch.Tensor, y: torch.Tensor) -> Any:
    return torch.sin(x) * y.sum(), (x[:, None] * y).exp(), (x * x).sum()


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        pytest.param(fg.jacrev, torch.func.jacrev, id="jacrev"),
        # jacfwd's tangents go through funcgrad's jvp engine (NOTE [jvp without torch's pytree])
        pytest.param(fg.jacfwd, torch.func.jacfwd, id="jacfwd"),
    ],
)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), argnums=st.sampled_from([0, 1, (0, 1), (1, 0)]))
def test_eager_jacobian_is_bitwise_torch_func(
    ours: Any, theirs: Any, seed: int, argnums: Any
) -> None:
    """Several inputs and outputs (a vector, a matrix, a scalar), every argnums form."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, dtype=torch.float64, generator=g)
    y = torch.randn(2, dtype=torch.float64, generator=g)
    _bitwise(ours(_several, argnums)(x, y), theirs(_several, argnums)(x, y))


def test_eager_jacrev_edge_cases_are_bitwise_torch_func() -> None:
    x = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # an output with no elements, and one of another dtype
    f = lambda x: (x[:0] * 2, (x * x).float(), x.sin())  # noqa: E731
    _bitwise(fg.jacrev(f)(x), torch.func.jacrev(f)(x))
    # has_aux
    h = lambda x: (x.exp(), x.sum())  # noqa: E731
    _bitwise(fg.jacrev(h, has_aux=True)(x), torch.func.jacrev(h, has_aux=True)(x))
    # composed: vmap of jacrev, jacrev of jacrev, hessian
    xs = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    k = lambda x: torch.tanh(x) * x.sum()  # noqa: E731
    _bitwise(fg.vmap(fg.jacrev(k))(xs), torch.func.vmap(torch.func.jacrev(k))(xs))
    _bitwise(fg.jacrev(fg.jacrev(k))(x), torch.func.jacrev(torch.func.jacrev(k))(x))
    s = lambda x: (torch.sin(x) * x).sum()  # noqa: E731
    _bitwise(fg.hessian(s)(x), torch.func.hessian(s)(x))


def test_chunked_jacrev_is_torch_funcs_and_equals_the_eager_one() -> None:
    x = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    k = lambda x: torch.tanh(x) * x.sum()  # noqa: E731
    for chunk in (1, 2):
        _bitwise(fg.jacrev(k, chunk_size=chunk)(x), torch.func.jacrev(k, chunk_size=chunk)(x))
    torch.testing.assert_close(fg.jacrev(k, chunk_size=2)(x), fg.jacrev(k)(x), rtol=0, atol=1e-15)
