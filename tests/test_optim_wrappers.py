"""Wrappers and combinators of funcgrad.optim: optax's numerics, laws, vmap/compile, errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import require_jax, t, to_jax, to_torch, trees
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

STEPS = 60
RTOL, ATOL = 1e-10, 1e-12

# --------------------------------------------------------------------------------------------
# The harness: a smooth random loss over a dict of float64 tensors, in torch and in JAX
# --------------------------------------------------------------------------------------------

SHAPES = {"w": (3, 2), "b": (2,), "s": ()}


def problem(seed: int) -> tuple[dict[str, torch.Tensor], Callable[..., Any]]:
    """Initial parameters and ``loss(params, sin)`` (``sin`` is torch.sin or jnp.sin).

    The loss is a sum over leaves, so a NaN in one leaf's gradient stays in that leaf.
    """
    params = {k: t(*s, seed=100 * seed + i) for i, (k, s) in enumerate(SHAPES.items())}
    targets = {k: t(*s, seed=100 * seed + 10 + i) for i, (k, s) in enumerate(SHAPES.items())}
    weights = {
        k: t(*s, seed=100 * seed + 20 + i).abs() + 0.5 for i, (k, s) in enumerate(SHAPES.items())
    }

    consts = {"torch": (targets, weights)}

    def loss(p: Any, sin: Callable[[Any], Any]) -> Any:
        if sin is torch.sin:
            tg, wt = consts["torch"]
        else:  # JAX: the same constants as JAX arrays
            tg, wt = consts.setdefault("jax", to_jax((targets, weights)))
        return sum((wt[k] * (p[k] - tg[k]) ** 2 + 0.3 * sin(2.0 * p[k])).sum() for k in SHAPES)

    return params, loss


Perturb = Callable[[int, Any], Any]


def no_perturb(i: int, g: Any) -> Any:
    return g


def nan_in_b(steps: set[int]) -> Perturb:
    """Puts a NaN into the first element of leaf ``b``'s gradient at the given steps."""

    def perturb(i: int, g: Any) -> Any:
        if i not in steps:
            return g
        b = g["b"]
        b = b.clone() if isinstance(b, torch.Tensor) else b
        if isinstance(b, torch.Tensor):
            b[0] = float("nan")
        else:
            b = b.at[0].set(float("nan"))
        return {**g, "b": b}

    return perturb


def run_funcgrad(
    opt: Any,
    params: Any,
    loss: Callable[..., Any],
    *,
    steps: int = STEPS,
    perturb: Perturb = no_perturb,
    at: Callable[[Any], Any] = lambda p: p,
    edit: Callable[[int, Any], Any] | None = None,
) -> tuple[list[Any], Any]:
    """The parameters after each step, and the final state (``at`` picks where to take grads)."""
    grad = fg.grad(lambda p: loss(p, torch.sin))
    state = opt.init(params)
    out = []
    for i in range(steps):
        if edit is not None:
            state = edit(i, state)
        g = perturb(i, grad(at(params)))
        updates, state = opt.update(g, state, params)
        params = optim.apply_updates(params, updates)
        out.append(params)
    return out, state


def run_optax(
    opt: Any,
    params: Any,
    loss: Callable[..., Any],
    *,
    steps: int = STEPS,
    perturb: Perturb = no_perturb,
    at: Callable[[Any], Any] = lambda p: p,
    edit: Callable[[int, Any], Any] | None = None,
) -> tuple[list[Any], Any]:
    jax, jnp = require_jax()
    import optax

    grad = jax.jit(jax.grad(lambda p: loss(p, jnp.sin)))
    update = jax.jit(opt.update)  # optax's lax.cond is slow outside jit
    state = opt.init(params)
    out = []
    for i in range(steps):
        if edit is not None:
            state = edit(i, state)
        g = perturb(i, grad(at(params)))
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out, state


def assert_leaves_close(ours: Any, theirs: Any, rtol: float = RTOL, atol: float = ATOL) -> None:
    """Same leaves (in flattening order, dtypes included) in a funcgrad and a JAX tree."""
    jax, _ = require_jax()
    assert_trees_allclose(
        fg.tree.leaves(ours), to_torch(jax.tree.leaves(theirs)), rtol=rtol, atol=atol
    )


def compare(
    ours: Any, theirs: Any, seed: int = 0, *, state: bool = True, **kwargs: Any
) -> tuple[Any, Any, Any]:
    """Runs both optimizers on one problem; asserts equal trajectories (and final states)."""
    params, loss = problem(seed)
    only_ours, only_theirs = kwargs.pop("fg", {}), kwargs.pop("ox", {})
    traj, s = run_funcgrad(ours, params, loss, **only_ours, **kwargs)
    jtraj, js = run_optax(theirs, to_jax(params), loss, **only_theirs, **kwargs)
    assert_leaves_close(traj, jtraj)
    if state:
        assert_leaves_close(s, js)
    return traj, s, js


def optax_module() -> Any:
    require_jax()
    import optax

    return optax


# --------------------------------------------------------------------------------------------
# masked
# --------------------------------------------------------------------------------------------

MASKS = {
    "dict": {"w": True, "b": False, "s": True},
    "root_true": True,
    "root_false": False,
}


@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
@pytest.mark.parametrize("inner", ["adam", "sgd_momentum"])
def test_masked_matches_optax(mask: Any, inner: str) -> None:
    """masked(inner, mask) follows optax.masked over 60 steps, states included."""
    ox = optax_module()
    make = {
        "adam": (lambda m: optim.adam(0.05), lambda m: ox.adam(0.05)),
        "sgd_momentum": (lambda m: optim.sgd(0.02, 0.9), lambda m: ox.sgd(0.02, 0.9)),
    }[inner]
    compare(optim.masked(make[0](0), mask), ox.masked(make[1](0), mask), seed=1)


