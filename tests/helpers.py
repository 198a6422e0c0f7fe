"""The shared corpus of pytrees, hypothesis strategies and JAX bridges used by every test module,
and the trajectory harnesses the optimizer tests share."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

# --------------------------------------------------------------------------------------------
# Node types
# --------------------------------------------------------------------------------------------


class Point(NamedTuple):
    x: Any
    y: Any


@fg.tree.register_dataclass
@dataclasses.dataclass
class Layer:
    """A registered dataclass: two data fields and a static one."""

    weight: Any
    bias: Any
    activation: str = dataclasses.field(default="tanh", metadata={"static": True})


@fg.tree.register_dataclass
@dataclasses.dataclass(frozen=True)
class Frozen:
    """A frozen registered dataclass with a custom ``__post_init__`` check."""

    value: Any
    scale: float = dataclasses.field(default=1.0, metadata={"static": True})

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ValueError("scale must be positive")


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


def t(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A deterministic random tensor (never reads the global RNG)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype)


def corpus() -> list[Any]:
    """Trees of float64 tensors covering every built-in node type and registered dataclasses."""
    return [
        t(3, seed=1),
        t(seed=2),
        (t(2, seed=3), t(2, 3, seed=4)),
        [t(4, seed=5), [t(1, seed=6), t(2, 2, seed=7)]],
        {"w": t(3, 2, seed=8), "b": t(2, seed=9)},
        {"layer1": {"w": t(2, 2, seed=10), "b": None}, "layer2": [t(2, seed=11)]},
        Point(t(2, seed=12), {"z": t(seed=13)}),
        collections.OrderedDict([("b", t(2, seed=14)), ("a", t(3, seed=15))]),
        Layer(t(3, 2, seed=16), t(2, seed=17), activation="relu"),
        [Layer(t(2, 2, seed=18), None), Frozen(t(3, seed=19), scale=2.0)],
        {"deep": ((t(1, seed=20),), [{"er": t(2, seed=21)}])},
    ]


CORPUS_IDS = [
    "tensor",
    "scalar",
    "tuple",
    "nested_list",
    "dict",
    "dict_with_none",
    "namedtuple",
    "ordereddict",
    "dataclass",
    "dataclasses_in_list",
    "deep",
]


# --------------------------------------------------------------------------------------------
# Hypothesis strategies
# --------------------------------------------------------------------------------------------

seeds = st.integers(min_value=0, max_value=2**31 - 1)


def shapes(
    min_dims: int = 0, max_dims: int = 3, max_side: int = 4
) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(st.integers(1, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


def tensors(
    shape: tuple[int, ...] | None = None, dtype: torch.dtype = torch.float64
) -> st.SearchStrategy[torch.Tensor]:
    """Normal random tensors drawn from a hypothesis-chosen seed (well scaled, reproducible)."""
    shape_st = st.just(shape) if shape is not None else shapes()
    return st.tuples(shape_st, seeds).map(lambda s: t(*s[0], seed=s[1], dtype=dtype))


def trees(
    leaves: st.SearchStrategy[Any] | None = None, max_leaves: int = 6
) -> st.SearchStrategy[Any]:
    """Pytrees of every node kind in the corpus, with leaves drawn from ``leaves``."""
    leaf = leaves if leaves is not None else tensors()

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        keys = st.text("abcdefgh", min_size=1, max_size=3)
        return st.one_of(
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(keys, children, max_size=3),
            st.tuples(children, children).map(lambda c: Point(*c)),
            st.tuples(children, children).map(lambda c: Layer(*c)),
        )

    return st.recursive(leaf, extend, max_leaves=max_leaves)


def nonempty_trees() -> st.SearchStrategy[Any]:
    """:func:`trees` with at least one leaf."""
    return trees().filter(lambda tree: len(fg.tree.leaves(tree)) > 0)


# --------------------------------------------------------------------------------------------
# JAX bridges
# --------------------------------------------------------------------------------------------


def require_jax() -> tuple[Any, Any]:
    """Imports JAX (float64, CPU); skips with a reason when absent, unless CI requires it."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:  # pragma: no cover - depends on the environment
        if os.environ.get("FUNCGRAD_REQUIRE_JAX"):
            raise
        pytest.skip("JAX is not installed; it is the reference for this numerics test")
    jax.config.update("jax_enable_x64", True)
    return jax, jnp


def to_jax(tree: Any) -> Any:
    """Tensors to JAX arrays (same dtype); the tree structure is kept (NamedTuples included)."""
    _, jnp = require_jax()
    return fg.tree.map(
        lambda x: jnp.asarray(x.detach().cpu().numpy()) if isinstance(x, torch.Tensor) else x, tree
    )


