"""The safetensors file format, read and written without the ``safetensors`` package.

A safetensors file (https://github.com/huggingface/safetensors) is an 8-byte little-endian
unsigned header length ``N``, an ``N``-byte UTF-8 JSON header, then the data section: the raw
little-endian, C-ordered bytes of every tensor. The header maps each tensor's name to
``{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}`` (offsets into the data
section, which the tensors must cover exactly, without holes or overlaps) and may hold a
``"__metadata__"`` map of strings to strings. :mod:`funcgrad.io` builds pytree checkpoints on
top of this module; nothing here knows about pytrees.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import struct
import sys
import zlib
from collections.abc import Mapping
from typing import IO, Any

import torch

__all__ = [
    "DTYPE_NAMES",
    "CheckpointError",
    "Header",
    "TensorInfo",
    "header_checksum",
    "read_header",
    "read_tensors",
    "write",
]

#: Headers larger than this are rejected, as the reference implementation does.
MAX_HEADER_BYTES = 100_000_000
_CRC_THREAD_BYTES = 16 << 20
_CRC_BATCH_BYTES = 1 << 20

#: torch dtypes that safetensors stores natively, with their names in the header.
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
}
for _name, _code in [
    ("uint16", "U16"),
    ("uint32", "U32"),
    ("uint64", "U64"),
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
    ("float8_e5m2", "F8_E5M2"),
    ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
]:
    if hasattr(torch, _name):
        DTYPE_NAMES[getattr(torch, _name)] = _code
_DTYPES: dict[str, torch.dtype] = {code: dtype for dtype, code in DTYPE_NAMES.items()}


class CheckpointError(ValueError):
    """A file that is not a valid checkpoint: not safetensors, truncated, or corrupted."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One entry of the header: dtype name, shape and the byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


@dataclasses.dataclass(frozen=True)
class Header:
    """A parsed, validated header: tensors in data-section order and the metadata map."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def _check_little_endian(name: str) -> None:
    if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
        raise NotImplementedError(
            f"{name}: safetensors files are little-endian and this host is big-endian; "
            "funcgrad.io supports little-endian hosts only."
        )


# --------------------------------------------------------------------------------------------
# Checksum
# --------------------------------------------------------------------------------------------


def header_checksum(tensors: Mapping[str, TensorInfo], metadata: Mapping[str, str]) -> int:
    """The CRC-32 of a canonical form of the tensor index and the metadata.

    ``metadata`` must not contain the checksum itself. The canonical form depends only on the
    parsed values, so it is the same on write and on read whatever the JSON's spacing.
    """
    canonical = {
        "tensors": [[k, i.dtype, list(i.shape), i.begin, i.end] for k, i in tensors.items()],
        "metadata": dict(sorted(metadata.items())),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return zlib.crc32(text.encode("ascii"))


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _bytes_of(x: torch.Tensor) -> Any:
    """The tensor's little-endian, C-ordered bytes as a NumPy uint8 array (no copy if possible)."""
    # Each step only when needed: they cost ~5 us each, per tensor, per save.
    x = x.detach() if x.requires_grad else x
    x = x if x.device.type == "cpu" else x.cpu()
    x = x.resolve_conj() if x.is_conj() else x
    x = x.resolve_neg() if x.is_neg() else x
    x = x if x.is_contiguous() else x.contiguous()
    return x.view(-1).view(torch.uint8).numpy()


def write(
    f: IO[bytes],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    checksum_key: str | None = None,
) -> None:
    """Writes a safetensors file to the open binary file ``f``.

    Every tensor's dtype must be in :data:`DTYPE_NAMES`. Tensors are laid out by decreasing
    element size, so each one starts at a multiple of its element size once the header is
    padded to a multiple of 8 bytes (as the reference writer does). With ``checksum_key``, the
    metadata gets ``checksum_key: "crc32:<header CRC>:<data CRC>"`` (8 hex digits each; see
    :func:`header_checksum`). The data CRC is computed while the tensors stream to the file and
    written over a placeholder at the end, so every tensor is read once.
    """
    _check_little_endian("funcgrad.io.save")
    order = sorted(tensors, key=lambda k: -tensors[k].element_size())  # stable
    infos: dict[str, TensorInfo] = {}
    offset = 0
    for key in order:
        x = tensors[key]
        size = x.numel() * x.element_size()
        infos[key] = TensorInfo(DTYPE_NAMES[x.dtype], tuple(x.shape), offset, offset + size)
        offset += size
    meta = dict(metadata)
    if checksum_key is not None:
        meta[checksum_key] = f"crc32:{header_checksum(infos, metadata):08x}:" + "?" * 8
        # The pair as serialised: a key or value containing it would have escaped quotes.
        pair = json.dumps({checksum_key: meta[checksum_key]}, separators=(",", ":"))[1:-1]
    header: dict[str, Any] = {"__metadata__": meta}
    for key, info in infos.items():
        header[key] = {
            "dtype": info.dtype,
            "shape": list(info.shape),
            "data_offsets": [info.begin, info.end],
        }
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    text += b" " * (-(8 + len(text)) % 8)
    start = f.tell()
    if hasattr(os, "posix_fallocate"):  # reserving the extents up front: ~1.5x faster writes
        with contextlib.suppress(OSError):  # file systems without fallocate
            os.posix_fallocate(f.fileno(), start, 8 + len(text) + offset)
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    with _Crc32(offset) as crc:
        for key in order:
            data = _bytes_of(tensors[key])
            crc.update(data)
            f.write(data)
    if checksum_key is not None:
        end = f.tell()
        f.seek(start + 8 + text.index(pair.encode("ascii")) + len(pair) - 9)
        f.write(f"{crc.value:08x}".encode("ascii"))
        f.seek(end)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _not_safetensors(path: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"funcgrad.io.load: {path} is not a valid safetensors file: {why}. It may be "
        "truncated, corrupted, or in another format (torch.save writes zip files: load those "
        "with torch.load(weights_only=True))."
    )


