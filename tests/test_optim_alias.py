"""Tests for the named optimizers ``sgd``, ``adam`` and ``adamw`` (``funcgrad/optim/_alias.py``).

Every trajectory is checked against two independent references in float64: ``torch.optim``
(``.backward()`` gradients, rtol 1e-10 over 60 steps) and optax (``jax.grad`` gradients). The
problems are smooth random losses over a dict of two or three tensors, one function written once
for both array libraries (it takes the module ``m``: ``torch`` or ``jax.numpy``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import helpers
import pytest
import torch
from hypothesis import given, settings

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

STEPS = 60
RTOL, ATOL = 1e-10, 1e-12
SEEDS = [0, 1, 2]

# --------------------------------------------------------------------------------------------
# The harness: a random problem, and one runner per library
# --------------------------------------------------------------------------------------------

_SHAPES = [
    {"b": (4,), "w": (3, 4)},
    {"b": (5,), "s": (), "w": (2, 5)},
    {"b": (3,), "k": (2, 2, 3)},
]


def make_problem(seed: int) -> tuple[dict[str, torch.Tensor], Callable[[Any, Any], Any]]:
    """Random float64 parameters and ``loss(m, params)``: a coupled, non-quadratic function."""
    shapes = _SHAPES[seed % len(_SHAPES)]
    params = {k: helpers.t(*s, seed=1000 * seed + i) for i, (k, s) in enumerate(shapes.items())}
    curv = {
        k: helpers.t(*s, seed=1000 * seed + 10 + i).abs() + 0.5
        for i, (k, s) in enumerate(shapes.items())
    }
    centre = {
        k: helpers.t(*s, seed=1000 * seed + 20 + i) for i, (k, s) in enumerate(shapes.items())
    }
    curv_np = {k: v.numpy() for k, v in curv.items()}
    centre_np = {k: v.numpy() for k, v in centre.items()}

    def loss(m: Any, p: Any) -> Any:
        c, z = (curv, centre) if m is torch else (curv_np, centre_np)
        total = 0.0
        for k in sorted(p):
            total = (
                total + (0.5 * c[k] * (p[k] - z[k]) ** 2).sum() + (0.1 * m.sin(3.0 * p[k])).sum()
            )
        coupling = sum(p[k].sum() for k in sorted(p))
        return total + 0.2 * m.tanh(0.3 * coupling)

    return params, loss


def run_funcgrad(
    opt: optim.GradientTransformation,
    params: Any,
    loss: Callable[[Any, Any], Any],
    steps: int = STEPS,
    before_step: Callable[[int], None] | None = None,
) -> list[Any]:
    """The parameters after each of ``steps`` updates of ``opt`` on ``loss``."""
    grad = fg.grad(lambda p: loss(torch, p))
    state = opt.init(params)
    trajectory = []
    for k in range(steps):
        if before_step is not None:
            before_step(k)
        updates, state = opt.update(grad(params), state, params)
        params = optim.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory


def run_torch(
    make_opt: Callable[[dict[str, torch.nn.Parameter]], torch.optim.Optimizer],
    params: dict[str, torch.Tensor],
    loss: Callable[[Any, Any], Any],
    steps: int = STEPS,
    lr_at: Callable[[int], float] | None = None,
) -> list[Any]:
    """The same trajectory with a stateful ``torch.optim`` optimizer and ``.backward()``."""
    ps = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    opt = make_opt(ps)
    trajectory = []
    for k in range(steps):
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(k)
        opt.zero_grad()
        loss(torch, ps).backward()
        opt.step()
        trajectory.append({n: p.detach().clone() for n, p in ps.items()})
    return trajectory


def run_optax(
    make_opt: Callable[[Any], Any], params: Any, loss: Any, steps: int = STEPS
) -> list[Any]:
    """The same trajectory with optax and ``jax.grad`` (jitted step, float64)."""
    jax, jnp = helpers.require_jax()
    import optax

    opt = make_opt(optax)
    p = helpers.to_jax(params)
    state = opt.init(p)

    @jax.jit
    def step(p: Any, state: Any) -> Any:
        updates, state = opt.update(jax.grad(lambda q: loss(jnp, q))(p), state, p)
        return optax.apply_updates(p, updates), state

    trajectory = []
    for _ in range(steps):
        p, state = step(p, state)
        trajectory.append(helpers.to_torch(p))
    return trajectory


def decay_mask(params: dict[str, Any]) -> dict[str, bool]:
    """Decay matrices, not vectors or scalars (the usual "no decay on biases")."""
    return {k: v.ndim > 1 for k, v in params.items()}


# --------------------------------------------------------------------------------------------
# The configurations: (funcgrad, torch.optim, optax) builders for one learning rate
# --------------------------------------------------------------------------------------------

LR = {"sgd": 0.05, "adam": 0.02}

SGD_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (funcgrad/optax kwargs, torch.optim.SGD kwargs)
    "plain": ({}, {}),
    "momentum": ({"momentum": 0.9}, {"momentum": 0.9}),
    "nesterov": ({"momentum": 0.8, "nesterov": True}, {"momentum": 0.8, "nesterov": True}),
    "weight_decay": ({"weight_decay": 0.03}, {"weight_decay": 0.03}),
    "momentum_weight_decay": (
        {"momentum": 0.7, "weight_decay": 0.1},
        {"momentum": 0.7, "weight_decay": 0.1},
    ),
    "nesterov_weight_decay": (
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05},
    ),
}

ADAM_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "betas_eps": ({"b1": 0.8, "b2": 0.99, "eps": 1e-3}, {"betas": (0.8, 0.99), "eps": 1e-3}),
    "weight_decay": ({"weight_decay": 0.1}, {"weight_decay": 0.1}),
    "weight_decay_betas": (
        {"b1": 0.5, "b2": 0.9, "weight_decay": 0.02},
        {"betas": (0.5, 0.9), "weight_decay": 0.02},
    ),
}

ADAMW_CASES: dict[str, dict[str, Any]] = {
    "decay": {"weight_decay": 0.1},
    "decay_betas": {"weight_decay": 0.3, "b1": 0.7, "b2": 0.95, "eps": 1e-6},
    "mask_tree": {"weight_decay": 0.2, "mask": "tree"},
    "mask_callable": {"weight_decay": 0.2, "mask": "callable"},
}


def _adamw_kwargs(kwargs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    if out.get("mask") == "tree":
        out["mask"] = decay_mask(params)
    elif out.get("mask") == "callable":
        out["mask"] = decay_mask
    return out


def _torch_adamw(kwargs: dict[str, Any]) -> Callable[[dict[str, torch.nn.Parameter]], Any]:
    def make(ps: dict[str, torch.nn.Parameter]) -> torch.optim.Optimizer:
        wd = kwargs["weight_decay"]
        betas = (kwargs.get("b1", 0.9), kwargs.get("b2", 0.999))
        eps = kwargs.get("eps", 1e-8)
        if "mask" in kwargs:
            keep = decay_mask(ps)
            groups = [
                {"params": [p for k, p in ps.items() if keep[k]], "weight_decay": wd},
                {"params": [p for k, p in ps.items() if not keep[k]], "weight_decay": 0.0},
            ]
        else:
            groups = [{"params": list(ps.values()), "weight_decay": wd}]
        return torch.optim.AdamW(groups, lr=LR["adam"], betas=betas, eps=eps)

    return make


# --------------------------------------------------------------------------------------------
# Trajectories against torch.optim and optax
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_follows_torch_optim(case: str, seed: int) -> None:
    """sgd (plain, momentum, nesterov, L2 weight decay) has torch.optim.SGD's trajectory."""
    ours, theirs = SGD_CASES[case]
    params, loss = make_problem(seed)
    actual = run_funcgrad(optim.sgd(LR["sgd"], **ours), params, loss)
    desired = run_torch(lambda ps: torch.optim.SGD(ps.values(), LR["sgd"], **theirs), params, loss)
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_matches_optax(case: str) -> None:
    """sgd matches optax.sgd (with optax.add_decayed_weights first for weight decay)."""
    kwargs = dict(SGD_CASES[case][0])
    params, loss = make_problem(list(SGD_CASES).index(case))
    wd = kwargs.pop("weight_decay", 0.0)
    actual = run_funcgrad(optim.sgd(LR["sgd"], weight_decay=wd, **kwargs), params, loss)
    desired = run_optax(
        lambda ox: ox.chain(ox.add_decayed_weights(wd), ox.sgd(LR["sgd"], **kwargs)), params, loss
    )
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_follows_torch_optim(case: str, seed: int) -> None:
    """adam (with and without L2 weight decay) has torch.optim.Adam's trajectory."""
    ours, theirs = ADAM_CASES[case]
    params, loss = make_problem(seed)
    actual = run_funcgrad(optim.adam(LR["adam"], **ours), params, loss)
    desired = run_torch(
        lambda ps: torch.optim.Adam(ps.values(), LR["adam"], **theirs), params, loss
    )
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("eps_root", [0.0, 1e-6])
@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_matches_optax(case: str, eps_root: float) -> None:
    """adam matches optax.adam (optax.add_decayed_weights first for L2 decay), with eps_root."""
    kwargs = dict(ADAM_CASES[case][0])
    params, loss = make_problem(list(ADAM_CASES).index(case))
    wd = kwargs.pop("weight_decay", 0.0)
    actual = run_funcgrad(
        optim.adam(LR["adam"], eps_root=eps_root, weight_decay=wd, **kwargs), params, loss
    )
    desired = run_optax(
        lambda ox: ox.chain(
            ox.add_decayed_weights(wd), ox.adam(LR["adam"], eps_root=eps_root, **kwargs)
        ),
        params,
        loss,
    )
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("eps_root", [0.0, 1e-6])
@pytest.mark.parametrize("seed", SEEDS)
def test_adam_nesterov_matches_optax_nadam(seed: int, eps_root: float) -> None:
    """adam(nesterov=True) is optax.nadam (torch.optim.NAdam's momentum schedule differs)."""
    params, loss = make_problem(seed)
    kwargs = {"b1": 0.85, "b2": 0.99, "eps": 1e-7, "eps_root": eps_root}
    actual = run_funcgrad(optim.adam(LR["adam"], nesterov=True, **kwargs), params, loss)
    desired = run_optax(lambda ox: ox.nadam(LR["adam"], **kwargs), params, loss)
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", list(ADAMW_CASES))
def test_adamw_follows_torch_optim(case: str, seed: int) -> None:
    """adamw (decoupled decay; a mask as a tree or a callable) has torch.optim.AdamW's path."""
    params, loss = make_problem(seed)
    kwargs = ADAMW_CASES[case]
    actual = run_funcgrad(optim.adamw(LR["adam"], **_adamw_kwargs(kwargs, params)), params, loss)
    desired = run_torch(_torch_adamw(kwargs), params, loss)
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("case", list(ADAMW_CASES))
def test_adamw_matches_optax(case: str, nesterov: bool) -> None:
    """adamw matches optax.adamw, masks and nesterov included."""
    params, loss = make_problem(list(ADAMW_CASES).index(case))
    kwargs = _adamw_kwargs(ADAMW_CASES[case], params)
    actual = run_funcgrad(optim.adamw(LR["adam"], nesterov=nesterov, **kwargs), params, loss)
    desired = run_optax(lambda ox: ox.adamw(LR["adam"], nesterov=nesterov, **kwargs), params, loss)
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


