"""Save and load pytrees as safetensors files; atomic, checksummed, and safe to load.

A checkpoint is one `safetensors <https://github.com/huggingface/safetensors>`_ file: the
tensors of the tree, plus its structure and non-tensor leaves as JSON in the file's metadata.
Loading never unpickles or imports anything: node types are looked up by name among the types
registered with :func:`register_type` (see ``NOTE [types by registered name]``).

>>> import os, tempfile, torch
>>> from funcgrad import io, optim
>>> params = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
>>> state = {"params": params, "opt": optim.adam(1e-3).init(params), "step": 7}
>>> path = os.path.join(tempfile.mkdtemp(), "run.safetensors")
>>> io.save(path, state)
>>> restored = io.load(path)
>>> restored["step"], type(restored["opt"][1]).__name__
(7, 'ScaleByAdamState')
>>> io.load(path, like=state)["params"]["w"].shape
torch.Size([2, 3])
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import re
import secrets
from collections.abc import Mapping
from typing import Any

import torch

from . import _safetensors as _st
from ._safetensors import CheckpointError as CheckpointError
from ._treejson import Builder, Encoder, Infos, Match, check_names, leaf_infos, validate
from ._treejson import register_type as register_type
from ._typing import PyTree

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "load",
    "read_metadata",
    "register_type",
    "save",
]

# NOTE [checkpoint file layout]
# A checkpoint is a valid safetensors file, so any safetensors reader opens it. Its
# ``__metadata__`` holds the caller's metadata and three reserved keys:
#   "funcgrad.format":   "1", the version of this layout;
#   "funcgrad.tree":     the tree as JSON (``NOTE [tree JSON]`` in _treejson.py);
#   "funcgrad.checksum": "crc32:<header>:<data>", CRC-32s (8 hex digits) of a canonical form of
#                        the tensor index and all other metadata, and of the data section.
# CRC-32 rather than SHA-256: the checksum guards against accidental damage (an attacker can
# rewrite any checksum), and zlib's CRC-32 runs at ~6 GB/s against ~1.8 GB/s for SHA-256 with
# SHA-NI here, several times less without: it must not dominate the save (benchmarks/io.py).
# The header checksum is verified before the structure is interpreted, so a damaged file is
# reported as damaged, never as a structure mismatch; the data checksum after reading.

_FORMAT_KEY, _TREE_KEY, _CHECKSUM_KEY = "funcgrad.format", "funcgrad.tree", "funcgrad.checksum"
_FORMAT = "1"
_RESERVED = "funcgrad."
_CHECKSUM = re.compile(r"crc32:([0-9a-f]{8}):([0-9a-f]{8})")

# --------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------


def _fsync_directory(directory: str) -> None:
    if os.name != "posix":  # pragma: no cover - Windows cannot open a directory
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(
    path: str | os.PathLike[str], tree: PyTree, *, metadata: Mapping[str, str] | None = None
) -> None:
    """Saves a pytree to a safetensors file, atomically.

    Tensors (on any device; any dtype safetensors holds, plus complex128 and complex32) go
    into the file; the structure and the other leaves (None, bool, int, float including NaN
    and infinities, complex, str, torch.dtype, torch.device) go as JSON into its metadata
    (``NOTE [checkpoint file layout]``). A tensor that appears more than once is stored once
    (``NOTE [shared tensors]``). Tensors come back as plain tensors: ``requires_grad`` and
    subclasses such as ``nn.Parameter`` are not kept.

    The file is written to a temporary file in the same directory, flushed and fsynced, then
    renamed over ``path``, and the directory fsynced: a crash at any moment leaves either the
    old file or the complete new one at ``path`` (and at worst a hidden ``.<name>.<hex>.tmp``
    file, which :class:`CheckpointManager` cleans up).

    Args:
        path: the file to write (conventionally ``*.safetensors``).
        tree: the pytree.
        metadata: strings to store in the file's ``__metadata__``, read back with
            :func:`read_metadata`; keys starting with ``"funcgrad."`` are reserved.

    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "tree.safetensors")
    >>> save(path, {"x": torch.arange(3), "note": "hi", "lr": float("inf")})
    >>> load(path)
    {'x': tensor([0, 1, 2]), 'note': 'hi', 'lr': inf}
    """
    user = dict(metadata or {})
    for k, v in user.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(
                "funcgrad.io.save: metadata must map str to str (safetensors' rule), got "
                f"{k!r}: {v!r}. Store other values in the tree itself."
            )
        if k.startswith(_RESERVED):
            raise ValueError(
                f"funcgrad.io.save: the metadata key {k!r} is reserved (prefix 'funcgrad.')."
            )
    encoder = Encoder("funcgrad.io.save")
    structure = encoder.encode(tree, "tree")
    text = json.dumps(structure, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    meta = {**user, _FORMAT_KEY: _FORMAT, _TREE_KEY: text}
    # NOTE [atomic writes]: temporary file in the target directory (os.replace is atomic only
    # within one file system), fsync before the rename (else the rename can reach the disk
    # before the data), fsync the directory after it (else the rename itself can be lost).
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            _st.write(f, encoder.tensors, meta, _CHECKSUM_KEY)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def _infos(header: _st.Header) -> Infos:
    return {k: (i.torch_dtype, i.shape) for k, i in header.tensors.items()}


_PLAIN: Any = object()  # the structure of a plain safetensors file (JSON null is a tree: None)


def _structure(path: str, header: _st.Header) -> Any:
    """The validated tree JSON of a funcgrad file, or ``_PLAIN`` for a plain safetensors file."""
    ours = {k: v for k, v in header.metadata.items() if k.startswith(_RESERVED)}
    if not ours:
        return _PLAIN
    expected = {_FORMAT_KEY, _TREE_KEY, _CHECKSUM_KEY}
    version = ours.get(_FORMAT_KEY, "")
    if version != _FORMAT and version.isdigit():
        raise CheckpointError(
            f"funcgrad.io.load: {path} has checkpoint format {version}; this funcgrad reads "
            f"format {_FORMAT}. Upgrade funcgrad to load it."
        )
    checksum = _CHECKSUM.fullmatch(ours.get(_CHECKSUM_KEY, ""))
    if set(ours) != expected or checksum is None:
        raise CheckpointError(
            f"funcgrad.io.load: {path} is corrupted: its funcgrad metadata has the keys "
            f"{sorted(ours)}, expected {sorted(expected)} with a valid checksum."
        )
    others = {k: v for k, v in header.metadata.items() if k != _CHECKSUM_KEY}
    if _st.header_checksum(header.tensors, others) != int(checksum[1], 16):
        raise CheckpointError(
            f"funcgrad.io.load: {path} is corrupted: the checksum of its header does not "
            "match. Restore the file from a good copy, or load an older checkpoint."
        )
    try:
        structure = json.loads(ours[_TREE_KEY])
        validate(structure, _infos(header))
    except (CheckpointError, ValueError, TypeError, KeyError, IndexError, RecursionError) as e:
        raise CheckpointError(
            f"funcgrad.io.load: {path} has a malformed tree structure ({e})."
        ) from None
    return structure


def _match_like(path: str, structure: Any, raw: Infos, like: PyTree) -> tuple[Any, Builder]:
    """Checks the file against the template; returns the structure to build and a builder
    whose tensors are still to be filled in."""
    encoder = Encoder("funcgrad.io.load(like=...)", template=True)
    template = encoder.encode(like, "tree")
    devices = {k: x.device for k, x in encoder.tensors.items()}
    stored = {k: (x.dtype, tuple(x.shape)) for k, x in encoder.tensors.items()}
    if structure is _PLAIN:  # the template names the tensors
        match = Match(raw, stored, devices)
        match.diff_plain(encoder)
        structure = template
    else:
        match = Match(leaf_infos(structure, raw), leaf_infos(template, stored), devices)
        match.diff(structure, template, "tree")
    if match.errors:
        n = len(match.errors)
        raise ValueError(
            f"funcgrad.io.load: {path} does not match like= at {n} place{'s' * (n > 1)}:\n"
            + "\n".join(match.errors)
            + "\nPass like= a template of the saved tree, or load without like= to see what "
            "the file holds."
        )
    return structure, Builder(encoder.refs, match.devices)


def load(
    path: str | os.PathLike[str],
    *,
    like: PyTree = None,
    device: torch.device | str | None = None,
) -> PyTree:
    """Loads a pytree saved by :func:`save`, or the tensors of any safetensors file.

    A file written by another tool (a Hugging Face model's weights) has no funcgrad metadata:
    it loads as a flat ``dict[str, Tensor]`` sorted by name or, with ``like``, into the
    template's structure, each template tensor taking the file's tensor named by its path
    joined with ``"."`` (``{"h": [{"weight": w}]}`` takes ``"h.0.weight"``).

    Both checksums of a funcgrad file are verified; a truncated, corrupted or foreign file
    raises :class:`CheckpointError` naming the file. Nothing in the file is executed or
    imported: types are looked up among registered names (``NOTE [types by registered name]``).

    Args:
        path: the file.
        like: a template tree. The file must match its structure (node types, dict keys,
            NamedTuple and dataclass fields, static fields), its tensors' shapes and dtypes,
            and its other leaves' types; every difference is reported at once, by path, in a
            ``ValueError``. Types need no registration when ``like`` is given.
        device: where to put the tensors. Default: the device of the template's tensor with
            ``like``, else the CPU.

    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "p.safetensors")
    >>> save(path, {"w": torch.ones(2), "step": 3})
    >>> load(path, like={"w": torch.zeros(2), "step": 0})
    {'w': tensor([1., 1.]), 'step': 3}
    >>> load(path, like={"w": torch.zeros(3), "step": 0.0})
    Traceback (most recent call last):
    ...
    ValueError: funcgrad.io.load: ... does not match like= at 2 places:
      tree['w']: a float32 tensor of shape (3,) in like, a float32 tensor of shape (2,) in the file
      tree['step']: the float 0.0 in like, the int 3 in the file
    Pass like= a template of the saved tree, or load without like= to see what the file holds.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        header = _st.read_header(f, path)
        structure = _structure(path, header)
        if like is not None:
            structure, builder = _match_like(path, structure, _infos(header), like)
        elif structure is _PLAIN:
            tensors, _ = _st.read_tensors(f, path, header)
            if device is not None:
                tensors = {k: x.to(device) for k, x in tensors.items()}
            return {k: tensors[k] for k in sorted(tensors)}
        else:
            check_names(path, structure)
            builder = Builder({}, {})
        tensors, crc = _st.read_tensors(f, path, header)
    checksum = _CHECKSUM.fullmatch(header.metadata.get(_CHECKSUM_KEY, ""))
    if checksum is not None and crc != int(checksum[2], 16):
        raise CheckpointError(
            f"funcgrad.io.load: {path} is corrupted: the checksum of its tensor data does not "
            f"match (stored {checksum[2]}, computed {crc:08x}). Restore the file from a good "
            "copy, or load an older checkpoint."
        )
    builder.fill(structure, tensors, device)
    try:
        return builder.build(structure, "tree")
    except (CheckpointError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"funcgrad.io.load: cannot rebuild the tree of {path}: {e}") from e


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata strings stored with :func:`save` (or by any safetensors writer).

    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save(path, [torch.zeros(1)], metadata={"run": "baseline", "commit": "abc123"})
    >>> read_metadata(path)
    {'run': 'baseline', 'commit': 'abc123'}
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        header = _st.read_header(f, path)
    _structure(path, header)  # verifies a funcgrad file's header checksum
    return {k: v for k, v in header.metadata.items() if not k.startswith(_RESERVED)}


