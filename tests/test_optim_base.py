"""Tests for the optimizer interface (``funcgrad/optim/_base.py``) and its list arithmetic
(``funcgrad/optim/_foreach.py``).

Covers the contract every transformation shares: states are pytrees of NamedTuples and tensors,
step counters are 0-d int32 tensors, ``update`` is pure, and the foreach fast path (eager) and
the per-leaf path (inside ``fg.vmap``/``fg.grad``) give the same numbers. ``identity``,
``set_to_zero``, ``chain`` and ``apply_updates`` are checked against optax in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import helpers
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import optim
from funcgrad.optim import _foreach
from funcgrad.optim._base import (
    check_learning_rate,
    evaluate_schedule,
    new_count,
    require_params,
    safe_increment,
)
from funcgrad.testing import assert_trees_allclose

F64 = torch.float64

# Leaves from a small palette of shapes (JAX compiles each primitive once per shape).
_PALETTE = [(), (3,), (2, 3)]
trees = helpers.trees(st.sampled_from(_PALETTE).flatmap(helpers.tensors), max_leaves=5)
nonempty_trees = trees.filter(lambda tree: len(fg.tree.leaves(tree)) > 0)


def _optax() -> Any:
    helpers.require_jax()
    import optax

    return optax


def random_like(tree: Any, seed: int) -> Any:
    leaves, treedef = fg.tree.flatten(tree)
    return fg.tree.unflatten(
        treedef,
        [helpers.t(*x.shape, seed=seed + 7919 * i, dtype=x.dtype) for i, x in enumerate(leaves)],
    )


def decay_mask(params: Any) -> Any:
    return fg.tree.map(lambda x: x.dim() > 1, params)


# Optimizers covering every transformation of _transforms.py and the aliases.
OPTIMIZERS: dict[str, Callable[[], optim.GradientTransformation]] = {
    "sgd": lambda: optim.sgd(0.1),
    "sgd_nesterov_wd": lambda: optim.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    "adam": lambda: optim.adam(0.01, weight_decay=0.1),
    "adam_eps_root_nesterov": lambda: optim.adam(0.01, eps_root=1e-6, nesterov=True),
    "adam_tensor_lr": lambda: optim.adam(torch.tensor(0.01, dtype=F64)),
    "adam_schedule": lambda: optim.adam(lambda c: 0.01 / (1.0 + c.to(F64))),
    "adamw_mask": lambda: optim.adamw(0.01, weight_decay=0.1, mask=decay_mask),
    "adam_composed": lambda: optim.chain(
        optim.add_decayed_weights(0.1), optim.scale_by_adam(), optim.scale_by_learning_rate(0.01)
    ),
    "clip_chain": lambda: optim.chain(
        optim.zero_nans(),
        optim.clip(0.5),
        optim.clip_by_global_norm(1.0),
        optim.trace(0.9),
        optim.scale(-0.1),
    ),
    "set_to_zero": lambda: optim.set_to_zero(),
    "identity": lambda: optim.identity(),
}


# Eagerly, these run torch's fused Adam kernel (NOTE [fused Adam in eager mode]): torch.optim's
# arithmetic, equal to the composed per-leaf ops to rounding but not bit for bit. The composed
# chain ("adam_composed") keeps Adam's foreach ops under the exact comparison.
FUSED = {"adam", "adam_tensor_lr", "adam_schedule", "adamw_mask"}


def _tolerance(name: str) -> dict[str, float]:
    return {"rtol": 1e-13, "atol": 1e-16} if name in FUSED else {"rtol": 0, "atol": 0}


def _params() -> dict[str, Any]:
    return {"w": helpers.t(3, 4, seed=1), "b": helpers.t(4, seed=2), "s": helpers.t(seed=3)}


# --------------------------------------------------------------------------------------------
# identity, set_to_zero, chain
# --------------------------------------------------------------------------------------------


def test_gradient_transformation_is_a_namedtuple_of_init_and_update() -> None:
    """A GradientTransformation unpacks into (init, update) and is built from any two callables."""
    t = optim.GradientTransformation(lambda p: (), lambda u, s, p=None: (u, s))
    init, update = t
    assert t._fields == ("init", "update")
    assert init is t.init
    assert update is t.update
    assert optim.chain(t).update([torch.ones(1)], ((),))[0][0].item() == 1.0


@settings(max_examples=10)
@given(params=trees, seed=helpers.seeds)
def test_identity_matches_optax(params: Any, seed: int) -> None:
    """identity returns the very same updates and an EmptyState, as optax.identity."""
    ox = _optax()
    g = random_like(params, seed)
    t = optim.identity()
    out, state = t.update(g, t.init(params), params)
    assert out is g
    assert state == optim.EmptyState()
    ox_out, _ = ox.identity().update(helpers.to_jax(fg.tree.leaves(g)), ox.identity().init(None))
    assert_trees_allclose(fg.tree.leaves(out), helpers.to_torch(ox_out), rtol=0, atol=0)


@settings(max_examples=10)
@given(params=trees, seed=helpers.seeds)
def test_set_to_zero_matches_optax(params: Any, seed: int) -> None:
    """set_to_zero gives fresh zeros of each leaf's shape and dtype, as optax.set_to_zero."""
    ox = _optax()
    g = random_like(params, seed)
    before = fg.tree.map(torch.clone, g)
    t = optim.set_to_zero()
    out, state = t.update(g, t.init(params))
    assert state == optim.EmptyState()
    assert fg.tree.structure(out) == fg.tree.structure(g)
    ox_out, _ = ox.set_to_zero().update(helpers.to_jax(fg.tree.leaves(g)), None)
    assert_trees_allclose(fg.tree.leaves(out), helpers.to_torch(ox_out), rtol=0, atol=0)
    assert_trees_allclose(g, before, rtol=0, atol=0)


