"""Tests for ``masked`` and ``multi_transform`` (``funcgrad/optim/_masking.py``): optax's
numerics, laws, vmap, errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import (
    ENSEMBLE_NO_NANS,
    compare_with_optax,
    ensemble_runs,
    optax_module,
    t,
    trees,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import funcgrad as fg
from funcgrad import optim
from funcgrad.testing import assert_trees_allclose

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
    compare_with_optax(optim.masked(make[0](0), mask), ox.masked(make[1](0), mask), seed=1)


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
    compare_with_optax(ours, theirs, seed=2)


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
    compare_with_optax(ours, theirs, seed=3)


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
# Ensembles (vmap)
# --------------------------------------------------------------------------------------------


def _ensembles() -> dict[str, tuple[Any, list[set[int]]]]:
    return {
        "masked": (
            optim.masked(optim.adam(0.05), {"w": True, "b": False, "s": True}),
            ENSEMBLE_NO_NANS,
        ),
        "multi_transform": (
            optim.multi_transform(
                {"a": optim.adam(0.05), "s": optim.sgd(0.02, 0.9)}, {"w": "a", "b": "s", "s": "a"}
            ),
            ENSEMBLE_NO_NANS,
        ),
    }


@pytest.mark.parametrize("name", list(_ensembles()))
def test_vmap_ensemble_equals_separate_runs(name: str) -> None:
    """vmap over 3 parameter sets and states == 3 separate runs (members may skip differently)."""
    params, state, expected, expected_state = ensemble_runs(*_ensembles()[name])
    assert_trees_allclose(params, expected, rtol=1e-12, atol=1e-14)
    assert_trees_allclose(state, expected_state, rtol=1e-12, atol=1e-14)


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