# --------------------------------------------------------------------------------------------
# CheckpointManager
# --------------------------------------------------------------------------------------------

_CKPT = re.compile(r"ckpt_(\d+)\.safetensors")
_CKPT_TMP = re.compile(r"\.ckpt_\d+\.safetensors\.[0-9a-f]+\.tmp")


class CheckpointManager:
    """Numbered checkpoints of a training run in one directory, the newest ``keep`` kept.

    Step ``n`` is saved (atomically, by :func:`save`) as ``ckpt_<n, 9 digits>.safetensors``.
    Temporary files left by a crash in the middle of a save are ignored and deleted when the
    manager is created and before each save; one process at a time should save into a
    directory.

    Args:
        directory: created if missing.
        keep: how many checkpoints to keep (the highest steps); ``None`` keeps all.
        every: save only at steps that are multiples of ``every`` (unless ``force=True``).

    >>> import tempfile, torch
    >>> manager = CheckpointManager(tempfile.mkdtemp(), keep=2, every=10)
    >>> for step in range(35):
    ...     saved = manager.save(step, {"w": torch.full((2,), float(step)), "step": step})
    >>> manager.all_steps()
    [20, 30]
    >>> manager.restore()["w"]
    tensor([30., 30.])
    >>> manager.save(34, {"w": torch.zeros(2), "step": 34}, force=True)
    True
    >>> manager.latest_step()
    34
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, keep: int | None = 3, every: int | None = None
    ):
        for name, value in (("keep", keep), ("every", every)):
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(
                    f"funcgrad.io.CheckpointManager: {name} must be a positive int or None, "
                    f"got {value!r}."
                )
        self.directory = os.fspath(directory)
        self.keep, self.every = keep, every
        os.makedirs(self.directory, exist_ok=True)
        self._remove_temporaries()

    def __repr__(self) -> str:
        return f"CheckpointManager({self.directory!r}, keep={self.keep}, every={self.every})"

    def _path(self, step: int) -> str:
        return os.path.join(self.directory, f"ckpt_{step:09d}.safetensors")

    def _remove_temporaries(self) -> None:
        for name in os.listdir(self.directory):
            if _CKPT_TMP.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.directory, name))

    def all_steps(self) -> list[int]:
        """The steps that have a checkpoint, in increasing order."""
        found = (_CKPT.fullmatch(name) for name in os.listdir(self.directory))
        return sorted(int(m[1]) for m in found if m is not None)

    def latest_step(self) -> int | None:
        """The highest step with a checkpoint, or ``None`` if there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, tree: PyTree, *, force: bool = False) -> bool:
        """Saves ``tree`` as step ``step`` (replacing that step's checkpoint if it exists),
        then deletes the oldest checkpoints beyond ``keep``.

        Returns:
            whether it saved: ``False`` when ``every`` is set, ``step`` is not a multiple
            of it and ``force`` is false.
        """
        try:
            step = operator.index(step)
        except TypeError:
            raise TypeError(
                f"funcgrad.io.CheckpointManager.save: step must be an int, got {step!r}."
            ) from None
        if step < 0:
            raise ValueError(f"funcgrad.io.CheckpointManager.save: step must be >= 0, got {step}.")
        if self.every is not None and step % self.every and not force:
            return False
        self._remove_temporaries()
        save(self._path(step), tree)
        if self.keep is not None:
            for old in self.all_steps()[: -self.keep]:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self._path(old))
        return True

    def restore(
        self,
        step: int | None = None,
        *,
        like: PyTree = None,
        device: torch.device | str | None = None,
    ) -> PyTree:
        """Loads the checkpoint of ``step`` (default: the latest) with :func:`load`."""
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(
                f"funcgrad.io.CheckpointManager.restore: no checkpoints in {self.directory!r}."
            )
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(
                f"funcgrad.io.CheckpointManager.restore: no checkpoint for step {step} in "
                f"{self.directory!r}; the steps saved are {steps}."
            )
        return load(self._path(step), like=like, device=device)