def test_adamw_default_weight_decay_is_optax_default() -> None:
    """adamw's default weight_decay is optax's 1e-4 (torch.optim.AdamW's is 1e-2)."""
    params, loss = make_problem(1)
    actual = run_funcgrad(optim.adamw(LR["adam"]), params, loss, steps=20)
    desired = run_torch(
        lambda ps: torch.optim.AdamW(ps.values(), LR["adam"], weight_decay=1e-4), params, loss, 20
    )
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# Learning rates: a float, a 0-d tensor changed in place, a schedule
# --------------------------------------------------------------------------------------------

OPTIMIZERS: dict[str, tuple[Callable[[Any], Any], Callable[..., Any]]] = {
    # name: (funcgrad factory of the learning rate, torch.optim factory (params, lr))
    "sgd_momentum": (
        lambda lr: optim.sgd(lr, momentum=0.9, weight_decay=0.01),
        lambda ps, lr: torch.optim.SGD(ps.values(), lr, momentum=0.9, weight_decay=0.01),
    ),
    "adam": (
        lambda lr: optim.adam(lr, weight_decay=0.01),
        lambda ps, lr: torch.optim.Adam(ps.values(), lr, weight_decay=0.01),
    ),
    "adamw": (
        lambda lr: optim.adamw(lr, weight_decay=0.1),
        lambda ps, lr: torch.optim.AdamW(ps.values(), lr, weight_decay=0.1),
    ),
}


