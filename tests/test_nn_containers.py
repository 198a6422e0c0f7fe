"""Tests for ``funcgrad/nn/_containers.py``: ``Sequential``, ``Lambda`` and ``MLP``.

``MLP`` and ``Sequential`` against ``torch.nn.Sequential`` with the same weights (outputs,
gradients, BatchNorm state in training); keys and state threaded through a Sequential; ensembles
of stacked MLPs under ``fg.vmap`` (forward, training and initialisation) against the loop;
errors by message.
"""

from __future__ import annotations

import itertools
from typing import Any

import helpers
import pytest
import torch

import funcgrad as fg
from funcgrad import nn, optim, random
from funcgrad.testing import assert_trees_allclose

F64 = torch.float64


def mlp_pair(
    activation: Any = nn.relu,
    torch_activation: Any = torch.nn.ReLU,
    hidden: tuple[int, ...] = (5, 6),
) -> tuple[nn.MLP, torch.nn.Sequential]:
    sizes = [3, *hidden, 2]
    torch_layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        torch_layers.append(helpers.torch_module(torch.nn.Linear, a, b, seed=i))
        if i < len(sizes) - 2:
            torch_layers.append(torch_activation())
    module = torch.nn.Sequential(*torch_layers)
    mlp = nn.MLP(3, list(hidden), 2, activation=activation, key=random.key(0), dtype=F64)
    linears = [m for m in torch_layers if isinstance(m, torch.nn.Linear)]
    mlp = mlp.replace(layers=tuple(helpers.copy_weights(a, b) for a, b in zip(mlp.layers, linears)))
    return mlp, module


