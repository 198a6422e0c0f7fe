"""funcgrad.jit: caching by signature, static and donated arguments, errors, transforms inside.

Most tests compile with backend="aot_eager" (about a second per graph here); one test uses
inductor, the default backend, on a small train step.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, NamedTuple

import helpers
import pytest
import torch
from hypothesis import given, settings

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

AOT = "aot_eager"


def jit(fun: Any = None, **kwargs: Any) -> Any:
    kwargs.setdefault("backend", AOT)
    return fg.jit(fun, **kwargs)


class State(NamedTuple):
    m: torch.Tensor
    count: torch.Tensor


@fg.tree.register_dataclass
@dataclasses.dataclass
class Affine:
    w: torch.Tensor
    b: torch.Tensor
    act: str = dataclasses.field(default="tanh", metadata={"static": True})


class Mode(enum.Enum):
    SIN = "sin"
    COS = "cos"


def x3() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 3, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Results and structure
# --------------------------------------------------------------------------------------------


def test_pytree_arguments_and_results_keep_their_structure() -> None:
    """Dicts, NamedTuples, registered dataclasses, None and Python leaves come back as built."""

    def f(layer: Affine, s: State, extra: Any) -> Any:
        y = torch.tanh(layer.w @ s.m + layer.b)
        return {
            "layer": Affine(layer.w * 2, layer.b - 1, layer.act),
            "state": State(s.m * y.sum(), s.count + 1),
            "pair": (y.sum(), None, extra["n"]),
        }

    layer = Affine(torch.randn(2, 3, dtype=torch.float64), torch.randn(2, dtype=torch.float64))
    s = State(x3(), torch.tensor(0))
    extra = {"n": 7, "label": "a"}
    out = jit(f)(layer, s, extra)
    assert_trees_allclose(out, f(layer, s, extra))
    assert isinstance(out["layer"], Affine)
    assert out["layer"].act == "tanh"
    assert isinstance(out["state"], State)
    assert out["pair"][1] is None
    assert out["pair"][2] == 7


@settings(max_examples=8)
@given(tree=helpers.nonempty_trees())
def test_jit_equals_eager_on_the_tree_corpus(tree: Any) -> None:
    """Law: jit(f)(tree) == f(tree) for any pytree of float tensors."""
    f = SHARED_TREE_FN
    assert_trees_allclose(f(tree), fg.tree.map(lambda x: torch.sin(x) * 2 + 1, tree))


SHARED_TREE_FN = jit(lambda tree: fg.tree.map(lambda x: torch.sin(x) * 2 + 1, tree))


def test_keyword_arguments_are_traced() -> None:
    f = jit(lambda x, *, scale: x * scale)
    assert_trees_allclose(f(x3(), scale=torch.tensor(3.0, dtype=torch.float64)), x3() * 3)
    assert f.compile_count == 1


def test_decorator_forms_keep_metadata() -> None:
    @fg.jit
    def plain(x: torch.Tensor) -> torch.Tensor:
        """Doubles."""
        return x * 2

    @jit(static_argnums=1)
    def with_options(x: torch.Tensor, n: int) -> torch.Tensor:
        return x * n

    assert plain.__name__ == "plain"
    assert plain.__doc__ == "Doubles."
    assert isinstance(plain, fg.Jitted)
    assert plain.fun(torch.ones(1)).item() == 2.0
    assert_trees_allclose(with_options(x3(), 4), x3() * 4)


def test_jitted_method() -> None:
    class Model:
        def __init__(self) -> None:
            self.scale = 3.0

        @jit
        def apply(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    assert_trees_allclose(Model().apply(x3()), x3() * 3)


# --------------------------------------------------------------------------------------------
# The cache: one graph per signature
# --------------------------------------------------------------------------------------------


def test_same_signature_never_recompiles() -> None:
    f = jit(lambda p, x: (p["w"] * x).sum())
    p = {"w": x3()}
    for i in range(4):
        assert_trees_allclose(f(p, x3() + i), (p["w"] * (x3() + i)).sum())
    assert f.compile_count == 1
    assert f.cache_size == 1


def test_static_values_structure_and_python_leaves_are_the_cache_key() -> None:
    """A new static value, tree structure or Python leaf value compiles once more."""

    def f(x: Any, mode: Mode, n: Any) -> Any:
        y = torch.sin(x["a"]) if mode is Mode.SIN else torch.cos(x["a"])
        return y * n

    jf = jit(f, static_argnums=1)
    a = {"a": x3()}
    assert_trees_allclose(jf(a, Mode.SIN, 2), torch.sin(x3()) * 2)
    assert_trees_allclose(jf(a, Mode.SIN, 2), torch.sin(x3()) * 2)
    assert jf.compile_count == 1
    assert_trees_allclose(jf(a, Mode.COS, 2), torch.cos(x3()) * 2)  # static value
    assert jf.compile_count == 2
    assert_trees_allclose(jf(a, Mode.COS, 3), torch.cos(x3()) * 3)  # Python leaf value
    assert jf.compile_count == 3
    assert_trees_allclose(jf(a, Mode.COS, 3.0), torch.cos(x3()) * 3)  # 3.0 is not 3
    assert jf.compile_count == 4
    b = {"a": x3(), "b": None}
    assert_trees_allclose(jf(b, Mode.COS, 3), torch.cos(x3()) * 3)  # structure
    assert jf.compile_count == 5
    assert jf.cache_size == 5
    jf(a, Mode.SIN, 2)
    assert jf.compile_count == 5
    jf.clear_cache()
    jf(a, Mode.SIN, 2)
    assert jf.compile_count == 6
    assert jf.cache_size == 1


def test_nan_and_signed_zero_python_leaves_are_distinct_keys() -> None:
    f = jit(lambda x, c: torch.full_like(x, c))
    assert not f(x3(), 0.0).signbit().any()
    assert f(x3(), -0.0).signbit().all()
    assert f(x3(), float("nan")).isnan().all()
    assert f(x3(), float("nan")).isnan().all()
    assert f.compile_count == 3


def test_tensor_hyperparameter_never_recompiles_python_float_does() -> None:
    f = jit(lambda x, lr: x - lr * x)
    for lr in (0.1, 0.2, 0.3):
        assert_trees_allclose(f(x3(), torch.tensor(lr, dtype=torch.float64)), x3() * (1 - lr))
    assert f.compile_count == 1
    f(x3(), 0.1)
    f(x3(), 0.2)
    assert f.compile_count == 3


def test_a_leaf_that_is_a_number_or_a_tensor_is_two_signatures() -> None:
    """The same position holding a Python number, a tensor, a tensor requiring grad, or a
    Parameter: each its own signature (all-tensor arguments take a faster key), right values."""
    f = jit(lambda x, c: x * c, backend="aot_eager")
    two = torch.tensor(2.0, dtype=torch.float64)
    assert_trees_allclose(f(x3(), 2.0), x3() * 2)
    assert_trees_allclose(f(x3(), two), x3() * 2)
    assert_trees_allclose(f(x3(), two), x3() * 2)
    assert f.cache_size == 2
    with torch.no_grad():
        assert_trees_allclose(f(x3(), two.clone().requires_grad_()), x3() * 2)
        assert_trees_allclose(f(x3(), torch.nn.Parameter(two.clone())), x3() * 2)
    assert f.cache_size == 4
    assert_trees_allclose(f(x3(), 2.0), x3() * 2)
    assert f.cache_size == 4


def test_static_argument_by_position_or_by_name() -> None:
    """As in JAX, static_argnums and static_argnames name the same parameter either way."""

    def f(x: torch.Tensor, power: int) -> torch.Tensor:
        return x**power

    by_num, by_name = jit(f, static_argnums=1), jit(f, static_argnames="power")
    for g in (by_num, by_name):
        assert_trees_allclose(g(x3(), 3), x3() ** 3)
        assert_trees_allclose(g(x3(), power=3), x3() ** 3)
        assert_trees_allclose(g(x3(), power=2), x3() ** 2)
        assert g.compile_count == 3  # (positional 3), (keyword 3), (keyword 2)
    neg = jit(f, static_argnums=-1)
    assert_trees_allclose(neg(x3(), 2), x3() ** 2)


def test_new_shape_recompiles_within_a_signature() -> None:
    f = jit(lambda x: x * 2)
    f(torch.ones(3))
    f(torch.ones(3))
    assert f.compile_count == 1
    f(torch.ones(5))
    assert f.compile_count == 2
    assert f.cache_size == 1


def test_jitted_functions_do_not_share_a_compile_cache() -> None:
    """Twenty jitted functions, each compiled once: dynamo's per-code recompile limit (8) does
    not apply across them, and each keeps its own graph."""
    fs = [jit(lambda x, k=k: x + k) for k in range(20)]
    for k, f in enumerate(fs):
        assert_trees_allclose(f(x3()), x3() + k)
        assert_trees_allclose(f(x3()), x3() + k)
    assert [f.compile_count for f in fs] == [1] * 20


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_unhashable_static_argument_is_named() -> None:
    f = jit(lambda x, sizes: x * len(sizes), static_argnums=1)
    with pytest.raises(TypeError, match=r"static argument 1 must be hashable.*list.*tuple"):
        f(x3(), [1, 2])
    g = jit(lambda x, sizes: x * len(sizes), static_argnames="sizes")
    with pytest.raises(TypeError, match=r"static argument 'sizes' must be hashable"):
        g(x3(), sizes={"a": 1})


def test_unhashable_python_leaf_is_named_by_path() -> None:
    f = jit(lambda d: d["x"] * 2)
    with pytest.raises(TypeError, match=r"leaf at args\[0\]\['opts'\] is set .*not hashable"):
        f({"x": x3(), "opts": {1, 2}})


def test_graph_break_error_says_where_why_and_how_to_fix() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent Python control flow
            return x
        return -x

    with pytest.raises(RuntimeError) as info:
        jit(f)(x3())
    msg = str(info.value)
    assert "funcgrad.jit(" in msg
    assert "as one graph (fullgraph=True)" in msg
    assert "test_jit.py" in msg
    assert "if x.sum() > 0" in msg
    assert "control flow" in msg
    assert "tensor's value" in msg
    assert "torch.where" in msg
    assert "funcgrad.lax.cond" in msg
    assert "static_argnums" in msg
    assert "fullgraph=False" in msg
    # fullgraph=False lets torch.compile split the graph instead.
    assert_trees_allclose(jit(f, fullgraph=False)(x3() + 5), x3() + 5)


def test_branch_on_item_gets_the_control_flow_explanation() -> None:
    """``if x.item() > 0`` fails as a data-dependent guard (not a graph break): same Why/Fix."""

    def f(x: torch.Tensor) -> torch.Tensor:
        if x.sum().item() > 0:
            return x
        return -x

    with pytest.raises(RuntimeError, match=r"(?s)if x.sum\(\).item\(\) > 0.*Why: Python control "
                       r"flow .*\.item\(\) of it.*torch.where or funcgrad.lax.cond"):  # fmt: skip
        jit(f, backend="aot_eager")(x3())


def test_print_inside_is_a_graph_break_with_its_reason() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        print("inside")
        return x + 1

    with pytest.raises(RuntimeError, match=r"(?s)Where: .*print\(.*Why: a Python builtin"):
        jit(f)(x3())


def test_error_raised_by_the_function_is_its_own() -> None:
    """A bug in the function surfaces as the same error as in eager mode, not as dynamo's."""
    f = jit(lambda x: fg.grad(lambda v: v * 2)(x))
    with pytest.raises(TypeError, match=r"funcgrad.grad: .*scalar output") as info:
        f(x3())
    assert any("while funcgrad.jit traced it" in n for n in getattr(info.value, "__notes__", []))
    g = jit(lambda a, b: a @ b)
    with pytest.raises(RuntimeError, match=r"cannot be multiplied"):
        g(torch.ones(2, 3), torch.ones(2, 3))


