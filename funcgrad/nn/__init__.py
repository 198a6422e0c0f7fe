"""Pure layers as pytrees, initialisers, activations, losses and metrics; ``functionalize``.

A layer is a frozen dataclass registered as a pytree: its tensors are the leaves, its
configuration is static. It is built from a PRNG key with PyTorch's default initialisation and
called like a function, and it goes through :func:`funcgrad.grad`, :func:`funcgrad.vmap`,
optimizers and checkpoints as it is. :func:`functionalize` brings any ``torch.nn.Module``
into the same world.

>>> import torch, funcgrad as fg
>>> from funcgrad import nn, optim, random
>>> model = nn.MLP(2, [16], 1, activation=nn.gelu, key=random.key(0))
>>> x = torch.linspace(-1, 1, 64).reshape(32, 2)
>>> y = x.sum(-1, keepdim=True)
>>> def loss(model):
...     return nn.mse(model(x), y)
>>> opt = optim.adam(3e-2)
>>> state = opt.init(model)
>>> for _ in range(100):
...     updates, state = opt.update(fg.grad(loss)(model), state, model)
...     model = optim.apply_updates(model, updates)
>>> bool(loss(model) < 1e-3)
True
"""

from . import init as init
from ._attention import MultiheadAttention as MultiheadAttention
from ._containers import MLP as MLP
from ._containers import Lambda as Lambda
from ._containers import Sequential as Sequential
from ._conv import AdaptiveAvgPool2d as AdaptiveAvgPool2d
from ._conv import AvgPool2d as AvgPool2d
from ._conv import Conv1d as Conv1d
from ._conv import Conv2d as Conv2d
from ._conv import MaxPool2d as MaxPool2d
from ._functional import accuracy as accuracy
from ._functional import binary_cross_entropy_with_logits as binary_cross_entropy_with_logits
from ._functional import cross_entropy as cross_entropy
from ._functional import gelu as gelu
from ._functional import l2_loss as l2_loss
from ._functional import log_softmax as log_softmax
from ._functional import mse as mse
from ._functional import relu as relu
from ._functional import silu as silu
from ._functional import softmax as softmax
from ._functionalize import functionalize as functionalize
from ._linear import Dropout as Dropout
from ._linear import Embedding as Embedding
from ._linear import Flatten as Flatten
from ._linear import Linear as Linear
from ._module import Module as Module
from ._norm import BatchNorm as BatchNorm
from ._norm import BatchNormState as BatchNormState
from ._norm import LayerNorm as LayerNorm
from ._norm import RMSNorm as RMSNorm
from ._recurrent import GRUCell as GRUCell
from ._recurrent import LSTMCell as LSTMCell

# Plain sorted() order (tests/test_api.py), not ruff's isort-style order for "MLP".
__all__ = [  # noqa: RUF022
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm",
    "BatchNormState",
    "Conv1d",
    "Conv2d",
    "Dropout",
    "Embedding",
    "Flatten",
    "GRUCell",
    "LSTMCell",
    "Lambda",
    "LayerNorm",
    "Linear",
    "MLP",
    "MaxPool2d",
    "Module",
    "MultiheadAttention",
    "RMSNorm",
    "Sequential",
    "accuracy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "functionalize",
    "gelu",
    "init",
    "l2_loss",
    "log_softmax",
    "mse",
    "relu",
    "silu",
    "softmax",
]