def mlp_grad(grads: nn.MLP, name: str) -> Any:
    index, field = name.split(".")
    return getattr(grads.layers[int(index) // 2], field)


@pytest.mark.parametrize(
    ("activation", "torch_activation"),
    [(nn.relu, torch.nn.ReLU), (nn.gelu, torch.nn.GELU), (torch.tanh, torch.nn.Tanh)],
    ids=["relu", "gelu", "tanh"],
)
@pytest.mark.parametrize("hidden", [(), (5,), (5, 6)], ids=str)
def test_mlp_matches_torch_sequential(
    activation: Any, torch_activation: Any, hidden: tuple[int, ...]
) -> None:
    """An MLP equals the torch.nn.Sequential of Linear layers and activations (no activation
    after the last layer): output and gradients."""
    mlp, module = mlp_pair(activation, torch_activation, hidden)
    helpers.check_layer_against_torch(mlp, module, (helpers.t(4, 3, seed=1),), get=mlp_grad)


def test_mlp_layers_get_their_own_keys() -> None:
    """Each Linear of an MLP is initialised from its own key split from the MLP's."""
    mlp = nn.MLP(4, [4], 4, key=random.key(0))
    k0, k1 = random.split(random.key(0))
    assert fg.tree.equal(mlp.layers[0], nn.Linear(4, 4, key=k0))
    assert fg.tree.equal(mlp.layers[1], nn.Linear(4, 4, key=k1))


def test_sequential_matches_torch_in_training() -> None:
    """Linear, ReLU, BatchNorm1d, Linear: output, gradients and running statistics equal
    torch.nn.Sequential's in training mode over two steps."""
    torch_layers = [
        helpers.torch_module(torch.nn.Linear, 3, 5, seed=1),
        torch.nn.ReLU(),
        helpers.torch_module(torch.nn.BatchNorm1d, 5),
        helpers.torch_module(torch.nn.Linear, 5, 2, seed=2),
    ]
    module = torch.nn.Sequential(*torch_layers).train()
    seq = nn.Sequential(
        helpers.copy_weights(nn.Linear(3, 5, key=random.key(0), dtype=F64), torch_layers[0]),
        nn.relu,
        nn.BatchNorm(5, dtype=F64),
        helpers.copy_weights(nn.Linear(5, 2, key=random.key(0), dtype=F64), torch_layers[3]),
    )
    state = seq.init_state()
    assert state[0] is None
    assert isinstance(state[2], nn.BatchNormState)
    for step in range(2):
        holder: dict[str, Any] = {}

        def call(
            m: nn.Sequential, x: torch.Tensor, s: Any = state, holder: dict[str, Any] = holder
        ) -> torch.Tensor:
            y, holder["state"] = m(x, s, train=True)
            return y

        def get(grads: nn.Sequential, name: str) -> Any:
            index, field = name.split(".")
            return getattr(grads.layers[int(index)], field)

        helpers.check_layer_against_torch(
            seq, module, (helpers.t(6, 3, seed=step),), call=call, get=get
        )
        state = holder["state"]
        assert_trees_allclose(
            state[2].running_var, torch_layers[2].running_var, rtol=1e-12, atol=1e-14
        )


def test_sequential_threads_keys_to_dropout() -> None:
    """With a key, layer i of a Sequential gets split(key, len(layers))[i]; without train
    the Dropout refuses to guess the mode."""
    lin = nn.Linear(4, 4, key=random.key(0), dtype=F64)
    drop = nn.Dropout(0.5)
    seq = nn.Sequential(lin, drop, nn.Sequential(drop, nn.relu))
    x = helpers.t(3, 4, seed=1)
    keys = random.split(random.key(7), 3)
    inner = random.split(keys[2], 2)
    expected = nn.relu(drop(drop(lin(x), train=True, key=keys[1]), train=True, key=inner[0]))
    assert_trees_allclose(seq(x, train=True, key=random.key(7)), expected, rtol=0, atol=0)
    assert_trees_allclose(seq(x, train=False), nn.relu(lin(x)), rtol=0, atol=0)
    with pytest.raises(
        ValueError,
        match=r"nn\.Sequential: layer 1 \(Dropout\) behaves differently in training and evaluation; pass train=True or train=False",
    ):
        seq(x)


def test_sequential_container_protocol() -> None:
    """Functions are wrapped in Lambda (no leaves); indexing, slicing, len and iteration work;
    a nested Sequential with a BatchNorm is stateful."""
    lin = nn.Linear(2, 2, key=random.key(0))
    seq = nn.Sequential(lin, torch.tanh, nn.Flatten(0))
    assert isinstance(seq[1], nn.Lambda)
    assert seq[1].fn is torch.tanh
    assert len(seq) == 3
    assert next(iter(seq)) is lin
    assert isinstance(seq[:2], nn.Sequential)
    assert len(seq[:2]) == 2
    assert bool(nn.Sequential())
    assert bool(seq)
    assert len(fg.tree.leaves(seq)) == 2
    assert repr(seq).startswith("Sequential(layers=(Linear(in_features=2")
    nested = nn.Sequential(seq[:2], nn.Sequential(nn.BatchNorm(2)))
    assert not seq.stateful
    assert nested.stateful
    _y, state = nested(torch.ones(3, 2), nested.init_state(), train=True)
    assert state[0] is None
    assert int(state[1][0].num_batches_tracked) == 1


def test_sequential_errors() -> None:
    """A missing or malformed state, torch modules and non-callables are named."""
    seq = nn.Sequential(nn.BatchNorm(2))
    with pytest.raises(
        ValueError,
        match=r"nn\.Sequential: layer 0 \(BatchNorm\) keeps running statistics; call seq\(x, state, train=...\)",
    ):
        seq(torch.ones(3, 2), train=True)
    with pytest.raises(
        ValueError,
        match=r"nn\.Sequential: state must be a tuple with one entry per layer \(1\), as init_state\(\) returns it, got tuple of length 2",
    ):
        seq(torch.ones(3, 2), (None, None), train=True)
    with pytest.raises(ValueError, match=r"layer 0 \(BatchNorm\) behaves differently"):
        seq(torch.ones(3, 2), seq.init_state())
    with pytest.raises(
        TypeError,
        match=r"nn\.Sequential: layer 1 is a torch\.nn\.Module \(Linear\); use the funcgrad\.nn layer",
    ):
        nn.Sequential(nn.relu, torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"nn\.Sequential: layer 0 is not callable: int"):
        nn.Sequential(3)
    with pytest.raises(TypeError, match=r"nn\.Lambda: expected a callable, got int"):
        nn.Lambda(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"nn\.MLP: activation must be callable, got str"):
        nn.MLP(2, [3], 1, activation="relu", key=random.key(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"nn\.MLP: hidden_features must be a sequence of widths"):
        nn.MLP(2, 3, 1, key=random.key(0))  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"nn\.MLP: each of hidden_features must be a positive int, got 0"
    ):
        nn.MLP(2, [0], 1, key=random.key(0))


# --------------------------------------------------------------------------------------------
# Ensembles: stacked layers under vmap
# --------------------------------------------------------------------------------------------


def members(n: int = 3) -> list[nn.MLP]:
    return [nn.MLP(3, [8], 2, key=k, dtype=F64) for k in random.split(random.key(0), n)]


def test_ensemble_forward_equals_loop() -> None:
    """fg.vmap over fg.tree.stack(models) equals calling each model."""
    models = members()
    x = helpers.t(5, 3, seed=1)
    out = fg.vmap(lambda m, x: m(x), in_axes=(0, None))(fg.tree.stack(models), x)
    assert_trees_allclose(out, torch.stack([m(x) for m in models]))


def test_ensemble_training_equals_loop() -> None:
    """Five SGD-with-momentum steps of a vmapped ensemble (each member its own data) equal
    five steps of each member alone; unstack returns the members."""
    models = members()
    xs, ys = helpers.t(3, 6, 3, seed=2), helpers.t(3, 6, 2, seed=3)
    opt = optim.sgd(0.1, momentum=0.9)

    def step(model: nn.MLP, state: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, Any]:
        grads = fg.grad(lambda m: nn.mse(m(x), y))(model)
        updates, state = opt.update(grads, state, model)
        return optim.apply_updates(model, updates), state

    stacked = fg.tree.stack(models)
    state = fg.vmap(opt.init)(stacked)
    loop = [(m, opt.init(m)) for m in models]
    for _ in range(5):
        stacked, state = fg.vmap(step)(stacked, state, xs, ys)
        loop = [step(m, s, x, y) for (m, s), x, y in zip(loop, xs, ys)]
    for trained, (expected, _) in zip(fg.tree.unstack(stacked), loop):
        assert isinstance(trained, nn.MLP)
        assert_trees_allclose(trained, expected)


def test_ensemble_initialised_under_vmap_equals_stacked_inits() -> None:
    """Building the MLP inside fg.vmap over a batch of keys gives the stacked members."""
    keys = random.split(random.key(0), 3)
    built = fg.vmap(lambda k: nn.MLP(3, [8], 2, key=k, dtype=F64))(keys)
    assert_trees_allclose(built, fg.tree.stack(members()), rtol=0, atol=0)