def _lr_at(name: str, k: int) -> float:
    base = LR["sgd"] if name.startswith("sgd") else LR["adam"]
    return base * (1.0 + 0.5 * math.sin(0.7 * k))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_learning_rate_as_tensor_changed_in_place(name: str) -> None:
    """A 0-d tensor learning rate changed in place between steps: the next step uses it."""
    ours, theirs = OPTIMIZERS[name]
    params, loss = make_problem(2)
    lr = torch.tensor(_lr_at(name, 0), dtype=torch.float64)
    actual = run_funcgrad(ours(lr), params, loss, before_step=lambda k: lr.fill_(_lr_at(name, k)))
    desired = run_torch(
        lambda ps: theirs(ps, _lr_at(name, 0)), params, loss, lr_at=lambda k: _lr_at(name, k)
    )
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_learning_rate_as_constant_tensor(name: str) -> None:
    """A 0-d tensor learning rate gives the trajectory of the same float learning rate."""
    ours, _ = OPTIMIZERS[name]
    params, loss = make_problem(0)
    value = _lr_at(name, 0)
    actual = run_funcgrad(ours(torch.tensor(value, dtype=torch.float64)), params, loss)
    assert_trees_allclose(actual, run_funcgrad(ours(value), params, loss), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_learning_rate_as_schedule(name: str) -> None:
    """A schedule (a function of the step count tensor) is evaluated at counts 0, 1, 2, ..."""
    ours, theirs = OPTIMIZERS[name]
    params, loss = make_problem(1)
    seen: list[torch.Tensor] = []

    def schedule(count: torch.Tensor) -> torch.Tensor:
        seen.append(count)
        return _lr_at(name, 0) * (1.0 + 0.5 * torch.sin(0.7 * count.to(torch.float64)))

    actual = run_funcgrad(ours(schedule), params, loss)
    desired = run_torch(
        lambda ps: theirs(ps, _lr_at(name, 0)), params, loss, lr_at=lambda k: _lr_at(name, k)
    )
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)
    assert [int(c) for c in seen] == list(range(STEPS))
    assert all(c.dtype == torch.int32 and c.dim() == 0 for c in seen)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_learning_rate_schedule_matches_optax(name: str) -> None:
    """The same schedule in funcgrad and optax gives the same trajectory."""
    params, loss = make_problem(0)
    ours = {"sgd": optim.sgd, "adam": optim.adam, "adamw": optim.adamw}[name]
    actual = run_funcgrad(
        ours(
            lambda c: 0.05 / (1.0 + 0.1 * c.to(torch.float64)),
            **({"momentum": 0.9} if name == "sgd" else {}),
        ),
        params,
        loss,
    )
    desired = run_optax(
        lambda ox: getattr(ox, name)(
            lambda c: 0.05 / (1.0 + 0.1 * c), **({"momentum": 0.9} if name == "sgd" else {})
        ),
        params,
        loss,
    )
    assert_trees_allclose(actual, desired, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# Differentiating through optimizer steps (meta-learning)
# --------------------------------------------------------------------------------------------

META_STEPS = 5


def _meta_optimizers() -> dict[str, tuple[Callable[[Any], Any], Callable[[Any, Any], Any]]]:
    return {
        "sgd_momentum": (
            lambda lr: optim.sgd(lr, momentum=0.9),
            lambda ox, lr: ox.sgd(lr, momentum=0.9),
        ),
        "sgd_nesterov": (
            lambda lr: optim.sgd(lr, momentum=0.5, nesterov=True),
            lambda ox, lr: ox.sgd(lr, momentum=0.5, nesterov=True),
        ),
        "adam": (
            lambda lr: optim.adam(lr, eps_root=1e-8),
            lambda ox, lr: ox.adam(lr, eps_root=1e-8),
        ),
        "adamw": (
            lambda lr: optim.adamw(lr, eps_root=1e-8, weight_decay=0.1),
            lambda ox, lr: ox.adamw(lr, eps_root=1e-8, weight_decay=0.1),
        ),
    }


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(_meta_optimizers()))
def test_grad_through_steps_matches_jax(name: str, seed: int) -> None:
    """fg.grad through 5 steps w.r.t. the initial params and a 0-d tensor lr is JAX+optax's."""
    jax, jnp = helpers.require_jax()
    import optax

    ours, theirs = _meta_optimizers()[name]
    params, loss = make_problem(seed)
    lr0 = 0.05

    def meta_loss(m: Any, make: Callable[[Any], Any], apply: Any, grad: Any) -> Any:
        def f(p0: Any, lr: Any) -> Any:
            opt = make(lr)
            p, state = p0, opt.init(p0)
            for _ in range(META_STEPS):
                updates, state = opt.update(grad(lambda q: loss(m, q))(p), state, p)
                p = apply(p, updates)
            return loss(m, p) + sum((x**2).sum() for x in p.values())

        return f

    f_torch = meta_loss(torch, ours, optim.apply_updates, fg.grad)
    f_jax = meta_loss(jnp, lambda lr: theirs(optax, lr), optax.apply_updates, jax.grad)
    lr = torch.tensor(lr0, dtype=torch.float64)
    actual = fg.grad(f_torch, argnums=(0, 1))(params, lr)
    desired = jax.grad(f_jax, argnums=(0, 1))(helpers.to_jax(params), jnp.float64(lr0))
    assert_trees_allclose(actual, helpers.to_torch(desired), rtol=1e-9, atol=1e-12)
    # the meta-gradient is not trivially zero
    assert float(actual[1].abs()) > 1e-6