def test_masked_callable_mask_matches_optax() -> None:
    """A mask function (here: no decay for 1-d and 0-d leaves) is called on params/updates."""
    ox = optax_module()
    ours = optim.chain(
        optim.masked(
            optim.add_decayed_weights(0.1), lambda p: fg.tree.map(lambda x: x.dim() > 1, p)
        ),
        optim.scale(-0.05),
    )
    theirs = ox.chain(
        ox.masked(ox.add_decayed_weights(0.1), lambda p: {k: v.ndim > 1 for k, v in p.items()}),
        ox.scale(-0.05),
    )
    compare(ours, theirs, seed=2)


def test_masked_state_holds_only_unmasked_leaves() -> None:
    """The inner state has a MaskedNode for masked-out subtrees (a prefix mask masks a subtree)."""
    params = {"enc": {"w": t(2), "b": t(1)}, "head": t(3)}
    state = optim.masked(optim.trace(0.5), {"enc": False, "head": True}).init(params)
    expected = optim.MaskedState(optim.TraceState({"enc": optim.MaskedNode(), "head": t(3) * 0}))
    assert_trees_allclose(state, expected)


@settings(max_examples=15)
@given(tree=trees(), data=st.data())
def test_masked_law_per_leaf(tree: Any, data: st.DataObject) -> None:
    """masked(scale(c), m) scales exactly the leaves marked True and passes the others."""
    leaves, treedef = fg.tree.flatten(tree)
    flags = data.draw(st.lists(st.booleans(), min_size=len(leaves), max_size=len(leaves)))
    mask = fg.tree.unflatten(treedef, flags)
    opt = optim.masked(optim.scale(-3.0), mask)
    out, _ = opt.update(tree, opt.init(tree))
    expected = fg.tree.unflatten(treedef, [-3.0 * x if f else x for x, f in zip(leaves, flags)])
    assert_trees_allclose(out, expected)


@settings(max_examples=10)
@given(tree=trees())
def test_masked_all_true_is_inner_and_all_false_is_identity(tree: Any) -> None:
    """A True mask gives the inner transformation, a False mask leaves updates unchanged."""
    inner = optim.sgd(0.1, momentum=0.9)
    on, off = optim.masked(inner, True), optim.masked(inner, False)
    s_in, s_on, s_off = inner.init(tree), on.init(tree), off.init(tree)
    g = tree
    for _ in range(3):
        u_in, s_in = inner.update(g, s_in, tree)
        u_on, s_on = on.update(g, s_on, tree)
        u_off, s_off = off.update(g, s_off, tree)
        assert_trees_allclose(u_on, u_in)
        assert_trees_allclose(u_off, g)
        g = u_in


# --------------------------------------------------------------------------------------------
# multi_transform
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("callable_labels", [False, True])
def test_multi_transform_matches_optax(callable_labels: bool) -> None:
    """Per-label transformations follow optax.multi_transform over 60 steps, states included."""
    ox = optax_module()
    labels = {"w": "adam", "b": "sgd", "s": "adam"}
    ours_labels: Any = (lambda p: labels) if callable_labels else labels
    ours = optim.multi_transform(
        {"adam": optim.adam(0.05), "sgd": optim.sgd(0.02, 0.9), "unused": optim.sgd(1.0)},
        ours_labels,
    )
    theirs = ox.multi_transform(
        {"adam": ox.adam(0.05), "sgd": ox.sgd(0.02, 0.9), "unused": ox.sgd(1.0)},
        (lambda p: labels) if callable_labels else labels,
    )
    compare(ours, theirs, seed=3)


def test_multi_transform_prefix_labels() -> None:
    """A label at an inner node applies to its whole subtree."""
    params = {"enc": {"w": t(2), "b": t(1)}, "head": t(3)}
    opt = optim.multi_transform(
        {"frozen": optim.set_to_zero(), "train": optim.scale(2.0)},
        {"enc": "frozen", "head": "train"},
    )
    out, _ = opt.update(params, opt.init(params), params)
    assert_trees_allclose(out, {"enc": {"w": t(2) * 0, "b": t(1) * 0}, "head": 2.0 * t(3)})


@settings(max_examples=10)
@given(tree=trees())
def test_multi_transform_one_label_is_the_transformation(tree: Any) -> None:
    """Labelling every leaf with one label gives that label's transformation."""
    inner = optim.adam(0.1)
    opt = optim.multi_transform({"only": inner}, "only")
    s, s_in = opt.init(tree), inner.init(tree)
    for _ in range(3):
        u, s = opt.update(tree, s, tree)
        u_in, s_in = inner.update(tree, s_in, tree)
        assert_trees_allclose(u, u_in)


# --------------------------------------------------------------------------------------------
# MultiSteps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "use_grad_mean"),
    [(3, True), (1, True), (4, False), ("schedule", True)],
)
def test_multisteps_matches_optax(k: Any, use_grad_mean: bool) -> None:
    """MultiSteps follows optax.MultiSteps (float64 accumulator) over 60 micro-steps."""
    ox = optax_module()
    _, jnp = require_jax()
    every_k = (lambda step: 2 + step % 2) if k == "schedule" else k
    ours = optim.MultiSteps(optim.adam(0.05), every_k, use_grad_mean=use_grad_mean)
    theirs = ox.MultiSteps(
        ox.adam(0.05), every_k, use_grad_mean=use_grad_mean, accumulator_dtype=jnp.float64
    )
    _, state, _ = compare(ours.gradient_transformation(), theirs.gradient_transformation(), seed=4)
    assert state.gradient_step > 10


def test_multisteps_skip_not_finite_matches_optax() -> None:
    """A skipped micro-batch (NaN gradient) leaves the state as it was, as in optax."""
    ox = optax_module()
    _, jnp = require_jax()
    ours = optim.MultiSteps(optim.adam(0.05), 3, should_skip_update_fn=optim.skip_not_finite)
    theirs = ox.MultiSteps(
        ox.adam(0.05), 3, should_skip_update_fn=ox.skip_not_finite, accumulator_dtype=jnp.float64
    )
    perturb = nan_in_b({2, 7, 8, 30})
    _, state, _ = compare(
        ours.gradient_transformation(), theirs.gradient_transformation(), seed=5, perturb=perturb
    )
    assert not state.skip_state["should_skip"]


