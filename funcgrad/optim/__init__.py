"""Stateless, optax-shaped optimizers on PyTorch tensors.

An optimizer is a :class:`GradientTransformation`: a pair of pure functions ``init`` and
``update``. Its state is a pytree of NamedTuples and tensors, so a training loop keeps it next to
the parameters, and saves, ``vmap``-s or jits it like any other data.

>>> import torch, funcgrad as fg
>>> from funcgrad import optim
>>> loss = lambda p: ((p["w"] - 3.0) ** 2).sum()
>>> params = {"w": torch.zeros(2)}
>>> opt = optim.adam(0.1)
>>> state = opt.init(params)
>>> for _ in range(200):
...     updates, state = opt.update(fg.grad(loss)(params), state, params)
...     params = optim.apply_updates(params, updates)
>>> params["w"].round(decimals=2)
tensor([3., 3.])
"""

from ._alias import adam as adam
from ._alias import adamw as adamw
from ._alias import sgd as sgd
from ._base import EmptyState as EmptyState
from ._base import GradientTransformation as GradientTransformation
from ._base import Schedule as Schedule
from ._base import apply_updates as apply_updates
from ._base import chain as chain
from ._base import identity as identity
from ._base import set_to_zero as set_to_zero
from ._transforms import AddDecayedWeightsState as AddDecayedWeightsState
from ._transforms import ScaleByAdamState as ScaleByAdamState
from ._transforms import ScaleByScheduleState as ScaleByScheduleState
from ._transforms import TraceState as TraceState
from ._transforms import ZeroNansState as ZeroNansState
from ._transforms import add_decayed_weights as add_decayed_weights
from ._transforms import clip as clip
from ._transforms import clip_by_global_norm as clip_by_global_norm
from ._transforms import scale as scale
from ._transforms import scale_by_adam as scale_by_adam
from ._transforms import scale_by_learning_rate as scale_by_learning_rate
from ._transforms import scale_by_schedule as scale_by_schedule
from ._transforms import trace as trace
from ._transforms import zero_nans as zero_nans

__all__ = [
    "AddDecayedWeightsState",
    "EmptyState",
    "GradientTransformation",
    "ScaleByAdamState",
    "ScaleByScheduleState",
    "Schedule",
    "TraceState",
    "ZeroNansState",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_global_norm",
    "identity",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "set_to_zero",
    "sgd",
    "trace",
    "zero_nans",
]
