"""Whole-function compilation with ``torch.compile``: ``jit``.

# NOTE [jit's cache]
# torch.compile caches compiled code per *code object* and guards on everything the traced
# function reads, turning a changed Python int into a symbolic one on recompilation. JAX's jit
# instead has one compiled graph per signature: the tree structure of the arguments, the values
# of their non-tensor leaves and of the static arguments. funcgrad keeps that contract itself:
#
# - Every call flattens the non-static arguments with optree and builds a key from the tree
#   structure, each non-tensor leaf (with its type, so 1, 1.0 and True differ) and the static
#   values. A dict maps keys to entries. Arguments that are all tensors (a train step's
#   parameters, state and batch) key on their types and requires_grad flags through C-level
#   maps, with no Python call per leaf: the whole per-call cost of an Adam step over 196 leaves
#   (~790 tensors) went from 744 to 393 us with this and inductor's size asserts off (dynamo's
#   guards already check every input's sizes and strides).
# - Each entry wraps its own copy of a small trampoline function, with a fresh code object, in
#   its own torch.compile. Dynamo's per-code cache and recompile limit therefore belong to one
#   (jitted function, signature) pair and never leak between jitted functions; within an entry
#   only tensor properties (shape, dtype, device, ...) can make dynamo recompile.
# - The trampoline receives the pytree arguments themselves, not flat tensors: dynamo traces
#   optree's flatten/unflatten through its own stand-ins, which cannot consume a tree structure
#   built outside the graph, and it rebuilds NamedTuples, dicts and registered dataclasses in the
#   outputs itself.
# - A compile counter wraps the backend: it counts dynamo's graph compilations (first ones and
#   recompilations), which is what a test or a user wants to see stay constant in a loop.
#
# - Calls whose arguments are plain containers of tensors that do not require grad (and plain
#   non-tensor leaves) first try a cheaper, stricter signature that maps straight to the entry
#   the full key found: NOTE [jit's fast key], in _jit_key.py.
#
# NOTE [donation] (donate_argnums) is in _jit_donate.py, next to the code.
#
# NOTE [transforms under jit]
# funcgrad's transforms run unchanged inside jit with two differences while dynamo traces: the
# purity check (version counters) is skipped, since dynamo cannot read them (eager mode keeps the
# check), and vmap goes through torch.func.vmap (NOTE [vmap under jit]).
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import optree
import torch

from . import _api_util
from ._jit_donate import _donate
from ._jit_errors import _compile_error, _dynamo_error, _name, _under_transform_error
from ._jit_key import fast_signature, leaves_key
from .tree import NAMESPACE

__all__ = ["Jitted", "Lowered", "jit"]


class Lowered:
    """What :meth:`Jitted.lower` returns: the graph torch.compile captured for one signature.

    Attributes:
        graph_module: the ``torch.fx.GraphModule`` dynamo captured (torch-level operations,
            before AOTAutograd and the backend).

    >>> import torch, funcgrad as fg
    >>> f = fg.jit(lambda x: torch.sin(x) * 2, backend="aot_eager")
    >>> print(f.lower(torch.ones(3)).as_text())  # doctest: +ELLIPSIS
    <BLANKLINE>
    <BLANKLINE>
    <BLANKLINE>
    def forward(self, ...
        ...sin...
    """

    def __init__(self, graph_module: torch.fx.GraphModule) -> None:
        self.graph_module = graph_module

    def as_text(self) -> str:
        """The captured graph as readable Python code.

        >>> import torch, funcgrad as fg
        >>> text = fg.jit(torch.cos, backend="aot_eager").lower(torch.ones(2)).as_text()
        >>> "cos" in text
        True
        """
        return str(self.graph_module.code)

    def __repr__(self) -> str:
        return f"Lowered(graph with {len(self.graph_module.graph.nodes)} nodes)"


class _CountingBackend:
    """A torch.compile backend that counts compilations and keeps the captured graphs."""

    def __init__(self, owner: Jitted, backend: str | Callable[..., Any], mode: str | None) -> None:
        self.owner = owner
        self.graphs: list[torch.fx.GraphModule] = []
        self.__name__ = backend if isinstance(backend, str) else getattr(backend, "__name__", "")
        dynamic = owner.dynamic
        if backend == "inductor":
            # No input size asserts in the generated wrapper: dynamo's guards have checked every
            # input's sizes and strides before the graph runs, and the asserts cost ~0.3 us per
            # tensor per call (an Adam step over 196 leaves passes ~790 tensors: 0.25 ms).
            options: dict[str, Any] = {"size_asserts": False}
            from . import _cpu_matmul  # imports inductor's pass base class: only when compiling

            matmul_pass = _cpu_matmul.post_grad_pass()  # NOTE [CPU matmuls on oneDNN]
            if matmul_pass is not None:
                options["post_grad_custom_post_pass"] = matmul_pass
            self.inner: Any = torch._TorchCompileInductorWrapper(mode, options, dynamic)  # type: ignore[no-untyped-call]
        else:
            self.inner = torch._TorchCompileWrapper(backend, mode, None, dynamic)  # type: ignore[no-untyped-call]

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
        # Dynamo may restart its analysis and call the backend again for the same compilation
        # (same compile id): count compilations, not backend calls.
        compile_id = torch._guards.CompileContext.current_compile_id()
        if compile_id is None or compile_id not in self.owner._compile_ids:
            self.owner._compile_ids.add(compile_id if compile_id is not None else object())
            self.graphs.append(gm)
        else:
            self.graphs[-1] = gm
        return self.inner(gm, example_inputs)

    def reset(self) -> None:
        if hasattr(self.inner, "reset"):
            self.inner.reset()


class _Entry:
    """One signature: its compiled trampoline and counting backend."""

    def __init__(self, fn: Callable[..., Any], backend: _CountingBackend) -> None:
        self.fn = fn
        self.backend = backend


def _trampoline(
    fun: Callable[..., Any],
    static_pos: tuple[tuple[int, Any], ...],
    static_kw: tuple[tuple[str, Any], ...],
    donated: tuple[int, ...],
) -> Callable[..., Any]:
    donate = _donate  # a closure variable, not a global: see the globals below

    def funcgrad_jit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if static_pos:
            full = list(args)
            for i, v in static_pos:
                full.insert(i, v)
            call_args: Any = full
        else:
            call_args = args
        out = fun(*call_args, **kwargs, **dict(static_kw))
        if donated:
            out = donate(out, [args[i] for i in donated])
        return out

    # A fresh code object: torch.compile's cache and recompile limit are per code object.
    code = funcgrad_jit.__code__.replace()
    return types.FunctionType(
        code,
        _globals_for(fun, funcgrad_jit.__globals__),
        funcgrad_jit.__name__,
        funcgrad_jit.__defaults__,
        funcgrad_jit.__closure__,
    )


def _globals_for(fun: Callable[..., Any], default: dict[str, Any]) -> dict[str, Any]:
    """The globals the trampoline runs in: ``fun``'s own (NOTE [jit and globals])."""
    g = getattr(fun, "__globals__", None)
    return g if isinstance(g, dict) else default


# NOTE [jit and globals]
# Dynamo guards on the globals that the traced code reads. It resolves them in the globals of the
# frame it compiles when an inlined function shares them, and otherwise by importing the module
# named by the function's ``__name__`` global. A function defined in a namespace that is no
# module's own dict but carries a module's name (a doctest's copy of a module's globals) can
# only be guarded if the trampoline runs in that very dict, so the trampoline runs in ``fun``'s
# globals. (Dynamo installs helper names in them and deletes those when the compiled code dies;
# a doctest that clears its namespace first makes the deletions fail noisily, which is why the
# test suite keeps doctest namespaces: see tests/conftest.py.)


def _signature_names(fun: Callable[..., Any]) -> list[str] | None:
    try:
        params = inspect.signature(fun).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    items = (value,) if isinstance(value, int) else value
    if not isinstance(items, (tuple, list)) or not all(
        isinstance(a, int) and not isinstance(a, bool) for a in items
    ):
        raise TypeError(f"funcgrad.jit: {what} must be an int or a tuple of ints, got {value!r}.")
    return tuple(items)


def _as_str_tuple(value: Any, what: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (tuple, list)) or not all(isinstance(a, str) for a in items):
        raise TypeError(f"funcgrad.jit: {what} must be a str or a tuple of strs, got {value!r}.")
    return tuple(items)


class Jitted:
    """A function compiled by :func:`funcgrad.jit`; call it like the original function.

    Attributes:
        compile_count: how many graphs torch.compile has compiled for this function so far
            (first compilations and recompilations, over all signatures).
        cache_size: how many distinct signatures (tree structure, non-tensor leaves, static
            arguments) have been seen.

    >>> import torch, funcgrad as fg
    >>> f = fg.jit(lambda x, n: x * n, static_argnums=1, backend="aot_eager")
    >>> f(torch.ones(2), 3)
    tensor([3., 3.])
    >>> f(torch.zeros(2), 3), f.compile_count
    (tensor([0., 0.]), 1)
    """

    def __init__(
        self,
        fun: Callable[..., Any],
        *,
        static_argnums: tuple[int, ...],
        static_argnames: tuple[str, ...],
        donate_argnums: tuple[int, ...],
        fullgraph: bool,
        mode: str | None,
        dynamic: bool | None,
        backend: str | Callable[..., Any],
    ) -> None:
        self.fun = fun
        self.fullgraph = fullgraph
        self.mode = mode
        self.dynamic = dynamic
        self.backend = backend
        names = _signature_names(fun)
        nums = set(static_argnums)
        kw = set(static_argnames)
        if names is not None:  # as JAX: a static argument may be passed by position or name
            nums |= {names.index(n) for n in static_argnames if n in names}
            kw |= {names[i] for i in static_argnums if 0 <= i < len(names)}
        self._static_nums = frozenset(nums)
        self._static_names = frozenset(kw)
        self._neg_static = any(i < 0 for i in nums)
        self._donate_nums = tuple(sorted(set(donate_argnums)))
        overlap = set(donate_argnums) & nums
        if overlap:
            raise ValueError(
                f"funcgrad.jit: argument {sorted(overlap)[0]} is both static and donated; "
                "only tensor arguments can be donated."
            )
        self._cache: dict[Any, _Entry] = {}
        self._fast: dict[Any, _Entry] = {}  # NOTE [jit's fast key]
        self._fast_pays = True  # until a call shows the walk costs more than it saves
        self._compile_ids: set[Any] = set()
        functools.update_wrapper(self, fun, updated=())  # not fun.__dict__: keep ours

    @property
    def compile_count(self) -> int:
        return len(self._compile_ids)

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def clear_cache(self) -> None:
        """Forgets every compiled signature (the next call compiles again).

        >>> import torch, funcgrad as fg
        >>> f = fg.jit(torch.sin, backend="aot_eager")
        >>> _ = f(torch.ones(2)); f.clear_cache(); f.cache_size
        0
        """
        self._cache.clear()
        self._fast.clear()
        self._fast_pays = True

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return functools.partial(self, obj)

    # ----------------------------------------------------------------------------------------

    def _split(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, tuple[Any, ...], dict[str, Any], tuple[Any, ...], tuple[Any, ...]]:
        """Returns ``(key, dynamic args, dynamic kwargs, static positional, static keyword)``."""
        args, kwargs, static_pos, static_kw = self._statics(args, kwargs)
        key = self._key(args, kwargs, static_pos, static_kw)[0]
        return key, args, kwargs, static_pos, static_kw

    def _statics(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...], tuple[Any, ...]]:
        """Returns ``(dynamic args, dynamic kwargs, static positional, static keyword)``."""
        static_pos: tuple[Any, ...] = ()
        static_kw: tuple[Any, ...] = ()
        if self._static_nums:
            n = len(args)
            nums = {i % n if i < 0 else i for i in self._static_nums if -n <= i < n}
            static_pos = tuple((i, args[i]) for i in sorted(nums))
            args = tuple(a for i, a in enumerate(args) if i not in nums)
        if self._static_names and kwargs:
            static_kw = tuple(sorted((k, v) for k, v in kwargs.items() if k in self._static_names))
            if static_kw:
                kwargs = {k: v for k, v in kwargs.items() if k not in self._static_names}
        return args, kwargs, static_pos, static_kw

    @staticmethod
    def _key(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        static_pos: tuple[Any, ...],
        static_kw: tuple[Any, ...],
    ) -> tuple[Any, int]:
        """The full cache key (NOTE [jit's cache]) and the number of leaves."""
        leaves: list[Any]
        leaves, treedef = optree.tree_flatten((args, kwargs), namespace=NAMESPACE)  # type: ignore[arg-type]
        # requires_grad and grad mode are in the key so that donation is checked once per entry.
        key = (treedef, leaves_key(leaves), static_pos, static_kw, _grad_enabled())
        return key, len(leaves)

    def _unhashable(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        static_pos: tuple[Any, ...],
        static_kw: tuple[Any, ...],
    ) -> None:
        name = _name(self.fun)
        for i, v in static_pos:
            if not isinstance(v, Hashable) or not _hashable(v):
                raise TypeError(
                    f"funcgrad.jit({name}): static argument {i} must be hashable (static "
                    f"values are part of the compilation cache key), got {_api_util.describe(v)}. "
                    "Pass a tuple instead of a list, a frozen dataclass instead of a mutable "
                    "object, or make the argument non-static."
                )
        for k, v in static_kw:
            if not _hashable(v):
                raise TypeError(
                    f"funcgrad.jit({name}): static argument {k!r} must be hashable (static "
                    f"values are part of the compilation cache key), got {_api_util.describe(v)}. "
                    "Pass a tuple instead of a list, a frozen dataclass instead of a mutable "
                    "object, or make the argument non-static."
                )
        paths = _api_util.leaf_paths(args, "args") + _api_util.leaf_paths(kwargs, "kwargs")
        leaves: list[Any] = optree.tree_leaves((args, kwargs), namespace=NAMESPACE)  # type: ignore[arg-type]
        for p, x in zip(paths, leaves):
            if not _hashable(x):
                raise TypeError(
                    f"funcgrad.jit({name}): the non-tensor leaf at {p} is "
                    f"{_api_util.describe(x)}, which is not hashable; non-tensor leaves are part "
                    "of the compilation cache key. Make it a tensor, a hashable value, or "
                    "register its type as a pytree node (funcgrad.tree.register_dataclass)."
                )
        raise TypeError(f"funcgrad.jit({name}): the arguments' structure is not hashable.")

    def _entry(
        self, key: Any, static_pos: tuple[Any, ...], static_kw: tuple[Any, ...], nargs: int
    ) -> _Entry:
        backend = _CountingBackend(self, self.backend, self.mode)
        # Donated positions, counted among the dynamic (non-static) arguments.
        static_idx = {i for i, _ in static_pos}
        dyn_positions = [i for i in range(nargs + len(static_pos)) if i not in static_idx]
        donated = tuple(
            dyn_positions.index(i % (nargs + len(static_pos)))
            for i in self._donate_nums
            if -(nargs + len(static_pos)) <= i < nargs + len(static_pos)
        )
        tramp = _trampoline(self.fun, static_pos, static_kw, donated)
        compiled = torch.compile(
            tramp, backend=backend, fullgraph=self.fullgraph, dynamic=self.dynamic
        )
        entry = _Entry(compiled, backend)
        self._cache[key] = entry
        return entry

    def _check_donated(self, args: tuple[Any, ...]) -> None:
        if not torch.is_grad_enabled():
            return
        n = len(args)
        for i in self._donate_nums:
            if not -n <= i < n:
                continue
            for x in optree.tree_leaves(args[i], namespace=NAMESPACE):
                if isinstance(x, torch.Tensor) and x.requires_grad:
                    raise ValueError(
                        f"funcgrad.jit({_name(self.fun)}): donated argument {i} holds a tensor "
                        "that requires grad; donation writes the outputs into it, which "
                        "autograd forbids. Detach it (x.detach()) or do not donate it."
                    )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():  # jit inside jit: inlined into the outer graph
            return self.fun(*args, **kwargs)
        if _peek_interpreter_stack() is not None:
            raise _under_transform_error(self.fun)
        dyn_args, dyn_kwargs, static_pos, static_kw = self._statics(args, kwargs)
        entry = None
        fast_key = None
        visited = 0
        if self._fast_pays:  # NOTE [jit's fast key]
            signature, visited = fast_signature((dyn_args, dyn_kwargs))
            if signature is not None:
                fast_key = (signature, static_pos, static_kw, _grad_enabled())
                try:
                    entry = self._fast.get(fast_key)
                except TypeError:  # an unhashable static value: the full key's path explains
                    fast_key = None
        if entry is None:
            key, n_leaves = self._key(dyn_args, dyn_kwargs, static_pos, static_kw)
            if self._fast_pays and (fast_key is None or visited > _FAST_NODES_PER_LEAF * n_leaves):
                self._fast_pays = False  # not plain, or nodes walked one by one: the full key
                fast_key = None
            try:
                entry = self._cache.get(key)
            except TypeError:
                self._unhashable(dyn_args, dyn_kwargs, static_pos, static_kw)
                raise
            if entry is None:
                if self._donate_nums:
                    self._check_donated(args)
                entry = self._entry(key, static_pos, static_kw, len(dyn_args))
            if fast_key is not None:
                self._fast[fast_key] = entry
        try:
            return entry.fn(dyn_args, dyn_kwargs)
        except Exception as e:
            if _dynamo_error(e):
                raise _compile_error(self.fun, e, args, kwargs) from e
            raise

    def lower(self, *args: Any, **kwargs: Any) -> Lowered:
        """Compiles ``fun`` for these arguments and returns the captured graph.

        torch.compile captures a graph by running the function, so ``lower`` runs it once on
        copies of the tensor arguments (the caller's tensors, donated ones included, are left as
        they are); a later call with the same signature and shapes does not compile again.

        >>> import torch, funcgrad as fg
        >>> f = fg.jit(lambda x: x.exp().sum(), backend="aot_eager")
        >>> lowered = f.lower(torch.ones(3))
        >>> "exp" in lowered.as_text(), f.compile_count
        (True, 1)
        """
        copies: Any = optree.tree_map(
            lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x,
            (args, kwargs),  # type: ignore[arg-type]
            namespace=NAMESPACE,
        )
        key = self._split(*copies)[0]
        self(*copies[0], **copies[1])
        return Lowered(self._cache[key].backend.graphs[-1])

    def __repr__(self) -> str:
        return f"<funcgrad.jit of {_name(self.fun)}>"


