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

from ._accumulation import ApplyIfFiniteState as ApplyIfFiniteState
from ._accumulation import MultiSteps as MultiSteps
from ._accumulation import MultiStepsState as MultiStepsState
from ._accumulation import apply_if_finite as apply_if_finite
from ._accumulation import skip_large_updates as skip_large_updates
from ._accumulation import skip_not_finite as skip_not_finite
from ._adam_variants import ScaleByAdamaxState as ScaleByAdamaxState
from ._adam_variants import ScaleByNadamState as ScaleByNadamState
from ._adam_variants import ScaleByRadamState as ScaleByRadamState
from ._adam_variants import adamax as adamax
from ._adam_variants import nadam as nadam
from ._adam_variants import radam as radam
from ._adam_variants import scale_by_adamax as scale_by_adamax
from ._adam_variants import scale_by_nadam as scale_by_nadam
from ._adam_variants import scale_by_radam as scale_by_radam
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
from ._factorized import FactoredState as FactoredState
from ._factorized import adafactor as adafactor
from ._factorized import scale_by_factored_rms as scale_by_factored_rms
from ._lion import ScaleByLionState as ScaleByLionState
from ._lion import lion as lion
from ._lion import scale_by_lion as scale_by_lion
from ._masking import MaskedNode as MaskedNode
from ._masking import MaskedState as MaskedState
from ._masking import MultiTransformState as MultiTransformState
from ._masking import masked as masked
from ._masking import multi_transform as multi_transform
from ._rms import ScaleByAdaDeltaState as ScaleByAdaDeltaState
from ._rms import ScaleByRmsState as ScaleByRmsState
from ._rms import ScaleByRssState as ScaleByRssState
from ._rms import ScaleByRStdDevState as ScaleByRStdDevState
from ._rms import adadelta as adadelta
from ._rms import adagrad as adagrad
from ._rms import rmsprop as rmsprop
from ._rms import scale_by_adadelta as scale_by_adadelta
from ._rms import scale_by_rms as scale_by_rms
from ._rms import scale_by_rss as scale_by_rss
from ._rms import scale_by_stddev as scale_by_stddev
from ._schedules import constant as constant
from ._schedules import cosine_decay as cosine_decay
from ._schedules import exponential_decay as exponential_decay
from ._schedules import join_schedules as join_schedules
from ._schedules import linear as linear
from ._schedules import onecycle as onecycle
from ._schedules import piecewise_constant as piecewise_constant
from ._schedules import warmup_cosine_decay as warmup_cosine_decay
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
from ._trust_ratio import lamb as lamb
from ._trust_ratio import lars as lars
from ._trust_ratio import scale_by_trust_ratio as scale_by_trust_ratio
from ._wrappers import EmaState as EmaState
from ._wrappers import InjectHyperparamsState as InjectHyperparamsState
from ._wrappers import LookaheadParams as LookaheadParams
from ._wrappers import LookaheadState as LookaheadState
from ._wrappers import ema as ema
from ._wrappers import inject_hyperparams as inject_hyperparams
from ._wrappers import lookahead as lookahead

__all__ = [
    "AddDecayedWeightsState",
    "ApplyIfFiniteState",
    "EmaState",
    "EmptyState",
    "FactoredState",
    "GradientTransformation",
    "InjectHyperparamsState",
    "LookaheadParams",
    "LookaheadState",
    "MaskedNode",
    "MaskedState",
    "MultiSteps",
    "MultiStepsState",
    "MultiTransformState",
    "ScaleByAdaDeltaState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByLionState",
    "ScaleByNadamState",
    "ScaleByRStdDevState",
    "ScaleByRadamState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "Schedule",
    "TraceState",
    "ZeroNansState",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "add_decayed_weights",
    "apply_if_finite",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_global_norm",
    "constant",
    "cosine_decay",
    "ema",
    "exponential_decay",
    "identity",
    "inject_hyperparams",
    "join_schedules",
    "lamb",
    "lars",
    "linear",
    "lion",
    "lookahead",
    "masked",
    "multi_transform",
    "nadam",
    "onecycle",
    "piecewise_constant",
    "radam",
    "rmsprop",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "set_to_zero",
    "sgd",
    "skip_large_updates",
    "skip_not_finite",
    "trace",
    "warmup_cosine_decay",
    "zero_nans",
]