def _parse_entry(path: str, key: str, entry: Any) -> TensorInfo:
    bad = _not_safetensors(path, f"the header entry for tensor {key!r} is malformed ({entry!r})")
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise bad
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _DTYPES:
        known = ", ".join(sorted(_DTYPES))
        raise CheckpointError(
            f"funcgrad.io.load: tensor {key!r} in {path} has dtype {dtype!r}, which this torch "
            f"build cannot hold; known dtypes: {known}."
        )
    ints = (*shape, *offsets) if isinstance(shape, list) and isinstance(offsets, list) else None
    if ints is None or len(offsets) != 2:
        raise bad
    if not all(type(v) is int and v >= 0 for v in ints):
        raise bad
    info = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    numel = 1
    for d in info.shape:
        numel *= d
    if info.end - info.begin != numel * info.torch_dtype.itemsize:
        raise _not_safetensors(
            path,
            f"tensor {key!r} has shape {list(info.shape)} and dtype {dtype} but spans "
            f"{info.end - info.begin} bytes",
        )
    return info


def read_header(f: IO[bytes], path: str) -> Header:
    """Reads and validates the header of the safetensors file open as ``f``.

    Checks the header length against the file size, the JSON, every entry's dtype, shape and
    byte count, and that the tensors tile the data section exactly to the end of the file.
    Raises :class:`CheckpointError` naming ``path`` otherwise.
    """
    _check_little_endian("funcgrad.io.load")
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise _not_safetensors(path, f"the file has {size} bytes, fewer than the 8 of the length")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(MAX_HEADER_BYTES, size - 8):
        raise _not_safetensors(
            path, f"its first 8 bytes give a header of {n} bytes and the file has {size}"
        )
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _not_safetensors(path, f"the header is not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise _not_safetensors(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _not_safetensors(path, "__metadata__ is not a map of strings to strings")
    infos = sorted(
        ((k, _parse_entry(path, k, v)) for k, v in header.items()), key=lambda kv: kv[1].begin
    )
    offset = 0
    for key, info in infos:
        if info.begin != offset:
            raise _not_safetensors(
                path, f"tensor {key!r} starts at byte {info.begin} of the data, expected {offset}"
            )
        offset = info.end
    if 8 + n + offset != size:
        raise CheckpointError(
            f"funcgrad.io.load: {path} is truncated or has trailing bytes: its header describes "
            f"{8 + n + offset} bytes and the file has {size}. The file is damaged (an "
            "interrupted copy?); restore it from a good copy."
        )
    return Header(dict(infos), metadata, 8 + n)


class _Crc32:
    """A running CRC-32 over buffers passed to :meth:`update`, which must stay unchanged until
    the ``with`` block exits. Above ``_CRC_THREAD_BYTES`` in all, the CRC runs on a worker
    thread (zlib releases the GIL), overlapping the file I/O, fed batches of at least
    ``_CRC_BATCH_BYTES`` so that small tensors do not pay a hand-off each."""

    def __init__(self, total: int) -> None:
        self.value = 0
        self._batch: list[Any] = []
        self._batch_bytes = 0
        self._pending: list[concurrent.futures.Future[None]] = []
        self._pool = None
        if total >= _CRC_THREAD_BYTES:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "funcgrad-crc")

    def _run(self, batch: list[Any]) -> None:
        for data in batch:
            self.value = zlib.crc32(data, self.value)

    def _flush(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if self._pool is None:
            self._run(batch)
        else:
            self._pending.append(self._pool.submit(self._run, batch))

    def update(self, data: Any) -> None:
        self._batch.append(data)
        self._batch_bytes += data.nbytes
        if self._batch_bytes >= _CRC_BATCH_BYTES:
            self._flush()

    def __enter__(self) -> _Crc32:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._flush()
            for future in self._pending:
                future.result()
        finally:
            if self._pool is not None:
                self._pool.shutdown()


def _read_exactly(f: IO[bytes], buffer: Any) -> None:
    view = memoryview(buffer).cast("B")
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            raise EOFError
        got += n


def read_tensors(f: IO[bytes], path: str, header: Header) -> tuple[dict[str, torch.Tensor], int]:
    """Reads every tensor of ``header``, each into its own aligned CPU storage.

    Returns the tensors (by name, in data-section order) and the CRC-32 of the data section.
    """
    f.seek(header.data_start)
    out: dict[str, torch.Tensor] = {}
    total = sum(i.end - i.begin for i in header.tensors.values())
    with _Crc32(total) as crc:
        for key, info in header.tensors.items():
            out[key] = _read_tensor(f, path, key, info, crc)
    return out, crc.value


def _read_tensor(f: IO[bytes], path: str, key: str, info: TensorInfo, crc: _Crc32) -> torch.Tensor:
    dtype = info.torch_dtype
    if info.end == info.begin:
        return torch.empty(info.shape, dtype=dtype)
    buf = torch.empty(info.end - info.begin, dtype=torch.uint8)
    data: Any = buf.numpy()
    try:
        _read_exactly(f, data)
    except EOFError:
        raise _not_safetensors(path, "the file ended inside the data section") from None
    crc.update(data)
    if dtype == torch.bool and int(buf.max()) > 1:
        raise CheckpointError(
            f"funcgrad.io.load: the bool tensor {key!r} in {path} holds bytes other than 0 and "
            "1; the file is corrupted."
        )
    return buf.view(dtype).reshape(info.shape)