def _three() -> list[optim.GradientTransformation]:
    return [optim.scale_by_adam(0.8, 0.9), optim.trace(0.5, nesterov=True), optim.scale(-0.1)]


@settings(max_examples=10)
@given(params=nonempty_trees, seed=helpers.seeds)
def test_chain_applies_in_order(params: Any, seed: int) -> None:
    """Law: chain(a, b, c) is c after b after a, with the tuple of their states as its state."""
    a, b, c = _three()
    chained = optim.chain(a, b, c)
    state = chained.init(params)
    sa, sb, sc = a.init(params), b.init(params), c.init(params)
    assert_trees_allclose(state, (sa, sb, sc), rtol=0, atol=0)
    for k in range(3):
        g = random_like(params, seed + k)
        out, state = chained.update(g, state, params)
        u, sa = a.update(g, sa, params)
        u, sb = b.update(u, sb, params)
        u, sc = c.update(u, sc, params)
        assert_trees_allclose(out, u, rtol=0, atol=0)
        assert_trees_allclose(state, (sa, sb, sc), rtol=0, atol=0)


@settings(max_examples=10)
@given(params=nonempty_trees, seed=helpers.seeds)
def test_chain_is_associative_and_empty_chain_is_identity(params: Any, seed: int) -> None:
    """Law: chain(chain(a, b), c) and chain(a, chain(b, c)) agree; chain() is the identity."""
    left = optim.chain(optim.chain(*_three()[:2]), _three()[2])
    right = optim.chain(_three()[0], optim.chain(*_three()[1:]))
    sl, sr = left.init(params), right.init(params)
    for k in range(3):
        g = random_like(params, seed + k)
        ul, sl = left.update(g, sl)
        ur, sr = right.update(g, sr)
        assert_trees_allclose(ul, ur, rtol=0, atol=0)
    empty = optim.chain()
    g = random_like(params, seed)
    assert empty.init(params) == ()
    assert empty.update(g, ())[0] is g