def test_multisteps_skip_large_updates_matches_optax() -> None:
    """skip_large_updates rejects micro-batches whose squared norm reaches the bound."""
    ox = optax_module()
    _, jnp = require_jax()
    ours = optim.MultiSteps(
        optim.sgd(0.05),
        2,
        should_skip_update_fn=functools.partial(optim.skip_large_updates, max_squared_norm=20.0),
    )
    theirs = ox.MultiSteps(
        ox.sgd(0.05),
        2,
        should_skip_update_fn=functools.partial(ox.skip_large_updates, max_squared_norm=20.0),
        accumulator_dtype=jnp.float64,
    )
    compare(ours.gradient_transformation(), theirs.gradient_transformation(), seed=6)


@pytest.mark.parametrize("k", [2, 3])
def test_multisteps_equals_inner_on_the_mean_gradient(k: int) -> None:
    """k micro-batches through MultiSteps == one inner step on the mean of their gradients,
    and the parameters do not move in between."""
    params, _ = problem(7)
    batches = [
        {n: t(*s, seed=100 + 7 * j + i) for i, (n, s) in enumerate(SHAPES.items())}
        for j in range(40)
    ]

    def loss(p: Any, x: Any) -> Any:
        return sum(((p[n] - x[n]) ** 2 * (1 + x[n].abs()) + torch.sin(p[n])).sum() for n in SHAPES)

    grad = fg.grad(loss)
    multi = optim.MultiSteps(optim.adam(0.1), k)
    plain = optim.adam(0.1)
    p_multi, s_multi = params, multi.init(params)
    p_plain, s_plain = params, plain.init(params)
    for j in range(0, len(batches) - k + 1, k):
        grads = [grad(p_plain, x) for x in batches[j : j + k]]
        mean = fg.tree.map(lambda *gs: sum(gs) / k, *grads)
        u, s_plain = plain.update(mean, s_plain, p_plain)
        p_plain = optim.apply_updates(p_plain, u)
        for i, x in enumerate(batches[j : j + k]):
            before = p_multi
            u, s_multi = multi.update(grad(p_multi, x), s_multi, p_multi)
            p_multi = optim.apply_updates(p_multi, u)
            assert bool(multi.has_updated(s_multi)) == (i == k - 1)
            if i < k - 1:
                assert fg.tree.equal(p_multi, before)
        assert_trees_allclose(p_multi, p_plain, rtol=1e-12, atol=1e-13)


@settings(max_examples=10)
@given(tree=trees())
def test_multisteps_k1_is_the_inner_optimizer(tree: Any) -> None:
    """With k = 1 every call is an update of the inner optimizer on that gradient."""
    inner = optim.adam(0.1)
    multi = optim.MultiSteps(inner, 1)
    s, s_in = multi.init(tree), inner.init(tree)
    for _ in range(3):
        u, s = multi.update(tree, s, tree)
        u_in, s_in = inner.update(tree, s_in, tree)
        assert_trees_allclose(u, u_in)
    assert_trees_allclose(s.inner_opt_state, s_in)


def test_multisteps_accumulator_dtype() -> None:
    """The accumulator is at least float32 (bfloat16 gradients accumulate in float32)."""
    params = {"h": torch.zeros(2, dtype=torch.bfloat16), "d": torch.zeros(2, dtype=torch.float64)}
    state = optim.MultiSteps(optim.sgd(0.1), 2).init(params)
    assert state.acc_grads["h"].dtype == torch.float32
    assert state.acc_grads["d"].dtype == torch.float64
    forced = optim.MultiSteps(optim.sgd(0.1), 2, accumulator_dtype=torch.float32).init(params)
    assert forced.acc_grads["d"].dtype == torch.float32


# --------------------------------------------------------------------------------------------
# inject_hyperparams
# --------------------------------------------------------------------------------------------


def test_inject_hyperparams_adam_schedule_and_edit_match_optax() -> None:
    """A learning rate changed by hand at step 15 is used from then on; a scheduled b1 follows
    its schedule (editing it has no effect); all as optax over 60 steps."""
    ox = optax_module()
    ours = optim.inject_hyperparams(optim.adam)(
        learning_rate=0.05, b1=lambda c: 0.9 - 0.3 / (1.0 + c.to(torch.float64))
    )
    theirs = ox.inject_hyperparams(ox.adam)(learning_rate=0.05, b1=lambda c: 0.9 - 0.3 / (1.0 + c))

    def edit_ours(i: int, s: Any) -> Any:
        if i in (15, 30):
            edits = {"learning_rate": torch.tensor(0.02, dtype=torch.float64)} if i == 15 else {}
            edits = edits if i == 15 else {"b1": 0.1}  # ignored: b1 is scheduled
            return s._replace(hyperparams={**s.hyperparams, **edits})
        return s

    def edit_theirs(i: int, s: Any) -> Any:
        if i == 15:
            s.hyperparams["learning_rate"] = 0.02
        if i == 30:
            s.hyperparams["b1"] = 0.1
        return s

    _, state, theirs_state = compare(
        ours, theirs, seed=8, state=False, fg={"edit": edit_ours}, ox={"edit": edit_theirs}
    )
    assert_leaves_close(state.inner_state, theirs_state.inner_state)
    for key in ("learning_rate", "b1", "b2", "eps", "eps_root"):
        assert_leaves_close(state.hyperparams[key], theirs_state.hyperparams[key])
    assert state.count == STEPS
    assert_trees_allclose(
        state.hyperparams["b1"], torch.tensor(0.9 - 0.3 / STEPS, dtype=torch.float64)
    )
    assert_trees_allclose(
        state.hyperparams["learning_rate"], torch.tensor(0.02, dtype=torch.float64)
    )


