"""Control over differentiation: ``stop_gradient``."""

from __future__ import annotations

from typing import Any

import optree
import torch

from ._typing import PyTree
from .tree import NAMESPACE

__all__ = ["stop_gradient"]


def _stop(x: Any) -> Any:
    return x.detach() if isinstance(x, torch.Tensor) else x


def stop_gradient(tree: PyTree) -> PyTree:
    """Returns ``tree`` with every tensor leaf treated as a constant by all transforms.

    The values are unchanged; derivatives (forward and reverse mode, at every nesting level)
    through the result are zero. Non-tensor leaves pass through.

    >>> import torch, funcgrad as fg
    >>> fg.grad(lambda x: x * fg.stop_gradient(x))(torch.tensor(3.0))
    tensor(3.)
    """
    return optree.tree_map(_stop, tree, namespace=NAMESPACE)
