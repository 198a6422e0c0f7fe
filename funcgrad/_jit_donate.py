"""Donation for :func:`funcgrad.jit`: outputs written into donated input tensors.

Private, used by ``_jit.py`` only (its trampoline calls :func:`_donate`).
"""

from __future__ import annotations

from typing import Any

import optree
import torch

from .tree import NAMESPACE

__all__: list[str] = []

# NOTE [donation]
# JAX donates a buffer by letting an output reuse it. torch.compile can only write into its
# inputs, so for a donated argument the trampoline copies each output leaf into a donated input
# leaf of the same shape, dtype and device (first match in traversal order, each input used
# once) and returns that input tensor as the output leaf. AOTAutograd turns the copy into an
# input mutation at the end of the graph, and inductor then computes the result straight into
# the input's storage: a train step's new parameters and optimizer state live where the old ones
# were, and the step needs no more memory than an in-place torch.optim step. Consequences, which
# the docstring states: a donated tensor that received an output *is* that output after the call
# (same object, new values), and donated tensors that matched no output are left untouched.
# Never overwritten: a donated tensor that some output is, or is a view of (the output must keep
# its values); a tensor appearing twice among the donated leaves gets one output, not two; and
# 0-d tensors (dynamo on torch 2.13 drops a copy into a 0-d input and returns the stale input,
# a silently wrong result; their memory does not matter).


def _root(x: torch.Tensor) -> torch.Tensor:
    return x if x._base is None else x._base


def _donate(out: Any, donated_args: list[Any]) -> Any:
    """Copies each output leaf into a matching donated tensor (NOTE [donation])."""
    # Walked with tree_map, not flattened: dynamo's stand-in for optree cannot flatten a dict
    # whose values are all Python constants (a MaskedNode per entry in a masked optimizer state,
    # an empty dict) and fails tracing; its tree_map does not flatten. (It walks dicts in
    # insertion order, optree in sorted order: which same-kind donated tensor an output lands
    # in may differ, each still used once.)
    everything: list[Any] = []
    optree.tree_map(everything.append, donated_args, namespace=NAMESPACE)  # type: ignore[arg-type]
    leaves: list[Any] = []
    optree.tree_map(leaves.append, out, namespace=NAMESPACE, none_is_leaf=True)
    # Dynamo runs this at trace time, interpreting every bytecode: the matching is linear in the
    # number of leaves (sets of tensors, buckets by shape, dtype and device). A quadratic search
    # took 400 s to trace an Adam step over 196 leaves (~590 donated tensors). Tensors go into
    # sets as themselves (hashed by identity, which dynamo tracks without guards); id() would
    # make dynamo guard on the objects' identities and recompile for every new tensor.
    # A donated tensor that an output is, or is a view of, keeps its values: it is not reused.
    kept = {_root(o) for o in leaves if isinstance(o, torch.Tensor)}
    # 0-d tensors are not donated: dynamo (torch 2.13) drops a copy_ into a 0-d input and returns
    # the input unchanged. Each tensor object is donated once, however often it appears.
    seen: set[torch.Tensor] = set()
    free: dict[Any, list[torch.Tensor]] = {}
    for x in everything:
        if isinstance(x, torch.Tensor) and x.dim() > 0 and x not in seen and _root(x) not in kept:
            seen.add(x)
            free.setdefault((tuple(x.shape), x.dtype, x.device), []).append(x)

    def place(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            bucket = free.get((tuple(o.shape), o.dtype, o.device))
            if bucket:
                d = bucket.pop(0)  # the first donated tensor of that kind, in argument order
                d.copy_(o)
                return d
        return o

    return optree.tree_map(place, out, namespace=NAMESPACE, none_is_leaf=True)