def test_inject_hyperparams_sgd_learning_rate_edit() -> None:
    """Changing state.hyperparams["learning_rate"] between steps changes the next update."""
    ox = optax_module()
    ours = optim.inject_hyperparams(optim.sgd)(learning_rate=0.05, momentum=0.9)
    theirs = ox.inject_hyperparams(ox.sgd)(learning_rate=0.05, momentum=0.9)

    def edit_ours(i: int, s: Any) -> Any:
        if i in (10, 30):
            lr = torch.tensor(0.01 * i / 10, dtype=torch.float64)
            return s._replace(hyperparams={**s.hyperparams, "learning_rate": lr})
        return s

    def edit_theirs(i: int, s: Any) -> Any:
        if i in (10, 30):
            s.hyperparams["learning_rate"] = 0.01 * i / 10
        return s

    _, state, theirs_state = compare(
        ours, theirs, seed=9, state=False, fg={"edit": edit_ours}, ox={"edit": edit_theirs}
    )
    assert_leaves_close(state.inner_state, theirs_state.inner_state)


@settings(max_examples=10)
@given(tree=trees())
def test_inject_hyperparams_without_edits_is_the_factory(tree: Any) -> None:
    """inject_hyperparams(f)(args) updates exactly like f(args)."""
    inner = optim.adamw(0.1, weight_decay=0.01)
    opt = optim.inject_hyperparams(optim.adamw)(0.1, weight_decay=0.01)
    s, s_in = opt.init(tree), inner.init(tree)
    for _ in range(3):
        u, s = opt.update(tree, s, tree)
        u_in, s_in = inner.update(tree, s_in, tree)
        assert_trees_allclose(u, u_in)
    assert_trees_allclose(s.inner_state, s_in)


def test_inject_hyperparams_state_layout_and_static_args() -> None:
    """Numbers become 0-d tensors in the parameters' dtype; bools, None and static args stay."""
    params = torch.zeros(2, dtype=torch.float64)
    mask_fn = lambda p: True  # noqa: E731
    opt = optim.inject_hyperparams(optim.adamw, static_args="mask")(0.1, mask=mask_fn)
    state = opt.init(params)
    assert list(state.hyperparams) == [
        "learning_rate",
        "b1",
        "b2",
        "eps",
        "eps_root",
        "weight_decay",
    ]
    assert all(v.dtype == torch.float64 and v.dim() == 0 for v in state.hyperparams.values())
    f32 = optim.inject_hyperparams(optim.sgd, hyperparam_dtype=torch.float32)(0.1).init(params)
    assert f32.hyperparams["learning_rate"].dtype == torch.float32
    assert optim.inject_hyperparams(optim.sgd).__name__ == "sgd"


# --------------------------------------------------------------------------------------------
# apply_if_finite
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_errors", [0, 2])
def test_apply_if_finite_matches_optax(max_errors: int) -> None:
    """NaN gradients are skipped, or applied after too many in a row, as in optax (the inner
    zero_nans keeps an applied NaN out of the parameters, so the run goes on)."""
    ox = optax_module()
    perturb = nan_in_b({3, 10, 11, 20, 21, 22, 40, 41, 42, 43, 44})
    _, state, _ = compare(
        optim.apply_if_finite(optim.chain(optim.zero_nans(), optim.adam(0.05)), max_errors),
        ox.apply_if_finite(ox.chain(ox.zero_nans(), ox.adam(0.05)), max_errors),
        seed=10,
        perturb=perturb,
    )
    assert state.total_notfinite == 11


@settings(max_examples=10)
@given(tree=trees())
def test_apply_if_finite_with_finite_updates_is_the_inner(tree: Any) -> None:
    """Finite updates pass through the inner transformation unchanged."""
    inner = optim.sgd(0.1, momentum=0.9)
    opt = optim.apply_if_finite(inner, 1)
    s, s_in = opt.init(tree), inner.init(tree)
    for _ in range(3):
        u, s = opt.update(tree, s, tree)
        u_in, s_in = inner.update(tree, s_in, tree)
        assert_trees_allclose(u, u_in)
    assert s.notfinite_count == 0
    assert bool(s.last_finite)


def test_apply_if_finite_gives_up_after_max_consecutive_errors() -> None:
    """Zeros and an unchanged inner state until the count exceeds the maximum, then apply."""
    opt = optim.apply_if_finite(optim.sgd(1.0, momentum=0.5), max_consecutive_errors=2)
    p = torch.tensor([1.0, 2.0])
    s = opt.init(p)
    _, s = opt.update(torch.tensor([1.0, 1.0]), s, p)
    finite_inner = s.inner_state
    bad = torch.tensor([1.0, float("inf")])
    for expected_count in (1, 2):
        u, s = opt.update(bad, s, p)
        assert torch.equal(u, torch.zeros(2))
        assert s.notfinite_count == expected_count
        assert not bool(s.last_finite)
        assert_trees_allclose(s.inner_state, finite_inner)
    u, s = opt.update(bad, s, p)
    assert torch.isinf(u[1])
    assert (s.notfinite_count, s.total_notfinite) == (3, 3)
    u, s = opt.update(torch.tensor([1.0, 1.0]), s, p)
    assert (s.notfinite_count, s.total_notfinite) == (0, 3)
    assert bool(s.last_finite)


# --------------------------------------------------------------------------------------------
# ema
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("debias", [True, False])
@pytest.mark.parametrize("decay", [0.9, 0.5])
def test_ema_matches_optax(decay: float, debias: bool) -> None:
    """chain(ema, scale) follows optax over 60 steps, the moving average included."""
    ox = optax_module()
    compare(
        optim.chain(optim.ema(decay, debias), optim.scale(-0.05)),
        ox.chain(ox.ema(decay, debias), ox.scale(-0.05)),
        seed=11,
    )