@pytest.mark.parametrize("name", ["sgd_momentum", "adam"])
def test_grad_through_steps_matches_finite_differences(name: str) -> None:
    """The meta-gradient w.r.t. the learning rate agrees with central finite differences."""
    ours, _ = _meta_optimizers()[name]
    params, loss = make_problem(2)

    def f(lr: torch.Tensor) -> torch.Tensor:
        opt = ours(lr)
        p, state = params, opt.init(params)
        for _ in range(META_STEPS):
            updates, state = opt.update(fg.grad(lambda q: loss(torch, q))(p), state, p)
            p = optim.apply_updates(p, updates)
        return loss(torch, p)

    lr = torch.tensor(0.03, dtype=torch.float64)
    fg.testing.check_grads(f, (lr,), order=1, modes=("rev",), eps=1e-6)


# --------------------------------------------------------------------------------------------
# Ensembles: vmap over optimizer states and parameters
# --------------------------------------------------------------------------------------------

ENSEMBLE = 4


def _ensemble_optimizers() -> dict[str, Callable[[], optim.GradientTransformation]]:
    return {
        "sgd": lambda: optim.sgd(0.05),
        "sgd_nesterov": lambda: optim.sgd(0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
        "adam": lambda: optim.adam(0.02, weight_decay=0.01),
        "adam_schedule": lambda: optim.adam(lambda c: 0.02 / (1.0 + c.to(torch.float64))),
        "adamw_mask": lambda: optim.adamw(0.02, weight_decay=0.1, mask=decay_mask),
    }


@pytest.mark.parametrize("name", list(_ensemble_optimizers()))
def test_vmap_over_ensemble_equals_separate_runs(name: str) -> None:
    """fg.vmap over 4 stacked (params, state) pairs equals 4 separate training runs."""
    opt = _ensemble_optimizers()[name]()
    problems = [make_problem(3 * i) for i in range(ENSEMBLE)]  # same shapes, different values
    _, loss = problems[0]
    members = [p for p, _ in problems]
    stacked = fg.tree.map(lambda *xs: torch.stack(xs), *members)

    def step(p: Any, state: Any) -> Any:
        updates, state = opt.update(fg.grad(lambda q: loss(torch, q))(p), state, p)
        return optim.apply_updates(p, updates), state

    state = fg.vmap(opt.init)(stacked)
    batched_step = fg.vmap(step)
    trajectory = []
    for _ in range(10):
        stacked, state = batched_step(stacked, state)
        trajectory.append(stacked)
    for i, member in enumerate(members):
        separate = run_funcgrad(opt, member, loss, steps=10)
        assert_trees_allclose(
            [fg.tree.map(lambda x, i=i: x[i], p) for p in trajectory],
            separate,
            rtol=1e-13,
            atol=1e-15,
        )


@pytest.mark.parametrize("name", ["sgd_momentum", "adam"])
def test_vmap_over_learning_rates_equals_separate_runs(name: str) -> None:
    """A hyperparameter sweep: fg.vmap over a batch of 0-d learning rates (the optimizer built
    inside the mapped function) equals one run per learning rate."""
    ours, _ = _meta_optimizers()[name]
    params, loss = make_problem(1)
    lrs = torch.tensor([0.01, 0.03, 0.1], dtype=torch.float64)

    def train(lr: torch.Tensor) -> Any:
        return run_funcgrad(ours(lr), params, loss, steps=5)[-1]

    swept = fg.vmap(train)(lrs)
    separate = [train(lr) for lr in lrs]
    for i, expected in enumerate(separate):
        assert_trees_allclose(fg.tree.map(lambda x, i=i: x[i], swept), expected, rtol=1e-13)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", [optim.sgd, optim.adam, optim.adamw])
@pytest.mark.parametrize(
    "lr", [-0.1, float("nan"), torch.tensor(-1e-3), torch.tensor(float("nan"))], ids=str
)
def test_negative_or_nan_learning_rate(alias: Any, lr: Any) -> None:
    """A negative or NaN learning rate (a number or a tensor) is refused when building."""
    with pytest.raises(ValueError, match=r"learning_rate must be a non-negative number, got"):
        alias(lr)


@pytest.mark.parametrize("alias", [optim.sgd, optim.adam])
def test_negative_weight_decay(alias: Any) -> None:
    """A negative weight decay names the alias and the argument."""
    with pytest.raises(
        ValueError,
        match=rf"optim\.{alias.__name__}: weight_decay must be a non-negative number, got -1\.0",
    ):
        alias(0.1, weight_decay=-1.0)


@pytest.mark.parametrize("alias", [optim.sgd, optim.adam, optim.adamw])
def test_schedule_returning_non_scalar(alias: Any) -> None:
    """A schedule returning a non-scalar tensor raises at update, naming its shape."""
    opt = alias(lambda count: torch.full((3,), 0.1))
    params = {"w": torch.ones(2)}
    with pytest.raises(ValueError, match=r"schedule must return a scalar .* shape \(3,\)"):
        opt.update({"w": torch.ones(2)}, opt.init(params), params)


@pytest.mark.parametrize("alias", [optim.sgd, optim.adam])
def test_schedule_returning_non_number(alias: Any) -> None:
    """A schedule returning something other than a number or tensor gets the schedule error."""
    opt = alias(lambda count: None)
    params = {"w": torch.ones(2)}
    with pytest.raises(TypeError, match=r"schedule must return a scalar .* NoneType"):
        opt.update({"w": torch.ones(2)}, opt.init(params), params)


@pytest.mark.parametrize("mask", [None, {"w": True}, decay_mask])
def test_adamw_without_params(mask: Any) -> None:
    """adamw (with or without a mask) needs params at update, and says so."""
    opt = optim.adamw(0.1, mask=mask)
    params = {"w": torch.ones(2, 2)}
    with pytest.raises(ValueError, match=r"add_decayed_weights: this transformation needs the"):
        opt.update(params, opt.init(params))


def test_adamw_mask_not_a_prefix() -> None:
    """A mask tree that is not a prefix of the params names the mismatch."""
    params = {"w": torch.ones(2, 2), "b": torch.ones(2)}
    opt = optim.adamw(0.1, mask={"w": True, "c": False})
    with pytest.raises(ValueError, match=r"mask must be a pytree prefix of the params"):
        opt.update(params, opt.init(params), params)


def test_adamw_mask_with_non_bool_leaves() -> None:
    """Mask leaves must be bools (not 0/1, tensors or None)."""
    params = {"w": torch.ones(2, 2), "b": torch.ones(2)}
    opt = optim.adamw(0.1, mask={"w": 1, "b": True})
    with pytest.raises(TypeError, match=r"every leaf of the mask must be a bool, got int \(1\)"):
        opt.update(params, opt.init(params), params)


@pytest.mark.parametrize("alias", [optim.sgd, optim.adam, optim.adamw])
def test_params_structure_mismatch_names_path(alias: Any) -> None:
    """Updates, state and params built from different trees: the message names the path."""
    opt = alias(0.1, weight_decay=0.1) if alias is not optim.adamw else alias(0.1)
    params = {"w": torch.ones(2), "b": torch.ones(2)}
    with pytest.raises(
        ValueError, match=r"structure of the updates.*it has tree\['b'\], which the updates do not"
    ):
        opt.update({"w": torch.ones(2), "c": torch.ones(2)}, opt.init(params), params)


@settings(max_examples=10)
@given(seed=helpers.seeds)
def test_sgd_first_step_is_minus_lr_times_gradient(seed: int) -> None:
    """Law: from a fresh state, sgd's first update is -lr * g for any momentum (no nesterov)."""
    g = {"a": helpers.t(3, seed=seed), "b": helpers.t(2, 2, seed=seed + 1)}
    for momentum in (None, 0.0, 0.5, 0.99):
        opt = optim.sgd(0.3, momentum=momentum)
        updates, _ = opt.update(g, opt.init(g), g)
        assert_trees_allclose(updates, fg.tree.scale(-0.3, g), rtol=1e-15, atol=0)
