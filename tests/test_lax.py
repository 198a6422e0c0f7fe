"""funcgrad.lax against jax.lax (float64, CPU): values and derivatives in eager mode, under
grad, vjp, jvp, vmap and jit; carry and branch checks; while_loop's forward-only rule."""

from __future__ import annotations

from typing import Any

import helpers
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import lax
from funcgrad.testing import assert_trees_allclose

AOT = "aot_eager"
W = helpers.t(3, 3, seed=1) * 0.4
U = helpers.t(3, 2, seed=2) * 0.5


def jax_mods() -> tuple[Any, Any, Any]:
    jax, jnp = helpers.require_jax()
    return jax, jnp, jax.lax


def rnn_step(m: Any, w: Any, u: Any) -> Any:
    """An RNN step for torch (``m`` is torch) or JAX (``m`` is jax.numpy)."""

    def step(carry: Any, x: Any) -> Any:
        h = m.tanh(carry["h"] @ w + x["x"] @ u.T)
        return {"h": h, "n": carry["n"] + 1}, (h.sum() * x["s"], h)

    return step


def scan_loss(m: Any, scan_fn: Any, w: Any, u: Any, reverse: bool) -> Any:
    def loss(h0: Any, xs: Any) -> Any:
        carry, (s, hs) = scan_fn(rnn_step(m, w, u), {"h": h0, "n": 0 * h0[0]}, xs, reverse=reverse)
        return (carry["h"] ** 2).sum() + (s**2).sum() + hs[1].sum()

    return loss


def rnn_inputs() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return helpers.t(3, seed=3), {"x": helpers.t(5, 2, seed=4), "s": helpers.t(5, seed=5)}


# --------------------------------------------------------------------------------------------
# scan
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_values_and_gradients_equal_jax(reverse: bool) -> None:
    """Carry, stacked outputs and gradients (both arguments) equal jax.lax.scan's."""
    jax, jnp, jlax = jax_mods()
    h0, xs = rnn_inputs()
    step = rnn_step(torch, W, U)
    out = lax.scan(
        step, {"h": h0, "n": torch.tensor(0.0, dtype=torch.float64)}, xs, reverse=reverse
    )
    jstep = rnn_step(jnp, *helpers.to_jax((W, U)))
    jout = jlax.scan(
        jstep, {"h": helpers.to_jax(h0), "n": 0.0}, helpers.to_jax(xs), reverse=reverse
    )
    assert_trees_allclose(out, helpers.to_torch(jout))
    loss = scan_loss(torch, lax.scan, W, U, reverse)
    jloss = scan_loss(jnp, jlax.scan, *helpers.to_jax((W, U)), reverse)
    g = fg.grad(loss, argnums=(0, 1))(h0, xs)
    jg = jax.grad(jloss, argnums=(0, 1))(*helpers.to_jax((h0, xs)))
    assert_trees_allclose(g, helpers.to_torch(jg))


def test_scan_vjp_jvp_and_vmap_equal_jax() -> None:
    """vjp, jvp and vmap (over h0) of a scan equal JAX's."""
    jax, jnp, jlax = jax_mods()
    h0, xs = rnn_inputs()
    loss = scan_loss(torch, lax.scan, W, U, False)
    jloss = scan_loss(jnp, jlax.scan, *helpers.to_jax((W, U)), False)
    jh0, jxs = helpers.to_jax((h0, xs))
    _, vjp_fn = fg.vjp(loss, h0, xs)
    _, jvjp_fn = jax.vjp(jloss, jh0, jxs)
    one = torch.tensor(1.0, dtype=torch.float64)
    assert_trees_allclose(vjp_fn(one), helpers.to_torch(jvjp_fn(jnp.asarray(1.0))))
    tangents = (helpers.t(3, seed=6), fg.tree.map(lambda x: x * 0.5 + 1, xs))
    out = fg.jvp(loss, (h0, xs), tangents)
    jout = jax.jvp(jloss, (jh0, jxs), helpers.to_jax(tangents))
    assert_trees_allclose(out, helpers.to_torch(jout))
    batch = helpers.t(4, 3, seed=7)
    got = fg.vmap(fg.grad(loss), in_axes=(0, None))(batch, xs)
    want = jax.vmap(jax.grad(jloss), in_axes=(0, None))(helpers.to_jax(batch), jxs)
    assert_trees_allclose(got, helpers.to_torch(want))