@settings(max_examples=10)
@given(tree=trees())
def test_ema_decay_zero_is_identity(tree: Any) -> None:
    """With decay 0 the average is the last update (debiased or not)."""
    for debias in (True, False):
        opt = optim.ema(0.0, debias)
        out, state = opt.update(tree, opt.init(tree))
        assert_trees_allclose(out, tree)
        assert state.count == 1


def test_ema_tensor_decay() -> None:
    """A 0-d tensor decay gives the same result as the number."""
    g = [t(3, seed=1), t(2, seed=2)]
    a, b = optim.ema(0.7), optim.ema(torch.tensor(0.7, dtype=torch.float64))
    sa, sb = a.init(g), b.init(g)
    for _ in range(3):
        ua, sa = a.update(g, sa)
        ub, sb = b.update(g, sb)
    assert_trees_allclose(ua, ub, rtol=1e-14, atol=0)


# --------------------------------------------------------------------------------------------
# lookahead
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reset_state", [False, True])
@pytest.mark.parametrize(("sync_period", "alpha"), [(5, 0.5), (3, 0.8)])
def test_lookahead_matches_optax(sync_period: int, alpha: float, reset_state: bool) -> None:
    """Fast and slow parameters follow optax.lookahead over 60 steps."""
    ox = optax_module()
    params, loss = problem(12)
    ours = optim.lookahead(optim.adam(0.05), sync_period, alpha, reset_state)
    theirs = ox.lookahead(ox.adam(0.05), sync_period, alpha, reset_state)
    traj, s = run_funcgrad(
        ours, optim.LookaheadParams.init_synced(params), loss, at=lambda p: p.fast
    )
    jtraj, js = run_optax(
        theirs, ox.LookaheadParams.init_synced(to_jax(params)), loss, at=lambda p: p.fast
    )
    assert isinstance(traj[-1], optim.LookaheadParams)
    assert_leaves_close(traj, jtraj)
    assert_leaves_close(s, js)
    synced = traj[sync_period - 1]
    assert_trees_allclose(synced.fast, synced.slow)


@settings(max_examples=10)
@given(tree=trees())
def test_lookahead_full_step_every_step_is_the_fast_optimizer(tree: Any) -> None:
    """sync_period=1 and slow_step_size=1: slow and fast both follow the fast optimizer."""
    fast = optim.sgd(0.1, momentum=0.9)
    opt = optim.lookahead(fast, 1, 1.0)
    p, s = optim.LookaheadParams.init_synced(tree), opt.init(tree)
    q, s_in = tree, fast.init(tree)
    for _ in range(3):
        u, s = opt.update(p.fast, s, p)
        p = optim.apply_updates(p, u)
        v, s_in = fast.update(q, s_in, q)
        q = optim.apply_updates(q, v)
        assert_trees_allclose(p.fast, q)
        assert_trees_allclose(p.slow, q)


# --------------------------------------------------------------------------------------------
# Ensembles (vmap) and torch.compile
# --------------------------------------------------------------------------------------------


NO_NANS: list[set[int]] = [set(), set(), set()]
NANS = [{2, 3, 4}, set(), {5}]  # per member: the members skip at different steps


def _ensemble_wrappers() -> dict[str, tuple[Any, list[set[int]]]]:
    return {
        "masked": (optim.masked(optim.adam(0.05), {"w": True, "b": False, "s": True}), NO_NANS),
        "multi_steps": (optim.MultiSteps(optim.adam(0.05), 3).gradient_transformation(), NO_NANS),
        "apply_if_finite": (
            optim.apply_if_finite(optim.chain(optim.zero_nans(), optim.adam(0.05)), 1),
            NANS,
        ),
        "multi_steps_of_apply_if_finite": (
            optim.MultiSteps(
                optim.apply_if_finite(optim.sgd(0.05), 2), 2
            ).gradient_transformation(),
            NANS,
        ),
        "multi_transform": (
            optim.multi_transform(
                {"a": optim.adam(0.05), "s": optim.sgd(0.02, 0.9)}, {"w": "a", "b": "s", "s": "a"}
            ),
            NO_NANS,
        ),
        "ema": (optim.chain(optim.ema(0.9), optim.scale(-0.05)), NO_NANS),
    }


@pytest.mark.parametrize("name", list(_ensemble_wrappers()))
def test_vmap_ensemble_equals_separate_runs(name: str) -> None:
    """vmap over 3 parameter sets and states == 3 separate runs (members may skip differently)."""
    opt, nan_steps = _ensemble_wrappers()[name]
    members = [problem(20 + m)[0] for m in range(3)]
    _, loss = problem(20)
    grad = fg.grad(lambda p: loss(p, torch.sin))

    def member_grad(m: int, i: int, p: Any) -> Any:
        return nan_in_b(nan_steps[m])(i, grad(p))

    def member(tree: Any, m: int) -> Any:
        return fg.tree.map(lambda x: x[m], tree)

    separate = []
    for m, p in enumerate(members):
        s = opt.init(p)
        for i in range(12):
            u, s = opt.update(member_grad(m, i, p), s, p)
            p = optim.apply_updates(p, u)
        separate.append((p, s))

    stack = lambda *xs: torch.stack(xs)  # noqa: E731
    params = fg.tree.map(stack, *members)
    state = fg.vmap(opt.init)(params)
    step = fg.vmap(opt.update)
    for i in range(12):
        g = fg.vmap(grad)(params)
        perturbed = [nan_in_b(nan_steps[m])(i, member(g, m)) for m in range(3)]
        g = fg.tree.map(stack, *perturbed)
        u, state = step(g, state, params)
        params = optim.apply_updates(params, u)
    expected = fg.tree.map(stack, *[p for p, _ in separate])
    expected_state = fg.tree.map(stack, *[s for _, s in separate])
    assert_trees_allclose(params, expected, rtol=1e-12, atol=1e-14)
    assert_trees_allclose(state, expected_state, rtol=1e-12, atol=1e-14)


