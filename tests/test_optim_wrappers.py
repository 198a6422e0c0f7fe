"""Tests for ``inject_hyperparams``, ``ema`` and ``lookahead`` (``funcgrad/optim/_wrappers.py``):
optax's numerics, laws, vmap/compile, errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import (
    ENSEMBLE_NO_NANS,
    WRAPPED_STEPS,
    assert_leaves_close,
    compare_with_optax,
    ensemble_runs,
    optax_module,
    run_funcgrad_with_state,
    run_optax_with_state,
    separable_problem,
    t,
    to_jax,
    trees,
)
from hypothesis import given, settings

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

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

    _, state, theirs_state = compare_with_optax(
        ours, theirs, seed=8, state=False, fg={"edit": edit_ours}, ox={"edit": edit_theirs}
    )
    assert_leaves_close(state.inner_state, theirs_state.inner_state)
    for key in ("learning_rate", "b1", "b2", "eps", "eps_root"):
        assert_leaves_close(state.hyperparams[key], theirs_state.hyperparams[key])
    assert state.count == WRAPPED_STEPS
    assert_trees_allclose(
        state.hyperparams["b1"], torch.tensor(0.9 - 0.3 / WRAPPED_STEPS, dtype=torch.float64)
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

    _, state, theirs_state = compare_with_optax(
        ours, theirs, seed=9, state=False, fg={"edit": edit_ours}, ox={"edit": edit_theirs}
    )
    assert_leaves_close(state.inner_state, theirs_state.inner_state)


def test_injected_weight_decay_needs_params_and_says_why() -> None:
    """sgd's default weight_decay=0.0 becomes a tensor under inject_hyperparams, so the decay
    step needs params: the error says so and names the static_args way out, which works."""
    p = {"w": torch.tensor([1.0, -2.0])}
    opt = optim.inject_hyperparams(optim.sgd)(learning_rate=0.1)
    with pytest.raises(ValueError, match=r"add_decayed_weights: .*needs the current param.*"
                       r"weight_decay is a tensor here .*static_args=\('weight_decay',\)"):  # fmt: skip
        opt.update(p, opt.init(p))
    assert_trees_allclose(opt.update(p, opt.init(p), p)[0], {"w": torch.tensor([-0.1, 0.2])})
    plain = optim.inject_hyperparams(optim.sgd, static_args=("weight_decay",))(learning_rate=0.1)
    assert_trees_allclose(plain.update(p, plain.init(p))[0], {"w": torch.tensor([-0.1, 0.2])})


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
# ema
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("debias", [True, False])
@pytest.mark.parametrize("decay", [0.9, 0.5])
def test_ema_matches_optax(decay: float, debias: bool) -> None:
    """chain(ema, scale) follows optax over 60 steps, the moving average included."""
    ox = optax_module()
    compare_with_optax(
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
    params, loss = separable_problem(12)
    ours = optim.lookahead(optim.adam(0.05), sync_period, alpha, reset_state)
    theirs = ox.lookahead(ox.adam(0.05), sync_period, alpha, reset_state)
    traj, s = run_funcgrad_with_state(
        ours, optim.LookaheadParams.init_synced(params), loss, at=lambda p: p.fast
    )
    jtraj, js = run_optax_with_state(
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


def _ensembles() -> dict[str, tuple[Any, list[set[int]]]]:
    return {
        "ema": (optim.chain(optim.ema(0.9), optim.scale(-0.05)), ENSEMBLE_NO_NANS),
    }


@pytest.mark.parametrize("name", list(_ensembles()))
def test_vmap_ensemble_equals_separate_runs(name: str) -> None:
    """vmap over 3 parameter sets and states == 3 separate runs (members may skip differently)."""
    params, state, expected, expected_state = ensemble_runs(*_ensembles()[name])
    assert_trees_allclose(params, expected, rtol=1e-12, atol=1e-14)
    assert_trees_allclose(state, expected_state, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("factory", ["sgd", "adam"])
def test_inject_hyperparams_compiled_step_takes_new_learning_rate(factory: str) -> None:
    """A compiled step reads the learning rate from the state: changing it needs no Python
    branching on tensors (fullgraph) and gives the eager result."""
    opt = {
        "sgd": lambda: optim.inject_hyperparams(optim.sgd)(learning_rate=0.1, momentum=0.9),
        "adam": lambda: optim.inject_hyperparams(optim.adam)(learning_rate=0.1),
    }[factory]()
    params, loss = separable_problem(31)
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
    params, loss = separable_problem(32)
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