_grad_enabled: Callable[[], bool] = torch.is_grad_enabled

# The fast signature pays where its walk visits at most this many nodes per leaf: containers of
# many tensors, checked as one (NOTE [jit's fast key]).
_FAST_NODES_PER_LEAF = 0.5

#: Whether a torch.func transform (grad, vmap, jvp, ...) is active, in eager mode.
_peek_interpreter_stack: Callable[[], Any] = torch._C._functorch.peek_interpreter_stack


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def jit(
    fun: Callable[..., Any] | None = None,
    *,
    static_argnums: int | Sequence[int] = (),
    static_argnames: str | Sequence[str] = (),
    donate_argnums: int | Sequence[int] = (),
    fullgraph: bool = True,
    mode: str | None = None,
    dynamic: bool | None = None,
    backend: str | Callable[..., Any] = "inductor",
) -> Any:
    """Compiles ``fun`` with ``torch.compile``, with JAX's caching and donation semantics.

    Arguments and results are pytrees. Tensor leaves are traced; every other leaf (Python
    numbers, strings, ``None``, enums) and every static argument is part of the cache key, so
    there is one compiled graph per distinct (tree structure, non-tensor values) signature, and
    calling again with the same signature and tensor shapes never recompiles. A tensor
    hyperparameter (a learning rate as a 0-d tensor) can change freely; a Python float cannot
    without a recompilation.

    Works as ``jit(f, ...)`` and as a decorator (``@jit`` or ``@jit(static_argnums=...)``).
    Every funcgrad transform works inside (see NOTE [transforms under jit]).

    Args:
        fun: the function to compile.
        static_argnums: positions of arguments that are compile-time constants (hashable
            Python values: sizes, flags, modes); also accepted by name when passed by keyword.
        static_argnames: names of keyword arguments that are compile-time constants.
        donate_argnums: positions of arguments whose tensors the outputs may reuse, so a train
            step updates parameters and optimizer state in their own memory. After the call a
            donated tensor that received an output *is* that output (the same object, holding
            the new values); treat donated arguments as consumed and use the outputs. Donated
            tensors that matched no output (by shape, dtype and device) are left untouched.
        fullgraph: when ``True`` (the default) a graph break is an error saying where and why;
            ``False`` lets torch.compile split the function into several graphs.
        mode: torch.compile's mode (``"reduce-overhead"`` for CUDA graphs, ``"max-autotune"``).
        dynamic: torch.compile's ``dynamic`` (``None``: static shapes first, dynamic on a
            shape change).
        backend: torch.compile's backend; ``"aot_eager"`` compiles in about a second and is
            handy in tests. With ``"inductor"`` (the default), large float32 CPU matrix
            products run on oneDNN where a measurement at the first compilation finds it faster
            than torch's BLAS (AMD CPUs); the environment variable ``FUNCGRAD_CPU_MATMUL``
            (``auto``, ``onednn`` or ``torch``) overrides that.

    Returns:
        A :class:`funcgrad.Jitted` function with ``lower(*args)`` (the captured graph),
        ``compile_count``, ``cache_size`` and ``clear_cache()``.

    >>> import torch, funcgrad as fg
    >>> @fg.jit(static_argnames="power", backend="aot_eager")
    ... def f(x, power):
    ...     return {"y": x**power, "grad": fg.grad(lambda x: (x**power).sum())(x)}
    >>> f(torch.tensor([1.0, 2.0]), power=2)
    {'y': tensor([1., 4.]), 'grad': tensor([2., 4.])}
    >>> f.compile_count
    1
    """
    nums = _as_int_tuple(static_argnums, "static_argnums")
    names = _as_str_tuple(static_argnames, "static_argnames")
    donate = _as_int_tuple(donate_argnums, "donate_argnums")
    if mode is not None and not isinstance(mode, str):
        raise TypeError(f"funcgrad.jit: mode must be None or a str, got {mode!r}.")

    def wrap(f: Callable[..., Any]) -> Jitted:
        _api_util.check_callable(f, "jit")
        return Jitted(
            f,
            static_argnums=nums,
            static_argnames=names,
            donate_argnums=donate,
            fullgraph=fullgraph,
            mode=mode,
            dynamic=dynamic,
            backend=backend,
        )

    if fun is None:
        return wrap
    return wrap(fun)
