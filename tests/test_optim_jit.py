"""Every optimizer under ``funcgrad.jit``: one compilation for all steps, the eager trajectory.

A whole train step (``value_and_grad``, ``update``, ``apply_updates``) is jitted with the
parameters and optimizer state donated, as in the examples, and compiled with
``backend="aot_eager"`` (about a second per optimizer here; inductor compiles the same graphs,
see tests/test_jit.py). Step counters are tensors, so the step count never recompiles.

``multi_transform`` and ``masked`` are here with labels and masks given as trees and as
functions, including trees in which a whole dict is masked out for some group (its state then
holds a dict of MaskedNodes, which dynamo treats as a constant: NOTE [masked trees under
torch.compile] in ``funcgrad/optim/_masking.py``). ``lookahead`` steps a ``LookaheadParams``
pair; ``LookaheadParams.init_synced`` copies the slow half, so the first call sees no aliasing
and the step compiles once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

STEPS = 4

OPTIMIZERS: dict[str, Callable[[], optim.GradientTransformation]] = {
    "sgd_nesterov_wd": lambda: optim.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda: optim.adam(0.05),
    "adamw_masked": lambda: optim.adamw(0.05, weight_decay=0.1, mask={"w": True, "b": False}),
    "nadam": lambda: optim.nadam(0.05),
    "radam": lambda: optim.radam(0.05),
    "adamax": lambda: optim.adamax(0.05),
    "rmsprop_centered_momentum": lambda: optim.rmsprop(0.01, centered=True, momentum=0.9),
    "adagrad": lambda: optim.adagrad(0.1),
    "adadelta": lambda: optim.adadelta(1.0),
    "lion": lambda: optim.lion(0.01),
    "lamb": lambda: optim.lamb(0.01),
    "lars": lambda: optim.lars(0.1),
    "adafactor": lambda: optim.adafactor(0.01, min_dim_size_to_factor=2),
    "adam_warmup_cosine": lambda: optim.adam(optim.warmup_cosine_decay(0.0, 0.1, 2, 10)),
    "clip_then_adam": lambda: optim.chain(optim.clip_by_global_norm(0.5), optim.adam(0.05)),
    "multi_steps": lambda: optim.MultiSteps(optim.adam(0.05), 2).gradient_transformation(),
    "apply_if_finite": lambda: optim.apply_if_finite(optim.adam(0.05), 2),
}


def _problem() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = {
        "w": torch.randn(4, 3, generator=gen, dtype=torch.float64),
        "b": torch.zeros(3, dtype=torch.float64),
    }
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    return params, x, torch.randn(8, 3, generator=gen, dtype=torch.float64)


def _loss(p: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((torch.tanh(x @ p["w"] + p["b"]) - y) ** 2).mean()


def _follow_eager(
    opt: optim.GradientTransformation,
    loss: Callable[..., torch.Tensor],
    params: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    donate: bool = True,
    steps: int = STEPS,
    at: Callable[[Any], Any] = lambda p: p,
) -> None:
    """Runs ``steps`` jitted steps next to eager ones, comparing everything after each step;
    gradients are taken at ``at(params)``; one compilation in all."""

    def step(p: Any, s: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
        value, g = fg.value_and_grad(loss)(at(p), x, y)
        updates, s = opt.update(g, s, p)
        return optim.apply_updates(p, updates), s, value

    jstep = fg.jit(step, donate_argnums=(0, 1) if donate else (), backend="aot_eager")
    state = opt.init(params)
    ref_params, ref_state = fg.tree.map(torch.clone, (params, state))
    for _ in range(steps):
        ref_params, ref_state, ref_loss = step(ref_params, ref_state, x, y)
        params, state, value = jstep(params, state, x, y)
        assert_trees_allclose((params, state, value), (ref_params, ref_state, ref_loss))
    assert jstep.compile_count == 1


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_jitted_donated_step_follows_the_eager_trajectory(name: str) -> None:
    _follow_eager(OPTIMIZERS[name](), _loss, *_problem())


def test_vmapped_ensemble_step_under_jit() -> None:
    """vmap over stacked parameters and optimizer states inside jit (an ensemble of 3): the
    foreach kernels, which have no batching rules, are not used under the inner vmap."""
    opt = optim.adam(0.05)

    def step(p: Any, s: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
        g = fg.grad(_loss)(p, x, y)
        updates, s = opt.update(g, s, p)
        return optim.apply_updates(p, updates), s

    params, x, y = _problem()
    members = [fg.tree.map(lambda t, k=k: t + 0.1 * k, params) for k in range(3)]
    stacked = fg.tree.stack(members)
    states = fg.vmap(opt.init)(stacked)
    ensemble = fg.vmap(step, in_axes=(0, 0, None, None))
    jitted = fg.jit(ensemble, backend="aot_eager")
    ref = ensemble(stacked, states, x, y)
    assert_trees_allclose(jitted(stacked, states, x, y), ref)
    separate = [step(m, opt.init(m), x, y)[0] for m in members]
    assert_trees_allclose(ref[0], fg.tree.stack(separate))
    assert jitted.compile_count == 1


# --------------------------------------------------------------------------------------------
# multi_transform and masked
# --------------------------------------------------------------------------------------------


def _groups() -> dict[str, optim.GradientTransformation]:
    return {
        "adam": optim.adam(0.05),
        "sgd": optim.sgd(0.1, momentum=0.9),
        "frozen": optim.set_to_zero(),
    }


def _nested_problem() -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    params = {
        "enc": {
            "w": torch.randn(4, 3, generator=gen, dtype=torch.float64),
            "b": torch.randn(3, generator=gen, dtype=torch.float64),
        },
        "head": {
            "v": torch.randn(3, generator=gen, dtype=torch.float64),
            "u": torch.randn(3, generator=gen, dtype=torch.float64),
        },
        "scale": torch.randn(3, generator=gen, dtype=torch.float64),
    }
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    return params, x, torch.randn(8, 3, generator=gen, dtype=torch.float64)


def _nested_loss(p: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(x @ p["enc"]["w"] + p["enc"]["b"]) * p["scale"]
    return ((h * p["head"]["v"] + p["head"]["u"] - y) ** 2).mean()


def _labels_by_rank(p: Any) -> Any:
    return fg.tree.map(lambda x: "adam" if x.dim() > 1 else "sgd", p)


MULTI_LABELS: dict[str, Any] = {
    "tree": {"w": "adam", "b": "sgd", "s": "frozen"},
    "function": lambda p: {"w": "adam", "b": "sgd", "s": "frozen"},
    "function_of_the_leaves": _labels_by_rank,  # "frozen" labels nothing
}


@pytest.mark.parametrize("labels", sorted(MULTI_LABELS))
def test_multi_transform_donated_step_follows_the_eager_trajectory(labels: str) -> None:
    """multi_transform({adam, sgd with momentum, set_to_zero}) over a dict of tensors, labels as
    a tree or a function: the donated jitted step follows the eager one and compiles once, and
    the frozen leaf does not move."""
    params, x, y = _problem()
    params["s"] = torch.linspace(0.5, 1.5, 3, dtype=torch.float64)

    def loss(p: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _loss({"w": p["w"], "b": p["b"] * p["s"]}, x, y)

    opt = optim.multi_transform(_groups(), MULTI_LABELS[labels])
    s0 = params["s"].clone()
    _follow_eager(opt, loss, params, x, y)
    if labels != "function_of_the_leaves":
        assert torch.equal(params["s"], s0)


# Masks and labels leaf by leaf over nested params leave a whole dict masked out for some
# group: params["head"] for adam and params["enc"] for sgd below, and every leaf for a group
# that labels nothing, so those states hold dicts of MaskedNodes.
MASKED_TREES: dict[str, Callable[[], optim.GradientTransformation]] = {
    "multi_transform_leafwise_tree": lambda: optim.multi_transform(
        _groups(),
        {"enc": {"w": "adam", "b": "adam"}, "head": {"v": "sgd", "u": "sgd"}, "scale": "frozen"},
    ),
    "multi_transform_leafwise_function": lambda: optim.multi_transform(
        {**_groups(), "unused": optim.adam(0.1)},
        lambda p: {
            "enc": {"w": "adam", "b": "adam"},
            "head": {"v": "sgd", "u": "sgd"},
            "scale": "frozen",
        },
    ),
    "masked_leafwise_function": lambda: optim.masked(
        optim.adam(0.05), lambda p: fg.tree.map(lambda x: x.dim() > 1, p)
    ),
    "masked_all_false": lambda: optim.masked(
        optim.sgd(0.1, momentum=0.9), lambda p: fg.tree.map(lambda x: False, p)
    ),
    "adamw_decay_mask": lambda: optim.adamw(
        0.05, weight_decay=0.1, mask=lambda p: fg.tree.map(lambda x: x.dim() > 1, p)
    ),
}


@pytest.mark.parametrize(
    ("name", "donate"),
    [(name, True) for name in sorted(MASKED_TREES)]
    + [("masked_all_false", False), ("multi_transform_leafwise_function", False)],
)
def test_masked_out_dicts_under_jit(name: str, donate: bool) -> None:
    """States holding dicts of MaskedNodes (whole dicts masked out) go through a jitted step,
    donated or not: the eager trajectory, one compilation."""
    params, x, y = _nested_problem()
    _follow_eager(MASKED_TREES[name](), _nested_loss, params, x, y, donate=donate)


def test_multi_transform_path_labels_under_jit() -> None:
    """Labels computed from key paths (fg.tree.map_with_path) are the same under jit."""
    params, x, y = _nested_problem()

    def by_path(p: Any) -> Any:
        return fg.tree.map_with_path(lambda path, _: "adam" if path[0] == "enc" else "sgd", p)

    opt = optim.multi_transform(_groups(), by_path)
    _follow_eager(opt, _nested_loss, params, x, y, donate=False)


# --------------------------------------------------------------------------------------------
# lookahead
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reset_state", [False, True])
def test_lookahead_donated_step_follows_the_eager_trajectory(reset_state: bool) -> None:
    """lookahead(adam) over LookaheadParams, gradients at the fast parameters: the donated
    jitted step follows the eager one through two synchronisations and compiles once."""
    params, x, y = _problem()
    opt = optim.lookahead(
        optim.adam(0.05), sync_period=3, slow_step_size=0.5, reset_state=reset_state
    )
    lookahead_params = optim.LookaheadParams.init_synced(params)
    _follow_eager(opt, _loss, lookahead_params, x, y, steps=7, at=lambda p: p.fast)


def test_init_synced_copies_the_slow_parameters() -> None:
    """init_synced: fast is the params; slow equals them but shares no tensor (an aliased pair
    would make the first jitted call compile for aliasing, the second compile again)."""
    params, _, _ = _problem()
    pair = optim.LookaheadParams.init_synced(params)
    assert pair.fast is params
    assert_trees_allclose(pair.slow, params)
    for fast, slow in zip(fg.tree.leaves(pair.fast), fg.tree.leaves(pair.slow)):
        assert fast.data_ptr() != slow.data_ptr()