def to_torch(tree: Any) -> Any:
    """JAX/NumPy arrays to tensors; containers kept as they are."""
    return fg.tree.map(
        lambda x: torch.from_numpy(np.array(x)) if hasattr(x, "__array__") else x, tree
    )


# --------------------------------------------------------------------------------------------
# Optimizer trajectories against torch.optim and optax (the adaptive optimizers' tests)
# --------------------------------------------------------------------------------------------

OPTIM_STEPS = 50

_BADLY_SCALED_SHAPES = [
    {"b": (4,), "w": (3, 4)},
    {"b": (5,), "s": (), "w": (2, 5)},
]


def badly_scaled_problem(seed: int) -> tuple[dict[str, torch.Tensor], Callable[[Any, Any], Any]]:
    """Random float64 parameters and ``loss(m, params)``: coupled, non-quadratic, with
    gradients of different scales in different leaves (what adaptive methods are for).

    ``m`` is ``torch`` or ``jax.numpy``: the loss is written once for both array libraries.
    """
    shapes = _BADLY_SCALED_SHAPES[seed % len(_BADLY_SCALED_SHAPES)]
    params = {k: t(*s, seed=100 * seed + i) for i, (k, s) in enumerate(shapes.items())}
    curv = {
        k: (t(*s, seed=100 * seed + 10 + i).abs() + 0.5) * 4.0**i
        for i, (k, s) in enumerate(shapes.items())
    }
    centre = {k: t(*s, seed=100 * seed + 20 + i) for i, (k, s) in enumerate(shapes.items())}
    curv_np = {k: v.numpy() for k, v in curv.items()}
    centre_np = {k: v.numpy() for k, v in centre.items()}

    def loss(m: Any, p: Any) -> Any:
        c, z = (curv, centre) if m is torch else (curv_np, centre_np)
        total = 0.0
        for k in sorted(p):
            total = total + (0.5 * c[k] * (p[k] - z[k]) ** 2).sum() + (0.2 * m.sin(2 * p[k])).sum()
        return total + 0.3 * m.tanh(0.5 * sum(p[k].sum() for k in sorted(p)))

    return params, loss


def run_funcgrad(
    opt: optim.GradientTransformation,
    params: Any,
    loss: Callable[[Any, Any], Any],
    steps: int = OPTIM_STEPS,
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
    assert all(bool(x.isfinite().all()) for x in fg.tree.leaves(params)), "diverged"
    return trajectory


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def run_torch(
    make_opt: Callable[..., torch.optim.Optimizer],
    params: dict[str, torch.Tensor],
    loss: Callable[[Any, Any], Any],
    lr: Any,
    *,
    steps: int = OPTIM_STEPS,
    lr_at: Callable[[int], float] | None = None,
    foreach: bool = False,
) -> list[Any]:
    """The trajectory of a stateful ``torch.optim`` optimizer with ``.backward()``.

    torch keeps scalar state (NAdam's product of momenta) in the default dtype: float64 here,
    as funcgrad keeps it in the parameters' dtype.
    """
    with default_dtype(torch.float64):
        ps = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
        opt = make_opt(list(ps.values()), lr, foreach=foreach)
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
    make_opt: Callable[[Any], Any], params: Any, loss: Any, steps: int = OPTIM_STEPS
) -> list[Any]:
    """The trajectory of optax with ``jax.grad`` (float64, a jitted step)."""
    jax, jnp = require_jax()
    import optax

    opt = make_opt(optax)
    p = to_jax(params)
    state = opt.init(p)

    @jax.jit
    def step(p: Any, state: Any) -> Any:
        updates, state = opt.update(jax.grad(lambda q: loss(jnp, q))(p), state, p)
        return optax.apply_updates(p, updates), state

    trajectory = []
    for _ in range(steps):
        p, state = step(p, state)
        trajectory.append(to_torch(p))
    return trajectory


def max_relative_difference(a: list[Any], b: list[Any]) -> float:
    return max(
        float(((x - y).abs() / y.abs()).max())
        for pa, pb in zip(a, b)
        for x, y in zip(fg.tree.leaves(pa), fg.tree.leaves(pb))
    )


def vmapped_and_separate_runs(
    opt: optim.GradientTransformation, steps: int = 20
) -> list[tuple[list[Any], list[Any]]]:
    """For 3 members of a badly scaled problem (same shapes, different values): the member's
    trajectory within ``fg.vmap`` over the stacked (params, state), and its separate (foreach)
    trajectory."""
    members = [badly_scaled_problem(2 * i)[0] for i in range(3)]
    _, loss = badly_scaled_problem(0)
    stacked = fg.tree.map(lambda *xs: torch.stack(xs), *members)

    def step(p: Any, state: Any) -> Any:
        updates, state = opt.update(fg.grad(lambda q: loss(torch, q))(p), state, p)
        return optim.apply_updates(p, updates), state

    state = fg.vmap(opt.init)(stacked)
    trajectory = []
    for _ in range(steps):
        stacked, state = fg.vmap(step)(stacked, state)
        trajectory.append(stacked)
    runs = []
    for i, member in enumerate(members):
        separate = run_funcgrad(opt, member, loss, steps=steps)
        batched = [fg.tree.map(lambda x, i=i: x[i], p) for p in trajectory]
        runs.append((batched, separate))
    return runs