@settings(max_examples=8)
@given(params=nonempty_trees, seed=helpers.seeds)
def test_chain_matches_optax(params: Any, seed: int) -> None:
    """chain of several blocks gives optax.chain's updates and state leaves, step by step."""
    jax, _ = helpers.require_jax()
    ox = _optax()
    ours = optim.chain(*_three())
    theirs = ox.chain(ox.scale_by_adam(0.8, 0.9), ox.trace(0.5, nesterov=True), ox.scale(-0.1))
    leaves = lambda tree: helpers.to_jax(fg.tree.leaves(tree))  # noqa: E731
    state, ox_state = ours.init(params), theirs.init(leaves(params))
    for k in range(3):
        g = random_like(params, seed + k)
        out, state = ours.update(g, state)
        ox_out, ox_state = theirs.update(leaves(g), ox_state)
        assert_trees_allclose(fg.tree.leaves(out), helpers.to_torch(ox_out), rtol=1e-12)
        ox_state_leaves = helpers.to_torch(jax.tree.leaves(ox_state))
        assert_trees_allclose(fg.tree.leaves(state), ox_state_leaves, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# apply_updates
# --------------------------------------------------------------------------------------------


def _to_jax_any(x: torch.Tensor) -> Any:
    """A tensor to a JAX array of the same dtype (bfloat16 through float32, exactly)."""
    _, jnp = helpers.require_jax()
    if x.dtype == torch.bfloat16:
        return jnp.asarray(x.float().numpy(), dtype=jnp.bfloat16)
    return jnp.asarray(x.numpy())


def _to_torch_any(x: Any, dtype: torch.dtype) -> torch.Tensor:
    _, jnp = helpers.require_jax()
    return torch.from_numpy(np.array(x.astype(jnp.float64))).to(dtype)


LOW = [torch.bfloat16, torch.float16, torch.float32, torch.float64]


@pytest.mark.parametrize("u_dtype", LOW)
@pytest.mark.parametrize("p_dtype", LOW)
def test_apply_updates_matches_optax_and_keeps_dtype(
    p_dtype: torch.dtype, u_dtype: torch.dtype
) -> None:
    """params + updates in each parameter's dtype, as optax.apply_updates computes it."""
    ox = _optax()
    params = {
        "w": helpers.t(64, 8, seed=1, dtype=p_dtype),
        "b": helpers.t(8, seed=2, dtype=p_dtype),
    }
    for scale in (1.0, 1e-2, 1e-3):
        updates = fg.tree.map(lambda x, s=scale: (s * x).to(u_dtype), random_like(params, 5))
        out = optim.apply_updates(params, updates)
        jp = fg.tree.map(_to_jax_any, params)
        desired = ox.apply_updates(jp, fg.tree.map(_to_jax_any, updates))
        desired = fg.tree.map(lambda x: _to_torch_any(x, p_dtype), desired)
        assert_trees_allclose(out, desired, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("p_dtype", "param", "update"),
    [
        # 1 + (2**-8 + 1e-6) is just above the midpoint between bfloat16's 1 and 1 + 2**-7; the
        # update rounded to bfloat16 first is 2**-8 exactly, and 1 + 2**-8 rounds to even (1).
        (torch.bfloat16, 1.0, 2.0**-8 + 1e-6),
        (torch.float32, 1.0, 2.0**-24 + 1e-15),
        (torch.float16, 1.0, 2.0**-11 + 1e-7),
    ],
    ids=["bfloat16", "float32", "float16"],
)
def test_apply_updates_rounds_once(p_dtype: torch.dtype, param: float, update: float) -> None:
    """A float64 update is added in float64 and rounded once to the parameter dtype (optax's
    ``(p + u).astype(p.dtype)``), not rounded to the parameter dtype before the addition."""
    ox = _optax()
    p = torch.tensor([param], dtype=p_dtype)
    u = torch.tensor([update], dtype=F64)
    desired = _to_torch_any(ox.apply_updates(_to_jax_any(p), _to_jax_any(u)), p_dtype)
    assert desired.item() != param  # the case is a rounding boundary: once rounded, it moves
    assert_trees_allclose(optim.apply_updates(p, u), desired, rtol=0, atol=0)


@settings(max_examples=15)
@given(params=nonempty_trees, seed=helpers.seeds)
def test_apply_updates_laws(params: Any, seed: int) -> None:
    """Law: apply_updates(p, u) == p + u leafwise, p + 0 == p; inputs are not modified."""
    u = random_like(params, seed)
    before = fg.tree.map(torch.clone, (params, u))
    out = optim.apply_updates(params, u)
    assert_trees_allclose(out, fg.tree.map(lambda a, b: a + b, params, u), rtol=0, atol=0)
    zeros = optim.apply_updates(params, fg.tree.zeros_like(params))
    assert_trees_allclose(zeros, params, rtol=0, atol=0)
    assert_trees_allclose((params, u), before, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("updates", "shown"),
    [
        (
            {"w": torch.ones(2), "c": torch.ones(2)},
            r"\(it has tree\['c'\], which the params do not\)",
        ),
        ({"w": torch.ones(2)}, r"\(it lacks tree\['b'\]\)"),
    ],
    ids=["extra_key", "missing_key"],
)
def test_apply_updates_structure_mismatch_names_path(updates: Any, shown: str) -> None:
    """Params and updates of different structures: the message names the differing path."""
    params = {"w": torch.ones(2), "b": torch.ones(2)}
    with pytest.raises(
        ValueError, match=r"apply_updates: the updates must have the structure .*" + shown
    ):
        optim.apply_updates(params, updates)


# --------------------------------------------------------------------------------------------
# States: pytrees of NamedTuples and tensors; counters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_is_a_pytree_of_tensors_that_round_trips(name: str) -> None:
    """State leaves are tensors; flatten/unflatten rebuilds it (NamedTuples included), and
    the rebuilt state continues the run exactly as the original."""
    opt = OPTIMIZERS[name]()
    params = _params()
    state = opt.init(params)
    _, state = opt.update(random_like(params, 1), state, params)
    leaves, treedef = fg.tree.flatten(state)
    assert all(isinstance(x, torch.Tensor) for x in leaves)
    rebuilt = fg.tree.unflatten(treedef, [x.clone() for x in leaves])
    assert fg.tree.structure(rebuilt) == treedef
    assert [type(s) for s in rebuilt] == [type(s) for s in state]
    g = random_like(params, 2)
    assert_trees_allclose(
        opt.update(g, rebuilt, params), opt.update(g, state, params), rtol=0, atol=0
    )


@pytest.mark.parametrize("name", ["adam", "adam_schedule", "adamw_mask"])
def test_step_counters_are_int32_scalars_that_increase(name: str) -> None:
    """Every count in the state is a 0-d int32 tensor, 0 after init and k after k steps."""
    opt = OPTIMIZERS[name]()
    params = _params()
    state = opt.init(params)

    def counts(state: Any) -> list[torch.Tensor]:
        return [s.count for s in state if "count" in getattr(s, "_fields", ())]

    assert counts(state)
    for k in range(4):
        for c in counts(state):
            assert c.dtype == torch.int32
            assert c.shape == ()
            assert c.item() == k
        _, state = opt.update(random_like(params, k), state, params)


def test_new_count_and_safe_increment() -> None:
    """new_count is a 0-d int32 zero; safe_increment adds one and saturates at the int32 max."""
    c = new_count([torch.ones(2, dtype=F64)])
    assert c.dtype == torch.int32
    assert c.shape == ()
    assert c.item() == 0
    assert new_count([]).dtype == torch.int32
    assert safe_increment(c).item() == 1
    top = torch.tensor(torch.iinfo(torch.int32).max, dtype=torch.int32)
    assert safe_increment(top).item() == torch.iinfo(torch.int32).max
    assert safe_increment(top).dtype == torch.int32
    assert c.item() == 0  # not modified


# --------------------------------------------------------------------------------------------
# Purity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_update_never_mutates_its_inputs(name: str) -> None:
    """update leaves updates, state and params untouched: values and version counters."""
    opt = OPTIMIZERS[name]()
    params = _params()
    state = opt.init(params)
    _, state = opt.update(random_like(params, 1), state, params)  # non-trivial state
    for k in range(2):
        g = random_like(params, 2 + k)
        inputs = (g, state, params)
        copies = fg.tree.map(torch.clone, inputs)
        versions = [x._version for x in fg.tree.leaves(inputs)]
        _, new_state = opt.update(*inputs)
        assert_trees_allclose(inputs, copies, rtol=0, atol=0)
        assert [x._version for x in fg.tree.leaves(inputs)] == versions
        state = new_state


# --------------------------------------------------------------------------------------------
# The foreach fast path and the per-leaf path
# --------------------------------------------------------------------------------------------


def test_fast_path_only_outside_torch_func_transforms() -> None:
    """Eager code takes the foreach path; code inside fg.vmap or fg.grad takes the per-leaf one."""
    assert _foreach.fast()
    seen: list[bool] = []

    def f(x: torch.Tensor) -> torch.Tensor:
        seen.append(_foreach.fast())
        return x.sum()

    fg.vmap(f)(torch.ones(2, 3))
    fg.grad(f)(torch.ones(3))
    assert seen == [False, False]


def _run(opt: optim.GradientTransformation, params: Any, grads: list[Any]) -> list[Any]:
    state = opt.init(params)
    outs = []
    for g in grads:
        u, state = opt.update(g, state, params)
        params = optim.apply_updates(params, u)
        outs.append((u, state, params))
    return outs


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fast_and_per_leaf_paths_agree_exactly(name: str) -> None:
    """The same steps eagerly (foreach kernels) and inside fg.vmap over a batch of one
    (per-leaf torch ops) give bit-identical updates, states and parameters (equal to rounding
    for the fused Adam aliases)."""
    opt = OPTIMIZERS[name]()
    params = _params()
    grads = [random_like(params, k) for k in range(3)]
    eager = _run(opt, params, grads)
    batched = fg.vmap(lambda p, gs: _run(opt, p, gs))(
        fg.tree.map(lambda x: x[None], params), fg.tree.map(lambda x: x[None], grads)
    )
    assert_trees_allclose(fg.tree.map(lambda x: x[0], batched), eager, **_tolerance(name))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fast_and_grad_paths_agree_exactly(name: str) -> None:
    """Steps computed inside fg.grad (per-leaf ops on grad-tracking tensors) equal eager ones
    (to rounding for the fused Adam aliases)."""
    opt = OPTIMIZERS[name]()
    params = _params()
    grads = [random_like(params, k) for k in range(3)]
    eager = _run(opt, params, grads)

    def f(p: Any) -> tuple[torch.Tensor, Any]:
        outs = _run(opt, p, grads)
        return sum(x.sum() for x in fg.tree.leaves(outs[-1][2])), outs

    _, inside = fg.grad(f, has_aux=True)(params)
    assert_trees_allclose(inside, eager, **_tolerance(name))


# _foreach list ops: name -> (op on lists (xs, ys, zs), reference on one leaf (x, y, z))
_S = 0.37
_T = torch.tensor(0.37, dtype=F64)
FOREACH_OPS: dict[str, tuple[Callable[..., list[torch.Tensor]], Callable[..., torch.Tensor]]] = {
    "scale": (lambda a, b, c: _foreach.scale(a, _S), lambda x, y, z: x * _S),
    "scale_tensor": (lambda a, b, c: _foreach.scale(a, _T), lambda x, y, z: x * _T),
    "add": (lambda a, b, c: _foreach.add(a, b, _S), lambda x, y, z: torch.add(x, y, alpha=_S)),
    "add_tensor": (lambda a, b, c: _foreach.add(a, b, _T), lambda x, y, z: x + _T * y),
    "sub": (lambda a, b, c: _foreach.sub(a, b), lambda x, y, z: x - y),
    "mul": (lambda a, b, c: _foreach.mul(a, b), lambda x, y, z: x * y),
    "div": (lambda a, b, c: _foreach.div(a, c), lambda x, y, z: x / z),
    "add_scalar": (lambda a, b, c: _foreach.add_scalar(a, _S), lambda x, y, z: x + _S),
    "lerp": (lambda a, b, c: _foreach.lerp(a, b, 0.1), lambda x, y, z: torch.lerp(x, y, 0.1)),
    "lerp_tensor": (lambda a, b, c: _foreach.lerp(a, b, _T), lambda x, y, z: x + _T * (y - x)),
    "addcmul": (
        lambda a, b, c: _foreach.addcmul(a, b, c, _S),
        lambda x, y, z: torch.addcmul(x, y, z, value=_S),
    ),
    "addcdiv": (
        lambda a, b, c: _foreach.addcdiv(a, b, c, _S),
        lambda x, y, z: torch.addcdiv(x, y, z, value=_S),
    ),
    "sqrt": (lambda a, b, c: _foreach.sqrt(c), lambda x, y, z: z.sqrt()),
    "abs": (lambda a, b, c: _foreach.abs(a), lambda x, y, z: x.abs()),
    "sign": (lambda a, b, c: _foreach.sign(a), lambda x, y, z: x.sign()),
    "maximum": (lambda a, b, c: _foreach.maximum(a, b), lambda x, y, z: torch.maximum(x, y)),
    "clamp": (lambda a, b, c: _foreach.clamp(a, -0.5, 0.5), lambda x, y, z: x.clamp(-0.5, 0.5)),
    "zeros_like": (lambda a, b, c: _foreach.zeros_like(a), lambda x, y, z: torch.zeros_like(x)),
    "scale_": (
        lambda a, b, c: _foreach.scale_([x.clone() for x in a], _S),
        lambda x, y, z: x * _S,
    ),
    "add_scalar_": (
        lambda a, b, c: _foreach.add_scalar_([x.clone() for x in a], _S),
        lambda x, y, z: x + _S,
    ),
    "div_": (lambda a, b, c: _foreach.div_([x.clone() for x in a], c), lambda x, y, z: x / z),
    "addcmul_": (
        lambda a, b, c: _foreach.addcmul_([x.clone() for x in a], b, c, _S),
        lambda x, y, z: torch.addcmul(x, y, z, value=_S),
    ),
}


def _lists(dtypes: list[torch.dtype]) -> tuple[list[torch.Tensor], ...]:
    shapes = [(37,), (5, 3), (), (1000,), (2, 2)]
    xs = [helpers.t(*s, seed=i, dtype=d) for i, (s, d) in enumerate(zip(shapes, dtypes))]
    ys = [helpers.t(*x.shape, seed=50 + i, dtype=x.dtype) for i, x in enumerate(xs)]
    zs = [helpers.t(*x.shape, seed=90 + i, dtype=x.dtype).abs() + 0.1 for i, x in enumerate(xs)]
    return xs, ys, zs


MIXED = [F64, torch.float32, F64, torch.float32, F64]


@pytest.mark.parametrize("dtypes", [[F64] * 5, MIXED], ids=["float64", "mixed"])
@pytest.mark.parametrize("name", list(FOREACH_OPS))
def test_foreach_op_equals_its_single_tensor_op(name: str, dtypes: list[torch.dtype]) -> None:
    """Each list op equals the single-tensor torch op leaf by leaf (also on lists mixing
    dtypes, which the foreach kernels group), and never modifies its inputs."""
    op, ref = FOREACH_OPS[name]
    xs, ys, zs = _lists(dtypes)
    before = [x.clone() for x in xs + ys + zs]
    out = op(xs, ys, zs)
    expected = [ref(x, y, z) for x, y, z in zip(xs, ys, zs)]
    assert_trees_allclose(out, expected, rtol=0, atol=0)
    assert_trees_allclose(xs + ys + zs, before, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(FOREACH_OPS))
def test_foreach_fast_and_per_leaf_agree_exactly(name: str) -> None:
    """Each list op gives bit-identical results eagerly and inside fg.vmap (batch of one)."""
    op, _ = FOREACH_OPS[name]
    xs, ys, zs = _lists([F64] * 5)
    fast = op(xs, ys, zs)
    one = lambda ts: [x[None] for x in ts]  # noqa: E731
    per_leaf = fg.vmap(op)(one(xs), one(ys), one(zs))
    assert_trees_allclose([x[0] for x in per_leaf], fast, rtol=0, atol=0)


def test_foreach_ops_on_empty_lists() -> None:
    """Every list op maps empty lists to an empty list (a tree without leaves, an empty group)."""
    failing = []
    for name, (op, _) in FOREACH_OPS.items():
        try:
            assert op([], [], []) == []
        except (RuntimeError, AssertionError) as e:
            failing.append(f"{name}: {e}")
    assert not failing, "\n".join(failing)


@pytest.mark.parametrize("dtypes", [[F64] * 5, MIXED], ids=["float64", "mixed"])
def test_sum_of_squares(dtypes: list[torch.dtype]) -> None:
    """sum_of_squares is the squared global norm, eagerly and per leaf, on mixed dtypes too."""
    xs, _, _ = _lists(dtypes)
    expected = sum(x.double().square().sum() for x in xs)
    actual = _foreach.sum_of_squares(xs)
    assert actual.shape == ()
    assert math.isclose(float(actual), float(expected), rel_tol=1e-6)
    per_leaf = fg.vmap(_foreach.sum_of_squares)([x[None] for x in xs])
    assert math.isclose(float(per_leaf[0]), float(expected), rel_tol=1e-6)
    assert float(_foreach.sum_of_squares([])) == 0.0


def test_inplace_ops_write_into_their_first_argument_when_fast() -> None:
    """The underscore ops update the caller's temporaries in place on the fast path."""
    xs, ys, zs = _lists([F64] * 5)
    tmp = [x.clone() for x in xs]
    out = _foreach.addcmul_(tmp, ys, zs, 0.5)
    assert out is tmp
    assert_trees_allclose(tmp, [torch.addcmul(x, y, z, value=0.5) for x, y, z in zip(xs, ys, zs)])


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [optim.adam, optim.scale, "adam", None], ids=str)
def test_chain_refuses_a_factory(bad: Any) -> None:
    """chain given a factory (or anything else) names its position and suggests calling it."""
    with pytest.raises(TypeError, match=r"chain: argument 1 must be a GradientTransformation, got"):
        optim.chain(optim.identity(), bad)
    if callable(bad):
        with pytest.raises(TypeError, match=r"Call the factory \(e\.g\. optim\.adam\(1e-3\)"):
            optim.chain(bad)