def test_scan_length_without_xs_empty_scan_and_none_outputs() -> None:
    """xs=None with length; length 0 gives empty ys shaped like y; y=None stacks to None."""
    _, _, jlax = jax_mods()
    one = torch.tensor(1.0, dtype=torch.float64)
    carry, ys = lax.scan(lambda c, _: (c * 2, c), one, None, length=4)
    jc, jys = jlax.scan(lambda c, _: (c * 2, c), 1.0, None, length=4)
    assert_trees_allclose((carry, ys), helpers.to_torch((jc, jys)), rtol=0, atol=0)
    c0, ys0 = lax.scan(
        lambda c, x: (c + x.sum(), {"a": x * c}), torch.tensor(1.0), torch.ones(0, 2)
    )
    assert float(c0) == 1.0
    assert ys0["a"].shape == (0, 2)
    c1, none = lax.scan(lambda c, x: (c + x, None), torch.tensor(0.0), torch.arange(4.0))
    assert none is None
    assert float(c1) == 6.0


@settings(max_examples=15)
@given(
    tree=helpers.nonempty_trees(),
    length=st.integers(0, 4),
    reverse=st.booleans(),
    seed=helpers.seeds,
)
def test_scan_equals_the_python_loop(tree: Any, length: int, reverse: bool, seed: int) -> None:
    """For any pytree carry, scan equals the loop it documents (reverse: from the end)."""
    xs = helpers.t(length, seed=seed)

    def step(c: Any, x: torch.Tensor) -> Any:
        c = fg.tree.map(lambda a: torch.sin(a) + x, c)
        return c, fg.tree.map(lambda a: a.sum() * x, c)

    carry, ys = lax.scan(step, tree, xs, reverse=reverse)
    c, outs = tree, []
    for i in reversed(range(length)) if reverse else range(length):
        c, y = step(c, xs[i])
        outs.append(y)
    if reverse:
        outs.reverse()
    assert_trees_allclose(carry, c, rtol=0, atol=0)
    if length:
        assert_trees_allclose(ys, fg.tree.stack(outs), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# cond and switch
# --------------------------------------------------------------------------------------------


def cond_fn(m: Any, lax_cond: Any) -> Any:
    """A cond whose true branch contains x @ x.mT (what torch.cond cannot trace)."""

    def f(x: Any) -> Any:
        y = x.reshape(2, 2)
        return lax_cond(x.sum() > 0, lambda y: (y @ y.T).sum() * 2, lambda y: m.sin(y).sum(), y)

    return f


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cond_values_gradients_and_jvp_equal_jax(sign: float) -> None:
    """Each branch (concrete predicate): value, grad and jvp equal jax.lax.cond's."""
    jax, jnp, jlax = jax_mods()
    x = helpers.t(4, seed=8).abs() * sign
    f, jf = cond_fn(torch, lax.cond), cond_fn(jnp, jlax.cond)
    jx = helpers.to_jax(x)
    assert_trees_allclose(fg.value_and_grad(f)(x), helpers.to_torch(jax.value_and_grad(jf)(jx)))
    tx = helpers.t(4, seed=9)
    got = fg.jvp(f, (x,), (tx,))
    assert_trees_allclose(got, helpers.to_torch(jax.jvp(jf, (jx,), (helpers.to_jax(tx),))))


def test_cond_with_batched_predicate_selects_per_example() -> None:
    """vmap(cond) and vmap(grad(cond)) over examples taking both branches equal JAX's."""
    jax, jnp, jlax = jax_mods()
    xs = helpers.t(6, 4, seed=10)
    f, jf = cond_fn(torch, lax.cond), cond_fn(jnp, jlax.cond)
    jxs = helpers.to_jax(xs)
    assert_trees_allclose(fg.vmap(f)(xs), helpers.to_torch(jax.vmap(jf)(jxs)))
    assert_trees_allclose(fg.vmap(fg.grad(f))(xs), helpers.to_torch(jax.vmap(jax.grad(jf))(jxs)))


@settings(max_examples=10)
@given(xs=helpers.tensors(shape=(5, 3)))
def test_cond_under_vmap_equals_the_per_example_loop(xs: torch.Tensor) -> None:
    """vmap of a cond on per-example predicates equals calling it on each example."""

    def f(x: torch.Tensor, k: torch.Tensor) -> Any:
        return lax.cond(x[0] > k, lambda x: {"a": x.exp()}, lambda x: {"a": x * k}, x)

    k = torch.tensor(0.1, dtype=torch.float64)
    loop = fg.tree.stack([f(x, k) for x in xs])
    assert_trees_allclose(fg.vmap(f, in_axes=(0, None))(xs, k), loop, rtol=0, atol=0)


def test_switch_clamps_and_matches_jax_batched_and_concrete() -> None:
    """Concrete and batched indices (out of range ones clamped) and gradients equal JAX's."""
    jax, jnp, jlax = jax_mods()
    idx = torch.tensor([-3, 0, 1, 2, 9])
    xs = helpers.t(5, 2, seed=11)

    def f(m: Any, sw: Any) -> Any:
        def g(i: Any, x: Any) -> Any:
            return sw(i, [lambda x: m.sin(x).sum(), lambda x: (x**2).sum(), lambda x: x[0]], x)

        return g

    tf, jf = f(torch, lax.switch), f(jnp, jlax.switch)
    jidx, jxs = helpers.to_jax((idx, xs))
    for i in range(5):  # concrete: one branch runs
        assert_trees_allclose(tf(int(idx[i]), xs[i]), helpers.to_torch(jf(int(idx[i]), jxs[i])))
    assert_trees_allclose(fg.vmap(tf)(idx, xs), helpers.to_torch(jax.vmap(jf)(jidx, jxs)))
    got = fg.vmap(fg.grad(tf, argnums=1))(idx, xs)
    assert_trees_allclose(got, helpers.to_torch(jax.vmap(jax.grad(jf, argnums=1))(jidx, jxs)))


# --------------------------------------------------------------------------------------------
# while_loop and fori_loop
# --------------------------------------------------------------------------------------------


def newton_sqrt(m: Any, wl: Any) -> Any:
    """sqrt(a) by Newton's method until converged: a data-dependent number of steps."""

    def f(a: Any) -> Any:
        def body(v: Any) -> Any:
            x, i = v
            return 0.5 * (x + a / x), i + 1

        return wl(lambda v: (m.abs(v[0] ** 2 - a) > 1e-10) & (v[1] < 50), body, (a + 1.0, 0))[0]

    return f


def test_while_loop_values_jvp_and_vmap_equal_jax() -> None:
    """Values, jvp (forward mode) and a batched predicate (run until all done) equal JAX's."""
    jax, jnp, jlax = jax_mods()
    f, jf = newton_sqrt(torch, lax.while_loop), newton_sqrt(jnp, jlax.while_loop)
    a = torch.tensor(2.0, dtype=torch.float64)
    ja = helpers.to_jax(a)
    assert_trees_allclose(f(a), helpers.to_torch(jf(ja)))
    one = torch.tensor(1.0, dtype=torch.float64)
    assert_trees_allclose(fg.jvp(f, (a,), (one,)), helpers.to_torch(jax.jvp(jf, (ja,), (1.0,))))
    batch = torch.tensor([0.5, 4.0, 100.0], dtype=torch.float64)
    assert_trees_allclose(fg.vmap(f)(batch), helpers.to_torch(jax.vmap(jf)(helpers.to_jax(batch))))
    counts = fg.vmap(lambda n: lax.while_loop(lambda i: i < n, lambda i: i + 1, 0))
    assert counts(torch.tensor([1, 3, 0])).tolist() == [1, 3, 0]


def reverse_mode(how: str, f: Any, a: torch.Tensor) -> Any:
    if how == "grad":
        return fg.grad(f)(a)
    if how == "vjp":
        return fg.vjp(f, a)[1](torch.ones_like(a))
    return f(a.clone().requires_grad_()).backward()


@pytest.mark.parametrize("how", ["grad", "vjp", "backward"])
def test_while_loop_refuses_reverse_mode(how: str) -> None:
    """Reverse mode through while_loop (and fori_loop with a tensor bound) raises JAX's rule,
    pointing to scan and fori_loop with static bounds."""
    a = torch.tensor(2.0, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"reverse-mode.*fori_loop with Python-int bounds"):
        reverse_mode(how, newton_sqrt(torch, lax.while_loop), a)
    with pytest.raises(ValueError, match="reverse-mode"):
        reverse_mode(how, lambda a: lax.fori_loop(0, torch.tensor(3), lambda i, x: x * a, a), a)


def test_fori_loop_static_bounds_differentiate_like_jax() -> None:
    """Python-int bounds: a scan (values and grads equal JAX's); tensor bounds: same values."""
    jax, jnp, jlax = jax_mods()

    def f(m: Any, fl: Any, hi: Any) -> Any:
        def loss(x: Any) -> Any:
            a, b = fl(1, hi, lambda i, c: (m.sin(c[0]) * i, c[1] + c[0] ** 2), (x, x * 0))
            return a.sum() + b.sum()

        return loss

    x = helpers.t(3, seed=12)
    jx = helpers.to_jax(x)
    jf = f(jnp, jlax.fori_loop, 4)
    assert_trees_allclose(fg.value_and_grad(f(torch, lax.fori_loop, 4))(x),
                          helpers.to_torch(jax.value_and_grad(jf)(jx)))  # fmt: skip
    assert_trees_allclose(f(torch, lax.fori_loop, torch.tensor(4))(x), helpers.to_torch(jf(jx)))
    # Weakly typed init (a Python float) takes the body's dtype, as in JAX.
    out = lax.fori_loop(0, 3, lambda i, c: c + x.sum(), 0.0)
    assert out.dtype == torch.float64
    assert_trees_allclose(out, 3 * x.sum())


@settings(max_examples=15)
@given(lower=st.integers(-2, 3), upper=st.integers(-2, 5), x=helpers.tensors(shape=(2,)))
def test_fori_loop_equals_scan(lower: int, upper: int, x: torch.Tensor) -> None:
    """fori_loop(lower, upper) equals the scan over arange(lower, upper), for both kinds of
    bounds; an empty range returns init."""

    def body(i: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.cos(c) * i + 1

    want = lax.scan(lambda c, i: (body(i, c), None), x, torch.arange(lower, max(lower, upper)))[0]
    assert_trees_allclose(lax.fori_loop(lower, upper, body, x), want, rtol=0, atol=0)
    got = lax.fori_loop(torch.tensor(lower), torch.tensor(upper), body, x)
    assert_trees_allclose(got, want, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# map
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 1, 2, 5, 8])
def test_map_equals_jax(batch_size: int | None) -> None:
    """map over the leading axis (sequential, or vmapped chunks with a remainder) and its
    gradient equal jax.lax.map's."""
    jax, jnp, jlax = jax_mods()
    xs = {"a": helpers.t(5, 2, seed=13), "b": helpers.t(5, seed=14)}

    def f(m: Any, lmap: Any) -> Any:
        return lambda xs: lmap(
            lambda x: m.tanh(x["a"] * x["b"]).sum() ** 2, xs, batch_size=batch_size
        )

    jxs = helpers.to_jax(xs)
    assert_trees_allclose(f(torch, lax.map)(xs), helpers.to_torch(f(jnp, jlax.map)(jxs)))
    g = fg.grad(lambda xs: f(torch, lax.map)(xs).sum())(xs)
    jg = jax.grad(lambda xs: f(jnp, jlax.map)(xs).sum())(jxs)
    assert_trees_allclose(g, helpers.to_torch(jg))


# --------------------------------------------------------------------------------------------
# jit
# --------------------------------------------------------------------------------------------


def test_scan_and_cond_compile_as_one_graph_under_jit() -> None:
    """fg.jit (fullgraph) of value_and_grad and of vmap through scan + tensor-predicate cond
    equals eager mode, compiled once."""
    h0, xs = rnn_inputs()

    def loss(h0: Any, xs: Any) -> Any:
        value = scan_loss(torch, lax.scan, W, U, False)(h0, xs)
        return lax.cond(value > 1.0, lambda v: v * 2, lambda v: v.sin(), value)

    jitted = fg.jit(fg.value_and_grad(loss), backend=AOT)
    assert_trees_allclose(jitted(h0, xs), fg.value_and_grad(loss)(h0, xs))
    assert_trees_allclose(jitted(h0 * 0.1, xs), fg.value_and_grad(loss)(h0 * 0.1, xs))
    assert jitted.compile_count == 1
    batch = helpers.t(3, 3, seed=15)
    vm = fg.jit(fg.vmap(loss, in_axes=(0, None)), backend=AOT)
    assert_trees_allclose(vm(batch, xs), fg.vmap(loss, in_axes=(0, None))(batch, xs))


def test_while_loop_under_jit() -> None:
    """A tensor predicate compiles (forward, torch's while_loop operator); fori_loop with a
    tensor bound too; under vmap inside jit the error names the fixes."""
    f = fg.jit(newton_sqrt(torch, lax.while_loop), backend=AOT)
    a = torch.tensor([2.0, 9.0], dtype=torch.float64)
    assert_trees_allclose(f(a[0]), a[0].sqrt())
    assert_trees_allclose(f(a[1]), a[1].sqrt())
    g = fg.jit(lambda x, n: lax.fori_loop(0, n, lambda i, x: x * 2, x), backend=AOT)
    assert_trees_allclose(g(a, torch.tensor(3)), a * 8)
    vf = fg.jit(fg.vmap(newton_sqrt(torch, lax.while_loop)), backend=AOT)
    with pytest.raises(RuntimeError, match="fori_loop with Python-int bounds"):
        vf(a)
    # jvp (forward mode works eagerly) under jit: torch's operator composes with no transform.
    grow = lambda x: lax.while_loop(lambda v: v.sum() < 10, lambda v: v * 2, x)  # noqa: E731
    jf = fg.jit(lambda x: fg.jvp(grow, (x,), (x,)), backend=AOT)
    with pytest.raises(Exception, match=r"outside vmap, grad, vjp and jvp.*fori_loop with Python"):
        jf(torch.tensor(1.0, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def step_changing(kind: str) -> Any:
    def bad_step(c: Any, x: Any) -> Any:
        if kind == "structure":
            return {"h": c["h"], "extra": x}, None
        if kind == "shape":
            return {"h": torch.cat([c["h"], x])}, None
        return {"h": c["h"].float()}, None

    return bad_step


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("structure", r"bad_step must return a carry with the same tree structure"),
        ("shape", r"at carry\['h'\] the input is a torch.float64 tensor of shape \(2,\) and "),
        ("dtype", r"output is a torch.float32 tensor of shape \(2,\)\. The carry must keep"),
    ],
)
def test_scan_body_changing_the_carry_raises(kind: str, match: str) -> None:
    """A body that changes the carry's structure, a shape or a dtype raises a TypeError naming
    the function, the path, expected and got."""
    with pytest.raises(TypeError, match=match):
        lax.scan(step_changing(kind), {"h": helpers.t(2)}, helpers.t(3, 1))
    with pytest.raises(TypeError, match="must return val with the same"):
        lax.while_loop(
            lambda v: v["h"].sum() < 100, lambda v: {"h": v["h"][:1]}, {"h": helpers.t(2)}
        )


def test_branches_that_differ_raise() -> None:
    """Masked cond/switch branches returning other structures or shapes raise TypeError."""
    xs = helpers.t(3, 2)
    with pytest.raises(TypeError, match="branches must return the same tree structure"):
        fg.vmap(lambda x: lax.cond(x[0] > 0, lambda x: (x, x), lambda x: x, x))(xs)
    with pytest.raises(
        TypeError, match=r"at output .*returned a torch.float64 tensor of shape \(\)"
    ):
        fg.vmap(lambda x: lax.switch((x[0] > 0).long(), [lambda x: x, lambda x: x.sum()], x))(xs)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: lax.cond(torch.ones(2) > 0, torch.sin, torch.cos, torch.ones(2)), TypeError,
         r"pred must be a scalar \(shape \(\)\)"),
        (lambda: lax.cond("yes", torch.sin, torch.cos, torch.ones(2)), TypeError,
         "pred must be a bool or a scalar tensor"),
        (lambda: lax.cond(True, 3, torch.cos, torch.ones(2)), TypeError, "true_fun must be callable"),
        (lambda: lax.switch(torch.tensor(0.5), [torch.sin], torch.ones(1)), TypeError,
         "index must be an integer"),
        (lambda: lax.switch(0, [], torch.ones(1)), TypeError, "non-empty sequence"),
        (lambda: lax.scan(lambda c, x: c, 0.0, torch.ones(2)), TypeError,
         r"must return a pair \(carry, y\)"),
        (lambda: lax.scan(lambda c, x: (c, x), 0.0, {"a": torch.ones(2), "b": torch.ones(3)}),
         ValueError, r"same leading axis size, but xs\['a'\] has 2, xs\['b'\] has 3"),
        (lambda: lax.scan(lambda c, x: (c, x), 0.0, None), ValueError, "Pass length="),
        (lambda: lax.scan(lambda c, x: (c, x), 0.0, torch.ones(2), length=3), ValueError,
         "length=3 but"),
        (lambda: lax.scan(lambda c, x: (c, x), "s", torch.ones(2)), TypeError,
         r"leaf of init must be a tensor or a Python number"),
        (lambda: lax.scan(lambda c, x: (c, x), 0.0, torch.ones(2), unroll=0), TypeError,
         "unroll must be a positive int or a bool"),
        (lambda: lax.map(torch.sin, torch.ones(2), batch_size=0), TypeError, "batch_size"),
        (lambda: lax.fori_loop(0.0, 2, lambda i, x: x, 1.0), TypeError, "lower must be an int"),
    ],
)  # fmt: skip
def test_argument_errors(call: Any, error: type[Exception], match: str) -> None:
    """Bad arguments raise clear errors."""
    with pytest.raises(error, match=match):
        call()


def test_unroll_does_not_change_results() -> None:
    """unroll (int or bool) is accepted and changes nothing in eager mode."""
    h0, xs = rnn_inputs()
    init = {"h": h0, "n": torch.tensor(0.0, dtype=torch.float64)}
    ref = lax.scan(rnn_step(torch, W, U), init, xs)
    for unroll in (2, True, False):
        assert_trees_allclose(lax.scan(rnn_step(torch, W, U), init, xs, unroll=unroll), ref)