def gradient_sequence(g: Any, n: int = 3) -> list[Any]:
    """``n`` different gradients built from one drawn tree."""
    return [fg.tree.map(lambda x, k=k: (x + 0.5 * k) * (1.5 - k) + 0.01, g) for k in range(n)]


def run_updates(opt: optim.GradientTransformation, grads: list[Any], params: Any) -> list[Any]:
    """The updates of ``opt`` (initialised on ``params``) for each of ``grads`` in turn."""
    state, out = opt.init(params), []
    for g in grads:
        u, state = opt.update(g, state)
        out.append(u)
    return out


# --------------------------------------------------------------------------------------------
# Wrapped optimizers against optax: perturbed gradients, edited states (the wrappers' tests)
# --------------------------------------------------------------------------------------------

WRAPPED_STEPS = 60

SEPARABLE_SHAPES = {"w": (3, 2), "b": (2,), "s": ()}


def separable_problem(seed: int) -> tuple[dict[str, torch.Tensor], Callable[..., Any]]:
    """Initial parameters and ``loss(params, sin)`` (``sin`` is torch.sin or jnp.sin).

    The loss is a sum over leaves, so a NaN in one leaf's gradient stays in that leaf.
    """
    params = {k: t(*s, seed=100 * seed + i) for i, (k, s) in enumerate(SEPARABLE_SHAPES.items())}
    targets = {
        k: t(*s, seed=100 * seed + 10 + i) for i, (k, s) in enumerate(SEPARABLE_SHAPES.items())
    }
    weights = {
        k: t(*s, seed=100 * seed + 20 + i).abs() + 0.5
        for i, (k, s) in enumerate(SEPARABLE_SHAPES.items())
    }

    consts = {"torch": (targets, weights)}

    def loss(p: Any, sin: Callable[[Any], Any]) -> Any:
        if sin is torch.sin:
            tg, wt = consts["torch"]
        else:  # JAX: the same constants as JAX arrays
            tg, wt = consts.setdefault("jax", to_jax((targets, weights)))
        return sum(
            (wt[k] * (p[k] - tg[k]) ** 2 + 0.3 * sin(2.0 * p[k])).sum() for k in SEPARABLE_SHAPES
        )

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