def test_compiled_step_matches_eager() -> None:
    """MultiSteps over apply_if_finite compiles into one graph (no Python branching on
    tensors) and gives the eager result."""
    opt = optim.MultiSteps(optim.apply_if_finite(optim.adam(0.05), 1), 2).gradient_transformation()
    params, loss = problem(30)
    grad = fg.grad(lambda p: loss(p, torch.sin))
    compiled = torch.compile(opt.update, fullgraph=True, backend="eager")
    p_eager, s_eager = params, opt.init(params)
    p_comp, s_comp = params, opt.init(params)
    perturb = nan_in_b({3})
    for i in range(6):
        u, s_eager = opt.update(perturb(i, grad(p_eager)), s_eager, p_eager)
        p_eager = optim.apply_updates(p_eager, u)
        u, s_comp = compiled(perturb(i, grad(p_comp)), s_comp, p_comp)
        p_comp = optim.apply_updates(p_comp, u)
    assert_trees_allclose(p_comp, p_eager, rtol=1e-14, atol=0)
    assert_trees_allclose(s_comp, s_eager, rtol=1e-14, atol=0)


@pytest.mark.parametrize("factory", ["sgd", "adam"])
def test_inject_hyperparams_compiled_step_takes_new_learning_rate(factory: str) -> None:
    """A compiled step reads the learning rate from the state: changing it needs no Python
    branching on tensors (fullgraph) and gives the eager result."""
    opt = {
        "sgd": lambda: optim.inject_hyperparams(optim.sgd)(learning_rate=0.1, momentum=0.9),
        "adam": lambda: optim.inject_hyperparams(optim.adam)(learning_rate=0.1),
    }[factory]()
    params, loss = problem(31)
    grad = fg.grad(lambda p: loss(p, torch.sin))
    compiled = torch.compile(opt.update, fullgraph=True, backend="eager")
    p_eager, s_eager = params, opt.init(params)
    p_comp, s_comp = params, opt.init(params)
    for i in range(4):
        if i == 2:
            lr = {"learning_rate": torch.tensor(0.01, dtype=torch.float64)}
            s_eager = s_eager._replace(hyperparams={**s_eager.hyperparams, **lr})
            s_comp = s_comp._replace(hyperparams={**s_comp.hyperparams, **lr})
        u, s_eager = opt.update(grad(p_eager), s_eager, p_eager)
        p_eager = optim.apply_updates(p_eager, u)
        u, s_comp = compiled(grad(p_comp), s_comp, p_comp)
        p_comp = optim.apply_updates(p_comp, u)
    assert_trees_allclose(p_comp, p_eager, rtol=1e-14, atol=0)


def test_inject_hyperparams_vmap_sweeps_learning_rates() -> None:
    """vmap over states whose learning rates differ == separate runs (a hyperparameter sweep)."""
    opt = optim.inject_hyperparams(optim.sgd)(learning_rate=0.1, momentum=0.9)
    params, loss = problem(32)
    grad = fg.grad(lambda p: loss(p, torch.sin))
    rates = [0.01, 0.05, 0.1]
    separate = []
    for lr in rates:
        p, s = params, opt.init(params)
        s = s._replace(hyperparams={**s.hyperparams, "learning_rate": lr})
        for _ in range(5):
            u, s = opt.update(grad(p), s, p)
            p = optim.apply_updates(p, u)
        separate.append(p)
    ps = fg.tree.map(lambda x: torch.stack([x] * 3), params)
    state = fg.vmap(opt.init)(ps)
    lr = torch.tensor(rates, dtype=torch.float64)
    state = state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})
    for _ in range(5):
        u, state = fg.vmap(opt.update)(fg.vmap(grad)(ps), state, ps)
        ps = optim.apply_updates(ps, u)
    assert_trees_allclose(ps, fg.tree.map(lambda *xs: torch.stack(xs), *separate))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

P = {"w": torch.zeros(2), "b": torch.zeros(1)}
G = {"w": torch.ones(2), "b": torch.ones(1)}


def _update(opt: Any, state: Any = None, params: Any = P, grads: Any = G) -> Any:
    return opt.update(grads, opt.init(P) if state is None else state, params)


