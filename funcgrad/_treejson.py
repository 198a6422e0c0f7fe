"""Pytrees to JSON and back: the structure half of a :mod:`funcgrad.io` checkpoint (private).

:class:`Encoder` turns a tree into JSON plus the tensors to store by name; :func:`validate`
checks a file's JSON, :class:`Match` compares it with a template's, :class:`Builder` rebuilds
the tree. Types are found by registered name (``NOTE [types by registered name]``).
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import optree
import torch

from . import _safetensors as _st
from . import nn, optim
from ._safetensors import CheckpointError
from .tree import NAMESPACE

__all__ = [
    "Builder",
    "Encoder",
    "Infos",
    "Match",
    "check_names",
    "leaf_infos",
    "register_type",
    "validate",
]

_T = TypeVar("_T")

# NOTE [tree JSON]
# How funcgrad.io stores a tree's structure (``NOTE [checkpoint file layout]`` in io.py).
# The tree JSON: a tensor is {"tensor": name}; None is null; str, int, bool and finite floats
# are themselves (Python's float repr round-trips exactly); other scalars are tagged:
# {"float": "nan" | "inf" | "-inf"}, {"complex": [re, im]}, {"dtype": "float32"},
# {"device": "cuda:0"}. Nodes: {"tuple": [...]}, {"list": [...]}, {"deque": [...], "maxlen": n},
# {"dict" | "ordereddict": [[key, child], ...]} in insertion order, the same with "defaultdict"
# and "factory": ref-or-null, {"namedtuple": name, "fields": [[field, child], ...]}, and nodes
# registered in the "funcgrad" optree namespace (register_dataclass): {"node": name,
# "children": [[entry, child], ...], "meta": static}, where static is the node's metadata (a
# dataclass's static fields) in this same encoding, without tensors. A class or function value
# is {"ref": name}. Tensor names are the leaf's path joined by "." ("opt.1.mu.w"), as in a
# state_dict, made unique by a "#n" suffix if two paths join the same.
#
# Complex tensors: complex64 is safetensors' C64 (read by safetensors >= 0.7; older readers
# reject the whole file). complex128 and complex32 have no safetensors dtype: they are stored
# as their real view (torch.view_as_real: F64/F16 with a trailing dimension of 2) and the leaf
# carries {"tensor": name, "dtype": "complex128"}; a plain safetensors reader sees the view.

_TORCH_DTYPES = {
    str(v).removeprefix("torch."): v for v in vars(torch).values() if isinstance(v, torch.dtype)
}
_MAPPINGS: dict[type, str] = {dict: "dict", OrderedDict: "ordereddict", defaultdict: "defaultdict"}
_SEQUENCES: dict[type, str] = {tuple: "tuple", list: "list", deque: "deque"}
_SCALAR_TAGS = ("float", "complex", "dtype", "device")
_NODE_TAGS = ("tensor", "ref", "namedtuple", "node", *_MAPPINGS.values(), *_SEQUENCES.values())

# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

# NOTE [types by registered name]
# A file names the types of its NamedTuples and registered nodes (and any class or function
# stored as a value) as strings. Loading looks each name up in an allow-list and never imports
# a module or calls getattr on one: a file can only rebuild types the program already trusts.
# The allow-list is (1) the names given to register_type (every public class and function of
# funcgrad.optim and funcgrad.nn as "funcgrad.optim:<Name>" and "funcgrad.nn:<Name>", common
# torch activations as "torch:tanh" or "torch.nn.functional:gelu"), (2) the automatic name
# "module:qualname" of every class registered as a pytree node in the "funcgrad" namespace
# (register_dataclass), which is already imported and trusted with the tree functions. Saving uses a type's registered name,
# else its automatic name. load(like=template) needs no registration: names are matched
# against the template's types.

_BY_NAME: dict[str, Any] = {}
_NAME_OF: dict[Any, str] = {}


def _auto_name(obj: Any) -> str | None:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}:{qualname}"
    return None


def register_type(cls: _T, name: str | None = None) -> _T:
    """Allows :func:`load` to rebuild ``cls`` from a file that names it.

    Needed for NamedTuple types (and for classes or functions stored as values, such as a
    dataclass's static ``activation`` field); classes registered with
    :func:`funcgrad.tree.register_dataclass` and every :mod:`funcgrad.optim` state are known
    already. Names are only looked up, never imported, so registering is what makes a type
    loadable. A class may have several names (the first is the one :func:`save` writes), for
    example to keep old files loadable after a class moves.

    Args:
        cls: the NamedTuple type, registered dataclass, or other named class or function.
        name: the name to store; default ``"module:qualname"``.

    Returns:
        ``cls``, so that it can decorate a class definition.

    >>> import os, tempfile
    >>> from typing import NamedTuple
    >>> from funcgrad import io
    >>> @io.register_type
    ... class Stats(NamedTuple):
    ...     mean: float
    ...     count: int
    >>> path = os.path.join(tempfile.mkdtemp(), "stats.safetensors")
    >>> io.save(path, Stats(0.5, 3))
    >>> io.load(path)
    Stats(mean=0.5, count=3)
    """
    if name is None:
        name = _auto_name(cls)
        if name is None:
            raise TypeError(
                f"funcgrad.io.register_type: {cls!r} has no __module__ and __qualname__; "
                "pass name= explicitly."
            )
    if not isinstance(name, str) or not name:
        raise TypeError(f"funcgrad.io.register_type: name must be a non-empty str, got {name!r}.")
    old = _BY_NAME.get(name)
    if old is not None and old is not cls and _auto_name(old) != _auto_name(cls):
        raise ValueError(
            f"funcgrad.io.register_type: the name {name!r} is already registered for {old!r}; "
            "choose another name."
        )
    _BY_NAME[name] = cls
    if old is not None or cls not in _NAME_OF:  # a reloaded class takes over its name
        _NAME_OF[cls] = name
    return cls


# funcgrad's public classes and functions (optimizer states, layers, activations) under their
# public names, which stay valid when a private module is split or renamed.
for _module in (optim, nn):
    for _name in _module.__all__:
        _obj = getattr(_module, _name)
        if isinstance(_obj, type) or inspect.isfunction(_obj):
            register_type(_obj, f"{_module.__name__}:{_name}")
# Builtin types (defaultdict factories) and the activations most often stored in static fields.
for _obj in (bool, bytes, complex, dict, float, frozenset, int, list, set, str, tuple):
    register_type(_obj)
for _name in ("relu", "sigmoid", "tanh", "exp", "abs", "sin", "cos", "softmax", "log_softmax"):
    register_type(getattr(torch, _name), f"torch:{_name}")
_FUNCTIONAL = "elu gelu glu hardswish leaky_relu logsigmoid mish relu6 selu silu softplus softsign"
for _name in _FUNCTIONAL.split():
    register_type(getattr(torch.nn.functional, _name), f"torch.nn.functional:{_name}")


def _name_of(obj: Any) -> str | None:
    try:
        return _NAME_OF.get(obj) or _auto_name(obj)
    except TypeError:  # unhashable
        return _auto_name(obj)


def _lookup(name: str, extra: Mapping[str, Any]) -> Any:
    if name in extra:
        return extra[name]
    if name in _BY_NAME:
        return _BY_NAME[name]
    registry = cast(Any, optree.register_pytree_node).get(namespace=NAMESPACE)
    for cls, entry in registry.items():
        if entry.namespace == NAMESPACE and _auto_name(cls) == name:
            return cls
    return None


# --------------------------------------------------------------------------------------------
# Encoding a tree
# --------------------------------------------------------------------------------------------


def _encode_scalar(x: Any) -> Any:
    """The JSON of a scalar leaf, or ``NotImplemented`` for other values."""
    t = type(x)
    if t is float:
        return x if math.isfinite(x) else {"float": repr(x)}
    if t is bool or t is int or t is str:
        return x
    if t is complex:
        return {"complex": [_encode_scalar(x.real), _encode_scalar(x.imag)]}
    if t is torch.dtype:
        return {"dtype": str(x).removeprefix("torch.")}
    if t is torch.device:
        return {"device": str(x)}
    return NotImplemented


def _tensor_identity(x: torch.Tensor) -> Any:
    # NOTE [shared tensors]: a tensor that appears more than once in a tree (the same object, or
    # the same view of one storage: tied weights) is stored once and comes back as one tensor
    # object at every place it appeared. Other tensors that overlap in memory (different views
    # of one storage) are stored separately, each as its own values, and come back independent.
    if x.numel() == 0 or x.layout != torch.strided:
        return ("object", id(x))
    try:
        ptr = x.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (wrappers)
        return ("object", id(x))
    layout = (x.storage_offset(), x.shape, x.stride(), x.dtype, x.is_conj(), x.is_neg())
    return (x.device, ptr, *layout)


class Encoder:
    """Turns a tree into JSON, collecting its tensors under unique names (``tensors``)."""

    def __init__(self, api: str, *, template: bool = False):
        self.api, self.template = api, template
        self.tensors: dict[str, torch.Tensor] = {}
        self.refs: dict[str, Any] = {}  # name -> object, for matching a template
        self.paths: dict[str, str] = {}  # tensor name -> path of its first leaf
        self._shared: dict[Any, str] = {}

    def _fail(self, path: str, what: str, fix: str) -> TypeError:
        return TypeError(f"{self.api}: cannot store {what} at {path}. {fix}")

    def _key(self, parts: tuple[str, ...]) -> str:
        base = key = ".".join(parts) or "tensor"
        n = 1
        while key in self.tensors or key == "__metadata__":
            key, n = f"{base}#{n}", n + 1
        return key

    def _ref(self, obj: Any, path: str) -> dict[str, str]:
        name = _name_of(obj)
        if name is None:
            raise self._fail(path, f"{obj!r}", "Only named classes and functions can be stored.")
        self.refs[name] = obj
        return {"ref": name}

    def _tensor(self, x: torch.Tensor, path: str, parts: tuple[str, ...]) -> dict[str, str]:
        no_data = x.device.type == "meta" and not self.template  # meta templates are fine
        if x.layout != torch.strided or x.is_quantized or no_data:
            raise self._fail(
                path,
                f"a {x.layout} {x.dtype} tensor on {x.device}",
                "Only dense tensors with data can be saved; convert it (x.to_dense(), "
                "x.dequantize()) first.",
            )
        node = {"tensor": ""}
        if x.dtype not in _st.DTYPE_NAMES:
            if not x.is_complex():
                known = ", ".join(sorted(str(d).removeprefix("torch.") for d in _st.DTYPE_NAMES))
                raise self._fail(
                    path,
                    f"a tensor of dtype {x.dtype}",
                    f"safetensors holds {known} (and funcgrad adds complex128 and complex32).",
                )
            node["dtype"] = str(x.dtype).removeprefix("torch.")
        # A template's tensors are never merged: each leaf keeps its own name.
        ident = ("object", id(x)) if self.template else _tensor_identity(x)
        key = self._shared.get(ident)
        if key is None:
            key = self._shared[ident] = self._key(parts)
            self.paths[key] = path
            self.tensors[key] = torch.view_as_real(x.resolve_conj()) if "dtype" in node else x
        node["tensor"] = key
        return node

    def encode(self, x: Any, path: str, parts: tuple[str, ...] = (), static: bool = False) -> Any:
        """The JSON of ``x`` found at ``path`` (static: a node's metadata, without tensors)."""
        if isinstance(x, torch.Tensor):
            if static:
                raise self._fail(path, "a tensor in a static field", "Make the field data.")
            return self._tensor(x, path, parts)
        if x is None:
            return None
        scalar = _encode_scalar(x)
        if scalar is not NotImplemented:
            return scalar
        t = type(x)
        enc = self.encode
        if t in _SEQUENCES:
            out: dict[str, Any] = {
                _SEQUENCES[t]: [
                    enc(v, f"{path}[{i}]", (*parts, str(i)), static) for i, v in enumerate(x)
                ]
            }
            if t is deque:
                out["maxlen"] = x.maxlen
            return out
        if t in _MAPPINGS:
            items = []
            for k, v in x.items():
                key = _encode_scalar(k)
                if k is None:
                    key = None
                elif key is NotImplemented:
                    where = f"{path}[{k!r}]"
                    raise self._fail(where, f"the dict key {k!r}", "Use str or int keys.")
                items.append([key, enc(v, f"{path}[{k!r}]", (*parts, str(k)), static)])
            out = {_MAPPINGS[t]: items}
            if t is defaultdict:
                factory = x.default_factory
                out["factory"] = None if factory is None else self._ref(factory, path)
            return out
        if optree.is_namedtuple_class(t):
            fields = [[f, enc(v, f"{path}.{f}", (*parts, f), static)] for f, v in zip(t._fields, x)]
            return {"namedtuple": self._ref(t, path)["ref"], "fields": fields}
        entry = None if static else optree.register_pytree_node.get(t, namespace=NAMESPACE)
        if entry is not None and not optree.is_structseq_class(t):
            children, meta, entries, _ = optree.tree_flatten_one_level(x, namespace=NAMESPACE)
            names = [e if type(e) in (str, int) else i for i, e in enumerate(entries)]
            encoded = [
                [e, enc(v, f"{path}.{e}" if type(e) is str else f"{path}[{e}]", (*parts, str(e)))]
                for e, v in zip(names, children)
            ]
            static_meta = enc(meta, f"{path} (static fields)", parts, True)
            return {"node": self._ref(t, path)["ref"], "children": encoded, "meta": static_meta}
        if isinstance(x, type) or (callable(x) and _auto_name(x) is not None):
            return self._ref(x, path)
        raise self._fail(
            path,
            f"a value of type {t.__qualname__} ({x!r:.60})",
            "Leaves must be tensors, None, bool, int, float, complex, str, torch.dtype or "
            "torch.device (convert NumPy values with .item() or torch.as_tensor); nodes must be "
            "built-in containers, NamedTuples or registered dataclasses.",
        )


# --------------------------------------------------------------------------------------------
# Reading a tree's JSON
# --------------------------------------------------------------------------------------------

_COMPLEX_VIEWS = {"complex128": torch.float64, "complex32": torch.float16}
Infos = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def _tag(s: Any) -> str:
    """The kind of a JSON node: "none", "scalar", or a node tag ("tensor", "dict", ...)."""
    if s is None:
        return "none"
    if isinstance(s, str | int | float):  # bool is an int
        return "scalar"
    if isinstance(s, dict):
        for tag in _NODE_TAGS:  # "tensor" first: a complex leaf has a "dtype" entry too
            if tag in s:
                return tag
        for tag in _SCALAR_TAGS:
            if tag in s:
                return "scalar"
    raise CheckpointError(f"unrecognised node {s!r:.80}")


def _decode_scalar(s: Any) -> Any:
    if not isinstance(s, dict):
        return s
    if "float" in s and s["float"] in ("nan", "inf", "-inf"):
        return float(s["float"])
    if "complex" in s:
        re_, im = (_decode_scalar(v) for v in s["complex"])
        if type(re_) is float and type(im) is float:
            return complex(re_, im)
    if "dtype" in s and s["dtype"] in _TORCH_DTYPES:
        return _TORCH_DTYPES[s["dtype"]]
    if "device" in s and isinstance(s["device"], str):
        return torch.device(s["device"])
    raise CheckpointError(f"malformed scalar {s!r:.80}")


def _children(s: Any, tag: str) -> list[tuple[str, Any]]:
    """``(path suffix, child)`` pairs of a node."""
    if tag in _SEQUENCES.values():
        return [(f"[{i}]", c) for i, c in enumerate(s[tag])]
    if tag in _MAPPINGS.values():
        return [(f"[{_decode_scalar(k)!r}]", c) for k, c in s[tag]]
    if tag == "namedtuple":
        return [(f".{f}", c) for f, c in s["fields"]]
    if tag == "node":
        return [(f".{e}" if isinstance(e, str) else f"[{e}]", c) for e, c in s["children"]]
    return []


def walk(s: Any, path: str, visit: Callable[[Any, str, str], None]) -> None:
    """Calls ``visit(node, tag, path)`` on every node, static fields included."""
    tag = _tag(s)
    visit(s, tag, path)
    for suffix, child in _children(s, tag):
        walk(child, path + suffix, visit)
    if tag == "node":
        walk(s["meta"], f"{path} (static fields)", visit)


def leaf_infos(structure: Any, raw: Infos) -> Infos:
    """Dtype and shape of each tensor as in the tree (complex leaves, ``NOTE [checkpoint file
    layout]``), from the dtypes and shapes as stored."""
    out = dict(raw)

    def visit(s: Any, tag: str, path: str) -> None:
        if tag == "tensor" and "dtype" in s:
            dtype, shape = raw[s["tensor"]]
            if _COMPLEX_VIEWS.get(s["dtype"]) != dtype or shape[-1:] != (2,):
                raise CheckpointError(f"{s['dtype']} tensor stored as {dtype} {shape}")
            out[s["tensor"]] = (_TORCH_DTYPES[s["dtype"]], shape[:-1])

    walk(structure, "tree", visit)
    return out


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _describe(s: Any, infos: Infos) -> str:
    tag = _tag(s)
    if tag == "tensor":
        dtype, shape = infos[s["tensor"]]
        return f"{_a(str(dtype).removeprefix('torch.'))} tensor of shape {shape}"
    if tag == "scalar":
        value = _decode_scalar(s)
        return f"the {type(value).__name__} {value!r}"
    if tag in ("namedtuple", "node"):
        return _a(s[tag])
    if tag == "ref":
        return f"the object {s[tag]}"
    return "None" if tag == "none" else _a(tag)


def _show(s: Any) -> str:
    """A static value's JSON as Python-like text, for messages."""
    tag = _tag(s)
    if tag in ("none", "scalar"):
        return repr(_decode_scalar(s))
    if tag == "ref":
        return str(s["ref"])
    kids = [_show(c) for _, c in _children(s, tag)]
    if tag in _MAPPINGS.values():
        pairs = [f"{_decode_scalar(k)!r}: {v}" for (k, _), v in zip(s[tag], kids)]
        return "{" + ", ".join(pairs) + "}"
    if tag == "tuple":
        return f"({', '.join(kids)}{',' * (len(kids) == 1)})"
    return f"{s[tag] if tag in ('namedtuple', 'node') else ''}[{', '.join(kids)}]"


class Match:
    """Compares a file's tree JSON with a template's, collecting every difference."""

    def __init__(self, file: Infos, template: Infos, devices: Mapping[str, torch.device]):
        self.file, self.template, self.template_devices = file, template, devices
        self.devices: dict[str, torch.device] = {}  # file tensor name -> template's device
        self.errors: list[str] = []

    def error(self, path: str, stored: Any, tmpl: Any) -> None:
        got, want = _describe(stored, self.file), _describe(tmpl, self.template)
        self.errors.append(f"  {path}: {want} in like, {got} in the file")

    def differ(self, path: str, what: str, want: Any, got: Any) -> None:
        self.errors.append(f"  {path}: {what}{want} in like, {got} in the file")

    def diff(self, stored: Any, tmpl: Any, path: str) -> None:
        tag = _tag(stored)
        if tag != _tag(tmpl) or (tag in ("namedtuple", "node", "ref") and stored[tag] != tmpl[tag]):
            return self.error(path, stored, tmpl)
        if tag == "tensor":
            if self.file[stored["tensor"]] != self.template[tmpl["tensor"]]:
                self.error(path, stored, tmpl)
            self.devices.setdefault(stored["tensor"], self.template_devices[tmpl["tensor"]])
        elif tag == "scalar":
            if type(_decode_scalar(stored)) is not type(_decode_scalar(tmpl)):
                self.error(path, stored, tmpl)
        elif tag == "deque" and stored["maxlen"] != tmpl["maxlen"]:
            self.differ(path, "maxlen ", tmpl["maxlen"], stored["maxlen"])
        elif tag == "defaultdict" and stored["factory"] != tmpl["factory"]:
            self.differ(path, "default_factory ", _show(tmpl["factory"]), _show(stored["factory"]))
        elif tag == "node" and stored["meta"] != tmpl["meta"]:
            self.differ(path, "static fields ", _show(tmpl["meta"]), _show(stored["meta"]))
        got, want = dict(_children(stored, tag)), dict(_children(tmpl, tag))
        if tag in _SEQUENCES.values() and len(got) != len(want):
            self.differ(path, f"{_a(tag)} of length ", len(want), f"of length {len(got)}")
        elif got.keys() != want.keys():
            missing = ", ".join(k for k in want if k not in got) or "none"
            extra = ", ".join(k for k in got if k not in want) or "none"
            self.errors.append(
                f"  {path}: entries missing in the file: {missing}; entries only in the file: "
                f"{extra}"
            )
        for k, child in got.items():
            if k in want:
                self.diff(child, want[k], path + k)
        return None

    def diff_plain(self, encoder: Encoder) -> None:
        """A plain safetensors file: each template tensor is the file's tensor of its name."""
        for key, (dtype, shape) in self.template.items():
            if key not in self.file:
                self.errors.append(f"  {encoder.paths[key]}: no tensor named {key!r} in the file")
            elif self.file[key] != (dtype, shape):
                got = self.file[key]
                self.errors.append(
                    f"  {encoder.paths[key]}: {_a(str(dtype)[6:])} tensor of shape {shape} in "
                    f"like, {_a(str(got[0])[6:])} tensor of shape {got[1]} in the file ({key!r})"
                )
            self.devices[key] = self.template_devices[key]
        extra = sorted(set(self.file) - set(self.template))
        if extra:
            self.errors.append(f"  tensors in the file but not in like: {extra}")


class Builder:
    """Rebuilds the tree from its (validated) JSON, the tensors read and a name lookup."""

    def __init__(self, refs: Mapping[str, Any], devices: Mapping[str, torch.device]):
        self.refs, self.devices = refs, devices
        self.tensors: dict[str, torch.Tensor] = {}

    def fill(
        self, structure: Any, raw: Mapping[str, torch.Tensor], device: torch.device | str | None
    ) -> None:
        """The tensors of the tree's leaves from those read: complex leaves viewed back as
        complex, each moved to ``device`` (default: the template's device, or stay)."""

        def visit(s: Any, tag: str, path: str) -> None:
            key = s["tensor"] if tag == "tensor" else None
            if key is None or key in self.tensors:
                return
            x = torch.view_as_complex(raw[key]) if "dtype" in s else raw[key]
            where = device if device is not None else self.devices.get(key)
            self.tensors[key] = x if where is None else x.to(where)

        walk(structure, "tree", visit)

    def ref(self, name: str) -> Any:
        obj = _lookup(name, self.refs)
        if obj is None:  # unknown names were reported before reading the data
            raise CheckpointError(f"unknown name {name!r}")
        return obj

    def build(self, s: Any, path: str) -> Any:
        tag = _tag(s)
        if tag in ("none", "scalar"):
            return _decode_scalar(s)
        if tag == "tensor":
            return self.tensors[s["tensor"]]
        if tag == "ref":
            return self.ref(s["ref"])
        kids = [self.build(c, path + k) for k, c in _children(s, tag)]
        if tag in _SEQUENCES.values():
            return {"tuple": tuple, "list": list}.get(tag, lambda k: deque(k, s["maxlen"]))(kids)
        if tag in _MAPPINGS.values():
            pairs = [(_decode_scalar(k), v) for (k, _), v in zip(s[tag], kids)]
            if tag == "defaultdict":
                factory = s["factory"] and self.ref(s["factory"]["ref"])
                return defaultdict(factory, pairs)
            return OrderedDict(pairs) if tag == "ordereddict" else dict(pairs)
        cls = self.ref(s[tag])
        if tag == "namedtuple":
            fields = [f for f, _ in s["fields"]]
            if not optree.is_namedtuple_class(cls) or list(cls._fields) != fields:
                raise CheckpointError(
                    f"at {path} the file has a NamedTuple {s[tag]} with fields {fields}, but "
                    f"the type registered under that name is {cls!r}"
                )
            return cls(*kids)
        entry = optree.register_pytree_node.get(cls, namespace=NAMESPACE)
        if entry is None:
            raise CheckpointError(f"at {path}, {cls!r} is not a registered pytree node type")
        obj = entry.unflatten_func(self.build(s["meta"], path), kids)
        _, _, entries, _ = optree.tree_flatten_one_level(cast(Any, obj), namespace=NAMESPACE)
        stored = [e for e, _ in s["children"]]
        if [e if type(e) in (str, int) else i for i, e in enumerate(entries)] != stored:
            raise CheckpointError(
                f"at {path} the file has {s[tag]} with data fields {stored}, but the "
                f"registered type has {list(entries)}"
            )
        return obj


def validate(structure: Any, raw: Infos) -> None:
    """Checks that a file's tree JSON is well formed and refers only to its tensors ``raw``.

    Raises :class:`CheckpointError`, ``ValueError``, ``TypeError``, ``KeyError`` or
    ``IndexError`` otherwise (the caller reports them all as a malformed file).
    """

    def check(s: Any, tag: str, where: str) -> None:
        names = [s[tag]] if tag in ("namedtuple", "node", "ref") else []
        if tag == "defaultdict" and s["factory"] is not None:
            names.append(s["factory"]["ref"])
        ok = all(isinstance(n, str) for n in names)
        if tag == "tensor":
            ok = isinstance(s["tensor"], str) and s["tensor"] in raw
        elif tag == "deque":
            ok = s["maxlen"] is None or (type(s["maxlen"]) is int and s["maxlen"] >= 0)
        elif tag == "scalar":
            _decode_scalar(s)
        if not ok:
            raise CheckpointError(f"malformed node at {where}: {s!r:.80}")

    walk(structure, "tree", check)
    leaf_infos(structure, raw)


def check_names(path: str, structure: Any) -> None:
    """Raises if a (validated) tree JSON names a type or function that is not registered."""
    unknown: dict[str, str] = {}

    def visit(s: Any, tag: str, where: str) -> None:
        names = [s[tag]] if tag in ("namedtuple", "node", "ref") else []
        if tag == "defaultdict" and s["factory"] is not None:
            names.append(s["factory"]["ref"])
        for name in names:
            if _lookup(name, {}) is None:
                unknown.setdefault(name, where)

    walk(structure, "tree", visit)
    if unknown:
        listed = ", ".join(f"{n!r} (at {p})" for n, p in unknown.items())
        raise CheckpointError(
            f"funcgrad.io.load: {path} names types that are not registered: {listed}. Loading "
            "never imports a module named by a file. If you trust the file, import each type "
            f"and register it (funcgrad.io.register_type(cls, name={next(iter(unknown))!r})), "
            "or pass like= a template tree."
        )
