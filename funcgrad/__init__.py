"""funcgrad: JAX's way of writing models, on PyTorch.

Pure functions, parameters as pytrees, composable transforms (``grad``, ``vmap``, ``jvp``,
``jacrev``, ...) and stateless optimizers, on CPU or CUDA tensors.

>>> import torch, funcgrad as fg
>>> fg.grad(lambda p: (p["w"] ** 2).sum())({"w": torch.tensor([1.0, 2.0])})
{'w': tensor([2., 4.])}
"""

from . import data as data
from . import debug as debug
from . import distributed as distributed
from . import io as io
from . import lax as lax
from . import nn as nn
from . import optim as optim
from . import random as random
from . import testing as testing
from . import tree as tree
from ._custom import custom_jvp as custom_jvp
from ._custom import custom_vjp as custom_vjp
from ._custom import stop_gradient as stop_gradient
from ._grad import grad as grad
from ._grad import value_and_grad as value_and_grad
from ._jacobian import hessian as hessian
from ._jacobian import jacfwd as jacfwd
from ._jacobian import jacrev as jacrev
from ._jit import Jitted as Jitted
from ._jit import Lowered as Lowered
from ._jit import jit as jit
from ._jvp_vjp import jvp as jvp
from ._jvp_vjp import linearize as linearize
from ._jvp_vjp import vjp as vjp
from ._remat import checkpoint as checkpoint
from ._remat import remat as remat
from ._vmap import vmap as vmap

__version__ = "0.1.0.dev0"

__all__ = [
    "Jitted",
    "Lowered",
    "__version__",
    "checkpoint",
    "custom_jvp",
    "custom_vjp",
    "data",
    "debug",
    "distributed",
    "grad",
    "hessian",
    "io",
    "jacfwd",
    "jacrev",
    "jit",
    "jvp",
    "lax",
    "linearize",
    "nn",
    "optim",
    "random",
    "remat",
    "stop_gradient",
    "testing",
    "tree",
    "value_and_grad",
    "vjp",
    "vmap",
]