@pytest.mark.parametrize(
    ("state", "shown"),
    [
        ((optim.EmptyState(),), r"a tuple of length 1"),
        ([(), ()], r"a list of length 2"),
        (None, "NoneType"),
    ],
    ids=["short", "list", "none"],
)
def test_chain_refuses_a_foreign_state(state: Any, shown: str) -> None:
    """A chain's update given another optimizer's state says what it expected and got."""
    opt = optim.chain(optim.identity(), optim.scale(2.0))
    with pytest.raises(ValueError, match=r"chain: expected the state of 2 chained .*" + shown):
        opt.update([torch.ones(1)], state)


def test_require_params_message() -> None:
    """require_params names the transformation and the call to make."""
    assert require_params("lamb", {"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match=r"optim\.lamb: this transformation needs the current"):
        require_params("lamb", None)


def test_check_learning_rate_accepts_good_values() -> None:
    """Zero, positive numbers, 0-d float tensors and callables are accepted."""
    for value in (0.0, 1, 3e-4, torch.tensor(0.1), torch.tensor(0.0, dtype=F64), lambda c: 0.1):
        check_learning_rate("sgd", value)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (
            -1e-3,
            ValueError,
            r"optim\.sgd: learning_rate must be a non-negative number, got -0\.001",
        ),
        (math.nan, ValueError, r"non-negative number, got nan"),
        (-math.inf, ValueError, r"non-negative number, got -inf"),
        (torch.tensor(-0.5), ValueError, r"non-negative number, got -0\.5"),
        (torch.tensor(math.nan, dtype=F64), ValueError, r"non-negative number, got nan"),
        (torch.ones(3), ValueError, r"got a tensor of shape \(3,\)"),
        (torch.tensor(2, dtype=torch.int32), TypeError, r"floating-point tensor, got torch\.int32"),
        ("0.1", TypeError, r"got str"),
        (None, TypeError, r"got NoneType"),
    ],
    ids=[
        "negative",
        "nan",
        "minus_inf",
        "neg_tensor",
        "nan_tensor",
        "vector",
        "int",
        "str",
        "none",
    ],
)
def test_check_learning_rate_refuses_bad_values(value: Any, error: type, match: str) -> None:
    """Negative, NaN, non-scalar, integer-tensor or non-numeric learning rates are refused."""
    with pytest.raises(error, match=match):
        check_learning_rate("sgd", value)


def test_evaluate_schedule() -> None:
    """A schedule's scalar result passes through; a non-scalar is refused with its shape."""
    count = torch.tensor(4, dtype=torch.int32)
    assert evaluate_schedule("s", lambda c: 0.5 * int(c), count) == 2.0
    assert evaluate_schedule("s", lambda c: c * 0.5, count).item() == 2.0
    with pytest.raises(
        ValueError, match=r"optim\.s: a schedule must return a scalar .* shape \(2,\) at step 4"
    ):
        evaluate_schedule("s", lambda c: torch.ones(2), count)
    with pytest.raises(TypeError, match=r"optim\.s: a schedule must return a scalar .* list"):
        evaluate_schedule("s", lambda c: [0.1], count)