def test_grad_or_vmap_of_a_jitted_function_says_to_jit_the_outer_function() -> None:
    f = jit(lambda x: (x**2).sum())
    with pytest.raises(RuntimeError, match=r"inside an eager funcgrad/torch.func transform.*"):
        fg.grad(f)(x3())
    with pytest.raises(RuntimeError, match=r"fg.jit\(fg.grad\(loss\)\)"):
        fg.vmap(f)(torch.ones(2, 3))
    # The advice works: the outer function jitted, the inner jit is inlined.
    assert_trees_allclose(jit(fg.grad(f))(x3()), 2 * x3())
    assert f.compile_count == 0
    # torch.autograd through a jitted function works (AOTAutograd's backward).
    x = x3().requires_grad_()
    (g,) = torch.autograd.grad(f(x), x)
    assert_trees_allclose(g, 2 * x3())


def test_bad_options() -> None:
    with pytest.raises(TypeError, match=r"static_argnums must be an int or a tuple of ints"):
        fg.jit(torch.sin, static_argnums="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"static_argnames must be a str or a tuple"):
        fg.jit(torch.sin, static_argnames=[1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"argument 1 is both static and donated"):
        fg.jit(lambda x, n: x, static_argnums=1, donate_argnums=1)
    with pytest.raises(TypeError, match=r"funcgrad.jit: expected a callable"):
        fg.jit(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Donation
# --------------------------------------------------------------------------------------------


def _sgd_step(p: Any, s: State, x: torch.Tensor) -> Any:
    g = fg.grad(lambda p: (torch.tanh(x @ p["w"]) ** 2).sum())(p)
    m = s.m * 0.9 + g["w"]
    return {"w": p["w"] - 0.1 * m}, State(m, s.count + 1), g["w"].norm()


def _step_inputs() -> tuple[Any, State, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    p = {"w": torch.randn(4, 3, generator=gen, dtype=torch.float64)}
    s = State(torch.zeros(4, 3, dtype=torch.float64), torch.tensor(0))
    return p, s, torch.randn(5, 4, generator=gen, dtype=torch.float64)


def test_donated_arguments_receive_the_outputs() -> None:
    """The outputs live in the donated tensors' memory: same objects, right values."""
    p, s, x = _step_inputs()
    ref_p, ref_s, x_ref = _step_inputs()
    step = jit(_sgd_step, donate_argnums=(0, 1))
    for _ in range(3):
        ref_p, ref_s, ref_norm = _sgd_step(ref_p, ref_s, x_ref)
        w, m = p["w"], s.m
        ptr = w.data_ptr()
        p, s, norm = step(p, s, x)
        assert p["w"] is w
        assert s.m is m
        assert p["w"].data_ptr() == ptr
        assert_trees_allclose((p, s, norm), (ref_p, ref_s, ref_norm))
    assert step.compile_count == 1


def test_donated_tensors_without_a_matching_output_are_untouched() -> None:
    f = jit(lambda a, b: a.sum() * b, donate_argnums=0)
    a, b = x3(), torch.ones(2, dtype=torch.float64)
    out = f(a, b)
    assert_trees_allclose(a, x3())  # shape (3,) matches no output
    assert_trees_allclose(out, b * x3().sum())


def test_without_donation_inputs_are_untouched() -> None:
    p, s, x = _step_inputs()
    p0, s0 = fg.tree.map(torch.clone, (p, s))
    new_p, _, _ = jit(_sgd_step)(p, s, x)
    assert_trees_allclose((p, s), (p0, s0))
    assert new_p["w"] is not p["w"]


def test_a_tensor_donated_twice_receives_one_output() -> None:
    f = jit(lambda a, b: (a + 1, b * 2), donate_argnums=(0, 1))
    t = x3()
    out = f(t, t)
    assert_trees_allclose(out, (x3() + 1, x3() * 2))
    assert out[0] is t
    assert out[1] is not t


def test_donated_tensors_that_outputs_are_or_view_keep_their_values() -> None:
    """An output that is a donated input, or a view of one, is never overwritten by another."""
    f = jit(lambda s: (s * 3, s.T, s[0], s), donate_argnums=0)
    s = torch.arange(4.0, dtype=torch.float64).reshape(2, 2)
    ref = f.fun(s.clone())
    assert_trees_allclose(f(s), ref)
    assert_trees_allclose(s, ref[3])


def test_donation_with_dicts_of_python_constants() -> None:
    """Outputs and donated arguments may hold dicts whose values are all Python constants
    (a masked optimizer state's MaskedNodes, an empty dict): dynamo cannot flatten those."""
    f = jit(
        lambda s, aux: ({"w": s["w"] * 2, "c": {"a": 1, "e": {}}}, aux),
        donate_argnums=(0, 1),
        backend="aot_eager",
    )
    w = x3()
    out = f({"w": w, "k": {"n": None}}, {"flag": True})
    assert_trees_allclose(out, ({"w": x3() * 2, "c": {"a": 1, "e": {}}}, {"flag": True}))
    assert out[0]["w"] is w


def test_zero_dimensional_tensors_are_not_overwritten() -> None:
    """torch.compile drops copies into 0-d inputs: those are never donated, results stay right."""
    f = jit(lambda s: (s * 3, s + 1), donate_argnums=0)
    s = torch.tensor(1.0, dtype=torch.float64)
    assert_trees_allclose(
        f(s), (torch.tensor(3.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64))
    )
    assert_trees_allclose(s, torch.tensor(1.0, dtype=torch.float64))


def test_donating_a_tensor_that_requires_grad_is_an_error() -> None:
    f = jit(lambda a: a + 1, donate_argnums=0)
    with pytest.raises(ValueError, match=r"donated argument 0 holds a tensor that requires grad"):
        f(x3().requires_grad_())


def test_lower_shows_the_graph_without_touching_the_arguments() -> None:
    p, s, x = _step_inputs()
    p0, s0 = fg.tree.map(torch.clone, (p, s))
    step = jit(_sgd_step, donate_argnums=(0, 1))
    lowered = step.lower(p, s, x)
    assert isinstance(lowered, fg.Lowered)
    assert "tanh" in lowered.as_text()
    assert isinstance(lowered.graph_module, torch.fx.GraphModule)
    assert_trees_allclose((p, s), (p0, s0))
    step(p, s, x)
    assert step.compile_count == 1


# --------------------------------------------------------------------------------------------
# Transforms inside jit
# --------------------------------------------------------------------------------------------


def _loss(p: Any, x: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(x @ p["w"]) ** 2).sum() + (p["b"] ** 3).sum()


def _params() -> tuple[Any, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    p = {
        "w": torch.randn(3, 2, generator=gen, dtype=torch.float64),
        "b": torch.randn(2, generator=gen, dtype=torch.float64),
    }
    return p, torch.randn(4, 3, generator=gen, dtype=torch.float64)


TRANSFORMS = {
    "grad": lambda p, x: fg.grad(_loss)(p, x),
    "value_and_grad_argnums": lambda p, x: fg.value_and_grad(_loss, argnums=(0, 1))(p, x),
    "vmap_grad": lambda p, x: fg.vmap(fg.grad(_loss), in_axes=(None, 0))(p, x[:, None]),
    "vmap_out_axes": lambda p, x: fg.vmap(
        lambda xi: {"a": xi * 2, "c": p["b"]}, out_axes={"a": 1, "c": None}
    )(x),
    "vmap_chunked": lambda p, x: fg.vmap(lambda xi: _loss(p, xi[None]), chunk_size=3)(x),
    "jvp": lambda p, x: fg.jvp(lambda p: _loss(p, x), (p,), (fg.tree.ones_like(p),)),
    "vjp": lambda p, x: fg.vjp(lambda p: _loss(p, x), p)[1](torch.tensor(1.0, dtype=x.dtype)),
    "jacrev": lambda p, x: fg.jacrev(lambda p: torch.tanh(x @ p["w"]))(p),
    "jacfwd": lambda p, x: fg.jacfwd(lambda p: torch.tanh(x @ p["w"]))(p),
    "hessian": lambda p, x: fg.hessian(_loss)(p, x),
    # torch.compile cannot trace vmap of forward-over-reverse: under jit, hessian is
    # reverse-over-reverse (see funcgrad.hessian).
    "vmap_hessian": lambda p, x: fg.vmap(fg.hessian(_loss), in_axes=(None, 0))(p, x[:, None]),
    "vmap_jacfwd": lambda p, x: fg.vmap(
        fg.jacfwd(lambda p, xi: torch.tanh(xi @ p["w"])), in_axes=(None, 0)
    )(p, x),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_inside_jit_equals_eager(name: str) -> None:
    f = TRANSFORMS[name]
    p, x = _params()
    assert_trees_allclose(jit(f)(p, x), f(p, x))


# --------------------------------------------------------------------------------------------
# A whole train step with the optimizer
# --------------------------------------------------------------------------------------------


def _train_problem() -> tuple[Any, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    p = {
        "w": torch.randn(5, 3, generator=gen, dtype=torch.float64),
        "b": torch.zeros(3, dtype=torch.float64),
    }
    return (
        p,
        torch.randn(16, 5, generator=gen, dtype=torch.float64),
        torch.randn(16, 3, generator=gen, dtype=torch.float64),
    )


def _mse(p: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x @ p["w"] + p["b"] - y) ** 2).mean()


def _make_step(opt: optim.GradientTransformation) -> Any:
    def step(p: Any, s: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
        loss, g = fg.value_and_grad(_mse)(p, x, y)
        updates, s = opt.update(g, s, p)
        return optim.apply_updates(p, updates), s, loss

    return step


def test_jitted_adamw_step_with_injected_learning_rate_matches_eager() -> None:
    """Changing a tensor hyperparameter between steps never recompiles the donated step."""
    opt = optim.inject_hyperparams(optim.adamw)(learning_rate=0.05, weight_decay=0.01)
    step = _make_step(opt)
    jstep = jit(step, donate_argnums=(0, 1))
    p, x, y = _train_problem()
    s = opt.init(p)
    ref = fg.tree.map(torch.clone, (p, s))
    for i in range(5):
        lr = torch.tensor(0.05 / (i + 1), dtype=torch.float64)
        s = s._replace(hyperparams={**s.hyperparams, "learning_rate": lr})
        ref_s = ref[1]._replace(hyperparams={**ref[1].hyperparams, "learning_rate": lr})
        rp, rs, rl = step(ref[0], ref_s, x, y)
        p, s, loss = jstep(p, s, x, y)
        ref = (rp, rs)
        assert_trees_allclose((p, s, loss), (rp, rs, rl), rtol=1e-12, atol=1e-12)
    assert jstep.compile_count == 1


def test_inductor_compiles_a_donated_adam_step() -> None:
    """The default backend: one compilation for every step, results equal to eager (float32)."""
    opt = optim.adam(1e-2)
    step = _make_step(opt)
    jstep = fg.jit(step, donate_argnums=(0, 1))
    p, x, y = fg.tree.map(lambda t: t.float(), _train_problem())
    s = opt.init(p)
    ref_p, ref_s = fg.tree.map(torch.clone, (p, s))
    for _ in range(3):
        ref_p, ref_s, ref_loss = step(ref_p, ref_s, x, y)
        p, s, loss = jstep(p, s, x, y)
    assert_trees_allclose((p, s, loss), (ref_p, ref_s, ref_loss), rtol=1e-5, atol=1e-6)
    assert jstep.compile_count == 1