def run_funcgrad_with_state(
    opt: Any,
    params: Any,
    loss: Callable[..., Any],
    *,
    steps: int = WRAPPED_STEPS,
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


def run_optax_with_state(
    opt: Any,
    params: Any,
    loss: Callable[..., Any],
    *,
    steps: int = WRAPPED_STEPS,
    perturb: Perturb = no_perturb,
    at: Callable[[Any], Any] = lambda p: p,
    edit: Callable[[int, Any], Any] | None = None,
) -> tuple[list[Any], Any]:
    """:func:`run_funcgrad_with_state` for an optax optimizer on JAX parameters."""
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


def assert_leaves_close(ours: Any, theirs: Any, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    """Same leaves (in flattening order, dtypes included) in a funcgrad and a JAX tree."""
    jax, _ = require_jax()
    assert_trees_allclose(
        fg.tree.leaves(ours), to_torch(jax.tree.leaves(theirs)), rtol=rtol, atol=atol
    )


def compare_with_optax(
    ours: Any, theirs: Any, seed: int = 0, *, state: bool = True, **kwargs: Any
) -> tuple[Any, Any, Any]:
    """Runs both optimizers on one problem; asserts equal trajectories (and final states)."""
    params, loss = separable_problem(seed)
    only_ours, only_theirs = kwargs.pop("fg", {}), kwargs.pop("ox", {})
    traj, s = run_funcgrad_with_state(ours, params, loss, **only_ours, **kwargs)
    jtraj, js = run_optax_with_state(theirs, to_jax(params), loss, **only_theirs, **kwargs)
    assert_leaves_close(traj, jtraj)
    if state:
        assert_leaves_close(s, js)
    return traj, s, js


def optax_module() -> Any:
    require_jax()
    import optax

    return optax


ENSEMBLE_NO_NANS: list[set[int]] = [set(), set(), set()]
ENSEMBLE_NANS = [{2, 3, 4}, set(), {5}]  # per member: the members skip at different steps


def ensemble_runs(opt: Any, nan_steps: list[set[int]]) -> tuple[Any, Any, Any, Any]:
    """12 steps of 3 members (NaNs in ``b``'s gradient at their ``nan_steps``): the stacked
    params and state from one ``fg.vmap`` over the stacked members, then the same stacked from
    3 separate runs."""
    members = [separable_problem(20 + m)[0] for m in range(3)]
    _, loss = separable_problem(20)
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
    return params, state, expected, expected_state


# --------------------------------------------------------------------------------------------
# funcgrad.nn layers against torch.nn modules holding the same weights (the test_nn_* modules)
# --------------------------------------------------------------------------------------------


def torch_module(cls: Any, *args: Any, seed: int = 0, **kwargs: Any) -> Any:
    """A float64 ``torch.nn`` module with weights drawn from a seeded generator (the global
    RNG is saved and restored, so tests never depend on it)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(*args, **kwargs, dtype=torch.float64)


def copy_weights(layer: Any, module: torch.nn.Module) -> Any:
    """The funcgrad.nn ``layer`` with the parameters of ``module`` (name ``a.b`` -> field
    ``a_b``, as in ``MultiheadAttention``'s ``out_proj.weight``)."""
    return layer.replace(
        **{n.replace(".", "_"): p.detach().clone() for n, p in module.named_parameters()}
    )


def check_layer_against_torch(
    layer: Any,
    module: torch.nn.Module,
    args: tuple[Any, ...],
    *,
    call: Callable[..., Any] | None = None,
    torch_call: Callable[..., Any] | None = None,
    get: Callable[[Any, str], Any] | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-12,
) -> None:
    """Outputs, and gradients with respect to the parameters and the floating-point inputs,
    of ``call(layer, *args)`` (``fg.grad``) and ``torch_call(module, *args)`` (torch.autograd)
    are equal. The gradients are those of ``sum(out * cotangent)`` for a random cotangent.
    ``get(grads, name)`` finds the gradient of torch's parameter ``name`` in the layer's
    gradient tree (default: the field ``name`` with dots as underscores)."""
    get = get or (lambda tree, name: getattr(tree, name.replace(".", "_")))
    call = call or (lambda m, *a: m(*a))
    torch_call = torch_call or (lambda m, *a: m(*a))
    floats = [
        i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()
    ]
    out = call(layer, *args)
    out_leaves = fg.tree.leaves(out)
    cotangents = [t(*o.shape, seed=100 + i) for i, o in enumerate(out_leaves)]

    def loss(layer: Any, *args: Any) -> Any:
        return sum((o * c).sum() for o, c in zip(fg.tree.leaves(call(layer, *args)), cotangents))

    grads = fg.grad(loss, argnums=(0, *(1 + i for i in floats)))(layer, *args)

    module.zero_grad(set_to_none=True)
    torch_args = [
        a.detach().clone().requires_grad_(True) if i in floats else a for i, a in enumerate(args)
    ]
    ref = torch_call(module, *torch_args)
    ref_leaves = [r for r in fg.tree.leaves(ref) if isinstance(r, torch.Tensor)]
    assert_trees_allclose(out_leaves, ref_leaves, rtol=rtol, atol=atol)
    sum((r * c).sum() for r, c in zip(ref_leaves, cotangents)).backward()
    expected = {n: p.grad for n, p in module.named_parameters()}
    got = {n: get(grads[0], n) for n in expected}
    assert_trees_allclose(got, expected, rtol=rtol, atol=atol)
    assert_trees_allclose(
        list(grads[1:]), [torch_args[i].grad for i in floats], rtol=rtol, atol=atol
    )


def ks_distance(samples: torch.Tensor, cdf: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """The Kolmogorov-Smirnov distance between the samples' empirical CDF and ``cdf``.

    For ``n`` independent draws from ``cdf`` it exceeds ``1.95 / sqrt(n)`` with probability
    0.001 (``KS_CRITICAL``): tests with fixed keys compare against that bound.
    """
    x = samples.detach().flatten().double().sort().values
    n = x.numel()
    f = cdf(x)
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n - f
    lower = f - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(upper, lower).max())


KS_CRITICAL = 1.95  # / sqrt(n): the 0.1% critical value of the one-sample KS statistic


def assert_distributed(samples: torch.Tensor, cdf: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """The samples pass a Kolmogorov-Smirnov test against ``cdf`` at the 0.1% level."""
    n = samples.numel()
    distance = ks_distance(samples, cdf)
    bound = KS_CRITICAL / n**0.5
    assert distance < bound, f"KS distance {distance:.4g} >= {bound:.4g} for {n} samples"


def uniform_cdf(low: float, high: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: ((x - low) / (high - low)).clamp(0, 1)


def normal_cdf(mean: float, std: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.special.ndtr((x - mean) / std)
