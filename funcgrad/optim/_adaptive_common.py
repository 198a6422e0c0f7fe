"""What the adaptive optimizers (``_rms.py``, ``_adam_variants.py``) share: hyperparameter
checks, zero states, the denominator with ``eps`` inside or outside the square root, and the
aliases' weight decay and learning rate.

# NOTE [torch or optax numerics in the adaptive family]
# torch.optim and optax define these optimizers differently in small ways: where epsilon goes
# (inside or outside a square root, before or after bias correction), initial accumulators,
# default decays, NAdam's momentum schedule, RAdam's threshold test, where momentum sits
# relative to the learning rate. The rule here:
# - Building blocks (scale_by_rms, scale_by_rss, ...) carry optax's names, signatures and
#   defaults, so ported optax code computes the same numbers; keyword flags select torch's form.
# - Aliases (rmsprop, adagrad, ...) follow the torch.optim class of the same name by default
#   (same defaults, same trajectory), pass the flags to the building blocks, and expose the
#   flags so that optax's form is one keyword away. Each alias's docstring lists the
#   differences. Hyperparameters other than the learning rate and weight decay are numbers.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from . import _foreach
from ._base import GradientTransformation, ScalarOrSchedule, check_learning_rate, identity
from ._transforms import add_decayed_weights, scale_by_learning_rate

__all__: list[str] = []

Tensors = list[torch.Tensor]


def _check(name: str, what: str, value: Any, low: float, high: float, *, open_high: bool) -> None:
    """A number hyperparameter must lie in ``[low, high]`` (``[low, high)`` with open_high)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"funcgrad.optim.{name}: {what} must be a number, got {type(value).__name__}."
        )
    v = float(value)
    if not (low <= v < high if open_high else low <= v <= high):
        interval = f"[{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"funcgrad.optim.{name}: {what} must be in {interval}, got {v}.")


def _decay(name: str, what: str, value: Any) -> None:
    _check(name, what, value, 0.0, 1.0, open_high=False)


def _beta(name: str, what: str, value: Any) -> None:
    _check(name, what, value, 0.0, 1.0, open_high=True)


def _non_negative(name: str, what: str, value: Any) -> None:
    _check(name, what, value, 0.0, math.inf, open_high=False)


def _adam_like(name: str, b1: float, b2: float, eps: float, eps_root: float = 0.0) -> None:
    _beta(name, "b1", b1)
    _beta(name, "b2", b2)
    _non_negative(name, "eps", eps)
    _non_negative(name, "eps_root", eps_root)


def _denominator(v: Tensors, eps: float, eps_in_sqrt: bool) -> Tensors:
    """``sqrt(v + eps)`` or ``sqrt(v) + eps``, as new tensors."""
    if eps_in_sqrt:
        return _foreach.sqrt(_foreach.add_scalar(v, eps))
    return _foreach.add_scalar_(_foreach.sqrt(v), eps)


# --------------------------------------------------------------------------------------------
# The aliases' weight decay and learning rate
# --------------------------------------------------------------------------------------------


def _weight_decay(name: str, weight_decay: float | torch.Tensor) -> GradientTransformation:
    check_learning_rate(name, weight_decay, "weight_decay")
    if isinstance(weight_decay, torch.Tensor) or weight_decay != 0:
        return add_decayed_weights(weight_decay)
    return identity()


def _coupled_or_decoupled(
    name: str, weight_decay: float | torch.Tensor, decoupled: bool
) -> tuple[GradientTransformation, GradientTransformation]:
    """Weight decay before the rescaling (L2) or after it (decoupled, as in AdamW)."""
    decay = _weight_decay(name, weight_decay)
    return (identity(), decay) if decoupled else (decay, identity())


def _lr(name: str, learning_rate: ScalarOrSchedule) -> GradientTransformation:
    check_learning_rate(name, learning_rate)
    return scale_by_learning_rate(learning_rate)
