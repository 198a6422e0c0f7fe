"""Any ``torch.nn.Module`` as a pure function of parameter and buffer pytrees: ``functionalize``.

# NOTE [functionalize's buffers]
# ``apply(params, buffers, *args, **kwargs)`` always returns ``(out, new_buffers)``. Whether a
# module changes its buffers depends on its code and mode (BatchNorm in training updates its
# running statistics; in eval it does not), which cannot be known before the call, so one
# signature serves every module and a training step does not change shape when a BatchNorm is
# added (haiku's transform_with_state and flax's mutable collections make the same choice).
#
# Purity: torch.func.functional_call swaps the given tensors into the module for the call, and a
# module that updates a buffer in place (BatchNorm's ``running_mean.mul_(...)``) would write into
# the caller's tensor. apply therefore hands the module fresh copies of the buffers (a clone
# each: buffers are small next to activations) and returns those copies, updated or not, as
# ``new_buffers``; a module that *reassigns* a buffer (``self.step = self.step + 1``) is caught
# too, since functional_call writes the reassigned tensors back into the dict it was given.
# Neither the caller's tensors nor the module's own buffers change.
#
# Speed: functional_call(tie_weights=True) walks every parameter and buffer of the module on each
# call to find tied names. functionalize finds them once (a tensor registered under several
# names) and apply adds the aliases to the dict itself, calling functional_call with
# tie_weights=False. The strict key check is one comparison of key sets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.func

__all__ = ["functionalize"]


def _aliases(
    named: list[tuple[str, torch.Tensor]], canonical: Mapping[str, torch.Tensor]
) -> list[tuple[str, str]]:
    """``(alias, canonical_name)`` for each extra name of a tensor registered under several."""
    first = {id(t): n for n, t in canonical.items()}
    return [(n, first[id(t)]) for n, t in named if n not in canonical and id(t) in first]


def _check_mapping(what: str, tree: object) -> None:
    if not isinstance(tree, Mapping):
        raise TypeError(
            f"funcgrad.nn.functionalize: apply's {what} must be a dict of tensors by name (as "
            f"functionalize returns it), got {type(tree).__name__}."
        )


def _key_error(module: torch.nn.Module, what: str, given: Mapping[str, Any], expected: Any) -> str:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    parts = []
    if missing:
        parts.append(f"missing keys {missing}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected}")
    return (
        f"funcgrad.nn.functionalize: the {what} given to apply do not match the {what} of the "
        f"{type(module).__name__}: {'; '.join(parts)}. Pass the {what} that functionalize "
        "returned (or a tree of the same keys), or use functionalize(module, strict=False) to "
        "take missing tensors from the module."
    )


def functionalize(
    module: torch.nn.Module, *, strict: bool = True
) -> tuple[
    Callable[..., tuple[Any, dict[str, torch.Tensor]]],
    dict[str, torch.Tensor],
    dict[str, torch.Tensor],
]:
    """Turns a ``torch.nn.Module`` into a pure function of its parameters and buffers.

    Built on :func:`torch.func.functional_call`: the module's code runs with the given tensors
    in place of its own, so any module works (your own, torchvision's, Hugging Face's).

    Args:
        module: the module. Its mode (``module.train()``/``module.eval()``) at call time
            applies, as in PyTorch.
        strict: whether ``apply`` checks that its ``params`` and ``buffers`` have exactly the
            module's keys (an error names the missing and unexpected ones). With
            ``strict=False`` missing tensors are taken from the module and extra ones are set
            as attributes for the call, as ``functional_call(strict=False)`` does.

    Returns:
        ``(apply, params, buffers)``: ``params`` and ``buffers`` are dicts from the names of
        ``module.named_parameters()``/``named_buffers()`` to detached tensors that share memory
        with the module's (tied weights appear once, under their first name, and stay tied);
        ``apply(params, buffers, *args, **kwargs)`` returns ``(out, new_buffers)``, where
        ``out`` is ``module(*args, **kwargs)`` computed with the given tensors and
        ``new_buffers`` holds the buffers after the call (updated running statistics of a
        BatchNorm in training mode; equal values otherwise). ``apply`` never modifies
        ``params``, ``buffers`` or the module, and it composes with :func:`funcgrad.grad`,
        :func:`funcgrad.vmap` and ``torch.compile``.

    >>> import torch, funcgrad as fg
    >>> from funcgrad import nn
    >>> module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    >>> apply, params, buffers = nn.functionalize(module)
    >>> sorted(params), sorted(buffers)
    (['0.bias', '0.weight', '1.bias', '1.weight'], ['1.num_batches_tracked', '1.running_mean', '1.running_var'])
    >>> x = torch.arange(8.0).reshape(4, 2)
    >>> out, new_buffers = apply(params, buffers, x)
    >>> new_buffers["1.num_batches_tracked"], buffers["1.num_batches_tracked"]
    (tensor(1), tensor(0))
    >>> def loss(params, buffers, x):
    ...     out, new_buffers = apply(params, buffers, x)
    ...     return out.square().mean(), new_buffers
    >>> grads, new_buffers = fg.grad(loss, has_aux=True)(params, buffers, x)
    >>> grads["0.weight"].shape
    torch.Size([3, 2])
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(
            f"funcgrad.nn.functionalize: expected a torch.nn.Module, got "
            f"{type(module).__name__} ({module!r})."
        )
    own_params = dict(module.named_parameters())
    own_buffers = dict(module.named_buffers())
    aliases = _aliases(list(module.named_parameters(remove_duplicate=False)), own_params)
    aliases += _aliases(list(module.named_buffers(remove_duplicate=False)), own_buffers)
    param_keys = frozenset(own_params)
    buffer_keys = frozenset(own_buffers)
    functional_call = torch.func.functional_call

    def apply(
        params: Mapping[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        _check_mapping("params", params)
        _check_mapping("buffers", buffers)
        if strict:
            if params.keys() != param_keys:
                raise ValueError(_key_error(module, "params", params, param_keys))
            if buffers.keys() != buffer_keys:
                raise ValueError(_key_error(module, "buffers", buffers, buffer_keys))
        tensors = dict(params)
        for name, b in buffers.items():
            tensors[name] = b.clone()
        names = list(buffers)
        if not strict:  # buffers the caller left out are the module's own: copy them too
            for name, b in module.named_buffers():
                if name not in buffers and name not in params:
                    tensors[name] = b.detach().clone()
                    names.append(name)
        for alias, canonical in aliases:
            if canonical in tensors:
                tensors[alias] = tensors[canonical]
        out = functional_call(module, tensors, args, kwargs, tie_weights=False, strict=False)
        return out, {name: tensors[name] for name in names}

    params = {name: p.detach() for name, p in own_params.items()}
    buffers = {name: b.detach() for name, b in own_buffers.items()}
    return apply, params, buffers