ERRORS: dict[str, tuple[Callable[[], Any], type[Exception], str]] = {
    "masked_inner_factory": (
        lambda: optim.masked(optim.adam, True),
        TypeError,
        r"masked: inner must be a GradientTransformation, got function\. Call the factory",
    ),
    "masked_inner_multisteps": (
        lambda: optim.masked(optim.MultiSteps(optim.sgd(0.1), 2), True),
        TypeError,
        r"got MultiSteps\. Pass multi_steps\.gradient_transformation\(\)",
    ),
    "masked_not_prefix": (
        lambda: optim.masked(optim.sgd(0.1), {"w": True, "c": False}).init(P),
        ValueError,
        r"optim\.masked: mask must be a pytree prefix of the params, but at params, the mask has "
        r"structure PyTreeSpec\(\{'c': \*, 'w': \*\}\) but the value has structure",
    ),
    "masked_not_prefix_nested": (
        lambda: optim.masked(optim.sgd(0.1), {"w": [True, False], "b": True}).init(P),
        ValueError,
        r"optim\.masked: mask must be a pytree prefix of the params, but at params\['w'\]",
    ),
    "masked_non_bool": (
        lambda: optim.masked(optim.sgd(0.1), {"w": 1, "b": True}).init(P),
        TypeError,
        r"masked: every leaf of the mask must be True or False, got int 1",
    ),
    "masked_tensor_mask": (
        lambda: optim.masked(optim.sgd(0.1), {"w": torch.tensor(True), "b": True}).init(P),
        TypeError,
        r"got a torch\.bool tensor of shape \(\)\. Masks are static",
    ),
    "masked_updates_not_prefix": (
        lambda: _update(optim.masked(optim.sgd(0.1), {"w": True, "b": False}), grads=[1.0]),
        ValueError,
        r"masked: mask must be a pytree prefix of the updates",
    ),
    "masked_params_not_prefix": (
        lambda: _update(optim.masked(optim.sgd(0.1), {"w": True, "b": False}), params=[P]),
        ValueError,
        r"masked: mask must be a pytree prefix of the params",
    ),
    "masked_wrong_state": (
        lambda: _update(optim.masked(optim.sgd(0.1), True), state=optim.EmptyState()),
        TypeError,
        r"masked: expected a MaskedState \(the state returned by this transformation's init",
    ),
    "multi_transform_not_dict": (
        lambda: optim.multi_transform([optim.sgd(0.1)], "a"),
        TypeError,
        r"multi_transform: transforms must be a dict from labels to GradientTransformations, "
        r"got list",
    ),
    "multi_transform_bad_value": (
        lambda: optim.multi_transform({"a": optim.sgd}, "a"),
        TypeError,
        r"multi_transform: transforms\['a'\] must be a GradientTransformation, got function",
    ),
    "multi_transform_unknown_label": (
        lambda: optim.multi_transform({"a": optim.sgd(0.1)}, {"w": "a", "b": "bias"}).init(P),
        ValueError,
        r"multi_transform: the leaf at params\['b'\] has the label 'bias', which has no "
        r"transformation \(transforms has the labels \['a'\]\)",
    ),
    "multi_transform_unknown_label_in_update": (
        lambda: optim.multi_transform(
            {"a": optim.sgd(0.1)}, lambda t: fg.tree.map(lambda x: "a" if x.numel() > 1 else 0, t)
        ).update(G, optim.MultiTransformState({"a": optim.MaskedState(())})),
        ValueError,
        r"the leaf at updates\['b'\] has the label 0, which has no transformation",
    ),
    "multi_transform_labels_not_prefix": (
        lambda: optim.multi_transform({"a": optim.sgd(0.1)}, ["a", "a"]).init(P),
        ValueError,
        r"multi_transform: param_labels must be a pytree prefix of the params",
    ),
    "multi_transform_state_labels": (
        lambda: _update(
            optim.multi_transform({"a": optim.sgd(0.1)}, "a"),
            state=optim.MultiTransformState({"b": optim.MaskedState(())}),
        ),
        ValueError,
        r"multi_transform: the state has the labels \['b'\] but transforms has \['a'\]",
    ),
    "multi_transform_wrong_state": (
        lambda: _update(optim.multi_transform({"a": optim.sgd(0.1)}, "a"), state=()),
        TypeError,
        r"multi_transform: expected a MultiTransformState .*, got a tuple of length 0",
    ),
    "multisteps_opt": (
        lambda: optim.MultiSteps(optim.adam, 2),
        TypeError,
        r"MultiSteps: opt must be a GradientTransformation, got function",
    ),
    "multisteps_k_zero": (
        lambda: optim.MultiSteps(optim.sgd(0.1), 0),
        ValueError,
        r"MultiSteps: every_k_schedule must be at least 1 .*, got 0",
    ),
    "multisteps_k_float": (
        lambda: optim.MultiSteps(optim.sgd(0.1), 2.0),
        TypeError,
        r"MultiSteps: every_k_schedule must be a positive int or a function .*, got float 2\.0",
    ),
    "multisteps_k_bool": (
        lambda: optim.MultiSteps(optim.sgd(0.1), True),
        TypeError,
        r"every_k_schedule must be a positive int .*, got bool True",
    ),
    "multisteps_schedule_not_scalar": (
        lambda: _update(
            optim.MultiSteps(optim.sgd(0.1), lambda s: torch.ones(2)).gradient_transformation()
        ),
        ValueError,
        r"MultiSteps: a schedule must return a scalar .* shape \(2,\)",
    ),
    "multisteps_skip_fn_not_bool": (
        lambda: _update(
            optim.MultiSteps(
                optim.sgd(0.1), 2, should_skip_update_fn=lambda u, s, p: (0.0, ())
            ).gradient_transformation()
        ),
        ValueError,
        r"should_skip_update_fn must return \(skip, info\) with skip a 0-d bool tensor, but "
        r"skip is float 0\.0",
    ),
    "multisteps_wrong_state": (
        lambda: optim.MultiSteps(optim.sgd(0.1), 2).update(G, optim.sgd(0.1).init(P), P),
        TypeError,
        r"MultiSteps: expected a MultiStepsState .*, got a tuple of length 3",
    ),
    "multisteps_acc_structure": (
        lambda: optim.MultiSteps(optim.sgd(0.1), 2).update(
            G, optim.MultiSteps(optim.sgd(0.1), 2).init([torch.zeros(1)]), P
        ),
        ValueError,
        r"MultiSteps: the state's accumulated gradients must have the structure of the updates",
    ),
    "inject_not_callable": (
        lambda: optim.inject_hyperparams(optim.sgd(0.1)),
        TypeError,
        r"inject_hyperparams: expected an optimizer factory such as optim\.adam, got a "
        r"GradientTransformation",
    ),
    "inject_unknown_static": (
        lambda: optim.inject_hyperparams(optim.sgd, static_args=("lr",)),
        ValueError,
        r"inject_hyperparams: static_args \['lr'\] are not parameters of sgd, whose parameters "
        r"are \['learning_rate'",
    ),
    "inject_bad_arguments": (
        lambda: optim.inject_hyperparams(optim.sgd)(lr=0.1),
        TypeError,
        r"inject_hyperparams: cannot call sgd with these arguments: .*learning_rate",
    ),
    "inject_tensor_not_0d": (
        lambda: optim.inject_hyperparams(optim.sgd)(torch.ones(2)),
        ValueError,
        r"inject_hyperparams: the hyperparameter learning_rate must be a number or a 0-d "
        r"tensor, got a tensor of shape \(2,\)\. Pass it in static_args",
    ),
    "inject_keys_changed": (
        lambda: (lambda opt: opt.update(G, opt.init(P)._replace(hyperparams={"lr": 0.1}), P))(
            optim.inject_hyperparams(optim.sgd)(0.1)
        ),
        ValueError,
        r"state\.hyperparams must have the keys \['learning_rate', 'weight_decay'\], got "
        r"\['lr'\]\. Change values, not keys",
    ),
    "inject_value_not_number": (
        lambda: (
            lambda opt: opt.update(
                G, opt.init(P)._replace(hyperparams={"learning_rate": "x", "weight_decay": 0.0}), P
            )
        )(optim.inject_hyperparams(optim.sgd)(0.1)),
        TypeError,
        r"the hyperparameter learning_rate must be a number or a 0-d tensor, got str 'x'",
    ),
    "inject_negative_learning_rate": (
        lambda: (
            lambda opt: opt.update(
                G, opt.init(P)._replace(hyperparams={"learning_rate": -1.0, "weight_decay": 0.0}), P
            )
        )(optim.inject_hyperparams(optim.sgd)(0.1)),
        ValueError,
        r"scale_by_learning_rate: learning_rate must be a non-negative number, got -1\.0",
    ),
    "inject_schedule_not_scalar": (
        lambda: optim.inject_hyperparams(optim.sgd)(lambda c: torch.ones(3)).init(P),
        ValueError,
        r"inject_hyperparams: a schedule must return a scalar .* shape \(3,\)",
    ),
    "inject_wrong_state": (
        lambda: _update(optim.inject_hyperparams(optim.sgd)(0.1), state=optim.EmptyState()),
        TypeError,
        r"inject_hyperparams: expected a InjectHyperparamsState",
    ),
    "apply_if_finite_inner": (
        lambda: optim.apply_if_finite(optim.sgd, 2),
        TypeError,
        r"apply_if_finite: inner must be a GradientTransformation, got function",
    ),
    "apply_if_finite_negative": (
        lambda: optim.apply_if_finite(optim.sgd(0.1), -1),
        ValueError,
        r"apply_if_finite: max_consecutive_errors must be a non-negative int, got int -1",
    ),
    "apply_if_finite_float": (
        lambda: optim.apply_if_finite(optim.sgd(0.1), 2.5),
        ValueError,
        r"max_consecutive_errors must be a non-negative int, got float 2\.5",
    ),
    "apply_if_finite_wrong_state": (
        lambda: _update(optim.apply_if_finite(optim.sgd(0.1), 2), state=(1, 2)),
        TypeError,
        r"apply_if_finite: expected a ApplyIfFiniteState",
    ),
    "ema_decay_out_of_range": (
        lambda: optim.ema(1.5),
        ValueError,
        r"ema: decay must be a number in \[0, 1\] or a 0-d tensor, got float 1\.5",
    ),
    "ema_decay_string": (
        lambda: optim.ema("0.9"),
        ValueError,
        r"ema: decay must be a number in \[0, 1\] or a 0-d tensor, got str '0\.9'",
    ),
    "ema_decay_tensor_not_0d": (
        lambda: optim.ema(torch.ones(2)),
        ValueError,
        r"ema: decay must be a number, a 0-d tensor or a schedule, got a tensor of shape \(2,\)",
    ),
    "ema_state_structure": (
        lambda: optim.ema(0.9).update(G, optim.ema(0.9).init([torch.zeros(2)])),
        ValueError,
        r"ema: the state's moving average \(ema\) must have the structure of the updates",
    ),
    "lookahead_fast_optimizer": (
        lambda: optim.lookahead(optim.sgd, 2, 0.5),
        TypeError,
        r"lookahead: fast_optimizer must be a GradientTransformation, got function",
    ),
    "lookahead_sync_period": (
        lambda: optim.lookahead(optim.sgd(0.1), 0, 0.5),
        ValueError,
        r"lookahead: sync_period must be an int >= 1, got int 0",
    ),
    "lookahead_slow_step_size": (
        lambda: optim.lookahead(optim.sgd(0.1), 2, -0.5),
        ValueError,
        r"lookahead: slow_step_size must be a non-negative number, got -0\.5",
    ),
    "lookahead_no_params": (
        lambda: _update(optim.lookahead(optim.sgd(0.1), 2, 0.5), params=None),
        TypeError,
        r"lookahead: update needs params=LookaheadParams\(fast, slow\), .* got NoneType None\. "
        r"Start from LookaheadParams\.init_synced\(params\)",
    ),
    "lookahead_plain_params": (
        lambda: _update(optim.lookahead(optim.sgd(0.1), 2, 0.5)),
        TypeError,
        r"update needs params=LookaheadParams\(fast, slow\), .* got a dict of length 2",
    ),
    "lookahead_slow_structure": (
        lambda: _update(
            optim.lookahead(optim.sgd(0.1), 2, 0.5), params=optim.LookaheadParams(P, [P["w"]])
        ),
        ValueError,
        r"lookahead: the slow parameters must have the structure of the updates",
    ),
    "lookahead_wrong_state": (
        lambda: _update(
            optim.lookahead(optim.sgd(0.1), 2, 0.5),
            state=optim.sgd(0.1).init(P),
            params=optim.LookaheadParams.init_synced(P),
        ),
        TypeError,
        r"lookahead: expected a LookaheadState",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors(case: str) -> None:
    """Each bad input raises funcgrad's error naming the wrapper, the problem and the fix."""
    fn, error, match = ERRORS[case]
    with pytest.raises(error, match=match):
        fn()


@pytest.mark.parametrize(
    "make",
    [
        lambda: optim.masked(optim.sgd(0.1), {"w": True, "c": False}).init(P),
        lambda: optim.multi_transform({"a": optim.sgd(0.1)}, ["a", "a"]).init(P),
    ],
    ids=["mask", "labels"],
)
def test_prefix_error_suggests_a_fix_that_fits(make: Callable[[], Any]) -> None:
    """The prefix error of a mask or label tree suggests a bool or a label for a subtree, not
    vmap's "an int or None" (funcgrad._api_util.broadcast_prefix's hint)."""
    with pytest.raises(ValueError, match="pytree prefix") as info:
        make()
    assert "int or None" not in str(info.value)
